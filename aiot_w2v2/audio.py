"""Audio in: read a file, downmix to mono, resample, and the small array helpers around that.

Everything here works on one clip as a float32 numpy array [samples]. The module knows nothing about
datasets, manifests or batching (see `aiot_w2v2.data`); it only turns a file into clean samples or
says clearly why it cannot. torchaudio is imported only when a file actually needs resampling, so
reading 16 kHz files does not pay for it.
"""

from __future__ import annotations

import os
from typing import TypeVar

import numpy as np
import torch
from aiot_edge.audio import AudioFormatError, read_mono

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


AudioError = AudioFormatError  # one error type for unusable audio, shared with the edge runtime


def load_audio(path: str | os.PathLike[str], sample_rate: int = 16000) -> np.ndarray:
    """Read `path` as float32 mono at `sample_rate`: shape [samples].

    Reading, the checks and the channel average are the edge runtime's (`aiot_edge.audio.read_mono`);
    files at another rate are resampled here with `torchaudio.functional.resample` (windowed sinc).
    Raises `AudioError` when the file cannot be read, holds no samples, or holds NaN/Inf samples.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    x, file_rate = read_mono(path)
    if file_rate != sample_rate:
        x = resample(x, file_rate, sample_rate)
    return x


def resample(x: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Resample a float32 array [samples] from `orig_rate` to `new_rate` (torchaudio, sinc)."""
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
    if orig_rate == new_rate:
        return x
    import torchaudio.functional as AF  # noqa: N812 - torchaudio's own alias; imported lazily (slow)

    y = AF.resample(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), orig_rate, new_rate)
    return y.numpy()


def resampled_length(n_samples: int, orig_rate: int, new_rate: int) -> int:
    """Length after `resample`: ceil(n * new / orig), as torchaudio computes it."""
    return -(-int(n_samples) * int(new_rate) // int(orig_rate))


def normalize(x: ArrayOrTensor, eps: float = 1e-5) -> ArrayOrTensor:
    """Zero mean, unit variance over the last axis: (x - mean) / sqrt(var + eps).

    The same formula as fairseq's `F.layer_norm(x, x.shape)`; a constant clip becomes zeros.
    """
    if isinstance(x, torch.Tensor):
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + eps)
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + eps)).astype(x.dtype, copy=False)


def crop_or_pad(x: np.ndarray, length: int, offset: int = 0) -> np.ndarray:
    """x[offset : offset + length], zero-padded at the end when the clip is too short: [length]."""
    if length < 0 or offset < 0:
        raise ValueError(f"length and offset must be >= 0, got length={length}, offset={offset}")
    out = x[offset : offset + length]
    if out.shape[-1] < length:
        pad = [(0, 0)] * (out.ndim - 1) + [(0, length - out.shape[-1])]
        out = np.pad(out, pad)
    return out
