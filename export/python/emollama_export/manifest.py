"""Bundle manifest writer. The Rust loader (bundle/src/manifest.rs) is the reader: keep
both in step and bump FORMAT_VERSION on any incompatible change."""

import hashlib
from pathlib import Path

FORMAT = "emollama-bundle"
FORMAT_VERSION = 2

# What belongs to the model and not to the runtime's code (spec §2, §4.3, §4.4): written
# into every manifest, synthetic or official.
ROW_ORDER = ["global_patches", "local", "temporal", "audio", "global_cls"]
PLACEHOLDER = "<VideoHere>"
GENERATION = {
    # eval_emotion.py: greedy, 500 new tokens; the answer is cut at "###".
    "eval": {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0,
             "max_new_tokens": 500, "max_positions": None, "stop_strings": ["###"]},
    # The Gradio demo (Chat.answer_prepare): sampling, prompt + answer capped at 2000,
    # the answer split on "###" and "Assistant:".
    "demo": {"temperature": 0.2, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.05,
             "max_new_tokens": 500, "max_positions": 2000, "stop_strings": ["###", "Assistant:"]},
}


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
