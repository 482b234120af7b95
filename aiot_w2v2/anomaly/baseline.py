"""The DCASE 2020 Task 2 autoencoder baseline, in PyTorch: the reference every scorer is compared to.

As the Keras original (`dcase2020_task2_baseline`, `keras_model.py`, `00_train.py`, `01_test.py`):
- input: 5 stacked log-mel frames, 128 mels -> 640 values (`aiot_w2v2.features`);
- model: Dense 640 -> 128 -> 128 -> 128 -> 128 -> 8 -> 128 -> 128 -> 128 -> 128 -> 640, every
  layer but the last followed by BatchNorm + ReLU (the bottleneck too); Keras defaults reproduced:
  Glorot-uniform weights, zero biases, BatchNorm eps 1e-3 and momentum 0.99 (0.01 in torch terms),
  Adam lr 1e-3 with eps 1e-7;
- training: one model per machine TYPE on the vectors of all its IDs' normal training clips, MSE,
  100 epochs, batch 512, `validation_split=0.1` (Keras keeps the LAST 10 % of the vectors, taken
  before shuffling, for validation; so do we), training vectors reshuffled every epoch;
- score of a clip: mean over its vectors of the per-vector mean squared reconstruction error.

Added, as the DCASE 2021+ baselines do: a decision threshold, the 90th percentile of a gamma
distribution fitted to the training clips' scores (`metrics.fit_threshold`). The 2021 baseline fits
one per machine type; we fit one per machine ID, as the bundles do, and use the machine type's fit
for test IDs without training clips. Differences left: a final batch of one vector is skipped in
that epoch (BatchNorm cannot normalise one sample), and float32 throughout.

`run_baseline` is the whole job behind `aiot-w2v2 baseline --data DIR --out REPORT`.
"""

from __future__ import annotations

import json
import logging
import platform
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from ..data.manifest import build_manifest
from ..features import LogMelConfig, files_to_vectors
from .metrics import extended_results, fit_threshold_info, id_key, results_table, write_dcase_csvs
from .report import print_summary, write_report

log = logging.getLogger(__name__)

SCORER = "ae_baseline"
SCORE_COLUMNS = ("path", "machine", "machine_id", "label", "domain", "scorer", "score", "threshold", "decision")


@dataclass(frozen=True)
class BaselineConfig:
    """Settings of the baseline (`baseline.yaml` of DCASE 2020 Task 2, plus the 2021 threshold)."""

    epochs: int = 100
    batch_size: int = 512
    lr: float = 1e-3
    validation_split: float = 0.1  # the last fraction of the vectors, as Keras
    hidden_dim: int = 128
    bottleneck_dim: int = 8
    n_hidden: int = 4  # Dense+BN+ReLU layers of hidden_dim on each side of the bottleneck
    threshold_percentile: float = 0.9  # DCASE 2021 baseline: decision_threshold 0.9
    features: LogMelConfig = field(default_factory=LogMelConfig)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "hidden_dim", "bottleneck_dim", "n_hidden"):
            if getattr(self, name) <= 0:
                raise ValueError(f"BaselineConfig.{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.validation_split < 1.0:
            raise ValueError(f"BaselineConfig.validation_split must be in [0, 1), got {self.validation_split}")


# ---------------------------------------------------------------------------------------------------
# model


class DenseBlock(nn.Module):
    """Keras `Dense -> BatchNormalization -> Activation('relu')` with Keras' defaults."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm = nn.BatchNorm1d(out_dim, eps=1e-3, momentum=0.01)  # Keras: epsilon 1e-3, momentum 0.99

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.linear(x)))  # (B, out_dim)


class DenseAutoencoder(nn.Module):
    """The DCASE 2020 baseline autoencoder: [B, input_dim] -> [B, input_dim]."""

    def __init__(self, input_dim: int = 640, hidden_dim: int = 128, bottleneck_dim: int = 8, n_hidden: int = 4,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * n_hidden + [bottleneck_dim] + [hidden_dim] * n_hidden
        self.blocks = nn.Sequential(*(DenseBlock(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)))
        self.output = nn.Linear(hidden_dim, input_dim)  # linear, no normalisation
        for m in self.modules():  # Keras Dense defaults: glorot_uniform kernel, zero bias
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight, generator=generator)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.blocks(x))  # (B, input_dim)


# ---------------------------------------------------------------------------------------------------
# training and scoring


def train_autoencoder(vectors: np.ndarray, cfg: BaselineConfig = BaselineConfig(),
                      generator: torch.Generator | None = None, progress: bool = False,
                      desc: str = "AE") -> tuple[DenseAutoencoder, list[dict[str, float]]]:
    """Fit the autoencoder on `vectors` [N, dims] as Keras' `model.fit(x, x, ...)` would.

    Returns the model (eval mode) and one history row per epoch: epoch, loss (mean batch loss
    weighted by batch size, as Keras reports it), val_loss (NaN without validation vectors).
    """
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be [N, dims], got shape {vectors.shape}")
    x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))  # (N, D)
    split_at = int(len(x) * (1.0 - cfg.validation_split))  # Keras: the last fraction validates
    x_train, x_val = x[:split_at], x[split_at:]
    if len(x_train) < 2:
        raise ValueError(f"{desc}: {len(x_train)} training vectors; need at least 2 (BatchNorm)")
    model = DenseAutoencoder(x.shape[1], cfg.hidden_dim, cfg.bottleneck_dim, cfg.n_hidden, generator=generator)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=1e-7)  # Keras' Adam epsilon
    history: list[dict[str, float]] = []
    bar = tqdm(range(1, cfg.epochs + 1), desc=desc, unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        perm = torch.randperm(len(x_train), generator=generator)
        total, seen = 0.0, 0
        for start in range(0, len(perm), cfg.batch_size):
            idx = perm[start:start + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm cannot normalise a batch of one; reshuffled next epoch
                continue
            batch = x_train[idx]  # (B, D)
            loss = nn.functional.mse_loss(model(batch), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        val_loss = float(vector_errors(model, x_val.numpy()).mean()) if len(x_val) else float("nan")
        history.append(dict(epoch=epoch, loss=total / seen, val_loss=val_loss))
        bar.set_postfix(loss=f"{total / seen:.3g}", val_loss=f"{val_loss:.3g}")
    model.eval()
    return model, history


def vector_errors(model: nn.Module, vectors: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Per-vector mean squared reconstruction error in eval mode: [N, D] -> [N] (float64)."""
    was_training = model.training
    model.eval()
    out = []
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size]  # (B, D)
            out.append(((model(batch) - batch) ** 2).mean(dim=1).double())  # (B,)
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.empty(0)


