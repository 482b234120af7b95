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
    with _quiet_root_logger():
        quantize_dynamic(str(pre), str(dst), nodes_to_quantize=nodes, weight_type=QuantType.QInt8,
                         per_channel=False, extra_options={"MatMulConstBOnly": True})
    return dict(method="dynamic", op_types=["MatMul"], quantized_nodes=len(nodes), kept_fp32=sorted(set(kept)))


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
    # The calibrator takes the range of every tensor, also of masked similarities that hold -inf (never
    # quantized); numpy's warnings about those ranges are noise.
    with np.errstate(invalid="ignore", divide="ignore"), _quiet_root_logger():
        quantize_static(str(pre), str(dst), _Windows(windows), quant_format=QuantFormat.QDQ, nodes_to_quantize=nodes,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=False,
                        calibrate_method=CalibrationMethod.MinMax, extra_options={"MatMulConstBOnly": True})
    return dict(method="static-qdq", op_types=["MatMul"], quantized_nodes=len(nodes), kept_fp32=sorted(set(kept)),
                calibration_windows=int(len(windows)))
