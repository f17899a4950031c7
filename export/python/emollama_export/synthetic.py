"""Synthetic mode: the exact Emotion-LLaMA architectures at tiny widths, seeded random
weights, exported as a complete bundle, with PyTorch golden values beside it.

Layout written under OUT:
  bundle/    manifest.json, global.onnx, local.onnx, temporal.onnx, audio.onnx,
             feats_llama_proj{1,2,3}.onnx, face-*.onnx, zero-rows.f32, llm-f32.gguf
  goldens/   index.json + raw f32 tensors (engine inputs/outputs, LLM logits and tokens)
"""

import argparse
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import transformers

from . import EXPORTER_VERSION, memory, tensorrt_support
from .audio import AudioEngine, hubert_config
from .eva import EvaConfig, GlobalEngine
from .llama import spliced_reference, tiny_llama, write_gguf
from .mae import LocalEngine, MaeConfig
from .manifest import bundle_manifest, file_entry, tensor_spec
from .projectors import export_projectors
from .tensors import TensorStore, write_json_atomic
from .videomae import TemporalEngine, VideoMaeConfig

SEED = 1234
PARITY_TOLERANCE = 1e-4

def build_engines(d: int):
    """The four engine modules at the synthetic widths (weights random until loaded)."""
    return {
        "global": GlobalEngine(EVA, d).eval(),
        "local": LocalEngine(MAE, d).eval(),
        "temporal": TemporalEngine(VMAE, d).eval(),
        "audio": AudioEngine(hubert_config(**HUBERT), d).eval(),
    }


# Tiny widths; every structural constant (image sizes, patch sizes, grouping, tubelets,
# conv kernels and strides, row counts) is the official one.
LLM = dict(hidden=64, layers=2, heads=4, intermediate=176)
EVA = EvaConfig(embed_dim=32, depth=2, num_heads=2)
MAE = MaeConfig(embed_dim=32, depth=2, num_heads=2)
VMAE = VideoMaeConfig(embed_dim=32, depth=2, num_heads=2)
HUBERT = dict(hidden=32, layers=2, heads=2, intermediate=64, conv_dim=32, pos_conv_kernel=16, pos_conv_groups=4)


def log(msg: str) -> None:
    print(f"[export] {msg}", flush=True)


def export_onnx(module, args, path: Path, inputs: list, outputs: list, dynamic: dict, fold: bool = True) -> None:
    """`fold=False` keeps fp16-stored weights fp16 in the file (folding would bake their
    casts to fp32 into fp32 initializers)."""
    tmp = path.with_name(path.name + ".partial")
    # Without gradients: the trace's forward pass would otherwise keep every activation
    # for a backward pass (EVA-g at 448 px: about 10 GB).
    module.requires_grad_(False)
    with torch.no_grad():
        torch.onnx.export(
            module, args, str(tmp), input_names=inputs, output_names=outputs,
            dynamic_axes=dynamic, opset_version=17, dynamo=False, do_constant_folding=fold,
        )
    module.eval()  # the legacy exporter restores training mode
    # A graph TensorRT would refuse is no engine for a Jetson: refuse it here, named.
    for warning in tensorrt_support.require(tmp, shown=path.name):
        log(f"{path.name}: TensorRT: {warning}")
    tmp.replace(path)


def parity_session(path: Path, optimize: bool = True) -> ort.InferenceSession:
    """A CPU session for the parity check. `optimize=False` for fp16-stored weights: with
    its graph optimizations ONNX Runtime folds their casts while the fp16 model is still
    loaded (EVA-g: 10.7 GB at once); unoptimized, the same arithmetic needs half that."""
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_diff(sess: ort.InferenceSession, feeds: dict, expected: dict) -> float:
    got = sess.run(list(expected), feeds)
    return max(float(np.abs(g - e).max()) for g, e in zip(got, expected.values()))


def torch_outputs(module, cases: list, in_names: list, out_names: list) -> list:
    """The fp32 PyTorch outputs at every case (the parity reference)."""
    results = []
    with torch.no_grad():
        for feeds in cases:
            out = module(*(torch.from_numpy(feeds[n]) for n in in_names))
            out = out if isinstance(out, tuple) else (out,)
            results.append({n: o.numpy() for n, o in zip(out_names, out)})
    return results


