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


class Windower:
    """Sliding windows over a stream that arrives in chunks of any size.

    `push` appends samples to a buffer and returns every window they complete, as
    `(window_samples, start_sample)` with `start_sample` counted from the first sample pushed since
    the last `reset`. The windows are exactly `frame_windows` of the concatenated stream: the buffer
    keeps the `window - hop` samples the next window shares with this one (and, when hop > window,
    skips the samples no window covers). Call `reset` at a file boundary so each file is windowed on
    its own; a live stream is pushed continuously.
    """

    def __init__(self, window: int, hop: int):
        if window <= 0 or hop <= 0:
            raise ValueError(f"window and hop must be positive, got window={window} hop={hop}")
        self.window, self.hop = int(window), int(hop)
        self._buf = np.zeros(2 * self.window + self.hop, dtype=np.float32)  # grows for large chunks
        self.reset()

    def reset(self) -> None:
        """Forget buffered samples; the next push starts at sample 0."""
        self._len = 0  # valid samples in _buf
        self._buf_start = 0  # absolute index of _buf[0]
        self._next_start = 0  # absolute start of the next window
        self._received = 0  # samples pushed since reset

    @property
    def samples_seen(self) -> int:
        """Samples pushed since the last `reset`."""
        return self._received

    @property
    def pending(self) -> int:
        """Buffered samples that belong to windows not yet complete."""
        return self._len

    def push(self, samples: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """Append a mono chunk [n] and return the windows it completes, oldest first (copies)."""
        if samples.ndim != 1:
            raise ValueError(f"expected a mono 1-D chunk, got shape {samples.shape}")
        x = samples.astype(np.float32, copy=False)
        chunk_start = self._received
        self._received += x.shape[0]
        skip = self._next_start - chunk_start  # > 0 only when hop > window: samples no window needs
        if skip > 0:
            x = x[skip:]
            chunk_start += min(skip, samples.shape[0])
        if self._len == 0:
            self._buf_start = chunk_start
        self._append(x)

        out = []
        while self._next_start + self.window <= self._buf_start + self._len:
            i = self._next_start - self._buf_start
            out.append((self._buf[i:i + self.window].copy(), self._next_start))
            self._next_start += self.hop
        # keep only what the next window needs
        drop = min(self._next_start - self._buf_start, self._len)
        if drop > 0:
            self._buf[: self._len - drop] = self._buf[drop:self._len]
            self._len -= drop
            self._buf_start += drop
        return out

    def _append(self, x: np.ndarray) -> None:
        need = self._len + x.shape[0]
        if need > self._buf.shape[0]:
            grown = np.zeros(max(need, 2 * self._buf.shape[0]), dtype=np.float32)
            grown[: self._len] = self._buf[: self._len]
            self._buf = grown
        self._buf[self._len:need] = x
        self._len = need
