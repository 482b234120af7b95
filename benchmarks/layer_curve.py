"""What each layer of a pretrained wav2vec 2.0 knows about anomalies, against pretraining updates.

A fast learning curve for issue 12 (minutes per checkpoint, where `generalisation.py --curve` runs a
whole `fit` + `evaluate`). For each model (a random initialisation of the preset, and every
`RUN/ckpt_<step>` kept by `benchmarks/keep_checkpoints.sh`) and each clip of a synthetic suite, the
output of every conv block (after its norm and GELU) and every Transformer hidden state is pooled over
the whole clip (mean and std over time); per machine section a Ledoit-Wolf Gaussian is fitted on the
standardised normal training clips, and the Mahalanobis distance of each test clip is its anomaly score.
Prints and writes OUT/layer_curve_<suites>.csv / .md: mean AUC over the sections per layer (and per named
combination, e.g. the `learned` scorer's default `conv0+conv2+conv4`) against updates, per suite.

Nothing here is chosen: it measures a representation. Run the `heldout` suite once, at the end of a change.

    python benchmarks/layer_curve.py --suite dev --curve runs/pretrain_long --out runs/layer_curve
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generalisation import ensure_suite, random_checkpoint  # noqa: E402

from aiot_w2v2.anomaly.frontend import ScoringFrontend  # noqa: E402
from aiot_w2v2.anomaly.scoring_model import LEARNED_LAYERS  # noqa: E402
from aiot_w2v2.audio import load_audio  # noqa: E402
from aiot_w2v2.checkpoint import load_pretrained  # noqa: E402


def pooled_layers(model: torch.nn.Module, wave: np.ndarray) -> dict[str, np.ndarray]:
    """One clip -> {layer name: mean and std over time of its output} for every conv block and hidden state,
    computed by the scoring frontend itself (the `learned` embedding with every layer named)."""
    w2v = model.wav2vec2
    convs = [f"conv{i}" for i in range(len(w2v.feature_extractor.blocks))]
    names = convs + [f"transformer{j}" for j in range(len(w2v.encoder.layers) + 1)]
    frontend = ScoringFrontend(model, contrastive=False, codes=False, learned=True, learned_layers=tuple(names))
    learned = frontend(torch.from_numpy(wave)[None]).learned[0].numpy()
    sizes = [2 * b.conv.out_channels for b in w2v.feature_extractor.blocks]
    sizes += [2 * w2v.config.embed_dim] * (len(names) - len(convs))
    return dict(zip(names, np.split(learned, np.cumsum(sizes)[:-1]), strict=True))


def section_aucs(meta: pd.DataFrame, feats: dict[str, np.ndarray], combos: dict[str, list[str]]) -> pd.DataFrame:
    rows = []
    for (machine, section), g in meta.groupby(["machine", "section"]):
        tr = g.index[g.split == "train"].to_numpy()
        te = g.index[g.split == "test"].to_numpy()
        y = (meta.loc[te, "label"] == "anomaly").to_numpy().astype(int)
        for name, parts in combos.items():
            X = np.concatenate([feats[p] for p in parts], 1)
            X = (X - X[tr].mean(0)) / (X[tr].std(0) + 1e-6)
            score = LedoitWolf().fit(X[tr]).mahalanobis(X[te])
            rows.append(dict(machine=machine, section=section, family=g.family.iloc[0], layer=name,
                             auc=roc_auc_score(y, score)))
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", action="append", choices=("dev", "heldout"), help="repeatable; default dev")
    ap.add_argument("--suites-root", type=Path, default=Path("runs/suites"))
    ap.add_argument("--curve", type=Path, help="a pretraining run with ckpt_<step> folders")
    ap.add_argument("--model", action="append", default=[], metavar="STEP=PATH", help="extra checkpoints")
    ap.add_argument("--preset", default="tiny", help="preset of the random model (step 0)")
    ap.add_argument("--every", type=int, default=1, help="use checkpoints whose step is a multiple")
    ap.add_argument("--out", type=Path, default=Path("runs/layer_curve"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    models = {0: random_checkpoint(args.preset, args.out / "random")}
    if args.curve:
        for ck in args.curve.glob("ckpt_*"):
            m = re.fullmatch(r"ckpt_(\d+)", ck.name)
            if m and int(m.group(1)) % args.every == 0:
                models[int(m.group(1))] = ck
    for spec in args.model:
        step, path = spec.split("=", 1)
        models[int(step)] = Path(path)
    results = []
    for suite in args.suite or ["dev"]:
        root = ensure_suite(args.suites_root, suite)
        meta = pd.read_csv(root / "metadata.csv")
        for step in sorted(models):
            cache = args.out / suite / f"step_{step}.npz"
            if not cache.is_file():
                model = load_pretrained(models[step]).eval()
                t0, per_clip = time.time(), []
                with torch.inference_mode():
                    for k, rel in enumerate(meta.path):
                        per_clip.append(pooled_layers(model, load_audio(root / rel, 16000)))
                        if k % 250 == 0:
                            print(f"[{suite} step {step}] {k}/{len(meta)} clips, {time.time() - t0:.0f} s", flush=True)
                cache.parent.mkdir(parents=True, exist_ok=True)
                np.savez(cache, **{name: np.stack([c[name] for c in per_clip]) for name in per_clip[0]})
            feats = dict(np.load(cache))
            combos = {name: [name] for name in feats} | {"+".join(LEARNED_LAYERS): list(LEARNED_LAYERS)}
            r = section_aucs(meta, feats, combos).assign(suite=suite, step=step)
            results.append(r)
            best = r.groupby("layer").auc.mean().sort_values()
            print(f"[{suite} step {step}] learned default {best['+'.join(LEARNED_LAYERS)]:.3f}; best layer "
                  f"{best.index[-1]} {best.iloc[-1]:.3f}", flush=True)
    table = pd.concat(results)
    name = "layer_curve_" + "_".join(args.suite or ["dev"])  # one file per suite set: a later run keeps the other
    table.to_csv(args.out / f"{name}.csv", index=False)
    wide = table.groupby(["suite", "step", "layer"]).auc.mean().unstack("layer").round(3)
    order = [c for c in wide.columns if c.startswith("conv") and "+" not in c]
    order += [c for c in wide.columns if c.startswith("transformer")] + [c for c in wide.columns if "+" in c]
    md = markdown(wide[order].reset_index())
    (args.out / f"{name}.md").write_text(md)
    print(md)
    return 0


def markdown(df: pd.DataFrame) -> str:
    """A plain markdown table (no optional dependency)."""
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
