"""The LLM as GGUF through llama.cpp's own converter, with the LoRA merged on the way.

Runs `convert_hf_to_gguf.py`'s model class (the vendored copy setup extracts from the
llama-cpp-python 0.3.36 sdist) on the user's HF folder, unchanged, except that the
`q_proj`/`v_proj` tensors it reads are replaced by lazy ones that compute
`W + scaling * B @ A` in fp32 when the writer reaches them. The converter is lazy and
memory-mapped: one tensor at a time is in memory, and no merged HF copy is written.

Run as its own process (`python -m emollama_export.llm_gguf`): the converter needs its
vendored `gguf` package, newer than the PyPI one the rest of the exporter uses.

usage: python -m emollama_export.llm_gguf --converter-dir DIR --llama DIR --lora FILE
                                          --outtype f16 --out FILE --ratios FILE.json
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch


def log(msg: str) -> None:
    print(f"[export] llm: {msg}", flush=True)


def merged_lazy(lazy_cls, base_gen, a: torch.Tensor, b: torch.Tensor, scaling: float, name: str, ratios: dict,
                total: int):
    """A tensor generator for the converter: the base weight with the LoRA delta added in
    fp32 (one rounding, by the converter's own cast to the output type). Records
    |dW|/|W| in `ratios` (> 0: the LoRA was trained and found)."""

    def merge(w: torch.Tensor) -> torch.Tensor:
        w = w.float()
        delta = scaling * (b.float() @ a.float())
        ratios[name] = round(float(delta.norm() / w.norm()), 6)
        log(f"merged LoRA into {name} ({len(ratios)}/{total}, |dW|/|W| = {ratios[name]:.3g})")
        return w + delta

    def gen():
        base = base_gen()
        if isinstance(base, lazy_cls):
            meta = lazy_cls.meta_with_dtype_and_shape(torch.float32, tuple(base.shape))
            return lazy_cls(meta=meta, args=(base,), func=merge)
        return merge(base)

    return gen


def convert(converter_dir: Path, llama_dir: Path, lora: dict, outtype: str, out: Path) -> dict:
    """Write the GGUF; returns |dW|/|W| per merged tensor."""
    sys.path.insert(0, str(converter_dir / "gguf-py"))
    sys.path.insert(0, str(converter_dir))
    import gguf  # the converter's vendored copy
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class
    from conversion.base import LazyTorchTensor

    logging.basicConfig(level=logging.WARNING)  # the converter's per-tensor INFO lines are too many
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    with torch.inference_mode():
        hparams = ModelBase.load_hparams(llama_dir, False)
        arch = get_model_architecture(hparams, ModelType.TEXT)
        model = get_model_class(arch, mmproj=False)(llama_dir, ftype, out)
        pairs, scaling = lora["pairs"], float(lora["scaling"])
        ratios: dict = {}
        for name, (a, b) in pairs.items():
            if name not in model.model_tensors:
                raise SystemExit(f"{llama_dir}: the converter found no tensor {name} to merge the LoRA into")
            model.model_tensors[name] = merged_lazy(LazyTorchTensor, model.model_tensors[name], a, b, scaling, name,
                                                    ratios, len(pairs))
        log(f"converting {len(model.model_tensors)} tensors with llama.cpp's convert_hf_to_gguf ({arch}, {outtype})")
        model.write()
    if len(ratios) != len(pairs):
        raise SystemExit(f"only {len(ratios)} of {len(pairs)} LoRA merges were written")
    return ratios


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m emollama_export.llm_gguf", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--converter-dir", type=Path, required=True)
    ap.add_argument("--llama", type=Path, required=True)
    ap.add_argument("--lora", type=Path, required=True, help="torch file {scaling, pairs: {tensor: (A, B)}}")
    ap.add_argument("--outtype", choices=["f32", "f16", "q8_0"], required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ratios", type=Path, required=True, help="JSON file: |dW|/|W| per merged tensor")
    args = ap.parse_args(argv)
    started = time.time()
    ratios = convert(args.converter_dir, args.llama, torch.load(args.lora, weights_only=True), args.outtype, args.out)
    args.ratios.write_text(json.dumps(ratios, indent=1))
    log(f"written in {time.time() - started:.1f}s -> {args.out}")


if __name__ == "__main__":
    main()
