"""Log-mel features of the DCASE 2020 Task 2 autoencoder baseline, computed without librosa.

The baseline (`common.file_to_vector_array`, librosa 0.6) computes

    mel = librosa.feature.melspectrogram(y, sr, n_fft=1024, hop_length=512, n_mels=128, power=2.0)
    log_mel = 20 / power * log10(mel + sys.float_info.epsilon)          # (n_mels, T)
    vectors[:, n_mels * t : n_mels * (t + 1)] = log_mel[:, t : t + T - frames + 1].T   for t < frames

giving (T - frames + 1) vectors of n_mels * frames = 640 values per clip (none for T < frames).

Here the mel spectrogram is `torchaudio.transforms.MelSpectrogram` set up to match librosa:
librosa's `filters.mel` defaults to the Slaney mel scale (`htk=False`) and Slaney area
normalisation (`norm="slaney"`, `norm=1` in 0.6) while torchaudio defaults to `mel_scale="htk"`,
`norm=None`; we pass `mel_scale="slaney", norm="slaney"`. Both frame the signal the same way
(`center=True`, reflect padding as in librosa < 0.10, periodic Hann window, f_max = sr / 2), so
T = 1 + samples // hop. The one difference left is float32 arithmetic order (librosa's STFT is
complex64 too); the filterbank itself is checked against a numpy port of librosa's in the tests.

The module knows nothing about models; it turns waveforms or files into feature vectors.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torchaudio

from .audio import load_audio

LOG_EPS = sys.float_info.epsilon  # the baseline adds this to the mel power before log10


@dataclass(frozen=True)
class LogMelConfig:
    """Feature settings of the DCASE 2020 baseline (`baseline.yaml`, section `feature`)."""

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 128
    power: float = 2.0
    frames: int = 5  # consecutive frames stacked into one vector

    @property
    def dims(self) -> int:
        """Length of one stacked vector: n_mels * frames (640)."""
        return self.n_mels * self.frames

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "frames"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LogMelConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.power <= 0:
            raise ValueError(f"LogMelConfig.power must be > 0, got {self.power}")


@lru_cache(maxsize=8)
def mel_transform(cfg: LogMelConfig = LogMelConfig()) -> torchaudio.transforms.MelSpectrogram:
    """The torchaudio mel spectrogram matching `librosa.feature.melspectrogram` (see module doc)."""
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels,
        power=cfg.power, center=True, pad_mode="reflect", mel_scale="slaney", norm="slaney",
        f_min=0.0, f_max=cfg.sample_rate / 2,
    )


def log_mel(waveform: np.ndarray | torch.Tensor, cfg: LogMelConfig = LogMelConfig()) -> np.ndarray:
    """Log-mel energies in dB, 20 / power * log10(mel + eps): [..., samples] -> [..., n_mels, T].

    T = 1 + samples // hop_length. float32.
    """
    x = torch.as_tensor(waveform, dtype=torch.float32)
    if x.shape[-1] == 0:
        raise ValueError("log_mel: empty waveform")
    if x.shape[-1] <= cfg.n_fft // 2:
        # reflect padding needs more samples than the half window; librosa 0.6 fails here too
        raise ValueError(f"log_mel: {x.shape[-1]} samples, need more than n_fft / 2 = {cfg.n_fft // 2}")
    with torch.inference_mode():
        mel = mel_transform(cfg)(x)  # (..., n_mels, T)
        out = 20.0 / cfg.power * torch.log10(mel + LOG_EPS)
    return out.numpy()


def stack_frames(log_mel_spec: np.ndarray, frames: int = 5) -> np.ndarray:
    """Concatenate `frames` consecutive frames: [n_mels, T] -> [T - frames + 1, n_mels * frames].

    Vector v holds frames v, v+1, ..., v+frames-1, frame t at [n_mels * t : n_mels * (t + 1)], as
    the baseline's loop. Clips shorter than `frames` give an empty [0, n_mels * frames] array.
    """
    if log_mel_spec.ndim != 2:
        raise ValueError(f"stack_frames expects [n_mels, T], got shape {log_mel_spec.shape}")
    n_mels, n_frames = log_mel_spec.shape
    if n_frames < frames:
        return np.empty((0, n_mels * frames), dtype=log_mel_spec.dtype)
    windows = np.lib.stride_tricks.sliding_window_view(log_mel_spec, frames, axis=1)  # (n_mels, V, frames)
    return np.ascontiguousarray(windows.transpose(1, 2, 0)).reshape(n_frames - frames + 1, n_mels * frames)


def waveform_to_vectors(waveform: np.ndarray, cfg: LogMelConfig = LogMelConfig()) -> np.ndarray:
    """One clip [samples] -> its stacked log-mel vectors [T - frames + 1, n_mels * frames] (float32)."""
    return stack_frames(log_mel(waveform, cfg), cfg.frames)


def file_to_vectors(path: str | os.PathLike[str], cfg: LogMelConfig = LogMelConfig()) -> np.ndarray:
    """The baseline's `file_to_vector_array`: a file -> [T - frames + 1, n_mels * frames] (float32).

    The file is read mono at `cfg.sample_rate` (resampled when needed; DCASE files are 16 kHz mono).
    """
    return waveform_to_vectors(load_audio(path, cfg.sample_rate), cfg)


def files_to_vectors(paths: Sequence[str | os.PathLike[str]], cfg: LogMelConfig = LogMelConfig(),
                     batch_size: int = 32, progress: bool = False, desc: str = "log-mel") -> list[np.ndarray]:
    """Vectors of many files, one array per file in `paths` order.

    Files are read `batch_size` at a time; clips of equal length within a batch go through the mel
    transform together (one batched STFT), several times faster than one call per file.
    """
    from tqdm.auto import tqdm

    out: list[np.ndarray] = []
    with tqdm(total=len(paths), desc=desc, unit="clip", disable=not progress, leave=False) as bar:
        for start in range(0, len(paths), batch_size):
            waves = [load_audio(p, cfg.sample_rate) for p in paths[start:start + batch_size]]
            chunk: list[np.ndarray | None] = [None] * len(waves)
            by_length: dict[int, list[int]] = {}
            for i, w in enumerate(waves):
                by_length.setdefault(w.shape[0], []).append(i)
            for idx in by_length.values():
                specs = log_mel(np.stack([waves[i] for i in idx]), cfg)  # (B, n_mels, T)
                for i, spec in zip(idx, specs, strict=True):
                    chunk[i] = stack_frames(spec, cfg.frames)
            out.extend(v for v in chunk if v is not None)
            bar.update(len(waves))
    return out
