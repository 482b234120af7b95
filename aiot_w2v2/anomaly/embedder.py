"""The fine-tuned part of the anomaly model: conv features -> Transformer -> pooled embedding.

`AnomalyEmbedder` takes the pretrained wav2vec 2.0's conv features (B, T, C) (the feature encoder
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
from torch import Tensor, nn

from ..model.wav2vec2 import Wav2Vec2Model

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


def conv_features(w2v: Wav2Vec2Model, audio: Tensor) -> Tensor:
    """audio (B, S) -> the frozen feature encoder's output (B, T, C), without gradient."""
    with torch.no_grad():
        return w2v.feature_extractor(audio, None)[0].transpose(1, 2)
