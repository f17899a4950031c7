"""Official mode for Emotion-LLaMA-v2: the files a user downloads -> an emollama bundle
(v2 spec §2, §6.1, §6.4).

Inputs (the official names):
  --checkpoint  checkpoint_9.pth        stage 2 (the demo's): LoRA, the four projectors,
                                        ConvProAttention (166 tensors; optimizer etc. ignored)
  --eva         eva_vit_g.pth           used twice: the global EVA (39 blocks, 448 px) and the
                                        temporal one (40 blocks and the final norm, 224 px)
  --whisper     whisper-large-v3/       the HF folder: its encoder (the decoder is not v2's)
  --llama       Llama-2-7b-chat-hf/

Every tensor of every input is taken or ignored for a stated reason (a v1 checkpoint, an
EVA file without the temporal branch's block and norm, a Whisper of another width are
refused by name); every engine is checked against an independent reference (timm's
`Eva`, transformers' `WhisperModel`, ConvProAttention in numpy); the LoRA is merged by
the v1 exporter's path. Writes OUT/bundle and OUT/export-report.json under
OUT.partial, renamed into place only when everything succeeded.
"""

import argparse
import os
import platform
import re
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import transformers
from transformers import WhisperConfig

from . import EXPORTER_VERSION
from .eva import EvaConfig, interpolate_pos_embed
from .loading import ROTARY, ExportError, Inventory, fill, safetensors_shapes, torch_load
from .manifest import V2_PREPROCESS, bundle_manifest_v2, file_entry, tensor_spec
from .memory import MemorySampler
from .official import Stages, finish_export, hash_inputs, llm_entry, llm_info, staged_export
from .official_code import EVA_DEPTH, EVA_HEAD_DIM, EVA_MLP_RATIO
from .official_encoders import PROTOBUF_LIMIT, on_meta, store_fp16
from .official_llm import convert_llm, open_checkpoint, read_lora, read_llama
from .synthetic import log
from .tensors import write_json_atomic
from .v2 import (REFERENCES, AudioEngineV2, FusionEngineV2, GlobalEngineV2, TemporalEngineV2, audio_reference,
                 engine_specs, export_checked, fusion_reference, global_reference, sample_inputs, temporal_reference)

V1_KEYS = re.compile(r"(cls_tk_llama_proj|feats_llama_proj[123]|attention)\..*")
WHISPER_DECODER = "Whisper's decoder: not part of Emotion-LLaMA-v2 (the official code runs one step and drops it)"
EVA_HEAD = "EVA-CLIP's head (to 1024): in neither v2 branch (timm's head is Identity with num_classes=0)"


def read_checkpoint_v2(path: Path, llama_config: dict) -> tuple:
    sd, config = open_checkpoint(path, "an Emotion-LLaMA-v2 checkpoint")
    v1 = sorted(k for k in sd if V1_KEYS.fullmatch(k))
    if v1:
        raise ExportError(f"{path}: an Emotion-LLaMA (v1) checkpoint (it holds {v1[0]!r}); this is the v2 exporter "
                          "(checkpoint_9.pth of Emotion-LLaMA-v2); export v1 with emollama_export.official")
    inv = Inventory(path, sd, "the Emotion-LLaMA-v2 checkpoint")
    inv.ignore(r".*\.rotary_emb\.inv_freq", ROTARY)
    for prefix in ("visual_encoder.", "ln_vision."):
        if any(k.startswith(prefix) for k in inv.left):
            raise ExportError(f"{path}: holds {prefix}* weights; EVA comes from eva_vit_g.pth only")
    lora = read_lora(inv, config, llama_config)
    return inv, lora, config


