"""Branch probe: extract a model's features once, then score many rules without rerunning `fit`.

`extract` runs a pretraining checkpoint once over every clip of a generalisation suite
(benchmarks/generalisation.py makes them) and keeps, per 2 s scoring window (hop 1 s, as `fit`): the
`spectral` embedding of the default frontend, the mean and std over time of every conv block's output
(what the `learned` scorer pools), each block's output averaged in `--frame-ms` frames, and the mean and
std over time of every Transformer layer's output. `score` fits each rule per section on the normal
training windows only, scores the test clips (a clip's score is the mean over its windows, as in
`evaluate`) and prints the mean AUC / pAUC over the sections, plus the per-section AUC with `-v`:

    python benchmarks/branch_probe.py extract --model runs/pretrain_s9/ckpt_7000 \
        --suite-dir runs/suites/dev --out runs/probe/dev.npz
    python benchmarks/branch_probe.py score runs/probe/dev.npz

`extract-extra` adds, next to an `extract` output, session 12's statistics (skewness, log kurtosis, top
1 % mean, log std, log std of the difference over time of every channel of conv blocks 0-3, and block 0 in
5 ms frames), which `score` then reads too:

    python benchmarks/branch_probe.py extract-extra --model runs/pretrain_s9/ckpt_7000 \
        --suite-dir runs/suites/dev runs/probe/dev.npz

`extract-frames` keeps every 20 ms frame of Transformer layers 0 and 4 and of the latent features (session
13's frame-level rules; about 700 MB per suite):

    python benchmarks/branch_probe.py extract-frames --model runs/pretrain_s9/ckpt_7000 \
        --suite-dir runs/suites/dev runs/probe/dev.npz

`spectral` and `learned` (the session-11 default: pooled blocks 0 + 2 and the rhythm of block 2) reproduce
`evaluate`'s columns of the same model; the session-12 default (+ the rhythm of block 0 in 5 ms frames) is
the rule `SESSION12` (session 13 adds variants of its channel groups and lags). Fusion rules z-score
each branch on cross-fitted (4 folds of training clips) normal scores, as `fit` calibrates the ensemble;
`oracle` picks per section the branch with the higher test AUC: it reads the labels, so it is not a
scorer but the ceiling of any rule that chooses one branch per section. The "z per domain" rows z-score
each test clip on the cross-fitted normals of its own DCASE domain: they read the test clips' domains, so
they bound what any domain-wise normalisation of a branch's score could give. Rules are chosen on the dev
suite; the held-out suite is scored once, after.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.covariance import LedoitWolf, ShrunkCovariance

from aiot_w2v2.anomaly.clips import clip_windows
from aiot_w2v2.anomaly.embedder import Rhythm, conv_block_step, log_kurtosis, time_stats
from aiot_w2v2.anomaly.fit import resolve_checkpoint
from aiot_w2v2.anomaly.metrics import auc_pauc
from aiot_w2v2.anomaly.scoring_model import ScoringConfig, make_frontend
from aiot_w2v2.checkpoint import load_pretrained

FOLDS = 4
SESSION12 = "learned + rhythm of block 0 (5 ms frames, lags 5-80 ms)"  # the `learned` default since session 12


class Probe(NamedTuple):
    """A model opened for extraction: `fit`'s default frontend over it and the suite's clips."""
    w2v: torch.nn.Module  # the wav2vec 2.0 model (feature encoder + Transformer)
    cfg: ScoringConfig
    frontend: torch.nn.Module
    meta: pd.DataFrame
    time_major: bool

    @property
    def blocks(self) -> torch.nn.ModuleList:
        return self.w2v.feature_extractor.blocks

    def windows(self, suite_dir: Path):
        """(clip index, its 2 s scoring windows (W, S) as `fit` cuts them), clip by clip."""
        win, hop = int(self.cfg.window_seconds * 16000), int(self.cfg.hop_seconds * 16000)
        for k, path in enumerate(self.meta["path"]):
            yield k, torch.from_numpy(clip_windows(suite_dir / path, win, hop, self.frontend.min_samples))

    def transformer(self, feats: torch.Tensor) -> list[torch.Tensor]:
        """The latent features (B, T, C) -> every Transformer layer's output."""
        h = self.w2v.layer_norm(feats)
        return self.w2v.encoder(self.w2v.post_extract_proj(h) if self.w2v.post_extract_proj is not None else h, None)


