"""Official mode: the released Emotion-LLaMA files -> an emollama bundle.

Inputs (spec official-export.md; the same names as the official download folders):
  --eva         eva_vit_g.pth                     (LAVIS/BLIP-2 EVA ViT-g)
  --checkpoint  Emoation_LLaMA.pth                (LoRA + projectors; or checkpoint_best.pth)
  --llama       Llama-2-7b-chat-hf/               (config.json, tokenizer.model, shards)
  --hubert      chinese-hubert-large/             (config.json, preprocessor_config.json, pytorch_model.bin)
  --mae         mae_checkpoint-340.pth            (optional: else the local row is the zero-feature row)
  --videomae    maeVideo_ckp399.pth               (optional: else the temporal row is the zero-feature row)

Writes OUT/bundle (the format the runtime reads) and OUT/export-report.json (every
input's sha256, what was used and ignored and why, the LoRA merge, parity, timings,
peak memory), under OUT.partial, renamed into place only when everything succeeded.
"""

import argparse
import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path

import onnxruntime as ort
import torch
import transformers

from . import EXPORTER_VERSION
from .loading import ExportError
from .manifest import bundle_manifest, file_entry, sha256_file
from .memory import MemorySampler
from .official_code import EVA_DEPTH
from .official_encoders import check_encoders, export_encoders
from .projectors import PROJECTORS, export_projectors, projector_name
from .official_llm import convert_llm, read_checkpoint, read_llama
from .synthetic import export_face_detector, log
from .tensors import write_json_atomic


class Stages:
    """Says which stage the export is in, and records how long each took (and, through
    the sampler, its peak memory)."""

    def __init__(self, names: list, memory: MemorySampler):
        self.names, self.times, self.started, self.memory = names, {}, time.time(), memory

    def run(self, name: str, fn, *args):
        i = self.names.index(name) + 1
        self.memory.begin(name)
        log(f"stage {i}/{len(self.names)}: {name}")
        t = time.time()
        result = fn(*args)
        self.times[name] = round(time.time() - t, 2)
        log(f"stage {i}/{len(self.names)}: {name} done in {self.times[name]:.1f}s "
            f"(total {time.time() - self.started:.0f}s)")
        return result


def hash_inputs(paths: list) -> dict:
    """sha256 and size of every input file, with progress (the LLaMA shards are 13.5 GB)."""
    files = sorted({p for p in paths if p.is_file()})
    total = sum(p.stat().st_size for p in files)
    done, started, out = 0, time.time(), {}
    for p in files:
        out[str(p)] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
        done += p.stat().st_size
        rate = done / max(time.time() - started, 1e-6)
        log(f"sha256 {len(out)}/{len(files)} files, {done / 1e9:.2f}/{total / 1e9:.2f} GB, "
            f"{time.time() - started:.0f}s elapsed, ETA {(total - done) / max(rate, 1):.0f}s: {p.name}")
    return out


def export(args) -> None:
    staged_export(args, build)


