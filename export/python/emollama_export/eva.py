"""Global engine: EVA-CLIP ViT-g/14 (BLIP-2 variant) + ln_vision + the two projectors.

Follows minigpt4/models/eva_vit.py and minigpt_v2.py encode_img (spec §1.1, §2):
- depth-39 ViT without final norm, separate q/v biases, exact GELU, no layer scale;
- the 16x16 checkpoint position table is bicubically interpolated to 32x32 at load
  (align_corners=False, CLS kept) and baked into the export;
- ln_vision is a LayerNorm without trained affine (gamma 1, beta 0, eps 1e-5);
- CLS -> cls_tk_llama_proj; patches viewed as (256, 4*C) -- four consecutive raster
  tokens, not a 2x2 block -- then llama_proj.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .vit import Block


@dataclass
class EvaConfig:
    image_size: int = 448
    patch_size: int = 14
    embed_dim: int = 1408
    depth: int = 39
    num_heads: int = 16
    mlp_ratio: float = 4.3637
    checkpoint_grid: int = 16  # eva_vit_g.pth was trained at 224 px: a 16x16 table
    group: int = 4  # consecutive patch tokens per LLM row


def interpolate_pos_embed(pos_embed: torch.Tensor, new_grid: int) -> torch.Tensor:
    """eva_vit.py interpolate_pos_embed: bicubic, align_corners=False, CLS row kept."""
    cls, grid = pos_embed[:, :1], pos_embed[:, 1:]
    old = int(grid.shape[1] ** 0.5)
    if old == new_grid:
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old, old, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat((cls, grid), dim=1)


class EvaViT(nn.Module):
    def __init__(self, cfg: EvaConfig):
        super().__init__()
        self.cfg = cfg
        grid = cfg.image_size // cfg.patch_size
        self.patch_embed = nn.Conv2d(3, cfg.embed_dim, cfg.patch_size, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        # Created at the checkpoint's grid, then interpolated as the official loader does.
        ckpt_table = torch.randn(1, cfg.checkpoint_grid**2 + 1, cfg.embed_dim) * 0.02
        self.pos_embed = nn.Parameter(interpolate_pos_embed(ckpt_table, grid))
        hidden = int(cfg.embed_dim * cfg.mlp_ratio)
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, hidden, qkv_bias="qv") for _ in range(cfg.depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return x  # no final norm: forward_features returns the last block's output


class GlobalEngine(nn.Module):
    """pixel_values [B,3,H,W] -> patch_rows [B,256,D], cls_row [B,1,D]."""

    def __init__(self, cfg: EvaConfig, llm_dim: int):
        super().__init__()
        self.cfg = cfg
        self.visual_encoder = EvaViT(cfg)
        self.ln_vision = nn.LayerNorm(cfg.embed_dim, eps=1e-5, elementwise_affine=False)
        self.llama_proj = nn.Linear(cfg.embed_dim * cfg.group, llm_dim)
        self.cls_tk_llama_proj = nn.Linear(cfg.embed_dim, llm_dim)

    def forward(self, pixel_values: torch.Tensor):
        x = self.ln_vision(self.visual_encoder(pixel_values))
        b, n, c = x.shape
        cls_row = self.cls_tk_llama_proj(x[:, :1])
        patches = x[:, 1:].reshape(b, (n - 1) // self.cfg.group, c * self.cfg.group)
        return self.llama_proj(patches), cls_row
