"""Projector-only engines: `feats_llama_proj1/2/3` alone, one utterance feature [1, C] ->
one prompt row [1, 1, D]. They let the runtime take pre-extracted features (the official
evaluation's `mae_340_UTT`, `maeV_399_UTT` and `HL-UTT` .npy files: the MAE, VideoMAE and
HuBERT outputs before the projectors) instead of running those encoders.

Each file is checked against numpy's `x @ W.T + b` on the checkpoint's own tensors, not
against the module that was exported.
"""

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .manifest import tensor_spec

# (k of feats_llama_proj{k}, the modality, its role's prefix, the prompt row it makes)
PROJECTORS = ((1, "local", "local_row"), (2, "temporal", "temporal_row"), (3, "audio", "audio_row"))
FEATURES = "features"


def projector_name(k: int) -> str:
    return f"feats_llama_proj{k}"


class Projector(nn.Module):
    """features [1, C] -> row [1, 1, D]: the official `feats_llama_projK(video_features[:, i])`."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight.float())
            self.linear.bias.copy_(bias.float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features).unsqueeze(1)


def export_projectors(bundle: Path, weights: dict, seed: int = 1234) -> list:
    """`weights`: {k: (weight [D, C], bias [D])}. Writes feats_llama_projK.onnx for each and
    returns their manifest entries."""
    from .synthetic import PARITY_TOLERANCE, export_onnx, log, max_diff, parity_session
    from .manifest import file_entry

    rng = np.random.default_rng(seed)
    entries = []
    for k, modality, row in PROJECTORS:
        weight, bias = weights[k]
        d, c = weight.shape
        name = projector_name(k)
        path = bundle / f"{name}.onnx"
        export_onnx(Projector(weight, bias).eval(), (torch.zeros(1, c),), path, [FEATURES], [row], {})
        w64, b64 = weight.double().numpy(), bias.double().numpy()
        cases = [np.zeros((1, c), np.float32)] + [rng.standard_normal((1, c)).astype(np.float32) for _ in range(2)]
        sess = parity_session(path)
        worst = max(max_diff(sess, {FEATURES: x}, {row: (x.astype(np.float64) @ w64.T + b64).reshape(1, 1, d)})
                    for x in cases)
        del sess
        log(f"{name}: max|onnxruntime - numpy x @ W.T + b| = {worst:.3g}")
        if worst > PARITY_TOLERANCE:
            raise SystemExit(f"{name}: ONNX parity {worst} exceeds {PARITY_TOLERANCE}")
        entries.append(file_entry(
            bundle, path.name, f"{modality}_projector", "onnx", "fp32",
            inputs=[tensor_spec(FEATURES, [1, c])], outputs=[tensor_spec(row, [1, 1, d])],
            parity={"reference": "numpy float64 x @ W.T + b of the checkpoint's tensors", "max_abs_diff": worst,
                    "tolerance": PARITY_TOLERANCE, "cases": len(cases)}))
    return entries
