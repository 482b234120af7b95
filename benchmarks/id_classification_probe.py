"""Probe: machine-ID classification as a training stage on top of a pretrained model (the DCASE winners' idea).

    python benchmarks/id_classification_probe.py --run /tmp/tiny400 --data /tmp/synth --steps 300

A head (LayerNorm -> Linear over the machine IDs) reads the default scoring embedding (first-conv-layer
energies + rhythm, differentiable); it is trained with cross-entropy on 2 s windows of every ID's normal
training clips, together with the first conv layer (`--head-only` freezes it; the embedding then does not
change). Then every ID's test clips are scored by (a) Mahalanobis on the new embedding, fitted on that
ID's training windows as `fit` does, and (b) -log p(own ID), the mean over a clip's windows. Prints the
mean AUC over machine IDs of both. Two torch threads. Not part of the product (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch
from sklearn.covariance import ShrunkCovariance
from sklearn.metrics import roc_auc_score
from torch import nn

from aiot_w2v2.anomaly.clips import clip_windows
from aiot_w2v2.anomaly.scoring_model import ScoringConfig, make_frontend
from aiot_w2v2.checkpoint import load_pretrained, resolve_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--head-only", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    meta = pd.read_csv(f"{a.data}/metadata.csv")
    meta["key"] = meta.machine + "/" + meta.machine_id.astype(str)
    keys = sorted(meta.key.unique())
    cfg = ScoringConfig(scorers=("mahalanobis",), ensemble=())
    fe = make_frontend(load_pretrained(resolve_run(a.run)).eval(), cfg)

    def windows(path: str) -> torch.Tensor:
        return torch.from_numpy(clip_windows(f"{a.data}/{path}", 32000, 16000, fe.min_samples)).float()

    train, test = meta[meta.split == "train"], meta[meta.split == "test"]
    per_clip = [windows(p) for p in train.path]
    x = torch.cat(per_clip)
    y = torch.tensor(np.concatenate([[keys.index(k)] * len(w) for k, w in zip(train.key, per_clip, strict=True)]))
    with torch.no_grad():
        dim = fe(x[:2]).embedding.shape[1]
    head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, len(keys)))
    for q in fe.parameters():
        q.requires_grad_(False)
    conv0 = fe.model.wav2vec2.feature_extractor.blocks[0].conv
    params = list(head.parameters())
    if not a.head_only:
        for q in conv0.parameters():
            q.requires_grad_(True)
        params += list(conv0.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    for step in range(a.steps):
        idx = torch.randint(0, len(x), (32,))
        logits = head(fe(x[idx]).embedding)
        loss = nn.functional.cross_entropy(logits, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == a.steps - 1:
            acc = (logits.argmax(1) == y[idx]).float().mean().item()
            print(f"step {step}: loss {loss.item():.3f}, batch accuracy {acc:.2f}", flush=True)

    with torch.no_grad():
        def embed(w: torch.Tensor) -> torch.Tensor:
            return torch.cat([fe(w[i: i + 64]).embedding for i in range(0, len(w), 64)])

        train_emb = embed(x).numpy()
        auc: dict[str, list[float]] = {"mahalanobis": [], "-log p(ID)": []}
        for key, g in test.groupby("key"):
            k = keys.index(key)
            cov = ShrunkCovariance(shrinkage=cfg.mahalanobis_shrinkage).fit(train_emb[(y == k).numpy()])
            maha, nll = [], []
            for path in g.path:
                e = embed(windows(path))
                maha.append(np.sqrt(cov.mahalanobis(e.numpy())).mean())
                nll.append(-torch.log_softmax(head(e), 1)[:, k].mean().item())
            label = (g.label == "anomaly").to_numpy()
            auc["mahalanobis"].append(roc_auc_score(label, maha))
            auc["-log p(ID)"].append(roc_auc_score(label, nll))
    print(f"steps {a.steps}, {'head only' if a.head_only else 'conv0 + head'}: mean AUC over machine IDs "
          + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in auc.items()))


if __name__ == "__main__":
    main()
