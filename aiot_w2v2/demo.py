"""`aiot-w2v2 demo` / `make demo`: the main job on the embedded default data.

Generates synthetic machine sounds, pretrains the tiny preset on their normal training clips and
prints the loss / accuracy / code-perplexity summary with the training-curve PNG. Later stages
(fit, evaluate, export, edge daemon) join here as they land.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path


def run_demo(out: Path, minutes: float | None = None, seed: int = 0) -> int:
    from .config import load_pretrain_config
    from .synth import generate_dataset
    from .train.pretrain import pretrain

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = out / "data"
    print(f"[1/2] synthetic machine sounds -> {data}")
    if not (data / "metadata.csv").exists():
        generate_dataset(data, seed=seed)
    else:
        print("      (already there, reusing)")
    # The budget is a number of updates, so the demo learns as much on a slow machine as on a fast
    # one; `minutes` caps the wall time for impatient runs.
    overrides = [f"train.seed={seed}", f"train.max_minutes={minutes or 0}"]
    cfg = load_pretrain_config("tiny", overrides)
    cap = f", at most {minutes:g} min" if minutes else ""
    print(f"[2/2] pretraining the tiny preset for {cfg.optim.max_steps} updates{cap} -> {out / 'run'}")
    run = out / "run"
    if run.exists():  # the demo's own output from an earlier run: start afresh
        shutil.rmtree(run)
    summary = pretrain(cfg, [str(data)], run, progress=True)
    print()
    print(f"demo finished in {(time.time() - t0) / 60:.1f} min")
    print(f"  training curves: {out / 'run' / 'training_curves.png'}")
    print(f"  checkpoint:      {out / 'run' / 'checkpoint_last'}")
    del summary
    return 0
