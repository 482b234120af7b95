"""Context network g: Z -> C, a Transformer with a relative positional conv embedding.

`layer_norm_first=False` is the BASE post-LN block, True the LARGE pre-LN block (with a final layer
norm after the last layer). Attention runs through `F.scaled_dot_product_attention` with a key
padding mask, so padded frames never influence valid ones. LayerDrop skips whole layers in
training, drawing from the injected generator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvPositionalEmbedding(nn.Module):
    """Grouped conv over time (kernel 128, 16 groups, weight norm over the kernel dim, GELU).

    fairseq: pos_conv; the even kernel gets one output frame removed (SamePad).
    """

    def __init__(self, embed_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        conv = nn.Conv1d(embed_dim, embed_dim, kernel, padding=kernel // 2, groups=groups)
        std = math.sqrt(4.0 / (kernel * embed_dim))
        nn.init.normal_(conv.weight, mean=0.0, std=std)
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.remove = 1 if kernel % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, D) -> (B, T, D)."""
        x = self.conv(x.transpose(1, 2))  # (B, D, T + remove)
        if self.remove:
            x = x[..., : -self.remove]
        return F.gelu(x).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections (fairseq names)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.dropout = num_heads, embed_dim // num_heads, dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        """x (B, T, D); attn_mask (B, 1, 1, T) bool, True = may attend, or None."""
        B, T, D = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.out_proj(y)


class EncoderLayer(nn.Module):
    """One Transformer block; post-LN (BASE) or pre-LN (LARGE)."""

    def __init__(self, embed_dim: int, ffn_dim: int, num_heads: int, dropout: float, attention_dropout: float,
                 activation_dropout: float, layer_norm_first: bool) -> None:
        super().__init__()
        self.self_attn = SelfAttention(embed_dim, num_heads, attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.final_layer_norm = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.activation_dropout = nn.Dropout(activation_dropout)
        self.layer_norm_first = layer_norm_first

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        if self.layer_norm_first:
            x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), attn_mask))
            x = x + self.dropout(self._ffn(self.final_layer_norm(x)))
        else:
            x = self.self_attn_layer_norm(x + self.dropout(self.self_attn(x, attn_mask)))
            x = self.final_layer_norm(x + self.dropout(self._ffn(x)))
        return x

    def _ffn(self, x: Tensor) -> Tensor:
        return self.fc2(self.activation_dropout(F.gelu(self.fc1(x))))


class TransformerEncoder(nn.Module):
    """(B, T, D) features + frame padding mask -> list of hidden states [input to layer 1, ..., output]."""

    def __init__(self, embed_dim: int, num_layers: int, ffn_dim: int, num_heads: int, *, dropout: float = 0.1,
                 attention_dropout: float = 0.1, activation_dropout: float = 0.0, layerdrop: float = 0.0,
                 layer_norm_first: bool = False, conv_pos: int = 128, conv_pos_groups: int = 16) -> None:
        super().__init__()
        self.pos_conv = ConvPositionalEmbedding(embed_dim, conv_pos, conv_pos_groups)
        self.layer_norm = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm_first = layer_norm_first
        self.layerdrop = layerdrop
        self.layers = nn.ModuleList(
            EncoderLayer(embed_dim, ffn_dim, num_heads, dropout, attention_dropout, activation_dropout,
                         layer_norm_first) for _ in range(num_layers))
        for module in self.layers.modules():  # BERT init, as fairseq's init_bert_params
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None, *, num_layers: int | None = None,
                generator: torch.Generator | None = None) -> list[Tensor]:
        """x (B, T, D); padding_mask (B, T) True = padding. Returns num_layers + 1 states (B, T, D).

        With `num_layers` the stack stops early (cheaper feature extraction from a middle layer).
        """
        attn_mask = None
        if padding_mask is not None and bool(padding_mask.any()):
            x = x.masked_fill(padding_mask[..., None], 0.0)
            attn_mask = (~padding_mask)[:, None, None, :]  # (B, 1, 1, T)
        x = x + self.pos_conv(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        states = [x]
        layers = self.layers if num_layers is None else self.layers[:num_layers]
        drops = torch.rand(len(layers), generator=generator) if self.training and self.layerdrop > 0 else None
        for i, layer in enumerate(layers):
            if drops is None or float(drops[i]) >= self.layerdrop:
                x = layer(x, attn_mask)
            states.append(x)
        if self.layer_norm_first and (num_layers is None or num_layers == len(self.layers)):
            states[-1] = self.layer_norm(states[-1])
        return states
