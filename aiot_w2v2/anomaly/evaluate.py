"""`aiot-w2v2 evaluate`: score the test clips with a fitted `ScoringModel` and write the report.

Each test clip is cut into the model's windows; its score per scorer is the mean over its windows
(the same module the edge bundle runs). Writes into REPORT:

- `results.csv` (contract: machine,machine_id,scorer,auc,pauc, plus machine_id=all rows),
  `results_extended.csv` (harmonic means, domains, precision/recall/F1 at the thresholds, notes),
  `scores.csv` (one row per test clip and scorer);
- the DCASE `anomaly_score_*.csv` / `decision_result_*.csv` of the decision scorer in REPORT, and of
  every scorer under `REPORT/scorers/<scorer>/`;
- `report.html`: tables (with the baseline's AUC/pAUC beside every scorer when `baseline` is a
  baseline report folder), ROC curves, score histograms, code-usage heatmaps, training curves;
- `evaluation.json`: counts, skipped files and why, timings.

Bad input never stops the run: unreadable, empty, NaN or too-short clips and clips of machine IDs the
model was not fitted on are skipped, counted and listed; test clips without labels are scored and
their metrics left empty with a note.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from ..data.manifest import build_manifest
from .clips import batches, read_windows
from .metrics import extended_results, id_key, results_table, write_dcase_csvs
from .report import print_summary, write_report
from .scoring_model import ScoringModel, entry_key, load_scoring_model


def score_clips(model: ScoringModel, paths: list[str], batch_size: int = 32,
                progress: bool = True) -> tuple[np.ndarray, dict[str, str]]:
    """(n_clips, n_columns) mean window scores (NaN rows for clips that failed) and the failures."""
    meta = model.meta
    flat, owner, errors = read_windows(paths, meta.window, meta.hop, model.frontend.min_samples, meta.sample_rate)
    sums = np.zeros((len(paths), len(model.columns)))
    counts = np.zeros(len(paths))
    bar = tqdm(total=len(flat), desc="scoring", unit="win", disable=not progress)
    with torch.inference_mode():
        for idx, x in batches(flat, batch_size):
            s = model(x).double().numpy()
            for j, i in enumerate(idx):
                sums[owner[i]] += s[j]
                counts[owner[i]] += 1
            bar.update(len(idx))
    bar.close()
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None], errors


def plot_code_usage(model: ScoringModel) -> Figure:
    """Heatmaps of each machine ID's code probabilities (normal training data), one row per group."""
    probs = model.stat_hist_ref.numpy()  # (E, G, V)
    E, G, V = probs.shape
    fig = Figure(figsize=(min(14, 2 + V / 10), 0.5 + 0.35 * E * G + 0.6), layout="constrained")
    ax = fig.subplots()
    img = ax.imshow(np.log10(probs.reshape(E * G, V) + 1e-6), aspect="auto", cmap="magma", vmin=-5, vmax=0)
    ax.set_yticks(range(E * G), [f"{entry_key(*e)} g{g}" for e in model.meta.entries for g in range(G)], fontsize=7)
    ax.set(xlabel="code index", title="code usage on normal training clips (log10 probability)")
    fig.colorbar(img, ax=ax)
    return fig


