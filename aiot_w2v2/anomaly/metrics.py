"""Anomaly-detection metrics as the DCASE Task 2 evaluators compute them, and the results tables.

- `auc_pauc`: AUC and pAUC (`sklearn.metrics.roc_auc_score(y, s, max_fpr=0.1)`, exactly the call of
  the DCASE 2020-2025 evaluators; sklearn returns the McClish-standardised partial AUC, so 0.5 is
  chance for pAUC too).
- `fit_threshold`: the decision threshold of the DCASE 2021+ autoencoder baselines (a gamma
  distribution fitted to the normal training clips' scores, its 90th percentile).
- `precision_recall_f1`: decision = score > threshold, the formulas of the DCASE 2023 evaluator.
- `results_table` (the contract `results.csv`), `extended_results` (`results_extended.csv`:
  harmonic means, per-domain rows, precision/recall/F1, notes), `summarise` (means over IDs) and
  `write_dcase_csvs` (the `anomaly_score_*.csv` / `decision_result_*.csv` submission files).

Per-clip input: a DataFrame with one row per test clip and scorer, columns `machine`, `machine_id`,
`scorer`, `score` (higher = more anomalous), `label` ("normal" / "anomaly" / None when unknown),
and optionally `path`, `domain` ("source" / "target" / None) and `threshold` (the decision threshold
of the clip's machine ID and scorer). The module is pure numpy / scipy / sklearn / pandas; it knows
nothing about models or audio.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats
from sklearn.metrics import roc_auc_score

MAX_FPR = 0.1  # DCASE Task 2: pAUC over FPR in [0, 0.1]
RESULT_COLUMNS = ("machine", "machine_id", "scorer", "auc", "pauc")  # (contract) results.csv
EXTENDED_COLUMNS = ("machine", "machine_id", "scorer", "domain", "mean_kind", "auc", "pauc", "precision",
                    "recall", "f1", "threshold", "n_normal", "n_anomaly", "note")
METRIC_COLUMNS = ("auc", "pauc", "precision", "recall", "f1")
ALL = "all"  # machine_id (and domain) of rows that aggregate several IDs (domains)
_EPS = float(np.finfo(float).eps)  # the DCASE 2023 evaluator's guard: sys.float_info.epsilon


# ---------------------------------------------------------------------------------------------------
# single-group metrics


def undefined_reason(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> str | None:
    """Why AUC/pAUC cannot be computed for these clips, or None when they can."""
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape or y.ndim != 1:
        return f"labels {y.shape} and scores {s.shape} differ in shape"
    if y.size == 0:
        return "no clips"
    if not np.isfinite(s).all():
        return f"{int((~np.isfinite(s)).sum())} scores are NaN or Inf"
    n_anomaly = int((y == 1).sum())
    if n_anomaly == 0:
        return "no anomalous clips: AUC undefined"
    if n_anomaly == y.size:
        return "no normal clips: AUC undefined"
    return None


def auc_pauc(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
             max_fpr: float = MAX_FPR) -> tuple[float, float]:
    """(AUC, pAUC) with y_true 1 = anomaly, 0 = normal and scores higher = more anomalous.

    pAUC is `roc_auc_score(y, s, max_fpr=max_fpr)` as in the DCASE evaluators (McClish-standardised:
    0.5 = chance, 1 = perfect). Undefined cases (one class only, NaN scores) give (nan, nan);
    `undefined_reason` says why.
    """
    if undefined_reason(y_true, scores) is not None:
        return math.nan, math.nan
    y = np.asarray(y_true).astype(int)
    s = np.asarray(scores, dtype=float)
    return float(roc_auc_score(y, s)), float(roc_auc_score(y, s, max_fpr=max_fpr))


def precision_recall_f1(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                        threshold: float) -> tuple[float, float, float]:
    """Precision, recall and F1 of the decision `score > threshold` (strict, as the DCASE baselines).

    Formulas of the DCASE 2023 evaluator: a vanishing denominator is guarded by machine epsilon, so
    "no clip flagged" gives precision 0 (not NaN). A NaN threshold gives NaNs.
    """
    y = np.asarray(y_true).astype(int)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    if threshold is None or not np.isfinite(threshold):
        return math.nan, math.nan, math.nan
    decision = s > threshold
    tp = int((decision & (y == 1)).sum())
    fp = int((decision & (y == 0)).sum())
    fn = int((~decision & (y == 1)).sum())
    precision = tp / max(tp + fp, _EPS)
    recall = tp / max(tp + fn, _EPS)
    f1 = 2.0 * precision * recall / max(precision + recall, _EPS)
    return float(precision), float(recall), float(f1)


@dataclass(frozen=True)
class ThresholdFit:
    """A fitted decision threshold: `value`, the method that produced it, its parameters and why."""

    value: float
    method: str  # "gamma" or "percentile"
    params: tuple[float, ...] = ()  # gamma: (shape a, loc, scale)
    note: str = ""


def fit_threshold_info(normal_train_scores: Sequence[float] | np.ndarray, method: str = "gamma",
                       percentile: float = 0.9) -> ThresholdFit:
    """Fit a decision threshold on normal training clips' scores; see `fit_threshold`."""
    if method not in ("gamma", "percentile"):
        raise ValueError(f"method must be 'gamma' or 'percentile', got {method!r}")
    if not 0.0 < percentile < 1.0:
        raise ValueError(f"percentile must be in (0, 1), got {percentile}")
    s = np.asarray(normal_train_scores, dtype=float).ravel()
    s = s[np.isfinite(s)]
    if s.size == 0:
        return ThresholdFit(math.nan, method, (), "no finite training scores")
    empirical = float(np.quantile(s, percentile))
    if method == "percentile":
        return ThresholdFit(empirical, "percentile")
    lo, hi = float(s.min()), float(s.max())
    if s.size < 3 or hi - lo <= 1e-12 * max(abs(hi), 1.0):
        why = "fewer than 3 scores" if s.size < 3 else "constant scores"
        return ThresholdFit(empirical, "percentile", (), f"gamma fit skipped ({why}): empirical percentile")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # optimiser chatter on awkward data
            a, loc, scale = scipy.stats.gamma.fit(s)  # shape, loc, scale: all free, as the baselines
            value = float(scipy.stats.gamma.ppf(percentile, a, loc=loc, scale=scale))
    except (scipy.stats.FitError, ValueError, RuntimeError) as err:
        return ThresholdFit(empirical, "percentile", (), f"gamma fit failed ({err}): empirical percentile")
    # A gamma fit with free loc can converge to nonsense on data far from gamma-shaped; a threshold
    # outside [min - span, max + span] of the data it was fitted on is one.
    span = hi - lo
    if not np.isfinite(value) or not lo - span <= value <= hi + span:
        return ThresholdFit(empirical, "percentile", (float(a), float(loc), float(scale)),
                            f"gamma fit implausible (ppf {value:.4g}): empirical percentile")
    return ThresholdFit(value, "gamma", (float(a), float(loc), float(scale)))


