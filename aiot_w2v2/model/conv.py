"""`conv1d`: `F.conv1d` whose backward pass runs on PyTorch's native kernels for fp32 on CPU.

PyTorch sends CPU convolutions to oneDNN, forward and backward. For the feature encoder's long,
strided 1-D convs, oneDNN's backward is the slow half: with the backward on PyTorch's own im2col +
GEMM kernels, forward + backward ran 1.5-1.7x faster on a 2-core Xeon, while oneDNN's forward was the
faster forward (benchmarks/RESULTS.md, "Pretraining throughput"). So the forward stays `F.conv1d` and
only the backward switches kernels: the same math, outputs and gradients agree to float rounding.

`conv1d_time_major` is the same convolution for time-major features (B, T, C), the layout of the
layer-norm encoder (LARGE), whose norm is over channels: in training on CPU it is an im2col + GEMM
with a hand-written backward, which spares the two transposes per layer (and GELU's slow backward on
a transposed layout) that wrapping `F.conv1d` costs there.

Everywhere else (inference, CUDA, bf16/fp16 autocast where oneDNN uses AMX) both are plain
`F.conv1d`. oneDNN is switched off through the process-wide flag only while a backward runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor


def conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int = 1) -> Tensor:
    """x (B, C_in, T), weight (C_out, C_in, k) -> (B, C_out, T'), as `F.conv1d(x, weight, bias, stride)`."""
    if not _cpu_fp32_training(x, weight):
        return F.conv1d(x, weight, bias, stride)
    return _Conv1dNativeBackward.apply(x, weight, bias, stride)


def conv1d_time_major(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int = 1) -> Tensor:
    """x (B, T, C_in), weight (C_out, C_in, k) -> (B, T', C_out): `conv1d` on time-major features."""
    if not _cpu_fp32_training(x, weight):
        return F.conv1d(x.transpose(1, 2), weight, bias, stride).transpose(1, 2)
    return _Conv1dTimeMajor.apply(x, weight, bias, stride)


def _cpu_fp32_training(x: Tensor, weight: Tensor) -> bool:
    training = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    return (training and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and torch.backends.mkldnn.enabled)


@contextmanager
def _onednn_off() -> Iterator[None]:
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


class _Conv1dNativeBackward(torch.autograd.Function):
    """`F.conv1d` forward; backward with oneDNN off (a convolution's backward picks its kernel when it runs)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.has_bias = stride, bias is not None
        return F.conv1d(x, weight, bias, stride)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        with _onednn_off():
            grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, [ctx.stride], [0], [1], False, [0], 1,
                [needs[0], needs[1], ctx.has_bias and needs[2]])
        return grad_x, grad_w, grad_b, None


class _Conv1dTimeMajor(torch.autograd.Function):
    """Time-major conv as im2col + one GEMM. Backward: two GEMMs and k strided adds into grad_x."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.has_bias = stride, bias is not None
        cols = _windows(x, weight.shape[-1], stride)  # (B * T', k * C_in)
        w = _flat_weight(weight)  # (C_out, k * C_in)
        y = cols @ w.T if bias is None else torch.addmm(bias, cols, w.T)  # (B * T', C_out)
        return y.view(x.shape[0], -1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        (B, T, C), (C_out, _, k), stride = x.shape, weight.shape, ctx.stride
        T_out = grad.shape[1]
        grad = grad.reshape(B * T_out, C_out)
        needs = ctx.needs_input_grad
        grad_x = grad_w = grad_b = None
        if needs[0]:
            grad_cols = (grad @ _flat_weight(weight)).view(B, T_out, k, C)
            grad_x = x.new_zeros(B, T, C)
            for j in range(k):  # tap j of output frame t read input frame t * stride + j
                grad_x[:, j: j + stride * (T_out - 1) + 1: stride] += grad_cols[:, :, j]
        if needs[1]:  # the windows are recomputed rather than kept: 1.5x the input's memory otherwise
            grad_w = (grad.T @ _windows(x, k, stride)).view(C_out, k, C).transpose(1, 2)
        if ctx.has_bias and needs[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b, None


def _windows(x: Tensor, kernel: int, stride: int) -> Tensor:
    """x (B, T, C) -> (B * T', kernel * C): each row one window, taps major, channels minor (a copy)."""
    windows = x.unfold(1, kernel, stride).transpose(2, 3)  # (B, T', kernel, C) view
    return windows.reshape(-1, kernel * x.shape[-1])


def _flat_weight(weight: Tensor) -> Tensor:
    """(C_out, C_in, k) -> (C_out, k * C_in), in the order of `_windows`."""
    return weight.transpose(1, 2).reshape(weight.shape[0], -1)
