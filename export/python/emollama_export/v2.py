"""Emotion-LLaMA-v2's engines (v2 spec §1, §6.1), and a synthetic set of them with golden
values from independent references.

The four engines, each with its projector baked in as in v1:
- `global_v2`: EVA-g/14 at 448 px (39 blocks, no final norm; v1's trunk) + `ln_vision` +
  the four-consecutive-token view + v2's `llama_proj` -> 256 rows; the CLS token after
  `ln_vision`, unprojected, for the fusion (v2 spec §1.2);
- `temporal_v2`: a second EVA-g (timm's `eva_giant_patch14_224`: 40 blocks + final
  LayerNorm eps 1e-6, 224 px) over 16 frames, CLS dropped, each frame's 16x16 patches
  averaged over 8x8 blocks (a fixed reshape and mean) -> 64 cells + `llama_proj_video`
  (§1.3);
- `audio_v2`: the Whisper encoder (its final LayerNorm included) on 30 s of log-mel ->
  1500 states, averaged into 64 bins by a constant [64, 1500] matrix (what
  `adaptive_avg_pool1d(64)` computes, static for TensorRT) + `llama_proj_audio`; the
  states themselves too, for speech recognition (§1.4, §7);
- `fusion_v2`: ConvProAttention over (audio bins, the CLS repeated 64 times, video cells)
  + `llama_proj_fusion` (§1.5).

The rows are `[64 fusion | 256 global | 64 temporal | 64 audio]` (§1.6).

Synthetic mode: the exact structures at tiny widths (every structural constant official:
image sizes, patch size, 16 frames, 128 mel bins x 3000 frames, 1500 states, 64 bins,
ConvPro's 512/128/256), seeded random weights: a v2 bundle under OUT/bundle (its LLM the
v1 synthetic bundle's tiny LLaMA-2, as v2's is LLaMA-2-7B-chat like v1's) and goldens
under OUT/goldens. The
golden outputs come from references that share no code with these modules: timm's `Eva`
(temporal, and the global trunk's blocks), transformers' `WhisperModel` (with the one
decoder step the official code runs) and `adaptive_avg_pool1d`, and ConvProAttention
written again in numpy from the official forward.
"""

import argparse
import json
import platform
import shutil
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import timm
import torch
import transformers
import torch.nn.functional as F
from torch import nn
from timm.models.eva import Eva
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

from .eva import EvaConfig, EvaViT, GlobalEngine
from . import EXPORTER_VERSION
from .manifest import bundle_manifest_v2, file_entry, tensor_spec
from .synthetic import engine_entry, export_engine, log, onnx_parity
from .tensors import TensorStore, write_json_atomic
from .whisper import CHUNK_SAMPLES, waveforms

SEED = 2025
FRAMES = 16  # the temporal window (v2 spec §3.2)
CELLS = 64  # temporal cells, audio bins, fusion rows
TOLERANCE = 1e-4


