"""Generalisation benchmark: fit + evaluate per model on the dev and held-out suites, beside the AE.

For each model (a pretraining run, a checkpoint folder such as `RUN/ckpt_<step>`, or `random` for
a randomly initialised model of a preset) and each suite (`dev`, `heldout`, generated with the
defaults of `aiot-w2v2 synth --suite ...` when missing), this runs `fit` (with any `--set`
overrides) and `evaluate`, and once per suite the DCASE 2020 autoencoder baseline. Each step's
output is cached under OUT and reused when it exists (`--force` redoes the fits and evaluations).
It prints and writes OUT/table.md + OUT/table.csv: rows = models (+ the AE), columns = each scorer's
mean AUC / pAUC per suite (the decision scorer marked *), and the decision scorer's AUC per domain
(source / target), with the held-out suite in its own columns. Per model and suite it also writes
OUT/families_<suites>.md (the decision scorer per generator family) and OUT/faults_<model>_<suite>.md:
the decision scorer, `spectral`, `learned` and `ensemble` per fault kind (that kind's anomalies against
all normal test clips of a section, averaged over the sections with it), i.e. which fault mechanisms
each branch catches.

`--curve RUN` adds a learning curve: every `RUN/ckpt_<step>` (copied aside by
`benchmarks/keep_checkpoints.sh`; `--curve-every` thins them) and a random model at step 0, written
to OUT/curve.md + OUT/curve.csv (AUC of each scorer vs pretraining updates).

Protocol: choices are made on `dev` only. `heldout` holds the frozen families and fault kinds of
`aiot_w2v2.synth_families.HELDOUT_FAMILIES`; run it once, at the end of a change.

    python benchmarks/generalisation.py --suite dev --model random --model short=runs/pretrain_short_dev \\
        --out runs/generalisation
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from aiot_w2v2 import checkpoint
from aiot_w2v2.anomaly.baseline import run_baseline
from aiot_w2v2.anomaly.evaluate import evaluate
from aiot_w2v2.anomaly.fit import fit_scoring
from aiot_w2v2.anomaly.metrics import auc_pauc
from aiot_w2v2.anomaly.scoring_model import load_scoring_config
from aiot_w2v2.config import load_pretrain_config
from aiot_w2v2.model.wav2vec2 import Wav2Vec2ForPreTraining
from aiot_w2v2.synth_suite import generate_suite

SUITES = ("dev", "heldout")


FAULT_SCORERS = ("spectral", "learned", "ensemble")  # the branches of the per-fault table (beside the decision)


def random_checkpoint(preset: str, out: Path) -> Path:
    """A randomly initialised pretraining checkpoint of `preset` (seeded by the preset's train.seed)."""
    if checkpoint.is_checkpoint(out):
        return out
    cfg = load_pretrain_config(preset)
    torch.manual_seed(cfg.train.seed)
    model = Wav2Vec2ForPreTraining(cfg.model, cfg.masking, cfg.loss)
    return checkpoint.save_pretrained(model, cfg, out, meta={"step": 0})


def ensure_suite(root: Path, suite: str) -> Path:
    path = root / suite
    if not (path / "metadata.csv").is_file():
        print(f"generating the {suite} suite in {path}", flush=True)
        generate_suite(path, suite)
    return path


def run_model(label: str, spec: str, suite_dir: Path, suite: str, out: Path, sets: list[str], preset: str,
              force: bool) -> Path:
    """fit + evaluate one model on one suite; returns the report folder (cached)."""
    run = random_checkpoint(preset, out / "random_init") if spec == "random" else Path(spec)
    model_dir, report = out / label / suite / "model", out / label / suite / "report"
    if (report / "results.csv").is_file() and not force:
        return report
    t0 = time.time()
    fit_scoring(run, [suite_dir], model_dir, load_scoring_config(None, sets), progress=False)
    t1 = time.time()
    evaluate(model_dir, [suite_dir], report, progress=False)
    (report / "timing.txt").write_text(f"fit_s {t1 - t0:.0f}\nevaluate_s {time.time() - t1:.0f}\nrun {run}\n"
                                       f"set {' '.join(sets)}\n")
    print(f"{label} on {suite}: fit {t1 - t0:.0f} s, evaluate {time.time() - t1:.0f} s", flush=True)
    return report


def run_ae(suite_dir: Path, suite: str, out: Path) -> Path:
    report = out / "ae_baseline" / suite
    if not (report / "results.csv").is_file():
        run_baseline(suite_dir, report, progress=False)
    return report


def suite_column(scores: pd.DataFrame, suite_dir: Path, column: str, missing: object = None) -> list:
    """The suite's metadata.csv `column` for each row of a report's scores.csv (matched by resolved path)."""
    meta = pd.read_csv(suite_dir / "metadata.csv")
    by_path = {str((suite_dir / p).resolve()): v for p, v in zip(meta["path"], meta[column], strict=True)}
    return [by_path.get(str(Path(p).resolve()), missing) for p in scores["path"]]


def summarise(report: Path, suite_dir: Path) -> dict[tuple[str, str], float]:
    """{(scorer, metric): value} over sections, metric in AUC, pAUC, src AUC, tgt AUC."""
    res = pd.read_csv(report / "results.csv")
    means = res[res["machine_id"] == "all"].groupby("scorer")[["auc", "pauc"]].mean()
    out: dict[tuple[str, str], float] = {}
    for scorer, row in means.iterrows():
        out[(str(scorer), "AUC")] = float(row["auc"])
        out[(str(scorer), "pAUC")] = float(row["pauc"])
    scores = pd.read_csv(report / "scores.csv")
    if "domain" not in scores.columns or scores["domain"].isna().all():
        scores["domain"] = suite_column(scores, suite_dir, "domain")
    for (scorer, dom), g in scores.groupby(["scorer", "domain"]):
        per_section = [auc_pauc((s["label"] == "anomaly").astype(int), s["score"])[0]
                       for _, s in g.groupby(["machine", "machine_id"])]
        out[(str(scorer), f"{dom} AUC")] = float(np.nanmean(per_section))
    return out


def by_family(report: Path, suite_dir: Path, scorer: str) -> dict[str, float]:
    """Mean AUC over sections of `scorer`, per generator family of the suite."""
    meta = pd.read_csv(suite_dir / "metadata.csv")
    fam = {(m, f"section_{int(sec):02d}"): f for m, sec, f in zip(meta["machine"], meta["section"], meta["family"],
                                                                 strict=True)}
    scores = pd.read_csv(report / "scores.csv")
    scores = scores[scores["scorer"] == scorer]
    per: dict[str, list[float]] = {}
    for (m, mid), g in scores.groupby(["machine", "machine_id"]):
        per.setdefault(fam[(m, mid)], []).append(auc_pauc((g["label"] == "anomaly").astype(int), g["score"])[0])
    return {f: float(np.mean(v)) for f, v in sorted(per.items())}


def by_fault(report: Path, suite_dir: Path, scorers: list[str]) -> pd.DataFrame:
    """AUC of each scorer per fault kind: a section's anomalies of that kind against all its normal test
    clips, averaged over the sections that have the kind; index "<fault> (n sections)". It shows which
    fault mechanisms each branch catches (and whether fusing them can help: only where they differ)."""
    if "fault" not in pd.read_csv(suite_dir / "metadata.csv", nrows=0).columns:  # written before faults were kept
        return pd.DataFrame(columns=scorers)
    scores = pd.read_csv(report / "scores.csv")
    scores = scores[scores["scorer"].isin(scorers)].copy()
    scores["fault"] = pd.Series(suite_column(scores, suite_dir, "fault", ""), index=scores.index).fillna("")
    per: dict[tuple[str, str], list[float]] = {}
    for (scorer, _, _), g in scores.groupby(["scorer", "machine", "machine_id"]):
        normal = g[g["label"] == "normal"]
        for kind, a in g[g["label"] == "anomaly"].groupby("fault"):
            y = np.r_[np.zeros(len(normal)), np.ones(len(a))]
            per.setdefault((str(kind), str(scorer)), []).append(
                auc_pauc(y, np.r_[normal["score"].to_numpy(), a["score"].to_numpy()])[0])
    kinds = sorted({k for k, _ in per})
    n = {k: len(per[(k, scorers[0])]) if (k, scorers[0]) in per else 0 for k in kinds}
    return pd.DataFrame({s: [np.mean(per[(k, s)]) if (k, s) in per else np.nan for k in kinds] for s in scorers},
                        index=[f"{k} ({n[k]})" for k in kinds])


def decision_scorer(report: Path) -> str | None:
    meta = report.parent / "model" / "scoring.json"
    return json.loads(meta.read_text()).get("config", {}).get("decision_scorer") if meta.is_file() else None


def fmt(v: float | None) -> str:
    return "" if v is None or not np.isfinite(v) else f"{v:.3f}"


def table(rows: dict[str, dict[str, dict[tuple[str, str], float]]], decisions: dict[str, str | None],
          suites: list[str]) -> pd.DataFrame:
    """rows[model][suite][(scorer, metric)] -> one DataFrame, columns '<suite> <scorer> <metric>'."""
    scorers = list(dict.fromkeys(s for per in rows.values() for d in per.values() for s, _ in d))
    main = [s for s in dict.fromkeys(decisions.values()) if s]
    scorers = main + sorted(s for s in scorers if s not in main)
    records = []
    for model, per in rows.items():
        rec: dict[str, str] = {"model": model}
        for suite in suites:
            d = per.get(suite, {})
            for s in scorers:
                star = "*" if s == decisions.get(model) else ""
                for metric in ("AUC", "pAUC"):
                    v = d.get((s, metric))
                    rec[f"{suite} {s} {metric}"] = fmt(v) + (star if v is not None else "")
            dec = decisions.get(model) or ("ae_baseline" if model == "AE baseline" else None)
            for metric in ("source AUC", "target AUC"):
                rec[f"{suite} decision {metric}"] = fmt(d.get((dec, metric))) if dec else ""
        records.append(rec)
    df = pd.DataFrame(records).set_index("model")
    return df.loc[:, (df != "").any(axis=0)]


def to_markdown(df: pd.DataFrame, first: str = "model") -> str:
    cols = [first, *df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join([str(i), *map(str, r)]) + " |" for i, r in zip(df.index, df.values, strict=True)]
    return "\n".join(lines)


def curve_models(run: Path, every: int) -> list[tuple[str, str]]:
    steps = sorted((int(m.group(1)), p) for p in run.glob("ckpt_*") if (m := re.fullmatch(r"ckpt_(\d+)", p.name)))
    picked = [(s, p) for s, p in steps if s % every == 0]
    return [("step_0_random", "random")] + [(f"step_{s}", str(p)) for s, p in picked]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", action="append", choices=SUITES, help="suites to run (repeatable; default dev)")
    p.add_argument("--suites-root", default="runs/suites", help="folder holding <suite>/ (generated when missing)")
    p.add_argument("--model", action="append", default=[], metavar="LABEL=PATH|random",
                   help="a pretraining run or checkpoint folder, or 'random' (repeatable)")
    p.add_argument("--preset", default="tiny", help="preset of the random model")
    p.add_argument("--curve", help="a pretraining run with ckpt_<step> folders: learning curve")
    p.add_argument("--curve-every", type=int, default=250, help="use checkpoints whose step is a multiple")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fit override (repeatable)")
    p.add_argument("--no-ae", action="store_true", help="skip the AE baseline")
    p.add_argument("--force", action="store_true", help="redo cached fits and evaluations")
    p.add_argument("--out", default="runs/generalisation")
    args = p.parse_args(argv)
    suites = args.suite or ["dev"]
    out, root = Path(args.out), Path(args.suites_root)
    models: list[tuple[str, str]] = []
    for m in args.model:
        label, _, spec = m.partition("=")
        models.append((label, spec or label))
    for label, spec in models:
        if spec != "random" and not Path(spec).exists():
            p.error(f"--model {label}: {spec} does not exist")
    if not models and not args.curve:
        p.error("give --model and/or --curve")

    suite_dirs = {s: ensure_suite(root, s) for s in suites}
    rows: dict[str, dict] = {}
    decisions: dict[str, str | None] = {}
    for label, spec in models:
        for suite in suites:
            report = run_model(label, spec, suite_dirs[suite], suite, out, args.set, args.preset, args.force)
            rows.setdefault(label, {})[suite] = summarise(report, suite_dirs[suite])
            decisions[label] = decision_scorer(report)
    families = {f"{label} ({suite})": by_family(out / label / suite / "report", suite_dirs[suite], decisions[label])
                for label, _ in models for suite in suites if decisions.get(label)}
    if families:
        fam_md = to_markdown(pd.DataFrame(families).T.map(fmt))
        (out / f"families_{'_'.join(suites)}.md").write_text(fam_md + "\n")
        print("decision scorer's AUC per generator family:\n" + fam_md)
    for label, _ in models:
        for suite in suites:
            if not decisions.get(label):
                continue
            branches = list(dict.fromkeys([str(decisions[label]), *FAULT_SCORERS]))
            faults = by_fault(out / label / suite / "report", suite_dirs[suite], branches)
            if len(faults):
                md = to_markdown(faults.map(fmt), first="fault kind (sections)")
                (out / f"faults_{label}_{suite}.md").write_text(md + "\n")
                print(f"{label} ({suite}): AUC per fault kind, its anomalies vs all normal clips:\n{md}")
    if not args.no_ae:
        for suite in suites:
            rows.setdefault("AE baseline", {})[suite] = summarise(run_ae(suite_dirs[suite], suite, out),
                                                                  suite_dirs[suite])
        decisions["AE baseline"] = None
    if rows:
        df = table(rows, decisions, suites)
        md = to_markdown(df)
        tag = "_".join(suites)
        (out / f"table_{tag}.md").write_text(md + "\n")
        df.to_csv(out / f"table_{tag}.csv")
        print(md)

    if args.curve:
        curve: dict[str, dict] = {}
        cdec: dict[str, str | None] = {}
        for label, spec in curve_models(Path(args.curve), args.curve_every):
            for suite in suites:
                cache = "random" if spec == "random" else f"curve/{label}"  # step 0 is the random model's row
                report = run_model(cache, spec, suite_dirs[suite], suite, out, args.set, args.preset, args.force)
                curve.setdefault(label, {})[suite] = summarise(report, suite_dirs[suite])
                cdec[label] = decision_scorer(report)
        df = table(curve, cdec, suites)
        md = to_markdown(df)
        tag = "_".join(suites)
        (out / f"curve_{tag}.md").write_text(md + "\n")
        df.to_csv(out / f"curve_{tag}.csv")
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
