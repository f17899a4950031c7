"""Format-faithful stand-ins for the official Emotion-LLaMA input files, with seeded
random weights: the exact file names, containers, nesting, dtypes, key names, extra
(ignored) keys and config files of the real downloads (spec official-export.md §10),
at tiny widths (every head size real) or at the real dimensions (`--full-size`, for the
export benchmark: ≈ 20 GB).

Layout written under OUT (the official folders):
  eva_vit_g.pth                                  plain fp16 state dict, one block too many, norm, head
  save_checkpoint/Emoation_LLaMA.pth             {model, optimizer, config, scaler, epoch}
  Llama-2-7b-chat-hf/                            config.json, tokenizer.model (rebuilt from llama.cpp's
                                                 LLaMA-2 vocabulary), fp16 safetensors shards + index
  transformer/chinese-hubert-large/              config.json, preprocessor_config.json, pytorch_model.bin
  feature_extract/models/mae_checkpoint-340.pth  {model, optimizer, epoch, scaler, args: Namespace}
  feature_extract/models/maeVideo_ckp399.pth     the same container, `encoder.`/`decoder.` keys
  variants/                                      (--variants) other spellings and broken copies
"""

import argparse
import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

from .official_code import eva_vision_transformer
from .tensors import write_json_atomic

SEED = 1234
LORA_R, LORA_ALPHA = 64, 16


@dataclass(frozen=True)
class Dims:
    eva_width: int
    eva_blocks: int  # stored in the file (the official model uses one fewer)
    vit_width: int  # MAE and VideoMAE (ViT-L: 1024)
    vit_depth: int
    decoder_width: int
    decoder_depth: int
    hubert_width: int
    hubert_layers: int
    hubert_conv: int
    llama_width: int
    llama_layers: int
    llama_ffn: int


# Every head size is the real one (EVA 88, ViT 64, LLaMA 128) so the official formulas hold.
TINY = Dims(eva_width=176, eva_blocks=3, vit_width=128, vit_depth=2, decoder_width=64, decoder_depth=1,
            hubert_width=128, hubert_layers=2, hubert_conv=32, llama_width=256, llama_layers=2, llama_ffn=512)
REAL = Dims(eva_width=1408, eva_blocks=40, vit_width=1024, vit_depth=24, decoder_width=512, decoder_depth=8,
            hubert_width=1024, hubert_layers=24, hubert_conv=512, llama_width=4096, llama_layers=32, llama_ffn=11008)


def log(msg: str) -> None:
    print(f"[fixtures] {msg}", flush=True)


def randn(*shape, std: float = 0.02) -> torch.Tensor:
    return torch.randn(*shape) * std


