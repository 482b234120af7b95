"""`aiot-w2v2 fit`: fit the scorers of every machine ID on its normal training clips.

One loop: with `finetune.steps` > 0 first fine-tune the learned scorer's embedder on every normal
training clip (`finetune.py`; `MODEL/finetune` holds its resume state), then read the clips (bad ones
are reported and counted, never fatal), run the model once over every window (`ScoringFrontend`), then
per machine ID

1. cross-fit: split its clips into `folds`, fit the statistics on the other folds and score the
   held-out windows with the same functions the `ScoringModel` runs; these out-of-fold scores of
   normal clips give the ensemble's calibration (mean, std per scorer) and the decision thresholds
   (gamma fit, 90th percentile, per window for the edge and per clip for `evaluate`);
2. fit the final statistics on all its windows.

Fitting never sees test clips or labels. Only `split == train` clips labelled normal (or unlabelled)
are used. The result is a `ScoringModel` saved with `save_scoring_model`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..checkpoint import is_checkpoint, load_pretrained, read_config, resolve_run
from ..config import ConfigError, config_hash
from ..data.manifest import build_manifest
from ..model.wav2vec2 import Wav2Vec2ForPreTraining
from ..train.state import CHECKPOINT_LAST
from .adapt import adapt_model
from .clips import batches, length_batches, read_windows
from .embedder import Embedder
from .finetune import finetune_embedder
from .frontend import ScoringFrontend, WindowFeatures
from .metrics import fit_threshold_info, id_key
from .scorers import ENSEMBLE, fit_stats, score_windows, stack_stats
from .scoring_model import (
    SHARED,
    ScoringConfig,
    ScoringMeta,
    ScoringModel,
    entry_key,
    make_frontend,
    save_scoring_model,
)

log = logging.getLogger(__name__)


@dataclass
class _Window:
    clip: int  # index into the clip table
    embedding: np.ndarray  # (D,)
    codes: np.ndarray  # (T, G)
    targets: np.ndarray  # (T, F)
    context: np.ndarray  # (T, F)
    self_loss: np.ndarray  # (T,)
    learned: np.ndarray  # (L,)


def resolve_checkpoint(run: str | Path) -> Path:
    """A pretraining run folder (its checkpoint_last) or a checkpoint folder."""
    p = resolve_run(run, (CHECKPOINT_LAST,))
    if not is_checkpoint(p):
        raise FileNotFoundError(f"{run}: no aiot-w2v2 checkpoint here or in {Path(run) / CHECKPOINT_LAST} "
                                "(pretrain one with `aiot-w2v2 pretrain`, or convert one with `aiot-w2v2 convert`)")
    return p


def _bank(windows: list[_Window], n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    targets = np.concatenate([w.targets for w in windows])
    codes = np.concatenate([w.codes for w in windows])
    if targets.shape[0] > n:
        keep = np.sort(rng.choice(targets.shape[0], n, replace=False))
        targets, codes = targets[keep], codes[keep]
    return targets, codes


def _fit(windows: list[_Window], cfg: ScoringConfig, num_vars: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    bank_t, bank_c = _bank(windows, cfg.bank_frames, rng)
    learned = np.stack([w.learned for w in windows]) if "learned" in cfg.scorers else None
    return fit_stats(np.stack([w.embedding for w in windows]), [w.codes for w in windows], bank_t, bank_c,
                     num_vars, cfg.code_smoothing, cfg.max_knn_windows, rng, cfg.mahalanobis_shrinkage, learned,
                     cfg.learned_shrinkage)


def _score(frontend: ScoringFrontend, stats: dict[str, np.ndarray], windows: list[_Window],
           cfg: ScoringConfig) -> dict[str, np.ndarray]:
    """Scores of already-extracted windows, without running the model again."""
    s = stack_stats([stats])
    out = {name: np.zeros(len(windows)) for name in cfg.scorers}
    for part in length_batches([w.codes.shape[0] for w in windows], cfg.batch_windows):
        f = _features_of([windows[i] for i in part])
        for name, v in score_windows(f, s, cfg.scorers, frontend.logit_temp, cfg.knn_k, cfg.contrastive_topk).items():
            out[name][part] = v[:, 0].numpy()
    return out


def _features_of(windows: list[_Window]) -> WindowFeatures:
    """Rebuild the frontend's `WindowFeatures` of stored windows (equal lengths)."""
    return WindowFeatures(torch.from_numpy(np.stack([w.embedding for w in windows])),
                          torch.from_numpy(np.stack([w.codes for w in windows])),
                          torch.from_numpy(np.stack([w.context for w in windows])),
                          torch.from_numpy(np.stack([w.targets for w in windows])),
                          torch.from_numpy(np.stack([w.self_loss for w in windows])),
                          torch.from_numpy(np.stack([w.learned for w in windows])))


