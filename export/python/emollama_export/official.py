"""Official mode: the released Emotion-LLaMA files -> an emollama bundle.

Inputs (spec official-export.md; the same names as the official download folders):
  --eva         eva_vit_g.pth                     (LAVIS/BLIP-2 EVA ViT-g)
  --checkpoint  Emoation_LLaMA.pth                (LoRA + projectors; or checkpoint_best.pth)
  --llama       Llama-2-7b-chat-hf/               (config.json, tokenizer.model, shards)
  --hubert      chinese-hubert-large/             (config.json, preprocessor_config.json, pytorch_model.bin)
  --mae         mae_checkpoint-340.pth            (optional: else the local row is the zero-feature row)
  --videomae    maeVideo_ckp399.pth               (optional: else the temporal row is the zero-feature row)

Writes OUT/bundle (the format the runtime reads) and OUT/export-report.json (every
input's sha256, what was used and ignored and why, the LoRA merge, parity, timings,
peak memory), under OUT.partial, renamed into place only when everything succeeded.
"""

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import gguf
import numpy as np
import onnxruntime as ort
import torch
import transformers
from torch import nn
from torch.nn.utils import parametrize
from transformers import HubertConfig

from . import EXPORTER_VERSION, memory
from .audio import AudioEngine
from .eva import EvaConfig, GlobalEngine, interpolate_pos_embed
from .loading import ExportError, Inventory, fill, safetensors_header, torch_load, unwrap
from .mae import LocalEngine, MaeConfig
from .memory import MemorySampler
from .manifest import bundle_manifest, file_entry, sha256_file, tensor_spec
from .official_code import EVA_DEPTH, EVA_HEAD_DIM, EVA_MLP_RATIO
from .synthetic import engine_entry, export_engine, export_face_detector, onnx_parity
from .tensors import write_json_atomic
from .videomae import TemporalEngine, VideoMaeConfig

# The official values where the checkpoint does not record them (minigpt_v2.py L36-39).
LORA_R, LORA_ALPHA = 64, 16
LORA_TARGETS = ("q_proj", "v_proj")
LORA_KEY = re.compile(r"(?:llama_model\.)?base_model\.model\.model\.layers\.(\d+)\.self_attn\."
                      r"(q_proj|k_proj|v_proj|o_proj)\.lora_([AB])(?:\.default)?\.weight")
VIT_HEAD_DIM = 64  # ViT-L (MAE, VideoMAE): 1024 / 16

TRAINING_STATE = "training state (optimizer, scaler, epoch, args): not part of the model"
UNUSED_CLASSIFIER = "minigpt_base.py's attention classifier: trained, saved, never called at inference"
ROTARY = "rotary inv_freq buffer: recomputed from the config (llama.cpp skips it too)"


def log(msg: str) -> None:
    print(f"[export] {msg}", flush=True)


class Stages:
    """Says which stage the export is in, and records how long each took (and, through
    the sampler, its peak memory)."""

    def __init__(self, names: list, memory: MemorySampler):
        self.names, self.times, self.started, self.memory = names, {}, time.time(), memory

    def run(self, name: str, fn, *args):
        i = self.names.index(name) + 1
        self.memory.begin(name)
        log(f"stage {i}/{len(self.names)}: {name}")
        t = time.time()
        result = fn(*args)
        self.times[name] = round(time.time() - t, 2)
        log(f"stage {i}/{len(self.names)}: {name} done in {self.times[name]:.1f}s "
            f"(total {time.time() - self.started:.0f}s)")
        return result


def hash_inputs(paths: list) -> dict:
    """sha256 and size of every input file, with progress (the LLaMA shards are 13.5 GB)."""
    files = sorted({p for p in paths if p.is_file()})
    total = sum(p.stat().st_size for p in files)
    done, started, out = 0, time.time(), {}
    for p in files:
        out[str(p)] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
        done += p.stat().st_size
        rate = done / max(time.time() - started, 1e-6)
        log(f"sha256 {len(out)}/{len(files)} files, {done / 1e9:.2f}/{total / 1e9:.2f} GB, "
            f"{time.time() - started:.0f}s elapsed, ETA {(total - done) / max(rate, 1):.0f}s: {p.name}")
    return out


# --- the Emotion-LLaMA checkpoint: LoRA + projectors ------------------------------------------

