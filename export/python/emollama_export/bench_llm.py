"""A larger synthetic LLaMA (about 100M parameters, real LLaMA-2 vocabulary, random
weights) for benchmarks: decode speed of the runtime against a raw llama.cpp loop.

usage: python -m emollama_export.bench_llm --out llm-100m-f16.gguf --vocab-gguf VOCAB
"""

import argparse
from pathlib import Path

from .llama import tiny_llama, write_gguf


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m emollama_export.bench_llm", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--vocab-gguf", type=Path, required=True)
    ap.add_argument("--hidden", type=int, default=640)
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--heads", type=int, default=10)
    ap.add_argument("--intermediate", type=int, default=1728)
    ap.add_argument("--dtype", choices=["f32", "f16"], default="f16")
    args = ap.parse_args(argv)
    model = tiny_llama(args.hidden, args.layers, args.heads, args.intermediate, seed=99)
    n = sum(p.numel() for p in model.parameters())
    write_gguf(model, args.out, args.vocab_gguf, args.dtype, f"emollama bench LLaMA {n / 1e6:.0f}M")
    print(f"wrote {args.out}: {n / 1e6:.1f}M parameters, {args.dtype}")


if __name__ == "__main__":
    main()