def clip_scores(model: nn.Module, vectors_per_clip: list[np.ndarray]) -> np.ndarray:
    """Anomaly score per clip: the mean of its vectors' errors; NaN for a clip too short for one vector."""
    lengths = np.array([len(v) for v in vectors_per_clip])
    if lengths.sum() == 0:
        return np.full(len(vectors_per_clip), np.nan)
    errors = vector_errors(model, np.concatenate([v for v in vectors_per_clip if len(v)]))  # (sum N,)
    sums = np.add.reduceat(errors, np.r_[0, np.cumsum(lengths[lengths > 0])[:-1]])
    scores = np.full(len(vectors_per_clip), np.nan)
    scores[lengths > 0] = sums / lengths[lengths > 0]
    return scores


def _machine_seed(seed: int, machine: str) -> int:
    """A seed per (seed, machine type): adding or removing machines leaves the others' runs unchanged."""
    return int(np.random.SeedSequence([seed, zlib.crc32(machine.encode())]).generate_state(1)[0])


def _thresholds(train: pd.DataFrame, cfg: BaselineConfig, test_ids: list[str]) -> dict[str, tuple[float, str]]:
    """Gamma threshold per machine ID (value, note) from the training clips' scores; IDs without
    training clips get the machine type's fit."""
    out: dict[str, tuple[float, str]] = {}
    machine_fit = fit_threshold_info(train["score"], percentile=cfg.threshold_percentile)
    for machine_id in sorted(set(train["machine_id"]) | set(test_ids)):
        s = train.loc[train["machine_id"] == machine_id, "score"]
        if len(s):
            fit = fit_threshold_info(s, percentile=cfg.threshold_percentile)
            out[machine_id] = (fit.value, fit.note)
        else:
            out[machine_id] = (machine_fit.value, "no training clips of this ID: machine type's threshold")
    return out


