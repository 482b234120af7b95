"""int8 for an exported scoring model (onnxruntime.quantization): which nodes, and how.

Only the weight MatMuls of the Transformer (the context network: attention projections and
feed-forward layers, run once per mask pattern) are quantized. Everything else stays fp32, for
reasons measured on the edge preset (benchmarks/RESULTS.md, "Export (ONNX / int8)"; shifts in units of
a scorer's spread on normal windows):

- the quantizer's code logits (`weight_proj`) and its input: int8 flips the argmax of codes near a
  tie, and every code scorer with them (static int8 of `post_extract_proj`, which shares that input,
  moved code_hist by 0.5);
- the projections into the contrastive space (`project_q`, `final_proj`): the targets are compared
  with fp32 banks fitted on normal data; int8 `project_q` moved contrastive_bank by 1.1;
- the feature encoder's convs: dynamic int8 turns them into ConvInteger, slower than the fp32 Conv on
  x86, and both dynamic and static int8 convs moved the code scorers by 0.5-1;
- the scorers' statistics (banks, Mahalanobis precision) are Einsums against fitted tensors, not
  MatMuls; int8 of the precision matrix alone would move the Mahalanobis distance by 0.7.

`quant_pre_process` runs without symbolic shape inference, which gives up on the scorers' gathers.
A model without the Transformer (no contrastive scorer in the bundle) has nothing to quantize.
After the int8 step, `compact_weights` stores the contrastive path's remaining weights as int8 and the
banks as float16, the math staying fp32 (weight-only; see its docstring for what stays fp32 and why).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

QUANTIZE_SCOPE = "/encoder/layers."  # exporter scope of the Transformer blocks' nodes


def transformer_matmuls(path: str | Path) -> tuple[list[str], list[str]]:
    """(the Transformer's MatMul nodes with a constant weight, the other weight MatMuls kept fp32)."""
    model = onnx.load(str(path), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    chosen, kept = [], []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in weights:
            (chosen if QUANTIZE_SCOPE in node.name else kept).append(node.name)
    return chosen, kept


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs a line per tensor at INFO on the root logger; keep those out of the CLI."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def _preprocess(src: Path, tmp: Path) -> Path:
    dst = tmp / "pre.onnx"
    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    return dst


def quantize_dynamic_int8(src: str | Path, dst: str | Path, tmp: str | Path) -> dict[str, Any]:
    """Dynamic int8 (int8 weights, activations quantized per call) of the Transformer's MatMuls -> what was done.

    With nothing to quantize, `dst` is not written and the method is "none".
    """
    pre = _preprocess(Path(src), Path(tmp))
    nodes, kept = transformer_matmuls(pre)
    if not nodes:
        return dict(method="none", quantized_nodes=0, kept_fp32=sorted(set(kept)))
    dyn = Path(tmp) / "dynamic.onnx"
    with _quiet_root_logger():
        quantize_dynamic(str(pre), str(dyn), nodes_to_quantize=nodes, weight_type=QuantType.QInt8,
                         per_channel=False, extra_options={"MatMulConstBOnly": True})
    return dict(method="dynamic", op_types=["MatMul"], quantized_nodes=len(nodes), kept_fp32=sorted(set(kept)),
                **compact_weights(dyn, dst))


class _Windows(CalibrationDataReader):
    def __init__(self, windows: np.ndarray) -> None:
        self._rows = iter(windows)

    def get_next(self) -> dict[str, np.ndarray] | None:
        row = next(self._rows, None)
        return None if row is None else {"audio": row[None].astype(np.float32)}


def quantize_static_int8(src: str | Path, dst: str | Path, windows: np.ndarray, tmp: str | Path) -> dict[str, Any]:
    """Static int8 in QDQ format, activation ranges calibrated (min/max) on `windows` (n, window) of normal audio."""
    pre = _preprocess(Path(src), Path(tmp))
    nodes, kept = transformer_matmuls(pre)
    if not nodes:
        return dict(method="none", quantized_nodes=0, kept_fp32=sorted(set(kept)))
    qdq = Path(tmp) / "static.onnx"
    # The calibrator takes the range of every tensor, also of masked similarities that hold -inf (never
    # quantized); numpy's warnings about those ranges are noise.
    with np.errstate(invalid="ignore", divide="ignore"), _quiet_root_logger():
        quantize_static(str(pre), str(qdq), _Windows(windows), quant_format=QuantFormat.QDQ, nodes_to_quantize=nodes,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=False,
                        calibrate_method=CalibrationMethod.MinMax, extra_options={"MatMulConstBOnly": True})
    return dict(method="static-qdq", op_types=["MatMul"], quantized_nodes=len(nodes), kept_fp32=sorted(set(kept)),
                calibration_windows=int(len(windows)), **compact_weights(qdq, dst))


# ---------------------------------------------------------------------------------------------------
# weight-only storage: a smaller model.onnx, fp32 math

WEIGHT_OPS = {"Conv": 1, "MatMul": 1, "Gemm": 1}  # op -> input index of its weight
# Weights stored int8 (weight-only): those of nodes in these exporter scopes, which feed the contrastive
# scorers only (the positional conv and final_proj). Not the feature encoder's convs, the quantizer's
# weight_proj, post_extract_proj or project_q: weight-only int8 of them flips codes (code scorers moved
# by 0.4-1.5 std, AUC of code_hist -0.08 on the edge preset), and even fp16 feature-encoder convs moved
# code_hist by 0.3 std.
INT8_WEIGHT_SCOPES = ("/encoder/", "/final_proj")
# Fitted statistics (buffers "stat_<name>", read by Einsums) stored as float16, except these: the
# Mahalanobis precision in fp16 moved mahalanobis by 0.07 std and its AUC by 0.014 (int8 per row: 4.7 std).
FP16_STATS_EXCEPT = ("stat_maha_prec",)
MIN_COMPACT_ELEMENTS = 1024  # smaller tensors are not worth a node


def _weight_axis(node: onnx.NodeProto, ndim: int) -> int | None:
    """The output-channel axis of a weight: Conv (out, in, k) -> 0, MatMul B (..., K, N) -> last, Gemm by transB."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "MatMul":
        return ndim - 1 if ndim >= 2 else None
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return 0 if trans_b else 1


def int8_per_channel(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per slice along `axis`: (q int8, scale float32 (w.shape[axis],)); w ~= q * scale."""
    other = tuple(i for i in range(w.ndim) if i != axis)
    peak = np.abs(w).max(axis=other) if other else np.abs(w)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def compact_weights(src: str | Path, dst: str | Path, min_elements: int = MIN_COMPACT_ELEMENTS) -> dict[str, Any]:
    """Store some fp32 initializers of `src` compactly, the math staying fp32; writes `dst` -> what was done.

    - Conv / MatMul / Gemm weights of nodes in `INT8_WEIGHT_SCOPES`: int8 per output channel, symmetric,
      and a DequantizeLinear (opset 13+, `axis`) in front of the original node: activations are never
      quantized, and onnxruntime dequantizes the weight on each call (a few microseconds);
    - the fitted statistics (`stat_*`, but not `FP16_STATS_EXCEPT`): float16 and a Cast back to float32,
      which onnxruntime folds into a float32 constant when the session starts.

    Tensors with fewer than `min_elements` elements, or with another kind of consumer, are left alone.
    """
    model = onnx.load(str(src))
    graph = model.graph
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    graph_inputs = {i.name for i in graph.input}
    new_nodes: list[onnx.NodeProto] = []
    counts = {"int8_weights": 0, "fp16_stats": 0}
    before = after = 0
    for init in list(graph.initializer):
        users = consumers.get(init.name, [])
        if init.data_type != onnx.TensorProto.FLOAT or init.name in graph_inputs or not users:
            continue
        w = onnx.numpy_helper.to_array(init)
        if w.size < min_elements:
            continue
        name, axis = init.name, None
        if all(WEIGHT_OPS.get(n.op_type) == i and any(s in n.name for s in INT8_WEIGHT_SCOPES) for n, i in users):
            axes = {_weight_axis(n, w.ndim) for n, _ in users}
            if len(axes) != 1 or None in axes:
                continue
            axis = axes.pop()
        elif not (name.startswith("stat_") and name not in FP16_STATS_EXCEPT):
            continue
        graph.initializer.remove(init)
        if axis is None:
            graph.initializer.append(onnx.numpy_helper.from_array(w.astype(np.float16), f"{name}_fp16"))
            new_nodes.append(onnx.helper.make_node("Cast", [f"{name}_fp16"], [name], name=f"{name}_cast",
                                                   to=onnx.TensorProto.FLOAT))
            counts["fp16_stats"] += 1
            after += w.size * 2
        else:
            q, scale = int8_per_channel(w, axis)
            graph.initializer.extend([onnx.numpy_helper.from_array(q, f"{name}_int8"),
                                      onnx.numpy_helper.from_array(scale, f"{name}_scale")])
            new_nodes.append(onnx.helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale"], [name],
                                                   name=f"{name}_dequantize", axis=axis))
            counts["int8_weights"] += 1
            after += q.nbytes + scale.nbytes
        before += w.nbytes
    if counts["int8_weights"] and any(o.domain in ("", "ai.onnx") and o.version < 13 for o in model.opset_import):
        raise ValueError("per-channel DequantizeLinear needs opset 13+")
    nodes = new_nodes + list(graph.node)  # the new nodes read initializers only: first keeps the graph sorted
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return dict(weight_only={**counts, "fp32_bytes": int(before), "stored_bytes": int(after)})
