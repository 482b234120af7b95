"""Does the learned embedding add to the fixed spectral one? A clip-level probe on a synthetic suite.

For one pretrained model and each clip of a suite (whole clip, no windows), the scoring frontend of the
default `ScoringConfig` gives the spectral embedding (the `mahalanobis` / `spectral` scorers' input) and
the `learned` embedding. Per section, fitted on the normal training clips alone: Mahalanobis (Ledoit-Wolf)
of each, z-scored sums `spectral + w * learned` (z on the training clips' own, in-sample scores), their
maximum, and one Mahalanobis over both embeddings standardised and concatenated. Mean AUC over sections.

    python benchmarks/fusion_probe.py --suite dev --model runs/pretrain_gpu/B/ckpt_5090 --out runs/fusion_probe
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generalisation import ensure_suite  # noqa: E402

from aiot_w2v2.anomaly.scoring_model import ScoringConfig, make_frontend  # noqa: E402
from aiot_w2v2.audio import load_audio  # noqa: E402
from aiot_w2v2.checkpoint import load_pretrained  # noqa: E402


def features(model_dir: Path, root: Path, meta: pd.DataFrame, cache: Path) -> dict[str, np.ndarray]:
    if cache.is_file():
        return dict(np.load(cache))
    frontend = make_frontend(load_pretrained(model_dir).eval(), ScoringConfig())
    spec, lrn, t0 = [], [], time.time()
    with torch.inference_mode():
        for k, rel in enumerate(meta.path):
            f = frontend(torch.from_numpy(load_audio(root / rel, 16000))[None])
            spec.append(f.embedding[0].numpy())
            lrn.append(f.learned[0].numpy())
            if k % 250 == 0:
                print(f"{k}/{len(meta)} clips, {time.time() - t0:.0f} s", flush=True)
    out = dict(spectral=np.stack(spec), learned=np.stack(lrn))
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def maha(X: np.ndarray, tr: np.ndarray, te: np.ndarray, standardise: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scores of the training clips, of the test clips)."""
    if standardise:
        X = (X - X[tr].mean(0)) / (X[tr].std(0) + 1e-6)
    lw = LedoitWolf().fit(X[tr])
    return lw.mahalanobis(X[tr]), lw.mahalanobis(X[te])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", default="dev", choices=("dev", "heldout"))
    ap.add_argument("--suites-root", type=Path, default=Path("runs/suites"))
    ap.add_argument("--model", type=Path, required=True, help="a pretraining checkpoint folder")
    ap.add_argument("--out", type=Path, default=Path("runs/fusion_probe"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    root = ensure_suite(args.suites_root, args.suite)
    meta = pd.read_csv(root / "metadata.csv")
    label = f"{args.model.parent.name}_{args.model.name}"
    feats = features(args.model, root, meta, args.out / args.suite / f"{label}.npz")
    rows = []
    for (machine, section), g in meta.groupby(["machine", "section"]):
        tr = g.index[g.split == "train"].to_numpy()
        te = g.index[g.split == "test"].to_numpy()
        y = (meta.loc[te, "label"] == "anomaly").to_numpy().astype(int)
        s_tr, s_te = maha(feats["spectral"], tr, te, standardise=False)
        l_tr, l_te = maha(feats["learned"], tr, te, standardise=True)
        zs = (s_te - s_tr.mean()) / s_tr.std()
        zl = (l_te - l_tr.mean()) / l_tr.std()
        res = {"spectral": zs, "learned": zl}
        for w in (0.25, 0.5, 1.0):
            res[f"spectral+{w}*learned"] = zs + w * zl
        res["max"] = np.maximum(zs, zl)
        both = np.concatenate([feats["spectral"], feats["learned"]], 1)
        res["joint"] = maha(both, tr, te, standardise=True)[1]
        for name, score in res.items():
            rows.append(dict(machine=machine, section=section, method=name, auc=roc_auc_score(y, score)))
    table = pd.DataFrame(rows).pivot_table(index=["machine", "section"], columns="method", values="auc")
    print(table.round(3).to_string())
    print(table.mean().round(3).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
