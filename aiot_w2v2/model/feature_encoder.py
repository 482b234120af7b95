"""Feature encoder f: X -> Z, the strided conv stack that turns a waveform into latent frames.

BASE ("group_norm" mode): group norm (one group per channel) after the first conv only. LARGE
("layer_norm" mode): layer norm over channels after every conv. With a padded batch, the group norm
statistics are taken over each clip's valid frames only, so padding never changes an unpadded clip's
features (fairseq and Hugging Face normalise over the padding too; for unpadded clips both agree).
The module knows nothing about masking or quantization.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import conv1d, conv1d_time_major


def conv_output_lengths(lengths: Tensor, conv_layers: Sequence[tuple[int, int, int]]) -> Tensor:
    """Frames produced by the conv stack for inputs of `lengths` samples (floor division, no padding)."""
    for _, kernel, stride in conv_layers:
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        lengths = lengths.clamp(min=0)
    return lengths


def receptive_field(conv_layers: Sequence[tuple[int, int, int]]) -> tuple[int, int]:
    """(receptive field, total stride) in samples; (400, 320) for the paper's stack."""
    field, stride = 1, 1
    for _, kernel, s in conv_layers:
        field += (kernel - 1) * stride
        stride *= s
    return field, stride


class GradMultiply(torch.autograd.Function):
    """Identity forward; scales the gradient (fairseq's feature_grad_mult)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def masked_group_norm(x: Tensor, lengths: Tensor | None, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """Per-channel normalisation over time using only the first `lengths[b]` frames of each clip.

    x: (B, C, T). With lengths None (or all full) this equals nn.GroupNorm(C, C).
    """
    if lengths is None or bool((lengths == x.shape[-1]).all()):
        return F.group_norm(x, x.shape[1], weight, bias, eps)
    valid = (torch.arange(x.shape[-1], device=x.device)[None, :] < lengths[:, None]).to(x.dtype)  # (B, T)
    valid = valid[:, None, :]  # (B, 1, T)
    count = valid.sum(-1, keepdim=True).clamp(min=1)  # (B, 1, 1)
    mean = (x * valid).sum(-1, keepdim=True) / count  # (B, C, 1)
    var = (((x - mean) * valid) ** 2).sum(-1, keepdim=True) / count
    x = (x - mean) / torch.sqrt(var + eps)
    return x * weight[None, :, None] + bias[None, :, None]


class ConvLayerBlock(nn.Module):
    """Conv1d -> (group norm | layer norm | nothing) -> GELU. fairseq: ConvFeatureExtractionModel block."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, bias: bool,
                 norm: str | None) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=bias)
        nn.init.kaiming_normal_(self.conv.weight)
        self.norm_kind = norm
        if norm == "group_norm":
            self.norm = nn.GroupNorm(out_channels, out_channels, affine=True)
        elif norm == "layer_norm":
            self.norm = nn.LayerNorm(out_channels, elementwise_affine=True)
        else:
            self.norm = None

    @property
    def time_major(self) -> bool:
        """Layer-norm blocks work on (B, T, C), where their norm over channels needs no transposes."""
        return self.norm_kind == "layer_norm"

    def forward(self, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """x (B, C_in, T), or (B, T, C_in) for a time-major block -> the same layout with C_out, T'."""
        if lengths is not None:
            lengths = torch.div(lengths - self.kernel, self.stride, rounding_mode="floor") + 1
            lengths = lengths.clamp(min=0)
        if self.time_major:
            x = self.norm(conv1d_time_major(x, self.conv.weight, self.conv.bias, self.stride))  # (B, T', C)
        else:
            x = conv1d(x, self.conv.weight, self.conv.bias, self.stride)  # (B, C, T')
            if self.norm_kind == "group_norm":
                x = masked_group_norm(x, lengths, self.norm.weight, self.norm.bias, self.norm.eps)
        return F.gelu(x), lengths


class FeatureEncoder(nn.Module):
    """Waveform (B, S) -> latent features (B, C, T), T = conv_output_lengths(S)."""

    def __init__(self, conv_layers: Sequence[tuple[int, int, int]], mode: str = "group_norm",
                 conv_bias: bool = False, grad_mult: float = 1.0) -> None:
        super().__init__()
        if mode not in ("group_norm", "layer_norm"):
            raise ValueError(f"unknown extractor mode '{mode}'")
        self.conv_layers = tuple(tuple(layer) for layer in conv_layers)
        self.grad_mult = grad_mult
        blocks, in_ch = [], 1
        for i, (ch, k, s) in enumerate(self.conv_layers):
            norm = "layer_norm" if mode == "layer_norm" else ("group_norm" if i == 0 else None)
            blocks.append(ConvLayerBlock(in_ch, ch, k, s, conv_bias, norm))
            in_ch = ch
        self.blocks = nn.ModuleList(blocks)
        self.receptive_field, self.stride = receptive_field(self.conv_layers)

    def forward(self, waveform: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """waveform (B, S) float; lengths (B,) valid samples or None. Returns (features (B, C, T), frame lengths)."""
        if waveform.dim() != 2:
            raise ValueError(f"expected waveform of shape (batch, samples), got {tuple(waveform.shape)}")
        if waveform.shape[1] < self.receptive_field:
            raise ValueError(
                f"clip of {waveform.shape[1]} samples is shorter than the encoder's receptive field "
                f"({self.receptive_field} samples): it produces no frames")
        time_major = self.blocks[0].time_major  # all blocks alike: layer norm in every block or in none
        x = waveform[:, :, None] if time_major else waveform[:, None, :]  # (B, S, 1) or (B, 1, S)
        frozen = self.grad_mult == 0.0 and self.training
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            for block in self.blocks:
                x, lengths = block(x, lengths)
        if time_major:
            x = x.transpose(1, 2)  # (B, C, T) view
        if self.grad_mult not in (0.0, 1.0) and self.training and x.requires_grad:
            x = GradMultiply.apply(x, self.grad_mult)
        return x, lengths