def evaluate(model_dir: str | Path, data_dirs: list[str | Path] | str | Path, out_dir: str | Path,
             baseline: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Score the test clips under `data_dirs`; write the report to `out_dir`; return results.csv's table."""
    t0 = time.time()
    model = load_scoring_model(model_dir)
    meta = model.meta
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dirs = [data_dirs] if isinstance(data_dirs, (str, Path)) else list(data_dirs)
    manifest = build_manifest(dirs)
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    if test.empty:
        raise ValueError(f"{', '.join(map(str, dirs))}: no test clips (<machine>/test/*.wav expected)")
    test = test.assign(machine_id=test["machine_id"].map(id_key))
    fitted = {entry_key(*e) for e in meta.entries}
    keys = [entry_key(m, i) for m, i in zip(test["machine"], test["machine_id"], strict=True)]
    unknown = sorted({k for k in keys if k not in fitted})
    skipped: dict[str, str] = {}
    for k in unknown:
        n = keys.count(k)
        skipped[k] = f"{n} test clip(s) of {k}: the model has no statistics for it (no training clips at fit)"
        print(f"warning: {skipped[k]}; skipped")
    test = test[[k in fitted for k in keys]].reset_index(drop=True)
    if test.empty:
        raise ValueError(f"none of the test clips belongs to a machine ID the model was fitted on "
                         f"({', '.join(sorted(fitted))})")
    if progress:
        print(f"evaluate: {len(test)} test clips, {len(meta.entries)} fitted machine IDs, "
              f"{len(meta.config.columns_per_entry())} scorers")

    scores, errors = score_clips(model, list(test["path"]), meta.config.batch_windows, progress)
    col = {c: j for j, c in enumerate(model.columns)}
    rows = []
    for k, r in enumerate(test.itertuples()):
        if r.path in errors:
            continue
        key = entry_key(r.machine, r.machine_id)
        for s in meta.config.columns_per_entry():
            rows.append(dict(path=r.path, machine=r.machine, machine_id=r.machine_id, scorer=s,
                             score=float(scores[k, col[f"{key}/{s}"]]), label=r.label, domain=r.domain,
                             threshold=meta.thresholds.get(key, {}).get(s, {}).get("clip", np.nan)))
    if not rows:
        raise ValueError(f"no test clip could be scored; first error: {next(iter(errors.values()), '?')}")
    per_clip = pd.DataFrame(rows)
    per_clip["decision"] = (per_clip["score"] > per_clip["threshold"]).astype(int)

    results = results_table(per_clip)
    results.to_csv(out / "results.csv", index=False)
    extended_results(per_clip).to_csv(out / "results_extended.csv", index=False)
    per_clip.to_csv(out / "scores.csv", index=False)
    write_dcase_csvs(per_clip, out, meta.config.decision_scorer)
    for s in meta.config.columns_per_entry():
        write_dcase_csvs(per_clip, out / "scorers" / s, s)
    baseline_results = _read_baseline(baseline)
    figures: dict[str, Path] = {}
    usage = out / "code_usage.png"
    plot_code_usage(model).savefig(usage, dpi=90)
    figures["Code usage per machine ID"] = usage
    curves = meta.info.get("training_curves")
    if curves and Path(curves).exists():
        figures["Pretraining curves"] = Path(curves)
    write_report(out, per_clip, results, title="wav2vec 2.0 anomaly scores", extra_figures=figures,
                 baseline_results=baseline_results)
    info = dict(model=str(Path(model_dir).resolve()), data=[str(Path(d).resolve()) for d in dirs],
                clips_scored=int(per_clip["path"].nunique()), clips_failed=len(errors), failed_files=errors,
                skipped_machine_ids=skipped, decision_scorer=meta.config.decision_scorer,
                seconds=round(time.time() - t0, 1))
    (out / "evaluation.json").write_text(json.dumps(info, indent=2) + "\n")

    if progress:
        print()
        print_summary(results, baseline_results)
        if errors:
            print(f"{len(errors)} test file(s) could not be scored (listed in {out / 'evaluation.json'}): "
                  + "; ".join(list(errors.values())[:3]))
        if per_clip["label"].isna().any():
            print("note: some test clips have no label (normal_/anomaly_ in the name): scored, but AUC/pAUC "
                  "need labels")
        print(f"evaluated in {info['seconds']:.0f} s; report: {out / 'report.html'}")
    return results


def _read_baseline(path: str | Path | None) -> pd.DataFrame | None:
    if path is None:
        return None
    p = Path(path)
    p = p / "results.csv" if p.is_dir() else p
    if not p.exists():
        raise FileNotFoundError(f"--baseline {path}: no results.csv there (run `aiot-w2v2 baseline` first)")
    df = pd.read_csv(p, dtype={"machine_id": str})
    return df