def staged_export(args, build) -> None:
    """`build(args, out, staging, bundle, work, memory)` into OUT.partial; on any failure
    the partial folder goes too: never a half bundle."""
    out = args.out.resolve()
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    bundle, work = staging / "bundle", staging / "work"
    bundle.mkdir(parents=True)
    work.mkdir()
    try:
        with MemorySampler() as memory:
            build(args, out, staging, bundle, work, memory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # never a half bundle
        raise


def llm_entry(bundle: Path, gguf_path: Path, outtype: str) -> dict:
    return file_entry(bundle, gguf_path.name, "llm", "gguf", outtype,
                      parity={"reference": "llama.cpp convert_hf_to_gguf.py (llama-cpp-python 0.3.36) "
                                           "of the LoRA-merged weights",
                              "checked_by": "emollama tests (logits vs transformers with the LoRA unmerged)",
                              "tolerance": 1e-3})


def llm_info(llama: dict) -> dict:
    """The manifest's `llm` section, from the LLaMA folder's config."""
    cfg = llama["config"]
    d = cfg["hidden_size"]
    return {"embedding_width": d, "vocab_size": cfg["vocab_size"], "bos_id": cfg.get("bos_token_id", 1),
            "eos_id": cfg.get("eos_token_id", 2), "n_ctx_train": cfg["max_position_embeddings"],
            "n_layer": cfg["num_hidden_layers"], "n_head_kv": cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
            "head_dim": d // cfg["num_attention_heads"], "n_params": llama["n_params"]}


def finish_export(report: dict, stages: "Stages", staging: Path, work: Path, out: Path) -> None:
    """The report written, the work folder removed, the staged export renamed into place."""
    write_json_atomic(staging / "export-report.json", report)
    shutil.rmtree(work)
    shutil.rmtree(out, ignore_errors=True)
    staging.replace(out)
    log(f"done in {time.time() - stages.started:.0f}s -> {out}; peak memory (GB) {report['memory']['peak_gb']}")


def check_inputs(args) -> tuple:
    """Every input read and checked, key by key and shape by shape, before any work."""
    llama = read_llama(args.llama)
    checked = (llama, *read_checkpoint(args.checkpoint, llama["config"]))
    check_encoders(args, checked[1], llama["config"]["hidden_size"])
    return checked


def check_only(args) -> None:
    """--check: what stage 1 of an export does, and a summary; nothing is written."""
    llama, _, lora, _ = check_inputs(args)
    cfg = llama["config"]
    encoders = ["EVA", "HuBERT"] + [n for n, p in (("MAE", args.mae), ("VideoMAE", args.videomae)) if p]
    log(f"inputs are consistent: LLaMA {cfg['num_hidden_layers']} layers x {cfg['hidden_size']} "
        f"(rms_norm_eps {cfg['rms_norm_eps']}), LoRA r {lora['r']} alpha {lora['alpha']:g} on {len(lora['pairs'])} "
        f"pairs, encoders {', '.join(encoders)}")


def build(args, out: Path, staging: Path, bundle: Path, work: Path, memory: MemorySampler) -> None:
    stages = Stages(["check inputs", "hash inputs", "projectors", "encoders", "face detector", "llm", "manifest"], memory)
    llama, ckpt, lora, ckpt_config = stages.run("check inputs", check_inputs, args)
    cfg = llama["config"]
    d = cfg["hidden_size"]
    inputs = [args.eva, args.checkpoint, args.hubert / "config.json", args.hubert / "preprocessor_config.json",
              args.hubert / "pytorch_model.bin", args.llama / "config.json", args.llama / "tokenizer.model",
              *llama["files"]] + [p for p in (args.mae, args.videomae) if p]
    hashes = stages.run("hash inputs", hash_inputs, inputs)
    # The projectors alone come from the main checkpoint, so pre-extracted features work
    # even without the MAE and VideoMAE checkpoints (read before the encoders take them).
    files = stages.run("projectors", export_projectors, bundle, {
        k: (ckpt.peek(f"{projector_name(k)}.weight"), ckpt.peek(f"{projector_name(k)}.bias")) for k, _, _ in PROJECTORS})
    encoder_files, parts, rows = stages.run("encoders", export_encoders, args, ckpt, d, bundle)
    files.extend(encoder_files)
    ckpt.finish()
    files.extend(stages.run("face detector", export_face_detector, bundle, args.facenet_dir))
    gguf_path, delta_ratios = stages.run("llm", convert_llm, args, lora, bundle, work)
    files.append(llm_entry(bundle, gguf_path, args.llm_outtype))
    lora_report = {k: lora[k] for k in ("r", "alpha", "scaling", "targets", "alpha_from")}
    lora_report["pairs"] = len(lora["pairs"])
    missing = [n for n, p in (("local", args.mae), ("temporal", args.videomae)) if not p]
    provenance = {
        "source": "official Emotion-LLaMA checkpoints", "exporter": "emollama-export official (python)",
        "exporter_version": EXPORTER_VERSION, "torch": torch.__version__, "transformers": transformers.__version__,
        "onnxruntime": ort.__version__, "python": platform.python_version(), "created_unix": int(time.time()),
        "inputs": {input_name(Path(p), args): h for p, h in hashes.items()},
        "checkpoint_config": {k: ckpt_config.get(k) for k in ("arch", "lora_r", "lora_alpha", "image_size",
                                                                "llama_model") if k in ckpt_config},
        "rms_norm_eps": cfg["rms_norm_eps"], "lora": lora_report, "zero_feature_rows": missing,
    }
    description = "Emotion-LLaMA, exported from the official checkpoints."
    if missing:
        description += f" No engine for {' and '.join(missing)}: those rows are the zero-feature rows."
    manifest = bundle_manifest(f"emotion-llama-{hashes[str(args.checkpoint)]['sha256'][:12]}", False, description,
                               provenance, llm_info(llama), rows, files)
    stages.run("manifest", write_json_atomic, bundle / "manifest.json", manifest)
    report = {
        "inputs": hashes,
        "keys": {"eva": parts["eva"].report(), "checkpoint": ckpt.report(), "llama": llama["report"],
                 **{k: v.report() for k, v in parts.items() if k != "eva"}},
        "lora": {**lora_report, "delta_ratio": delta_ratios},
        "parity": {f["path"]: f.get("parity") for f in files if f.get("parity")},
        "stages_s": stages.times, "memory": memory.report(),
        "files": {f["path"]: f["size"] for f in files},
    }
    finish_export(report, stages, staging, work, out)


def input_name(path: Path, args) -> str:
    """An input as the manifest names it: `folder/file` inside the HF folders, else the file."""
    return f"{path.parent.name}/{path.name}" if path.parent in (args.llama, args.hubert) else path.name


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m emollama_export.official", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eva", type=Path, required=True, help="eva_vit_g.pth")
    ap.add_argument("--checkpoint", type=Path, required=True, help="Emoation_LLaMA.pth (or checkpoint_best.pth)")
    ap.add_argument("--llama", type=Path, required=True, help="the Llama-2-7b-chat-hf folder")
    ap.add_argument("--hubert", type=Path, required=True, help="the chinese-hubert-large folder")
    ap.add_argument("--mae", type=Path, help="mae_checkpoint-340.pth (optional)")
    ap.add_argument("--videomae", type=Path, help="maeVideo_ckp399.pth (optional)")
    ap.add_argument("--out", type=Path, help="output folder (bundle/ and export-report.json)")
    ap.add_argument("--check", action="store_true",
                    help="only read and check every input (seconds), as the export's first stage does")
    ap.add_argument("--vocab-gguf", type=Path, required=True, help="llama.cpp ggml-vocab-llama-spm.gguf")
    ap.add_argument("--facenet-dir", type=Path, required=True, help="extracted facenet-pytorch 2.6.0 wheel")
    ap.add_argument("--converter-dir", type=Path, required=True, help="llama.cpp's convert_hf_to_gguf.py folder")
    ap.add_argument("--llm-outtype", choices=["f16", "f32", "q8_0"], default="f16",
                    help="GGUF type (K-quants afterwards: emollama quantize --bundle)")
    ap.add_argument("--eva-weights", choices=["fp16", "fp32"], default="fp16",
                    help="fp16: the file's own values, one ONNX file under 2 GiB (default)")
    ap.add_argument("--eva-depth", type=int, default=EVA_DEPTH, help="blocks used (official: 39; tests: fewer)")
    args = ap.parse_args(argv)
    if args.out is None and not args.check:
        ap.error("--out is required (or --check)")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    for p in (args.eva, args.checkpoint, args.llama, args.hubert, args.mae, args.videomae):
        if p is not None and not p.exists():
            sys.exit(f"error: {p}: no such file or folder")
    args.llama, args.hubert = args.llama.resolve(), args.hubert.resolve()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    try:
        check_only(args) if args.check else export(args)
    except ExportError as e:
        sys.exit(f"error: {e}" + ("" if args.check else "\nno bundle was written"))


if __name__ == "__main__":
    main()
