"""The official EVA code, imported from the one file that setup extracts from the
salesforce-lavis 1.0.2 wheel (`lavis/models/eva_vit.py`, byte-identical to
Emotion-LLaMA's `minigpt4/models/eva_vit.py` but its import line).

The package itself cannot be installed (it pins timm 0.4.12 and transformers < 4.27),
and timm cannot be imported here (it needs torchvision): the file imports only four
helpers from them, stubbed below exactly as the official code uses them at inference
(no drop path, the same truncated-normal init).
"""

import importlib.util
import sys
import types
from functools import partial
from pathlib import Path

import torch
from torch import nn

# eva_vit.py's create_eva_vit_g: the official constants.
EVA_PATCH = 14
EVA_HEAD_DIM = 88
EVA_MLP_RATIO = 4.3637
EVA_DEPTH = 39


def _stub(name: str, **attrs) -> None:
    module = sys.modules.get(name) or types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    sys.modules[name] = module


def load_eva_vit(lavis_dir: Path):
    """The `eva_vit` module of LAVIS 1.0.2."""
    path = Path(lavis_dir) / "eva_vit.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run ./scripts/setup (it extracts it from the LAVIS wheel)")
    if "emollama_lavis_eva_vit" in sys.modules:
        return sys.modules["emollama_lavis_eva_vit"]
    for pkg in ("timm", "timm.models", "lavis", "lavis.common"):
        _stub(pkg)
    _stub("timm.models.layers", drop_path=lambda x, p=0.0, training=False: x,
          to_2tuple=lambda x: x if isinstance(x, tuple) else (x, x), trunc_normal_=nn.init.trunc_normal_)
    _stub("timm.models.registry", register_model=lambda f: f)
    _stub("lavis.common.dist_utils", download_cached_file=None)
    spec = importlib.util.spec_from_file_location("emollama_lavis_eva_vit", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def eva_vision_transformer(lavis_dir: Path, embed_dim: int, depth: int, img_size: int):
    """`create_eva_vit_g`'s VisionTransformer at the given width and depth (no download)."""
    eva_vit = load_eva_vit(lavis_dir)
    with torch.random.fork_rng():
        return eva_vit.VisionTransformer(
            img_size=img_size, patch_size=EVA_PATCH, use_mean_pooling=False, embed_dim=embed_dim, depth=depth,
            num_heads=embed_dim // EVA_HEAD_DIM, mlp_ratio=EVA_MLP_RATIO, qkv_bias=True, drop_path_rate=0.0,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
        )
