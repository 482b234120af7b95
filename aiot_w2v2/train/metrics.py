"""Where the pretraining loop's numbers go: `RUN/metrics.csv`, TensorBoard (`RUN/tb/`), the progress bar.

`add` / `interval_row` turn the sums the loop collects over a log interval into one row of means
(across ranks too, through the `reduce` it is given); `MetricsLog` writes rows. On resume the CSV
keeps the rows up to the checkpoint's step and continues from there, and TensorBoard purges the
events logged after that step, so a run interrupted between two saves leaves no duplicate points.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

COLUMNS = (
    "step", "epoch", "loss", "contrastive", "diversity", "feature_penalty", "accuracy", "chance_accuracy",
    "code_perplexity",
    "prob_perplexity", "temperature", "lr", "negatives_equal_positive", "grad_norm", "loss_scale",
    "updates_per_s", "audio_s_per_s", "masked_frames", "wall_s",
)
METRICS_CSV = "metrics.csv"
TB_DIR = "tb"
# What the loop sums over an interval: n masked frames, batches, audio seconds, updates; loss parts and
# accuracy weighted by n; perplexities and the distractor share per batch; grad norm per update.
SUM_KEYS = ("n", "batches", "audio", "updates", "grad_norm", "loss", "contrastive", "diversity", "feature_penalty",
            "accuracy", "chance_accuracy", "code_perplexity", "prob_perplexity", "negatives_equal_positive")
FRAME_WEIGHTED = ("loss", "contrastive", "diversity", "feature_penalty", "accuracy", "chance_accuracy")
PER_BATCH = ("code_perplexity", "prob_perplexity", "negatives_equal_positive")


def add(sums: dict[str, float], **values: float) -> None:
    """sums[k] += v for each SUM_KEYS entry given."""
    for k, v in values.items():
        sums[k] = sums.get(k, 0.0) + v


def interval_row(sums: dict[str, float], seconds: float, world: int,
                 reduce: Callable[[list[float]], list[float]] = lambda v: v, **extra: float) -> dict[str, float]:
    """One row of means over an interval of `seconds`, summed over the `world` ranks by `reduce`.

    Loss parts and accuracy are weighted by masked frames (as the gradient is); perplexities are means
    over batches. `extra` (step, lr, temperature, ...) is copied in.
    """
    s = dict(zip(SUM_KEYS, reduce([sums.get(k, 0.0) for k in SUM_KEYS]), strict=True))
    n, b, u = max(s["n"], 1.0), max(s["batches"], 1.0), max(s["updates"] / world, 1.0)  # updates: per rank
    row = {k: s[k] / n if s["n"] > 0 else math.nan for k in FRAME_WEIGHTED}
    row.update({k: s[k] / b for k in PER_BATCH})
    row.update(grad_norm=s["grad_norm"] / world / u, masked_frames=s["n"],
               updates_per_s=u / max(seconds, 1e-9), audio_s_per_s=s["audio"] / max(seconds, 1e-9))
    row.update(extra)
    return row


class MetricsLog:
    """Append-only CSV (header once) plus optional TensorBoard scalars, one row per log interval."""

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, resume_step: int | None = None,
                 columns: Sequence[str] = COLUMNS) -> None:
        self.columns = tuple(columns)  # the CSV header (other loops, e.g. CTC fine-tuning, log other numbers)
        self.path = Path(run_dir) / METRICS_CSV
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, float]] = []
        if resume_step is not None and self.path.exists():
            self.rows = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
        # Rewrite (fresh run: empty; resume: the rows up to the checkpoint), then append line by line.
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)
        self._fh = open(self.path, "a", newline="")  # closed in close()
        self._csv = csv.DictWriter(self._fh, fieldnames=self.columns, extrasaction="ignore")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported only when used (slow import)

            # purge_step drops events at or after it that an interrupted run wrote past its checkpoint.
            purge = resume_step + 1 if resume_step is not None else None
            self._tb = SummaryWriter(str(Path(run_dir) / TB_DIR), purge_step=purge)

    def write(self, row: dict[str, Any]) -> None:
        clean = {k: float(row[k]) for k in self.columns if k in row}
        self.rows.append(clean)
        self._csv.writerow({k: _fmt(v) for k, v in clean.items()})
        self._fh.flush()
        if self._tb is not None:
            step = int(clean["step"])
            for key, value in clean.items():
                if key not in ("step", "epoch") and math.isfinite(value):
                    self._tb.add_scalar(f"train/{key}", value, step)
            self._tb.flush()

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a metrics CSV as floats (empty cells are skipped)."""
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items() if k is not None and v not in (None, "")}
                for row in csv.DictReader(fh)]


def postfix(row: dict[str, float]) -> dict[str, str]:
    """The few numbers shown beside the progress bar."""
    return {"loss": f"{row['loss']:.3f}", "acc": f"{row['accuracy']:.3f}", "ppl": f"{row['code_perplexity']:.1f}"}


def _fmt(v: float) -> str:
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.6g}"
