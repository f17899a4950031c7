"""Bundle manifest writer. The Rust loader (bundle/src/manifest.rs) is the reader: keep
both in step and bump FORMAT_VERSION on any incompatible change."""

import hashlib
from pathlib import Path

FORMAT = "emollama-bundle"
FORMAT_VERSION = 2
# A bundle carries one ONNX file per engine (no external data files): at most one protobuf.
PROTOBUF_LIMIT = 2**31

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


# Preprocessing constants of the official pipeline (spec §1): the same for every bundle.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# torchvision's ImageNet statistics: Emotion-LLaMA-v2's temporal frames (v2 spec §3.2).
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
PREPROCESS = {
    "global": {"image_size": [448, 448], "resize": "bicubic", "mean": CLIP_MEAN, "std": CLIP_STD, "frame": "first"},
    "face": {"image_size": [224, 224], "aligned_size": [112, 112], "resize": "bilinear", "scale": 1.0 / 255.0},
    "temporal": {"frames": 16, "segments": 8, "frames_per_segment": 2, "image_size": [224, 224]},
    "audio": {"sample_rate": 16000, "channels": 1},
}


def bundle_manifest(bundle_id: str, synthetic: bool, description: str, provenance: dict, llm: dict,
                    global_rows: int, files: list) -> dict:
    return manifest_of(bundle_id, synthetic, description, provenance, llm, files,
                       rows={"global_patches": global_rows, "local": 1, "temporal": 1, "audio": 1, "global_cls": 1},
                       prompt={"placeholder": PLACEHOLDER, "row_order": ROW_ORDER},
                       preprocess=PREPROCESS, generation=GENERATION)


def manifest_of(bundle_id: str, synthetic: bool, description: str, provenance: dict, llm: dict, files: list,
                **model: dict) -> dict:
    """The manifest: its header, then what the model is (`model`, in order), then the files."""
    head = {"format": FORMAT, "format_version": FORMAT_VERSION, "id": bundle_id, "synthetic": synthetic,
            "description": description, "provenance": provenance, "llm": llm}
    return {**head, **model, "files": files}

# Emotion-LLaMA-v2 (v2 spec §1.6, §3, §4.3, §4.5).
V2_ROWS = {"global_patches": 256, "temporal": 64, "audio": 64, "fusion": 64}
V2_ROW_ORDER = ["fusion", "global_patches", "temporal", "audio"]
# `<s><s>[INST] <Vid>` as v2's pinned tokenizer (transformers 4.35, legacy off) writes it:
# "[" is 29961 there, where llama.cpp would give "▁[" 518 (v2 spec §4.3).
V2_BEFORE_ROWS_IDS = [1, 1, 29961, 25580, 29962, 529, 29963, 333, 29958]
V2_PREPROCESS = {
    "global": PREPROCESS["global"],
    "temporal": {"frames": 16, "image_size": [224, 224],
                 "window": {"seed": 42, "resize": "bilinear", "mean": IMAGENET_MEAN, "std": IMAGENET_STD}},
    "audio": {"sample_rate": 16000, "channels": 1,
              "log_mel": {"n_fft": 400, "hop_length": 160, "n_mels": 128, "chunk_samples": 480000}},
}
V2_GENERATION = {
    # inference.py / the eval driver: greedy, 200 new tokens, EOS the only stop.
    "eval": {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0,
             "max_new_tokens": 200, "max_positions": None, "stop_strings": []},
    # app.py: temperature 0.2, top-p 0.9, top-k 50, repetition penalty 1.05, 500 new
    # tokens, prompt + answer at most 2000.
    "demo": {"temperature": 0.2, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.05,
             "max_new_tokens": 500, "max_positions": 2000, "stop_strings": []},
}


def bundle_manifest_v2(bundle_id: str, synthetic: bool, description: str, provenance: dict, llm: dict,
                       files: list) -> dict:
    return manifest_of(bundle_id, synthetic, description, provenance, llm, files, model="emotion-llama-v2",
                       rows=V2_ROWS,
                       prompt={"placeholder": PLACEHOLDER, "row_order": V2_ROW_ORDER,
                               "before_rows_ids": V2_BEFORE_ROWS_IDS},
                       preprocess=V2_PREPROCESS, generation=V2_GENERATION)
