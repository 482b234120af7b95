"""aiot_w2v2.audio: reading, downmix, resampling, clear errors, helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from aiot_w2v2.audio import AudioError, crop_or_pad, load_audio, normalize, resampled_length


def tone(sr: int, seconds: float, freq: float = 1000.0, noise: float = 0.01, seed: int = 0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    rng = np.random.default_rng(seed)
    return (0.5 * np.sin(2 * np.pi * freq * t) + noise * rng.standard_normal(len(t))).astype(np.float32)


def peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * sr / len(x))


def test_mono_16k_roundtrip(tmp_path: Path) -> None:
    x = tone(16000, 0.5)
    sf.write(tmp_path / "a.wav", x, 16000, subtype="FLOAT")
    y = load_audio(tmp_path / "a.wav")
    assert y.dtype == np.float32 and y.ndim == 1
    np.testing.assert_array_equal(y, x)


def test_stereo_downmix_is_channel_mean(tmp_path: Path) -> None:
    left, right = tone(16000, 0.25, 440.0, seed=1), tone(16000, 0.25, 1000.0, seed=2)
    sf.write(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    y = load_audio(tmp_path / "st.wav")
    assert y.shape == left.shape
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("sr", [8000, 44100])
def test_resampled_to_16k_keeps_length_and_pitch(tmp_path: Path, sr: int) -> None:
    x = tone(sr, 0.5, freq=1000.0)
    sf.write(tmp_path / f"r{sr}.flac", x, sr)
    y = load_audio(tmp_path / f"r{sr}.flac", 16000)
    assert len(y) == resampled_length(len(x), sr, 16000) == 8000
    assert abs(peak_hz(y, 16000) - 1000.0) <= 2.0


def test_zero_sample_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, 1), dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="empty.wav.*no samples"):
        load_audio(path)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "zero.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match="zero.wav.*cannot read"):
        load_audio(path)


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(AudioError, match="corrupt.wav"):
        load_audio(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="nope.wav"):
        load_audio(tmp_path / "nope.wav")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path: Path, bad: float) -> None:
    x = tone(16000, 0.1)
    x[100] = bad
    path = tmp_path / "nan.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav.*NaN or Inf"):
        load_audio(path)


def test_audio_error_is_value_error() -> None:
    assert issubclass(AudioError, ValueError)


def test_normalize_numpy_and_torch() -> None:
    x = tone(16000, 0.1) * 3 + 2
    y = normalize(x)
    assert y.dtype == np.float32
    assert abs(y.mean()) < 1e-5 and abs(y.std() - 1) < 1e-3
    t = normalize(torch.from_numpy(x))
    np.testing.assert_allclose(t.numpy(), y, atol=1e-5)
    assert np.all(normalize(np.ones(10, dtype=np.float32)) == 0)  # constant clip: eps keeps it finite


def test_crop_or_pad() -> None:
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(crop_or_pad(x, 4, 3), [3, 4, 5, 6])
    np.testing.assert_array_equal(crop_or_pad(x, 5, 8), [8, 9, 0, 0, 0])
    assert crop_or_pad(x, 0).shape == (0,)
    with pytest.raises(ValueError):
        crop_or_pad(x, -1)
