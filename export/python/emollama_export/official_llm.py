"""Official mode, the LLM side: the Emotion-LLaMA checkpoint (LoRA and projectors), the
LLaMA-2 HF folder checked against its config.json, and the conversion to GGUF by
llama.cpp's own converter with the LoRA merged (see llm_gguf.py, run as a child process).
"""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import gguf
import torch

from .loading import ROTARY, TRAINING_STATE, ExportError, Inventory, safetensors_shapes, torch_load, unwrap

# The official values where the checkpoint does not record them (minigpt_v2.py L36-39).
LORA_R, LORA_ALPHA = 64, 16
LORA_TARGETS = ("q_proj", "v_proj")
LORA_KEY = re.compile(r"(?:llama_model\.)?base_model\.model\.model\.layers\.(\d+)\.self_attn\."
                      r"(q_proj|k_proj|v_proj|o_proj)\.lora_([AB])(?:\.default)?\.weight")
UNUSED_CLASSIFIER = "minigpt_base.py's attention classifier: trained, saved, never called at inference"


def open_checkpoint(path: Path, label: str) -> tuple:
    """A training checkpoint's `model` state dict (its other entries are training state or
    the configuration, anything else refused) and the configuration's model section."""
    obj = torch_load(path)
    known = {k: TRAINING_STATE for k in ("optimizer", "scaler", "epoch", "iters")}
    known["config"] = "the training configuration: its model section is recorded in the manifest's provenance"
    sd, _ = unwrap(path, obj, label, ("model",), known)
    config = (obj.get("config") or {}).get("model", {}) if isinstance(obj.get("config"), dict) else {}
    return sd, config


def read_checkpoint(path: Path, llama_config: dict) -> tuple:
    sd, config = open_checkpoint(path, "an Emotion-LLaMA checkpoint")
    inv = Inventory(path, sd, "the Emotion-LLaMA checkpoint")
    inv.ignore(r"attention\..*", UNUSED_CLASSIFIER)
    inv.ignore(r".*\.rotary_emb\.inv_freq", ROTARY)
    for prefix in ("visual_encoder.", "ln_vision."):
        if any(k.startswith(prefix) for k in inv.left):
            raise ExportError(f"{path}: holds {prefix}* weights (a checkpoint trained with the ViT unfrozen); "
                              "this exporter takes EVA from eva_vit_g.pth only")
    lora = read_lora(inv, config, llama_config)
    return inv, lora, config


