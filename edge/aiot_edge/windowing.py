"""Sliding windows over a mono waveform (numpy only; shared by training-side scoring and the edge)."""

from __future__ import annotations

import numpy as np


def frame_windows(audio: np.ndarray, window: int, hop: int) -> np.ndarray:
    """Cut a 1-D signal into windows of `window` samples every `hop` samples.

    Returns an array [n_windows, window]. A signal shorter than one window gives zero windows; the
    tail that does not fill a whole window is dropped (the caller decides whether to pad).
    """
    if audio.ndim != 1:
        raise ValueError(f"expected a mono 1-D signal, got shape {audio.shape}")
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive, got window={window} hop={hop}")
    if audio.shape[0] < window:
        return np.zeros((0, window), dtype=audio.dtype)
    n = 1 + (audio.shape[0] - window) // hop
    idx = np.arange(window)[None, :] + hop * np.arange(n)[:, None]  # (n, window)
    return audio[idx]