def read_checkpoint(path: Path, llama_config: dict) -> tuple:
    obj = torch_load(path)
    known = {k: TRAINING_STATE for k in ("optimizer", "scaler", "epoch", "iters")}
    known["config"] = "the training configuration: its model section is recorded in the manifest's provenance"
    sd, _ = unwrap(path, obj, "an Emotion-LLaMA checkpoint", ("model",), known)
    config = (obj.get("config") or {}).get("model", {}) if isinstance(obj.get("config"), dict) else {}
    inv = Inventory(path, sd, "the Emotion-LLaMA checkpoint")
    inv.ignore(r"attention\..*", UNUSED_CLASSIFIER)
    inv.ignore(r".*\.rotary_emb\.inv_freq", ROTARY)
    for prefix in ("visual_encoder.", "ln_vision."):
        if any(k.startswith(prefix) for k in inv.left):
            raise ExportError(f"{path}: holds {prefix}* weights (a checkpoint trained with the ViT unfrozen); "
                              "this exporter takes EVA from eva_vit_g.pth only")
    lora = read_lora(inv, config, llama_config)
    return inv, lora, config


def read_lora(inv: Inventory, config: dict, llama: dict) -> dict:
    """All n_layers x {q_proj, v_proj} complete A/B pairs of one rank that fit the LLaMA's
    weights, or a refusal."""
    n_layers, hidden = llama["num_hidden_layers"], llama["hidden_size"]
    heads = llama["num_attention_heads"]
    out_rows = {"q_proj": hidden, "v_proj": llama.get("num_key_value_heads", heads) * hidden // heads}
    found = {}
    for key in [k for k in inv.left if LORA_KEY.fullmatch(k)]:
        layer, target, ab = LORA_KEY.fullmatch(key).groups()
        found.setdefault((int(layer), target), {})[ab] = inv.take(key)
    extra = sorted({t for _, t in found} - set(LORA_TARGETS))
    if extra:
        raise ExportError(f"{inv.path}: LoRA on {extra}; Emotion-LLaMA's LoRA targets only {list(LORA_TARGETS)}")
    want = [(i, t) for i in range(n_layers) for t in LORA_TARGETS]
    complete = [k for k in want if set(found.get(k, {})) == {"A", "B"}]
    if len(complete) != len(want) or len(found) != len(want):
        missing = [f"layers.{i}.self_attn.{t} lora_{'/'.join(sorted({'A', 'B'} - set(found.get((i, t), {}))))}"
                   for i, t in want if (i, t) not in complete]
        raise ExportError(f"{inv.path}: {len(complete)} complete LoRA pairs, expected {len(want)} "
                          f"({'/'.join(LORA_TARGETS)} in each of {n_layers} layers); missing: {', '.join(missing[:4])}")
    ranks = {found[k]["A"].shape[0] for k in want} | {found[k]["B"].shape[1] for k in want}
    if len(ranks) != 1:
        raise ExportError(f"{inv.path}: LoRA ranks disagree across pairs: {sorted(ranks)}")
    r = ranks.pop()
    for (i, t), ab in sorted(found.items()):
        if ab["A"].shape[1] != hidden or ab["B"].shape[0] != out_rows[t]:
            raise ExportError(f"{inv.path}: layers.{i}.self_attn.{t} LoRA A {list(ab['A'].shape)}, "
                              f"B {list(ab['B'].shape)} do not fit its [{out_rows[t]}, {hidden}] weight (config.json)")
    if config.get("lora_r") not in (None, r):
        raise ExportError(f"{inv.path}: config.model.lora_r is {config['lora_r']} but the LoRA tensors have rank {r}")
    alpha = float(config.get("lora_alpha", LORA_ALPHA))
    return {"r": r, "alpha": alpha, "scaling": alpha / r, "targets": list(LORA_TARGETS), "pairs": found,
            "alpha_from": "checkpoint config.model.lora_alpha" if "lora_alpha" in config else "official default"}


# --- LLaMA-2 HF folder ------------------------------------------------------------------------

def read_llama(folder: Path) -> dict:
    """config.json and the tensor list of the shards (headers only), checked against each other."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{cfg_path}: no such file (the LLaMA-2 HF folder)")
    cfg = json.loads(cfg_path.read_text())
    if "LlamaForCausalLM" not in cfg.get("architectures", []):
        raise ExportError(f"{cfg_path}: architectures {cfg.get('architectures')} is not LlamaForCausalLM")
    if not (folder / "tokenizer.model").is_file():
        raise ExportError(f"{folder / 'tokenizer.model'}: no such file (LLaMA-2's SentencePiece model is needed)")
    h, f, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    v = cfg["vocab_size"]
    expected = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h], "lm_head.weight": [v, h]}
    for i in range(n):
        p = f"model.layers.{i}."
        expected.update({p + "input_layernorm.weight": [h], p + "post_attention_layernorm.weight": [h],
                         p + "self_attn.q_proj.weight": [h, h], p + "self_attn.o_proj.weight": [h, h],
                         p + "self_attn.k_proj.weight": [kv * h // heads, h],
                         p + "self_attn.v_proj.weight": [kv * h // heads, h],
                         p + "mlp.gate_proj.weight": [f, h], p + "mlp.up_proj.weight": [f, h],
                         p + "mlp.down_proj.weight": [h, f]})
    shapes, files = llama_tensor_shapes(folder)
    inv = Inventory(folder, {k: torch.empty(0) for k in shapes}, "the LLaMA-2 weights")
    inv.ignore(r".*\.rotary_emb\.inv_freq", ROTARY)
    for key, shape in expected.items():
        if list(shapes.get(key, shape)) != shape:
            raise ExportError(f"{files.get(key, folder)}: {key!r} has shape {list(shapes[key])}, "
                              f"config.json says {shape}")
        inv.take(key)
    inv.finish()
    return {"config": cfg, "files": sorted(set(files.values())), "report": inv.report(),
            "n_params": sum(math.prod(s) for s in expected.values())}


def llama_tensor_shapes(folder: Path) -> tuple:
    """{tensor: shape} and {tensor: file} from the safetensors headers (or .bin shards)."""
    for stem, ext in (("model", ".safetensors"), ("pytorch_model", ".bin")):
        index = folder / f"{stem}{ext}.index.json"
        parts = sorted(folder.glob(f"{stem}*{ext}"))
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            names = sorted(set(weight_map.values()))
            for name in names:
                if not (folder / name).is_file():
                    raise ExportError(f"{folder / name}: missing shard (listed in {index.name})")
            parts = [folder / name for name in names]
        if not parts:
            continue
        shapes, files = {}, {}
        for part in parts:
            if ext == ".safetensors":
                items = {k: v["shape"] for k, v in safetensors_header(part).items()}
            else:
                items = {k: list(t.shape) for k, t in torch_load(part).items()}
            for k, s in items.items():
                shapes[k], files[k] = s, part
        return shapes, files
    raise ExportError(f"{folder}: no model*.safetensors or pytorch_model*.bin shards")


def convert_llm(args, llama: dict, lora: dict, bundle: Path, work: Path) -> Path:
    """The converter in its own process (see llm_gguf.py), fed the LoRA pairs."""
    pairs = {f"model.layers.{i}.self_attn.{t}.weight": (ab["A"].float().contiguous(), ab["B"].float().contiguous())
             for (i, t), ab in lora["pairs"].items()}
    lora_file = work / "lora.pt"
    torch.save({"scaling": lora["scaling"], "pairs": pairs}, lora_file)
    out = bundle / f"llm-{args.llm_outtype}.gguf"
    cmd = [sys.executable, "-m", "emollama_export.llm_gguf", "--converter-dir", str(args.converter_dir),
           "--llama", str(args.llama), "--lora", str(lora_file), "--outtype", args.llm_outtype, "--out",
           str(out.with_name(out.name + ".partial"))]
    if subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1]).returncode != 0:
        raise ExportError(f"{args.llama}: llama.cpp's converter failed (its message is above)")
    out.with_name(out.name + ".partial").replace(out)
    check_vocabulary(out, args.vocab_gguf, args.llama)
    return out


def check_vocabulary(gguf_path: Path, vocab_gguf: Path, llama_dir: Path) -> None:
    """The converted vocabulary must be LLaMA-2's (llama.cpp's copy of it), piece for piece."""
    got, want = gguf.GGUFReader(str(gguf_path)), gguf.GGUFReader(str(vocab_gguf))
    field = lambda r, key: r.fields[key].contents()  # noqa: E731
    if field(got, "tokenizer.ggml.tokens") != field(want, "tokenizer.ggml.tokens"):
        raise ExportError(f"{llama_dir / 'tokenizer.model'}: not LLaMA-2's vocabulary (the pieces differ)")
    # The converter types and scores <unk>, <s>, </s> from tokenizer_config.json (CONTROL,
    # -1000); every other piece must be the same, with the same merge score.
    ordinary = [i for i, t in enumerate(field(want, "tokenizer.ggml.token_type")) if t in (1, 6)]
    for key in ("tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        a, b = field(got, key), field(want, key)
        if any(a[i] != b[i] for i in ordinary):
            raise ExportError(f"{llama_dir / 'tokenizer.model'}: not LLaMA-2's vocabulary ({key} differ)")


# --- encoders ---------------------------------------------------------------------------------

class _AsFloat(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w.float()


def store_fp16(module: nn.Module) -> None:
    """Keep the Linear/Conv weights and biases in fp16 (what convert_weights_to_fp16 makes
    of them) and compute in fp32: the ONNX file holds them as fp16 initializers + Cast, so
    EVA-g (1.0 B parameters) fits one protobuf (< 2 GiB). The values came from an fp16
    file, so nothing is rounded: the numbers equal the fp32 module's."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            for name in ("weight", "bias"):
                p = getattr(m, name)
                if p is None:
                    continue
                half = p.detach().half()
                if not torch.equal(half.float(), p.detach()):
                    raise ExportError(f"EVA {name} of {m} is not fp16-exact; export it with --eva-weights fp32")
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
            ckpt.ignore(rf"feats_llama_proj{k}\.weight", f"no {name} checkpoint given: its row is the zero-feature row")
    rows_f32 = torch.stack([biases[k] for k in (1, 2, 3)]).float().numpy().astype("<f4")
    (bundle / "zero-rows.f32").write_bytes(rows_f32.tobytes())
    files.append(file_entry(bundle, "zero-rows.f32", "zero_rows", "raw-f32", "fp32",
                            outputs=[tensor_spec("zero_rows", [3, d])]))
    return files, parts, rows


