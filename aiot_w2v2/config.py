"""Configuration: frozen dataclasses with defaults in code; YAML files and `--set` only override.

Unknown keys and wrong types are errors that name the dotted key. The model architecture, the
pretraining objective (masking, quantizer schedule, losses), the training loop and the data pipeline
each get their own dataclass; `PretrainConfig` groups them for one run. Defaults are the paper's
BASE model with fairseq's defaults.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

ConvLayer = tuple[int, int, int]  # (channels, kernel, stride)
BASE_CONV: tuple[ConvLayer, ...] = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the dotted key."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of wav2vec 2.0 (fairseq names in comments where ours differ)."""

    # Feature encoder f: X -> Z
    conv_layers: tuple[ConvLayer, ...] = BASE_CONV  # fairseq conv_feature_layers
    extractor_mode: str = "group_norm"  # "group_norm" (BASE: GN on first layer) | "layer_norm" (LARGE)
    conv_bias: bool = False
    feature_grad_mult: float = 0.1  # scales the encoder's gradient (BASE 0.1, LARGE 1.0)
    # Context network g: Z -> C
    embed_dim: int = 768  # fairseq encoder_embed_dim
    num_layers: int = 12  # encoder_layers
    ffn_dim: int = 3072  # encoder_ffn_embed_dim
    num_heads: int = 12  # encoder_attention_heads
    layer_norm_first: bool = False  # False: post-LN (BASE); True: pre-LN (LARGE)
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    layerdrop: float = 0.05  # encoder_layerdrop
    dropout_input: float = 0.1  # on the projected features before masking
    dropout_features: float = 0.1  # on the unmasked features used as quantizer input
    conv_pos: int = 128  # relative positional conv kernel
    conv_pos_groups: int = 16
    # Quantization module Z -> Q (product quantizer, G groups x V entries)
    quantize_targets: bool = True
    latent_groups: int = 2  # G
    latent_vars: int = 320  # V
    latent_dim: int = 0  # total codevector dim (0: final_dim); each group holds latent_dim // G
    final_dim: int = 256  # dim of the space where c_t and q_t are compared
    codebook_init: str = "normal"  # "normal" (zero-mean) | "uniform" (U(0,1), as fairseq/HF)

    def validate(self, prefix: str = "model") -> None:
        if not self.conv_layers:
            raise ConfigError(f"{prefix}.conv_layers: needs at least one (channels, kernel, stride) layer")
        for i, layer in enumerate(self.conv_layers):
            if len(layer) != 3 or any(int(v) <= 0 for v in layer):
                raise ConfigError(f"{prefix}.conv_layers[{i}]: expected positive (channels, kernel, stride)")
        _choice(prefix + ".extractor_mode", self.extractor_mode, ("group_norm", "layer_norm"))
        _choice(prefix + ".codebook_init", self.codebook_init, ("normal", "uniform"))
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"{prefix}.embed_dim ({self.embed_dim}) must divide by num_heads ({self.num_heads})")
        if self.embed_dim % self.conv_pos_groups:
            raise ConfigError(f"{prefix}.embed_dim must divide by conv_pos_groups ({self.conv_pos_groups})")
        if self.codevector_dim % self.latent_groups:
            raise ConfigError(f"{prefix}.latent_dim ({self.codevector_dim}) must divide by latent_groups")
        for name in ("dropout", "attention_dropout", "activation_dropout", "layerdrop", "dropout_input",
                     "dropout_features"):
            _prob(f"{prefix}.{name}", getattr(self, name))
        for name in ("embed_dim", "num_layers", "ffn_dim", "num_heads", "conv_pos", "conv_pos_groups",
                     "latent_groups", "latent_vars", "final_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{prefix}.{name} must be positive")

    @property
    def codevector_dim(self) -> int:
        return self.latent_dim if self.latent_dim > 0 else self.final_dim

    @property
    def conv_dim(self) -> int:
        return self.conv_layers[-1][0]


@dataclass(frozen=True)
class MaskingConfig:
    """Span masking of the latent features (Section 3.1 of the paper)."""

    mask_prob: float = 0.065  # p: probability that a frame starts a span (fairseq mask_prob = p*M = 0.65)
    mask_length: int = 10  # M
    min_masks: int = 2  # fairseq mask_min_masks... the paper's minimum of spans per clip
    no_overlap: bool = False  # fairseq no_mask_overlap
    channel_prob: float = 0.0  # per-channel masking (fairseq mask_channel_prob, as probability of a start)
    channel_length: int = 10

    def validate(self, prefix: str = "masking") -> None:
        _prob(prefix + ".mask_prob", self.mask_prob)
        _prob(prefix + ".channel_prob", self.channel_prob)
        if self.mask_length < 1 or self.channel_length < 1:
            raise ConfigError(f"{prefix}.mask_length and channel_length must be >= 1")
        if self.min_masks < 0:
            raise ConfigError(f"{prefix}.min_masks must be >= 0")


