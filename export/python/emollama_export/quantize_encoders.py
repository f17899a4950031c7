"""Smaller encoder engines for a bundle, each accepted only at a stated parity with its
fp32 engine (issue: the Orin Nano 8 GB with all four encoders).

  --fp16   the weights of every MatMul, Gemm and Conv stored as fp16, a Cast before their
           use: LayerNorm, softmax, GELU and the residual adds compute in fp32 as before,
           the file is about half the size, and TensorRT's fp16 build starts from fp16
           weights. Every encoder and projector.
  --int8   explicit quantization (Q/DQ, the route TensorRT 10 keeps; its calibrator-based
           implicit int8 is deprecated): symmetric int8, weights per output channel,
           MatMul/Gemm/Conv only (LayerNorm, softmax, GELU and the adds left in fp32, as
           published ViT int8 recipes do), activation ranges from ONNX Runtime's MinMax
           calibration on the runtime's own encoder inputs for a folder of clips
           (`emollama dump-inputs`, so the preprocessing is exactly the runtime's).
           The encoders; the projectors (a few Gemm rows) are left as they are.

The clips are split: every fourth is held out. On the held-out inputs each new engine's
outputs must keep a minimum cosine similarity (row by row over the last axis) and a
maximum |diff| relative to the fp32 output's largest magnitude; an engine that misses
either is refused by name and nothing is written. The output is a new bundle (the LLM,
the face nets and the rest copied) whose manifest records each engine's precision, the
calibration set's hash and the parity met.

usage: python -m emollama_export.quantize_encoders --bundle IN --out OUT --fp16
       python -m emollama_export.quantize_encoders --bundle IN --out OUT --int8 --calibration CLIPS
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import EncodeError
from onnx import TensorProto, helper, numpy_helper

from .manifest import PROTOBUF_LIMIT, sha256_file
from .tensors import write_json_atomic

ROW_ENGINES = ["global_engine", "local_engine", "temporal_engine", "audio_engine", "fusion_engine"]
PROJECTORS = ["local_projector", "temporal_projector", "audio_projector"]
WEIGHTED_OPS = {"MatMul", "Gemm", "Conv"}
# Left in fp32 at int8: the audio encoders' convolutions over the raw signal (HuBERT's
# feature encoder, Whisper's two convs over the log-mel), as speech int8 recipes keep
# them; with them quantized HuBERT's rows fell to cosine 0.88 on the synthetic bundle.
KEEP_FLOAT = {"audio_engine": {"Conv"}}
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".flv")
# The gates, per precision: (minimum cosine, maximum relative |diff|).
GATES = {"fp16": (0.9999, 0.01), "int8": (0.98, 0.15)}
MIN_CLIPS = 4


class QuantizeError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[quantize] {msg}", flush=True)


def fp32_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every weight an fp32 initializer that its op reads directly: `Cast(fp16
    initializer) -> float` (the exporter's fp16-stored EVA graphs) folded into an fp32
    initializer, and then `Transpose(initializer)` (EVA's Linear layers: the Cast stopped
    PyTorch's exporter from folding it) into the transposed initializer. A MatMul whose
    weight came through a Transpose would be quantized as if it read an activation: one
    scale for the whole matrix, and the fp32 weights kept in the file beside it.

    The folding is done on numpy arrays and each result becomes an initializer once: a
    protobuf message keeps the memory of every field ever set until the whole model is
    freed, so folding proto by proto held EVA-g's fp16, fp32 and transposed copies at
    once (18 GB)."""
    inits = {i.name: i for i in model.graph.initializer}
    readers = Counter(i for n in model.graph.node for i in n.input)
    folded, keep = {}, []

    def elem_type(name):
        if name in folded:
            return helper.np_dtype_to_tensor_dtype(folded[name].dtype)
        return inits[name].data_type if name in inits else None

    def value(name):
        return folded[name] if name in folded else numpy_helper.to_array(inits[name])

    for node in model.graph.node:
        src = node.input[0] if node.input else None
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Cast" and elem_type(src) == TensorProto.FLOAT16 and attrs["to"].i == TensorProto.FLOAT:
            folded[node.output[0]] = value(src).astype(np.float32)
        elif node.op_type == "Transpose" and elem_type(src) == TensorProto.FLOAT:
            perm = list(attrs["perm"].ints) if "perm" in attrs else None
            folded[node.output[0]] = np.ascontiguousarray(np.transpose(value(src), perm))
        else:
            keep.append(node)
            continue
        if src in folded and readers[src] == 1:  # read only by the node just folded
            del folded[src]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    live = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(live)
    for name in [n for n in folded if n in used]:
        model.graph.initializer.append(numpy_helper.from_array(folded.pop(name), name))
    return model


