"""Golden tensors on disk: raw little-endian float32 files indexed by JSON.

Chosen over .npy so that the Rust tests read them without an extra crate.
"""

import json
import os
from pathlib import Path

import numpy as np


class TensorStore:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def put(self, name: str, array) -> dict:
        a = np.ascontiguousarray(np.asarray(array, dtype="<f4"))
        (self.root / f"{name}.f32").write_bytes(a.tobytes())
        return {"file": f"{name}.f32", "shape": list(a.shape)}


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)
