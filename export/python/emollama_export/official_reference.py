"""Independent references for the official export, built from the official input files
with other people's code, never the exporter's modules:

  global    the official EVA code (LAVIS 1.0.2 eva_vit.py: VisionTransformer, its own
            interpolate_pos_embed and load_state_dict(strict=False)), ln_vision, and the
            checkpoint's projectors applied as minigpt_v2.encode_img does
  local     transformers ViTModel (timm -> HF key map) -> CLS -> mean over frames -> proj1
  temporal  transformers VideoMAEModel (eps 1e-6, mean pooling) -> mean over tokens -> proj2
  audio     transformers Wav2Vec2FeatureExtractor + HubertModel.from_pretrained, the last
            hidden state averaged as conversation.py does -> proj3
  llm       transformers LlamaForCausalLM (fp32) with the LoRA applied UNMERGED on q/v, as
            peft 0.2.0's forward computes it: W x + scaling * B (A x)

Commands (tests):
  goldens   --fixture DIR --export DIR   compare the exported ONNX engines with these (ONNX
            Runtime), check the key reports, the tokenizer and the LoRA's effect, and write
            DIR/goldens/ (the synthetic goldens' format) for the Rust tests, plus
            DIR/merged-reference/llm-merged-f32.gguf: llama.cpp's converter run as a command
            on a merged HF folder, which the exported GGUF must equal
  goldens-v2  --fixture DIR --export DIR   the same for the Emotion-LLaMA-v2 export (the v2
            files under DIR/v2): the global EVA by LAVIS's code, the temporal one by timm's
            `Eva` loaded as `extract_features.py` loads it (strict=False), Whisper's encoder
            by transformers' `WhisperModel.from_pretrained` with the one decoder step the
            official code runs, ConvProAttention in numpy from the checkpoint's tensors; the
            LLM at v2's prompt ids (the spec's §4.3) around 448 rows
  pipeline  --fixture DIR --inputs DUMP --out ref.json   the end-to-end reference on the
            inputs `emollama analyze --dump-inputs` wrote (see reference.py)
  pipeline-v2  --fixture DIR --inputs DUMP --out ref.json   the same for the v2 export, its
            rows made by the goldens-v2 references
"""

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import sentencepiece
import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import (HubertModel, LlamaForCausalLM, LlamaTokenizer, VideoMAEConfig, VideoMAEModel, ViTConfig,
                          ViTModel, Wav2Vec2FeatureExtractor)

from .llama import spliced_reference
from .official_code import load_eva_vit, eva_vision_transformer
from .reference import answer as answer_reference, load as load_dumped, run as run_pipeline
from .projectors import PROJECTORS, projector_name
from .tensors import TensorStore, write_json_atomic

TOLERANCE = 1e-4  # fp32 on CPU, the synthetic goldens' tolerance
LORA_SCALING = 16 / 64
# Spec emotion-llama.md §4.3: the eval prompt's two text segments around the 260 rows.
PREFIX_IDS = [1, 1, 518, 25580, 29962, 529, 9641, 29958]
SUFFIX_IDS = [1533, 9641, 29958, 529, 14394, 5299, 19132, 10605, 2565, 14394, 29958,
              450, 2022, 297, 4863, 4083, 29901, 29871, 518, 29914, 25580, 29962]


