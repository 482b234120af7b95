"""`aiot-w2v2 demo` / `make demo`: the main job on the embedded default data.

1. synthetic machine sounds (DCASE 2020 layout);
2. pretrain the tiny preset on their normal training clips, while the DCASE autoencoder baseline
   trains beside it in a subprocess on one thread (about 2 minutes);
3. fit the anomaly scorers on the normal training clips;
4. evaluate on the test clips: AUC / pAUC table with the baseline beside, report.html;
5. export the scoring model to an int8 ONNX bundle;
6. run the edge daemon on a few test clips with an embedded MQTT broker and print the alerts a
   subscriber received; the live dashboard runs beside the broker (its URL is printed) and, with
   `keep_dashboard`, stays up after the demo until Ctrl-C.

Every stage prints where its output went; the summary at the end lists them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _stage(k: int, n: int, text: str) -> None:
    print(f"\n[{k}/{n}] {text}", flush=True)


def run_demo(out: Path, minutes: float | None = None, seed: int = 0, baseline_epochs: int = 100,
             keep_dashboard: bool = False) -> int:
    from .anomaly.evaluate import evaluate
    from .anomaly.fit import fit_scoring
    from .config import load_pretrain_config
    from .synth import generate_dataset
    from .train.pretrain import pretrain

    n = 6
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = out / "data"
    _stage(1, n, f"synthetic machine sounds -> {data}")
    if not (data / "metadata.csv").exists():
        generate_dataset(data, seed=seed)
    else:
        print("      (already there, reusing)")

    run, baseline_dir = out / "run", out / "baseline"
    for old in (run, baseline_dir, out / "model", out / "report", out / "bundle"):
        if old.exists():  # the demo's own output from an earlier run: start afresh
            shutil.rmtree(old)
    # The budget is a number of updates, so the demo learns as much on a slow machine as on a fast
    # one; `minutes` caps the wall time for impatient runs.
    overrides = [f"train.seed={seed}", f"train.max_minutes={minutes or 0}"]
    cfg = load_pretrain_config("tiny", overrides)
    _stage(2, n, f"pretraining the tiny preset for {cfg.optim.max_steps} updates -> {run}\n"
                 f"      and, beside it, the DCASE autoencoder baseline ({baseline_epochs} epochs) -> {baseline_dir}")
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    baseline_log = out / "baseline.log"
    with open(baseline_log, "w") as log_fh:
        baseline = subprocess.Popen(
            [sys.executable, "-m", "aiot_w2v2", "baseline", "--data", str(data), "--out", str(baseline_dir),
             "--epochs", str(baseline_epochs), "--seed", str(seed), "--quiet"],
            stdout=log_fh, stderr=subprocess.STDOUT, env=env)
        pretrain(cfg, [str(data)], run, progress=True)
        if baseline.poll() is None:
            print("      waiting for the baseline to finish ...", flush=True)
        if baseline.wait() != 0:
            print(f"      the baseline failed (see {baseline_log}); the table will lack it")

    model = out / "model"
    _stage(3, n, f"fitting the scorers on the normal training clips -> {model}")
    fit_scoring(run, data, model, progress=True)

    report = out / "report"
    _stage(4, n, f"evaluating on the test clips -> {report}")
    have_baseline = (baseline_dir / "results.csv").exists()
    evaluate(model, data, report, baseline=baseline_dir if have_baseline else None, progress=True)

    from .edge_demo import run_edge_stage
    from .export import export_bundle

    machine, machine_id = "pump", "id_00"
    bundle = out / "bundle"
    _stage(5, n, f"exporting the scoring model for {machine} {machine_id} to an int8 ONNX bundle -> {bundle}")
    export_bundle(model, bundle, quantize="int8", progress=True, machines=[f"{machine}/{machine_id}"])

    test_dir = data / machine / "test"
    clips = [p for label in ("normal", "anomaly") for p in sorted(test_dir.glob(f"{label}_{machine_id}_*.wav"))[:6]]
    _stage(6, n, f"edge daemon on {len(clips)} test clips of {machine} {machine_id} (embedded MQTT broker); "
                 "a subscriber prints the alerts")
    dashboard_db = out / "dashboard.db"
    for old_db in out.glob("dashboard.db*"):  # the alerts of an earlier demo run
        old_db.unlink()
    alerts = run_edge_stage(bundle, clips, machine, machine_id, dashboard_db=dashboard_db,
                            keep_dashboard=keep_dashboard)

    print()
    print(f"demo finished in {(time.time() - t0) / 60:.1f} min")
    print(f"  training curves: {run / 'training_curves.png'}")
    print(f"  report:          {report / 'report.html'}")
    print(f"  bundle:          {bundle}")
    print(f"  alerts received: {len(alerts)} (one per incident of anomalous sound, not per clip: the edge "
          "stage's table says which clips each covers)")
    if dashboard_db.exists():
        print(f"  dashboard:       {dashboard_db} (see it again: aiot-w2v2 demo --keep-dashboard, or "
              f"aiot-edge dashboard --db {dashboard_db})")
    return 0
