"""Format-faithful stand-ins for the files an Emotion-LLaMA-v2 user downloads (v2 spec
§2.1, §2.2), beside the v1 fixtures (`emollama_export.fixtures`, whose `eva_vit_g.pth`
and `Llama-2-7b-chat-hf/` v2 uses too), with seeded random weights at tiny widths (every
head size real):

  v2/checkpoint_9.pth          {model, optimizer, config, scaler, epoch}: the 166-tensor
                               layout of the spec's §2.2 (LoRA on q/v of every layer, the
                               four projectors, ConvProAttention), fp32, with a real
                               AdamW state
  v2/whisper-large-v3/         config.json, preprocessor_config.json, generation_config.json,
                               model.safetensors (fp16, `model.encoder.*` and
                               `model.decoder.*`): whisper-large-v3's layout (128 mel bins,
                               1500 positions, vocabulary 51866) at a tiny width
  v2/broken/                   copies with one defect each: a LoRA pair missing, an unknown
                               key, an EVA file without its last block and norm (what the
                               temporal branch needs), a Whisper of another width

usage: python -m emollama_export.fixtures_v2 --fixture DIR   (the v1 fixture folder)
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

from .fixtures import LORA_ALPHA, LORA_R, lora_key, optimizer_state, randn, save
from .v2 import ConvProAttention

SEED = 2026
WHISPER_HEAD = 64  # whisper-large-v3: 1280 / 20


def log(msg: str) -> None:
    print(f"[fixtures-v2] {msg}", flush=True)


def v2_model(llama_width: int, layers: int, eva_width: int, whisper_width: int) -> dict:
    """`ckpt['model']` as training saves it: every trainable parameter, fp32."""
    h = llama_width
    sd = {}
    for i in range(layers):
        for target in ("q_proj", "v_proj"):
            sd[lora_key(i, target, "A")] = randn(LORA_R, h, std=h ** -0.5)
            sd[lora_key(i, target, "B")] = randn(h, LORA_R, std=0.05)
    for name, width in (("llama_proj", 4 * eva_width), ("llama_proj_video", eva_width),
                        ("llama_proj_audio", whisper_width), ("llama_proj_fusion", 256)):
        sd[f"{name}.weight"] = randn(h, width, std=width ** -0.5)
        sd[f"{name}.bias"] = randn(h)
    convpro = ConvProAttention([whisper_width, eva_width, eva_width])
    for k, v in convpro.state_dict().items():
        sd[f"conv_pro_module.{k}"] = randn(*v.shape, std=v[0].numel() ** -0.5 if v.dim() > 1 else 0.1)
    return sd


def v2_checkpoint(model: dict) -> dict:
    return {
        "model": model,
        "optimizer": optimizer_state(model),
        "config": {
            "model": {"arch": "emotion_llama_v2", "model_type": "pretrain", "max_txt_len": 1024, "end_sym": "</s>",
                      "low_resource": False, "image_size": 448, "llama_model": "/checkpoints/Llama-2-7b-chat-hf",
                      "ckpt": "save_checkpoint/stage1/checkpoint_9.pth", "lora_r": LORA_R, "lora_alpha": LORA_ALPHA,
                      "lora_target_modules": ["q_proj", "v_proj"], "chat_template": True},
            "run": {"task": "image_text_pretrain", "max_epoch": 10, "iters_per_epoch": 5000, "seed": 42,
                    "amp": True},
        },
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                   "_growth_tracker": 0},
        "epoch": 9,
    }


def whisper_folder(out: Path, width: int) -> None:
    """whisper-large-v3's files (config, preprocessor and generation configs, fp16
    safetensors) at `width`."""
    config = WhisperConfig(d_model=width, encoder_layers=2, decoder_layers=2, encoder_attention_heads=width // 64,
                           decoder_attention_heads=width // WHISPER_HEAD, encoder_ffn_dim=2 * width,
                           decoder_ffn_dim=2 * width, num_mel_bins=128, max_source_positions=1500,
                           vocab_size=51866, decoder_start_token_id=50258, pad_token_id=50256, bos_token_id=50257,
                           eos_token_id=50257, torch_dtype="float16")
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (p[0].numel() ** -0.5 if p.dim() > 1 else 0.1))
    model.half().save_pretrained(str(out), safe_serialization=True)
    WhisperFeatureExtractor(feature_size=128).save_pretrained(str(out))


def build(fixture: Path) -> None:
    torch.manual_seed(SEED)
    staging = fixture / "v2.partial"
    shutil.rmtree(staging, ignore_errors=True)
    llama = json.loads((fixture / "Llama-2-7b-chat-hf/config.json").read_text())
    eva = torch.load(fixture / "eva_vit_g.pth", weights_only=True)
    eva_width = eva["cls_token"].shape[-1]
    whisper_width = 2 * WHISPER_HEAD
    model = v2_model(llama["hidden_size"], llama["num_hidden_layers"], eva_width, whisper_width)
    save(v2_checkpoint(model), staging / "checkpoint_9.pth")
    whisper_folder(staging / "whisper-large-v3", whisper_width)
    log(f"checkpoint_9.pth: {len(model)} tensors; whisper-large-v3 at width {whisper_width}")

    broken = staging / "broken"
    missing = dict(model)
    del missing[lora_key(1, "v_proj", "A")], missing[lora_key(1, "v_proj", "B")]
    save(v2_checkpoint(missing), broken / "lora-missing-pair.pth")
    unknown = dict(model)
    unknown["conv_pro_module.fc_out.weight"] = randn(6, 128)
    save(v2_checkpoint(unknown), broken / "unknown-key.pth")
    last = max(int(k.split(".")[1]) for k in eva if k.startswith("blocks."))
    short = {k: v for k, v in eva.items() if not k.startswith((f"blocks.{last}.", "norm."))}
    save(short, broken / "eva-without-last-block.pth")
    whisper_folder(broken / "whisper-other-width", whisper_width // 2)
    shutil.rmtree(fixture / "v2", ignore_errors=True)
    staging.replace(fixture / "v2")
    log(f"done -> {fixture / 'v2'}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m emollama_export.fixtures_v2", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixture", type=Path, required=True, help="the v1 fixture folder (emollama_export.fixtures)")
    build(ap.parse_args(argv).fixture.resolve())


if __name__ == "__main__":
    main()
