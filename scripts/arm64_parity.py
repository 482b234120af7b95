"""The host side of `scripts/check_arm64.sh`: make a small real bundle and clips, compare two score runs.

    python scripts/arm64_parity.py bundle OUT            # OUT/bundle-fp32, OUT/bundle-int8, OUT/clips/*.wav
    python scripts/arm64_parity.py compare X86.jsonl ARM.jsonl [--rtol 1e-4] [--atol 1e-4]

`bundle` runs on the training side (torch): a synthetic DCASE-layout set (`aiot_w2v2.synth`), a tiny
random pretraining model (seeded; the same shape as the tests' tiny model), the anomaly scorers fitted
with every scorer of `aiot_w2v2.anomaly.scorers.SCORERS` on (so the graph holds the conv stack, the
Transformer, the quantizer, the log-mel and kurtosis STFTs), then the fp32 and int8 bundles of
`aiot-w2v2 export`. The clips to score are the synthetic test clips of both machine types.

`compare` reads the JSON lines of `aiot-edge score` from both machines, pairs them by (file, window
start, machine ID) and checks every score with |a - b| <= atol + rtol * |b| (b = x86), plus the alert
decision; it prints one PASS/FAIL line with the largest differences and exits 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

MACHINES = ("fan", "valve")
SEED = 0


def make_bundles(out: Path) -> None:
    """Write OUT/data (synthetic set), OUT/model (fitted), OUT/bundle-{fp32,int8}, OUT/clips (the test clips)."""
    import torch

    from aiot_w2v2.anomaly.fit import fit_scoring
    from aiot_w2v2.anomaly.scoring_model import ScoringConfig
    from aiot_w2v2.checkpoint import save_pretrained
    from aiot_w2v2.config import LossConfig, ModelConfig, PretrainConfig
    from aiot_w2v2.export import export_bundle
    from aiot_w2v2.model import Wav2Vec2ForPreTraining
    from aiot_w2v2.synth import generate_dataset

    torch.set_num_threads(1)  # small layers: more threads only wait on each other
    if out.exists():
        shutil.rmtree(out)
    data = out / "data"
    generate_dataset(data, machines=MACHINES, ids_per_machine=1, n_train=6, n_test_normal=2, n_test_anomaly=2,
                     seconds=2.0, seed=SEED, progress=False)
    # A random model is enough: the check is about the runtime on another CPU, not about accuracy.
    torch.manual_seed(SEED)
    model_cfg = ModelConfig(conv_layers=((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2, embed_dim=32,
                            num_layers=2, ffn_dim=64, num_heads=4, conv_pos=8, conv_pos_groups=4, latent_vars=8,
                            latent_groups=2, final_dim=16, dropout=0.0, attention_dropout=0.0, dropout_input=0.0,
                            dropout_features=0.0, layerdrop=0.0, extractor_mode="layer_norm", conv_bias=True)
    cfg = PretrainConfig(model=model_cfg, loss=LossConfig(num_negatives=0, cross_sample_negatives=10))
    run = out / "run"
    save_pretrained(Wav2Vec2ForPreTraining(cfg.model, cfg.masking, cfg.loss), cfg, run / "checkpoint_last")
    scoring = ScoringConfig(window_seconds=1.0, hop_seconds=0.5, folds=2, bank_frames=64, max_knn_windows=64,
                            ensemble=("mahalanobis", "contrastive_bank"), decision_scorer="ensemble")
    fit_scoring(run, data, out / "model", scoring, progress=False)
    export_bundle(out / "model", out / "bundle-fp32", quantize="none", progress=False)
    export_bundle(out / "model", out / "bundle-int8", quantize="int8", progress=False)
    clips = out / "clips"
    for machine in MACHINES:
        # keep the DCASE layout (<machine>/test/<label>_id_00_*.wav): `aiot-edge score` reads the machine from it
        (clips / machine / "test").mkdir(parents=True)
        for wav in sorted((data / machine / "test").glob("*.wav")):
            shutil.copy2(wav, clips / machine / "test" / wav.name)


def _rows(path: Path) -> dict[tuple[str, float, str], dict[str, Any]]:
    """JSON lines of `aiot-edge score` keyed by (file name, window start, machine ID); paths differ per machine."""
    rows = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SystemExit(f"{path}:{n}: not a JSON line ({e}): {line[:200]!r}") from e
        key = (Path(row["file"]).name, float(row["window_start"]), f"{row['machine']}/{row['machine_id']}")
        rows[key] = row
    return rows


def compare(x86: Path, arm: Path, rtol: float, atol: float, label: str) -> bool:
    """Print one PASS/FAIL line (and the worst mismatches); True when every score and decision agrees."""
    a, b = _rows(arm), _rows(x86)
    problems: list[str] = []
    if not b:
        problems.append(f"{x86} holds no scores")
    if a.keys() != b.keys():
        only_x86, only_arm = len(b.keys() - a.keys()), len(a.keys() - b.keys())
        problems.append(f"windows differ: {only_x86} only on x86, {only_arm} only on arm64")
    max_abs, max_rel, n_values, worst, worst_rel = 0.0, 0.0, 0, "", ""
    for key in sorted(a.keys() & b.keys()):
        ra, rb = a[key], b[key]
        pairs = [(f"scores.{k}", ra["scores"].get(k), v) for k, v in rb["scores"].items()]
        pairs.append(("score", ra.get("score"), rb.get("score")))
        for name, va, vb in pairs:
            n_values += 1
            if not (isinstance(va, (int, float)) and isinstance(vb, (int, float))
                    and math.isfinite(va) and math.isfinite(vb)):
                problems.append(f"{key} {name}: arm64 {va!r} vs x86 {vb!r}")
                continue
            diff = abs(va - vb)
            rel = diff / max(abs(vb), 1e-12)
            if diff > max_abs:
                max_abs, worst = diff, f"{key[0]} @{key[1]:g}s {name}: arm64 {va!r} x86 {vb!r}"
            if abs(vb) > atol and rel > max_rel:  # near 0 the absolute tolerance decides
                max_rel, worst_rel = rel, f"{key[0]} @{key[1]:g}s {name}: arm64 {va!r} x86 {vb!r}"
            if diff > atol + rtol * abs(vb):
                problems.append(f"{key} {name}: arm64 {va!r} vs x86 {vb!r} (|diff| {diff:.3g})")
        if ra.get("anomaly") != rb.get("anomaly"):
            problems.append(f"{key}: alert decision arm64 {ra.get('anomaly')} vs x86 {rb.get('anomaly')}")
    verdict = "FAIL" if problems else "PASS"
    print(f"{verdict} {label}: {len(b)} windows, {n_values} scores; max |diff| {max_abs:.3g}, max rel diff "
          f"{max_rel:.3g} (tolerance {atol:g} + {rtol:g}*|x86|)")
    if worst:
        print(f"  largest difference: {worst}")
    if worst_rel and worst_rel != worst:
        print(f"  largest relative difference: {worst_rel}")
    for p in problems[:20]:
        print(f"  mismatch: {p}")
    if len(problems) > 20:
        print(f"  ... and {len(problems) - 20} more")
    return not problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bundle", help="make the bundles and clips (needs the training side: torch)")
    b.add_argument("out", type=Path)
    c = sub.add_parser("compare", help="compare `aiot-edge score` outputs of x86 and arm64")
    c.add_argument("x86", type=Path)
    c.add_argument("arm64", type=Path)
    c.add_argument("--rtol", type=float, default=1e-4)
    c.add_argument("--atol", type=float, default=1e-4)
    c.add_argument("--label", default="arm64 vs x86")
    args = p.parse_args(argv)
    if args.cmd == "bundle":
        make_bundles(args.out)
        return 0
    return 0 if compare(args.x86, args.arm64, args.rtol, args.atol, args.label) else 1


if __name__ == "__main__":
    sys.exit(main())
