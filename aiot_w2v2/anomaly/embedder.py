"""The fine-tuned part of the anomaly model: the `learned` scorer's embedding.

Two kinds, `finetune.part`:

`ConvEmbedder` (part `conv`): a copy of the pretrained conv blocks 0..max(`learned_layers`) that runs on
the audio itself and returns what the `learned` scorer reads without fine-tuning: the mean and std over
time of the chosen blocks' outputs (after norm and GELU), concatenated (`pooled`). For training, a
non-affine layer norm and a linear projection map that to the angular-margin head's input (`forward`).
The pretrained feature encoder itself stays frozen beside it (the `spectral` branch and the codes read it).

`AnomalyEmbedder` (part `transformer`) takes the pretrained wav2vec 2.0's conv features (B, T, C) (the feature encoder
stays frozen: the fixed `spectral` branch and the quantizer's codes read it, and must not move) and
runs a copy of the pretrained feature layer norm, projection and Transformer, then a linear projection
of every frame, averaged over frames: the embedding (B, E) the `learned` scorer compares.

Low-rank adapters (`LoRALinear`, Hu et al. 2021): with `adapter_rank` r > 0 only r-rank updates
W + (alpha / r) B A of the attention and feed-forward linears (and the projection) train; `merge_adapters`
folds them into plain `nn.Linear`s after training, so the saved and exported model is the same plain
module either way. It knows nothing about classes, heads or data.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.wav2vec2 import Wav2Vec2Model


def conv_block_step(block: nn.Module, x: Tensor, time_major: bool) -> tuple[Tensor, Tensor]:
    """One feature-encoder block with plain `F.conv1d` (exports to ONNX): x (B, T, C) if `time_major` else
    (B, C, T) -> (the block's output in the same layout, its pre-norm conv output (B, T_i, C_i))."""
    if time_major:
        pre = F.conv1d(x.transpose(1, 2), block.conv.weight, block.conv.bias, block.stride).transpose(1, 2)
        return F.gelu(block.norm(pre)), pre
    pre = F.conv1d(x, block.conv.weight, block.conv.bias, block.stride)  # (B, C_i, T_i)
    return F.gelu(block.norm(pre) if block.norm is not None else pre), pre.transpose(1, 2)


def time_stats(x: Tensor, time_major: bool) -> Tensor:
    """A block's output -> (B, 2 C_i): its mean and std over time."""
    out = x if time_major else x.transpose(1, 2)  # (B, T_i, C_i)
    return torch.cat([out.mean(1), out.std(1)], 1)


ADAPTED = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")  # the linears of each Transformer block


class LoRALinear(nn.Module):
    """y = W x + b + (alpha / r) B (A x); W and b frozen, A (r, in) random, B (out, r) zero at the start."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features, generator=generator) / base.in_features**0.5)
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scaling = alpha / rank

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scaling

    def merged(self) -> nn.Linear:
        out = copy.deepcopy(self.base)
        with torch.no_grad():
            out.weight += self.scaling * self.lora_b @ self.lora_a
        for p in out.parameters():
            p.requires_grad_(True)
        return out


class AnomalyEmbedder(nn.Module):
    """conv features (B, T, C) -> embedding (B, embedding_dim): mean over frames of a projection of the
    final Transformer state."""

    def __init__(self, w2v: Wav2Vec2Model, embedding_dim: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.layer_norm = copy.deepcopy(w2v.layer_norm)
        self.post_extract_proj = copy.deepcopy(w2v.post_extract_proj)
        self.encoder = copy.deepcopy(w2v.encoder)
        embed_dim = w2v.config.embed_dim
        self.projection = nn.Linear(embed_dim, embedding_dim)
        with torch.no_grad():
            self.projection.weight.copy_(torch.randn(embedding_dim, embed_dim, generator=generator) / embed_dim**0.5)
            self.projection.bias.zero_()

    def frames(self, feats: Tensor) -> Tensor:
        """(B, T, C) conv features -> (B, T, E) projected final Transformer states."""
        x = self.layer_norm(feats)
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        return self.projection(self.encoder(x)[-1])

    def forward(self, feats: Tensor) -> Tensor:
        return self.frames(feats).mean(1)  # (B, E)

    def add_adapters(self, rank: int, alpha: float, generator: torch.Generator | None = None) -> None:
        """Freeze everything but the projection; add rank-`rank` adapters to every block's linears."""
        for p in self.parameters():
            p.requires_grad_(False)
        for p in self.projection.parameters():
            p.requires_grad_(True)
        for layer in self.encoder.layers:
            for owner in (layer.self_attn, layer):
                for name in ADAPTED:
                    if isinstance(getattr(owner, name, None), nn.Linear):
                        setattr(owner, name, LoRALinear(getattr(owner, name), rank, alpha, generator))

    def merge_adapters(self) -> None:
        """Fold every adapter into its linear (no-op without adapters)."""
        for layer in self.encoder.layers:
            for owner in (layer.self_attn, layer):
                for name in ADAPTED:
                    module = getattr(owner, name, None)
                    if isinstance(module, LoRALinear):
                        setattr(owner, name, module.merged())
        for p in self.parameters():
            p.requires_grad_(True)


class ConvEmbedder(nn.Module):
    """audio (B, S) -> pooled conv statistics (B, L) (`pooled`, what the scorer reads) or their projection
    (B, embedding_dim) (`forward`, what the head trains on)."""

    def __init__(self, w2v: Wav2Vec2Model, layers: tuple[int, ...], embedding_dim: int,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        blocks = w2v.feature_extractor.blocks
        if not layers or min(layers) < 0 or max(layers) >= len(blocks):
            raise ValueError(f"conv layers {list(layers)} out of range 0..{len(blocks) - 1}")
        self.layers = tuple(sorted(set(layers)))
        self.blocks = copy.deepcopy(blocks[: max(self.layers) + 1])
        dim = 2 * sum(self.blocks[i].conv.out_channels for i in self.layers)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)  # the blocks' statistics differ in scale
        self.projection = nn.Linear(dim, embedding_dim)
        with torch.no_grad():
            self.projection.weight.copy_(torch.randn(embedding_dim, dim, generator=generator) / dim**0.5)
            self.projection.bias.zero_()

    def pooled(self, audio: Tensor) -> Tensor:
        """(B, S) -> (B, L): mean and std over time of each chosen block's output, in block order."""
        time_major = self.blocks[0].time_major
        x = audio[:, :, None] if time_major else audio[:, None, :]
        parts = []
        for i, block in enumerate(self.blocks):  # as ScoringFrontend's conv stack
            x, _ = conv_block_step(block, x, time_major)
            if i in self.layers:
                parts.append(time_stats(x, time_major))
        return torch.cat(parts, 1)

    def forward(self, audio: Tensor) -> Tensor:
        return self.projection(self.norm(self.pooled(audio)))

    def merge_adapters(self) -> None:
        """Nothing to merge (no adapters on conv blocks); here so both embedders share the interface."""


Embedder = AnomalyEmbedder | ConvEmbedder  # what `finetune.part` trains: "transformer" | "conv"


def conv_features(w2v: Wav2Vec2Model, audio: Tensor) -> Tensor:
    """audio (B, S) -> the frozen feature encoder's output (B, T, C), without gradient."""
    with torch.no_grad():
        return w2v.feature_extractor(audio, None)[0].transpose(1, 2)