def fit_scoring(run: str | Path, data_dirs: list[str | Path] | str | Path, out: str | Path,
                cfg: ScoringConfig | None = None, progress: bool = True, resume: bool = False) -> ScoringModel:
    """Fit the scorers on the normal training clips under `data_dirs`; save and return the model.

    `resume`: continue the fine-tuning state in `out/finetune` (an interrupted fit) instead of restarting it."""
    cfg = (cfg or ScoringConfig()).validate()
    t0 = time.time()
    ckpt = resolve_checkpoint(run)
    meta_ckpt, pcfg = read_config(ckpt)
    pretrained = load_pretrained(ckpt)
    if not isinstance(pretrained, Wav2Vec2ForPreTraining):
        raise ValueError(f"{ckpt}: a {meta_ckpt.get('kind')} checkpoint; the scorers need a pretraining "
                         "checkpoint (with its quantizer)")
    pretrained.eval()

    dirs = [data_dirs] if isinstance(data_dirs, (str, Path)) else list(data_dirs)
    manifest = build_manifest(dirs)
    train = manifest[(manifest["split"] == "train") & (manifest["label"].fillna("normal") == "normal")]
    if train.empty:
        raise ValueError(f"{data_dirs}: no normal training clips (<machine>/train/normal_*.wav expected)")
    train = train.assign(machine_id=train["machine_id"].map(id_key)).reset_index(drop=True)
    entries = sorted({(str(m), str(i)) for m, i in zip(train["machine"], train["machine_id"], strict=True)})
    sr = 16000
    window, hop = int(round(cfg.window_seconds * sr)), int(round(cfg.hop_seconds * sr))
    if progress:
        print(f"fit: {len(train)} normal training clips, {len(entries)} machine IDs, "
              f"windows of {cfg.window_seconds:g} s every {cfg.hop_seconds:g} s, scorers: {', '.join(cfg.scorers)}")

    # The model(s) the scorers read: the pretrained one, or per machine type a copy adapted by
    # continued pretraining on that type's normal training clips.
    models: dict[str, Wav2Vec2ForPreTraining] = {SHARED: pretrained}
    adapted: dict[str, dict] = {}
    if cfg.adapt_steps > 0:
        models = {}
        for k, machine in enumerate(sorted({m for m, _ in entries})):
            paths = list(train.loc[train["machine"] == machine, "path"])
            models[machine], adapted[machine] = adapt_model(pretrained, paths, pcfg, cfg.adapt_steps, cfg.adapt_lr,
                                                            seed=cfg.seed * 1000 + k, progress=progress,
                                                            desc=f"adapt {machine}")
    frontends = {key: make_frontend(m, cfg) for key, m in models.items()}
    shortest = max(f.min_samples for f in frontends.values())
    if window < shortest:
        raise ConfigError(f"window_seconds {cfg.window_seconds:g}: these settings need windows of at least "
                          f"{shortest / sr:.3f} s (two mask spans, two energy_smoothing_ms periods, one mel_fft, "
                          "two kurtosis frames)")

    embedder: Embedder | None = None
    finetuned: dict | None = None
    if cfg.finetuned():
        embedder, ft_summary = finetune_embedder(
            pretrained, pcfg, list(train["path"]), _class_keys(train, cfg),
            [entry_key(str(m), str(i)) for m, i in zip(train["machine"], train["machine_id"], strict=True)],
            cfg.finetune, out, conv_layers=cfg.learned_conv_layers(), extras=cfg.learned_extras(pretrained.wav2vec2),
            resume=resume, progress=progress)
        finetuned = asdict(ft_summary)
        frontends = {key: make_frontend(m, cfg, embedder) for key, m in models.items()}

    num_vars = pretrained.quantizer.num_vars
    per_entry_stats, thresholds, calibration, counts = [], {}, {}, {}
    all_errors: dict[str, str] = {}
    for e, (machine, machine_id) in enumerate(entries):
        key = entry_key(machine, machine_id)
        frontend = frontends[machine if machine in frontends else SHARED]
        rows = train[(train["machine"] == machine) & (train["machine_id"] == machine_id)]
        per_clip, errors = extract(frontend, list(rows["path"]), window, hop, cfg, progress, key)
        all_errors.update(errors)
        clips = [c for c in per_clip if c]
        if len(clips) < 1 or sum(len(c) for c in clips) < 2:
            raise ValueError(f"{key}: no usable training clips ({len(errors)} failed: "
                             f"{next(iter(errors.values()), 'none')})")
        windows = [w for c in clips for w in c]
        seed = cfg.seed * 1000 + e

        # 1. Cross-fitted scores of normal windows (calibration, thresholds).
        oof: dict[str, list[float]] = {s: [] for s in cfg.scorers}
        oof_clip: list[int] = []
        n_folds = min(cfg.folds, len(clips))
        if n_folds >= 2:
            fold_of = np.random.default_rng(seed).permutation(len(clips)) % n_folds
            for k in range(n_folds):
                fit_w = [w for c, f in zip(clips, fold_of, strict=True) if f != k for w in c]
                held = [(ci, w) for ci, (c, f) in enumerate(zip(clips, fold_of, strict=True)) if f == k for w in c]
                if len(fit_w) < 2:
                    continue
                sc = _score(frontend, _fit(fit_w, cfg, num_vars, seed), [w for _, w in held], cfg)
                for s in cfg.scorers:
                    oof[s] += list(sc[s])
                oof_clip += [ci for ci, _ in held]
        note = ""
        if not oof_clip:  # one clip: in-sample scores, said so
            sc = _score(frontend, _fit(windows, cfg, num_vars, seed), windows, cfg)
            oof = {s: list(sc[s]) for s in cfg.scorers}
            oof_clip = [0] * len(windows)
            note = "a single training clip: calibration and thresholds from in-sample scores"
            log.warning("%s: %s", key, note)
        cal = {s: dict(mean=float(np.mean(oof[s])), std=float(np.std(oof[s]) + 1e-8)) for s in cfg.scorers}
        if cfg.ensemble:
            z = np.mean([(np.asarray(oof[s]) - cal[s]["mean"]) / cal[s]["std"] for s in cfg.ensemble], 0)
            oof[ENSEMBLE] = list(z)
        thresholds[key] = {}
        clip_ids = np.asarray(oof_clip)
        for s, values in oof.items():
            v = np.asarray(values, dtype=float)
            clip_means = np.array([v[clip_ids == c].mean() for c in np.unique(clip_ids)])
            thresholds[key][s] = dict(
                window=float(fit_threshold_info(v, percentile=cfg.threshold_percentile).value),
                clip=float(fit_threshold_info(clip_means, percentile=cfg.threshold_percentile).value))
        calibration[key] = cal
        counts[key] = dict(clips=len(clips), windows=len(windows), failed=len(errors), note=note)

        # 2. Final statistics on every window.
        per_entry_stats.append(_fit(windows, cfg, num_vars, seed))

    info = dict(run=str(Path(run).resolve()), checkpoint=str(ckpt.resolve()), config_hash=config_hash(pcfg),
                training_curves=str((ckpt.parent / "training_curves.png").resolve())
                if (ckpt.parent / "training_curves.png").exists() else None,
                data=[str(Path(d).resolve()) for d in dirs],
                counts=counts, failed_files=all_errors, adapted=adapted, finetune=finetuned,
                seconds=round(time.time() - t0, 1))
    meta = ScoringMeta(cfg, pcfg, entries, sr, thresholds, calibration, info, frontends=sorted(models))
    model = ScoringModel(models, meta, stack_stats(per_entry_stats), embedder).eval()
    save_scoring_model(model, out)
    if progress:
        _print_fit_summary(meta, Path(out))
    return model


