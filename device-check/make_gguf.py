"""A random-weight LLaMA GGUF at LLaMA-2-7B's real dimensions, Q4_K_M, written on the
device (3.9 GB: too large to carry) for scripts/device-check's speed figures.

The layout is llama.cpp's Q4_K_M for LLaMA-2-7B: Q4_K everywhere, Q6_K for the output
matrix and for attn_v/ffn_down in the layers llama.cpp gives more bits (the first and
last eighth, every third between), F32 norms. The quantized blocks are random bytes
with their scale fields set, so that every weight is finite at about the scale of a
trained model's (|w| ~ 0.02): the speed of a quantized matmul does not depend on the
values, and finite values keep the logits (and the greedy path) ordinary.

Needs numpy and llama.cpp's gguf-py (carried beside this script); the tokenizer comes
from llama.cpp's LLaMA vocabulary GGUF.

usage: python3 make_gguf.py --gguf-py DIR --vocab VOCAB.gguf --out OUT.gguf [--layers 32]
"""

import argparse
import sys
import time
import types
from pathlib import Path

import numpy as np

HIDDEN, FFN, HEADS, VOCAB, CTX = 4096, 11008, 32, 32000, 4096
BLOCK = 256  # weights per K-quant block
Q4_K_BYTES, Q6_K_BYTES = 144, 210  # ggml's block_q4_K and block_q6_K


def q4_k(rng, rows: int, cols: int) -> np.ndarray:
    """block_q4_K: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles.
    w = d * scale * q - dmin * min, q in 0..15, scale and min in 0..63."""
    blocks = rng.integers(0, 256, size=(rows * cols // BLOCK, Q4_K_BYTES), dtype=np.uint8)
    blocks[:, 0:2] = np.frombuffer(np.float16(6e-5).tobytes(), np.uint8)
    blocks[:, 2:4] = np.frombuffer(np.float16(4.5e-4).tobytes(), np.uint8)
    return blocks.reshape(rows, cols // BLOCK * Q4_K_BYTES)


def q6_k(rng, rows: int, cols: int) -> np.ndarray:
    """block_q6_K: 128 bytes low bits, 64 bytes high bits, 16 int8 scales, f16 d.
    w = d * scale * (q - 32), q in 0..63."""
    blocks = rng.integers(0, 256, size=(rows * cols // BLOCK, Q6_K_BYTES), dtype=np.uint8)
    blocks[:, 208:210] = np.frombuffer(np.float16(1.5e-5).tobytes(), np.uint8)
    return blocks.reshape(rows, cols // BLOCK * Q6_K_BYTES)


def more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's use_more_bits for Q4_K_M's attn_v and ffn_down."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf-py", type=Path, required=True, help="llama.cpp's gguf-py folder")
    ap.add_argument("--vocab", type=Path, required=True, help="ggml-vocab-llama-spm.gguf")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--layers", type=int, default=32)
    args = ap.parse_args()
    # gguf's package imports PyYAML for model cards, which this writer never reads.
    sys.modules.setdefault("yaml", types.ModuleType("yaml"))
    sys.path.insert(0, str(args.gguf_py))
    import gguf

    started = time.time()
    rng = np.random.default_rng(7)
    Q4, Q6 = gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K
    plan = [("token_embd.weight", Q4, VOCAB, HIDDEN)]
    for i in range(args.layers):
        v_ffn = Q6 if more_bits(i, args.layers) else Q4
        plan += [(f"blk.{i}.attn_norm.weight", None, 1, HIDDEN),
                 (f"blk.{i}.attn_q.weight", Q4, HIDDEN, HIDDEN), (f"blk.{i}.attn_k.weight", Q4, HIDDEN, HIDDEN),
                 (f"blk.{i}.attn_v.weight", v_ffn, HIDDEN, HIDDEN), (f"blk.{i}.attn_output.weight", Q4, HIDDEN, HIDDEN),
                 (f"blk.{i}.ffn_norm.weight", None, 1, HIDDEN),
                 (f"blk.{i}.ffn_gate.weight", Q4, FFN, HIDDEN), (f"blk.{i}.ffn_up.weight", Q4, FFN, HIDDEN),
                 (f"blk.{i}.ffn_down.weight", v_ffn, HIDDEN, FFN)]
    plan += [("output_norm.weight", None, 1, HIDDEN), ("output.weight", Q6, VOCAB, HIDDEN)]

    tmp = args.out.with_name(args.out.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name(f"emollama device-check LLaMA-2-7B dimensions, {args.layers} layers, random Q4_K_M")
    writer.add_context_length(CTX)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(args.layers)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    reader = gguf.GGUFReader(str(args.vocab))
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    for name, qtype, rows, cols in plan:
        if qtype is None:
            writer.add_tensor_info(name, [cols], np.dtype(np.float32), cols * 4)
        else:
            per_row = cols // BLOCK * (Q4_K_BYTES if qtype == Q4 else Q6_K_BYTES)
            writer.add_tensor_info(name, [rows, per_row], np.dtype(np.uint8), rows * per_row, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name, qtype, rows, cols in plan:
        if qtype is None:
            data = np.ones(cols, dtype=np.float32)
        else:
            data = (q4_k if qtype == Q4 else q6_k)(rng, rows, cols)
        writer.write_tensor_data(data)
    writer.close()
    tmp.replace(args.out)
    size = args.out.stat().st_size
    print(f"wrote {args.out}: {size / 1e9:.2f} GB, {len(plan)} tensors in {time.time() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