def onnx_parity(name: str, path: Path, cases: list, expected: list, optimize: bool = True) -> float:
    """max |ONNX Runtime - PyTorch| over the cases; a failure above the tolerance."""
    memory.phase(f"{name}: parity")
    sess, worst = parity_session(path, optimize), 0.0
    for i, (feeds, want) in enumerate(zip(cases, expected)):
        diff = max_diff(sess, feeds, want)
        worst = max(worst, diff)
        log(f"{name}: case {i} {[list(a.shape) for a in feeds.values()]} max|onnxruntime - torch| = {diff:.3g}")
    del sess
    memory.release()
    if worst > PARITY_TOLERANCE:
        raise SystemExit(f"{name}: ONNX parity {worst} exceeds {PARITY_TOLERANCE}")
    return worst


def engine_entry(name: str, bundle: Path, input_specs, output_specs, worst: float, cases: int,
                 precision: str = "fp32", optimized: bool = True) -> dict:
    return file_entry(
        bundle, f"{name}.onnx", f"{name}_engine", "onnx", precision,
        inputs=input_specs, outputs=output_specs,
        parity={"reference": "pytorch fp32 cpu", "runtime": f"onnxruntime {ort.__version__} cpu",
                "max_abs_diff": worst, "tolerance": PARITY_TOLERANCE, "cases": cases,
                **({} if optimized else {"onnxruntime_graph_optimizations": "off"})},
    )


def export_engine(name: str, module, cases: list, bundle: Path, input_specs, output_specs, dynamic,
                  fold: bool = True) -> list:
    """The PyTorch outputs at every case, then the ONNX file: what the parity check needs,
    so that the caller can release the module before it (EVA-g: 2 GB more headroom)."""
    in_names = [s["name"] for s in input_specs]
    out_names = [s["name"] for s in output_specs]
    memory.phase(f"{name}: PyTorch reference")
    expected = torch_outputs(module, cases, in_names, out_names)
    memory.phase(f"{name}: ONNX export")
    log(f"{name}: exporting ONNX")
    export_onnx(module, tuple(torch.from_numpy(cases[0][n]) for n in in_names), bundle / f"{name}.onnx", in_names,
                out_names, dynamic, fold=fold)
    memory.release()
    return expected


def engine(name, module, cases, bundle: Path, store: TensorStore, input_specs, output_specs, dynamic):
    """Export one engine, check ONNX Runtime parity against the PyTorch `module` (fp32
    arithmetic) at every case and keep the cases as goldens."""
    started = time.time()
    expected = export_engine(name, module, cases, bundle, input_specs, output_specs, dynamic)
    worst = onnx_parity(name, bundle / f"{name}.onnx", cases, expected)
    golden_cases = [{"inputs": {n: store.put(f"{name}.case{i}.{n}", a) for n, a in feeds.items()},
                     "outputs": {n: store.put(f"{name}.case{i}.{n}", a) for n, a in want.items()}}
                    for i, (feeds, want) in enumerate(zip(cases, expected))]
    log(f"{name}: exported and checked in {time.time() - started:.1f}s")
    return engine_entry(name, bundle, input_specs, output_specs, worst, len(cases)), golden_cases


def export_face_detector(bundle: Path, facenet_dir: Path) -> list:
    """MTCNN's three nets (real facenet-pytorch weights) as ONNX, in the bundle."""
    from .faces import load_mtcnn

    mtcnn = load_mtcnn(facenet_dir)
    specs = {
        "pnet": ([tensor_spec("image", ["batch", 3, "height", "width"])],
                 [tensor_spec("reg", ["batch", 4, "out_h", "out_w"]), tensor_spec("prob", ["batch", 2, "out_h", "out_w"])],
                 {"image": {0: "batch", 2: "height", 3: "width"}, "reg": {0: "batch", 2: "out_h", 3: "out_w"},
                  "prob": {0: "batch", 2: "out_h", 3: "out_w"}}, 12),
        "rnet": ([tensor_spec("image", ["batch", 3, 24, 24])],
                 [tensor_spec("reg", ["batch", 4]), tensor_spec("prob", ["batch", 2])],
                 {"image": {0: "batch"}, "reg": {0: "batch"}, "prob": {0: "batch"}}, 24),
        "onet": ([tensor_spec("image", ["batch", 3, 48, 48])],
                 [tensor_spec("reg", ["batch", 4]), tensor_spec("landmarks", ["batch", 10]), tensor_spec("prob", ["batch", 2])],
                 {"image": {0: "batch"}, "reg": {0: "batch"}, "landmarks": {0: "batch"}, "prob": {0: "batch"}}, 48),
    }
    entries = []
    for name, (inputs, outputs, dynamic, size) in specs.items():
        net = getattr(mtcnn, name).eval()
        path = bundle / f"face-{name}.onnx"
        example = torch.rand(2, 3, size + 5 if name == "pnet" else size, size + 9 if name == "pnet" else size) * 2 - 1
        export_onnx(net, (example,), path, [s["name"] for s in inputs], [s["name"] for s in outputs], dynamic)
        with torch.no_grad():
            want = {s["name"]: o.numpy() for s, o in zip(outputs, net(example))}
        diff = max_diff(parity_session(path), {"image": example.numpy()}, want)
        log(f"face {name}: max|onnxruntime - torch| = {diff:.3g}")
        entries.append(file_entry(bundle, path.name, f"face_{name}", "onnx", "fp32", inputs=inputs, outputs=outputs,
                                  parity={"reference": "facenet-pytorch 2.6.0 MTCNN (torch fp32 cpu)",
                                          "max_abs_diff": diff, "tolerance": PARITY_TOLERANCE},
                                  source="facenet-pytorch 2.6.0 data/" + name + ".pt (MIT)"))
    return entries