def open_probe(model: str, suite_dir: Path) -> Probe:
    cfg = ScoringConfig(scorers=("mahalanobis",), ensemble=()).validate()
    pre = load_pretrained(resolve_checkpoint(model)).eval()
    frontend = make_frontend(pre, cfg).eval()
    w2v = pre.wav2vec2
    meta = pd.read_csv(suite_dir / "metadata.csv")
    return Probe(w2v, cfg, frontend, meta, w2v.feature_extractor.blocks[0].time_major)


def extract(model: str, suite_dir: Path, out: Path, frame_ms: float) -> None:
    probe = open_probe(model, suite_dir)
    blocks, time_major, meta = probe.blocks, probe.time_major, probe.meta
    spec, pooled, hidden, owner = [], [], [], []
    frames: list[list[np.ndarray]] = [[] for _ in blocks]
    t0 = time.time()
    for k, w in probe.windows(suite_dir):
        with torch.no_grad():
            spec.append(probe.frontend(w).embedding.numpy())
            x = w[:, :, None] if time_major else w[:, None, :]
            stats, stride = [], 1
            for i, block in enumerate(blocks):
                x, _ = conv_block_step(block, x, time_major)
                stride *= block.stride
                stats.append(time_stats(x, time_major).numpy())
                channels_first = x.transpose(1, 2) if time_major else x  # (B, C, T)
                pool = max(1, round(frame_ms * 16 / stride))
                frames[i].append(F.avg_pool1d(channels_first, pool, pool).transpose(1, 2).numpy().astype(np.float16))
            states = probe.transformer(x if time_major else x.transpose(1, 2))
            hidden.append(np.stack([torch.cat([s.mean(1), s.std(1)], 1).numpy() for s in states], 1))
        pooled.append(np.stack(stats, 1))  # (W, blocks, 2C)
        owner += [k] * w.shape[0]
        if k % 200 == 0:
            print(f"{k}/{len(meta)} clips, {time.time() - t0:.0f} s", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, spectral=np.concatenate(spec), pooled=np.concatenate(pooled), hidden=np.concatenate(hidden),
             owner=np.array(owner), meta=meta.to_csv(index=False),
             **{f"frames{i}": np.concatenate(f) for i, f in enumerate(frames)})
    print(f"{out}: {len(meta)} clips, {len(owner)} windows, {time.time() - t0:.0f} s", file=sys.stderr)


EXTRA_BLOCKS = 4  # conv blocks 0-3 (the early blocks carry `learned`)


