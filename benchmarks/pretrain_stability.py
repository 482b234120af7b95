"""Does pretraining learn on stationary machine audio? Runs named recipe variants and reports the signals.

For each variant: a fixed number of updates on the normal training clips of a synthetic set, then the
mean over the last 25 updates of the contrastive loss L_m, the accuracy, the chance accuracy (a uniform
guess among the distractors that differ from the positive), the code perplexity (G = collapsed,
G*V = all codes used) and the share of distractors whose codes equal the positive's.

    python benchmarks/pretrain_stability.py --data DATA --steps 150 --variants small_gn_paper,small_ln_fix
    python benchmarks/pretrain_stability.py --list

The loop is deliberately minimal (AdamW, linear warmup, clipping): it isolates the objective from the
training infrastructure. DATA defaults to a synthetic set generated on the fly (`aiot-w2v2 synth`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from aiot_w2v2.config import load_pretrain_config
from aiot_w2v2.data import build_manifest, make_loader, set_loader_epoch
from aiot_w2v2.model import Wav2Vec2ForPreTraining

# A smaller model than tiny (64-channel convs, 2 x 96 Transformer) so many variants fit in minutes;
# the conclusions were checked on the tiny preset itself (see RESULTS.md).
SMALL = ["model.num_layers=2", "model.embed_dim=96", "model.ffn_dim=192", "model.num_heads=2",
         "model.conv_layers=[[64,10,5],[64,3,2],[64,3,2],[64,3,2],[64,3,2],[64,2,2],[64,2,2]]", "model.final_dim=64"]
LN = ["model.extractor_mode=layer_norm", "model.conv_bias=true"]
CROSS20 = ["loss.num_negatives=0", "loss.cross_sample_negatives=20"]

VARIANTS: dict[str, list[str]] = {
    # fairseq/HF recipe on the tiny architecture: same-clip distractors, U(0,1) codebook, diversity 0.1
    "tiny_paper": ["model.extractor_mode=group_norm", "model.conv_bias=false", "model.codebook_init=uniform",
                   "loss.diversity_weight=0.1", "loss.num_negatives=100", "loss.cross_sample_negatives=0",
                   "loss.feature_penalty_weight=10", "data.group_by=none"],
    "tiny_paper_normal_init": ["model.extractor_mode=group_norm", "model.conv_bias=false",
                               "loss.diversity_weight=0.1", "loss.num_negatives=100",
                               "loss.cross_sample_negatives=0", "loss.feature_penalty_weight=10",
                               "data.group_by=none"],
    "tiny_gn_mixed_cross20_div1": ["model.extractor_mode=group_norm", "model.conv_bias=false", *CROSS20,
                                   "loss.diversity_weight=1.0", "loss.feature_penalty_weight=10",
                                   "data.group_by=none"],
    "tiny_ln_mixed_cross20_div1": [*LN, *CROSS20, "loss.diversity_weight=1.0", "loss.feature_penalty_weight=10",
                                   "data.group_by=none"],
    "small_gn_mixed_div01": [*SMALL, "model.extractor_mode=group_norm", "model.conv_bias=false", *CROSS20,
                             "loss.diversity_weight=0.1", "loss.feature_penalty_weight=10", "data.group_by=none"],
    "small_ln_mixed_div01": [*SMALL, *LN, *CROSS20, "loss.diversity_weight=0.1", "loss.feature_penalty_weight=10",
                             "data.group_by=none"],
    "small_ln_mixed_div05": [*SMALL, *LN, *CROSS20, "loss.diversity_weight=0.5", "loss.feature_penalty_weight=10",
                             "data.group_by=none"],
    "small_ln_mixed_div01_nodupmask": [*SMALL, *LN, *CROSS20, "loss.diversity_weight=0.1",
                                       "loss.feature_penalty_weight=10", "loss.mask_duplicate_negatives=false",
                                       "data.group_by=none"],
    "small_ln_mixed_div01_fp0": [*SMALL, *LN, *CROSS20, "loss.diversity_weight=0.1",
                                 "loss.feature_penalty_weight=0", "data.group_by=none"],
    "small_ln_mixed_div05_fp0": [*SMALL, *LN, *CROSS20, "loss.diversity_weight=0.5",
                                 "loss.feature_penalty_weight=0", "data.group_by=none"],
    "small_ln_sameid_div05_fp0": [*SMALL, *LN, *CROSS20, "loss.diversity_weight=0.5",
                                  "loss.feature_penalty_weight=0", "data.group_by=machine_id"],
    "small_gn_mixed_div05_fp0": [*SMALL, "model.extractor_mode=group_norm", "model.conv_bias=false", *CROSS20,
                                 "loss.diversity_weight=0.5", "loss.feature_penalty_weight=0", "data.group_by=none"],
    "tiny": [],  # the shipped preset
}


def run_variant(name: str, data: str, steps: int, seed: int, log_every: int = 25) -> dict[str, float]:
    cfg = load_pretrain_config("tiny", VARIANTS[name])
    df = build_manifest([data])
    df = df[df.split == "train"].reset_index(drop=True)
    torch.manual_seed(seed)
    model = Wav2Vec2ForPreTraining(cfg.model, cfg.masking, cfg.loss).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
                            weight_decay=cfg.optim.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    history: list[tuple[float, ...]] = []
    step, epoch, t0 = 0, 0, time.time()
    while step < steps:
        loader = make_loader(df, cfg.data, seed=seed, epoch=epoch)
        set_loader_epoch(loader, epoch)
        epoch += 1
        for batch in loader:
            if batch is None:
                continue
            for group in opt.param_groups:
                group["lr"] = cfg.optim.lr * min(1.0, (step + 1) / max(cfg.optim.warmup_steps, 1))
            model.set_num_updates(step)
            out = model(batch.waveform, batch.padding_mask, generator=gen)
            opt.zero_grad()
            out.loss.backward()
            if cfg.optim.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_norm)
            opt.step()
            step += 1
            history.append((out.losses.contrastive.item(), out.accuracy.item(), out.chance_accuracy.item(),
                            out.code_perplexity.item(), out.negatives_equal_positive.item()))
            if step % log_every == 0:
                m = _mean(history[-log_every:])
                print(f"{name} step {step} t={time.time() - t0:.0f}s L_m={m[0]:.3f} acc={m[1]:.3f} "
                      f"chance={m[2]:.3f} code_ppl={m[3]:.1f} dup={m[4]:.3f}", flush=True)
            if step >= steps:
                break
    m = _mean(history[-25:])
    return {"variant": name, "steps": steps, "seconds": round(time.time() - t0, 1), "contrastive": m[0],
            "accuracy": m[1], "chance": m[2], "code_perplexity": m[3], "duplicate_share": m[4],
            "overrides": VARIANTS[name]}


def _mean(rows: list[tuple[float, ...]]) -> list[float]:
    return [sum(r[i] for r in rows) / len(rows) for i in range(len(rows[0]))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="DCASE-layout folder (default: generate the synthetic set)")
    p.add_argument("--variants", default="tiny_paper,small_ln_mixed_div05_fp0,tiny")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/pretrain_stability.json")
    p.add_argument("--list", action="store_true")
    args = p.parse_args()
    if args.list:
        for name, sets in VARIANTS.items():
            print(f"{name:32s} {' '.join(sets)}")
        return
    torch.set_num_threads(args.threads)
    data = args.data
    if data is None:
        from aiot_w2v2.synth import generate_dataset

        data = "benchmarks/results/synth_data"
        if not (Path(data) / "metadata.csv").exists():
            generate_dataset(data, seed=0)
    results = [run_variant(v, data, args.steps, args.seed) for v in args.variants.split(",")]
    print(f"\n{'variant':34s} {'L_m':>6s} {'acc':>6s} {'chance':>6s} {'ppl':>6s} {'dup':>6s}")
    for r in results:
        print(f"{r['variant']:34s} {r['contrastive']:6.3f} {r['accuracy']:6.3f} {r['chance']:6.3f} "
              f"{r['code_perplexity']:6.1f} {r['duplicate_share']:6.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
