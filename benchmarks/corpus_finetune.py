"""Anomaly fine-tuning on the unlabeled pretraining corpus, with each recorded machine as a class.

`fit`'s fine-tuning (`finetune.part=conv`) learns to tell the machine IDs of the suite apart (8 IDs x
domains x speed pseudo-classes), which its own measurements call too easy. This benchmark makes the task
hard with many classes instead: every machine instance of the pretraining corpus (corpus folder x machine
x machine ID, a few hundred to a few thousand) times the speed pseudo-classes, with the same model, head,
mixup / feature exchange and resume as `fit` (`anomaly.finetune.finetune_embedder`). The corpus holds only
the development families, so the held-out suite stays unseen. It then scores a generalisation suite with
the `learned` statistics of the pretrained conv blocks and of the fine-tuned copy (the default `learned`
layers and rhythm), beside `spectral` and their fusion, as `benchmarks/branch_probe.py` does:

    python benchmarks/corpus_finetune.py --model runs/pretrain_s11/ckpt_16000 --corpus runs/corpus_s9/c11 \
        --out runs/s12/cft_c11 --steps 1000 --suite-dir runs/suites/dev

Rerunning with the same --out resumes the fine-tuning (exactly, as `fit --resume`) or, when it is done,
only scores. Rules are chosen on the dev suite; the held-out suite is scored once, after.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from aiot_w2v2.anomaly.clips import clip_windows
from aiot_w2v2.anomaly.embedder import ConvEmbedder
from aiot_w2v2.anomaly.finetune import AnomalyFinetuneConfig, finetune_embedder
from aiot_w2v2.anomaly.fit import resolve_checkpoint
from aiot_w2v2.anomaly.metrics import auc_pauc
from aiot_w2v2.anomaly.scoring_model import ScoringConfig, make_frontend
from aiot_w2v2.checkpoint import load_pretrained, read_config

sys.path.insert(0, str(Path(__file__).parent))
from branch_probe import fusion, mahalanobis, section_scores, summary  # noqa: E402


def corpus_classes(dirs: list[Path]) -> tuple[list[str], list[str]]:
    """Every clip of the corpus folders (each with the metadata.csv `synth` writes) and its machine instance."""
    paths, keys = [], []
    for d in dirs:
        meta = pd.read_csv(d / "metadata.csv")
        paths += [str(d / p) for p in meta["path"]]
        keys += [f"{d.name}/{m}/{i}" for m, i in zip(meta["machine"], meta["machine_id"], strict=True)]
    return paths, keys


def score_suite(pre: torch.nn.Module, tuned: ConvEmbedder, suite_dir: Path, cfg: ScoringConfig) -> pd.DataFrame:
    frontend = make_frontend(pre, cfg).eval()
    base = ConvEmbedder(pre.wav2vec2, cfg.learned_conv_layers(), 1, None, cfg.learned_extras(pre.wav2vec2)).eval()
    meta = pd.read_csv(suite_dir / "metadata.csv")
    win, hop = int(cfg.window_seconds * 16000), int(cfg.hop_seconds * 16000)
    spec, before, after, owner = [], [], [], []
    for k, path in enumerate(meta["path"]):
        w = torch.from_numpy(clip_windows(suite_dir / path, win, hop, frontend.min_samples))
        with torch.no_grad():
            spec.append(frontend(w).embedding.numpy())
            before.append(base.pooled(w).numpy())
            after.append(tuned.pooled(w).numpy())
        owner += [k] * w.shape[0]
    d = dict(owner=np.array(owner))
    feats = {"spectral": np.concatenate(spec), "learned, pretrained blocks": np.concatenate(before),
             "learned, fine-tuned on the corpus": np.concatenate(after)}
    kept, rows = {}, []
    for name, x in feats.items():
        sh, st = (1e-3, False) if name == "spectral" else (None, True)
        rule = lambda tr, te, x=x, sh=sh, st=st: mahalanobis(x[tr], x[te], sh, st)  # noqa: E731
        kept[name] = section_scores(d, meta, rule, np.random.default_rng(0))
        rows.append((name, *summary([auc_pauc(sec.y, sec.test) for sec in kept[name]])))
    for name in list(feats)[1:]:
        rows.append((f"fusion: mean z, spectral + {name}", *summary(fusion(kept["spectral"], kept[name]))))
    df = pd.DataFrame(rows, columns=["rule", "AUC", "pAUC", "per-section AUC"])
    df["per-section AUC"] = df["per-section AUC"].map(lambda a: " ".join(f"{v:.2f}" for v in a))
    return df


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="pretraining run folder or checkpoint folder")
    p.add_argument("--corpus", required=True, nargs="+", type=Path,
                   help="corpus folders (aiot-w2v2 synth --suite pretrain)")
    p.add_argument("--out", required=True, type=Path, help="fine-tuning state (resumed when present)")
    p.add_argument("--steps", type=int, default=1000, help="fine-tuning updates")
    p.add_argument("--suite-dir", type=Path, help="a generalisation suite to score after fine-tuning")
    p.add_argument("--session11-learned", action="store_true",
                   help="the session-11 `learned` (blocks 0 + 2 and the rhythm of block 2, no session-12 extras)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an AnomalyFinetuneConfig field")
    args = p.parse_args(argv)
    ckpt = resolve_checkpoint(args.model)
    _, pcfg = read_config(ckpt)
    pre = load_pretrained(ckpt).eval()
    paths, keys = corpus_classes(args.corpus)
    print(f"{len(paths)} corpus clips, {len(set(keys))} machine instances", file=sys.stderr)
    fields = AnomalyFinetuneConfig.__dataclass_fields__
    extra = {k: type(getattr(AnomalyFinetuneConfig, k))(v) for k, v in (s.split("=", 1) for s in args.set)
             if k in fields}
    ft = AnomalyFinetuneConfig(**({"steps": args.steps, "part": "conv", "min_clips": 1} | extra))
    cfg = ScoringConfig().validate()
    if args.session11_learned:
        cfg = replace(cfg, learned_fine_rhythm_layer="", learned_kurtosis_layers=()).validate()
    tuned, _ = finetune_embedder(pre, pcfg, paths, keys, keys, ft, args.out, conv_layers=cfg.learned_conv_layers(),
                                 extras=cfg.learned_extras(pre.wav2vec2), resume=True)
    if args.suite_dir is not None:
        with pd.option_context("display.max_colwidth", 80, "display.width", 200):
            print(score_suite(pre, tuned, args.suite_dir, cfg).to_string(index=False, float_format="%.3f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
