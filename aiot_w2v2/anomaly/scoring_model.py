"""`ScoringModel`: waveform windows -> one score per (machine ID, scorer), as one `nn.Module`.

The fitted statistics of every machine ID are buffers, so the module is saved with safetensors,
evaluated by `aiot-w2v2 evaluate` and traced to ONNX by `aiot-w2v2 export` unchanged. Output column
`e * len(scorers) + j` is machine ID `entries[e]`, scorer `scorers[j]`; `columns` names them
`"<machine>/<machine_id>/<scorer>"` (the bundle contract, docs/bundle.md).

A model folder (`aiot-w2v2 fit --out MODEL`) holds `scoring.safetensors` (all weights and
statistics) and `scoring.json` (format, configs, entries, thresholds, calibration, provenance).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..config import ConfigError, PretrainConfig, from_dict, load_yaml, merge, parse_overrides, to_dict
from ..model.wav2vec2 import Wav2Vec2ForPreTraining, Wav2Vec2Model
from .embedder import AnomalyEmbedder, ConvEmbedder, Embedder, LearnedExtras, Rhythm
from .finetune import AnomalyFinetuneConfig
from .frontend import ScoringFrontend, WindowFeatures
from .scorers import EMBEDDING_SCORERS, ENSEMBLE, SCORERS, score_windows

FORMAT, VERSION = "aiot-w2v2-scoring", 1
LEARNED_LAYERS = ("conv0", "conv2")  # the learned scorer's default layers (see ScoringConfig)
SHARED = "shared"  # the frontend key of the pretrained model shared by every machine type
WEIGHTS, META = "scoring.safetensors", "scoring.json"


@dataclass(frozen=True)
class ScoringConfig:
    """How `fit` builds the scorers (YAML-free: defaults here, `--set key=value` overrides)."""

    window_seconds: float = 2.0  # scoring window; clips are cut into windows, a clip's score is their mean
    hop_seconds: float = 1.0
    scorers: tuple[str, ...] = SCORERS
    # z-scored on out-of-fold normal scores and averaged: the fusion of the fixed branch and what the network
    # learned, so every report shows what fusing them gives. On the dev suite (GPU-pretrained tiny model)
    # 0.852 / 0.775 AUC / pAUC vs 0.829 / 0.794 for the earlier [mahalanobis, knn], both below `spectral`
    # alone (0.857 / 0.808), which is why Mahalanobis (= spectral) decides (benchmarks/RESULTS.md).
    ensemble: tuple[str, ...] = ("spectral", "learned")
    decision_scorer: str = "mahalanobis"  # the column that raises alerts on the edge and decides in evaluate
    embedding_layer: str = "conv0"  # conv<i> (pre-norm channel energies) or transformer<i> (mean+std)
    embedding_level: str = "relative"  # conv energies: "relative" removes the window's loudness
    energy_smoothing_ms: float = 80.0  # conv energies: smoothing before the std over time of their log
    # conv energies: the window's rhythm, the autocorrelation of the log energy of `envelope_bands` bands
    # (0 = off) in `envelope_frame_ms` frames at `envelope_lags_ms`. Mahalanobis 0.809 -> 0.861 on the
    # default synthetic set and 0.785 -> 0.851 on a held-out one (benchmarks/RESULTS.md).
    envelope_bands: int = 4
    envelope_frame_ms: float = 10.0
    envelope_lags_ms: tuple[float, ...] = (20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1000.0)
    # A log-mel branch beside the conv energies (0 = off): `mel_bins` HTK mel bands of `mel_fft`-point
    # Hann-windowed power spectra every `mel_hop_ms`; per window their mean log (relative like the conv
    # energies), the std over time of their log smoothed over `energy_smoothing_ms`, and the rhythm of
    # `envelope_bands` bands at `envelope_lags_ms`. Not part of wav2vec 2.0: the first conv layer's
    # 10-sample filters cannot resolve low tones. Mahalanobis 0.861 -> 0.899 on the default synthetic
    # set and 0.851 -> 0.894 on a held-out one (benchmarks/RESULTS.md, "Anomaly scoring", session 4).
    mel_bins: int = 64
    mel_fft: int = 1024
    mel_hop_ms: float = 20.0
    # Spectral kurtosis beside them (0 = off): `kurtosis_bands` HTK mel bands of `kurtosis_fft`-point power
    # spectra every `kurtosis_hop_ms`, and per band log(mean P^2 / (mean P)^2) over the window. Impacts,
    # slaps and crackle (short, quiet, repeated) make a band's short-time power heavy-tailed while its mean
    # hardly moves: the classic condition-monitoring statistic. Mahalanobis +0.02 on the default synthetic
    # set and +0.01 on a held-out one (benchmarks/RESULTS.md, "Anomaly scoring", session 5).
    kurtosis_bands: int = 24
    kurtosis_fft: int = 256
    kurtosis_hop_ms: float = 4.0
    mask_span: int = 10  # frames per masked span (M)
    mask_patterns: int = 5  # fixed mask patterns; together they cover every frame
    contrastive_topk: int = 0  # 0 = mean over frames, k > 0 = mean of the k worst frames
    bank_frames: int = 1024  # distractor bank per machine ID (contrastive_bank)
    knn_k: int = 1
    # Covariance shrinkage towards a scaled identity (None = Ledoit-Wolf's estimate). Small = the distance
    # is mostly the residual outside the subspace normal windows span: 0.794 vs 0.764 AUC with Ledoit-Wolf
    # on the default synthetic set (benchmarks/RESULTS.md, "Anomaly scoring").
    mahalanobis_shrinkage: float | None = 1e-3
    max_knn_windows: int = 4096
    code_smoothing: float = 0.5  # additive smoothing of the code counts
    folds: int = 4  # cross-fitting for calibration and thresholds (folds of training clips)
    # Continued pretraining per machine type on its normal training clips before fitting (0 = off): each
    # machine type then gets its own copy of the model (a bundle for one machine carries one).
    adapt_steps: int = 0
    adapt_lr: float = 1e-4
    # Anomaly fine-tuning before fitting (`finetune.steps` 0 = off): the `learned` scorer's embedding
    # (anomaly/finetune.py). Only with the shared model (not with adapt_steps).
    finetune: AnomalyFinetuneConfig = AnomalyFinetuneConfig()
    # The `learned` scorer without fine-tuning: the mean and std over time of these pretrained layers'
    # outputs (conv<i> after its norm, transformer<i>), concatenated; () = the final Transformer state.
    # Its distance: Mahalanobis of the standardised embedding, covariance shrunk by `learned_shrinkage`
    # (None = Ledoit-Wolf). Chosen on the dev suite (benchmarks/RESULTS.md, "Generalisation"): blocks 0 + 2
    # beat 0 + 2 + 4 by 0.015-0.023 mean AUC on three pretrained models (CPU 7000 updates, GPU 5090 / 20287).
    learned_layers: tuple[str, ...] = LEARNED_LAYERS
    learned_shrinkage: float | None = None
    # Appended to the `learned` embedding ("" = off): the rhythm of conv block `learned_rhythm_layer`'s
    # output, each channel's autocorrelation over time in `learned_rhythm_frame_ms` frames at
    # `learned_rhythm_lags_ms`, averaged within `learned_rhythm_groups` groups of channels (embedder.Rhythm).
    # Chosen on the dev suite (benchmarks/branch_probe.py): `learned` +0.012 to +0.028 mean AUC on four
    # models (random, CPU 2500 / 7000 / 9000 updates; benchmarks/RESULTS.md, "Generalisation"). Not with
    # finetune.part "transformer" (that embedding is the Transformer's states alone).
    learned_rhythm_layer: str = "conv2"
    learned_rhythm_frame_ms: float = 20.0
    learned_rhythm_lags_ms: tuple[float, ...] = (20.0, 40.0, 80.0, 160.0, 320.0, 640.0)
    learned_rhythm_groups: int = 4
    # Also appended (session 12, "" / () = off): a fine rhythm, of conv block `learned_fine_rhythm_layer` in
    # `learned_fine_rhythm_frame_ms` frames at `learned_fine_rhythm_lags_ms` (rotation-period scale; the same
    # channel groups), chosen on the dev suite (benchmarks/branch_probe.py: `learned` +0.007 on two models,
    # +0.019 on a random one); and, off by default, the log kurtosis over time of each channel of
    # `learned_kurtosis_layers` (how impulsive it is): it adds +0.072 to a random network's `learned` on dev but
    # only +0.008 / +0.014 to pretrained ones, so it measures the filter bank, not what pretraining learned
    # (benchmarks/RESULTS.md, "Generalisation", session 12).
    learned_fine_rhythm_layer: str = "conv0"
    learned_fine_rhythm_frame_ms: float = 5.0
    learned_fine_rhythm_lags_ms: tuple[float, ...] = (5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 80.0)
    learned_kurtosis_layers: tuple[str, ...] = ()
    threshold_percentile: float = 0.9  # gamma fit (DCASE baseline)
    batch_windows: int = 32
    seed: int = 0

    def validate(self) -> ScoringConfig:
        unknown = [s for s in self.scorers if s not in SCORERS]
        if unknown or not self.scorers:
            raise ConfigError(f"scorers: unknown {unknown} (known: {', '.join(SCORERS)})")
        for s in self.ensemble:
            if s not in self.scorers:
                raise ConfigError(f"ensemble: {s!r} is not among the scorers {list(self.scorers)}")
        if self.decision_scorer not in self.columns_per_entry():
            raise ConfigError(f"decision_scorer {self.decision_scorer!r}: one of {self.columns_per_entry()}")
        if self.window_seconds <= 0 or self.hop_seconds <= 0:
            raise ConfigError("window_seconds and hop_seconds must be > 0")
        if self.folds < 2:
            raise ConfigError(f"folds must be >= 2, got {self.folds}")
        if not 0 < self.threshold_percentile < 1:
            raise ConfigError(f"threshold_percentile must be in (0, 1), got {self.threshold_percentile}")
        for name in ("mask_span", "mask_patterns", "bank_frames", "knn_k", "max_knn_windows", "batch_windows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("mahalanobis_shrinkage", "learned_shrinkage"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ConfigError(f"{name} must be in [0, 1) or null, got {value}")
        for name in self.learned_layers:
            if not re.fullmatch(r"(conv|transformer)\d+", name):
                raise ConfigError(f"learned_layers: {name!r} is not conv<i> or transformer<i>")
        for prefix in ("learned_rhythm", "learned_fine_rhythm"):
            layer, frame_ms, lags = (getattr(self, f"{prefix}_{k}") for k in ("layer", "frame_ms", "lags_ms"))
            if layer and not re.fullmatch(r"conv\d+", layer):
                raise ConfigError(f"{prefix}_layer: {layer!r} is not conv<i> or '' (off)")
            if layer and (frame_ms <= 0 or not lags or min(lags) <= 0 or self.learned_rhythm_groups < 1):
                raise ConfigError(f"{prefix}_frame_ms and every lag in {prefix}_lags_ms must be > 0 and "
                                  f"learned_rhythm_groups >= 1 (got {frame_ms}, {list(lags)}, "
                                  f"{self.learned_rhythm_groups})")
        for name in self.learned_kurtosis_layers:
            if not re.fullmatch(r"conv\d+", name):
                raise ConfigError(f"learned_kurtosis_layers: {name!r} is not conv<i>")
        if self.envelope_bands < 0 or (self.envelope_bands and (self.envelope_frame_ms <= 0 or not self.envelope_lags_ms
                                                                or min(self.envelope_lags_ms) <= 0)):
            raise ConfigError("envelope_bands must be >= 0; with bands, envelope_frame_ms and every lag in "
                              f"envelope_lags_ms > 0 (got {self.envelope_frame_ms}, {list(self.envelope_lags_ms)})")
        self._check_spectrogram("mel_bins", "mel_fft", "mel_hop_ms")
        self._check_spectrogram("kurtosis_bands", "kurtosis_fft", "kurtosis_hop_ms")
        if self.mel_bins and self.envelope_bands > self.mel_bins:
            raise ConfigError(f"envelope_bands ({self.envelope_bands}) must be <= mel_bins ({self.mel_bins})")
        if self.adapt_steps < 0 or self.adapt_lr <= 0:
            raise ConfigError(f"adapt_steps must be >= 0 and adapt_lr > 0, got {self.adapt_steps}, {self.adapt_lr}")
        if self.contrastive_topk < 0 or self.code_smoothing <= 0:
            raise ConfigError("contrastive_topk must be >= 0 and code_smoothing > 0")
        if "spectral" in self.scorers and not self.embedding_layer.startswith("conv"):
            raise ConfigError(f"the spectral scorer reads a conv<i> embedding (fixed statistics); embedding_layer "
                              f"{self.embedding_layer!r} is learned: drop spectral from scorers")
        if self.finetuned() and self.adapt_steps > 0:
            raise ConfigError("finetune.steps and adapt_steps: one or the other (fine-tuning trains one embedder "
                              "shared by every machine type)")
        self.finetune.validate()
        if self.finetuned() and self.finetune.part == "conv" and (
                not self.learned_layers or len(self.learned_conv_layers()) != len(self.learned_layers)):
            raise ConfigError(f"finetune.part 'conv' fine-tunes the conv blocks learned_layers names: they must all "
                              f"be conv<i>, got {list(self.learned_layers)}")
        return self

    def learned_extras(self, w2v: Wav2Vec2Model) -> LearnedExtras | None:
        """What the `learned` embedding of `w2v` appends to its pooled statistics: the rhythms and the log
        kurtosis (None: all off, no learned scorer, or a Transformer fine-tuning, whose embedding is the
        Transformer's states alone). A block out of range or channel groups that do not divide its channels
        raise ValueError."""
        if "learned" not in self.scorers or (self.finetuned() and self.finetune.part == "transformer"):
            return None
        fe = w2v.feature_extractor
        rhythms = tuple(Rhythm.of(fe, int(layer[4:]), frame_ms, tuple(lags), self.learned_rhythm_groups, setting=prefix)
                        for prefix, layer, frame_ms, lags in (
                            ("learned_rhythm", self.learned_rhythm_layer, self.learned_rhythm_frame_ms,
                             self.learned_rhythm_lags_ms),
                            ("learned_fine_rhythm", self.learned_fine_rhythm_layer, self.learned_fine_rhythm_frame_ms,
                             self.learned_fine_rhythm_lags_ms)) if layer)
        kurtosis = tuple(int(name[4:]) for name in self.learned_kurtosis_layers)
        for i in kurtosis:
            if i >= len(fe.blocks):
                raise ValueError(f"learned_kurtosis_layers: conv{i} out of range conv0..conv{len(fe.blocks) - 1}")
        return LearnedExtras(rhythms, kurtosis) if rhythms or kurtosis else None

    def learned_conv_layers(self) -> tuple[int, ...]:
        """The block indices of the conv<i> entries of `learned_layers`."""
        return tuple(int(name[4:]) for name in self.learned_layers if name.startswith("conv"))

    def finetuned(self) -> bool:
        """Whether `fit` fine-tunes an embedder (the learned scorer reads it)."""
        return self.finetune.steps > 0 and "learned" in self.scorers

    def _check_spectrogram(self, bands_key: str, fft_key: str, hop_key: str) -> None:
        """A spectrogram branch's bands: 0 (off) or 2..n_fft/2+1, with n_fft >= 16 and a positive hop."""
        bands, n_fft, hop = getattr(self, bands_key), getattr(self, fft_key), getattr(self, hop_key)
        if bands < 0 or (bands and not (2 <= bands <= n_fft // 2 + 1 and n_fft >= 16 and hop > 0)):
            raise ConfigError(f"{bands_key} must be 0 (off) or in 2..{fft_key}/2+1, with {fft_key} >= 16 and "
                              f"{hop_key} > 0 (got {bands}, {n_fft}, {hop})")

    def needs_contrastive(self) -> bool:
        """Whether the frontend must run its masked passes (the costly part of scoring)."""
        return any(s.startswith("contrastive") for s in self.scorers)

    def needs_codes(self) -> bool:
        """Whether any scorer needs more than the embedding (codes, targets, the Transformer)."""
        return any(s not in EMBEDDING_SCORERS for s in self.scorers)

    def columns_per_entry(self) -> list[str]:
        return list(self.scorers) + ([ENSEMBLE] if self.ensemble else [])


# scoring.json written before the envelope (mel, kurtosis) settings existed was fitted without those features
LEGACY_DEFAULTS = {"envelope_bands": 0, "envelope_frame_ms": ScoringConfig.envelope_frame_ms,
                   "envelope_lags_ms": list(ScoringConfig.envelope_lags_ms), "mel_bins": 0,
                   "mel_fft": ScoringConfig.mel_fft, "mel_hop_ms": ScoringConfig.mel_hop_ms, "kurtosis_bands": 0,
                   "kurtosis_fft": ScoringConfig.kurtosis_fft, "kurtosis_hop_ms": ScoringConfig.kurtosis_hop_ms,
                   "finetune": {"steps": 0, "part": "transformer"}, "learned_layers": [], "learned_rhythm_layer": "",
                   "learned_fine_rhythm_layer": "", "learned_kurtosis_layers": []}


@dataclass
class ScoringMeta:
    """Everything in scoring.json besides the tensors."""

    config: ScoringConfig
    pretrain: PretrainConfig
    entries: list[tuple[str, str]]  # (machine, machine_id)
    sample_rate: int = 16000
    # entry -> scorer -> {"window": .., "clip": ..} (thresholds) / {"mean": .., "std": ..} (calibration)
    thresholds: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    calibration: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # provenance: run, config hash, counts, timings
    # the pretrained model copies: [SHARED], or one per machine type adapted by continued pretraining
    frontends: list[str] = field(default_factory=lambda: [SHARED])

    @property
    def window(self) -> int:
        return int(round(self.config.window_seconds * self.sample_rate))

    @property
    def hop(self) -> int:
        return int(round(self.config.hop_seconds * self.sample_rate))

    def to_json(self) -> dict[str, Any]:
        return dict(format=FORMAT, version=VERSION, sample_rate=self.sample_rate, config=to_dict(self.config),
                    pretrain=to_dict(self.pretrain), entries=[list(e) for e in self.entries],
                    thresholds=self.thresholds, calibration=self.calibration, info=self.info,
                    frontends=self.frontends)

    def frontend_of(self, machine: str) -> str:
        """The frontend that scores `machine`: its own adapted copy, else the shared model."""
        return machine if machine in self.frontends else SHARED


def load_scoring_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ScoringConfig:
    """Defaults, then a YAML file's keys, then `key=value` overrides; unknown keys are errors."""
    data: dict[str, Any] = load_yaml(path) if path else {}
    data = merge(data, parse_overrides(overrides))
    return from_dict(ScoringConfig, data, "scoring").validate()


def make_frontend(model: Wav2Vec2ForPreTraining, cfg: ScoringConfig,
                  embedder: Embedder | None = None) -> ScoringFrontend:
    """The frontend `cfg` describes, over `model` [and the fine-tuned `embedder` of the learned scorer]."""
    return ScoringFrontend(model, cfg.embedding_layer, cfg.embedding_level, cfg.mask_span, cfg.mask_patterns,
                           cfg.needs_contrastive(), cfg.energy_smoothing_ms, cfg.envelope_bands,
                           cfg.envelope_frame_ms, tuple(cfg.envelope_lags_ms), codes=cfg.needs_codes(),
                           mel_bins=cfg.mel_bins, mel_fft=cfg.mel_fft, mel_hop_ms=cfg.mel_hop_ms,
                           kurtosis_bands=cfg.kurtosis_bands, kurtosis_fft=cfg.kurtosis_fft,
                           kurtosis_hop_ms=cfg.kurtosis_hop_ms, learned="learned" in cfg.scorers, embedder=embedder,
                           learned_layers=tuple(cfg.learned_layers),
                           learned_extras=cfg.learned_extras(model.wav2vec2))


def entry_key(machine: str, machine_id: str) -> str:
    return f"{machine}/{machine_id}"


class ScoringModel(nn.Module):
    """audio (B, S) float32 at 16 kHz -> scores (B, len(entries) * n_columns), higher = more anomalous.

    `pretrained` is one model shared by every machine ID, or a dict {frontend key: model} with the keys
    of `meta.frontends` (machine types adapted by continued pretraining, and/or SHARED). `embedder`: the
    fine-tuned embedding of the learned scorer (with the shared model only).
    """

    def __init__(self, pretrained: Wav2Vec2ForPreTraining | Mapping[str, Wav2Vec2ForPreTraining], meta: ScoringMeta,
                 stats: dict[str, Tensor], embedder: Embedder | None = None) -> None:
        super().__init__()
        cfg = meta.config
        self.meta = meta
        models = {SHARED: pretrained} if isinstance(pretrained, nn.Module) else dict(pretrained)
        if sorted(models) != sorted(meta.frontends):
            raise ValueError(f"pretrained models for {sorted(models)}, but the meta lists {sorted(meta.frontends)}")
        if embedder is not None and list(models) != [SHARED]:
            raise ValueError("a fine-tuned embedder goes with the shared model only")
        self.frontends = nn.ModuleDict({key: make_frontend(models[key], cfg, embedder) for key in meta.frontends})
        # Runs of consecutive entries scored by the same frontend: (key, first entry, end).
        self.runs: list[tuple[str, int, int]] = []
        for e, (machine, _) in enumerate(meta.entries):
            key = meta.frontend_of(machine)
            if self.runs and self.runs[-1][0] == key:
                self.runs[-1] = (key, self.runs[-1][1], e + 1)
            else:
                self.runs.append((key, e, e + 1))
        for name, value in stats.items():
            self.register_buffer(f"stat_{name}", value)
        self.stat_names = tuple(stats)
        per_entry = cfg.columns_per_entry()
        members = [cfg.scorers.index(s) for s in cfg.ensemble]
        self.register_buffer("ens_index", torch.tensor(members, dtype=torch.long))
        mean = torch.zeros(len(meta.entries), len(cfg.scorers))
        std = torch.ones(len(meta.entries), len(cfg.scorers))
        for e, (machine, machine_id) in enumerate(meta.entries):
            cal = meta.calibration.get(entry_key(machine, machine_id), {})
            for j, s in enumerate(cfg.scorers):
                if s in cal:
                    mean[e, j], std[e, j] = cal[s]["mean"], max(cal[s]["std"], 1e-8)
        self.register_buffer("cal_mean", mean)
        self.register_buffer("cal_std", std)
        self.columns = [f"{entry_key(m, i)}/{s}" for m, i in meta.entries for s in per_entry]

    @property
    def embedder(self) -> Embedder | None:
        """The fine-tuned embedder of the learned scorer, if any (it lives in the shared frontend)."""
        return self.frontends[SHARED].embedder if SHARED in self.frontends else None

    @property
    def frontend(self) -> ScoringFrontend:
        """A frontend (they share architecture, window limits and kappa; weights differ when adapted)."""
        return next(iter(self.frontends.values()))

    def stats(self) -> dict[str, Tensor]:
        return {name: getattr(self, f"stat_{name}") for name in self.stat_names}

    def head(self, f: WindowFeatures, rows: slice | None = None) -> Tensor:
        """Features of B windows -> (B, E' * n_columns) for the entries `rows` (None: all)."""
        cfg = self.meta.config
        stats, cal_mean, cal_std = self.stats(), self.cal_mean, self.cal_std
        if rows is not None:  # only then: a traced slice of a buffer becomes a new, renamed constant
            stats = {k: v[rows] for k, v in stats.items()}
            cal_mean, cal_std = cal_mean[rows], cal_std[rows]
        parts = score_windows(f, stats, cfg.scorers, self.frontend.logit_temp, cfg.knn_k, cfg.contrastive_topk)
        scores = torch.stack([parts[s] for s in cfg.scorers], -1)  # (B, E', S)
        if cfg.ensemble:
            z = (scores - cal_mean[None]) / cal_std[None]
            scores = torch.cat([scores, z.index_select(2, self.ens_index).mean(-1, keepdim=True)], -1)
        return scores.flatten(1)

    def forward(self, audio: Tensor) -> Tensor:
        if len(self.runs) == 1:
            return self.head(self.frontends[self.runs[0][0]](audio))
        features: dict[str, WindowFeatures] = {}
        out = []
        for key, start, end in self.runs:
            if key not in features:
                features[key] = self.frontends[key](audio)
            out.append(self.head(features[key], slice(start, end)))
        return torch.cat(out, 1)


# ---------------------------------------------------------------------------------------------------
# save / load


def save_scoring_model(model: ScoringModel, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    (out / META).write_text(json.dumps(model.meta.to_json(), indent=2) + "\n")
    return out


def read_meta(path: str | Path) -> ScoringMeta:
    p = Path(path)
    try:
        raw = json.loads((p / META).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: not a scoring model (no {META}; make one with `aiot-w2v2 fit`)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p / META}: not valid JSON: {exc}") from exc
    if raw.get("format") != FORMAT:
        raise ValueError(f"{p / META}: format {raw.get('format')!r}, expected {FORMAT!r}")
    if int(raw.get("version", 0)) > VERSION:
        raise ValueError(f"{p / META}: version {raw['version']} is newer than this aiot-w2v2 reads ({VERSION})")
    config = dict(raw.get("config", {}))
    # Settings added later (at any depth) take the value older models were fitted with.
    for key, legacy in LEGACY_DEFAULTS.items():
        if key not in config:
            config[key] = legacy
        elif isinstance(legacy, dict):  # a section written before some of its keys existed
            config[key] = {**legacy, **config[key]}
    missing = sorted({f.name for f in fields(ScoringConfig)} - set(config))
    if missing:  # written before these settings existed: today's defaults may not be what it was fitted with
        warnings.warn(f"{p}: written by an older aiot-w2v2 without the scoring settings {', '.join(missing)}; "
                      "they take today's defaults, which may not match its fitted statistics: refit with "
                      "`aiot-w2v2 fit`", stacklevel=2)
    return ScoringMeta(config=from_dict(ScoringConfig, config, "scoring").validate(),
                       pretrain=from_dict(PretrainConfig, raw["pretrain"]).validate(),
                       entries=[(str(m), str(i)) for m, i in raw["entries"]], sample_rate=int(raw["sample_rate"]),
                       thresholds=raw.get("thresholds", {}), calibration=raw.get("calibration", {}),
                       info=raw.get("info", {}), frontends=list(raw.get("frontends", [SHARED])))


def pretrained_copies(meta: ScoringMeta) -> dict[str, Wav2Vec2ForPreTraining]:
    """Freshly initialised pretrained models, one per frontend of `meta` (to load a state dict into)."""
    pc = meta.pretrain
    return {key: Wav2Vec2ForPreTraining(pc.model, pc.masking, pc.loss) for key in meta.frontends}


def embedder_skeleton(meta: ScoringMeta) -> Embedder | None:
    """A freshly initialised embedder of `meta`'s shape (to load fine-tuned weights into); None if not fine-tuned."""
    cfg = meta.config
    if not cfg.finetuned():
        return None
    w2v = Wav2Vec2Model(meta.pretrain.model)
    if cfg.finetune.part == "conv":
        return ConvEmbedder(w2v, cfg.learned_conv_layers(), cfg.finetune.embedding_dim, extras=cfg.learned_extras(w2v))
    return AnomalyEmbedder(w2v, cfg.finetune.embedding_dim)


def load_scoring_model(path: str | Path) -> ScoringModel:
    """Rebuild a `ScoringModel` from a folder written by `save_scoring_model` (strict, eval mode)."""
    p = Path(path)
    meta = read_meta(p)
    state = load_file(str(p / WEIGHTS))
    stats = {k[len("stat_"):]: v for k, v in state.items() if k.startswith("stat_")}
    model = ScoringModel(pretrained_copies(meta), meta, stats, embedder_skeleton(meta))
    model.load_state_dict(state, strict=True)
    return model.eval()