def fit_threshold(normal_train_scores: Sequence[float] | np.ndarray, method: str = "gamma",
                  percentile: float = 0.9) -> float:
    """The decision threshold of the DCASE 2021+ autoencoder baselines.

    `method="gamma"`: `scipy.stats.gamma.fit(scores)` (shape, loc and scale all free) and
    `gamma.ppf(percentile, ...)`. Negative scores need no shift: the free `loc` moves the support.
    Falls back to the empirical `percentile` quantile when the fit cannot work or fails (fewer than
    3 scores, constant scores, optimiser failure, a threshold far outside the data); a constant
    score list thus gives that constant. `method="percentile"` always uses the empirical quantile.
    NaN when no finite score is given. `fit_threshold_info` also returns the method used and why.
    """
    return fit_threshold_info(normal_train_scores, method, percentile).value


def harmonic_mean(values: Sequence[float] | np.ndarray) -> float:
    """Harmonic mean of the finite values (0 if one of them is 0; NaN if none is finite or one is < 0)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0 or (v < 0).any():
        return math.nan
    if (v == 0).any():
        return 0.0
    return float(v.size / np.sum(1.0 / v))


# ---------------------------------------------------------------------------------------------------
# tables


def _labels_to_y(labels: pd.Series) -> np.ndarray:
    """"anomaly" -> 1, "normal" -> 0, anything else (None, NaN) -> -1 (unknown)."""
    lab = labels.astype(object)
    return np.where(lab == "anomaly", 1, np.where(lab == "normal", 0, -1))


def _check_per_clip(df: pd.DataFrame) -> None:
    missing = [c for c in ("machine", "machine_id", "scorer", "score", "label") if c not in df.columns]
    if missing:
        raise ValueError(f"per-clip scores lack column(s) {', '.join(missing)}")


def id_key(machine_id: object) -> str:
    """Machine IDs as strings; a missing ID (plain folders) becomes "-"."""
    return "-" if machine_id is None or (isinstance(machine_id, float) and math.isnan(machine_id)) else str(machine_id)


def _group_threshold(g: pd.DataFrame) -> float:
    if "threshold" not in g.columns:
        return math.nan
    t = pd.to_numeric(g["threshold"], errors="coerce").dropna().unique()
    if len(t) > 1:
        raise ValueError(f"several thresholds within one machine ID and scorer: {t[:3]}")
    return float(t[0]) if len(t) else math.nan


def _clip_metrics(y: np.ndarray, s: np.ndarray, threshold: float, auc_mask: np.ndarray | None = None,
                  prf_mask: np.ndarray | None = None) -> dict[str, object]:
    """Metrics of one set of clips; y = -1 marks clips without a label (left out, with a note)."""
    auc_mask = np.ones_like(y, dtype=bool) if auc_mask is None else auc_mask
    prf_mask = auc_mask if prf_mask is None else prf_mask
    known = y >= 0
    notes = []
    n_unknown = int((~known & (auc_mask | prf_mask)).sum())
    row: dict[str, object] = dict(auc=math.nan, pauc=math.nan, precision=math.nan, recall=math.nan,
                                  f1=math.nan, threshold=threshold,
                                  n_normal=int(((y == 0) & prf_mask).sum()),
                                  n_anomaly=int(((y == 1) & prf_mask).sum()))
    if not known[auc_mask | prf_mask].any():
        row["note"] = "test clips carry no labels: metrics skipped"
        return row
    if n_unknown:
        notes.append(f"{n_unknown} unlabeled clips left out")
    m = auc_mask & known
    reason = undefined_reason(y[m], s[m])
    if reason:
        notes.append(reason)
    else:
        row["auc"], row["pauc"] = auc_pauc(y[m], s[m])
    m = prf_mask & known
    if np.isfinite(threshold) and m.any():
        row["precision"], row["recall"], row["f1"] = precision_recall_f1(y[m], s[m], threshold)
    row["note"] = "; ".join(notes)
    return row


def per_id_results(per_clip_df: pd.DataFrame) -> pd.DataFrame:
    """One row per machine ID x scorer (domain "all") plus, when the clips carry source/target
    domains (DCASE 2021+), one row per machine ID x scorer x domain; mean_kind "none".

    Domain rows follow the DCASE 2022+ evaluators: the domain AUC uses that domain's normal clips
    and all anomalous clips of the section; precision/recall/F1 use the domain's clips only. Their
    pAUC is computed on the same clips as the AUC (the official pAUC is the domain-"all" row's).
    """
    _check_per_clip(per_clip_df)
    df = per_clip_df.copy()
    df["machine_id"] = df["machine_id"].map(id_key)
    has_domain = "domain" in df.columns and df["domain"].isin(["source", "target"]).any()
    rows = []
    for (machine, machine_id, scorer), g in df.groupby(["machine", "machine_id", "scorer"], sort=True):
        y = _labels_to_y(g["label"])
        s = g["score"].to_numpy(dtype=float)
        threshold = _group_threshold(g)
        key = dict(machine=machine, machine_id=machine_id, scorer=scorer, mean_kind="none")
        rows.append(key | dict(domain=ALL) | _clip_metrics(y, s, threshold))
        if not has_domain:
            continue
        dom = g["domain"].astype(object).to_numpy()
        for domain in ("source", "target"):
            in_domain = dom == domain
            if not in_domain.any():
                continue
            auc_mask = in_domain | (y == 1)  # domain normals + every anomaly of the section
            rows.append(key | dict(domain=domain) | _clip_metrics(y, s, threshold, auc_mask, in_domain))
    return pd.DataFrame(rows, columns=list(EXTENDED_COLUMNS))


def summarise(results_df: pd.DataFrame, kinds: Sequence[str] = ("amean", "hmean")) -> pd.DataFrame:
    """Means over machine IDs: per machine x scorer x domain, one row per kind with machine_id "all".

    "amean" is the arithmetic mean (the DCASE 2020 "Average" row, and the `all` rows of
    results.csv); "hmean" the harmonic mean (DCASE 2021+ rank systems by harmonic means). Input: the
    per-ID rows (machine_id != "all"), with at least `auc` and `pauc`; other metric columns present
    are averaged too. NaN entries are left out of a mean, and the `note` says how many IDs counted.
    Also adds machine "all" rows: the mean over every machine ID of every machine.
    """
    for kind in kinds:
        if kind not in ("amean", "hmean"):
            raise ValueError(f"unknown mean kind {kind!r}; allowed: amean, hmean")
    base = results_df[results_df["machine_id"] != ALL].copy()
    if "domain" not in base.columns:
        base["domain"] = ALL
    metrics = [c for c in METRIC_COLUMNS if c in base.columns]
    rows = []
    groups = [(k, g) for k, g in base.groupby(["machine", "scorer", "domain"], sort=True)]
    if base["machine"].nunique() > 1:
        groups += [((ALL, s, d), g) for (s, d), g in base.groupby(["scorer", "domain"], sort=True)]
    for (machine, scorer, domain), g in groups:
        n = len(g)
        for kind in kinds:
            row: dict[str, object] = dict(machine=machine, machine_id=ALL, scorer=scorer, domain=domain,
                                          mean_kind=kind)
            for col in metrics:
                v = g[col].to_numpy(dtype=float)
                row[col] = harmonic_mean(v) if kind == "hmean" else (float(np.nanmean(v)) if np.isfinite(v).any()
                                                                       else math.nan)
            k = int(np.isfinite(g["auc"].to_numpy(dtype=float)).sum())
            row["note"] = "" if k == n else (f"mean over {k} of {n} IDs (the others have no metrics)" if k
                                             else "no ID has metrics")
            row["n_normal"] = int(g["n_normal"].sum()) if "n_normal" in g.columns else math.nan
            row["n_anomaly"] = int(g["n_anomaly"].sum()) if "n_anomaly" in g.columns else math.nan
            row["threshold"] = math.nan
            rows.append(row)
    columns = ["machine", "machine_id", "scorer", "domain", "mean_kind", *metrics, "threshold", "n_normal",
               "n_anomaly", "note"]
    return pd.DataFrame(rows, columns=columns)


def _sort_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Machines in name order (machine "all" last), IDs in order with "all" last, then scorer."""
    key = pd.DataFrame({
        "m_all": df["machine"] == ALL, "machine": df["machine"], "id_all": df["machine_id"] == ALL,
        "machine_id": df["machine_id"], "scorer": df["scorer"],
    })
    extra = [c for c in ("domain", "mean_kind") if c in df.columns]
    for c in extra:
        key[c] = df[c]
    order = key.sort_values(list(key.columns), kind="stable").index
    return df.loc[order].reset_index(drop=True)


def extended_results(per_clip_df: pd.DataFrame) -> pd.DataFrame:
    """`results_extended.csv`: per-ID (and per-domain) rows, then arithmetic and harmonic means over
    IDs per machine and over all machines; columns `EXTENDED_COLUMNS`."""
    per_id = per_id_results(per_clip_df)
    out = pd.concat([per_id, summarise(per_id)], ignore_index=True)[list(EXTENDED_COLUMNS)]
    return _sort_rows(out)


def results_table(per_clip_df: pd.DataFrame) -> pd.DataFrame:
    """(contract) `results.csv`: exactly `machine,machine_id,scorer,auc,pauc`; one row per machine
    ID x scorer, plus a `machine_id=all` row per machine x scorer holding the arithmetic mean over
    its IDs. Unlabeled test clips give NaN (see `extended_results` for the note)."""
    per_id = per_id_results(per_clip_df)
    per_id = per_id[per_id["domain"] == ALL]
    means = summarise(per_id, kinds=("amean",))
    means = means[means["machine"] != ALL]
    out = pd.concat([per_id, means], ignore_index=True)
    return _sort_rows(out)[list(RESULT_COLUMNS)]


# ---------------------------------------------------------------------------------------------------
# DCASE submission files


def dcase_csv_names(machine: str, machine_id: str | None) -> tuple[str, str]:
    """(anomaly score, decision result) file names of one machine ID, as the DCASE baselines write them.

    DCASE 2020: `anomaly_score_<machine>_id_<XX>.csv`; DCASE 2021+ sections:
    `anomaly_score_<machine>_section_<SS>_test.csv` (the 2022-2025 names); no ID: `..._<machine>.csv`.
    """
    mid = id_key(machine_id)
    if mid == "-":
        stem = machine
    elif mid.startswith("section_"):
        stem = f"{machine}_{mid}_test"
    else:
        stem = f"{machine}_{mid}"
    return f"anomaly_score_{stem}.csv", f"decision_result_{stem}.csv"


def write_dcase_csvs(per_clip_df: pd.DataFrame, out_dir: str | Path, scorer: str) -> list[Path]:
    """Write the DCASE submission files of one scorer into `out_dir`; returns the paths written.

    Per machine ID: `anomaly_score_*.csv` (rows `filename,score`, no header, file names sorted) and,
    when the clips carry a finite `threshold`, `decision_result_*.csv` (rows `filename,0|1`,
    1 = score > threshold). Needs a `path` column (the file name is its last part).
    """
    _check_per_clip(per_clip_df)
    if "path" not in per_clip_df.columns:
        raise ValueError("per-clip scores need a 'path' column to write DCASE csv files")
    df = per_clip_df[per_clip_df["scorer"] == scorer]
    if df.empty:
        have = ", ".join(map(str, per_clip_df["scorer"].unique()))
        raise ValueError(f"no scores of scorer {scorer!r} (have: {have})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    df = df.assign(machine_id=df["machine_id"].map(id_key), filename=[Path(p).name for p in df["path"]])
    for (machine, machine_id), g in df.groupby(["machine", "machine_id"], sort=True):
        g = g.sort_values("filename", kind="stable")
        score_name, decision_name = dcase_csv_names(machine, machine_id)
        with open(out / score_name, "w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(zip(g["filename"], g["score"].astype(float), strict=True))
        written.append(out / score_name)
        threshold = _group_threshold(g)
        if np.isfinite(threshold):
            decisions = (g["score"].to_numpy(dtype=float) > threshold).astype(int)
            with open(out / decision_name, "w", newline="") as f:
                csv.writer(f, lineterminator="\n").writerows(zip(g["filename"], decisions, strict=True))
            written.append(out / decision_name)
    return written
