"""Probe: static int8 (QDQ -> QLinearConv) of the feature encoder's convs on top of the Transformer MatMuls.

    OMP_NUM_THREADS=1 python benchmarks/int8_convs_probe.py --model BUNDLE/fp32/model.onnx --data /tmp/synth

`--model` is an fp32 `model.onnx` of a one-machine bundle (e.g. from `benchmarks/export_bench.py --bundles
DIR`, which keeps DIR/fp32); `--machine fan --machine-id 00` picks the clips: 16 normal training clips
calibrate, the test clips are scored. Prints, per variant, the size, the CPU ms per 2 s window (one thread,
30 windows, fp32 timed beside it) and the largest score shift of each output column over the test windows
in units of that column's standard deviation over them. Not part of the product: `--quantize int8` keeps
the convs fp32 (aiot_w2v2/quantize.py says why); this measures what that choice costs.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import soundfile as sf
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from aiot_w2v2.quantize import _preprocess, _Windows, transformer_matmuls

WINDOW, HOP = 32000, 16000


def windows(paths: list[Path]) -> np.ndarray:
    out = []
    for p in paths:
        x = sf.read(p, dtype="float32")[0]
        out += [x[i: i + WINDOW] for i in range(0, len(x) - WINDOW + 1, HOP)]
    return np.stack(out)


def session(path: Path) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.intra_op_num_threads = o.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def cpu_ms(s: ort.InferenceSession, x: np.ndarray, runs: int = 30) -> float:
    s.run(None, {"audio": x[:1]})
    t = time.thread_time()
    for i in range(runs):
        s.run(None, {"audio": x[i % len(x)][None]})
    return (time.thread_time() - t) / runs * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--machine", default="fan")
    p.add_argument("--machine-id", default="00")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    pre = _preprocess(a.model, tmp)
    nodes = onnx.load(str(pre)).graph.node
    # The feature encoder's convs are the first seven plain Convs; the positional conv is named after its module.
    encoder = [n.name for n in nodes if n.op_type == "Conv" and "pos_conv" not in n.name
               and re.search(r"/Conv(_\d+)?$", n.name)]
    positional = [n.name for n in nodes if n.op_type == "Conv" and "pos_conv" in n.name]
    matmuls, _ = transformer_matmuls(pre)
    cal = windows(sorted((a.data / a.machine / "train").glob(f"normal_id_{a.machine_id}_*.wav"))[:16])
    test = windows(sorted((a.data / a.machine / "test").glob(f"*_id_{a.machine_id}_*.wav")))
    base = session(a.model)
    ref = np.concatenate([base.run(None, {"audio": x[None]})[0] for x in test])
    spread = ref.std(0) + 1e-9
    variants = {"encoder convs + MatMuls": encoder + matmuls, "encoder convs 1.. + MatMuls": encoder[1:] + matmuls,
                "encoder + positional convs + MatMuls": encoder + positional + matmuls}
    print(f"{len(encoder)} encoder convs, {len(positional)} positional convs, {len(matmuls)} Transformer MatMuls")
    for name, chosen in variants.items():
        dst = tmp / "q.onnx"
        with np.errstate(all="ignore"):
            quantize_static(str(pre), str(dst), _Windows(cal), quant_format=QuantFormat.QDQ, nodes_to_quantize=chosen,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            calibrate_method=CalibrationMethod.MinMax, extra_options={"MatMulConstBOnly": True})
        q = session(dst)
        got = np.concatenate([q.run(None, {"audio": x[None]})[0] for x in test])
        fp32_ms, int8_ms = cpu_ms(base, test), cpu_ms(q, test)
        print(f"{name}: {dst.stat().st_size / 1e6:.2f} MB (fp32 {a.model.stat().st_size / 1e6:.2f}), "
              f"CPU ms fp32 {fp32_ms:.1f} / int8 {int8_ms:.1f} = {fp32_ms / int8_ms:.2f}x; max shift in std per "
              f"column: {[round(float(v), 2) for v in (np.abs(got - ref) / spread).max(0)]}")


if __name__ == "__main__":
    main()
