"""The end-to-end reference pipeline: the exporter's PyTorch modules and transformers'
LLaMA, fed the preprocessed inputs that `emollama analyze --dump-inputs DIR` wrote, so
that the runtime's greedy answer and label scores can be compared token for token.

usage: python -m emollama_export.reference --torch DIR/torch --inputs DUMP --out ref.json
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaForCausalLM

from .synthetic import LLM, build_engines
from .tensors import write_json_atomic


def load(dump: Path, name: str):
    meta = json.loads((dump / "index.json").read_text())["tensors"].get(name)
    if meta is None:
        return None
    data = np.frombuffer((dump / meta["file"]).read_bytes(), dtype="<f4").reshape(meta["shape"])
    return torch.from_numpy(data.copy())


@torch.no_grad()
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m emollama_export.reference", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--torch", type=Path, required=True, help="the torch/ folder written by the synthetic export")
    ap.add_argument("--inputs", type=Path, required=True, help="folder written by emollama analyze --dump-inputs")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=1, help="run N times and report median timings (benchmarks)")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    index = json.loads((args.inputs / "index.json").read_text())
    modules = build_engines(LLM["hidden"])
    for name, module in modules.items():
        module.load_state_dict(torch.load(args.torch / f"{name}.pt"))
    zero = load(args.inputs, "zero_rows")  # [3, D]: local, temporal, audio biases

    llm = LlamaForCausalLM.from_pretrained(args.torch / "llm", attn_implementation="eager").eval()
    timings = []
    for _ in range(max(1, args.repeat)):
        result, t = run(args, index, modules, zero, llm)
        timings.append(t)
    med = {k: float(np.median([t[k] for t in timings])) for k in timings[0]}
    result["timings_ms"] = med
    write_json_atomic(args.out, result)
    print(f"[reference] {len(result['greedy_tokens'])} greedy tokens -> {args.out}; median ms {med}")


@torch.no_grad()
def run(args, index, modules, zero, llm):
    import time

    t0 = time.perf_counter()
    patches, cls = modules["global"](load(args.inputs, "pixel_values"))
    faces, clip, wave = load(args.inputs, "faces"), load(args.inputs, "clip"), load(args.inputs, "waveform")
    local = modules["local"](faces)[0] if faces is not None else zero[0:1]
    temporal = modules["temporal"](clip)[0] if clip is not None else zero[1:2]
    audio = modules["audio"](wave)[0] if wave is not None else zero[2:3]
    rows = torch.cat([patches[0], local, temporal, audio, cls[0]])  # [260, D]
    t1 = time.perf_counter()
    result, timings = answer(index, rows, llm)
    return result, {"encoders": (t1 - t0) * 1e3, **timings, "total": (time.perf_counter() - t0) * 1e3}


@torch.no_grad()
def answer(index, rows, llm):
    """The prompt's ids around `rows` through `llm`: the label sequences' log-probabilities
    and the greedy answer (the eval preset, to EOS or the dumped token cap)."""
    import time

    t1 = time.perf_counter()
    embed = llm.get_input_embeddings()
    seg0, seg1 = index["prompt"]["before_rows"], index["prompt"]["after_rows"]
    embeds = torch.cat([embed(torch.tensor(seg0)), rows, embed(torch.tensor(seg1))]).unsqueeze(0)
    out = llm(inputs_embeds=embeds, use_cache=True)
    prompt_logits, past = out.logits[0, -1], out.past_key_values
    t2 = time.perf_counter()

    # Label sequences: log P(label tokens | prompt), exactly, token by token.
    label_logprobs = {}
    for label, ids in index["labels"].items():
        logits, lp, kv = prompt_logits, 0.0, past
        for k, t in enumerate(ids):
            lp += float(torch.log_softmax(logits.double(), dim=-1)[t])
            if k + 1 < len(ids):
                o = llm(input_ids=torch.tensor([[t]]), past_key_values=_copy(kv), use_cache=True)
                logits, kv = o.logits[0, -1], o.past_key_values
        label_logprobs[label] = lp
    t3 = time.perf_counter()

    # Greedy answer (the eval preset), stopping at EOS.
    greedy, logits, kv = [], prompt_logits, past
    for _ in range(index["max_new_tokens"]):
        t = int(logits.argmax())
        if t == 2:
            break
        greedy.append(t)
        o = llm(input_ids=torch.tensor([[t]]), past_key_values=kv, use_cache=True)
        logits, kv = o.logits[0, -1], o.past_key_values
    t4 = time.perf_counter()
    ms = lambda a, b: (b - a) * 1e3  # noqa: E731
    timings = {"prefill": ms(t1, t2), "label_scores": ms(t2, t3), "generation": ms(t3, t4)}
    return {"rows_checksum": float(rows.double().abs().sum()), "greedy_tokens": greedy,
            "label_logprobs": label_logprobs}, timings


def _copy(past):
    import copy
    return copy.deepcopy(past)


if __name__ == "__main__":
    main()