def fp16_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every fp32 initializer a MatMul, Gemm or Conv reads, stored as fp16 with a Cast to
    fp32 in front: the arithmetic of the graph is unchanged but for the weights' rounding."""
    weighted = {i for n in model.graph.node if n.op_type in WEIGHTED_OPS for i in n.input}
    casts, kept = [], []
    for init in model.graph.initializer:
        if init.name in weighted and init.data_type == TensorProto.FLOAT:
            half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + "_fp16")
            kept.append(half)
            casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                          name=init.name + "_cast"))
        else:
            kept.append(init)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def one_protobuf(model: onnx.ModelProto) -> bool:
    """Whether the model fits one protobuf (protobuf cannot even size one over 2 GiB)."""
    try:
        return model.ByteSize() < PROTOBUF_LIMIT
    except EncodeError:
        return False


def save(model: onnx.ModelProto, path: Path) -> bool:
    """A working file: one file under the protobuf limit, else the weights beside it
    (`<name>.data`; EVA-g's 4.2 GB of fp32 weights while it is quantized). Whether they
    went beside it."""
    if one_protobuf(model):
        onnx.save(model, str(path))
        return False
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data")
    return True


def save_engine(model: onnx.ModelProto, path: Path, role: str) -> None:
    """A bundle's engine: one file, as the manifest lists and hashes it (bundles carry no
    external data files)."""
    if not one_protobuf(model):
        raise QuantizeError(f"{role}: the new engine is over ONNX's 2 GiB protobuf limit for one file")
    onnx.save(model, str(path))


def link_or_copy(src: str, dst: str) -> str:
    """The new bundle shares the unchanged files (the LLM's GGUF: gigabytes) with the old
    one where they are on one file system: nothing rewrites a bundle's file in place."""
    try:
        os.link(src, dst)
        return dst
    except OSError:
        return shutil.copy2(src, dst)


def clips_of(folder: Path) -> list:
    if not folder.is_dir():
        raise QuantizeError(f"--calibration {folder}: not a folder of clips")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    clips = [p for p in files if p.suffix.lower() in VIDEO_EXTENSIONS]
    if not clips:
        others = ", ".join(p.name for p in files[:5]) or "nothing"
        raise QuantizeError(f"--calibration {folder} holds no video clips ({', '.join(VIDEO_EXTENSIONS)}); "
                            f"found {others}")
    if len(clips) < MIN_CLIPS:
        raise QuantizeError(f"--calibration {folder} holds {len(clips)} clips; int8 calibration needs at least "
                            f"{MIN_CLIPS} (three in four calibrate, every fourth is held out for the parity check)")
    return clips


def dump_inputs(clips: list, bundle: Path, emollama: str, out: Path, profile=None) -> list:
    """The runtime's encoder inputs for each clip, in one process (`emollama dump-inputs`:
    the bundle loaded once, no LLM prefill), into `out`; kept there for another run on the
    same bundle and clips (`--dumps`), which then reads them instead. A clip the runtime
    cannot read is an error naming it."""
    key = {"bundle": json.loads((bundle / "manifest.json").read_text())["id"], "clips": calibration_hash(clips)}
    done = out / "dumped.json"
    if done.exists() and json.loads(done.read_text()) == key:
        log(f"the runtime's encoder inputs for {len(clips)} clips: read from {out}")
        return [out / f"{i:04d}" for i in range(len(clips))]
    shutil.rmtree(out, ignore_errors=True)
    log(f"the runtime's encoder inputs for {len(clips)} clips")
    r = subprocess.run([emollama, "dump-inputs", *map(str, clips), "--bundle", str(bundle), "--out", str(out),
                        *(["--profile", profile] if profile else [])], capture_output=True, text=True)
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or ["no message"])[-1]
        clip = next((c.name for c in clips if str(c) in r.stderr), None)
        if clip is None:
            raise QuantizeError(f"emollama dump-inputs failed: {why}")
        raise QuantizeError(f"calibration clip {clip}: the runtime cannot use it ({why})")
    write_json_atomic(done, key)
    return [out / f"{i:04d}" for i in range(len(clips))]


