"""Where an ONNX model's time goes in onnxruntime, by operator type and by node (one thread).

    OMP_NUM_THREADS=1 python benchmarks/ort_op_profile.py BUNDLE/model.onnx [--runs 30] [--seconds 2]

Runs a random window (batch 1) `--runs` times with onnxruntime's profiler on and prints the kernel time
per run of each operator type and of the slowest nodes. What int8 can speed up is the share of the
Conv / MatMul (and their integer forms); everything else stays fp32 in either bundle, which bounds the
int8-vs-fp32 ratio from above: total / (total - GEMM time) even for GEMMs that took no time at all.
"""

from __future__ import annotations

import argparse
import collections
import json
import os

import numpy as np
import onnxruntime as ort

GEMMS = {"Conv", "MatMul", "Gemm", "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul",
         "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "FusedConv", "FusedMatMul", "FusedGemm"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.enable_profiling = True
    session = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
    x = (np.random.default_rng(0).standard_normal((1, int(args.seconds * 16000))) * 0.1).astype(np.float32)
    name = session.get_inputs()[0].name
    session.run(None, {name: x})  # warm-up, not profiled apart: it is one run in `runs + 1`
    for _ in range(args.runs):
        session.run(None, {name: x})
    trace = session.end_profiling()
    events = json.load(open(trace))
    os.remove(trace)
    by_op: collections.Counter[str] = collections.Counter()
    by_node: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
            by_node[f'{e["args"]["op_name"]} {e["name"][:-len("_kernel_time")]}'] += e["dur"]
    per_run = 1000.0 * (args.runs + 1)  # us -> ms per run
    total = sum(by_op.values()) / per_run
    gemm = sum(v for k, v in by_op.items() if k in GEMMS) / per_run
    print(f"{args.model}: {total:.2f} ms of kernel time per {args.seconds:g} s window; Conv/MatMul/Gemm "
          f"{gemm:.2f} ms ({100 * gemm / total:.0f}%): the rest bounds any int8 speed-up at "
          f"{total / max(total - gemm, 1e-9):.2f}x")
    print("| operator | ms per window | share |\n|---|---|---|")
    for op, us in by_op.most_common(args.top):
        print(f"| {op} | {us / per_run:.2f} | {100 * us / per_run / total:.0f}% |")
    print("\nslowest nodes:")
    for node, us in by_node.most_common(args.top):
        print(f"  {us / per_run:6.2f} ms  {node[:100]}")


if __name__ == "__main__":
    main()