@dataclass(frozen=True)
class LossConfig:
    """The pretraining objective: L = L_m + alpha * L_d + feature_penalty_weight * L_f."""

    num_negatives: int = 100  # K distractors from the same utterance
    cross_sample_negatives: int = 0  # extra distractors from other clips of the batch
    logit_temp: float = 0.1  # kappa, eq. 3
    # fairseq gives distractors whose codes equal the positive's a logit of -inf. That makes a collapsed
    # codebook look perfect (every distractor removed); False keeps them as wrong answers instead.
    mask_duplicate_negatives: bool = True
    diversity_weight: float = 0.1  # alpha, eq. 2
    feature_penalty_weight: float = 10.0  # L2 penalty on the encoder output
    # Gumbel temperature tau: max(start * decay^step, end)
    temp_start: float = 2.0
    temp_end: float = 0.5
    temp_decay: float = 0.999995

    def validate(self, prefix: str = "loss") -> None:
        if self.num_negatives < 0 or self.cross_sample_negatives < 0:
            raise ConfigError(f"{prefix}.num_negatives / cross_sample_negatives must be >= 0")
        if self.num_negatives + self.cross_sample_negatives == 0:
            raise ConfigError(f"{prefix}: needs at least one distractor (num_negatives or cross_sample_negatives)")
        if self.logit_temp <= 0:
            raise ConfigError(f"{prefix}.logit_temp must be > 0")
        if not (0 < self.temp_end <= self.temp_start) or not (0 < self.temp_decay <= 1):
            raise ConfigError(f"{prefix}: need 0 < temp_end <= temp_start and 0 < temp_decay <= 1")


@dataclass(frozen=True)
class DataConfig:
    """How audio becomes batches."""

    sample_rate: int = 16000
    max_sample_size: int = 250000  # random crop length in samples (fairseq max_sample_size)
    min_sample_size: int = 32000  # shorter clips are dropped from pretraining
    max_batch_seconds: float = 87.5  # batch by total audio seconds (fairseq max_tokens=1.4M samples)
    num_buckets: int = 0  # length buckets (0: sort by length within a shuffled pool)
    group_by: str = "none"  # "none" | "machine" | "machine_id": batches from one group only
    normalize: bool = False  # zero-mean unit-variance per clip (fairseq normalize; LARGE uses True)
    num_workers: int = 0

    def validate(self, prefix: str = "data") -> None:
        if self.sample_rate <= 0:
            raise ConfigError(f"{prefix}.sample_rate must be positive")
        if self.min_sample_size > self.max_sample_size:
            raise ConfigError(f"{prefix}.min_sample_size must be <= max_sample_size")
        if self.max_batch_seconds <= 0:
            raise ConfigError(f"{prefix}.max_batch_seconds must be positive")
        _choice(prefix + ".group_by", self.group_by, ("none", "machine", "machine_id"))


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup and polynomial decay (fairseq's recipe)."""

    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.01
    warmup_steps: int = 32000
    max_steps: int = 400000
    end_lr: float = 0.0
    power: float = 1.0
    clip_norm: float = 0.0  # 0: no clipping (fairseq BASE); LARGE uses 10... we default to none
    grad_accum: int = 1  # fairseq update_freq

    def validate(self, prefix: str = "optim") -> None:
        if self.lr <= 0 or self.max_steps <= 0 or self.grad_accum < 1 or self.warmup_steps < 0:
            raise ConfigError(f"{prefix}: lr, max_steps must be > 0, grad_accum >= 1, warmup_steps >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """The training loop: precision, seeds, logging, checkpoints."""

    seed: int = 1
    amp: str = "none"  # "none" | "bf16" | "fp16" (fp16/bf16 autocast on CUDA only)
    log_every: int = 10
    save_every: int = 1000
    max_minutes: float = 0.0  # stop early after this wall time (0: no limit)
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    tensorboard: bool = True

    def validate(self, prefix: str = "train") -> None:
        _choice(prefix + ".amp", self.amp, ("none", "bf16", "fp16"))
        _choice(prefix + ".device", self.device, ("auto", "cpu", "cuda"))
        if self.log_every < 1 or self.save_every < 1:
            raise ConfigError(f"{prefix}.log_every and save_every must be >= 1")


@dataclass(frozen=True)
class PretrainConfig:
    """Everything a pretraining run needs; a checkpoint stores this beside the weights."""

    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> PretrainConfig:
        for f in fields(self):
            getattr(self, f.name).validate(f.name)
        return self


# ----------------------------------------------------------------------------------------------
# dict <-> dataclass with type checking


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, JSON/YAML-friendly dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_hash(cfg: Any) -> str:
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def from_dict(cls: type, data: dict[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass `cls` from a (possibly partial) dict; unknown keys and bad types raise."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in data:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown config key '{where}' (known: {', '.join(sorted(known))})")
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            where = f"{prefix}.{f.name}" if prefix else f.name
            kwargs[f.name] = _coerce(hints[f.name], data[f.name], where)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(inner[0], value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`["optim.lr=1e-3", "model.num_layers=2"]` -> nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"override '{pair}' must look like key.sub=value")
        key, raw = pair.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A preset name (`tiny`, `base`, ...) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    preset = CONFIG_DIR / f"{name_or_path}.yaml"
    if preset.exists():
        return preset
    if p.exists():
        return p
    presets = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config '{name_or_path}' is neither a file nor a preset (presets: {', '.join(presets)})")


def load_yaml(path: str | Path) -> dict[str, Any]:
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = data.pop("extends", None)
    if base is not None:
        data = merge(load_yaml(resolve_config_path(base)), data)
    return data


def load_pretrain_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PretrainConfig:
    """Load a preset or YAML file, apply `key=value` overrides, validate."""
    data = load_yaml(resolve_config_path(path)) if path is not None else {}
    data = merge(data, parse_overrides(overrides))
    return from_dict(PretrainConfig, data).validate()


def _choice(where: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{where}: '{value}' is not one of {', '.join(allowed)}")


def _prob(where: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}: {value} is not a probability in [0, 1]")
