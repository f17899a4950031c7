"""The LLaMA backbone: a transformers LlamaForCausalLM written as a llama.cpp GGUF.

The synthetic backbone has LLaMA-2's exact architecture (RMSNorm eps 1e-5, RoPE theta
10000, SwiGLU, untied output head, full multi-head attention) at a tiny width, and the
real LLaMA-2 32k SentencePiece vocabulary copied from llama.cpp's
`ggml-vocab-llama-spm.gguf`, so that llama.cpp tokenizes exactly like LLaMA-2.
"""

from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

LLAMA2_VOCAB = 32000


def tiny_llama(hidden: int, layers: int, heads: int, intermediate: int, seed: int) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=LLAMA2_VOCAB,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(cfg).eval()
    # HF's default init (std 0.02) gives nearly flat logits, where greedy ties would make
    # golden comparisons fragile; scale weights so that logits are well separated.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 2 and "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(p.shape[1]))
    return model


def _permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute: HF's rotary layout -> GGML's interleaved one."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _copy_tokenizer(writer: gguf.GGUFWriter, vocab_gguf: Path) -> None:
    reader = gguf.GGUFReader(str(vocab_gguf))
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        value = field.contents()
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, value, vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, value, vtype)


def write_gguf(model: LlamaForCausalLM, path: Path, vocab_gguf: Path, dtype: str, name: str) -> None:
    """Write `model` as a llama.cpp GGUF (`dtype` f32 or f16; norms always f32)."""
    cfg = model.config
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}[dtype]
    tmp = path.with_suffix(path.suffix + ".partial")  # renamed into place when complete
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(ftype)
    _copy_tokenizer(writer, vocab_gguf)

    def put(name: str, t: torch.Tensor, keep_f32: bool = False):
        a = t.detach().float().numpy()
        if dtype == "f16" and not keep_f32 and a.ndim == 2:
            a = a.astype(np.float16)
        writer.add_tensor(name, np.ascontiguousarray(a))

    sd = model.state_dict()
    put("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        put(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"], keep_f32=True)
        q = _permute_rope(sd[p + "self_attn.q_proj.weight"].numpy(), cfg.num_attention_heads)
        k = _permute_rope(sd[p + "self_attn.k_proj.weight"].numpy(), cfg.num_key_value_heads)
        put(f"blk.{i}.attn_q.weight", torch.from_numpy(q))
        put(f"blk.{i}.attn_k.weight", torch.from_numpy(k))
        put(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        put(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        put(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"], keep_f32=True)
        put(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        put(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        put(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    put("output_norm.weight", sd["model.norm.weight"], keep_f32=True)
    put("output.weight", sd["lm_head.weight"])

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)


@torch.no_grad()
def spliced_reference(model: LlamaForCausalLM, segments: list, n_greedy: int):
    """Run transformers on a prompt of token-id segments and embedding-row segments.

    Returns (logits at the last position of each segment [n_seg, vocab], greedy tokens).
    The embedding rows go in through `inputs_embeds`, exactly as MiniGPT-v2 does.
    """
    embed = model.get_input_embeddings()
    parts, ends = [], []
    for seg in segments:
        e = embed(torch.tensor(seg, dtype=torch.long)) if isinstance(seg, list) else torch.as_tensor(seg)
        parts.append(e)
        ends.append(sum(p.shape[0] for p in parts) - 1)
    embeds = torch.cat(parts).unsqueeze(0)
    out = model(inputs_embeds=embeds, use_cache=True)
    seg_logits = out.logits[0, ends].numpy()
    past, nxt = out.past_key_values, int(out.logits[0, -1].argmax())
    greedy = [nxt]
    for _ in range(n_greedy - 1):
        out = model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
        past, nxt = out.past_key_values, int(out.logits[0, -1].argmax())
        greedy.append(nxt)
    return seg_logits, greedy