def eva_inventories(args) -> tuple:
    """eva_vit_g.pth twice: the global branch's blocks (depth), the temporal branch's
    (depth + 1) and its final norm; a file without the latter is refused, named (the
    official code would leave them random: timm loads with strict=False)."""
    sd = torch_load(args.eva)
    stored = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    depth = args.eva_depth
    needs = [f"blocks.{depth}.norm1.weight", "norm.weight", "norm.bias"]
    lacking = [k for k in needs if k not in sd]
    if stored < depth + 1 or lacking:
        raise ExportError(f"{args.eva}: {stored} blocks{', no ' + ', '.join(lacking) if lacking else ''}: "
                          f"v2's temporal EVA (timm's eva_giant_patch14_224) needs blocks 0..{depth} and the final "
                          "norm; the official code would leave them random (strict=False). Use the full "
                          "eva_vit_g.pth from LAVIS")
    glob, temporal = Inventory(args.eva, sd, "eva_vit_g.pth (global)"), Inventory(args.eva, sd, "eva_vit_g.pth (temporal)")
    glob.ignore(rf"blocks\.({'|'.join(str(i) for i in range(depth, stored))})\..*",
                f"blocks {depth}..{stored - 1}: the global branch has depth {depth} (eva_vit.py L421)")
    glob.ignore(r"norm\..*", "the final norm: the temporal branch's, not the global one's (LAVIS has none)")
    if stored > depth + 1:
        temporal.ignore(rf"blocks\.({'|'.join(str(i) for i in range(depth + 1, stored))})\..*",
                        f"blocks past {depth}: the temporal branch has depth {depth + 1}")
    for inv in (glob, temporal):
        inv.ignore(r"(fc_norm|head)\..*", EVA_HEAD)
    c = sd["cls_token"].shape[-1]
    grid = int((sd["pos_embed"].shape[1] - 1) ** 0.5)
    cfg = EvaConfig(embed_dim=c, depth=depth, num_heads=c // EVA_HEAD_DIM, mlp_ratio=EVA_MLP_RATIO,
                    checkpoint_grid=grid)
    return glob, temporal, cfg