def build(out: Path, vocab_gguf: Path, facenet_dir: Path) -> None:
    started = time.time()
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    bundle, goldens = staging / "bundle", staging / "goldens"
    bundle.mkdir(parents=True)
    store = TensorStore(goldens)
    d = LLM["hidden"]
    files, golden_engines = [], {}

    def uniform(*shape):
        return rng.random(shape, dtype=np.float32)

    # Global: EVA ViT-g structure at 448 px (CLIP-normalised pixels). Dynamic batch.
    size = EVA.image_size
    glob = GlobalEngine(EVA, d).eval()
    cases = [{"pixel_values": ((uniform(b, 3, size, size) - 0.45) / 0.27).astype(np.float32)} for b in (1, 2)]
    rows = (size // EVA.patch_size) ** 2 // EVA.group
    e, g = engine("global", glob, cases, bundle, store,
                  [tensor_spec("pixel_values", ["batch", 3, size, size])],
                  [tensor_spec("patch_rows", ["batch", rows, d]), tensor_spec("cls_row", ["batch", 1, d])],
                  {"pixel_values": {0: "batch"}, "patch_rows": {0: "batch"}, "cls_row": {0: "batch"}})
    files.append(e); golden_engines["global"] = g

    # Local: MAE ViT-L structure over a dynamic number of 224 px face frames in [0,1].
    local = LocalEngine(MAE, d).eval()
    cases = [{"faces": uniform(n, 3, MAE.image_size, MAE.image_size)} for n in (3, 5)]
    e, g = engine("local", local, cases, bundle, store,
                  [tensor_spec("faces", ["frames", 3, MAE.image_size, MAE.image_size])],
                  [tensor_spec("local_row", [1, 1, d])], {"faces": {0: "frames"}})
    files.append(e); golden_engines["local"] = g

    # Temporal: VideoMAE structure, 16 frames x 224 px in [0,1]. Dynamic batch.
    temporal = TemporalEngine(VMAE, d).eval()
    cases = [{"clip": uniform(b, 3, VMAE.frames, VMAE.image_size, VMAE.image_size)} for b in (1, 2)]
    e, g = engine("temporal", temporal, cases, bundle, store,
                  [tensor_spec("clip", ["batch", 3, VMAE.frames, VMAE.image_size, VMAE.image_size])],
                  [tensor_spec("temporal_row", ["batch", 1, d])],
                  {"clip": {0: "batch"}, "temporal_row": {0: "batch"}})
    files.append(e); golden_engines["temporal"] = g

    # Audio: HuBERT (stable layer norm) over a dynamic number of 16 kHz samples.
    audio = AudioEngine(hubert_config(**HUBERT), d).eval()
    cases = [{"waveform": (0.3 * rng.standard_normal((1, n))).astype(np.float32)} for n in (16000, 40000)]
    e, g = engine("audio", audio, cases, bundle, store,
                  [tensor_spec("waveform", [1, "samples"])],
                  [tensor_spec("audio_row", [1, 1, d])], {"waveform": {1: "samples"}})
    files.append(e); golden_engines["audio"] = g

    # The rows of an all-zero utterance feature (= the projector biases): the official
    # demo feeds zeros for local and temporal, and the runtime uses them for missing input.
    zero_rows = np.stack([local.feats_llama_proj1.bias.detach().numpy(),
                          temporal.feats_llama_proj2.bias.detach().numpy(),
                          audio.feats_llama_proj3.bias.detach().numpy()]).astype("<f4")
    (bundle / "zero-rows.f32").write_bytes(zero_rows.tobytes())
    files.append(file_entry(bundle, "zero-rows.f32", "zero_rows", "raw-f32", "fp32",
                            outputs=[tensor_spec("zero_rows", [3, d])]))
    # The projectors alone, for pre-extracted features (the official eval's .npy files).
    files.extend(export_projectors(bundle, {k: (proj.weight.detach(), proj.bias.detach()) for k, proj in (
        (1, local.feats_llama_proj1), (2, temporal.feats_llama_proj2), (3, audio.feats_llama_proj3))}))
    # The PyTorch modules themselves, for the end-to-end reference pipeline (tests only).
    torch_dir = staging / "torch"
    torch_dir.mkdir()
    for name, module in (("global", glob), ("local", local), ("temporal", temporal), ("audio", audio)):
        torch.save(module.state_dict(), torch_dir / f"{name}.pt")

    # Face detector: real MTCNN weights (not synthetic: faces must really be found).
    files.extend(export_face_detector(bundle, facenet_dir))

    # Backbone: tiny LLaMA-2 with the real vocabulary, F32 GGUF.
    log("llm: writing GGUF")
    llm = tiny_llama(seed=SEED, **LLM)
    write_gguf(llm, bundle / "llm-f32.gguf", vocab_gguf, "f32", "emollama synthetic LLaMA-2")
    llm.save_pretrained(staging / "torch" / "llm")
    files.append(file_entry(bundle, "llm-f32.gguf", "llm", "gguf", "f32",
                            parity={"reference": f"transformers {transformers.__version__} LlamaForCausalLM fp32",
                                    "checked_by": "emollama tests (llama.cpp logits vs goldens)",
                                    "tolerance": 1e-3}))
    # The eval prompt's two text segments (spec §4.3 golden ids) around 260 embedding rows.
    prefix = [1, 1, 518, 25580, 29962, 529, 9641, 29958]
    suffix = [1533, 9641, 29958, 529, 14394, 5299, 19132, 10605, 2565, 14394, 29958,
              450, 2022, 297, 4863, 4083, 29901, 29871, 518, 29914, 25580, 29962]
    rows_260 = rng.standard_normal((260, d)).astype(np.float32)
    seg_logits, greedy = spliced_reference(llm, [prefix, rows_260, suffix], n_greedy=16)
    log(f"llm: greedy continuation {greedy}")
    golden_llm = {
        "segments": [{"tokens": prefix}, {"embeddings": store.put("llm.rows", rows_260)}, {"tokens": suffix}],
        "logits_at_segment_ends": store.put("llm.segment_logits", seg_logits),
        "greedy_tokens": greedy,
        "reference": f"transformers {transformers.__version__} LlamaForCausalLM fp32 eager",
    }

    provenance = {
        "source": f"synthetic (seed {SEED})",
        "exporter": "emollama-export (python)",
        "exporter_version": EXPORTER_VERSION,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "created_unix": int(time.time()),
    }
    llm_info = {"embedding_width": d, "vocab_size": 32000, "bos_id": 1, "eos_id": 2, "n_ctx_train": 4096,
                "n_layer": LLM["layers"], "n_head_kv": LLM["heads"], "head_dim": d // LLM["heads"],
                "n_params": sum(p.numel() for p in llm.parameters())}
    description = ("Exact Emotion-LLaMA architectures at tiny widths with seeded RANDOM weights: "
                   "for tests and demos; its answers mean nothing.")
    manifest = bundle_manifest(f"synthetic-seed{SEED}", True, description, provenance, llm_info, rows, files)
    write_json_atomic(bundle / "manifest.json", manifest)
    write_json_atomic(goldens / "index.json", {"format_version": 1, "engines": golden_engines, "llm": golden_llm,
                                               "tolerance": {"engines": PARITY_TOLERANCE, "llm_logits_f32": 1e-3}})
    shutil.rmtree(out, ignore_errors=True)
    staging.replace(out)
    log(f"done in {time.time() - started:.1f}s -> {out}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m emollama_export.synthetic", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="output folder (bundle/ and goldens/)")
    ap.add_argument("--vocab-gguf", type=Path, required=True, help="llama.cpp ggml-vocab-llama-spm.gguf")
    ap.add_argument("--facenet-dir", type=Path, required=True, help="extracted facenet-pytorch 2.6.0 wheel")
    args = ap.parse_args(argv)
    if not args.vocab_gguf.is_file():
        sys.exit(f"vocabulary GGUF not found: {args.vocab_gguf}")
    # The legacy (TorchScript) exporter is chosen on purpose: it keeps dynamic axis names.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    build(args.out.resolve(), args.vocab_gguf, args.facenet_dir)


if __name__ == "__main__":
    main()
