"""Emotion-LLaMA-v2 at its real dimensions with random weights, for the full-size run
(`scripts/fullsize-v2`; not CI): the four engines at the official sizes (EVA-g 39 blocks at
448 px, EVA-g 40 blocks and its norm at 224 px, whisper-large-v3's encoder, ConvProAttention,
the 4096-wide projectors), their weights fp16-exact as the downloaded files are and stored
fp16 in the graphs as the official export stores them, each checked against its
independent reference on one input; an LLM of LLaMA-2-7B's width with 2 of its 32 layers
(the rows' width is what the encoders need; the 7B LLM's costs are v1's, measured there).
Writes OUT/bundle and OUT/fullsize-report.json: per engine the export time, file size and
parity, the exporter's peak memory per stage.
"""

import argparse
import json
import platform
import shutil
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import transformers
from transformers import WhisperConfig

from . import EXPORTER_VERSION, memory
from .eva import EvaConfig
from .llama import tiny_llama, write_gguf
from .manifest import bundle_manifest_v2, file_entry, tensor_spec
from .memory import MemorySampler
from .official_code import EVA_DEPTH, EVA_HEAD_DIM, EVA_MLP_RATIO
from .official_encoders import store_fp16
from .synthetic import log
from .tensors import write_json_atomic
from .v2 import (AudioEngineV2, FusionEngineV2, GlobalEngineV2, TemporalEngineV2, audio_reference,
                 engine_specs, export_checked, fusion_reference, global_reference, temporal_reference)

LLM_WIDTH, LLM_HEADS, LLM_FFN = 4096, 32, 11008


def whisper_large_v3() -> WhisperConfig:
    return WhisperConfig(d_model=1280, encoder_layers=32, decoder_layers=1, encoder_attention_heads=20,
                         decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120, num_mel_bins=128,
                         max_source_positions=1500, vocab_size=51866, decoder_start_token_id=50258)


@torch.no_grad()
def randomise(module: torch.nn.Module) -> torch.nn.Module:
    """Seeded random weights at 1/sqrt(fan-in), made fp16-exact (the hub's files are fp16)."""
    for p in module.parameters():
        fan_in = p[0].numel() if p.dim() > 1 else 16
        p.copy_((torch.randn_like(p) / fan_in ** 0.5).half().float())
    return module.eval()


