"""Which representation and which scorer: fit + evaluate a pretrained run under several scoring settings.

    python benchmarks/anomaly_scoring.py --run RUN --data DATA --out OUT [--variants default,conv1,...]
        [--baseline BASELINE_REPORT]

For each variant (a name and `ScoringConfig` overrides, see VARIANTS) it runs `fit_scoring` and
`evaluate` exactly as `aiot-w2v2 fit` / `evaluate` do, then prints and writes (OUT/summary.json,
OUT/summary.md) the mean over machines of each scorer's machine-level AUC / pAUC (arithmetic mean
over machine IDs, as DCASE 2020), beside the autoencoder baseline when given. One torch thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from aiot_w2v2.anomaly.evaluate import evaluate
from aiot_w2v2.anomaly.fit import fit_scoring
from aiot_w2v2.anomaly.scoring_model import load_scoring_config

EMB = ["scorers=[knn,mahalanobis]", "ensemble=[]", "decision_scorer=mahalanobis"]  # embedding-only variants
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "conv0-absolute": ["embedding_level=absolute"] + EMB,
    "conv0-absolute-lw": ["embedding_level=absolute", "mahalanobis_shrinkage=null"] + EMB,
    "conv1": ["embedding_layer=conv1"] + EMB,
    "conv3": ["embedding_layer=conv3"] + EMB,
    "conv6": ["embedding_layer=conv6"] + EMB,
    "transformer0": ["embedding_layer=transformer0"] + EMB,
    "transformer2": ["embedding_layer=transformer2"] + EMB,
    "transformer4": ["embedding_layer=transformer4"] + EMB,
    "embedding": EMB,  # the default embedding (conv0 energies, rhythm, log-mel, kurtosis), its scorers alone
    "no-mel": ["mel_bins=0"] + EMB,
    "mel-512": ["mel_fft=512"] + EMB,
    "mel-32-bins": ["mel_bins=32"] + EMB,
    "mel-10ms": ["mel_hop_ms=10"] + EMB,
    "no-kurtosis": ["kurtosis_bands=0"] + EMB,
    "kurtosis-16-bands": ["kurtosis_bands=16"] + EMB,
    "kurtosis-512": ["kurtosis_fft=512", "kurtosis_hop_ms=8"] + EMB,
    "no-rhythm": ["envelope_bands=0"] + EMB,
    "rhythm-1-band": ["envelope_bands=1"] + EMB,
    "rhythm-8-bands": ["envelope_bands=8"] + EMB,
    "smooth-20ms": ["energy_smoothing_ms=20"] + EMB,
    "smooth-40ms": ["energy_smoothing_ms=40"] + EMB,
    "smooth-160ms": ["energy_smoothing_ms=160"] + EMB,
    "ledoit-wolf": ["mahalanobis_shrinkage=null"] + EMB,
    "shrink-1e-2": ["mahalanobis_shrinkage=0.01"] + EMB,
    "shrink-1e-3": ["mahalanobis_shrinkage=0.001"] + EMB,
    "shrink-1e-4": ["mahalanobis_shrinkage=0.0001"] + EMB,
    "adapt-100": ["adapt_steps=100"],
    "adapt-100-lr1e-3": ["adapt_steps=100", "adapt_lr=0.001"],
    "window1s": ["window_seconds=1.0", "hop_seconds=0.5"],
    "window4s": ["window_seconds=4.0", "hop_seconds=4.0"],
    "contrastive-top20": ["contrastive_topk=20", "scorers=[contrastive,contrastive_bank]", "ensemble=[]",
                          "decision_scorer=contrastive"],
}


def machine_means(results: pd.DataFrame) -> pd.DataFrame:
    """Mean over machines of the machine-level (machine_id=all) rows: one row per scorer."""
    rows = results[results["machine_id"] == "all"]
    return rows.groupby("scorer", sort=False)[["auc", "pauc"]].mean()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--baseline", default=None, help="a `aiot-w2v2 baseline` report folder")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict] = {}
    if args.baseline:
        base = pd.read_csv(Path(args.baseline) / "results.csv", dtype={"machine_id": str})
        summary["ae_baseline"] = {"ae_baseline": machine_means(base).loc["ae_baseline"].to_dict(), "seconds": None}
    for name in args.variants.split(","):
        t0 = time.time()
        cfg = load_scoring_config(None, VARIANTS[name])
        fit_scoring(args.run, args.data, out / name / "model", cfg, progress=False)
        results = evaluate(out / name / "model", args.data, out / name / "report", progress=False)
        means = machine_means(results)
        summary[name] = {s: r.to_dict() for s, r in means.iterrows()} | {"seconds": round(time.time() - t0, 1)}
        print(f"{name:18s} " + "  ".join(f"{s} {r.auc:.3f}/{r.pauc:.3f}" for s, r in means.iterrows())
              + f"  ({time.time() - t0:.0f} s)", flush=True)
        (out / "summary.json").write_text(json.dumps(dict(run=args.run, data=args.data, variants=summary), indent=2))

    scorers = list(dict.fromkeys(s for v in summary.values() for s in v if s != "seconds"))
    lines = ["| variant | " + " | ".join(scorers) + " |", "|---" * (len(scorers) + 1) + "|"]
    for name, v in summary.items():
        cells = [f"{v[s]['auc']:.3f} / {v[s]['pauc']:.3f}" if s in v else "" for s in scorers]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