def save(obj, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save(obj, tmp, **kw)
    tmp.replace(path)


# --- EVA ViT-g (LAVIS/BLIP-2 eva_vit_g.pth) ---------------------------------------------

def eva_state(d: Dims, lavis_dir: Path) -> dict:
    """The official VisionTransformer's own state dict at the checkpoint's 224 px (16x16
    table), one block more than the model uses, plus the EVA-CLIP `norm` and `head`: fp16."""
    vit = eva_vision_transformer(lavis_dir, d.eva_width, d.eva_blocks, img_size=224)
    sd = {k: v.detach().clone() for k, v in vit.state_dict().items()}
    for k in sd:  # LAVIS zero-initialises the biases: give every tensor values
        if k.endswith("bias"):
            sd[k] = randn(*sd[k].shape)
    sd["norm.weight"] = 1.0 + randn(d.eva_width)
    sd["norm.bias"] = randn(d.eva_width)
    sd["head.weight"] = randn(1024, d.eva_width)
    sd["head.bias"] = randn(1024)
    return {k: v.half() for k, v in sd.items()}


# --- the Emotion-LLaMA checkpoint -----------------------------------------------------------

def lora_key(layer: int, target: str, ab: str) -> str:
    """peft 0.2.0's spelling, as the official checkpoints have it (no `.default`)."""
    return f"llama_model.base_model.model.model.layers.{layer}.self_attn.{target}.lora_{ab}.weight"


def emotion_llama_model(d: Dims) -> dict:
    """`ckpt['model']`: the trainable parameters only (LoRA, projectors, the unused
    attention classifier), fp32. B is non-zero so that a dropped LoRA shows."""
    h = d.llama_width
    sd = {}
    for i in range(d.llama_layers):
        for target in ("q_proj", "v_proj"):
            sd[lora_key(i, target, "A")] = randn(LORA_R, h, std=h ** -0.5)
            sd[lora_key(i, target, "B")] = randn(h, LORA_R, std=0.05)
    sd["llama_proj.weight"] = randn(h, 4 * d.eva_width, std=(4 * d.eva_width) ** -0.5)
    sd["llama_proj.bias"] = randn(h)
    for k in (1, 2, 3):
        width = d.hubert_width if k == 3 else d.vit_width
        sd[f"feats_llama_proj{k}.weight"] = randn(h, width, std=width ** -0.5)
        sd[f"feats_llama_proj{k}.bias"] = randn(h)
    sd["cls_tk_llama_proj.weight"] = randn(h, d.eva_width, std=d.eva_width ** -0.5)
    sd["cls_tk_llama_proj.bias"] = randn(h)
    # minigpt_base.py's attention block: trained, saved, never used at inference.
    ins = [d.vit_width] * 3 + [h] * 4
    for j, n in enumerate(ins):
        sd[f"attention.feats_prep.{j}.0.weight"], sd[f"attention.feats_prep.{j}.0.bias"] = randn(256, n), randn(256)
        sd[f"attention.feats_prep.{j}.3.weight"], sd[f"attention.feats_prep.{j}.3.bias"] = randn(128, 256), randn(128)
    sd["attention.attention_mlp.0.weight"], sd["attention.attention_mlp.0.bias"] = randn(256, 896), randn(256)
    sd["attention.attention_mlp.3.weight"], sd["attention.attention_mlp.3.bias"] = randn(128, 256), randn(128)
    sd["attention.fc_att.weight"], sd["attention.fc_att.bias"] = randn(7, 128), randn(7)
    sd["attention.fc_out.weight"], sd["attention.fc_out.bias"] = randn(6, 128), randn(6)
    return sd


def optimizer_state(params: dict) -> dict:
    """A real AdamW state dict after one step over `params` (runner_base.py saves it)."""
    ps = [torch.nn.Parameter(v.clone()) for v in params.values()]
    opt = torch.optim.AdamW(ps, lr=1e-5)
    for p in ps:
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    return opt.state_dict()


def emotion_llama_checkpoint(d: Dims, model: dict) -> dict:
    trained = {k: v for k, v in model.items() if not k.startswith("attention.")}
    return {
        "model": model,
        "optimizer": optimizer_state(trained),
        # Config.to_dict(): a plain nested dict (OmegaConf.to_container).
        "config": {
            "model": {"arch": "minigpt_v2", "model_type": "pretrain", "max_txt_len": 1024, "end_sym": "</s>",
                      "low_resource": False, "prompt_template": "[INST] {} [/INST]", "image_size": 448,
                      "llama_model": "/checkpoints/Llama-2-7b-chat-hf", "ckpt": "", "lora_r": LORA_R,
                      "lora_alpha": LORA_ALPHA, "use_grad_checkpoint": True, "chat_template": True},
            "run": {"task": "image_text_pretrain", "max_epoch": 30, "seed": 42, "amp": True},
        },
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                   "_growth_tracker": 0},
        "epoch": 29,
    }


# --- Llama-2-7b-chat-hf ----------------------------------------------------------------------

def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32 values are sign-extended to 10 bytes
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, wire: int, payload: bytes) -> bytes:
    return _varint(num << 3 | wire) + payload


def _ld(num: int, data: bytes) -> bytes:  # length-delimited
    return _field(num, 2, _varint(len(data)) + data)