def read_lora(inv: Inventory, config: dict, llama: dict) -> dict:
    """All n_layers x {q_proj, v_proj} complete A/B pairs of one rank that fit the LLaMA's
    weights, or a refusal."""
    n_layers, hidden = llama["num_hidden_layers"], llama["hidden_size"]
    heads = llama["num_attention_heads"]
    out_rows = {"q_proj": hidden, "v_proj": llama.get("num_key_value_heads", heads) * hidden // heads}
    found = {}
    for key in [k for k in inv.left if LORA_KEY.fullmatch(k)]:
        layer, target, ab = LORA_KEY.fullmatch(key).groups()
        found.setdefault((int(layer), target), {})[ab] = inv.take(key)
    extra = sorted({t for _, t in found} - set(LORA_TARGETS))
    if extra:
        raise ExportError(f"{inv.path}: LoRA on {extra}; Emotion-LLaMA's LoRA targets only {list(LORA_TARGETS)}")
    want = [(i, t) for i in range(n_layers) for t in LORA_TARGETS]
    complete = [k for k in want if set(found.get(k, {})) == {"A", "B"}]
    if len(complete) != len(want) or len(found) != len(want):
        missing = [f"layers.{i}.self_attn.{t} lora_{'/'.join(sorted({'A', 'B'} - set(found.get((i, t), {}))))}"
                   for i, t in want if (i, t) not in complete]
        raise ExportError(f"{inv.path}: {len(complete)} complete LoRA pairs, expected {len(want)} "
                          f"({'/'.join(LORA_TARGETS)} in each of {n_layers} layers); missing: {', '.join(missing[:4])}")
    ranks = {found[k]["A"].shape[0] for k in want} | {found[k]["B"].shape[1] for k in want}
    if len(ranks) != 1:
        raise ExportError(f"{inv.path}: LoRA ranks disagree across pairs: {sorted(ranks)}")
    r = ranks.pop()
    for (i, t), ab in sorted(found.items()):
        if ab["A"].shape[1] != hidden or ab["B"].shape[0] != out_rows[t]:
            raise ExportError(f"{inv.path}: layers.{i}.self_attn.{t} LoRA A {list(ab['A'].shape)}, "
                              f"B {list(ab['B'].shape)} do not fit its [{out_rows[t]}, {hidden}] weight (config.json)")
    if config.get("lora_r") not in (None, r):
        raise ExportError(f"{inv.path}: config.model.lora_r is {config['lora_r']} but the LoRA tensors have rank {r}")
    alpha = float(config.get("lora_alpha", LORA_ALPHA))
    return {"r": r, "alpha": alpha, "scaling": alpha / r, "targets": list(LORA_TARGETS), "pairs": found,
            "alpha_from": "checkpoint config.model.lora_alpha" if "lora_alpha" in config else "official default"}


def read_llama(folder: Path) -> dict:
    """config.json and the tensor list of the shards (headers only), checked against each other."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{cfg_path}: no such file (the LLaMA-2 HF folder)")
    cfg = json.loads(cfg_path.read_text())
    if "LlamaForCausalLM" not in cfg.get("architectures", []):
        raise ExportError(f"{cfg_path}: architectures {cfg.get('architectures')} is not LlamaForCausalLM")
    if not (folder / "tokenizer.model").is_file():
        raise ExportError(f"{folder / 'tokenizer.model'}: no such file (LLaMA-2's SentencePiece model is needed)")
    h, f, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    v = cfg["vocab_size"]
    expected = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h], "lm_head.weight": [v, h]}
    for i in range(n):
        p = f"model.layers.{i}."
        expected.update({p + "input_layernorm.weight": [h], p + "post_attention_layernorm.weight": [h],
                         p + "self_attn.q_proj.weight": [h, h], p + "self_attn.o_proj.weight": [h, h],
                         p + "self_attn.k_proj.weight": [kv * h // heads, h],
                         p + "self_attn.v_proj.weight": [kv * h // heads, h],
                         p + "mlp.gate_proj.weight": [f, h], p + "mlp.up_proj.weight": [f, h],
                         p + "mlp.down_proj.weight": [h, f]})
    shapes, files = llama_tensor_shapes(folder)
    inv = Inventory(folder, {k: torch.empty(0) for k in shapes}, "the LLaMA-2 weights")
    inv.ignore(r".*\.rotary_emb\.inv_freq", ROTARY)
    for key, shape in expected.items():
        if list(shapes.get(key, shape)) != shape:
            raise ExportError(f"{files.get(key, folder)}: {key!r} has shape {list(shapes[key])}, "
                              f"config.json says {shape}")
        inv.take(key)
    inv.finish()
    return {"config": cfg, "files": sorted(set(files.values())), "report": inv.report(),
            "n_params": sum(math.prod(s) for s in expected.values())}


def llama_tensor_shapes(folder: Path) -> tuple:
    """{tensor: shape} and {tensor: file} from the safetensors headers (or .bin shards)."""
    for stem, ext in (("model", ".safetensors"), ("pytorch_model", ".bin")):
        index = folder / f"{stem}{ext}.index.json"
        parts = sorted(folder.glob(f"{stem}*{ext}"))
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            names = sorted(set(weight_map.values()))
            for name in names:
                if not (folder / name).is_file():
                    raise ExportError(f"{folder / name}: missing shard (listed in {index.name})")
            parts = [folder / name for name in names]
        if not parts:
            continue
        shapes, files = {}, {}
        for part in parts:
            if ext == ".safetensors":
                items = safetensors_shapes(part)
            else:
                items = {k: list(t.shape) for k, t in torch_load(part).items()}
            for k, s in items.items():
                shapes[k], files[k] = s, part
        return shapes, files
    raise ExportError(f"{folder}: no model*.safetensors or pytorch_model*.bin shards")


def convert_llm(args, lora: dict, bundle: Path, work: Path) -> tuple:
    """The converter in its own process (see llm_gguf.py), fed the LoRA pairs: the GGUF,
    and |dW|/|W| per merged tensor as the merge measured it."""
    pairs = {f"model.layers.{i}.self_attn.{t}.weight": (ab["A"].float().contiguous(), ab["B"].float().contiguous())
             for (i, t), ab in lora["pairs"].items()}
    lora_file, ratios_file = work / "lora.pt", work / "lora-ratios.json"
    torch.save({"scaling": lora["scaling"], "pairs": pairs}, lora_file)
    out = bundle / f"llm-{args.llm_outtype}.gguf"
    cmd = [sys.executable, "-m", "emollama_export.llm_gguf", "--converter-dir", str(args.converter_dir),
           "--llama", str(args.llama), "--lora", str(lora_file), "--outtype", args.llm_outtype, "--out",
           str(out.with_name(out.name + ".partial")), "--ratios", str(ratios_file)]
    if subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1]).returncode != 0:
        raise ExportError(f"{args.llama}: llama.cpp's converter failed (its message is above)")
    out.with_name(out.name + ".partial").replace(out)
    check_vocabulary(out, args.vocab_gguf, args.llama)
    return out, json.loads(ratios_file.read_text())


def check_vocabulary(gguf_path: Path, vocab_gguf: Path, llama_dir: Path) -> None:
    """The converted vocabulary must be LLaMA-2's (llama.cpp's copy of it), piece for piece."""
    got, want = gguf.GGUFReader(str(gguf_path)), gguf.GGUFReader(str(vocab_gguf))
    field = lambda r, key: r.fields[key].contents()  # noqa: E731
    if field(got, "tokenizer.ggml.tokens") != field(want, "tokenizer.ggml.tokens"):
        raise ExportError(f"{llama_dir / 'tokenizer.model'}: not LLaMA-2's vocabulary (the pieces differ)")
    # The converter types and scores <unk>, <s>, </s> from tokenizer_config.json (CONTROL,
    # -1000); every other piece must be the same, with the same merge score.
    ordinary = [i for i, t in enumerate(field(want, "tokenizer.ggml.token_type")) if t in (1, 6)]
    for key in ("tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        a, b = field(got, key), field(want, key)
        if any(a[i] != b[i] for i in ordinary):
            raise ExportError(f"{llama_dir / 'tokenizer.model'}: not LLaMA-2's vocabulary ({key} differ)")
