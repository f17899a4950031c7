"""Temporal engine: face VideoMAE ViT-L/16 (modeling_finetune.py) + feats_llama_proj2.

Spec §1.4: Conv3d tubelet 2x16x16 over 16 frames -> 1568 tokens; a fixed sinusoidal
position table (not learned, not loaded); q/v biases; use_mean_pooling=True so the final
norm is Identity and all tokens are returned unnormalised; mean over tokens; Linear.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .vit import Block


@dataclass
class VideoMaeConfig:
    image_size: int = 224
    patch_size: int = 16
    frames: int = 16
    tubelet: int = 2
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0


def sinusoid_table(n_position: int, d_hid: int) -> torch.Tensor:
    """get_sinusoid_encoding_table of modeling_finetune.py (float64 numpy, then float32)."""

    def angle_vec(pos):
        return [pos / np.power(10000, 2 * (j // 2) / d_hid) for j in range(d_hid)]

    table = np.array([angle_vec(p) for p in range(n_position)])
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return torch.tensor(table, dtype=torch.float32).unsqueeze(0)


class VideoMaeViT(nn.Module):
    def __init__(self, cfg: VideoMaeConfig):
        super().__init__()
        grid = cfg.image_size // cfg.patch_size
        n_tokens = (cfg.frames // cfg.tubelet) * grid * grid
        self.patch_embed = nn.Conv3d(
            3, cfg.embed_dim, (cfg.tubelet, cfg.patch_size, cfg.patch_size),
            (cfg.tubelet, cfg.patch_size, cfg.patch_size),
        )
        self.register_buffer("pos_embed", sinusoid_table(n_tokens, cfg.embed_dim), persistent=False)
        hidden = int(cfg.embed_dim * cfg.mlp_ratio)
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, hidden, qkv_bias="qv") for _ in range(cfg.depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return x  # norm is Identity with use_mean_pooling


class TemporalEngine(nn.Module):
    """clip [B,3,16,224,224] in [0,1] -> temporal_row [B,1,D]."""

    def __init__(self, cfg: VideoMaeConfig, llm_dim: int):
        super().__init__()
        self.encoder = VideoMaeViT(cfg)
        self.feats_llama_proj2 = nn.Linear(cfg.embed_dim, llm_dim)

    def utterance(self, clip: torch.Tensor) -> torch.Tensor:
        """The clip's feature before the projector, [B, C] (`maeV_399_UTT/<clip>.npy`)."""
        return self.encoder(clip).mean(dim=1)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.feats_llama_proj2(self.utterance(clip).unsqueeze(1))