def build(out: Path, vocab_gguf: Path) -> None:
    started = time.time()
    torch.manual_seed(7)
    rng = np.random.default_rng(7)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    bundle = staging / "bundle"
    bundle.mkdir(parents=True)
    eva = EvaConfig(embed_dim=1408, depth=EVA_DEPTH, num_heads=1408 // EVA_HEAD_DIM, mlp_ratio=EVA_MLP_RATIO)
    whisper = whisper_large_v3()
    specs = engine_specs(LLM_WIDTH, eva.embed_dim, whisper)
    files, report, wants = [], {"engines": {}}, {}
    fp16 = {"global": lambda m: store_fp16(m.visual_encoder), "temporal": lambda m: store_fp16(m.visual_encoder),
            "audio": lambda m: store_fp16(m.encoder, "whisper-large-v3")}
    feeds = sample_inputs(rng, whisper.num_mel_bins)
    builders = {
        "global": (lambda: GlobalEngineV2(eva, LLM_WIDTH), global_reference, "pixel_values"),
        "temporal": (lambda: TemporalEngineV2(replace(eva, image_size=224, depth=EVA_DEPTH + 1), LLM_WIDTH),
                     temporal_reference, "frames"),
        "audio": (lambda: AudioEngineV2(whisper, LLM_WIDTH), audio_reference, "input_features"),
    }
    with MemorySampler() as sampler:
        for name, (make, reference, input_name) in builders.items():
            t = time.time()
            sampler.begin(name)
            module = randomise(make())
            memory.phase("reference")
            wants[name] = reference(module, feeds[name][input_name])
            entry, worst_module, worst_onnx = export_checked(name, module, feeds[name], wants[name], *specs[name],
                                                             bundle, f"{reference.__name__} (v2.py)", fp16[name])
            if name == "temporal":
                temporal_bias = module.llama_proj_video.bias.detach().clone()
            if name == "audio":
                audio_bias = module.llama_proj_audio.bias.detach().clone()
            del module
            memory.release()
            files.append(entry)
            report["engines"][name] = {"seconds": round(time.time() - t, 1), "bytes": entry["size"],
                                       "module_vs_reference": worst_module, "onnxruntime_vs_reference": worst_onnx}
            log(f"{name}: {report['engines'][name]}")
        sampler.begin("fusion")
        t = time.time()
        fusion = randomise(FusionEngineV2(whisper.d_model, eva.embed_dim, LLM_WIDTH))
        fusion_feeds = {"audio_feat": wants["audio"]["audio_feat"], "cls_feat": wants["global"]["cls_feat"],
                        "video_feat": wants["temporal"]["video_feat"]}
        want = fusion_reference(fusion, *fusion_feeds.values())
        entry, worst_module, worst_onnx = export_checked("fusion", fusion, fusion_feeds, want, *specs["fusion"],
                                                         bundle, "convpro_numpy (v2.py)")
        files.append(entry)
        report["engines"]["fusion"] = {"seconds": round(time.time() - t, 1), "bytes": entry["size"],
                                       "module_vs_reference": worst_module, "onnxruntime_vs_reference": worst_onnx}
        zero_rows = torch.stack([temporal_bias, audio_bias]).float().numpy().astype("<f4")
        (bundle / "zero-rows.f32").write_bytes(zero_rows.tobytes())
        files.append(file_entry(bundle, "zero-rows.f32", "zero_rows", "raw-f32", "fp32",
                                outputs=[tensor_spec("zero_rows", [2, LLM_WIDTH])]))
        sampler.begin("llm")
        llm = tiny_llama(hidden=LLM_WIDTH, layers=2, heads=LLM_HEADS, intermediate=LLM_FFN, seed=7)
        write_gguf(llm, bundle / "llm-f16.gguf", vocab_gguf, "f16", "emollama full-size v2 run (2 of 32 layers)")
        files.append(file_entry(bundle, "llm-f16.gguf", "llm", "gguf", "f16"))
        llm_info = {"embedding_width": LLM_WIDTH, "vocab_size": 32000, "bos_id": 1, "eos_id": 2, "n_ctx_train": 4096,
                    "n_layer": 2, "n_head_kv": LLM_HEADS, "head_dim": LLM_WIDTH // LLM_HEADS,
                    "n_params": sum(p.numel() for p in llm.parameters())}
        del llm
    report["memory"] = sampler.report()
    report["seconds"] = round(time.time() - started, 1)
    provenance = {"source": "random weights at Emotion-LLaMA-v2's real dimensions (seed 7)",
                  "exporter": "emollama-export v2_fullsize (python)", "exporter_version": EXPORTER_VERSION,
                  "torch": torch.__version__, "transformers": transformers.__version__,
                  "onnxruntime": ort.__version__, "python": platform.python_version(), "created_unix": int(time.time())}
    write_json_atomic(bundle / "manifest.json", bundle_manifest_v2(
        "fullsize-v2-seed7", True, "Emotion-LLaMA-v2's engines at their real dimensions, RANDOM weights; an LLM of "
        "the 7B's width with 2 layers: for measurements only", provenance, llm_info, files))
    write_json_atomic(staging / "fullsize-report.json", report)
    shutil.rmtree(out, ignore_errors=True)
    staging.replace(out)
    log(f"done in {report['seconds']} s -> {out}; peak memory (GB) {report['memory']['peak_gb']}")
    print(json.dumps(report["engines"], indent=1))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m emollama_export.v2_fullsize", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--vocab-gguf", type=Path, required=True, help="llama.cpp ggml-vocab-llama-spm.gguf")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    build(args.out.resolve(), args.vocab_gguf)


if __name__ == "__main__":
    main()
