"""Fine-tuning configuration: frozen dataclasses with defaults in code; YAML presets only override.

`FinetuneConfig` groups what a CTC fine-tuning run needs, with fairseq's names in comments. The
defaults are fairseq's `base_10m`/`base_1h` recipe (examples/wav2vec/config/finetuning); the
`configs/asr_*.yaml` presets set the other data sizes. Masking uses our `MaskingConfig`, whose
probabilities are start probabilities: fairseq's `mask_prob` 0.65 with span 10 is our 0.065, its
`mask_channel_prob` 0.5 with span 64 is our 0.5 / 64. Reuses `aiot_w2v2.config`'s YAML loading,
`extends:`, dotted overrides and key/type checking.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from ..config import (
    ConfigError,
    MaskingConfig,
    TrainConfig,
    from_dict,
    load_yaml,
    merge,
    parse_overrides,
    resolve_config_path,
)
from .vocab import LIBRISPEECH_LETTERS

FINETUNE_MASKING = MaskingConfig(mask_prob=0.065, mask_length=10, min_masks=2, channel_prob=0.25 / 64,
                                 channel_length=64)


@dataclass(frozen=True)
class EncoderOverrides:
    """Set on the pretrained encoder's `ModelConfig` for fine-tuning (fairseq Wav2Vec2AsrConfig)."""

    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.1
    dropout_input: float = 0.0
    layerdrop: float = 0.1  # LayerDrop during fine-tuning
    feature_grad_mult: float = 0.0  # 0: the conv feature encoder is frozen (fairseq feature_grad_mult 0.0)

    def validate(self, prefix: str = "encoder") -> None:
        for f in fields(self):
            if f.name != "feature_grad_mult":
                _prob(f"{prefix}.{f.name}", getattr(self, f.name))
        if self.feature_grad_mult < 0:
            raise ConfigError(f"{prefix}.feature_grad_mult must be >= 0")


@dataclass(frozen=True)
class CTCConfig:
    """The CTC head and what trains when."""

    letters: str = "".join(LIBRISPEECH_LETTERS)  # dict.ltr.txt order, after <s> <pad> </s> <unk>
    final_dropout: float = 0.0  # on the encoder output, before the projection
    freeze_updates: int = 10000  # fairseq freeze_finetune_updates: only the head trains before this
    reuse_head: bool = True  # --init with a CTC head: keep it (rows matched by token) instead of a new one

    def validate(self, prefix: str = "ctc") -> None:
        _prob(prefix + ".final_dropout", self.final_dropout)
        if self.freeze_updates < 0:
            raise ConfigError(f"{prefix}.freeze_updates must be >= 0")
        if "|" not in self.letters or len(set(self.letters)) != len(self.letters):
            raise ConfigError(f"{prefix}.letters must hold the word boundary '|' and no character twice")


@dataclass(frozen=True)
class AsrDataConfig:
    """Utterances -> batches. Utterances are never cropped (the transcript covers all of it)."""

    sample_rate: int = 16000
    max_batch_seconds: float = 200.0  # padded seconds per batch (fairseq max_tokens 3.2M samples)
    min_seconds: float = 0.0  # shorter training utterances are left out
    max_seconds: float = 35.0  # longer training utterances are left out (LibriSpeech's longest is ~35 s)
    num_buckets: int = 0  # 0: sort by length inside a shuffled pool (see BucketBatchSampler)
    num_workers: int = 0
    # zero-mean unit-variance per utterance (fairseq `normalize`); None: as the --init model was trained
    # (scratch: the architecture preset's data.normalize). A value that differs from a trained --init's is
    # refused (build.normalization_mismatch). Stored with the model, so evaluation matches.
    normalize: bool | None = None
    unknown_chars: str = "error"  # transcript characters the vocabulary cannot spell: "error" | "skip" (utterance)

    def validate(self, prefix: str = "data") -> None:
        if self.sample_rate <= 0 or self.max_batch_seconds <= 0:
            raise ConfigError(f"{prefix}.sample_rate and max_batch_seconds must be positive")
        if self.unknown_chars not in ("error", "skip"):
            raise ConfigError(f"{prefix}.unknown_chars: '{self.unknown_chars}' is not one of error, skip")
        if not 0 <= self.min_seconds < self.max_seconds:
            raise ConfigError(f"{prefix}: need 0 <= min_seconds < max_seconds")


@dataclass(frozen=True)
class AsrOptimConfig:
    """Adam with fairseq's tri-stage schedule: warm up from init_lr_scale * lr, hold lr, decay to
    final_lr_scale * lr (exponentially), over phase_ratio of max_steps."""

    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_steps: int = 13000  # fairseq max_update
    phase_ratio: tuple[float, float, float] = (0.1, 0.4, 0.5)
    init_lr_scale: float = 0.01
    final_lr_scale: float = 0.05
    clip_norm: float = 0.0  # 0: no clipping
    grad_accum: int = 1  # fairseq update_freq (times the number of GPUs, on one device)

    def validate(self, prefix: str = "optim") -> None:
        if self.lr <= 0 or self.max_steps <= 0 or self.grad_accum < 1:
            raise ConfigError(f"{prefix}: lr and max_steps must be > 0, grad_accum >= 1")
        if any(r < 0 for r in self.phase_ratio) or abs(sum(self.phase_ratio) - 1.0) > 1e-6:
            raise ConfigError(f"{prefix}.phase_ratio must be three non-negative shares summing to 1")
        if not (0 < self.init_lr_scale <= 1 and 0 < self.final_lr_scale <= 1):
            raise ConfigError(f"{prefix}: init_lr_scale and final_lr_scale must be in (0, 1]")


@dataclass(frozen=True)
class ValidConfig:
    """Validation WER during training (greedy decoding)."""

    every: int = 1000  # updates between validations; 0: only at the end
    max_utterances: int = 0  # 0: the whole valid subset
    max_batch_seconds: float = 400.0

    def validate(self, prefix: str = "valid") -> None:
        if self.every < 0 or self.max_utterances < 0 or self.max_batch_seconds <= 0:
            raise ConfigError(f"{prefix}: every and max_utterances must be >= 0, max_batch_seconds > 0")


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything a CTC fine-tuning run needs; a CTC checkpoint stores it beside the weights."""

    scratch_architecture: str = "base"  # pretraining preset/YAML whose `model` --init scratch builds
    encoder: EncoderOverrides = field(default_factory=EncoderOverrides)
    masking: MaskingConfig = FINETUNE_MASKING
    ctc: CTCConfig = field(default_factory=CTCConfig)
    data: AsrDataConfig = field(default_factory=AsrDataConfig)
    optim: AsrOptimConfig = field(default_factory=AsrOptimConfig)
    valid: ValidConfig = field(default_factory=ValidConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> FinetuneConfig:
        for f in fields(self):
            value = getattr(self, f.name)
            if hasattr(value, "validate"):
                value.validate(f.name)
        return self


def _prob(where: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}: {value} is not a probability in [0, 1]")


def load_finetune_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FinetuneConfig:
    """A preset name (`asr_tiny`, `asr_10m`, ...) or YAML file, `key=value` overrides, validated."""
    data = load_yaml(resolve_config_path(path)) if path is not None else {}
    data = merge(data, parse_overrides(overrides))
    return from_dict(FinetuneConfig, data).validate()
