"""One ViT-L encoder (MAE's size: 24 layers of 1024, 303 M parameters, random weights) at
fp32, with fp16-stored weights and as int8 Q/DQ (made by quantize_encoders' own
functions), each loaded by ONNX Runtime's CPU provider in its own process: file size,
loading peak (VmHWM), resident after a run, and the median of 3 runs on one 224 px image.
The README's table and the planner's CPU_INT8_RESIDENT come from it. Not CI (2 min).

usage: python -m emollama_export.bench_precision WORK
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def status_gb(key: str) -> float:
    """A /proc/self/status figure: this process's own, not inherited across exec as
    ru_maxrss is."""
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":")) / 1e6


def measure(path: str) -> dict:
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    t = time.time()
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    load_s = time.time() - t
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    s.run(None, {"pixel_values": x})
    runs = []
    for _ in range(3):
        t = time.time()
        s.run(None, {"pixel_values": x})
        runs.append(time.time() - t)
    return {"file_gb": os.path.getsize(path) / 1e9, "load_peak_gb": status_gb("VmHWM"),
            "resident_gb": status_gb("VmRSS"), "load_s": load_s, "run_s": sorted(runs)[1]}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--measure"]:
        print(json.dumps(measure(argv[1])))
        return
    import numpy as np
    import onnx
    import torch
    from transformers import ViTConfig, ViTModel

    from .quantize_encoders import fp16_weights, fp32_weights, int8_engine, save

    work = Path(argv[0])
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
    for p in (fp32, fp16, int8):
        r = subprocess.run([sys.executable, "-m", "emollama_export.bench_precision", "--measure", str(p)],
                           capture_output=True, text=True, check=True)
        print(p.name, r.stdout.strip())


if __name__ == "__main__":
    main()
