"""Bundle manifest writer. The Rust loader (bundle/src/manifest.rs) is the reader: keep
both in step and bump FORMAT_VERSION on any incompatible change."""

import hashlib
from pathlib import Path

FORMAT = "emollama-bundle"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(bundle: Path, rel: str, role: str, fmt: str, precision: str, **extra) -> dict:
    p = bundle / rel
    entry = {
        "path": rel,
        "role": role,
        "format": fmt,
        "precision": precision,
        "size": p.stat().st_size,
        "sha256": sha256_file(p),
    }
    entry.update(extra)
    return entry


def tensor_spec(name: str, shape: list, dtype: str = "f32") -> dict:
    """shape items: an int (fixed) or a string (a named dynamic axis)."""
    return {"name": name, "dtype": dtype, "shape": shape}
