"""Official mode, the encoders: EVA ViT-g (+ ln_vision and the two projectors), MAE,
VideoMAE and HuBERT, each built from the official files with the synthetic mode's modules
(one code path for the architectures), strictly loaded, exported and checked one at a
time.
"""

import contextlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers import HubertConfig

from . import memory
from .audio import AudioEngine
from .eva import EvaConfig, GlobalEngine, interpolate_pos_embed
from .loading import TRAINING_STATE, ExportError, Inventory, fill, torch_load, unwrap
from .mae import LocalEngine, MaeConfig
from .manifest import PROTOBUF_LIMIT, file_entry, tensor_spec
from .official_code import EVA_HEAD_DIM, EVA_MLP_RATIO
from .synthetic import engine_entry, export_engine, log, onnx_parity
from .videomae import TemporalEngine, VideoMaeConfig

VIT_HEAD_DIM = 64  # ViT-L (MAE, VideoMAE): 1024 / 16


class _AsFloat(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w.float()


def store_fp16(module: nn.Module, what: str = "EVA", fix: str = "export it with --eva-weights fp32") -> None:
    """Keep the Linear/Conv weights and biases in fp16 (what convert_weights_to_fp16 makes
    of them) and compute in fp32: the ONNX file holds them as fp16 initializers + Cast, so
    EVA-g (1.0 B parameters) or Whisper large (0.6-0.8 B per graph) fits one protobuf
    (< 2 GiB). The values came from an fp16 file, so nothing is rounded: the numbers
    equal the fp32 module's (a value that is not fp16-exact is refused, naming `what`)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            for name in ("weight", "bias"):
                p = getattr(m, name)
                if p is None:
                    continue
                half = p.detach().half()
                if not torch.equal(half.float(), p.detach()):
                    raise ExportError(f"{what} {name} of {m} is not fp16-exact; {fix}")
                parametrize.register_parametrization(m, name, _AsFloat(), unsafe=True)
                m.parametrizations[name].original = nn.Parameter(half, requires_grad=False)


def eva_engine(args, ckpt: Inventory, d: int, check: bool = False) -> tuple:
    inv = Inventory(args.eva, torch_load(args.eva), "eva_vit_g.pth")
    c = inv.peek("cls_token").shape[-1]
    grid = math.isqrt(inv.peek("pos_embed").shape[1] - 1)
    stored = len({k.split(".")[1] for k in inv.left if k.startswith("blocks.")})
    if stored < args.eva_depth:
        raise ExportError(f"{args.eva}: {stored} blocks, the model uses {args.eva_depth}")
    if stored > args.eva_depth:
        inv.ignore(rf"blocks\.({'|'.join(str(i) for i in range(args.eva_depth, stored))})\..*",
                   f"blocks {args.eva_depth}..{stored - 1}: the official model has depth {args.eva_depth} "
                   "(eva_vit.py L421)")
    inv.ignore(r"(norm|fc_norm|head)\..*", "EVA-CLIP's final norm and head: not in the official module (L284-286)")
    cfg = EvaConfig(embed_dim=c, depth=args.eva_depth, num_heads=c // EVA_HEAD_DIM, mlp_ratio=EVA_MLP_RATIO,
                    checkpoint_grid=grid)
    with on_meta(check):
        module = GlobalEngine(cfg, d).eval()

    def lookup(key):
        if key.startswith("visual_encoder."):
            return inv, key.removeprefix("visual_encoder.").replace("patch_embed.", "patch_embed.proj.")
        return ckpt, key

    fill(module, lookup, {"visual_encoder.pos_embed": lambda t: interpolate_pos_embed(t.float(), 448 // cfg.patch_size)},
         check_only=check)
    inv.finish()
    if args.eva_weights == "fp16" and not check:
        store_fp16(module.visual_encoder)
    return module, cfg, inv


def mae_engine(args, ckpt: Inventory, d: int, check: bool = False) -> tuple:
    sd, _ = unwrap(args.mae, torch_load(args.mae), "an MAE checkpoint", ("model",),
                   {k: TRAINING_STATE for k in ("optimizer", "epoch", "scaler", "args")})
    inv = Inventory(args.mae, sd, "the MAE checkpoint")
    inv.ignore(r"(decoder_.*|mask_token)", "the MAE pretraining decoder: the feature script never runs it")
    w = inv.peek("cls_token").shape[-1]
    depth = len({k.split(".")[1] for k in inv.left if k.startswith("blocks.")})
    cfg = MaeConfig(embed_dim=w, depth=depth, num_heads=w // VIT_HEAD_DIM,
                    mlp_ratio=inv.peek("blocks.0.mlp.fc1.weight").shape[0] / w)
    with on_meta(check):
        module = LocalEngine(cfg, d).eval()
    fill(module, lambda k: (inv, k.removeprefix("encoder.").replace("patch_embed.", "patch_embed.proj."))
         if k.startswith("encoder.") else (ckpt, k), check_only=check)
    inv.finish()
    return module, cfg, inv


def videomae_engine(args, ckpt: Inventory, d: int, check: bool = False) -> tuple:
    sd, _ = unwrap(args.videomae, torch_load(args.videomae), "a VideoMAE checkpoint", ("model", "module"),
                   {k: TRAINING_STATE for k in ("optimizer", "epoch", "scaler", "args", "model_ema")})
    inv = Inventory(args.videomae, sd, "the VideoMAE checkpoint")
    inv.ignore(r"(decoder\..*|encoder_to_decoder\..*|mask_token)", "the VideoMAE pretraining decoder")
    inv.ignore(r"encoder\.norm\..*", "use_mean_pooling: the fine-tune model's norm is Identity")
    w = inv.peek("encoder.patch_embed.proj.weight").shape[0]
    depth = len({k.split(".")[2] for k in inv.left if k.startswith("encoder.blocks.")})
    cfg = VideoMaeConfig(embed_dim=w, depth=depth, num_heads=w // VIT_HEAD_DIM,
                         mlp_ratio=inv.peek("encoder.blocks.0.mlp.fc1.weight").shape[0] / w)
    with on_meta(check):
        module = TemporalEngine(cfg, d).eval()
    fill(module, lambda k: (inv, k.replace("patch_embed.", "patch_embed.proj."))
         if k.startswith("encoder.") else (ckpt, k), check_only=check)
    inv.finish()
    return module, cfg, inv


def hubert_engine(args, ckpt: Inventory, d: int, check: bool = False) -> tuple:
    folder = args.hubert
    for name in ("config.json", "preprocessor_config.json", "pytorch_model.bin"):
        if not (folder / name).is_file():
            raise ExportError(f"{folder / name}: no such file (the chinese-hubert-large HF folder)")
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    if pre.get("do_normalize") is not True or pre.get("sampling_rate") != 16000:
        raise ExportError(f"{folder / 'preprocessor_config.json'}: expected do_normalize true and sampling_rate "
                          f"16000 (the engine normalises 16 kHz audio), found {pre.get('do_normalize')}, "
                          f"{pre.get('sampling_rate')}")
    config = HubertConfig(**json.loads((folder / "config.json").read_text()), attn_implementation="eager")
    with on_meta(check):
        module = AudioEngine(config, d).eval()
    sd = torch_load(folder / "pytorch_model.bin")
    if sd and all(k.startswith("hubert.") for k in sd):
        sd = {k.removeprefix("hubert."): v for k, v in sd.items()}
    inv = Inventory(folder / "pytorch_model.bin", sd, "chinese-hubert-large")

    def lookup(key):
        if not key.startswith("hubert."):
            return ckpt, key
        k = key.removeprefix("hubert.")
        legacy = k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v")
        return inv, (legacy if legacy != k and inv.has(legacy) else k)

    fill(module, lookup, check_only=check)
    inv.finish()
    return module, config, inv


def on_meta(check: bool):
    """Where a module is built: nowhere (the meta device) when only checking the files."""
    return torch.device("meta") if check else contextlib.nullcontext()


def check_encoders(args, ckpt: Inventory, d: int) -> None:
    """Every encoder file checked key by key and shape by shape against its module built
    on the meta device (no weights allocated): a bad file is refused within seconds, not
    after minutes of exporting the others."""
    builders = [eva_engine, hubert_engine] + [b for b, given in ((mae_engine, args.mae),
                                                                  (videomae_engine, args.videomae)) if given]
    for build in builders:
        build(args, ckpt.copy(), d, check=True)


def export_encoders(args, ckpt: Inventory, d: int, bundle: Path) -> tuple:
    """Each engine built (strictly loaded), exported, checked, and released before the
    next: at full size they are 2 + 1.2 + 1.2 + 1.3 GB of weights."""
    rng = np.random.default_rng(1234)
    files, parts, biases = [], {}, {}

    def uniform(*shape):
        return rng.random(shape, dtype=np.float32)

    def export(name: str, build, case_list, inputs, outputs, dynamic, precision="fp32", fold=True):
        """Build, export and check one engine; the module is released before the parity
        check (which needs only its outputs), so the two never share the memory."""
        started = time.time()
        memory.phase(f"{name}: load weights")
        module = build()
        expected = export_engine(name, module, case_list, bundle, inputs, outputs, dynamic, fold=fold)
        del module
        memory.release()
        worst = onnx_parity(name, bundle / f"{name}.onnx", case_list, expected, optimize=fold)
        files.append(engine_entry(name, bundle, inputs, outputs, worst, len(case_list), precision, optimized=fold))
        log(f"{name}: exported and checked in {time.time() - started:.1f}s")

    def build_eva():
        module, _, parts["eva"] = eva_engine(args, ckpt, d)
        fp32_bytes = 4 * sum(p.numel() for p in module.parameters())
        if args.eva_weights == "fp32" and fp32_bytes >= PROTOBUF_LIMIT:
            raise ExportError(f"{args.eva}: in fp32 the global engine is {fp32_bytes / 1e9:.2f} GB, over ONNX's 2 GiB "
                              "protobuf limit; it would need external data files, which bundles do not carry yet. "
                              "Export it with --eva-weights fp16 (the default: the file's own values)")
        return module

    rows = (448 // EvaConfig.patch_size) ** 2 // EvaConfig.group
    export("global", build_eva, [{"pixel_values": ((uniform(b, 3, 448, 448) - 0.45) / 0.27).astype(np.float32)}
                                 for b in (1, 2)],
           [tensor_spec("pixel_values", ["batch", 3, 448, 448])],
           [tensor_spec("patch_rows", ["batch", rows, d]), tensor_spec("cls_row", ["batch", 1, d])],
           {"pixel_values": {0: "batch"}, "patch_rows": {0: "batch"}, "cls_row": {0: "batch"}},
           precision=args.eva_weights, fold=args.eva_weights == "fp32")

    def projected(k: int, part: str, role: str, builder, case_list, inputs, outputs, dynamic):
        def build():
            module, _, parts[part] = builder(args, ckpt, d)
            biases[k] = getattr(module, f"feats_llama_proj{k}").bias.detach().clone()
            return module

        export(role, build, case_list, inputs, outputs, dynamic)

    if args.mae:
        projected(1, "mae", "local", mae_engine, [{"faces": uniform(n, 3, 224, 224)} for n in (3, 5)],
                  [tensor_spec("faces", ["frames", 3, 224, 224])], [tensor_spec("local_row", [1, 1, d])],
                  {"faces": {0: "frames"}})
    if args.videomae:
        projected(2, "videomae", "temporal", videomae_engine, [{"clip": uniform(b, 3, 16, 224, 224)} for b in (1, 2)],
                  [tensor_spec("clip", ["batch", 3, 16, 224, 224])], [tensor_spec("temporal_row", ["batch", 1, d])],
                  {"clip": {0: "batch"}, "temporal_row": {0: "batch"}})
    projected(3, "hubert", "audio", hubert_engine,
              [{"waveform": (0.3 * rng.standard_normal((1, n))).astype(np.float32)} for n in (16000, 40000)],
              [tensor_spec("waveform", [1, "samples"])], [tensor_spec("audio_row", [1, 1, d])],
              {"waveform": {1: "samples"}})
    # The zero-feature rows are the projector biases. Without its encoder a projector
    # contributes only that row, and its weight goes unused.
    for k, name in ((1, "MAE"), (2, "VideoMAE")):
        if k not in biases:
            biases[k] = ckpt.take(f"feats_llama_proj{k}.bias")
            ckpt.ignore(rf"feats_llama_proj{k}\.weight", f"no {name} checkpoint given: the weight is in "
                        f"feats_llama_proj{k}.onnx only (pre-extracted features); without them the row is the "
                        "zero-feature row")
    rows_f32 = torch.stack([biases[k] for k in (1, 2, 3)]).float().numpy().astype("<f4")
    (bundle / "zero-rows.f32").write_bytes(rows_f32.tobytes())
    files.append(file_entry(bundle, "zero-rows.f32", "zero_rows", "raw-f32", "fp32",
                            outputs=[tensor_spec("zero_rows", [3, d])]))
    return files, parts, rows
