"""wav2vec 2.0 composed from its parts: feature encoder -> (masking) -> Transformer, plus the
quantizer and the contrastive head for pretraining.

`Wav2Vec2Model` maps a waveform to hidden states (used for features, scoring and the CTC head);
`Wav2Vec2ForPreTraining` adds the quantizer, the projections and the loss. Shapes: waveform (B, S)
float32 at 16 kHz, padding_mask (B, S) bool with True = padding (right-padded clips).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import LossConfig, MaskingConfig, ModelConfig
from .feature_encoder import FeatureEncoder, conv_output_lengths
from .losses import (
    LossParts,
    contrastive_accuracy,
    contrastive_logits,
    contrastive_loss,
    diversity_loss,
    sample_negative_indices,
)
from .masking import compute_span_mask, frame_padding_mask
from .quantizer import GumbelVectorQuantizer
from .transformer import TransformerEncoder


@dataclass
class EncodedFeatures:
    features: Tensor  # (B, T, C) latent features after layer norm (quantizer input)
    projected: Tensor  # (B, T, D) after projection and input dropout (Transformer input)
    padding_mask: Tensor | None  # (B, T) True = padding frame, None when nothing is padded
    feature_penalty: Tensor  # mean squared encoder output over valid frames


@dataclass
class PretrainOutput:
    loss: Tensor  # weighted total
    losses: LossParts  # named, unweighted parts
    accuracy: Tensor  # contrastive accuracy over masked frames
    chance_accuracy: Tensor  # accuracy of a uniform guess: mean of 1 / (1 + distractors not equal to the positive)
    code_perplexity: Tensor
    prob_perplexity: Tensor
    temperature: float
    num_masked: int
    negatives_equal_positive: Tensor  # share of distractors with the positive's codes (masked out)
    logits: Tensor  # (N, 1 + K), positive first
    mask: Tensor  # (B, T) the masked frames
    codes: Tensor  # (N, G) quantizer choices for the masked frames


class Wav2Vec2Model(nn.Module):
    """Feature encoder + feature projection + Transformer (fairseq Wav2Vec2Model without the quantizer)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.feature_extractor = FeatureEncoder(cfg.conv_layers, cfg.extractor_mode, cfg.conv_bias,
                                                cfg.feature_grad_mult)
        self.layer_norm = nn.LayerNorm(cfg.conv_dim)
        self.post_extract_proj = nn.Linear(cfg.conv_dim, cfg.embed_dim) if cfg.conv_dim != cfg.embed_dim else None
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.dropout_features = nn.Dropout(cfg.dropout_features)
        self.mask_emb = nn.Parameter(torch.empty(cfg.embed_dim).uniform_())
        self.encoder = TransformerEncoder(
            cfg.embed_dim, cfg.num_layers, cfg.ffn_dim, cfg.num_heads, dropout=cfg.dropout,
            attention_dropout=cfg.attention_dropout, activation_dropout=cfg.activation_dropout,
            layerdrop=cfg.layerdrop, layer_norm_first=cfg.layer_norm_first, conv_pos=cfg.conv_pos,
            conv_pos_groups=cfg.conv_pos_groups)

    @property
    def receptive_field(self) -> int:
        return self.feature_extractor.receptive_field

    @property
    def frame_stride(self) -> int:
        return self.feature_extractor.stride

    def num_frames(self, lengths: Tensor) -> Tensor:
        """Frames for clips of `lengths` samples (the one place this is computed)."""
        return conv_output_lengths(lengths, self.config.conv_layers)

    def encode(self, waveform: Tensor, padding_mask: Tensor | None = None) -> EncodedFeatures:
        """Waveform -> latent features Z, before masking."""
        _check_waveform(waveform, padding_mask)
        lengths = None if padding_mask is None else (~padding_mask).sum(1)
        feats, frame_lengths = self.feature_extractor(waveform, lengths)  # (B, C, T)
        feats = feats.transpose(1, 2)  # (B, T, C)
        frame_pad = None
        if frame_lengths is not None and bool((frame_lengths < feats.shape[1]).any()):
            frame_pad = frame_padding_mask(frame_lengths, feats.shape[1])
        squares = feats.float().pow(2)
        penalty = squares.mean() if frame_pad is None else squares[~frame_pad].mean()
        feats = self.layer_norm(feats)
        projected = self.post_extract_proj(feats) if self.post_extract_proj is not None else feats
        return EncodedFeatures(feats, self.dropout_input(projected), frame_pad, penalty)

    def extract_features(self, waveform: Tensor, padding_mask: Tensor | None = None, *,
                         num_layers: int | None = None) -> list[Tensor]:
        """Hidden states of every layer, each (B, T, D): [Transformer input, layer 1, ..., final output]."""
        enc = self.encode(waveform, padding_mask)
        return self.encoder(enc.projected, enc.padding_mask, num_layers=num_layers)

    def forward(self, waveform: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Final hidden states (B, T, D)."""
        return self.extract_features(waveform, padding_mask)[-1]


class Wav2Vec2ForPreTraining(nn.Module):
    """wav2vec 2.0 with quantizer and contrastive head; `forward` returns the pretraining loss."""

    def __init__(self, cfg: ModelConfig, masking: MaskingConfig | None = None, loss: LossConfig | None = None) -> None:
        super().__init__()
        self.config = cfg
        self.masking = masking or MaskingConfig()
        self.loss_config = loss or LossConfig()
        self.wav2vec2 = Wav2Vec2Model(cfg)
        if cfg.quantize_targets:
            self.quantizer = GumbelVectorQuantizer(cfg.conv_dim, cfg.latent_groups, cfg.latent_vars,
                                                   cfg.codevector_dim, init=cfg.codebook_init)
            self.project_q = nn.Linear(cfg.codevector_dim, cfg.final_dim)
        else:
            self.quantizer = None
            self.project_q = nn.Linear(cfg.conv_dim, cfg.final_dim)
        self.final_proj = nn.Linear(cfg.embed_dim, cfg.final_dim)
        self.set_num_updates(0)

    def set_num_updates(self, step: int) -> float:
        """Anneal the Gumbel temperature: tau = max(start * decay^step, end)."""
        lc = self.loss_config
        self.temperature = max(lc.temp_start * lc.temp_decay ** step, lc.temp_end)
        if self.quantizer is not None:
            self.quantizer.set_temperature(self.temperature)
        return self.temperature

    def extract_features(self, waveform: Tensor, padding_mask: Tensor | None = None, *,
                         num_layers: int | None = None) -> list[Tensor]:
        return self.wav2vec2.extract_features(waveform, padding_mask, num_layers=num_layers)

    def compute_mask(self, frame_shape: tuple[int, int], frame_padding: Tensor | None,
                     generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
        m = self.masking
        lengths = None if frame_padding is None else (~frame_padding).sum(1)
        return compute_span_mask(frame_shape, m.mask_prob, m.mask_length, lengths=lengths, min_masks=m.min_masks,
                                 no_overlap=m.no_overlap, generator=generator, device=device)

    def forward(self, waveform: Tensor, padding_mask: Tensor | None = None, *, mask: Tensor | None = None,
                generator: torch.Generator | None = None) -> PretrainOutput:
        """Pretraining forward. `mask` (B, T frames) overrides the random span mask (deterministic scoring)."""
        w2v = self.wav2vec2
        enc = w2v.encode(waveform, padding_mask)
        B, T, _ = enc.features.shape
        if mask is None:
            mask = self.compute_mask((B, T), enc.padding_mask, generator, enc.features.device)
        elif mask.shape != (B, T):
            raise ValueError(f"mask must have shape (batch, frames) = {(B, T)}, got {tuple(mask.shape)}")
        if enc.padding_mask is not None:
            mask = mask & ~enc.padding_mask
        if not bool(mask.any()):
            raise ValueError("no frame was masked: the clips are too short to pretrain on "
                             f"({T} frames; need at least 2)")

        # 1. Mask the Transformer input with the learned mask embedding (and optional channel masking).
        x = torch.where(mask[..., None], w2v.mask_emb.to(enc.projected.dtype), enc.projected)
        if self.masking.channel_prob > 0 and self.training:
            channels = compute_span_mask((B, x.shape[-1]), self.masking.channel_prob, self.masking.channel_length,
                                         generator=generator, device=x.device)
            x = x.masked_fill(channels[:, None, :], 0.0)
        context = w2v.encoder(x, enc.padding_mask, generator=generator)[-1]  # (B, T, D)

        # 2. Targets: quantized latent features of the masked frames (eq. 1).
        clip_index = mask.nonzero()[:, 0]  # (N,) non-decreasing: row-major order
        unmasked = w2v.dropout_features(enc.features)[mask]  # (N, C)
        if self.quantizer is not None:
            q = self.quantizer(unmasked, generator=generator)
            targets = self.project_q(q.quantized)  # (N, final_dim)
            code_ppl, prob_ppl, codes = q.code_perplexity, q.prob_perplexity, q.codes
            diversity = diversity_loss(prob_ppl, q.num_codevectors)
        else:
            targets = self.project_q(unmasked)
            code_ppl = prob_ppl = diversity = targets.new_zeros(())
            codes = torch.zeros(targets.shape[0], 0, dtype=torch.long, device=targets.device)

        # 3. Contrastive task: identify q_t among distractors (eq. 3).
        lc = self.loss_config
        neg_index = sample_negative_indices(clip_index, lc.num_negatives, lc.cross_sample_negatives, generator)
        logits, neg_is_pos = contrastive_logits(self.final_proj(context[mask]), targets, neg_index, lc.logit_temp,
                                                lc.mask_duplicate_negatives)
        losses = LossParts(contrastive_loss(logits), diversity, enc.feature_penalty)
        return PretrainOutput(
            loss=losses.total(lc.diversity_weight, lc.feature_penalty_weight),
            losses=losses,
            accuracy=contrastive_accuracy(logits.detach()),
            chance_accuracy=(1.0 / (1.0 + (~neg_is_pos).sum(1).float())).mean() if lc.mask_duplicate_negatives
            else logits.new_tensor(1.0 / logits.shape[1]),
            code_perplexity=code_ppl.detach(),
            prob_perplexity=prob_ppl.detach(),
            temperature=self.temperature,
            num_masked=int(mask.sum()),
            negatives_equal_positive=neg_is_pos.float().mean(),
            logits=logits,
            mask=mask,
            codes=codes,
        )


def _check_waveform(waveform: Tensor, padding_mask: Tensor | None) -> None:
    if waveform.dim() != 2:
        raise ValueError(f"waveform must be (batch, samples) float at 16 kHz, got shape {tuple(waveform.shape)}")
    if not waveform.is_floating_point():
        raise ValueError(f"waveform must be floating point, got {waveform.dtype}")
    if padding_mask is not None and (padding_mask.shape != waveform.shape or padding_mask.dtype != torch.bool):
        raise ValueError("padding_mask must be a bool tensor shaped like the waveform (True = padding)")
    if not bool(torch.isfinite(waveform).all()):
        raise ValueError("waveform contains NaN or Inf samples")