def extract(frontend: ScoringFrontend, paths: list[str], window: int, hop: int, cfg: ScoringConfig,
            progress: bool = True, desc: str = "windows") -> tuple[list[list[_Window]], dict[str, str]]:
    """Per clip its windows' features; clips that fail are left empty and listed in `errors` (path -> reason)."""
    per_clip: list[list[_Window]] = [[] for _ in paths]
    flat, owner, errors = read_windows(paths, window, hop, frontend.min_samples)
    for reason in errors.values():
        log.warning("skipped %s", reason)
    bar = tqdm(total=len(flat), desc=desc, unit="win", disable=not progress)
    with torch.inference_mode():
        for idx, x in batches(flat, cfg.batch_windows):
            f = frontend(x)
            for j, i in enumerate(idx):
                per_clip[owner[i]].append(_Window(owner[i], f.embedding[j].numpy(), f.codes[j].numpy(),
                                                  f.targets[j].numpy(), f.context[j].numpy(),
                                                  f.self_loss[j].numpy(), f.learned[j].numpy()))
            bar.update(len(idx))
    bar.close()
    return per_clip, errors


def _class_keys(train: pd.DataFrame, cfg: ScoringConfig) -> list[str]:
    """Each clip's metadata class for fine-tuning: machine/ID, and its DCASE 2021+ domain when given."""
    keys = [entry_key(str(m), str(i)) for m, i in zip(train["machine"], train["machine_id"], strict=True)]
    if cfg.finetune.domain_classes and "domain" in train:
        keys = [k if d is None or pd.isna(d) else f"{k}/{d}" for k, d in zip(keys, train["domain"], strict=True)]
    return keys


def _print_fit_summary(meta: ScoringMeta, out: Path) -> None:
    rows = []
    for key, c in meta.info["counts"].items():
        th = meta.thresholds[key].get(meta.config.decision_scorer, {})
        rows.append(dict(machine_id=key, clips=c["clips"], windows=c["windows"], failed=c["failed"],
                         threshold_window=th.get("window"), threshold_clip=th.get("clip")))
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    failed = meta.info["failed_files"]
    if failed:
        print(f"{len(failed)} training file(s) skipped (listed in {out / 'scoring.json'}): "
              + "; ".join(list(failed.values())[:3]))
    print(f"fitted in {meta.info['seconds']:.0f} s -> {out}")