# --- the whole export -------------------------------------------------------------------------

def export(args) -> None:
    out = args.out.resolve()
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    bundle, work = staging / "bundle", staging / "work"
    bundle.mkdir(parents=True)
    work.mkdir()
    try:
        with MemorySampler() as memory:
            build(args, out, staging, bundle, work, memory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # never a half bundle
        raise


def build(args, out: Path, staging: Path, bundle: Path, work: Path, memory: MemorySampler) -> None:
    stages = Stages(["check inputs", "hash inputs", "encoders", "face detector", "llm", "manifest"], memory)
    def check_inputs():
        llama = read_llama(args.llama)
        checked = (llama, *read_checkpoint(args.checkpoint, llama["config"]))
        check_encoders(args, checked[1], llama["config"]["hidden_size"])
        return checked

    llama, ckpt, lora, ckpt_config = stages.run("check inputs", check_inputs)
    cfg = llama["config"]
    d = cfg["hidden_size"]
    inputs = [args.eva, args.checkpoint, args.hubert / "config.json", args.hubert / "preprocessor_config.json",
              args.hubert / "pytorch_model.bin", args.llama / "config.json", args.llama / "tokenizer.model",
              *llama["files"]] + [p for p in (args.mae, args.videomae) if p]
    hashes = stages.run("hash inputs", hash_inputs, inputs)
    files, parts, rows = stages.run("encoders", export_encoders, args, ckpt, d, bundle)
    ckpt.finish()
    files.extend(stages.run("face detector", export_face_detector, bundle, args.facenet_dir))
    gguf_path = stages.run("llm", convert_llm, args, llama, lora, bundle, work)
    files.append(file_entry(bundle, gguf_path.name, "llm", "gguf", args.llm_outtype,
                            parity={"reference": "llama.cpp convert_hf_to_gguf.py (llama-cpp-python 0.3.36) "
                                                 "of the LoRA-merged weights",
                                    "checked_by": "emollama tests (logits vs transformers with the LoRA unmerged)",
                                    "tolerance": 1e-3}))
    lora_report = {k: lora[k] for k in ("r", "alpha", "scaling", "targets", "alpha_from")}
    lora_report["pairs"] = len(lora["pairs"])
    missing = [n for n, p in (("local", args.mae), ("temporal", args.videomae)) if not p]
    provenance = {
        "source": "official Emotion-LLaMA checkpoints", "exporter": "emollama-export official (python)",
        "exporter_version": EXPORTER_VERSION, "torch": torch.__version__, "transformers": transformers.__version__,
        "onnxruntime": ort.__version__, "python": platform.python_version(), "created_unix": int(time.time()),
        "inputs": {input_name(Path(p), args): h for p, h in hashes.items()},
        "checkpoint_config": {k: ckpt_config.get(k) for k in ("arch", "lora_r", "lora_alpha", "image_size",
                                                                "llama_model") if k in ckpt_config},
        "rms_norm_eps": cfg["rms_norm_eps"], "lora": lora_report, "zero_feature_rows": missing,
    }
    description = "Emotion-LLaMA, exported from the official checkpoints."
    if missing:
        description += f" No engine for {' and '.join(missing)}: those rows are the zero-feature rows."
    llm_info = {"embedding_width": d, "vocab_size": cfg["vocab_size"], "bos_id": cfg.get("bos_token_id", 1),
                "eos_id": cfg.get("eos_token_id", 2), "n_ctx_train": cfg["max_position_embeddings"],
                "n_layer": cfg["num_hidden_layers"],
                "n_head_kv": cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
                "head_dim": d // cfg["num_attention_heads"], "n_params": llama["n_params"]}
    manifest = bundle_manifest(f"emotion-llama-{hashes[str(args.checkpoint)]['sha256'][:12]}", False, description,
                               provenance, llm_info, rows, files)
    stages.run("manifest", write_json_atomic, bundle / "manifest.json", manifest)
    report = {
        "inputs": hashes,
        "keys": {"eva": parts["eva"].report(), "checkpoint": ckpt.report(), "llama": llama["report"],
                 **{k: v.report() for k, v in parts.items() if k != "eva"}},
        "lora": {**lora_report, "delta_ratio": lora_delta_ratios(lora, llama["files"])},
        "parity": {f["path"]: f.get("parity") for f in files if f.get("parity")},
        "stages_s": stages.times, "memory": memory.report(),
        "files": {f["path"]: f["size"] for f in files},
    }
    write_json_atomic(staging / "export-report.json", report)
    shutil.rmtree(work)
    shutil.rmtree(out, ignore_errors=True)
    staging.replace(out)
    log(f"done in {time.time() - stages.started:.0f}s -> {out}; peak memory (GB) {report['memory']['peak_gb']}")


def input_name(path: Path, args) -> str:
    """An input as the manifest names it: `folder/file` inside the HF folders, else the file."""
    return f"{path.parent.name}/{path.name}" if path.parent in (args.llama, args.hubert) else path.name


def lora_delta_ratios(lora: dict, files: list) -> dict:
    """|scaling * B @ A| / |W| per pair (> 0: the LoRA was trained and found), reading
    one base weight at a time (memory-mapped)."""
    from safetensors import safe_open

    shapes_files = {}
    for f in files:
        if f.suffix == ".safetensors":
            with safe_open(f, framework="pt") as h:
                shapes_files.update(dict.fromkeys(h.keys(), f))
        else:
            shapes_files.update(dict.fromkeys(torch_load(f).keys(), f))
    out = {}
    for (i, t), ab in sorted(lora["pairs"].items()):
        name = f"model.layers.{i}.self_attn.{t}.weight"
        f = shapes_files[name]
        if f.suffix == ".safetensors":
            with safe_open(f, framework="pt") as h:
                w = h.get_tensor(name).float()
        else:
            w = torch_load(f)[name].float()
        delta = lora["scaling"] * (ab["B"].float() @ ab["A"].float())
        out[f"layers.{i}.{t}"] = round(float(delta.norm() / w.norm()), 6)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m emollama_export.official", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eva", type=Path, required=True, help="eva_vit_g.pth")
    ap.add_argument("--checkpoint", type=Path, required=True, help="Emoation_LLaMA.pth (or checkpoint_best.pth)")
    ap.add_argument("--llama", type=Path, required=True, help="the Llama-2-7b-chat-hf folder")
    ap.add_argument("--hubert", type=Path, required=True, help="the chinese-hubert-large folder")
    ap.add_argument("--mae", type=Path, help="mae_checkpoint-340.pth (optional)")
    ap.add_argument("--videomae", type=Path, help="maeVideo_ckp399.pth (optional)")
    ap.add_argument("--out", type=Path, required=True, help="output folder (bundle/ and export-report.json)")
    ap.add_argument("--vocab-gguf", type=Path, required=True, help="llama.cpp ggml-vocab-llama-spm.gguf")
    ap.add_argument("--facenet-dir", type=Path, required=True, help="extracted facenet-pytorch 2.6.0 wheel")
    ap.add_argument("--converter-dir", type=Path, required=True, help="llama.cpp's convert_hf_to_gguf.py folder")
    ap.add_argument("--llm-outtype", choices=["f16", "f32", "q8_0"], default="f16",
                    help="GGUF type (K-quants afterwards: emollama quantize --bundle)")
    ap.add_argument("--eva-weights", choices=["fp16", "fp32"], default="fp16",
                    help="fp16: the file's own values, one ONNX file under 2 GiB (default)")
    ap.add_argument("--eva-depth", type=int, default=EVA_DEPTH, help="blocks used (official: 39; tests: fewer)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    for p in (args.eva, args.checkpoint, args.llama, args.hubert, args.mae, args.videomae):
        if p is not None and not p.exists():
            sys.exit(f"error: {p}: no such file or folder")
    args.llama, args.hubert = args.llama.resolve(), args.hubert.resolve()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    try:
        export(args)
    except ExportError as e:
        sys.exit(f"error: {e}\nno bundle was written")


if __name__ == "__main__":
    main()
