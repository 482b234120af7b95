"""Clips -> scoring windows, with the bad-input rules `fit` and `evaluate` share.

A clip is read as 16 kHz mono (`audio.load_audio`: other rates resampled, channels averaged; empty,
unreadable and NaN/Inf files raise `AudioError`) and cut into windows of `window` samples every
`hop` (`aiot_edge.windowing.frame_windows`, the edge daemon's windowing). A clip shorter than one
window but long enough for the scorers (`min_samples`) is scored as one window of its own length; a
shorter clip raises `ClipTooShort`. Silence and clipping are scored like any other audio.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from aiot_edge.windowing import frame_windows
from torch import Tensor

from ..audio import AudioError, load_audio


class ClipTooShort(AudioError):
    pass


def clip_windows(path: str | Path, window: int, hop: int, min_samples: int, sample_rate: int = 16000) -> np.ndarray:
    """(n_windows, samples) float32 for one clip; see the module docstring for the rules."""
    x = load_audio(path, sample_rate)
    if x.shape[0] >= window:
        return frame_windows(x, window, hop)
    if x.shape[0] < min_samples:
        raise ClipTooShort(f"{path}: {x.shape[0] / sample_rate:.3f} s is shorter than the scorers need "
                           f"({min_samples / sample_rate:.3f} s)")
    return x[None, :]


def read_windows(paths: Sequence[str], window: int, hop: int, min_samples: int,
                 sample_rate: int = 16000) -> tuple[list[np.ndarray], list[int], dict[str, str]]:
    """Every clip's windows in one list, the clip index of each, and the clips that failed (path -> reason)."""
    flat: list[np.ndarray] = []
    owner: list[int] = []
    errors: dict[str, str] = {}
    for k, path in enumerate(paths):
        try:
            w = clip_windows(path, window, hop, min_samples, sample_rate)
        except (OSError, ValueError) as exc:  # AudioError is a ValueError
            errors[path] = str(exc)
            continue
        flat += list(w)
        owner += [k] * len(w)
    return flat, owner, errors


def length_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped by equal length, in batches of at most `batch_size` (a batch needs one length)."""
    by_len: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        by_len.setdefault(n, []).append(i)
    for idx in by_len.values():
        for k in range(0, len(idx), batch_size):
            yield idx[k: k + batch_size]


def batches(windows: list[np.ndarray], batch_size: int) -> Iterator[tuple[list[int], Tensor]]:
    """Group windows (each (S,)) of equal length into batches: yields (their indices, (B, S) tensor)."""
    for part in length_batches([w.shape[0] for w in windows], batch_size):
        yield part, torch.from_numpy(np.stack([windows[i] for i in part]))