def extract_extra(model: str, suite_dir: Path, out: Path) -> None:
    """Session 12's extra pooled statistics, per window in the same order as `extract`: per channel of conv
    blocks 0-3 the skewness, log kurtosis, mean of the top 1 % of frames, log std and log std of the first
    difference over time (`hos`: W x 5 x 4 x C), and block 0 averaged in 5 ms frames (`f5`)."""
    probe = open_probe(model, suite_dir)
    blocks, time_major, meta = probe.blocks, probe.time_major, probe.meta
    hos, f5 = [], []
    for k, w in probe.windows(suite_dir):
        with torch.no_grad():
            x = w[:, :, None] if time_major else w[:, None, :]
            stats = []
            for i in range(EXTRA_BLOCKS):
                x, _ = conv_block_step(blocks[i], x, time_major)
                o = x if time_major else x.transpose(1, 2)  # (B, T, C)
                sd = o.std(1, keepdim=True) + 1e-6
                z = (o - o.mean(1, keepdim=True)) / sd
                stats.append(torch.stack([(z**3).mean(1), log_kurtosis(x, time_major),
                                          torch.topk(o, max(1, o.shape[1] // 100), dim=1).values.mean(1),
                                          torch.log(sd[:, 0]), torch.log((o[:, 1:] - o[:, :-1]).std(1) + 1e-6)], 1))
                if i == 0:
                    f5.append(F.avg_pool1d(o.transpose(1, 2), 16, 16).transpose(1, 2).numpy().astype(np.float16))
            hos.append(torch.stack(stats, 2).numpy())  # (B, 5, blocks, C)
        if k % 200 == 0:
            print(f"{k}/{len(meta)} clips", file=sys.stderr)
    np.savez(out, hos=np.concatenate(hos), f5=np.concatenate(f5))


def extract_frames(model: str, suite_dir: Path, out: Path) -> None:
    """Session 13: per window in the order of `extract`, every 20 ms frame of Transformer layers 0 and 4 and
    of the latent features (the last conv block's output), float16 (`h0`, `h4`, `feats`: W x T x C)."""
    probe = open_probe(model, suite_dir)
    kept: dict[str, list[np.ndarray]] = {"h0": [], "h4": [], "feats": []}
    for _, w in probe.windows(suite_dir):
        with torch.no_grad():
            x = w[:, :, None] if probe.time_major else w[:, None, :]
            for block in probe.blocks:
                x, _ = conv_block_step(block, x, probe.time_major)
            feats = x if probe.time_major else x.transpose(1, 2)
            states = probe.transformer(feats)
        for key, v in (("h0", states[0]), ("h4", states[4]), ("feats", feats)):
            kept[key].append(v.numpy().astype(np.float16))
    np.savez(out, **{k: np.concatenate(v) for k, v in kept.items()})


def extra_path(npz: Path) -> Path:
    return npz.with_name(npz.stem + "_extra.npz")


def frames_path(npz: Path) -> Path:
    return npz.with_name(npz.stem + "_frames.npz")


# ---------------------------------------------------------------------------------------------------
# scoring


def mahalanobis(train: np.ndarray, test: np.ndarray, shrinkage: float | None, standardise: bool) -> np.ndarray:
    """As `scorers.fit_stats` / `_fit_learned`: [standardise,] shrunk covariance (None = Ledoit-Wolf)."""
    train, test = train.astype(np.float64), test.astype(np.float64)
    if standardise:
        mu, sd = train.mean(0), train.std(0) + 1e-6
        train, test = (train - mu) / sd, (test - mu) / sd
    cov = (LedoitWolf() if shrinkage is None else ShrunkCovariance(shrinkage=shrinkage)).fit(train)
    d = test - cov.location_
    return np.sqrt(np.maximum(np.einsum("nd,dk,nk->n", d, cov.precision_, d), 0.0))


def knn(train: np.ndarray, test: np.ndarray, k: int) -> np.ndarray:
    """1 - mean cosine similarity of the standardised window to its k nearest normal windows."""
    mu, sd = train.mean(0), train.std(0) + 1e-6
    a = (train - mu) / sd
    b = (test - mu) / sd
    a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-8
    b /= np.linalg.norm(b, axis=1, keepdims=True) + 1e-8
    return 1.0 - np.sort(b @ a.T, 1)[:, -k:].mean(1)


def rhythm(frames: np.ndarray, lags: tuple[int, ...] = (1, 2, 4, 8, 16, 32), groups: int = 4) -> np.ndarray:
    """(W, T, C) stored frames -> (W, groups * len(lags)): the `learned` scorer's `Rhythm` of them (the frames
    are already the block's output averaged in `--frame-ms`, so no further pooling)."""
    x = torch.from_numpy(frames.astype(np.float32))
    return Rhythm(block=0, pool=1, lags=lags, groups=groups)(x, time_major=True).numpy()


def frame_gauss(frames: np.ndarray, tr: np.ndarray, te: np.ndarray, top: float = 0.1, fit_frames: int = 0
                ) -> np.ndarray:
    """One Gaussian over every training frame (a random `fit_frames` of them if > 0); a window's score = mean
    of its `top` worst frame distances."""
    C = frames.shape[2]
    T = frames.shape[1]
    train = frames[tr].reshape(-1, C).astype(np.float32)
    if 0 < fit_frames < len(train):
        train = train[np.random.default_rng(0).choice(len(train), fit_frames, replace=False)]
    d = mahalanobis(train, frames[te].reshape(-1, C).astype(np.float32), None, True).reshape(len(te), T)
    return np.sort(d, 1)[:, -max(1, int(T * top)):].mean(1)


Rule = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (train windows, test windows) -> test window scores


def domain_mahalanobis(x: np.ndarray, dom: np.ndarray, shrinkage: float | None, standardise: bool, nearest: bool
                       ) -> Rule:
    """DCASE 2021+ domains: the source Gaussian, and the target domain's few training windows, scored by
    the smaller distance. `nearest` False: one within-domain covariance, min over the two domain means;
    True: the source Gaussian vs the nearest target training window in its whitened space."""
    def rule(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        a, b = x[tr].astype(np.float64), x[te].astype(np.float64)
        if standardise:
            mu, sd = a.mean(0), a.std(0) + 1e-6
            a, b = (a - mu) / sd, (b - mu) / sd
        src, tgt = a[dom[tr] == "source"], a[dom[tr] == "target"]
        centred = [src - src.mean(0)] + ([] if nearest or not len(tgt) else [tgt - tgt.mean(0)])
        est = LedoitWolf(assume_centered=True) if shrinkage is None else \
            ShrunkCovariance(shrinkage=shrinkage, assume_centered=True)
        P = est.fit(np.concatenate(centred)).precision_
        d_src = np.einsum("nd,dk,nk->n", b - src.mean(0), P, b - src.mean(0))
        if not len(tgt):
            return np.sqrt(np.maximum(d_src, 0.0))
        if nearest:
            L = np.linalg.cholesky(P + 1e-9 * np.eye(len(P)))
            bw, tw = b @ L, tgt @ L
            d_tgt = ((bw**2).sum(1)[:, None] - 2 * bw @ tw.T + (tw**2).sum(1)[None]).min(1)
        else:
            d_tgt = np.einsum("nd,dk,nk->n", b - tgt.mean(0), P, b - tgt.mean(0))
        return np.sqrt(np.maximum(np.minimum(d_src, d_tgt), 0.0))
    return rule


def extra_rules(d: dict[str, np.ndarray], learned: np.ndarray, maha: Callable[..., Rule]) -> dict[str, Rule]:
    """Session 12: higher-order pooled statistics and a fine rhythm of the early blocks (`extract-extra`)."""
    W = len(learned)
    hos, out = d["hos"], {}
    for j, name in enumerate(("skewness", "log kurtosis", "top 1 % mean", "log std", "log std of the difference")):
        out[f"learned + {name} of blocks 0+2"] = maha(np.concatenate([learned, hos[:, j, [0, 2]].reshape(W, -1)], 1))
        out[f"{name} of blocks 0-3 alone"] = maha(hos[:, j].reshape(W, -1))
    fine = rhythm(d["f5"], lags=(1, 2, 3, 4, 6, 8, 12, 16))  # 5 ms frames: lags 5-80 ms
    kurt0 = hos[:, 1, 0]
    out["learned + log kurtosis of block 0"] = maha(np.concatenate([learned, kurt0], 1))
    out[SESSION12] = maha(np.concatenate([learned, fine], 1))
    out["learned + rhythm of block 0 (lags 5-80 ms, powers of 2)"] = maha(
        np.concatenate([learned, rhythm(d["f5"], lags=(1, 2, 4, 8, 16))], 1))
    out["learned + rhythm of block 0 + log kurtosis of block 0"] = maha(np.concatenate([learned, fine, kurt0], 1))
    for i in (0, 1, 4):  # session 13: the context network beside it
        out[f"{SESSION12} + transformer layer {i}"] = maha(np.concatenate([learned, fine, d["hidden"][:, i]], 1))
    for groups, lags, label in ((8, (1, 2, 3, 4, 6, 8, 12, 16), "8 groups"),  # session 13: its channel groups and lags
                                (4, (1, 2, 3, 4, 6, 8, 12, 16, 24, 32), "lags 5-160 ms"),
                                (8, (1, 2, 3, 4, 6, 8, 12, 16, 24, 32), "8 groups, lags 5-160 ms")):
        out[f"{SESSION12}, {label}"] = maha(np.concatenate([learned, rhythm(d["f5"], lags, groups)], 1))
    return out


def rules(d: dict[str, np.ndarray]) -> dict[str, Rule]:
    spec, pooled, hidden = d["spectral"], d["pooled"], d["hidden"]
    W = len(spec)
    learned = pooled[:, [0, 2]].reshape(W, -1)  # the `learned` scorer before session 11
    slow2 = d["frames2"].astype(np.float64).std(1)
    maha = lambda x, sh=None, st=True: lambda tr, te: mahalanobis(x[tr], x[te], sh, st)  # noqa: E731
    out: dict[str, Rule] = {"spectral": maha(spec, 1e-3, False),
                            "learned": maha(np.concatenate([learned, rhythm(d["frames2"])], 1)),
                            "learned blocks 0+2 (without the rhythm)": maha(learned)}
    out |= {f"learned block {b}": maha(pooled[:, b]) for b in range(pooled.shape[1])}
    out["learned blocks 0+1+2"] = maha(pooled[:, [0, 1, 2]].reshape(W, -1))
    out["learned blocks 0+2+4"] = maha(pooled[:, [0, 2, 4]].reshape(W, -1))
    out["blocks 0+2 + slow std block 2"] = maha(np.concatenate([learned, slow2], 1))
    out["learned + slow std block 2"] = maha(np.concatenate([learned, rhythm(d["frames2"]), slow2], 1))
    out["blocks 0+2 + rhythm block 6"] = maha(np.concatenate([learned, rhythm(d["frames6"])], 1))
    out |= {f"transformer layer {i}": maha(hidden[:, i]) for i in range(hidden.shape[1])}
    out["frame Gaussian block 2 (top 10%)"] = lambda tr, te: frame_gauss(d["frames2"], tr, te)
    out["blocks 0+2 kNN (k=1)"] = lambda tr, te: knn(learned[tr], learned[te], 1)
    out["joint Gaussian spectral + blocks 0+2"] = maha(np.concatenate([spec, learned], 1), 0.05)
    now = np.concatenate([learned, rhythm(d["frames2"])], 1)  # the `learned` default (session 11)
    for name, x, sh, st in (("spectral", spec, 1e-3, False), ("learned", now, None, True)):
        out[f"{name}, min over the domain means"] = domain_mahalanobis(x, d["domain"], sh, st, False)
        out[f"{name}, source Gaussian or nearest target window"] = domain_mahalanobis(x, d["domain"], sh, st, True)
    for sh, st in ((1e-4, False), (1e-2, False), (0.05, False), (0.2, False), (None, False), (1e-3, True),
                   (None, True)):  # session 13: `spectral`'s covariance
        out[f"spectral, shrinkage {sh or 'Ledoit-Wolf'}{', standardised' if st else ''}"] = maha(spec, sh, st)
    if "hos" in d:
        out |= extra_rules(d, now, maha)
    for key in ("h0", "h4", "feats") if "feats" in d else ():  # session 13: every 20 ms frame (`extract-frames`)
        for top in (1.0, 0.1):
            out[f"frame Gaussian {key} (top {top:.0%})"] = (
                lambda tr, te, x=d[key], q=top: frame_gauss(x, tr, te, q, fit_frames=8000))
    return out


def clip_domains(meta: pd.DataFrame) -> np.ndarray:
    """Each clip's DCASE domain ("source" for a suite without domains)."""
    return meta["domain"].astype(str).values if "domain" in meta else np.full(len(meta), "source")


class Section(NamedTuple):
    oof: np.ndarray  # cross-fitted scores of the normal training clips
    test: np.ndarray  # test clip scores
    y: np.ndarray  # test labels (1 = anomaly)
    oof_domain: np.ndarray  # DCASE domain of each training / test clip
    test_domain: np.ndarray


def section_scores(d: dict[str, np.ndarray], meta: pd.DataFrame, rule: Rule, rng: np.random.Generator
                   ) -> list[Section]:
    """Per section: cross-fitted normal training clip scores, test clip scores and labels, domains."""
    owner = d["owner"]
    windows = lambda clips: np.flatnonzero(np.isin(owner, clips))  # noqa: E731

    def clip_mean(tr: np.ndarray, te: np.ndarray) -> pd.Series:
        wte = windows(te)
        return pd.Series(rule(windows(tr), wte)).groupby(owner[wte]).mean()

    out, dom = [], clip_domains(meta)
    for _, g in meta.groupby(["machine", "machine_id"]):
        tr, te = g.index[g.split == "train"].values, g.index[g.split == "test"].values
        oof = pd.concat([clip_mean(np.setdiff1d(tr, f), f) for f in np.array_split(rng.permutation(tr), FOLDS)])
        test = clip_mean(tr, te)
        out.append(Section(oof.values, test.values, (meta.loc[test.index, "label"] == "anomaly").astype(int).values,
                           dom[oof.index], dom[test.index]))
    return out


def per_domain_z(sec: Section) -> np.ndarray:
    """Test scores z-scored on the cross-fitted normals of their own domain (the target's mean, the source's
    spread: 6 target clips are too few for a spread). It reads each test clip's domain, which DCASE 2022+
    evaluation data hides: the bound of any domain-wise score normalisation, not a scorer."""
    src = sec.oof[sec.oof_domain == "source"]
    tgt = sec.oof[sec.oof_domain == "target"]
    mean = np.where(sec.test_domain == "target", tgt.mean() if len(tgt) else src.mean(), src.mean())
    return (sec.test - mean) / (src.std() + 1e-12)


def mean_z(a: np.ndarray, b: np.ndarray, w: float) -> np.ndarray:
    return a + w * b


def fusion(first: list[Section], second: list[Section], w: float = 1.0,
           fuse: Callable[[np.ndarray, np.ndarray, float], np.ndarray] = mean_z) -> list[tuple[float, float]]:
    """Per section, (AUC, pAUC) of `fuse` of the two branches' test scores, each z-scored on its own
    cross-fitted normal scores (as `fit` calibrates the ensemble)."""
    zs = lambda sec: (sec.test - sec.oof.mean()) / (sec.oof.std() + 1e-12)  # noqa: E731
    return [auc_pauc(a.y, fuse(zs(a), zs(b), w)) for a, b in zip(first, second, strict=True)]


def summary(per_section: list[np.ndarray]) -> tuple[float, float, np.ndarray]:
    r = np.array(per_section)  # (sections, 2)
    return float(r[:, 0].mean()), float(r[:, 1].mean()), r[:, 0]


def score(path: Path, verbose: bool, only: list[str] | None) -> pd.DataFrame:
    z = np.load(path)
    d = {k: z[k] for k in z.files if k != "meta"}
    meta = pd.read_csv(io.StringIO(str(z["meta"])))
    d["domain"] = clip_domains(meta)[d["owner"]]
    for extra in (extra_path(path), frames_path(path)):
        if extra.exists():
            d |= dict(np.load(extra))
    rows, kept = [], {}
    for name, rule in rules(d).items():
        if only and name not in only and name not in ("spectral", "learned"):
            continue
        t0 = time.time()
        kept[name] = section_scores(d, meta, rule, np.random.default_rng(0))
        auc, pauc, per = summary([auc_pauc(sec.y, sec.test) for sec in kept[name]])
        rows.append((name, auc, pauc, per, time.time() - t0))
    spec, lrn = kept["spectral"], kept["learned"]
    fusions = [("fusion: mean z (the ensemble column)", lrn, 1.0, mean_z),
               ("fusion: z spectral + 0.35 z learned", lrn, 0.35, mean_z)]
    if SESSION12 in kept:
        fusions += [("fusion: mean z with the session-12 learned", kept[SESSION12], 1.0, mean_z),
                    ("fusion: z spectral + max(z session-12 learned, 0)", kept[SESSION12], 1.0,
                     lambda a, b, w: a + w * np.maximum(b, 0.0)),
                    ("fusion: max of the two z", kept[SESSION12], 1.0, lambda a, b, w: np.maximum(a, w * b))]
    for label, other, w, fuse in fusions:
        rows.append((label, *summary(fusion(spec, other, w, fuse)), 0.0))
    for name in ("spectral", SESSION12):
        if name in kept:
            rows.append((f"{name}, z per domain (reads test domains: a bound)",
                         *summary([auc_pauc(sec.y, per_domain_z(sec)) for sec in kept[name]]), 0.0))
    best = [max(auc_pauc(a.y, a.test), auc_pauc(a.y, b.test)) for a, b in zip(spec, lrn, strict=True)]
    rows.append(("oracle: the better branch per section (reads labels)", *summary(best), 0.0))
    df = pd.DataFrame(rows, columns=["rule", "AUC", "pAUC", "per-section AUC", "s"])
    if verbose:
        df["per-section AUC"] = df["per-section AUC"].map(lambda a: " ".join(f"{v:.2f}" for v in a))
    else:
        df = df.drop(columns="per-section AUC")
    return df


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract", help="run a model over a suite once")
    e.add_argument("--model", required=True, help="pretraining run folder or checkpoint folder")
    e.add_argument("--suite-dir", required=True, type=Path, help="a generalisation suite (metadata.csv + clips)")
    e.add_argument("--out", required=True, type=Path, help="the .npz to write")
    e.add_argument("--frame-ms", type=float, default=20.0, help="frame length of the stored block outputs")
    for name, what, suffix in (("extract-extra", "session 12's extra statistics of conv blocks 0-3", "extra"),
                               ("extract-frames", "session 13's 20 ms frames of the Transformer", "frames")):
        x = sub.add_parser(name, help=f"{what}, beside NPZ")
        x.add_argument("--model", required=True, help="the model NPZ was extracted with")
        x.add_argument("--suite-dir", required=True, type=Path, help="the suite NPZ was extracted from")
        x.add_argument("npz", type=Path, help=f"an `extract` output; writes NPZ_{suffix}.npz next to it")
    s = sub.add_parser("score", help="score every rule on an extracted suite")
    s.add_argument("npz", type=Path)
    s.add_argument("-v", "--verbose", action="store_true", help="also print each section's AUC")
    s.add_argument("--rule", action="append", help="only these rules (repeatable; spectral and learned always run)")
    args = p.parse_args(argv)
    if args.cmd == "extract":
        extract(args.model, args.suite_dir, args.out, args.frame_ms)
    elif args.cmd == "extract-extra":
        extract_extra(args.model, args.suite_dir, extra_path(args.npz))
    elif args.cmd == "extract-frames":
        extract_frames(args.model, args.suite_dir, frames_path(args.npz))
    else:
        with pd.option_context("display.max_colwidth", 80, "display.width", 200):
            print(score(args.npz, args.verbose, args.rule).to_string(index=False, float_format="%.3f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