def pooling_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in]: `adaptive_avg_pool1d`'s bins, bin i the mean of inputs
    floor(i*n_in/n_out) .. ceil((i+1)*n_in/n_out) - 1 (neighbouring bins may share one)."""
    m = torch.zeros(n_out, n_in)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


class GlobalEngineV2(GlobalEngine):
    """pixel_values [B,3,448,448] -> patch_rows [B,256,D], cls_feat [B,C]: v1's module
    without `cls_tk_llama_proj` (the CLS goes to the fusion, unprojected)."""

    def __init__(self, cfg: EvaConfig, llm_dim: int):
        super().__init__(cfg, llm_dim)
        del self.cls_tk_llama_proj

    def forward(self, pixel_values: torch.Tensor):
        x = self.ln_vision(self.visual_encoder(pixel_values))
        b, n, c = x.shape
        patches = x[:, 1:].reshape(b, (n - 1) // self.cfg.group, c * self.cfg.group)
        return self.llama_proj(patches), x[:, 0]


class TemporalEngineV2(nn.Module):
    """frames [16,3,224,224] -> video_feat [1,64,C], video_rows [1,64,D]."""

    def __init__(self, cfg: EvaConfig, llm_dim: int):
        super().__init__()
        self.cfg = cfg
        self.visual_encoder = EvaViT(cfg)  # the checkpoint's own 16x16 table at 224 px
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.llama_proj_video = nn.Linear(cfg.embed_dim, llm_dim)

    def forward(self, frames: torch.Tensor):
        x = self.norm(self.visual_encoder(frames))[:, 1:]  # [T, 256, C]
        t, c, grid = x.shape[0], x.shape[2], self.cfg.image_size // self.cfg.patch_size
        half = grid // 2
        # Patch h*16 + w; cell t*4 + i*2 + j is the mean of rows 8i.. and columns 8j.. .
        cells = x.reshape(t, 2, half, 2, half, c).mean(dim=(2, 4)).reshape(1, t * 4, c)
        return cells, self.llama_proj_video(cells)


class AudioEngineV2(nn.Module):
    """input_features [1,n_mels,3000] -> audio_feat [1,64,C], audio_rows [1,64,D],
    encoder_hidden [1,1500,C]."""

    def __init__(self, config: WhisperConfig, llm_dim: int):
        super().__init__()
        self.encoder = WhisperModel(config).encoder
        self.register_buffer("pool", pooling_matrix(config.max_source_positions, CELLS), persistent=False)
        self.llama_proj_audio = nn.Linear(config.d_model, llm_dim)

    def forward(self, input_features: torch.Tensor):
        hidden = self.encoder(input_features).last_hidden_state
        bins = torch.matmul(self.pool, hidden)
        return bins, self.llama_proj_audio(bins), hidden


class Mlp2(nn.Module):
    """`convpro_model.py`'s MLP: Linear, ReLU, Dropout, Linear, ReLU, Dropout (indices
    0 and 3 hold the weights, as the checkpoint's keys say)."""

    def __init__(self, dims: list):
        super().__init__()
        layers = []
        for a, b in zip(dims, dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(0.1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class ConvBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv1d(width, width, 3, 1, 1))

    def forward(self, x):
        y = self.conv_block(x)
        return y * torch.sigmoid(y)  # `Switch`


class ConvModule(nn.Module):
    def __init__(self, width: int, blocks: int = 4):
        super().__init__()
        self.conv_blocks = nn.ModuleList(ConvBlock(width) for _ in range(blocks))

    def forward(self, x):
        for block in self.conv_blocks:
            x = block(x) + x
        return x


class ConvProAttention(nn.Module):
    """`minigpt4/models/convpro_model.py` (v2 spec §1.5): per-modality MLPs, unnormalised
    attention weights over the three, a residual 1-D conv stack, a final Linear."""

    def __init__(self, dims: list, output_dim: int = 256, layers: tuple = (512, 128)):
        super().__init__()
        hidden = layers[-1]
        self.feats_prep = nn.ModuleList(Mlp2([d, *layers]).net for d in dims)
        self.attention_mlp = Mlp2([hidden * len(dims), *layers]).net
        self.fc_att = nn.Linear(hidden, len(dims))
        self.conv_entry = nn.Conv1d(hidden * len(dims), hidden, 1)
        self.conv_module = ConvModule(hidden)
        self.fc_final = nn.Linear(hidden, output_dim)

    def forward(self, xs: list):
        h = [prep(x) for prep, x in zip(self.feats_prep, xs)]
        flat = torch.cat(h, dim=2)
        stack = torch.stack(h, dim=3)
        w = self.fc_att(self.attention_mlp(flat))
        fused = torch.matmul(stack, w.unsqueeze(3)).squeeze(3)
        c = self.conv_module(self.conv_entry(flat.transpose(1, 2)))
        return self.fc_final(fused + c.transpose(1, 2))


class FusionEngineV2(nn.Module):
    """audio_feat [1,64,Ca], cls_feat [1,Cg], video_feat [1,64,Cv] -> fusion_rows [1,64,D]."""

    def __init__(self, audio_dim: int, vision_dim: int, llm_dim: int):
        super().__init__()
        self.conv_pro_module = ConvProAttention([audio_dim, vision_dim, vision_dim])
        self.llama_proj_fusion = nn.Linear(256, llm_dim)

    def forward(self, audio_feat, cls_feat, video_feat):
        cls = cls_feat.unsqueeze(1).expand(-1, audio_feat.shape[1], -1)
        return self.llama_proj_fusion(self.conv_pro_module([audio_feat, cls, video_feat]))


# ----- independent references ---------------------------------------------------------

def timm_eva(cfg: EvaConfig, source: EvaViT, final_norm: nn.LayerNorm = None):
    """timm 1.0.15's `Eva` (what `eva_giant_patch14_224` builds) with `source`'s weights,
    loaded by the checkpoint's key names as the official code loads `eva_vit_g.pth`."""
    hidden = int(cfg.embed_dim * cfg.mlp_ratio)
    eva = Eva(img_size=cfg.image_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
              num_heads=cfg.num_heads, mlp_ratio=hidden / cfg.embed_dim, qkv_fused=True, num_classes=0,
              global_pool="").eval()
    state = {("patch_embed.proj." + k[len("patch_embed."):] if k.startswith("patch_embed.") else k): v
             for k, v in source.state_dict().items()}
    if final_norm is not None:
        state.update({f"norm.{k}": v for k, v in final_norm.state_dict().items()})
    missing, unexpected = eva.load_state_dict(state, strict=False)
    allowed = set() if final_norm is not None else {"norm.weight", "norm.bias"}
    assert set(missing) <= allowed and not unexpected, (missing, unexpected)
    return eva


def temporal_reference(engine: TemporalEngineV2, frames: np.ndarray) -> dict:
    """`extract_features.py` L223-L237: timm `forward_features`, CLS dropped,
    `spatiotemporal_downsample` (adaptive_avg_pool3d to (16, 2, 2)), `llama_proj_video`."""
    eva = timm_eva(engine.cfg, engine.visual_encoder, engine.norm)
    with torch.no_grad():
        x = eva.forward_features(torch.from_numpy(frames))[:, 1:]
        t, n, c = x.shape
        grid = int(n ** 0.5)
        x = x.reshape(1, t, grid, grid, c).permute(0, 4, 1, 2, 3)
        x = F.adaptive_avg_pool3d(x, (t, 2, 2))
        cells = x.permute(0, 2, 3, 4, 1).reshape(1, -1, c)
        rows = F.linear(cells, engine.llama_proj_video.weight, engine.llama_proj_video.bias)
    return {"video_feat": cells.numpy(), "video_rows": rows.numpy()}


def global_reference(engine: GlobalEngineV2, pixels: np.ndarray) -> dict:
    """timm's EVA blocks (no final norm: the LAVIS model has none), `ln_vision`, the
    official view of four consecutive tokens and `llama_proj` (`emotion_llama_v2.py`
    L111-L128)."""
    eva = timm_eva(engine.cfg, engine.visual_encoder)
    with torch.no_grad():
        x = eva.patch_embed(torch.from_numpy(pixels))
        x, rope = eva._pos_embed(x)
        for block in eva.blocks:
            x = block(x, rope=rope)
        x = F.layer_norm(x, (x.shape[-1],), eps=1e-5)
        b = x.shape[0]
        patches = x[:, 1:, :].reshape(b, 256, -1)
        rows = F.linear(patches, engine.llama_proj.weight, engine.llama_proj.bias)
    return {"patch_rows": rows.numpy(), "cls_feat": x[:, 0, :].numpy()}


def audio_reference(engine: AudioEngineV2, features: np.ndarray) -> dict:
    """`extract_features.py` L190-L205: `WhisperModel(input_features,
    decoder_input_ids=[[50258]]).encoder_last_hidden_state`, `adaptive_avg_pool1d(64)`,
    `llama_proj_audio`."""
    model = WhisperModel(engine.encoder.config).eval()
    model.encoder.load_state_dict(engine.encoder.state_dict())
    with torch.no_grad():
        out = model(torch.from_numpy(features), decoder_input_ids=torch.tensor([[50258]]))
        hidden = out.encoder_last_hidden_state
        bins = F.adaptive_avg_pool1d(hidden.transpose(1, 2), CELLS).transpose(1, 2)
        rows = F.linear(bins, engine.llama_proj_audio.weight, engine.llama_proj_audio.bias)
    return {"audio_feat": bins.numpy(), "audio_rows": rows.numpy(), "encoder_hidden": hidden.numpy()}


def convpro_numpy(weights: dict, xs: list) -> np.ndarray:
    """ConvProAttention's forward (`convpro_model.py` L75-L102) in float64 numpy, from its
    weights alone (the checkpoint's `conv_pro_module.` tensors, the prefix dropped): no
    torch arithmetic."""
    w = {k: v.detach().double().numpy() for k, v in weights.items()}
    relu = lambda x: np.maximum(x, 0.0)  # noqa: E731
    lin = lambda x, p: x @ w[f"{p}.weight"].T + w[f"{p}.bias"]  # noqa: E731
    mlp = lambda x, p: relu(lin(relu(lin(x, f"{p}.0")), f"{p}.3"))  # noqa: E731

    def conv1d(x, p, k):  # x [C, L], 'same' zero padding for k = 3, none for k = 1
        weight, bias = w[f"{p}.weight"], w[f"{p}.bias"]
        pad = k // 2
        xp = np.pad(x, ((0, 0), (pad, pad)))
        length = x.shape[1]
        return sum(weight[:, :, j] @ xp[:, j:j + length] for j in range(k)) + bias[:, None]

    out = []
    for b in range(xs[0].shape[0]):
        h = [mlp(x[b].astype(np.float64), f"feats_prep.{i}") for i, x in enumerate(xs)]
        flat = np.concatenate(h, axis=1)  # [L, 384]
        att = lin(mlp(flat, "attention_mlp"), "fc_att")  # [L, 3], no softmax
        fused = sum(att[:, i:i + 1] * h[i] for i in range(len(h)))
        c = conv1d(flat.T, "conv_entry", 1)
        for i in range(4):
            y = conv1d(c, f"conv_module.conv_blocks.{i}.conv_block.0", 3)
            c = y / (1.0 + np.exp(-y)) + c
        out.append(lin(fused + c.T, "fc_final"))
    return np.stack(out)


def fusion_reference(engine: FusionEngineV2, audio_feat, cls_feat, video_feat) -> dict:
    cls = np.repeat(cls_feat[:, None, :], audio_feat.shape[1], axis=1)
    fused = convpro_numpy(engine.conv_pro_module.state_dict(), [audio_feat, cls, video_feat])
    p = engine.llama_proj_fusion
    rows = fused @ p.weight.detach().double().numpy().T + p.bias.detach().double().numpy()
    return {"fusion_rows": rows.astype(np.float32)}


# ----- synthetic engines and goldens -------------------------------------------------

REFERENCES = {
    "global": f"timm {timm.__version__} Eva blocks + ln_vision + the official view (torch fp32 cpu)",
    "temporal": "timm Eva (eva_giant_patch14_224's structure) forward_features + adaptive_avg_pool3d (torch fp32 cpu)",
    "audio": f"transformers {transformers.__version__} WhisperModel + adaptive_avg_pool1d (torch fp32 cpu)",
    "fusion": "ConvProAttention in numpy float64 (convpro_model.py's forward)",
}

# Tiny widths for the synthetic engines (every structural constant official).
LLM_DIM = 64
VISION = EvaConfig(embed_dim=32, depth=2, num_heads=2)


def tiny_whisper() -> WhisperConfig:
    """128 mel bins and 1500 positions as whisper-large-v3; a width unlike the vision
    one, so that a swapped pair of inputs cannot pass."""
    return WhisperConfig(d_model=24, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=48,
                         decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=48, num_mel_bins=128,
                         max_source_positions=1500, vocab_size=51866, decoder_start_token_id=50258)


def check(name: str, got: dict, want: dict) -> float:
    worst = max(float(np.abs(got[k] - want[k]).max()) for k in want)
    scale = max(float(np.abs(want[k]).max()) for k in want)
    log(f"{name}: max|exporter module - independent reference| = {worst:.3g} (outputs up to {scale:.3g})")
    if worst > TOLERANCE:
        raise SystemExit(f"{name}: the module differs from its reference by {worst} (> {TOLERANCE})")
    return worst


def engine_specs(d: int, vision: int, whisper: WhisperConfig) -> dict:
    """Each engine's inputs and outputs (the runtime's contract for v2), for an LLM of
    width `d`, an EVA of width `vision` and the Whisper encoder of `whisper`."""
    a, mels, positions = whisper.d_model, whisper.num_mel_bins, whisper.max_source_positions
    return {
        "global": ([tensor_spec("pixel_values", [1, 3, 448, 448])],
                   [tensor_spec("patch_rows", [1, 256, d]), tensor_spec("cls_feat", [1, vision])]),
        "temporal": ([tensor_spec("frames", [FRAMES, 3, 224, 224])],
                     [tensor_spec("video_feat", [1, CELLS, vision]), tensor_spec("video_rows", [1, CELLS, d])]),
        "audio": ([tensor_spec("input_features", [1, mels, 3000])],
                  [tensor_spec("audio_feat", [1, CELLS, a]), tensor_spec("audio_rows", [1, CELLS, d]),
                   tensor_spec("encoder_hidden", [1, positions, a])]),
        "fusion": ([tensor_spec("audio_feat", [1, CELLS, a]), tensor_spec("cls_feat", [1, vision]),
                    tensor_spec("video_feat", [1, CELLS, vision])],
                   [tensor_spec("fusion_rows", [1, CELLS, d])]),
    }


def sample_inputs(rng: np.random.Generator, n_mels: int) -> dict:
    """One seeded input per engine that takes media: CLIP-normalised-like pixels at 448,
    ImageNet-normalised-like frames at 224, a log-mel window in Whisper's range."""
    def pixels(*shape, std):
        return ((rng.random(shape) - 0.45) / std).astype(np.float32)

    return {"global": {"pixel_values": pixels(1, 3, 448, 448, std=0.27)},
            "temporal": {"frames": pixels(FRAMES, 3, 224, 224, std=0.226)},
            "audio": {"input_features": np.clip(rng.standard_normal((1, n_mels, 3000)) * 0.5, -1.5, 1.5)
                      .astype(np.float32)}}


def export_checked(name: str, module, feeds: dict, want: dict, inputs: list, outputs: list, bundle: Path,
                   reference: str, fp16=None) -> tuple:
    """Check `module` against the independent reference's outputs `want` on `feeds`,
    export it (weights stored fp16 when `fp16` is given: the callable that makes them so,
    for a file over ONNX's 2 GiB) and check ONNX Runtime's outputs against `want` too.
    The manifest entry and both differences."""
    names = [s["name"] for s in outputs]
    worst_module = check(name, module_outputs(module, feeds, names), want)
    if fp16 is not None:
        fp16(module)
    export_engine(name, module, [feeds], bundle, inputs, outputs, {}, fold=fp16 is None)
    worst_onnx = onnx_parity(name, bundle / f"{name}.onnx", [feeds], [want], optimize=fp16 is None)
    entry = engine_entry(name, bundle, inputs, outputs, worst_onnx, 1, "fp16" if fp16 else "fp32",
                         optimized=fp16 is None)
    entry["parity"]["reference"] = reference
    return entry, worst_module, worst_onnx


def module_outputs(module, feeds: dict, names: list) -> dict:
    with torch.no_grad():
        out = module(*(torch.from_numpy(a) for a in feeds.values()))
    return {n: o.numpy() for n, o in zip(names, out if isinstance(out, tuple) else (out,))}


def build(out: Path, v1_bundle: Path) -> None:
    started = time.time()
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    bundle, store = staging / "bundle", TensorStore(staging / "goldens")
    bundle.mkdir(parents=True)
    files = []
    d, c = LLM_DIM, VISION.embed_dim
    index = {"format_version": 1, "tolerance": TOLERANCE, "engines": {}}

    def randomise(module):
        # Every parameter random (LayerNorm gains and biases included, so no part is a
        # no-op), at a scale that keeps activations of order one: 1/sqrt(fan-in).
        with torch.no_grad():
            for p in module.parameters():
                fan_in = p[0].numel() if p.dim() > 1 else 16
                p.copy_(torch.randn_like(p) / fan_in ** 0.5)
        return module.eval()

    whisper = tiny_whisper()
    specs = engine_specs(d, c, whisper)

    def one(name, module, feeds, reference):
        inputs, outputs = specs[name]
        want = reference(feeds)
        entry, worst_module, worst_onnx = export_checked(name, module, feeds, want, inputs, outputs, bundle,
                                                         REFERENCES[name])
        files.append(entry)
        index["engines"][name] = {
            "file": f"{name}.onnx", "inputs": inputs, "outputs": outputs,
            "feeds": {k: store.put(f"{name}.{k}", v) for k, v in feeds.items()},
            "expected": {k: store.put(f"{name}.{k}", v) for k, v in want.items()},
            "max_abs_diff": {"module_vs_reference": worst_module, "onnxruntime_vs_reference": worst_onnx},
        }
        return want

    inputs = sample_inputs(rng, whisper.num_mel_bins)
    glob = randomise(GlobalEngineV2(VISION, d))
    g = one("global", glob, inputs["global"], lambda f: global_reference(glob, f["pixel_values"]))

    temporal_cfg = replace(VISION, image_size=224, depth=VISION.depth + 1)
    temporal = randomise(TemporalEngineV2(temporal_cfg, d))
    t = one("temporal", temporal, inputs["temporal"], lambda f: temporal_reference(temporal, f["frames"]))

    # whisper-large-v3's front end (128 bins; transformers' numpy path on the audio padded
    # or cut to 30 s, as `__call__` does), on tones and on 45 s of noise.
    fe = WhisperFeatureExtractor(feature_size=whisper.num_mel_bins)
    index["log_mel"] = []
    for name in ("tones-3s", "noise-45s"):
        wave = waveforms()[name].astype(np.float32)
        padded = np.zeros(CHUNK_SAMPLES, np.float32)
        padded[:min(len(wave), CHUNK_SAMPLES)] = wave[:CHUNK_SAMPLES]
        features = fe._np_extract_fbank_features(padded[None], "cpu")[0]
        index["log_mel"].append({"name": name, "waveform": store.put(f"log_mel.{name}.waveform", wave),
                                 "log_mel": store.put(f"log_mel.{name}.log_mel", features)})
        if name == "tones-3s":
            mel = features[None].astype(np.float32)
    audio = randomise(AudioEngineV2(whisper, d))
    a = one("audio", audio, {"input_features": mel}, lambda f: audio_reference(audio, f["input_features"]))

    fusion = randomise(FusionEngineV2(whisper.d_model, c, d))
    feeds = {"audio_feat": a["audio_feat"], "cls_feat": g["cls_feat"], "video_feat": t["video_feat"]}
    f = one("fusion", fusion, feeds, lambda x: fusion_reference(fusion, *x.values()))

    # The 448 rows in the official order (`emotion_llama_v2.py` L139-L141).
    rows = np.concatenate([f["fusion_rows"], g["patch_rows"], t["video_rows"], a["audio_rows"]], axis=1)[0]
    index["rows"] = {"order": ["fusion", "global_patches", "temporal", "audio"], "counts": [64, 256, 64, 64],
                     "expected": store.put("rows", rows)}
    # A missing modality is zero input features (as the official training fed them): its
    # rows are then the projector's bias, one per row.
    zero_rows = np.stack([temporal.llama_proj_video.bias.detach().numpy(),
                          audio.llama_proj_audio.bias.detach().numpy()]).astype("<f4")
    (bundle / "zero-rows.f32").write_bytes(zero_rows.tobytes())
    files.append(file_entry(bundle, "zero-rows.f32", "zero_rows", "raw-f32", "fp32",
                            outputs=[tensor_spec("zero_rows", [2, d])]))
    # The LLM: v1's synthetic tiny LLaMA-2 (same architecture, same vocabulary).
    shutil.copy2(v1_bundle / "llm-f32.gguf", bundle / "llm-f32.gguf")
    v1 = json.loads((v1_bundle / "manifest.json").read_text())
    files.append(next(e for e in v1["files"] if e["role"] == "llm"))
    provenance = {"source": f"synthetic (seed {SEED})", "exporter": "emollama-export (python)",
                  "exporter_version": EXPORTER_VERSION, "torch": torch.__version__,
                  "transformers": transformers.__version__, "onnxruntime": ort.__version__,
                  "python": platform.python_version(), "created_unix": int(time.time())}
    description = ("Exact Emotion-LLaMA-v2 architectures at tiny widths with seeded RANDOM weights: "
                   "for tests and demos; its answers mean nothing.")
    write_json_atomic(bundle / "manifest.json",
                      bundle_manifest_v2(f"synthetic-v2-seed{SEED}", True, description, provenance, v1["llm"], files))
    write_json_atomic(staging / "goldens" / "index.json", index)
    shutil.rmtree(out, ignore_errors=True)
    staging.replace(out)
    log(f"v2: engines and goldens in {time.time() - started:.1f}s -> {out}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m emollama_export.v2", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output folder (bundle/ and goldens/)")
    ap.add_argument("--v1-bundle", type=Path, required=True, help="the v1 synthetic bundle (its tiny LLM is reused)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    torch.set_num_threads(1)
    build(args.out.resolve(), args.v1_bundle)


if __name__ == "__main__":
    main()
