"""Encoder engines at fp32, with fp16-stored weights and as int8 Q/DQ, each loaded by ONNX
Runtime's CPU provider in its own process: file size, loading peak (VmHWM), resident
after a run, and the median of 3 runs. Not CI.

  vit-l WORK      one ViT-L encoder (MAE's size: 24 layers of 1024, 303 M parameters,
                  random weights) made here at the three precisions by quantize_encoders'
                  own functions, on one 224 px image (2 min; the planner's CPU_INT8_RESIDENT)
  bundles --dump DIR NAME=BUNDLE...
                  every encoder of each bundle (the fp32 bundle and the ones
                  quantize_encoders made of it), each on the runtime's own inputs for one
                  clip (a folder `emollama dump-inputs` wrote); a Markdown table, and JSON
                  with --json

usage: python -m emollama_export.bench_precision vit-l WORK
       python -m emollama_export.bench_precision bundles --dump DIR fp32=B fp16=B int8=B [--json OUT]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def status_gb(key: str) -> float:
    """A /proc/self/status figure: this process's own, not inherited across exec as
    ru_maxrss is."""
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":")) / 1e6


def measure(path: str, feeds: str) -> dict:
    import numpy as np
    import onnxruntime as ort

    feed = dict(np.load(feeds))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    t = time.time()
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    load_s = time.time() - t
    s.run(None, feed)
    runs = []
    for _ in range(3):
        t = time.time()
        s.run(None, feed)
        runs.append(time.time() - t)
    return {"file_gb": os.path.getsize(path) / 1e9, "load_peak_gb": status_gb("VmHWM"),
            "resident_gb": status_gb("VmRSS"), "load_s": load_s, "run_s": sorted(runs)[1]}


def measured(path: Path, feeds: Path) -> dict:
    """`measure` in a process of its own: each engine's peak is its own."""
    r = subprocess.run([sys.executable, "-m", "emollama_export.bench_precision", "--measure", str(path), str(feeds)],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def vit_l(work: Path) -> None:
    import numpy as np
    import onnx
    import torch
    from transformers import ViTConfig, ViTModel

    from .quantize_encoders import fp16_weights, fp32_weights, int8_engine, save

    work.mkdir(parents=True, exist_ok=True)
    fp32, fp16, int8 = (work / f"vitl-{p}.onnx" for p in ("fp32", "fp16", "int8"))
    if not fp32.exists():
        torch.manual_seed(0)
        vit = ViTModel(ViTConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                 intermediate_size=4096, image_size=224, patch_size=16), add_pooling_layer=False)

        class Rows(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m.eval()

            def forward(self, pixel_values):
                return self.m(pixel_values).last_hidden_state.mean(1)

        torch.onnx.export(Rows(vit), torch.zeros(1, 3, 224, 224), str(fp32), input_names=["pixel_values"],
                          output_names=["rows"], opset_version=17, dynamo=False)
    if not fp16.exists():
        save(fp16_weights(fp32_weights(onnx.load(str(fp32)))), fp16)
    if not int8.exists():
        rng = np.random.default_rng(1)
        feeds = [{"pixel_values": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(4)]
        int8_engine(fp32, int8, feeds, work, {"MatMul", "Gemm", "Conv"})
    image = work / "image.npz"
    np.savez(image, pixel_values=np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32))
    for p in (fp32, fp16, int8):
        print(p.name, json.dumps(measured(p, image)))


def bundles(dump: Path, named: list, json_out) -> None:
    import numpy as np

    from .quantize_encoders import ROW_ENGINES, feeds_for, read_dump

    tensors = read_dump(dump)
    manifests = {name: (Path(b), json.loads((Path(b) / "manifest.json").read_text())) for name, b in named}
    first = next(iter(manifests.values()))[1]
    # The projectors (a few Gemm rows, megabytes) read other engines' outputs, not a dump's inputs.
    roles = [f["role"] for f in first["files"] if f["role"] in ROW_ENGINES]
    results = {}
    with tempfile.TemporaryDirectory(prefix="emollama-bench-") as tmp:
        for role in roles:
            entry = next(f for f in first["files"] if f["role"] == role)
            feed = feeds_for([i["name"] for i in entry["inputs"]], [tensors])
            if not feed:
                print(f"{role}: the dump holds no input for it (a clip without a face?); skipped", file=sys.stderr)
                continue
            feeds = Path(tmp) / f"{role}.npz"
            np.savez(feeds, **feed[0])
            for name, (root, manifest) in manifests.items():
                f = next(f for f in manifest["files"] if f["role"] == role)
                r = measured(root / f["path"], feeds)
                results.setdefault(role, {})[name] = {"precision": f["precision"], **r}
                print(f"{role} {name}: {json.dumps(r)}", file=sys.stderr, flush=True)
    lines = ["| engine | bundle | stored | file | loading peak | resident | load | run |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for role, per in results.items():
        for name, r in per.items():
            lines.append(f"| {role} | {name} | {r['precision']} | {r['file_gb']:.3f} GB | {r['load_peak_gb']:.2f} GB "
                         f"| {r['resident_gb']:.2f} GB | {r['load_s']:.1f} s | {r['run_s']:.2f} s |")
    totals = {name: {k: sum(per[name][k] for per in results.values()) for k in ("file_gb", "resident_gb", "run_s")}
              for name in manifests}
    lines += ["", "| bundle | files | sum of residents | sum of runs |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {t['file_gb']:.2f} GB | {t['resident_gb']:.2f} GB | {t['run_s']:.2f} s |" for n, t in totals.items()]
    print("\n".join(lines))
    if json_out:
        Path(json_out).write_text(json.dumps({"engines": results, "totals": totals}, indent=2) + "\n")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--measure"]:
        print(json.dumps(measure(argv[1], argv[2])))
        return
    ap = argparse.ArgumentParser(prog="python -m emollama_export.bench_precision", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    v = sub.add_parser("vit-l")
    v.add_argument("work", type=Path)
    b = sub.add_parser("bundles")
    b.add_argument("--dump", type=Path, required=True, help="one clip's folder as emollama dump-inputs writes it")
    b.add_argument("--json", help="also write the figures here")
    b.add_argument("bundle", nargs="+", help="NAME=BUNDLE, the fp32 bundle first")
    args = ap.parse_args(argv)
    if args.what == "vit-l":
        vit_l(args.work)
    else:
        named = [tuple(x.split("=", 1)) for x in args.bundle]
        if any(len(n) != 2 for n in named):
            ap.error("each bundle is NAME=FOLDER")
        bundles(args.dump, named, args.json)


if __name__ == "__main__":
    main()
