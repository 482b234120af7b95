"""Evaluation report: a self-contained `report.html` and a one-screen console summary.

`write_report` draws ROC curves (one panel per machine, one line per machine ID x scorer) and score
histograms (normal vs anomalous clips, one figure per machine: rows = IDs, columns = scorers) with
matplotlib (`Figure` objects, Agg canvas, no pyplot state), embeds them as base64 PNGs beside the
results table, and writes one HTML file that opens anywhere without its folder. `print_summary`
prints the machine-level `machine_id=all` rows as a table (scorers down, machines across).

It reads the per-clip scores and results tables of `anomaly.metrics`; it knows nothing about models.
"""

from __future__ import annotations

import base64
import html
import io
import math
import sys
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from .metrics import ALL, MAX_FPR, extended_results, id_key

_LABEL_COLOURS = {"normal": "tab:blue", "anomaly": "tab:red", "unlabeled": "tab:gray"}
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.note { color: #8a5300; }
"""


# ---------------------------------------------------------------------------------------------------
# tables


def _with_baseline(results_df: pd.DataFrame, baseline_df: pd.DataFrame | None) -> tuple[pd.DataFrame, list[str]]:
    """Stack results and baseline rows; a baseline scorer whose name clashes gets " (baseline)"."""
    scorers = list(dict.fromkeys(results_df["scorer"]))
    if baseline_df is None or baseline_df.empty:
        return results_df, scorers
    base = baseline_df.copy()
    base["scorer"] = [f"{s} (baseline)" if s in scorers else s for s in base["scorer"]]
    return pd.concat([results_df, base], ignore_index=True), scorers + list(dict.fromkeys(base["scorer"]))


def results_pivot(results_df: pd.DataFrame, baseline_df: pd.DataFrame | None = None,
                  per_id: bool = True) -> pd.DataFrame:
    """Rows (machine, machine_id), columns (scorer, AUC|pAUC); baseline scorers after the others.

    Without `per_id` only the `machine_id=all` rows, indexed by machine, plus a "mean" row (the
    arithmetic mean over machines).
    """
    df, scorers = _with_baseline(results_df, baseline_df)
    if not per_id:
        df = df[df["machine_id"] == ALL]
    table = df.pivot_table(index=["machine", "machine_id"], columns="scorer", values=["auc", "pauc"],
                           aggfunc="first", dropna=False, sort=False)
    table = table.swaplevel(0, 1, axis=1).rename(columns={"auc": "AUC", "pauc": "pAUC"}, level=1)
    cols = [(s, m) for s in scorers for m in ("AUC", "pAUC") if (s, m) in table.columns]
    table = table[cols]
    # machines in name order, IDs in order with "all" last
    order = sorted(table.index, key=lambda k: (k[0], k[1] == ALL, k[1]))
    table = table.loc[order]
    if not per_id:
        table.index = table.index.get_level_values(0)
        table.loc["mean"] = table.mean(axis=0, skipna=True)
    table.columns.names = ["scorer", ""]
    return table


def print_summary(results_df: pd.DataFrame, baseline_df: pd.DataFrame | None = None, per_id: bool = False,
                  file: TextIO | None = None) -> str:
    """Print (and return) the results as a table that fits a terminal: scorers down, machines across,
    each cell "AUC / pAUC"; the baseline's scorers last.

    Default: the `machine_id=all` columns (mean over IDs) and their mean over machines; `per_id` shows
    every machine ID instead. `baseline_df` (same columns as results.csv) adds its scorers as rows.
    """
    table = results_pivot(results_df, baseline_df, per_id=per_id)

    def fmt(v: float) -> str:
        return "n/a" if pd.isna(v) else f"{v:.3f}"

    cells = pd.DataFrame(index=table.index)
    for scorer in dict.fromkeys(s for s, _ in table.columns):
        pairs = zip(table[(scorer, "AUC")], table[(scorer, "pAUC")], strict=True)
        cells[scorer] = [f"{fmt(a)} / {fmt(p)}" for a, p in pairs]
    out = cells.T
    out.columns = ["/".join(c) if isinstance(c, tuple) else str(c) for c in out.columns]
    out.index.name = "AUC / pAUC"
    text = out.to_string()
    print(text, file=file or sys.stdout)
    return text


# ---------------------------------------------------------------------------------------------------
# figures


def _png_b64(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = max(1, min(max_cols, n))
    return math.ceil(n / cols), cols


def _y(labels: pd.Series) -> np.ndarray:
    lab = labels.astype(object)
    return np.where(lab == "anomaly", 1, np.where(lab == "normal", 0, -1))


def plot_roc(per_clip_df: pd.DataFrame) -> Figure:
    """ROC curves, one panel per machine, one line per machine ID x scorer (labeled clips only)."""
    machines = sorted(per_clip_df["machine"].unique())
    rows, cols = _grid(len(machines))
    fig = Figure(figsize=(4.2 * cols, 4.0 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, machine in zip(axes.flat, machines, strict=False):
        df = per_clip_df[per_clip_df["machine"] == machine]
        for (machine_id, scorer), g in df.groupby(["machine_id", "scorer"], sort=True):
            y = _y(g["label"])
            known = y >= 0
            if len(set(y[known])) < 2:
                continue
            fpr, tpr, _ = roc_curve(y[known], g["score"].to_numpy(dtype=float)[known])
            label = f"{machine_id}" if df["scorer"].nunique() == 1 else f"{machine_id} {scorer}"
            ax.plot(fpr, tpr, label=label, lw=1.3)
        ax.axvspan(0, MAX_FPR, color="0.92", zorder=0, label=f"pAUC range (FPR ≤ {MAX_FPR:g})")
        ax.plot([0, 1], [0, 1], ls=":", color="gray", lw=1)
        ax.set(title=machine, xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(machines):]:
        ax.set_axis_off()
    return fig


def plot_histograms(per_clip_df: pd.DataFrame, machine: str) -> Figure:
    """Score histograms of one machine: rows = machine IDs, columns = scorers; normal vs anomalous
    clips (unlabeled clips in gray), the decision threshold dashed when known."""
    df = per_clip_df[per_clip_df["machine"] == machine]
    ids = sorted(df["machine_id"].astype(str).unique())
    scorers = list(dict.fromkeys(df["scorer"]))
    fig = Figure(figsize=(4.0 * len(scorers), 2.6 * len(ids)), layout="constrained")
    axes = fig.subplots(len(ids), len(scorers), squeeze=False)
    for i, machine_id in enumerate(ids):
        for j, scorer in enumerate(scorers):
            ax = axes[i, j]
            g = df[(df["machine_id"].astype(str) == machine_id) & (df["scorer"] == scorer)]
            s = g["score"].to_numpy(dtype=float)
            finite = np.isfinite(s)
            if not finite.any():
                ax.set_axis_off()
                continue
            bins = np.histogram_bin_edges(s[finite], bins=20)
            y = _y(g["label"])
            for code, name in ((0, "normal"), (1, "anomaly"), (-1, "unlabeled")):
                part = s[(y == code) & finite]
                if part.size:
                    ax.hist(part, bins=bins, alpha=0.55, color=_LABEL_COLOURS[name], label=f"{name} ({part.size})")
            if "threshold" in g.columns:
                t = pd.to_numeric(g["threshold"], errors="coerce").dropna()
                if len(t):
                    ax.axvline(float(t.iloc[0]), ls="--", color="black", lw=1, label="threshold")
            ax.set(title=f"{machine} {machine_id} · {scorer}", xlabel="score", ylabel="clips")
            ax.title.set_fontsize(9)
            ax.legend(fontsize=7)
    return fig


# ---------------------------------------------------------------------------------------------------
# HTML


def _img(b64: str, alt: str, mime: str = "image/png") -> str:
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{b64}">'


def _file_b64(path: Path) -> tuple[str, str]:
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}.get(
        path.suffix.lower())
    if mime is None:
        raise ValueError(f"{path}: extra figures must be .png, .jpg or .svg")
    return base64.b64encode(path.read_bytes()).decode("ascii"), mime


def write_report(out_dir: str | Path, per_clip_df: pd.DataFrame, results_df: pd.DataFrame, title: str,
                 extra_figures: dict[str, Path] | None = None,
                 baseline_results: pd.DataFrame | None = None) -> Path:
    """Write `out_dir/report.html` (self-contained: PNGs embedded as base64) and return its path.

    Sections: the results table (per machine ID and `all`, AUC/pAUC per scorer, the baseline's
    scorers beside them when given), arithmetic and harmonic means over IDs, notes (e.g. test clips
    without labels), ROC curves, score histograms per machine, then `extra_figures` (title -> image
    file, e.g. training curves) in the given order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_clip_df = per_clip_df.assign(machine_id=per_clip_df["machine_id"].map(id_key))
    fmt = lambda v: "n/a" if pd.isna(v) else f"{v:.3f}"  # noqa: E731 - a one-line formatter

    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts.append("<h2>Results</h2><p>AUC and pAUC (FPR ≤ 0.1, sklearn's standardised partial AUC as in the "
                 "DCASE evaluators) per machine ID; <code>all</code> = arithmetic mean over the machine's IDs.</p>")
    parts.append(results_pivot(results_df, baseline_results, per_id=True).to_html(float_format=fmt, na_rep="n/a"))

    extended = extended_results(per_clip_df)
    means = extended[(extended["mean_kind"] != "none") & (extended["domain"] == ALL)]
    if not means.empty:
        table = means.pivot_table(index="machine", columns=["scorer", "mean_kind"], values=["auc", "pauc"],
                                  aggfunc="first", sort=False)
        parts.append("<h2>Means over machine IDs</h2><p>amean = arithmetic (DCASE 2020), hmean = harmonic "
                     "(DCASE 2021+ ranking); machine <code>all</code> = over every machine ID.</p>")
        parts.append(table.to_html(float_format=fmt, na_rep="n/a"))
    notes = extended[extended["note"].astype(str) != ""]
    if not notes.empty:
        parts.append("<h2>Notes</h2><ul>")
        for r in notes.itertuples():
            where = f"{r.machine} {r.machine_id} {r.scorer}" + ("" if r.domain == ALL else f" ({r.domain})")
            parts.append(f"<li class='note'>{html.escape(where)}: {html.escape(str(r.note))}</li>")
        parts.append("</ul>")

    parts.append("<h2>ROC curves</h2>" + _img(_png_b64(plot_roc(per_clip_df)), "ROC curves"))
    parts.append("<h2>Score histograms</h2>")
    for machine in sorted(per_clip_df["machine"].unique()):
        parts.append(f"<h3>{html.escape(str(machine))}</h3>"
                     + _img(_png_b64(plot_histograms(per_clip_df, machine)), f"{machine} histograms"))
    for name, path in (extra_figures or {}).items():
        b64, mime = _file_b64(Path(path))
        parts.append(f"<h2>{html.escape(name)}</h2>" + _img(b64, name, mime))
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
