"""Fusion rules of `spectral` and `learned`, scored from finished `evaluate` reports (no model runs).

A clip's score is the mean of its window scores and the `ensemble` is the mean of the members' window
z-scores (calibrated on cross-fitted normal training scores, `scoring.json` "calibration"), so any linear
rule of the two z-scores is exact from the per-clip scores in `report/scores.csv`. The rule `mean z` must
equal the report's own `ensemble` column (a check of this script). Mean AUC / pAUC over the sections.

    python benchmarks/fusion_from_reports.py runs/gen_s10long/s9p7000/dev runs/gen_s10long/s9p7000/heldout

Each argument is a folder with `model/scoring.json` and `report/scores.csv` (as `benchmarks/generalisation.py`
writes per model and suite). Choose a rule on dev folders; read held-out ones only to check it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from aiot_w2v2.anomaly.metrics import auc_pauc

Z = dict[str, np.ndarray]
Rule = Callable[[Z, Z, dict], np.ndarray]  # (z-scores, raw scores, calibration of the section) -> clip scores


def _linear_rule(w: float) -> Rule:
    return lambda z, raw, cal: z["spectral"] + w * z["learned"]


def _log_rule(w: float) -> Rule:
    def rule(z: Z, raw: Z, cal: dict) -> np.ndarray:
        def log_ratio(s: str) -> np.ndarray:
            return np.log(np.maximum(raw[s], 1e-9)) - np.log(cal[s]["mean"])
        return log_ratio("spectral") + w * log_ratio("learned")
    return rule


def rules() -> dict[str, Rule]:
    out: dict[str, Rule] = {
        "spectral": lambda z, raw, cal: z["spectral"],
        "learned": lambda z, raw, cal: z["learned"],
        "ensemble (report)": lambda z, raw, cal: raw["ensemble"],
        "mean z": lambda z, raw, cal: (z["spectral"] + z["learned"]) / 2,
        "max z": lambda z, raw, cal: np.maximum(z["spectral"], z["learned"]),
    }
    for w in (0.1, 0.2, 0.3, 0.5):
        out[f"z spectral + {w} z learned"] = _linear_rule(w)
    for w in (0.2, 0.5, 1.0):
        out[f"log spectral + {w} log learned"] = _log_rule(w)
    return out


def score_folder(folder: Path, table: dict[str, Rule]) -> dict[str, tuple[float, float]]:
    scores = pd.read_csv(folder / "report" / "scores.csv")
    calibration = json.loads((folder / "model" / "scoring.json").read_text())["calibration"]
    per_rule: dict[str, list[tuple[float, float]]] = {name: [] for name in table}
    for (machine, section), group in scores.groupby(["machine", "machine_id"]):
        cal = calibration[f"{machine}/{section}"]
        wide = group.pivot_table(index="path", columns="scorer", values="score")  # clips x scorers
        labels = group.drop_duplicates("path").set_index("path").loc[wide.index, "label"].eq("anomaly")
        raw = {s: wide[s].to_numpy() for s in wide.columns}
        z = {s: (raw[s] - cal[s]["mean"]) / cal[s]["std"] for s in ("spectral", "learned")}
        for name, rule in table.items():
            per_rule[name].append(auc_pauc(labels.astype(int).to_numpy(), rule(z, raw, cal)))
    return {name: tuple(np.mean(v, 0)) for name, v in per_rule.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="MODEL/SUITE folders (model/ + report/)")
    args = ap.parse_args()
    table = rules()
    results = {f: score_folder(f, table) for f in args.folders}
    for f, res in results.items():
        if abs(res["mean z"][0] - res["ensemble (report)"][0]) > 1e-9:
            raise SystemExit(f"{f}: 'mean z' {res['mean z'][0]:.4f} != the report's ensemble "
                             f"{res['ensemble (report)'][0]:.4f}: calibration or aggregation changed")
    print("| rule | " + " | ".join(str(f) for f in args.folders) + " |")
    print("|---|" + "---|" * len(args.folders))
    for name in table:
        print(f"| {name} | " + " | ".join(f"{results[f][name][0]:.3f} / {results[f][name][1]:.3f}"
                                         for f in args.folders) + " |")


if __name__ == "__main__":
    main()
