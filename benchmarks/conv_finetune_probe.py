"""Does fine-tuning the conv blocks help the `learned` embedding? A clip-level probe on one synthetic suite.

Issue 12, item 3, on the part of the network the `learned` scorer reads: the pretrained conv blocks up to
the deepest of `--layers` are trained on the suite's normal training clips alone, through the mean and
std over time of the `--layers` outputs (the `learned` embedding), a linear projection and a sub-cluster
AdaCos head (`anomaly/margin.py`) over pseudo-classes: (machine, section, domain) x speed (1, 0.8, 1.25),
with mixup and feature exchange (`anomaly/pseudo.py`), as the Transformer fine-tuning stage does. Before
and after (every `--eval-every` updates), each clip's whole-clip embedding is scored per section by
Ledoit-Wolf Mahalanobis, fitted on the training clips (as `benchmarks/layer_curve.py`); also the
projection's output. Mean AUC over sections. Test clips are read only for these AUCs.

    OMP_NUM_THREADS=1 python benchmarks/conv_finetune_probe.py --model runs/pretrain_gpu/B/ckpt_5090 --suite dev
    OMP_NUM_THREADS=1 python benchmarks/conv_finetune_probe.py --model random --suite dev --steps 150
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
from generalisation import ensure_suite, random_checkpoint  # noqa: E402

from aiot_w2v2.anomaly.embedder import ConvEmbedder  # noqa: E402
from aiot_w2v2.anomaly.margin import AngularMarginHead  # noqa: E402
from aiot_w2v2.anomaly.pseudo import make_batch, num_pseudo_classes  # noqa: E402
from aiot_w2v2.audio import load_audio  # noqa: E402
from aiot_w2v2.checkpoint import load_pretrained  # noqa: E402


def section_auc(meta: pd.DataFrame, X: np.ndarray) -> float:
    aucs = []
    for _, g in meta.groupby(["machine", "section"]):
        tr, te = g.index[g.split == "train"].to_numpy(), g.index[g.split == "test"].to_numpy()
        Z = (X - X[tr].mean(0)) / (X[tr].std(0) + 1e-6)
        y = (meta.loc[te, "label"] == "anomaly").to_numpy().astype(int)
        aucs.append(roc_auc_score(y, LedoitWolf().fit(Z[tr]).mahalanobis(Z[te])))
    return float(np.mean(aucs))


@torch.no_grad()
def embed_all(net: ConvEmbedder, clips: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each clip's pooled statistics (the `learned` embedding) and their projection (the head's input)."""
    emb = torch.cat([net.pooled(torch.from_numpy(c)[None]) for c in clips])
    return emb.numpy(), net.projection(net.norm(emb)).numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a pretraining checkpoint folder, or 'random' (tiny preset)")
    ap.add_argument("--suite", default="dev", choices=("dev", "heldout"))
    ap.add_argument("--suites-root", type=Path, default=Path("runs/suites"))
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--crop-seconds", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=1e-4, help="conv blocks")
    ap.add_argument("--head-lr", type=float, default=1e-3, help="projection and head")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--subclusters", type=int, default=4)
    ap.add_argument("--speeds", type=float, nargs="*", default=[0.8, 1.25])
    ap.add_argument("--mixup", type=float, default=0.5)
    ap.add_argument("--exchange", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    root = ensure_suite(args.suites_root, args.suite)
    meta = pd.read_csv(root / "metadata.csv")
    clips = [load_audio(root / p, 16000).astype(np.float32) for p in meta.path]
    train = meta.index[meta.split == "train"].to_numpy()
    keys = meta.loc[train, ["machine", "section", "domain"]].astype(str).agg("/".join, axis=1)
    names = sorted(set(keys))
    classes = [names.index(k) for k in keys]
    C = num_pseudo_classes(len(names), args.speeds)
    model = random_checkpoint("tiny", Path("runs/random_init")) if args.model == "random" else Path(args.model)
    w2v = load_pretrained(model).wav2vec2
    net = ConvEmbedder(w2v, tuple(args.layers), args.dim, gen)  # the product's fine-tuned part (finetune.part=conv)
    head = AngularMarginHead(args.dim, C, subclusters=args.subclusters, generator=gen)
    opt = torch.optim.AdamW([{"params": net.blocks.parameters(), "lr": args.lr},
                             {"params": list(net.projection.parameters()) + list(head.parameters()),
                              "lr": args.head_lr}], weight_decay=0.01)
    length = int(args.crop_seconds * 16000)
    print(f"{len(train)} training clips, {len(names)} metadata classes, {C} pseudo-classes, "
          f"embedding {net.projection.in_features}", flush=True)
    emb, pr = embed_all(net, clips)
    print(f"update 0: learned {section_auc(meta, emb):.3f}, projection {section_auc(meta, pr):.3f}", flush=True)
    t0, losses = time.time(), []
    for step in range(1, args.steps + 1):
        batch = make_batch(lambda i: clips[train[i]], classes, len(names), args.batch, length, args.speeds,
                           args.mixup, args.exchange, gen)
        loss = head.loss(net(batch.audio), batch.target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % args.eval_every == 0 or step == args.steps:
            emb, pr = embed_all(net, clips)
            print(f"update {step}: loss {np.mean(losses[-50:]):.3f}, learned {section_auc(meta, emb):.3f}, "
                  f"projection {section_auc(meta, pr):.3f} ({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
