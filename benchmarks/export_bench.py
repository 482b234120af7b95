"""Exported bundles side by side: torch fp32, onnxruntime fp32, onnxruntime int8 (dynamic, and static QDQ).

For one fitted model folder and a DCASE-layout data folder, this exports the bundles with
`aiot_w2v2.export.export_bundle` and measures, in one process:

- size of model.onnx (MB);
- latency of one window at batch 1 on ONE thread (`torch.set_num_threads(1)`, onnxruntime
  `intra_op_num_threads=1`): the backends take turns window by window (torch, ort fp32, ort int8, ...),
  so a noisy neighbour slows all alike; wall and CPU time (`time.thread_time`: with one thread, torch
  and onnxruntime compute in the calling thread) medians;
- real-time factor = median latency / window seconds (< 1: faster than real time), from wall time and
  from CPU time (on a shared machine the process waits for a core; CPU time is what one free core needs);
  the speed ratio to ort fp32 is the median over rounds of the CPU-time ratio within the round;
- AUC of every scorer per machine ID over the test clips (clip score = mean of its window scores, as
  `aiot-w2v2 evaluate`), averaged over the machine IDs of the bundle.

    OMP_NUM_THREADS=1 python benchmarks/export_bench.py --model /tmp/exp/r1/model --data /tmp/synth \\
        --out benchmarks/results/export_tiny.json [--machines fan/id_00] [--scorers ...] [--static]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from aiot_w2v2.anomaly.clips import clip_windows
from aiot_w2v2.anomaly.metrics import id_key
from aiot_w2v2.anomaly.scoring_model import ScoringModel, entry_key, load_scoring_model
from aiot_w2v2.data.manifest import build_manifest
from aiot_w2v2.export import export_bundle, narrow_model, run, session


def labelled_windows(model: ScoringModel, data: Path) -> tuple[list[np.ndarray], list[int], list[tuple[str, int]]]:
    """Windows of the test clips of the model's machine IDs: (windows, owner clip, clips as (entry, label))."""
    m = build_manifest([data])
    m = m[(m["split"] == "test") & m["label"].notna()]
    keys = {entry_key(*e) for e in model.meta.entries}
    windows, owner, clips = [], [], []
    for r in m.itertuples():
        key = entry_key(r.machine, id_key(r.machine_id))
        if key not in keys:
            continue
        w = clip_windows(r.path, model.meta.window, model.meta.hop, model.frontend.min_samples)
        if w.shape[1] != model.meta.window:
            continue  # a clip shorter than a window: skipped here, to keep one batch shape
        clips.append((key, int(r.label == "anomaly")))
        windows += list(w)
        owner += [len(clips) - 1] * len(w)
    return windows, owner, clips


def mean_aucs(model: ScoringModel, scores: np.ndarray, owner: list[int], clips: list[tuple[str, int]]) -> dict:
    """Clip means of window scores -> AUC per machine ID and scorer -> mean over machine IDs, per scorer."""
    sums = np.zeros((len(clips), scores.shape[1]))
    np.add.at(sums, np.asarray(owner), scores)
    clip_scores = sums / np.bincount(owner, minlength=len(clips))[:, None]
    col = {c: j for j, c in enumerate(model.columns)}
    out = {}
    for s in model.meta.config.columns_per_entry():
        aucs = []
        for key in sorted({k for k, _ in clips}):
            rows = [i for i, (k, _) in enumerate(clips) if k == key]
            y = [clips[i][1] for i in rows]
            if 0 < sum(y) < len(y):
                aucs.append(roc_auc_score(y, clip_scores[rows, col[f"{key}/{s}"]]))
        out[s] = float(np.mean(aucs)) if aucs else float("nan")
    return out


