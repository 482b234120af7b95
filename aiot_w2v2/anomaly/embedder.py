"""The fine-tuned part of the anomaly model: the `learned` scorer's embedding.

Two kinds, `finetune.part`:

`ConvEmbedder` (part `conv`): a copy of the pretrained conv blocks 0..max(`learned_layers`) that runs on
the audio itself and returns what the `learned` scorer reads without fine-tuning: the mean and std over
time of the chosen blocks' outputs (after norm and GELU), concatenated [, then the `LearnedExtras`: the
`Rhythm`s of blocks' outputs and their log kurtosis over time] (`pooled`). For training, a
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
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.feature_encoder import FeatureEncoder, receptive_field
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


@dataclass(frozen=True)
class Rhythm:
    """The rhythm of what the network learned: the output of conv block `block` averaged in frames of
    `pool` block frames, each channel's autocorrelation over time at `lags` frames (normalised by lag 0),
    averaged within `groups` contiguous groups of channels -> (B, groups * len(lags)), lag-major.

    Periodic faults (a loose part, a misaligned shaft, a pulsing flow) modulate a machine's sound at its
    rotation rate: pooled means and stds cannot see a period, an autocorrelation can. It reads the
    network's output only (no filter bank of ours). Lags beyond the window give 0 (no overlap)."""

    block: int
    pool: int
    lags: tuple[int, ...]
    groups: int

    @staticmethod
    def of(encoder: FeatureEncoder, block: int, frame_ms: float, lags_ms: tuple[float, ...], groups: int,
           sample_rate: int = 16000, setting: str = "learned_rhythm") -> Rhythm:
        """Frames of `frame_ms`, lags in ms; checks them against the conv stack of `encoder` (errors name the
        `setting`)."""
        blocks = encoder.blocks
        if not 0 <= block < len(blocks):
            raise ValueError(f"{setting}_layer conv{block} out of range conv0..conv{len(blocks) - 1}")
        channels = blocks[block].conv.out_channels
        if frame_ms <= 0 or not lags_ms or min(lags_ms) <= 0 or groups < 1 or channels % groups:
            raise ValueError(f"{setting}: frame_ms and every lag must be > 0 and groups must divide the "
                             f"{channels} channels of conv{block} (got {frame_ms}, {list(lags_ms)}, {groups})")
        _, stride = receptive_field(encoder.conv_layers[: block + 1])
        pool = max(1, round(frame_ms / 1000 * sample_rate / stride))
        lags = tuple(sorted({max(1, round(lag / frame_ms)) for lag in lags_ms}))
        return Rhythm(block, pool, lags, groups)

    @property
    def dim(self) -> int:
        return self.groups * len(self.lags)

    def __call__(self, x: Tensor, time_major: bool) -> Tensor:
        """The block's output (B, T, C) if `time_major` else (B, C, T) -> (B, groups * len(lags))."""
        out = x.transpose(1, 2) if time_major else x  # (B, C, T_i)
        frames = F.avg_pool1d(out, self.pool, self.pool)  # (B, C, T)
        frames = frames - frames.mean(2, keepdim=True)
        power = frames.pow(2).sum(2) + 1e-9  # (B, C): lag 0
        ac = torch.stack([(frames[:, :, :-lag] * frames[:, :, lag:]).sum(2) / power for lag in self.lags], 1)
        B, L, C = ac.shape
        return ac.reshape(B, L, self.groups, C // self.groups).mean(3).flatten(1)


def log_kurtosis(x: Tensor, time_major: bool) -> Tensor:
    """A block's output -> (B, C_i): the log of each channel's kurtosis over time (how impulsive it is)."""
    out = x if time_major else x.transpose(1, 2)  # (B, T_i, C_i)
    z = (out - out.mean(1, keepdim=True)) / (out.std(1, keepdim=True) + 1e-6)
    return torch.log(z.pow(4).mean(1))


@dataclass(frozen=True)
class LearnedExtras:
    """What the `learned` embedding appends to the pooled means and stds, in this order: each `Rhythm` of
    `rhythms`, then the `log_kurtosis` of each block of `kurtosis`. Pooling of the network's output only
    (no filter bank of ours), like the mean and std."""

    rhythms: tuple[Rhythm, ...] = ()
    kurtosis: tuple[int, ...] = ()

    @property
    def blocks(self) -> tuple[int, ...]:
        """The conv blocks whose output the extras read."""
        return tuple(sorted({r.block for r in self.rhythms} | set(self.kurtosis)))

    def dim(self, encoder: FeatureEncoder) -> int:
        return sum(r.dim for r in self.rhythms) + sum(encoder.blocks[i].conv.out_channels for i in self.kurtosis)

    def __call__(self, outputs: dict[int, Tensor], time_major: bool) -> list[Tensor]:
        """{block: its output} (at least `blocks`) -> the parts, in order."""
        return ([r(outputs[r.block], time_major) for r in self.rhythms]
                + [log_kurtosis(outputs[i], time_major) for i in self.kurtosis])

    def describe(self) -> dict:
        """JSON-able (fine-tuning states record it, so that a resume with other extras is refused)."""
        return {"rhythms": [asdict(r) | {"lags": list(r.lags)} for r in self.rhythms], "kurtosis": list(self.kurtosis)}


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
                 generator: torch.Generator | None = None, extras: LearnedExtras | None = None) -> None:
        super().__init__()
        blocks = w2v.feature_extractor.blocks
        if not layers or min(layers) < 0 or max(layers) >= len(blocks):
            raise ValueError(f"conv layers {list(layers)} out of range 0..{len(blocks) - 1}")
        self.layers = tuple(sorted(set(layers)))
        self.extras = extras
        self.blocks = copy.deepcopy(blocks[: max(self.layers + (extras.blocks if extras else ())) + 1])
        dim = 2 * sum(self.blocks[i].conv.out_channels for i in self.layers)
        dim += extras.dim(w2v.feature_extractor) if extras else 0
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)  # the blocks' statistics differ in scale
        self.projection = nn.Linear(dim, embedding_dim)
        with torch.no_grad():
            self.projection.weight.copy_(torch.randn(embedding_dim, dim, generator=generator) / dim**0.5)
            self.projection.bias.zero_()

    def pooled(self, audio: Tensor) -> Tensor:
        """(B, S) -> (B, L): mean and std over time of each chosen block's output, in block order [, then the
        extras]."""
        time_major = self.blocks[0].time_major
        x = audio[:, :, None] if time_major else audio[:, None, :]
        parts, outputs = [], {}
        wanted = self.extras.blocks if self.extras else ()
        for i, block in enumerate(self.blocks):  # as ScoringFrontend's conv stack
            x, _ = conv_block_step(block, x, time_major)
            if i in self.layers:
                parts.append(time_stats(x, time_major))
            if i in wanted:
                outputs[i] = x
        return torch.cat(parts + (self.extras(outputs, time_major) if self.extras else []), 1)

    def forward(self, audio: Tensor) -> Tensor:
        return self.projection(self.norm(self.pooled(audio)))

    def merge_adapters(self) -> None:
        """Nothing to merge (no adapters on conv blocks); here so both embedders share the interface."""


Embedder = AnomalyEmbedder | ConvEmbedder  # what `finetune.part` trains: "transformer" | "conv"


def conv_features(w2v: Wav2Vec2Model, audio: Tensor) -> Tensor:
    """audio (B, S) -> the frozen feature encoder's output (B, T, C), without gradient."""
    with torch.no_grad():
        return w2v.feature_extractor(audio, None)[0].transpose(1, 2)