def torch_load(path: Path):
    """As the official feature scripts load them (their `args` is an argparse.Namespace)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


class Fixture:
    """The official files, at their official places under one folder."""

    def __init__(self, root: Path, lavis_dir: Path, eva_depth: int):
        self.root, self.lavis_dir, self.eva_depth = root, lavis_dir, eva_depth
        self.eva = root / "eva_vit_g.pth"
        self.ckpt = torch_load(root / "save_checkpoint/Emoation_LLaMA.pth")["model"]
        self.llama = root / "Llama-2-7b-chat-hf"
        self.hubert = root / "transformer/chinese-hubert-large"
        self.mae = root / "feature_extract/models/mae_checkpoint-340.pth"
        self.videomae = root / "feature_extract/models/maeVideo_ckp399.pth"

    def linear(self, name: str) -> nn.Linear:
        w, b = self.ckpt[f"{name}.weight"], self.ckpt[f"{name}.bias"]
        layer = nn.Linear(w.shape[1], w.shape[0])
        layer.load_state_dict({"weight": w, "bias": b})
        return layer.eval()


def eva_reference(fx: Fixture):
    eva_vit = load_eva_vit(fx.lavis_dir)
    sd = dict(torch.load(fx.eva, map_location="cpu", weights_only=True))
    c = sd["cls_token"].shape[-1]
    vit = eva_vision_transformer(fx.lavis_dir, c, fx.eva_depth, img_size=448)
    eva_vit.interpolate_pos_embed(vit, sd)
    incompatible = vit.load_state_dict(sd, strict=False)
    vit.eval()
    ln_vision = nn.LayerNorm(c).eval()  # base_model.init_vision_encoder: default eps and affine
    llama_proj, cls_proj = fx.linear("llama_proj"), fx.linear("cls_tk_llama_proj")

    def run(pixel_values):
        x = ln_vision(vit(pixel_values))  # minigpt_v2.encode_img
        cls, x = x[:, :1], x[:, 1:]
        b, pn, hs = x.shape
        return llama_proj(x.view(b, int(pn / 4), int(hs * 4))), cls_proj(cls)

    return run, incompatible, vit.pos_embed.detach()


def split_qkv(w: torch.Tensor) -> tuple:
    return w.chunk(3, dim=0)


def vit_block_map(src: str, dst: str, sd: dict, out: dict, qv_bias: bool) -> None:
    """timm/VideoMAE block `src` -> HF ViT/VideoMAE layer `dst` (transformers' convert scripts)."""
    q, k, v = split_qkv(sd[src + "attn.qkv.weight"])
    out.update({dst + "attention.attention.query.weight": q, dst + "attention.attention.key.weight": k,
                dst + "attention.attention.value.weight": v})
    if qv_bias:
        out[dst + "attention.attention.q_bias"] = sd[src + "attn.q_bias"]
        out[dst + "attention.attention.v_bias"] = sd[src + "attn.v_bias"]
    else:
        qb, kb, vb = split_qkv(sd[src + "attn.qkv.bias"])
        out.update({dst + "attention.attention.query.bias": qb, dst + "attention.attention.key.bias": kb,
                    dst + "attention.attention.value.bias": vb})
    for a, b in (("norm1", "layernorm_before"), ("norm2", "layernorm_after"), ("attn.proj", "attention.output.dense"),
                 ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")):
        for p in ("weight", "bias"):
            out[f"{dst}{b}.{p}"] = sd[f"{src}{a}.{p}"]


def mae_reference(fx: Fixture):
    sd = torch_load(fx.mae)["model"]
    w = sd["cls_token"].shape[-1]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    cfg = ViTConfig(hidden_size=w, num_hidden_layers=depth, num_attention_heads=w // 64,
                    intermediate_size=sd["blocks.0.mlp.fc1.weight"].shape[0], hidden_act="gelu", layer_norm_eps=1e-6,
                    qkv_bias=True, image_size=224, patch_size=16, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0, attn_implementation="eager")
    model = ViTModel(cfg, add_pooling_layer=False).eval()
    hf = {"embeddings.cls_token": sd["cls_token"], "embeddings.position_embeddings": sd["pos_embed"],
          "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
          "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
          "layernorm.weight": sd["norm.weight"], "layernorm.bias": sd["norm.bias"]}
    for i in range(depth):
        vit_block_map(f"blocks.{i}.", f"encoder.layer.{i}.", sd, hf, qv_bias=False)
    model.load_state_dict(hf, strict=True)
    proj = fx.linear("feats_llama_proj1")

    def run(faces):  # extract_mae_embedding.py: norm(x)[:, 0] per frame, then the clip mean
        cls = model(pixel_values=faces).last_hidden_state[:, 0]
        return proj(cls.mean(dim=0, keepdim=True)).unsqueeze(0)

    return run


def videomae_reference(fx: Fixture):
    sd = torch_load(fx.videomae)["model"]
    w = sd["encoder.patch_embed.proj.weight"].shape[0]
    depth = len({k.split(".")[2] for k in sd if k.startswith("encoder.blocks.")})
    cfg = VideoMAEConfig(image_size=224, patch_size=16, num_channels=3, num_frames=16, tubelet_size=2, hidden_size=w,
                         num_hidden_layers=depth, num_attention_heads=w // 64,
                         intermediate_size=sd["encoder.blocks.0.mlp.fc1.weight"].shape[0], hidden_act="gelu",
                         qkv_bias=True, layer_norm_eps=1e-6, use_mean_pooling=True, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0, attn_implementation="eager")
    model = VideoMAEModel(cfg).eval()
    hf = {"embeddings.patch_embeddings.projection.weight": sd["encoder.patch_embed.proj.weight"],
          "embeddings.patch_embeddings.projection.bias": sd["encoder.patch_embed.proj.bias"]}
    for i in range(depth):
        vit_block_map(f"encoder.blocks.{i}.", f"encoder.layer.{i}.", sd, hf, qv_bias=True)
    missing, unexpected = model.load_state_dict(hf, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    proj = fx.linear("feats_llama_proj2")

    def run(clip):  # (B, C, T, H, W) -> HF's (B, T, C, H, W); mean over all tokens
        hidden = model(pixel_values=clip.permute(0, 2, 1, 3, 4)).last_hidden_state
        return proj(hidden.mean(dim=1, keepdim=True))

    return run


def hubert_reference(fx: Fixture):
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(fx.hubert)
    model, info = HubertModel.from_pretrained(fx.hubert, attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    model.eval()
    proj = fx.linear("feats_llama_proj3")

    def run(waveform):  # conversation.py L263-276
        values = extractor(waveform[0].numpy(), sampling_rate=16000, return_tensors="pt").input_values
        hidden = model(values, output_hidden_states=True).hidden_states
        feature = torch.stack(hidden)[[-1]].sum(dim=0).mean(dim=1)
        return proj(feature).unsqueeze(0)

    return run, model


def llama_reference(fx: Fixture, with_lora: bool = True) -> LlamaForCausalLM:
    model = LlamaForCausalLM.from_pretrained(fx.llama, dtype=torch.float32, attn_implementation="eager").eval()
    if with_lora:
        for i, layer in enumerate(model.model.layers):
            for target in ("q_proj", "v_proj"):
                p = f"llama_model.base_model.model.model.layers.{i}.self_attn.{target}."
                a, b = fx.ckpt[p + "lora_A.weight"].float(), fx.ckpt[p + "lora_B.weight"].float()
                getattr(layer.self_attn, target).register_forward_hook(
                    lambda mod, inp, out, a=a, b=b: out + LORA_SCALING * F.linear(F.linear(inp[0], a), b))
    return model


def llm_goldens(fx: Fixture, store: TensorStore, rng, prefix: list, n_rows: int, suffix: list) -> dict:
    """The LLM's logits at the ends of a spliced prompt (`prefix`, `n_rows` random rows,
    `suffix`) with the LoRA unmerged, and without it (so that the test can show a dropped
    LoRA would be caught), and the greedy continuation."""
    d = json.loads((fx.llama / "config.json").read_text())["hidden_size"]
    rows = rng.standard_normal((n_rows, d)).astype(np.float32) * 0.5
    segments = [prefix, rows, suffix]
    logits, greedy = spliced_reference(llama_reference(fx), segments, n_greedy=16)
    plain, _ = spliced_reference(llama_reference(fx, with_lora=False), segments, n_greedy=1)
    print(f"[reference] llm: greedy {greedy}; the LoRA moves the logits by {np.abs(logits - plain).max():.3g}")
    return {
        "segments": [{"tokens": prefix}, {"embeddings": store.put("llm.rows", rows)}, {"tokens": suffix}],
        "logits_at_segment_ends": store.put("llm.segment_logits", logits),
        "logits_without_lora": store.put("llm.segment_logits_without_lora", plain),
        "greedy_tokens": greedy,
        "reference": f"transformers {transformers.__version__} LlamaForCausalLM fp32 eager, LoRA unmerged (peft 0.2.0)",
    }


def merged_folder_gguf(fx: Fixture, out: Path, converter_dir: Path) -> Path:
    """What the issue asks the LLM to equal: llama.cpp's convert_hf_to_gguf.py, run as its
    own command on a merged HF folder (W + 0.25 B@A in fp32 for q/v, the rest as stored)."""
    import shutil
    import subprocess
    import sys

    from safetensors import safe_open
    from safetensors.torch import save_file

    merged = out / "Llama-2-7b-chat-hf"  # the same folder name: the converter names the model after it
    shutil.rmtree(out, ignore_errors=True)
    merged.mkdir(parents=True)
    for name in ("config.json", "generation_config.json", "tokenizer.model", "tokenizer_config.json",
                 "special_tokens_map.json"):
        shutil.copy(fx.llama / name, merged / name)
    tensors = {}
    for shard in sorted(fx.llama.glob("model-*.safetensors")):
        with safe_open(shard, framework="pt") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    for key in list(tensors):
        parts = key.split(".")
        if parts[-2] in ("q_proj", "v_proj"):
            p = f"llama_model.base_model.model.model.layers.{parts[2]}.self_attn.{parts[-2]}."
            a, b = fx.ckpt[p + "lora_A.weight"].float(), fx.ckpt[p + "lora_B.weight"].float()
            tensors[key] = (tensors[key].float() + LORA_SCALING * (b @ a)).contiguous()
    save_file(tensors, str(merged / "model.safetensors"), metadata={"format": "pt"})
    gguf_path = out / "llm-merged-f32.gguf"
    subprocess.run([sys.executable, "convert_hf_to_gguf.py", str(merged), "--outtype", "f32", "--outfile",
                    str(gguf_path)], cwd=converter_dir, check=True, capture_output=True)
    shutil.rmtree(merged)
    return gguf_path


def engines(fx: Fixture) -> dict:
    return {"global": eva_reference(fx)[0], "local": mae_reference(fx), "temporal": videomae_reference(fx),
            "audio": hubert_reference(fx)[0]}


# --- goldens -----------------------------------------------------------------------------------

def check_tokenizer(fx: Fixture, vocab_gguf: Path) -> None:
    """The fixture's rebuilt tokenizer.model is LLaMA-2's: llama.cpp's test vectors through
    sentencepiece and transformers' slow tokenizer (the golden prompt ids are checked on
    the exported GGUF by the Rust tests)."""
    sp = sentencepiece.SentencePieceProcessor(model_file=str(fx.llama / "tokenizer.model"))
    slow = LlamaTokenizer.from_pretrained(fx.llama, legacy=False)
    texts = Path(str(vocab_gguf) + ".inp").read_text().split("\n__ggml_vocab_test__\n")
    wants = Path(str(vocab_gguf) + ".out").read_text().strip().split("\n")
    for text, want in zip(texts, wants):
        ids = [int(t) for t in want.split()]
        assert sp.encode(text) == ids, text
        assert slow.encode(text, add_special_tokens=False) == ids, text
    print(f"[reference] tokenizer.model: llama.cpp's {len(wants)} test vectors match (sentencepiece, slow tokenizer)")


def onnx_initializer(path: Path, shape: list) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    for init in onnx.load(str(path)).graph.initializer:
        if list(init.dims) == shape:
            return numpy_helper.to_array(init)
    raise AssertionError(f"no initializer of shape {shape} in {path}")


@torch.no_grad()
def goldens(args) -> None:
    fx = Fixture(args.fixture, args.lavis_dir, args.eva_depth)
    bundle = args.export / "bundle"
    report = json.loads((args.export / "export-report.json").read_text())
    store = TensorStore(args.export / "goldens")
    rng = np.random.default_rng(7)
    check_tokenizer(fx, args.vocab_gguf)

    # EVA: what the official loader dropped is exactly what the exporter reported ignoring,
    # and the baked position table is the official interpolation, bit for bit.
    eva, incompatible, pos = eva_reference(fx)
    ignored = sorted(k for keys in report["keys"]["eva"]["ignored"].values() for k in keys)
    assert not incompatible.missing_keys, incompatible.missing_keys
    assert sorted(incompatible.unexpected_keys) == ignored, (incompatible.unexpected_keys, ignored)
    baked = onnx_initializer(bundle / "global.onnx", list(pos.shape))
    assert np.array_equal(baked, pos.numpy()), "baked pos_embed differs from the official interpolation"
    print(f"[reference] global: official loader ignores the same {len(ignored)} keys; pos_embed bit-identical")
    # HuBERT: the 2022 weight-norm names load, and their effective weight is g * v / |v|.
    _, hubert = hubert_reference(fx)
    sd = torch.load(fx.hubert / "pytorch_model.bin", weights_only=True)
    g, v = sd["encoder.pos_conv_embed.conv.weight_g"], sd["encoder.pos_conv_embed.conv.weight_v"]
    effective = g * v / v.norm(dim=(0, 1), keepdim=True)
    assert torch.allclose(hubert.encoder.pos_conv_embed.conv.weight, effective, atol=1e-6)

    refs = engines(fx)

    def uniform(*shape):
        return rng.random(shape, dtype=np.float32)

    cases = {
        "global": [{"pixel_values": ((uniform(b, 3, 448, 448) - 0.45) / 0.27).astype(np.float32)} for b in (1, 2)],
        "local": [{"faces": uniform(n, 3, 224, 224)} for n in (2, 4)],
        "temporal": [{"clip": uniform(b, 3, 16, 224, 224)} for b in (1, 2)],
        "audio": [{"waveform": (0.3 * rng.standard_normal((1, n))).astype(np.float32)} for n in (16000, 24000)],
    }
    outputs = {"global": ["patch_rows", "cls_row"], "local": ["local_row"], "temporal": ["temporal_row"],
               "audio": ["audio_row"]}
    # The projector-only engines, against nn.Linear on the checkpoint's own tensors.
    for k, _, row in PROJECTORS:
        layer = fx.linear(projector_name(k))
        refs[projector_name(k)] = lambda x, layer=layer: layer(x).unsqueeze(1)
        cases[projector_name(k)] = [{"features": rng.standard_normal((1, layer.in_features)).astype(np.float32)}
                                    for _ in range(2)]
        outputs[projector_name(k)] = [row]
    golden_engines, parity = {}, {}
    for name, feeds_list in cases.items():
        sess = ort.InferenceSession(str(bundle / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        golden_engines[name], worst = [], 0.0
        for i, feeds in enumerate(feeds_list):
            want = refs[name](*(torch.from_numpy(feeds[n]) for n in feeds))
            want = want if isinstance(want, tuple) else (want,)
            got = sess.run(outputs[name], feeds)
            worst = max([worst] + [float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want)])
            golden_engines[name].append({
                "inputs": {n: store.put(f"{name}.case{i}.{n}", a) for n, a in feeds.items()},
                "outputs": {n: store.put(f"{name}.case{i}.{n}", w.numpy()) for n, w in zip(outputs[name], want)},
            })
        parity[name] = worst
        print(f"[reference] {name}: max |onnxruntime(exported) - independent reference| = {worst:.3g}")
        assert worst <= TOLERANCE, f"{name}: {worst} > {TOLERANCE}"

    golden_llm = llm_goldens(fx, store, rng, PREFIX_IDS, 260, SUFFIX_IDS)
    merged = merged_folder_gguf(fx, args.export / "merged-reference", args.converter_dir)
    print(f"[reference] llm: convert_hf_to_gguf.py on a merged HF folder -> {merged}")
    write_json_atomic(args.export / "goldens/index.json", {
        "format_version": 1, "engines": golden_engines, "llm": golden_llm, "parity": parity,
        "tolerance": {"engines": TOLERANCE, "llm_logits_f32": 1e-3}})


# v2 spec §4.3: the 9 ids before the rows and the demo's quick emotion prompt after them.
V2_PREFIX_IDS = [1, 1, 29961, 25580, 29962, 529, 29963, 333, 29958]
V2_SUFFIX_IDS = [1533, 29963, 333, 29958, 518, 331, 8194, 29962, 13355, 1598, 278, 953, 8194, 13384, 297, 278, 4863,
                 29889, 14542, 852, 515, 29901, 27343, 29892, 766, 29887, 504, 29892, 8866, 29892, 9796, 29892, 21104,
                 29892, 14610, 29892, 16671, 29889, 518, 29914, 25580, 29962]


class V2References:
    """Emotion-LLaMA-v2's encoders rebuilt from the official files by other code: the
    global EVA by LAVIS's code at 448 with v2's `llama_proj` view and the CLS unprojected,
    the temporal EVA by timm's `Eva` loaded as `extract_features.py` loads it
    (strict=False), Whisper's encoder by `WhisperModel.from_pretrained` with the one
    decoder step the official code runs, ConvProAttention in numpy from the checkpoint."""

    def __init__(self, fx: Fixture):
        from timm.models.eva import Eva
        from transformers import WhisperModel

        fx.ckpt = torch_load(fx.root / "v2/checkpoint_9.pth")["model"]
        self.fx = fx
        sd = dict(torch.load(fx.eva, map_location="cpu", weights_only=True))
        c = sd["cls_token"].shape[-1]
        self.vit = eva_vision_transformer(fx.lavis_dir, c, fx.eva_depth, img_size=448)
        at_448 = dict(sd)  # the official interpolation rewrites the dict it is given
        load_eva_vit(fx.lavis_dir).interpolate_pos_embed(self.vit, at_448)
        self.vit.load_state_dict(at_448, strict=False)
        self.vit.eval()
        self.ln_vision, self.llama_proj = nn.LayerNorm(c).eval(), fx.linear("llama_proj")
        # `extract_features.py` L147-L165: the temporal EVA, one block and the norm more.
        self.eva = Eva(img_size=224, patch_size=14, embed_dim=c, depth=fx.eva_depth + 1, num_heads=c // 88,
                       mlp_ratio=int(c * 4.3637) / c, qkv_fused=True, num_classes=0, global_pool="").eval()
        self.eva.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
        self.video_proj = fx.linear("llama_proj_video")
        self.whisper = WhisperModel.from_pretrained(str(fx.root / "v2/whisper-large-v3"), dtype=torch.float32).eval()
        self.audio_proj = fx.linear("llama_proj_audio")
        self.convpro = {k.removeprefix("conv_pro_module."): v for k, v in fx.ckpt.items()
                        if k.startswith("conv_pro_module.")}
        self.fusion_proj = fx.linear("llama_proj_fusion")

    def glob(self, pixel_values):
        x = self.ln_vision(self.vit(pixel_values))
        b, pn, hs = x[:, 1:].shape
        return self.llama_proj(x[:, 1:].reshape(b, pn // 4, hs * 4)), x[:, 0]

    def temporal(self, frames):  # `extract_features.py` L223-L237
        x = self.eva.forward_features(frames)[:, 1:]
        t, n, w = x.shape
        g = int(n ** 0.5)
        x = F.adaptive_avg_pool3d(x.reshape(1, t, g, g, w).permute(0, 4, 1, 2, 3), (t, 2, 2))
        cells = x.permute(0, 2, 3, 4, 1).reshape(1, -1, w)
        return cells, self.video_proj(cells)

    def audio(self, features):  # `extract_features.py` L139-L205
        hidden = self.whisper(features, decoder_input_ids=torch.tensor([[50258]])).encoder_last_hidden_state
        bins = F.adaptive_avg_pool1d(hidden.transpose(1, 2), 64).transpose(1, 2)
        return bins, self.audio_proj(bins), hidden

    def no_audio(self):
        """A clip without sound: zero features, as the training's `_load_npy` fallback."""
        bins = torch.zeros(1, 64, self.whisper.config.d_model)
        return bins, self.audio_proj(bins)

    def fusion(self, audio_feat, cls_feat, video_feat):
        from .v2 import convpro_numpy

        cls = cls_feat.unsqueeze(1).expand(-1, audio_feat.shape[1], -1)
        fused = convpro_numpy(self.convpro, [audio_feat.numpy(), cls.numpy(), video_feat.numpy()])
        return torch.from_numpy(fused.astype(np.float32)) @ self.fusion_proj.weight.T + self.fusion_proj.bias


@torch.no_grad()
def goldens_v2(args) -> None:
    from .v2 import sample_inputs

    fx = Fixture(args.fixture, args.lavis_dir, args.eva_depth)
    ref = V2References(fx)
    bundle, store, rng = args.export / "bundle", TensorStore(args.export / "goldens"), np.random.default_rng(9)
    inputs = sample_inputs(rng, ref.whisper.config.num_mel_bins)
    pixels, frames, mel = (torch.from_numpy(inputs[k][n]) for k, n in (
        ("global", "pixel_values"), ("temporal", "frames"), ("audio", "input_features")))
    patch_rows, cls_feat = ref.glob(pixels)
    video_feat, video_rows = ref.temporal(frames)
    audio_feat, audio_rows, hidden = ref.audio(mel)
    cases = {
        "global": ({"pixel_values": pixels}, {"patch_rows": patch_rows, "cls_feat": cls_feat}),
        "temporal": ({"frames": frames}, {"video_feat": video_feat, "video_rows": video_rows}),
        "audio": ({"input_features": mel}, {"audio_feat": audio_feat, "audio_rows": audio_rows,
                                            "encoder_hidden": hidden}),
        "fusion": ({"audio_feat": audio_feat, "cls_feat": cls_feat, "video_feat": video_feat},
                   {"fusion_rows": ref.fusion(audio_feat, cls_feat, video_feat)}),
    }
    golden_engines, parity = {}, {}
    for name, (feeds, want) in cases.items():
        sess = ort.InferenceSession(str(bundle / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        got = sess.run(list(want), {k: v.numpy() for k, v in feeds.items()})
        parity[name] = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want.values()))
        golden_engines[name] = [{"inputs": {k: store.put(f"{name}.{k}", v.numpy()) for k, v in feeds.items()},
                                 "outputs": {k: store.put(f"{name}.out.{k}", v.numpy()) for k, v in want.items()}}]
        print(f"[reference] v2 {name}: max |onnxruntime(exported) - independent reference| = {parity[name]:.3g}")
        assert parity[name] <= TOLERANCE, f"{name}: {parity[name]} > {TOLERANCE}"
    # The LLM: v2's prompt ids around its 448 rows.
    write_json_atomic(args.export / "goldens/index.json", {
        "format_version": 1, "engines": golden_engines, "parity": parity,
        "llm": llm_goldens(fx, store, rng, V2_PREFIX_IDS, 448, V2_SUFFIX_IDS),
        "tolerance": {"engines": TOLERANCE, "llm_logits_f32": 1e-3}})


@torch.no_grad()
def pipeline(args) -> None:
    fx = Fixture(args.fixture, args.lavis_dir, args.eva_depth)
    index = json.loads((args.inputs / "index.json").read_text())
    zero = load_dumped(args.inputs, "zero_rows")
    result, timings = run_pipeline(args, index, engines(fx), zero, llama_reference(fx))
    result["timings_ms"] = timings
    write_json_atomic(args.out, result)
    print(f"[reference] {len(result['greedy_tokens'])} greedy tokens -> {args.out}")


@torch.no_grad()
def pipeline_v2(args) -> None:
    """v2's end-to-end reference on the inputs the runtime dumped: its encoders rebuilt
    from the files (a clip without sound: zero features), the rows in `encode_img`'s order
    (fusion, global, temporal, audio: v2 spec §1.6) and the LLM with the LoRA unmerged."""
    ref = V2References(Fixture(args.fixture, args.lavis_dir, args.eva_depth))
    index = json.loads((args.inputs / "index.json").read_text())
    patch_rows, cls_feat = ref.glob(load_dumped(args.inputs, "pixel_values"))
    video_feat, video_rows = ref.temporal(load_dumped(args.inputs, "frames"))
    mel = load_dumped(args.inputs, "input_features")
    audio_feat, audio_rows = ref.audio(mel)[:2] if mel is not None else ref.no_audio()
    fusion_rows = ref.fusion(audio_feat, cls_feat, video_feat)
    rows = torch.cat([fusion_rows[0], patch_rows[0], video_rows[0], audio_rows[0]])
    result, timings = answer_reference(index, rows, llama_reference(ref.fx))
    result["timings_ms"] = timings
    result["sound"] = mel is not None
    write_json_atomic(args.out, result)
    print(f"[reference] v2: {len(result['greedy_tokens'])} greedy tokens -> {args.out}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m emollama_export.official_reference", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("goldens", "goldens-v2", "pipeline", "pipeline-v2"):
        p = sub.add_parser(name)
        p.add_argument("--fixture", type=Path, required=True, help="the official-format input files")
        p.add_argument("--lavis-dir", type=Path, required=True, help="folder holding LAVIS 1.0.2 eva_vit.py")
        p.add_argument("--eva-depth", type=int, default=39)
        if name == "goldens":
            p.add_argument("--export", type=Path, required=True, help="the official export (bundle/, report)")
            p.add_argument("--vocab-gguf", type=Path, required=True)
            p.add_argument("--converter-dir", type=Path, required=True, help="llama.cpp's convert_hf_to_gguf.py folder")
        elif name == "goldens-v2":
            p.add_argument("--export", type=Path, required=True, help="the official v2 export (bundle/, report)")
        else:
            p.add_argument("--inputs", type=Path, required=True)
            p.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    commands = {"goldens": goldens, "goldens-v2": goldens_v2, "pipeline": pipeline, "pipeline-v2": pipeline_v2}
    commands[args.command](args)


if __name__ == "__main__":
    main()
