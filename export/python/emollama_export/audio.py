"""Audio engine: chinese-hubert-large (transformers HubertModel) + feats_llama_proj3.

Spec §1.2: Wav2Vec2FeatureExtractor normalisation (x - mean) / sqrt(var + 1e-7) over the
whole utterance (population variance), inside the graph; stable-layer-norm HuBERT;
last hidden state (after the encoder's final LayerNorm); mean over time; Linear.
"""

import torch
from torch import nn
from transformers import HubertConfig, HubertModel


def hubert_config(hidden: int, layers: int, heads: int, intermediate: int, conv_dim: int,
                  pos_conv_kernel: int, pos_conv_groups: int) -> HubertConfig:
    """chinese-hubert-large's config with the widths replaced (kernels and strides kept)."""
    return HubertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        conv_dim=(conv_dim,) * 7,
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_bias=False,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=pos_conv_kernel,
        num_conv_pos_embedding_groups=pos_conv_groups,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.0,
        attn_implementation="eager",  # plain ops; the export needs no SDPA tracing
    )


class AudioEngine(nn.Module):
    """waveform [1,S] (16 kHz mono f32) -> audio_row [1,1,D]."""

    def __init__(self, config: HubertConfig, llm_dim: int):
        super().__init__()
        self.hubert = HubertModel(config)
        self.feats_llama_proj3 = nn.Linear(config.hidden_size, llm_dim)

    def utterance(self, waveform: torch.Tensor) -> torch.Tensor:
        """The clip's feature before the projector, [1, C] (`HL-UTT/<clip>.npy`)."""
        mean = waveform.mean(dim=-1, keepdim=True)
        var = ((waveform - mean) ** 2).mean(dim=-1, keepdim=True)
        normalized = (waveform - mean) / torch.sqrt(var + 1e-7)
        return self.hubert(normalized).last_hidden_state.mean(dim=1)  # [1, T, C] -> [1, C]

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.feats_llama_proj3(self.utterance(waveform).unsqueeze(1))