def _plot_history(history: pd.DataFrame, out_png: Path) -> Path:
    machines = list(dict.fromkeys(history["machine"]))
    cols = min(4, len(machines))
    rows = -(-len(machines) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, machine in zip(axes.flat, machines, strict=False):
        h = history[history["machine"] == machine]
        ax.plot(h["epoch"], h["loss"], label="train")
        if h["val_loss"].notna().any():
            ax.plot(h["epoch"], h["val_loss"], label="validation")
        ax.set(title=f"{machine}: autoencoder MSE", xlabel="epoch", ylabel="MSE (dB²)", yscale="log")
        ax.legend()
    for ax in list(axes.flat)[len(machines):]:
        ax.set_axis_off()
    fig.savefig(out_png, dpi=90)
    return out_png


# ---------------------------------------------------------------------------------------------------
# the job


def run_baseline(data_dir: str | Path, out_dir: str | Path, epochs: int = 100, seed: int = 0,
                 progress: bool = True, cfg: BaselineConfig | None = None, threads: int | None = 1) -> pd.DataFrame:
    """Train and evaluate the DCASE 2020 autoencoder baseline on a DCASE-layout folder.

    `data_dir` holds `<machine>/train/*.wav` and `<machine>/test/*.wav` (DCASE 2020 or 2021+ names,
    see `data.manifest`). Writes into `out_dir`:
    `results.csv` (machine,machine_id,scorer,auc,pauc; scorer "ae_baseline"), `results_extended.csv`
    (harmonic means, per-domain rows, precision/recall/F1 at the gamma threshold, notes), `scores.csv`
    (one row per test clip), the DCASE `anomaly_score_*.csv` / `decision_result_*.csv`,
    `training_log.csv` and `training_curves.png`, `baseline.json` (settings, timings) and
    `report.html`; prints a per-ID summary. Deterministic for a given seed (and thread count).
    Returns the results.csv table. Test clips without labels are scored; their metrics are NaN.

    `threads`: torch intra-op threads for the run (restored afterwards; None = leave as is). One by
    default: the layers are small (512 x 640 x 128 matmuls), so more threads gain little, and on a
    shared CPU OpenMP threads waiting for each other made an epoch 20x slower in our measurements.
    """
    if threads is None:
        return _run_baseline(data_dir, out_dir, epochs, seed, progress, cfg)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run_baseline(data_dir, out_dir, epochs, seed, progress, cfg)
    finally:
        torch.set_num_threads(before)


def _run_baseline(data_dir: str | Path, out_dir: str | Path, epochs: int, seed: int, progress: bool,
                  cfg: BaselineConfig | None) -> pd.DataFrame:
    cfg = replace(cfg or BaselineConfig(), epochs=epochs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    manifest = build_manifest(data_dir)
    manifest["machine_id"] = manifest["machine_id"].map(id_key)
    train_all = manifest[manifest["split"] == "train"]
    test_all = manifest[manifest["split"] == "test"]
    machines = sorted(set(train_all["machine"]) & set(test_all["machine"]))
    for m in sorted(set(test_all["machine"]) - set(train_all["machine"])):
        log.warning("%s: test clips but no training clips; skipped", m)
    for m in sorted(set(train_all["machine"]) - set(test_all["machine"])):
        log.warning("%s: training clips but no test clips; skipped", m)
    if not machines:
        raise ValueError(f"{data_dir}: no machine type has both train/ and test/ clips (DCASE layout expected)")

    per_clip, history_rows, timings = [], [], {}
    for k, machine in enumerate(machines, 1):
        t0 = time.time()
        train = train_all[train_all["machine"] == machine].reset_index(drop=True)
        test = test_all[test_all["machine"] == machine].reset_index(drop=True)
        if progress:
            print(f"[{k}/{len(machines)}] {machine}: {len(train)} training clips, {len(test)} test clips")
        train_vecs = files_to_vectors(list(train["path"]), cfg.features, progress=progress, desc=f"{machine} train")
        vectors = np.concatenate(train_vecs)  # (sum of clip vectors, 640), clips in path order as the baseline
        generator = torch.Generator().manual_seed(_machine_seed(seed, machine))
        model, history = train_autoencoder(vectors, cfg, generator, progress=progress, desc=f"{machine} AE")
        history_rows += [dict(machine=machine) | h for h in history]
        train = train.assign(score=clip_scores(model, train_vecs))
        del vectors, train_vecs

        test_vecs = files_to_vectors(list(test["path"]), cfg.features, progress=progress, desc=f"{machine} test")
        test = test.assign(score=clip_scores(model, test_vecs), scorer=SCORER)
        thresholds = _thresholds(train, cfg, sorted(test["machine_id"].unique()))
        test["threshold"] = test["machine_id"].map({i: value for i, (value, _) in thresholds.items()})
        test["decision"] = (test["score"] > test["threshold"]).astype(int)
        for machine_id, (value, note) in thresholds.items():
            if note:
                log.info("%s %s threshold %.4g: %s", machine, machine_id, value, note)
        per_clip.append(test[list(SCORE_COLUMNS)])
        timings[machine] = round(time.time() - t0, 2)

    per_clip_df = pd.concat(per_clip, ignore_index=True)
    results = results_table(per_clip_df)
    results.to_csv(out / "results.csv", index=False)
    extended_results(per_clip_df).to_csv(out / "results_extended.csv", index=False)
    per_clip_df.to_csv(out / "scores.csv", index=False)
    write_dcase_csvs(per_clip_df, out, SCORER)
    history_df = pd.DataFrame(history_rows, columns=["machine", "epoch", "loss", "val_loss"])
    history_df.to_csv(out / "training_log.csv", index=False)
    curves = _plot_history(history_df, out / "training_curves.png")
    write_report(out, per_clip_df, results, title="DCASE 2020 Task 2 autoencoder baseline",
                 extra_figures={"Training curves": curves})
    total = round(time.time() - t_start, 2)
    info = dict(scorer=SCORER, data_dir=str(Path(data_dir).resolve()), seed=seed, config=asdict(cfg),
                seconds_per_machine=timings, seconds_total=total, torch=torch.__version__,
                torch_threads=torch.get_num_threads(), python=platform.python_version())
    (out / "baseline.json").write_text(json.dumps(info, indent=2) + "\n")

    if progress:
        print()
        print(f"DCASE 2020 autoencoder baseline: {len(machines)} machine types, {cfg.epochs} epochs, "
              f"{total:.0f} s ({', '.join(f'{m} {t:.0f} s' for m, t in timings.items())})")
        print_summary(results, per_id=True)
        print(f"report: {out / 'report.html'}")
    return results