def read_dump(dump: Path) -> dict:
    index = json.loads((dump / "index.json").read_text())["tensors"]
    return {name: np.fromfile(dump / meta["file"], dtype="<f4").reshape(meta["shape"]) for name, meta in index.items()}


def feeds_for(inputs: list, dumps: list) -> list:
    """An engine's feeds from the dumps that hold all its inputs (a clip without a face
    has no face crops for the MAE and VideoMAE engines)."""
    return [{n: d[n] for n in inputs} for d in dumps if all(n in d for n in inputs)]


CALIBRATION_BATCH = 8


def split_batches(feeds: list, entry: dict) -> list:
    """Feeds of at most CALIBRATION_BATCH along a dynamic first axis (MAE's face crops: up
    to 64 a clip): the same minima and maxima, a fraction of the memory (the full-size
    MAE's calibration on 64-crop runs was killed at 24 GB)."""
    dynamic = [i["name"] for i in entry["inputs"] if i["shape"] and not isinstance(i["shape"][0], int)]
    if not dynamic:
        return feeds
    out = []
    for feed in feeds:
        n = feed[dynamic[0]].shape[0]
        for start in range(0, n, CALIBRATION_BATCH):
            out.append({k: (v[start:start + CALIBRATION_BATCH] if k in dynamic else v) for k, v in feed.items()})
    return out


def calibration_hash(clips: list) -> str:
    """Of the clips' names and bytes, in order: the same set gives the same hash."""
    h = hashlib.sha256()
    for c in clips:
        h.update(c.name.encode() + b"\0" + sha256_file(c).encode() + b"\n")
    return h.hexdigest()


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def parity(fp32: Path, candidate: Path, feeds: list) -> dict:
    """Worst cosine (row by row over the last axis) and worst |diff| relative to the
    fp32 output's largest magnitude, over every output and held-out input. One session at
    a time: the fp16-stored EVA-g alone peaks at 11.5 GB while it loads."""
    ref = session(fp32)
    names = [o.name for o in ref.get_outputs()]
    expected = [ref.run(names, feed) for feed in feeds]
    del ref
    new = session(candidate)
    cos_min, rel_max, abs_max = 1.0, 0.0, 0.0
    for feed, want in zip(feeds, expected):
        for a, b in zip(want, new.run(names, feed)):
            a2, b2 = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
            norms = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
            cos = np.where(norms > 0, (a2 * b2).sum(axis=1) / np.maximum(norms, 1e-30), 1.0)
            diff = float(np.abs(a2 - b2).max())
            cos_min = min(cos_min, float(cos.min()))
            abs_max = max(abs_max, diff)
            rel_max = max(rel_max, diff / max(float(np.abs(a2).max()), 1e-30))
    return {"cosine_min": cos_min, "max_rel_diff": rel_max, "max_abs_diff": abs_max, "held_out_inputs": len(feeds)}


class Feeds:
    """ONNX Runtime's calibration reader over a list of feeds."""

    def __init__(self, feeds: list):
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)


def activation_ranges(src: Path, external: bool, feeds: list, ops: set, work: Path) -> Path:
    """MinMax ranges of every activation a quantized op reads or writes, written as ONNX
    Runtime's calibration cache. ONNX Runtime's own calibrator (inside `quantize_static`)
    runs its ReduceMin/ReduceMax-augmented graph in the default execution order, which
    keeps the attention maps of many layers alive at once: the full-size VideoMAE (1568
    tokens) held 10 GB per input and grew with each (killed at 24 GB). The same
    calibrator's graph run in priority-based order, without the memory arena, holds one
    layer's maps: 1.3 GB over its weights, flat from input to input."""
    from onnxruntime.quantization.calibrate import MinMaxCalibrater, save_tensors_data

    class LeanMinMax(MinMaxCalibrater):
        def create_inference_session(self):
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
            options.enable_cpu_mem_arena = False
            options.enable_mem_pattern = False
            self.infer_session = ort.InferenceSession(self.augmented_model_path, sess_options=options,
                                                      providers=self.execution_providers)

    calibrator = LeanMinMax(src, sorted(ops), str(work / "augmented.onnx"), use_external_data_format=external)
    calibrator.augment_graph()
    calibrator.model = None  # the graph's copy (EVA-g: 4.2 GB) is not needed to run it
    calibrator.create_inference_session()
    for feed in feeds:  # one at a time: each run's minima and maxima merged at once
        calibrator.collect_data(Feeds([feed]))
    cache = work / "ranges.json"
    save_tensors_data(calibrator.compute_data(), cache)
    return cache


