"""Local engine: face MAE ViT-L/16 (timm VisionTransformer, global_pool=False) + feats_llama_proj1.

Spec §1.3: input face crops resized to 224 in [0,1] without mean/std; per frame the CLS
token after the final LayerNorm; mean over all face frames; Linear(1024 -> D).
"""

from dataclasses import dataclass

import torch
from torch import nn

from .vit import Block


@dataclass
class MaeConfig:
    image_size: int = 224
    patch_size: int = 16
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0


class MaeViT(nn.Module):
    def __init__(self, cfg: MaeConfig):
        super().__init__()
        grid = cfg.image_size // cfg.patch_size
        self.patch_embed = nn.Conv2d(3, cfg.embed_dim, cfg.patch_size, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.embed_dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid + 1, cfg.embed_dim) * 0.02)
        hidden = int(cfg.embed_dim * cfg.mlp_ratio)
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, hidden, qkv_bias="full") for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]  # "after norm, before fc_norm" (issue #8)


class LocalEngine(nn.Module):
    """faces [N,3,224,224] (N face frames of one clip) -> local_row [1,1,D]."""

    def __init__(self, cfg: MaeConfig, llm_dim: int):
        super().__init__()
        self.encoder = MaeViT(cfg)
        self.feats_llama_proj1 = nn.Linear(cfg.embed_dim, llm_dim)

    def utterance(self, faces: torch.Tensor) -> torch.Tensor:
        """The clip's feature before the projector, [1, C] (`mae_340_UTT/<clip>.npy`)."""
        return self.encoder(faces).mean(dim=0, keepdim=True)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return self.feats_llama_proj1(self.utterance(faces)).unsqueeze(0)