def whisper_inventory(folder: Path, ckpt: Inventory) -> tuple:
    """The Whisper folder's config and weights (the encoder taken, the decoder ignored),
    checked against what the checkpoint's projector and fusion take."""
    if not (folder / "config.json").is_file():
        raise ExportError(f"{folder}: no config.json (expected the whisper-large-v3 folder as downloaded)")
    try:
        config = WhisperConfig.from_pretrained(str(folder))
    except Exception as e:  # a config transformers cannot read: say which, no traceback
        raise ExportError(f"{folder / 'config.json'}: not a Whisper config ({str(e).splitlines()[0]})") from e
    width = ckpt.peek("llama_proj_audio.weight").shape[1]
    if config.d_model != width or config.num_mel_bins != V2_PREPROCESS["audio"]["log_mel"]["n_mels"]:
        raise ExportError(f"{folder}: a Whisper of width {config.d_model} with {config.num_mel_bins} mel bins; the "
                          f"checkpoint's audio projector takes width {width} and v2 hears whisper-large-v3's 128 "
                          "bins (width 1280)")
    if config.max_source_positions != 1500:
        raise ExportError(f"{folder}: max_source_positions {config.max_source_positions}, not Whisper's 1500")
    files = sorted(folder.glob("model*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise ExportError(f"{folder}: no model.safetensors or pytorch_model.bin")
    tensors = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file
            safetensors_shapes(f)  # a readable header, or a named refusal
            tensors.update(load_file(str(f)))
        else:
            tensors.update(torch_load(f))
    inv = Inventory(files[0], tensors, "whisper-large-v3")
    inv.ignore(r"(model\.)?decoder\..*", WHISPER_DECODER)
    inv.ignore(r"proj_out\.weight", WHISPER_DECODER)
    return inv, config, files


def build_engines(args, ckpt: Inventory, d: int, check: bool) -> dict:
    """The four modules, strictly filled from the files (shapes only when checking)."""
    eva_global, eva_temporal, cfg = eva_inventories(args)
    whisper, wcfg, _ = whisper_inventory(args.whisper, ckpt)
    prefix = "model.encoder." if any(k.startswith("model.encoder.") for k in whisper.left) else "encoder."
    with on_meta(check):
        glob = GlobalEngineV2(cfg, d).eval()
        temporal = TemporalEngineV2(replace(cfg, image_size=224, depth=cfg.depth + 1), d).eval()
        audio = AudioEngineV2(wcfg, d).eval()
        fusion = FusionEngineV2(wcfg.d_model, cfg.embed_dim, d).eval()

    def eva_key(inv):
        return lambda key: (inv, key.removeprefix("visual_encoder.").replace("patch_embed.", "patch_embed.proj."))

    def in_eva(inv):
        at = eva_key(inv)
        return lambda key: at(key) if key.startswith(("visual_encoder.", "norm.")) else (ckpt, key)

    grid = 448 // cfg.patch_size
    fill(glob, in_eva(eva_global), {"visual_encoder.pos_embed": lambda t: interpolate_pos_embed(t.float(), grid)},
         check_only=check)
    fill(temporal, in_eva(eva_temporal), check_only=check)
    fill(audio, lambda key: (whisper, prefix + key.removeprefix("encoder.")) if key.startswith("encoder.")
         else (ckpt, key), check_only=check)
    fill(fusion, lambda key: (ckpt, key), check_only=check)
    for inv in (eva_global, eva_temporal, whisper):
        inv.finish()
    return {"global": glob, "temporal": temporal, "audio": audio, "fusion": fusion,
            "reports": {"eva_global": eva_global.report(), "eva_temporal": eva_temporal.report(),
                        "whisper": whisper.report()}, "whisper_config": wcfg}


def check_inputs(args) -> tuple:
    llama = read_llama(args.llama)
    ckpt, lora, config = read_checkpoint_v2(args.checkpoint, llama["config"])
    probe = ckpt.copy()
    build_engines(args, probe, llama["config"]["hidden_size"], check=True)
    probe.finish()  # every checkpoint tensor has its place
    return llama, ckpt, lora, config


def export_engines(args, ckpt: Inventory, d: int, bundle: Path) -> tuple:
    """Built, checked against the independent references on seeded inputs, exported
    (each EVA graph with the file's fp16 values: 2 GB at full size), checked again
    through ONNX Runtime."""
    m = build_engines(args, ckpt, d, check=False)
    ckpt.finish()
    wcfg = m["whisper_config"]
    specs = engine_specs(d, m["global"].cfg.embed_dim, wcfg)
    feeds = sample_inputs(np.random.default_rng(2026), wcfg.num_mel_bins)
    references = {"global": lambda f: global_reference(m["global"], f["pixel_values"]),
                  "temporal": lambda f: temporal_reference(m["temporal"], f["frames"]),
                  "audio": lambda f: audio_reference(m["audio"], f["input_features"])}
    files, wants, worst = [], {}, {}
    fp16 = {"global": lambda mod: store_fp16(mod.visual_encoder, "eva_vit_g.pth", "it is not an fp16 file"),
            "temporal": lambda mod: store_fp16(mod.visual_encoder, "eva_vit_g.pth", "it is not an fp16 file")}
    whisper_bytes = 4 * sum(p.numel() for p in m["audio"].encoder.parameters())
    if whisper_bytes >= PROTOBUF_LIMIT:
        fp16["audio"] = lambda mod: store_fp16(mod.encoder, "whisper-large-v3", "it is not an fp16 file")
    for name in ("global", "temporal", "audio"):
        wants[name] = references[name](feeds[name])
        entry, worst_module, worst[name] = export_checked(name, m[name], feeds[name], wants[name], *specs[name],
                                                          bundle, REFERENCES[name], fp16.get(name))
        files.append(entry)
        log(f"{name}: module vs reference {worst_module:.2g}, onnxruntime vs reference {worst[name]:.2g}")
    fusion_feeds = {"audio_feat": wants["audio"]["audio_feat"], "cls_feat": wants["global"]["cls_feat"],
                    "video_feat": wants["temporal"]["video_feat"]}
    want = fusion_reference(m["fusion"], *fusion_feeds.values())
    entry, _, worst["fusion"] = export_checked("fusion", m["fusion"], fusion_feeds, want, *specs["fusion"], bundle,
                                               REFERENCES["fusion"])
    files.append(entry)
    # A missing modality: zero input features, whose rows are the projector's bias.
    zero_rows = torch.stack([m["temporal"].llama_proj_video.bias.detach(),
                             m["audio"].llama_proj_audio.bias.detach()]).float().numpy().astype("<f4")
    (bundle / "zero-rows.f32").write_bytes(zero_rows.tobytes())
    files.append(file_entry(bundle, "zero-rows.f32", "zero_rows", "raw-f32", "fp32",
                            outputs=[tensor_spec("zero_rows", [2, d])]))
    return files, m["reports"], worst


def check_only(args) -> None:
    llama, ckpt, lora, _ = check_inputs(args)
    cfg = llama["config"]
    log(f"inputs are consistent: LLaMA {cfg['num_hidden_layers']} layers x {cfg['hidden_size']}, LoRA r {lora['r']} "
        f"alpha {lora['alpha']:g} on {len(lora['pairs'])} pairs, EVA (global {args.eva_depth} blocks, temporal "
        f"{args.eva_depth + 1} and its norm), Whisper's encoder, ConvProAttention")


def build(args, out: Path, staging: Path, bundle: Path, work: Path, memory: MemorySampler) -> None:
    stages = Stages(["check inputs", "hash inputs", "engines", "llm", "manifest"], memory)
    llama, ckpt, lora, ckpt_config = stages.run("check inputs", check_inputs, args)
    cfg = llama["config"]
    d = cfg["hidden_size"]
    whisper_files = [args.whisper / "config.json", *sorted(args.whisper.glob("model*.safetensors")),
                     *sorted(args.whisper.glob("pytorch_model*.bin"))]
    inputs = [args.eva, args.checkpoint, *whisper_files, args.llama / "config.json", args.llama / "tokenizer.model",
              *llama["files"]]
    hashes = stages.run("hash inputs", hash_inputs, inputs)
    files, reports, worst = stages.run("engines", export_engines, args, ckpt, d, bundle)
    gguf_path, delta_ratios = stages.run("llm", convert_llm, args, lora, bundle, work)
    files.append(llm_entry(bundle, gguf_path, args.llm_outtype))
    lora_report = {k: lora[k] for k in ("r", "alpha", "scaling", "targets", "alpha_from")}
    lora_report["pairs"] = len(lora["pairs"])
    provenance = {
        "source": "official Emotion-LLaMA-v2 checkpoints", "exporter": "emollama-export official-v2 (python)",
        "exporter_version": EXPORTER_VERSION, "torch": torch.__version__, "transformers": transformers.__version__,
        "onnxruntime": ort.__version__, "python": platform.python_version(), "created_unix": int(time.time()),
        "inputs": {(f"{Path(p).parent.name}/" if Path(p).parent in (args.llama, args.whisper) else "") + Path(p).name: h
                   for p, h in hashes.items()},
        "checkpoint_config": {k: ckpt_config.get(k) for k in ("arch", "lora_r", "lora_alpha", "image_size",
                                                                "llama_model") if k in ckpt_config},
        "rms_norm_eps": cfg["rms_norm_eps"], "lora": lora_report,
        "temporal_window": "seed 42 reseeded per clip (the authors' feature tool); v2 spec §6.5 risk 2",
    }
    description = "Emotion-LLaMA-v2, exported from the official checkpoints."
    manifest = bundle_manifest_v2(f"emotion-llama-v2-{hashes[str(args.checkpoint)]['sha256'][:12]}", False,
                                  description, provenance, llm_info(llama), files)
    stages.run("manifest", write_json_atomic, bundle / "manifest.json", manifest)
    used = len(ckpt.used)
    report = {
        "inputs": hashes,
        "keys": {"checkpoint": {**ckpt.report(), "tensors_used": used}, "llama": llama["report"], **reports},
        "lora": {**lora_report, "delta_ratio": delta_ratios},
        "parity": {f["path"]: f.get("parity") for f in files if f.get("parity")},
        "open_questions": [
            "eva_vit_g.pth's block 39 and norm: present, so the temporal branch is the trained one (v2 spec §6.5 1)",
            "the temporal window: seed 42 per clip (the authors' tool), not the process-wide stream of the demo",
            "the global frame: the first (inference.py), not training's peak frame",
            "the audio: FFmpeg 16 kHz (training's features), not moviepy's decimation (the demo)",
        ],
        "stages_s": stages.times, "memory": memory.report(),
        "files": {f["path"]: f["size"] for f in files},
    }
    log(f"checkpoint: {used} tensors used")
    finish_export(report, stages, staging, work, out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m emollama_export.official_v2", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True, help="checkpoint_9.pth (Emotion-LLaMA-v2, stage 2)")
    ap.add_argument("--eva", type=Path, required=True, help="eva_vit_g.pth")
    ap.add_argument("--whisper", type=Path, required=True, help="the whisper-large-v3 folder")
    ap.add_argument("--llama", type=Path, required=True, help="the Llama-2-7b-chat-hf folder")
    ap.add_argument("--out", type=Path, help="output folder (bundle/ and export-report.json)")
    ap.add_argument("--check", action="store_true",
                    help="only read and check every input (seconds), as the export's first stage does")
    ap.add_argument("--vocab-gguf", type=Path, required=True, help="llama.cpp ggml-vocab-llama-spm.gguf")
    ap.add_argument("--converter-dir", type=Path, required=True, help="llama.cpp's convert_hf_to_gguf.py folder")
    ap.add_argument("--llm-outtype", choices=["f16", "f32", "q8_0"], default="f16",
                    help="GGUF type (K-quants afterwards: emollama quantize --bundle)")
    ap.add_argument("--eva-depth", type=int, default=EVA_DEPTH,
                    help="the global branch's blocks (official: 39; the temporal one has one more; tests: fewer)")
    args = ap.parse_args(argv)
    if args.out is None and not args.check:
        ap.error("--out is required (or --check)")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    for p in (args.eva, args.checkpoint, args.whisper, args.llama):
        if not p.exists():
            sys.exit(f"error: {p}: no such file or folder")
    args.llama, args.whisper = args.llama.resolve(), args.whisper.resolve()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    try:
        check_only(args) if args.check else staged_export(args, build)
    except ExportError as e:
        sys.exit(f"error: {e}" + ("" if args.check else "\nno bundle was written"))


if __name__ == "__main__":
    main()