def int8_engine(fp32: Path, out: Path, feeds: list, work: Path, ops: set) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    src = work / (fp32.stem + "-fp32-weights.onnx")
    external = save(fp32_weights(onnx.load(str(fp32))), src)
    ranges = activation_ranges(src, external, feeds, ops, work)
    quantize_static(str(src), str(out), None, calibration_cache_path=str(ranges), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=sorted(ops), per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    use_external_data_format=external,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}})


def quantize(args) -> None:
    bundle = args.bundle.resolve()
    manifest = json.loads((bundle / "manifest.json").read_text())
    precision = "int8" if args.int8 else "fp16"
    min_cos, max_rel = GATES[precision]
    min_cos = args.min_cosine if args.min_cosine is not None else min_cos
    max_rel = args.max_rel_diff if args.max_rel_diff is not None else max_rel
    roles = ROW_ENGINES + ([] if args.int8 else PROJECTORS)
    unknown = sorted(set(args.keep) - set(roles))
    if unknown:
        raise QuantizeError(f"--keep {', '.join(unknown)}: not an engine this converts ({', '.join(roles)})")
    entries = [f for f in manifest["files"] if f["role"] in roles and f["role"] not in args.keep]
    if not entries:
        raise QuantizeError(f"{bundle}: no encoder engines in the manifest")
    for e in entries:
        if e["precision"] not in ("fp32", "fp16") or e.get("quantization"):
            raise QuantizeError(f"{e['path']} is {e['precision']} already: quantize the fp32 bundle")
    out = args.out.resolve()
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    started = time.time()
    try:
        with tempfile.TemporaryDirectory(prefix="emollama-quantize-") as tmp:
            work = Path(tmp)
            calibration, held_out, source = None, [], None
            if args.calibration is not None:
                clips = clips_of(args.calibration)
                dumps = dump_inputs(clips, bundle, args.emollama, args.dumps or work / "dumps", args.profile)
                held = [i for i in range(len(clips)) if i % 4 == 3]
                calibration = [read_dump(d) for i, d in enumerate(dumps) if i not in held]
                held_out = [read_dump(dumps[i]) for i in held]
                source = {"sha256": calibration_hash(clips), "clips": len(clips) - len(held),
                          "held_out_clips": len(held), "folder": args.calibration.name}
            shutil.copytree(bundle, staging, copy_function=link_or_copy)
            report = {}
            for e in entries:
                src = bundle / e["path"]
                inputs = [i["name"] for i in e["inputs"]]
                new_name = f"{Path(e['path']).stem}-{precision}.onnx"
                dst = staging / new_name
                if args.int8:
                    cal, held = feeds_for(inputs, calibration), feeds_for(inputs, held_out)
                    if not cal or not held:
                        raise QuantizeError(f"{e['role']}: no {'calibration' if not cal else 'held-out'} input for it "
                                            f"(its inputs {inputs} were in no dump: no clip had a face?)")
                    ops = WEIGHTED_OPS - KEEP_FLOAT.get(e["role"], set())
                    # quantize_static writes external data when its source has it (EVA-g
                    # in fp32): quantized into the work folder, then saved as one file.
                    quantized = work / new_name
                    int8_engine(src, quantized, split_batches(cal, e), work, ops)
                    save_engine(onnx.load(str(quantized)), dst, e["role"])
                    for f in work.iterdir():  # this engine's working files (gigabytes for EVA-g)
                        if f.is_file():
                            f.unlink()
                    method = (f"Q/DQ int8, symmetric, per-channel weights, {'/'.join(sorted(ops))}; "
                              "MinMax calibration")
                elif e["precision"] == "fp16":
                    # Exported fp16-stored already (EVA-g: the checkpoint's own fp16 values,
                    # weights and biases behind Casts): the same file, nothing rounded again.
                    shutil.copyfile(src, dst)
                    method = "fp16 weights as exported (the checkpoint's fp16 values), fp32 arithmetic"
                    held = feeds_for(inputs, held_out) or [sample_feed(e)]
                else:
                    save_engine(fp16_weights(fp32_weights(onnx.load(str(src)))), dst, e["role"])
                    method = "fp16 weights (MatMul/Gemm/Conv), fp32 arithmetic"
                    held = feeds_for(inputs, held_out) or [sample_feed(e)]
                met = parity(src, dst, held)
                stored = e["precision"]  # the original's: fp32, or fp16-stored as exported
                log(f"{e['role']}: {precision} {dst.stat().st_size / 1e6:.2f} MB ({stored} file {src.stat().st_size / 1e6:.2f}"
                    f" MB), cosine min {met['cosine_min']:.6f}, max |diff| {met['max_abs_diff']:.3g} "
                    f"({met['max_rel_diff']:.3g} of the output's range)")
                if met["cosine_min"] < min_cos or met["max_rel_diff"] > max_rel:
                    raise QuantizeError(
                        f"{e['role']} at {precision} misses its parity gate: cosine {met['cosine_min']:.6f} "
                        f"(at least {min_cos}), relative max |diff| {met['max_rel_diff']:.4g} (at most {max_rel}); "
                        "nothing written")
                for stale in (staging / e["path"], staging / (e["path"] + ".data")):
                    stale.unlink(missing_ok=True)
                e.update({"path": new_name, "precision": precision, "size": dst.stat().st_size,
                          "sha256": sha256_file(dst)})
                e["parity"] = {"reference": f"the {stored} engine {src.name} (sha256 {sha256_file(src)[:16]}…)",
                               "runtime": f"onnxruntime {ort.__version__} cpu", "tolerance": max_rel,
                               "min_cosine": min_cos, **met}
                e["quantization"] = {"method": method, **({"calibration": source} if args.int8 else {})}
                report[e["role"]] = met
            manifest["id"] = f"{manifest['id']}-{precision}"
            write_json_atomic(staging / "manifest.json", manifest)
        shutil.rmtree(out, ignore_errors=True)
        staging.replace(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # never a half bundle
        raise
    log(f"done in {time.time() - started:.0f}s -> {out}")


def sample_feed(entry: dict) -> dict:
    """A seeded input of the entry's fixed shape (dynamic axes: 1 or 16000 samples) for
    the fp16 check when no clips are given."""
    rng = np.random.default_rng(0)
    feed = {}
    for i in entry["inputs"]:
        shape = [d if isinstance(d, int) else (16000 if "sample" in d else 1) for d in i["shape"]]
        feed[i["name"]] = rng.standard_normal(shape).astype(np.float32)
    return feed


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m emollama_export.quantize_encoders", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True, help="an fp32 bundle")
    ap.add_argument("--out", type=Path, required=True, help="the new bundle's folder")
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--fp16", action="store_true")
    which.add_argument("--int8", action="store_true")
    ap.add_argument("--calibration", type=Path, help="a folder of clips (required with --int8; with --fp16 the "
                                                     "parity is checked on their held-out inputs)")
    ap.add_argument("--emollama", default="emollama", help="the emollama binary that dumps the encoder inputs")
    ap.add_argument("--keep", action="append", default=[], metavar="ROLE",
                    help="leave this engine as it is (repeatable): e.g. an engine whose int8 form misses its gate "
                         "while the others pass")
    ap.add_argument("--dumps", type=Path, help="keep the clips' encoder inputs in this folder, and read them from "
                                               "it when a run on the same bundle and clips left them there")
    ap.add_argument("--profile", help="the device profile emollama dump-inputs plans the bundle on (default: "
                                      "detected); the whole bundle must fit it")
    ap.add_argument("--min-cosine", type=float, help=f"the gate's minimum cosine (default {GATES})")
    ap.add_argument("--max-rel-diff", type=float, help="the gate's maximum |diff| relative to the fp32 output's range")
    args = ap.parse_args(argv)
    if args.int8 and args.calibration is None:
        ap.error("--int8 needs --calibration CLIPS")
    try:
        quantize(args)
    except QuantizeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