def profile_parts(path: Path, x: np.ndarray, runs: int = 10) -> dict[str, float]:
    """onnxruntime's per-node kernel times (ms per window, one thread), summed by part of the model.

    Graph fusions are off (basic optimizations only) so that every node keeps the exporter's scope
    name; the sum is therefore a little above the optimized model's latency.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "export-bench-profile")
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs + 1):
        run(sess, x)
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    parts: dict[str, float] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        name = e["name"]
        if "/encoder/" in name or "final_proj" in name:
            part = "transformer (all mask passes)"
        elif name.startswith("/frontend/"):
            part = "feature encoder, codes, embedding"
        else:
            part = "scorers"
        parts[part] = parts.get(part, 0.0) + e["dur"] / 1e3 / (runs + 1)
    return parts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder from `aiot-w2v2 fit`")
    p.add_argument("--data", required=True, help="DCASE-layout folder with <machine>/test clips")
    p.add_argument("--machines", nargs="*", default=None, help="bundle only these machine IDs (fan/id_00 ...)")
    p.add_argument("--scorers", nargs="*", default=None, help="bundle only these scorers")
    p.add_argument("--static", action="store_true", help="also static int8 (QDQ), calibrated on --data's normal clips")
    p.add_argument("--runs", type=int, default=30, help="timed rounds (each backend once per round)")
    p.add_argument("--bundles", default=None, help="keep the bundles here (default: a temporary folder)")
    p.add_argument("--profile", action="store_true", help="also where the time goes (onnxruntime profiler)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()

    torch.set_num_threads(1)
    data = Path(args.data)
    keep = Path(args.bundles) if args.bundles else Path(tempfile.mkdtemp(prefix="export-bench-"))
    narrow = dict(machines=args.machines, scorers=args.scorers)
    model = narrow_model(load_scoring_model(args.model), **narrow)
    window_s = model.meta.window / model.meta.sample_rate

    bundles = {"ort fp32": export_bundle(args.model, keep / "fp32", quantize="none", progress=False, **narrow),
               "ort int8": export_bundle(args.model, keep / "int8", quantize="int8", progress=False, **narrow)}
    if args.static:
        bundles["ort int8 static"] = export_bundle(args.model, keep / "int8_static", quantize="int8",
                                                   calibration=data, progress=False, **narrow)
    quant = {k: json.loads((b / "bundle.json").read_text())["model"]["quantization"] for k, b in bundles.items()}
    sessions = {k: session(b / "model.onnx", threads=1) for k, b in bundles.items()}
    sizes = {k: (b / "model.onnx").stat().st_size / 1e6 for k, b in bundles.items()}

    windows, owner, clips = labelled_windows(model, data)
    x = windows[len(windows) // 2][None]  # (1, window): a real window
    backends: dict[str, Any] = {"torch fp32": lambda w: model(torch.from_numpy(w)).numpy()}
    backends.update({k: (lambda w, s=s: run(s, w)) for k, s in sessions.items()})

    # Latency: backends take turns, one window each, batch 1.
    wall = {k: [] for k in backends}
    cpu = {k: [] for k in backends}
    with torch.inference_mode():
        for f in backends.values():
            f(x), f(x)  # warm-up
        for _ in range(args.runs):
            for k, f in backends.items():
                t, c = time.perf_counter(), time.thread_time()
                f(x)
                wall[k].append(time.perf_counter() - t)
                cpu[k].append(time.thread_time() - c)

    # AUC over the test clips (batches of 8 windows; the batch does not change a window's scores).
    aucs = {}
    X = np.stack(windows).astype(np.float32)
    with torch.inference_mode():
        for k, f in backends.items():
            scores = np.concatenate([f(X[i: i + 8]) for i in range(0, len(X), 8)])
            aucs[k] = mean_aucs(model, scores, owner, clips)

    decision = model.meta.config.decision_scorer
    ref = np.asarray(cpu["ort fp32"])
    rows = []
    for k in backends:
        w, c = np.asarray(wall[k]), np.asarray(cpu[k])
        rows.append(dict(backend=k, quantization=quant.get(k, "none"), size_mb=sizes.get(k),
                         wall_ms=float(np.median(w) * 1e3), wall_p90_ms=float(np.percentile(w, 90) * 1e3),
                         cpu_ms=float(np.median(c) * 1e3), cpu_min_ms=float(c.min() * 1e3),
                         rtf=float(np.median(w) / window_s), rtf_cpu=float(np.median(c) / window_s),
                         speed_vs_ort_fp32=float(np.median(ref / c)), auc=aucs[k], auc_decision=aucs[k][decision]))

    print(f"model {args.model}: {len(model.meta.entries)} machine IDs, scorers {model.meta.config.columns_per_entry()}")
    print(f"{len(clips)} test clips, {len(X)} windows of {window_s:g} s; latency: batch 1, one thread, "
          f"{args.runs} rounds")
    print(f"| backend | size MB | wall ms (median, p90) | CPU ms (median, min) | RTF wall / CPU | speed vs ORT fp32 "
          f"| mean AUC ({decision}) | mean AUC (all scorers) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        size = f"{r['size_mb']:.2f}" if r["size_mb"] else "-"
        label = r["backend"] if r["backend"] == "torch fp32" else f"{r['backend']} ({r['quantization']})"
        print(f"| {label} | {size} | {r['wall_ms']:.1f}, {r['wall_p90_ms']:.1f} | {r['cpu_ms']:.1f}, "
              f"{r['cpu_min_ms']:.1f} | {r['rtf']:.4f} / {r['rtf_cpu']:.4f} | {r['speed_vs_ort_fp32']:.2f}x | "
              f"{r['auc_decision']:.4f} | {np.mean(list(r['auc'].values())):.4f} |")
    fp32 = next(r for r in rows if r["backend"] == "ort fp32")
    for r in rows:
        if r["backend"].startswith("ort int8") and r["quantization"] != "none":
            print(f"{r['backend']} vs ort fp32: {r['speed_vs_ort_fp32']:.2f}x faster (target >= 1.5), size "
                  f"{100 * r['size_mb'] / fp32['size_mb']:.0f}% (target <= 35%), AUC {decision} "
                  f"{r['auc_decision'] - fp32['auc_decision']:+.4f}, worst scorer "
                  f"{min(r['auc'][s] - fp32['auc'][s] for s in r['auc']):+.4f} (target within 0.01)")
    parts = {}
    if args.profile:
        for k, b in bundles.items():
            parts[k] = profile_parts(b / "model.onnx", x)
            total = sum(parts[k].values())
            print(f"{k} ({quant[k]}), kernel time by part: " + ", ".join(
                f"{part} {ms:.1f} ms ({100 * ms / total:.0f}%)" for part, ms in sorted(parts[k].items())))
    if args.out:
        info = dict(model=str(args.model), data=str(data), machines=[entry_key(*e) for e in model.meta.entries],
                    scorers=model.meta.config.columns_per_entry(), window_s=window_s, clips=len(clips),
                    windows=len(X), runs=args.runs, rows=rows, machine=platform.processor() or platform.machine(),
                    cpus=os.cpu_count(), date=time.strftime("%Y-%m-%d"), profile=parts,
                    verification={k: json.loads((b / "bundle.json").read_text())["verification"]
                                  for k, b in bundles.items()})
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(info, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