def tokenizer_model(vocab_gguf: Path) -> bytes:
    """LLaMA-2's SentencePiece `tokenizer.model`, rebuilt from llama.cpp's copy of its
    vocabulary (pieces, scores, types) as a ModelProto (sentencepiece_model.proto field
    numbers), with LLaMA-2's trainer and normalizer settings."""
    reader = gguf.GGUFReader(str(vocab_gguf))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    scores = reader.fields["tokenizer.ggml.scores"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    out = bytearray()
    for piece, score, kind in zip(tokens, scores, types):
        body = _ld(1, piece.encode()) + _field(2, 5, struct.pack("<f", score)) + _field(3, 0, _varint(int(kind)))
        out += _ld(1, body)
    trainer = (_field(3, 0, _varint(2))  # model_type BPE
               + _field(4, 0, _varint(len(tokens)))  # vocab_size
               + _field(25, 0, _varint(1))  # split_digits
               + _field(35, 0, _varint(1))  # byte_fallback
               + _field(40, 0, _varint(0)) + _field(41, 0, _varint(1))  # unk_id, bos_id
               + _field(42, 0, _varint(2)) + _field(43, 0, _varint(-1)))  # eos_id, pad_id
    normalizer = (_ld(1, b"identity") + _field(3, 0, _varint(1))  # add_dummy_prefix
                  + _field(4, 0, _varint(0)) + _field(5, 0, _varint(1)))  # remove_extra_ws, escape_ws
    out += _ld(2, trainer) + _ld(3, normalizer)
    return bytes(out)


def llama_config(d: Dims, rms_norm_eps: float = 1e-5) -> dict:
    return {
        "_name_or_path": "meta-llama/Llama-2-7b-chat-hf", "architectures": ["LlamaForCausalLM"],
        "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": d.llama_width,
        "initializer_range": 0.02, "intermediate_size": d.llama_ffn, "max_position_embeddings": 4096,
        "model_type": "llama", "num_attention_heads": d.llama_width // 128, "num_hidden_layers": d.llama_layers,
        "num_key_value_heads": d.llama_width // 128, "pretraining_tp": 1, "rms_norm_eps": rms_norm_eps,
        "rope_scaling": None, "tie_word_embeddings": False, "torch_dtype": "float16",
        "transformers_version": "4.32.0.dev0", "use_cache": True, "vocab_size": 32000,
    }


def llama_tensor_shapes(d: Dims) -> list:
    """HF LLaMA's tensors in the official shard order (embeddings and layer 0 first)."""
    h, f = d.llama_width, d.llama_ffn
    names = [("model.embed_tokens.weight", (32000, h))]
    for i in range(d.llama_layers):
        p = f"model.layers.{i}."
        names += [(p + "input_layernorm.weight", (h,))]
        names += [(p + f"self_attn.{x}_proj.weight", (h, h)) for x in "qkvo"]
        names += [(p + "mlp.gate_proj.weight", (f, h)), (p + "mlp.up_proj.weight", (f, h)),
                  (p + "mlp.down_proj.weight", (h, f)), (p + "post_attention_layernorm.weight", (h,))]
    names += [("model.norm.weight", (h,)), ("lm_head.weight", (32000, h))]
    return names


def llama_tensor(name: str, shape: tuple, gen: torch.Generator, tiny: bool) -> torch.Tensor:
    """fp16 values. Tiny weights are scaled so that logits are well separated (greedy ties
    would make golden comparisons fragile); full-size ones use HF's init scale."""
    if name.endswith("norm.weight"):
        t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
    elif tiny:
        t = torch.randn(shape, generator=gen) * (1.0 if "embed_tokens" in name else shape[1] ** -0.5)
    else:
        t = torch.randn(shape, generator=gen) * 0.02
    return t.half()


def write_safetensors_streaming(path: Path, specs: list, make) -> None:
    """A safetensors file written one tensor at a time: the header first (from shapes),
    then each tensor as `make(name, shape)` produces it. Memory stays one tensor."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in specs:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in specs:
            t = make(name, shape)
            assert t.dtype == torch.float16 and tuple(t.shape) == tuple(shape)
            f.write(t.contiguous().numpy().tobytes())
    tmp.replace(path)


def llama_folder(d: Dims, out: Path, vocab_gguf: Path, tiny: bool, bin_shards: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # 1e-06, as the early HF revision had (others say 1e-05): the export must read it.
    write_json_atomic(out / "config.json", llama_config(d, rms_norm_eps=1e-6))
    write_json_atomic(out / "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2, "do_sample": True,
                                                       "temperature": 0.6, "top_p": 0.9, "max_length": 4096,
                                                       "pad_token_id": 0, "transformers_version": "4.32.0.dev0"})
    (out / "tokenizer.model").write_bytes(tokenizer_model(vocab_gguf))
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for i, t in enumerate(["<unk>", "<s>", "</s>"])}
    write_json_atomic(out / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": added, "bos_token": "<s>",
        "clean_up_tokenization_spaces": False, "eos_token": "</s>", "legacy": False, "model_max_length": 1e30,
        "pad_token": None, "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>"})
    write_json_atomic(out / "special_tokens_map.json", special)
    specs = llama_tensor_shapes(d)
    first = 2 + 9  # embeddings and layer 0 in the first shard, as the real split starts
    shards = [specs[:first], specs[first:]] if tiny else [specs[i:i + 60] for i in range(0, len(specs), 60)]
    gen = torch.Generator().manual_seed(SEED)
    weight_map, total = {}, 0
    ext, stem = (".bin", "pytorch_model") if bin_shards else (".safetensors", "model")
    for k, part in enumerate(shards):
        fname = f"{stem}-{k + 1:05d}-of-{len(shards):05d}{ext}"
        make = lambda name, shape: llama_tensor(name, shape, gen, tiny)  # noqa: E731
        if bin_shards:
            sd = {name: make(name, shape) for name, shape in part}
            # transformers 4.30's persistent rotary buffers: in the .bin shards only.
            for name in [n for n, _ in part if n.endswith("q_proj.weight")]:
                head = d.llama_width // (d.llama_width // 128)
                sd[name.replace("q_proj.weight", "rotary_emb.inv_freq")] = \
                    1.0 / (10000 ** (torch.arange(0, head, 2).float() / head))
            save(sd, out / fname)
            items = [(name, t.nbytes) for name, t in sd.items()]
        else:
            write_safetensors_streaming(out / fname, part, make)
            items = [(name, int(np.prod(shape)) * 2) for name, shape in part]
        # The index lists every tensor of its shards (the real .bin index's total_size
        # counts the 32 inv_freq buffers: 8,192 bytes more than the safetensors one).
        for name, nbytes in items:
            weight_map[name] = fname
            total += nbytes
        log(f"llama: {fname} ({len(part)} tensors)")
    write_json_atomic(out / f"{stem}{'.bin' if bin_shards else '.safetensors'}.index.json",
                      {"metadata": {"total_size": total}, "weight_map": weight_map})


# --- chinese-hubert-large -----------------------------------------------------------------

def hubert_folder(d: Dims, out: Path, prefix: str = "") -> None:
    cfg = HubertConfig(
        hidden_size=d.hubert_width, num_hidden_layers=d.hubert_layers, num_attention_heads=d.hubert_width // 64,
        intermediate_size=4 * d.hubert_width, conv_dim=(d.hubert_conv,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_bias=False, feat_extract_norm="layer",
        feat_extract_activation="gelu", do_stable_layer_norm=True, num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16, mask_time_prob=0.05, layer_norm_eps=1e-5, hidden_act="gelu",
        architectures=["HubertModel"],
    )
    out.mkdir(parents=True, exist_ok=True)
    cfg.to_json_file(str(out / "config.json"))
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=True).to_json_file(str(out / "preprocessor_config.json"))
    model = HubertModel(cfg)
    sd = {}
    for k, v in model.state_dict().items():  # the 2022 weight-norm names
        k = k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                               "weight_v")
        sd[prefix + k] = v.detach().clone()
    sd[prefix + "masked_spec_embed"] = torch.rand(d.hubert_width)
    save(sd, out / "pytorch_model.bin")


# --- MAE and VideoMAE pretraining checkpoints ----------------------------------------------

def vit_block(prefix: str, w: int, qkv_bias: str) -> dict:
    sd = {f"{prefix}norm1.weight": 1.0 + randn(w), f"{prefix}norm1.bias": randn(w),
          f"{prefix}attn.qkv.weight": randn(3 * w, w, std=w ** -0.5)}
    if qkv_bias == "full":
        sd[f"{prefix}attn.qkv.bias"] = randn(3 * w)
    else:
        sd[f"{prefix}attn.q_bias"], sd[f"{prefix}attn.v_bias"] = randn(w), randn(w)
    sd.update({f"{prefix}attn.proj.weight": randn(w, w, std=w ** -0.5), f"{prefix}attn.proj.bias": randn(w),
               f"{prefix}norm2.weight": 1.0 + randn(w), f"{prefix}norm2.bias": randn(w),
               f"{prefix}mlp.fc1.weight": randn(4 * w, w, std=w ** -0.5), f"{prefix}mlp.fc1.bias": randn(4 * w),
               f"{prefix}mlp.fc2.weight": randn(w, 4 * w, std=(4 * w) ** -0.5), f"{prefix}mlp.fc2.bias": randn(w)})
    return sd


def sincos_2d(w: int, grid: int) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos table with a zero CLS row (util/pos_embed.py)."""
    def one_d(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    gh, gw = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    table = np.concatenate([one_d(w // 2, gw), one_d(w // 2, gh)], axis=1)
    return torch.from_numpy(np.concatenate([np.zeros([1, w]), table])).float().unsqueeze(0)


def training_extras(epoch: int, **args) -> dict:
    return {"optimizer": {"state": {}, "param_groups": [{"lr": 1.5e-4, "weight_decay": 0.05, "params": []}]},
            "epoch": epoch, "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                       "growth_interval": 2000, "_growth_tracker": 0},
            "args": argparse.Namespace(**args)}


def mae_checkpoint(d: Dims) -> dict:
    w, dec = d.vit_width, d.decoder_width
    sd = {"cls_token": randn(1, 1, w), "pos_embed": sincos_2d(w, 14),
          "patch_embed.proj.weight": randn(w, 3, 16, 16, std=(3 * 256) ** -0.5), "patch_embed.proj.bias": randn(w)}
    for i in range(d.vit_depth):
        sd.update(vit_block(f"blocks.{i}.", w, "full"))
    sd.update({"norm.weight": 1.0 + randn(w), "norm.bias": randn(w), "mask_token": randn(1, 1, dec),
               "decoder_embed.weight": randn(dec, w), "decoder_embed.bias": randn(dec),
               "decoder_pos_embed": sincos_2d(dec, 14)})
    for j in range(d.decoder_depth):
        sd.update(vit_block(f"decoder_blocks.{j}.", dec, "full"))
    sd.update({"decoder_norm.weight": 1.0 + randn(dec), "decoder_norm.bias": randn(dec),
               "decoder_pred.weight": randn(768, dec), "decoder_pred.bias": randn(768)})
    return {"model": sd, **training_extras(340, model="mae_vit_large_patch16", input_size=224, mask_ratio=0.75,
                                           norm_pix_loss=True, batch_size=64, epochs=400, blr=1.5e-4)}


def videomae_checkpoint(d: Dims) -> dict:
    w, dec = d.vit_width, d.decoder_width
    sd = {"encoder.patch_embed.proj.weight": randn(w, 3, 2, 16, 16, std=(3 * 512) ** -0.5),
          "encoder.patch_embed.proj.bias": randn(w)}
    for i in range(d.vit_depth):
        sd.update(vit_block(f"encoder.blocks.{i}.", w, "qv"))
    sd.update({"encoder.norm.weight": 1.0 + randn(w), "encoder.norm.bias": randn(w),
               "encoder_to_decoder.weight": randn(dec, w), "mask_token": randn(1, 1, dec)})
    for j in range(d.decoder_depth):
        sd.update(vit_block(f"decoder.blocks.{j}.", dec, "qv"))
    sd.update({"decoder.norm.weight": 1.0 + randn(dec), "decoder.norm.bias": randn(dec),
               "decoder.head.weight": randn(1536, dec), "decoder.head.bias": randn(1536)})
    return {"model": sd, **training_extras(399, model="pretrain_videomae_large_patch16_224", num_frames=16,
                                             tubelet_size=2, mask_ratio=0.9, decoder_depth=d.decoder_depth)}


# --- everything ------------------------------------------------------------------------------

def build(out: Path, vocab_gguf: Path, lavis_dir: Path, dims: Dims, variants: bool) -> None:
    torch.manual_seed(SEED)
    tiny = dims == TINY
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    eva = eva_state(dims, lavis_dir)
    save(eva, staging / "eva_vit_g.pth")
    log(f"eva_vit_g.pth: {len(eva)} tensors")
    model = emotion_llama_model(dims)
    save(emotion_llama_checkpoint(dims, model), staging / "save_checkpoint/Emoation_LLaMA.pth")
    llama_folder(dims, staging / "Llama-2-7b-chat-hf", vocab_gguf, tiny)
    hubert_folder(dims, staging / "transformer/chinese-hubert-large")
    save(mae_checkpoint(dims), staging / "feature_extract/models/mae_checkpoint-340.pth")
    save(videomae_checkpoint(dims), staging / "feature_extract/models/maeVideo_ckp399.pth")
    if variants:
        write_variants(staging, dims, eva, model, vocab_gguf)
    shutil.rmtree(out, ignore_errors=True)
    staging.replace(out)
    log(f"done -> {out}")


def write_variants(root: Path, d: Dims, eva: dict, model: dict, vocab_gguf: Path) -> None:
    """Other spellings of the same weights (`same/`: the export must be byte-identical)
    and broken copies (`broken/`: the export must refuse them)."""
    same, broken = root / "variants/same", root / "variants/broken"
    # EVA stored in fp32 with the legacy (non-zip) serializer.
    save({k: v.float() for k, v in eva.items()}, same / "eva_vit_g.pth", _use_new_zipfile_serialization=False)
    # peft >= 0.3 spelling, and transformers 4.30's persistent rotary buffers.
    newer = {k.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight"): v
             for k, v in model.items()}
    for i in range(d.llama_layers):
        newer[f"llama_model.base_model.model.model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.rand(64)
    save(emotion_llama_checkpoint(d, newer), same / "Emoation_LLaMA.pth")
    llama_folder(d, same / "Llama-2-7b-chat-hf", vocab_gguf, tiny=True, bin_shards=True)
    hubert = root / "transformer/chinese-hubert-large"
    shutil.copytree(hubert, same / "chinese-hubert-large")
    sd = torch.load(hubert / "pytorch_model.bin", weights_only=True)
    save({"hubert." + k: v for k, v in sd.items()}, same / "chinese-hubert-large/pytorch_model.bin")
    with torch.serialization.safe_globals([argparse.Namespace]):
        vmae = torch.load(root / "feature_extract/models/maeVideo_ckp399.pth", weights_only=True)
    vmae["module"] = vmae.pop("model")
    save(vmae, same / "maeVideo_ckp399.pth")

    # Broken: each a copy of one input with one defect.
    missing = dict(model)
    del missing[lora_key(1, "v_proj", "A")], missing[lora_key(1, "v_proj", "B")]
    save(emotion_llama_checkpoint(d, missing), broken / "lora-63-pairs.pth")
    renamed = {("blocks.0.attn.qkv.weights" if k == "blocks.0.attn.qkv.weight" else k): v for k, v in eva.items()}
    save(renamed, broken / "eva-renamed-key.pth")
    wrong = dict(model)
    wrong["llama_proj.weight"] = randn(d.llama_width, 4 * d.eva_width + 4)
    save(emotion_llama_checkpoint(d, wrong), broken / "projector-wrong-shape.pth")
    whole = (root / "save_checkpoint/Emoation_LLaMA.pth").read_bytes()
    (broken / "truncated.pth").write_bytes(whole[: len(whole) // 2])
    shard_missing = broken / "llama-missing-shard"
    shutil.copytree(root / "Llama-2-7b-chat-hf", shard_missing)
    (shard_missing / "model-00002-of-00002.safetensors").unlink()
    log("variants written")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m emollama_export.fixtures", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--vocab-gguf", type=Path, required=True, help="llama.cpp ggml-vocab-llama-spm.gguf")
    ap.add_argument("--lavis-dir", type=Path, required=True, help="folder holding LAVIS 1.0.2 eva_vit.py")
    ap.add_argument("--full-size", action="store_true", help="the real dimensions (about 20 GB; benchmark)")
    ap.add_argument("--variants", action="store_true", help="also other spellings and broken copies")
    args = ap.parse_args(argv)
    build(args.out.resolve(), args.vocab_gguf, args.lavis_dir, REAL if args.full_size else TINY, args.variants)


if __name__ == "__main__":
    main()
