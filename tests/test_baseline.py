"""Tests for the log-mel front end (features.py) and the DCASE 2020 autoencoder baseline."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from aiot_w2v2.anomaly.baseline import (
    BaselineConfig,
    DenseAutoencoder,
    clip_scores,
    run_baseline,
    train_autoencoder,
    vector_errors,
)
from aiot_w2v2.features import (
    LOG_EPS,
    LogMelConfig,
    file_to_vectors,
    files_to_vectors,
    log_mel,
    mel_transform,
    stack_frames,
)
from aiot_w2v2.synth import generate_dataset

CFG = LogMelConfig()


pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread, as run_baseline uses


# ---------------------------------------------------------------------------------------------------
# numpy references: librosa's Slaney mel filterbank and the baseline's frame stacking loop


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_hz / f_sp + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep,
                    f / f_sp)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    return np.where(m >= min_log_hz / f_sp, min_log_hz * np.exp(logstep * (m - min_log_hz / f_sp)), f_sp * m)


def _librosa_mel(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa.filters.mel(sr, n_fft, n_mels) with its defaults (htk=False, norm='slaney'): [n_mels, 1 + n_fft/2]."""
    fftfreqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(sr / 2.0)), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    lower = -ramps[:n_mels] / fdiff[:n_mels, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    return weights * (2.0 / (mel_f[2:] - mel_f[:n_mels]))[:, None]


def _baseline_stacking(lm: np.ndarray, frames: int) -> np.ndarray:
    """The loop of the baseline's `file_to_vector_array`."""
    n_mels = lm.shape[0]
    size = lm.shape[1] - frames + 1
    out = np.zeros((size, n_mels * frames))
    for t in range(frames):
        out[:, n_mels * t: n_mels * (t + 1)] = lm[:, t: t + size].T
    return out


def _noise(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=int(16000 * seconds)) * 0.05
    return np.convolve(x, [1.0, 0.6, 0.2], mode="same").astype(np.float32)  # coloured, no empty bins


# ---------------------------------------------------------------------------------------------------
# features


def test_mel_filterbank_matches_librosa() -> None:
    fb = mel_transform(CFG).mel_scale.fb.numpy().T  # (n_mels, n_freqs)
    ref = _librosa_mel(16000, 1024, 128)
    # torchaudio places the mel points in float32: differences of ~3e-7 on weights of up to 0.043
    np.testing.assert_allclose(fb, ref, rtol=1e-5, atol=1e-6)


def test_log_mel_matches_a_direct_computation() -> None:
    x = _noise()
    lm = log_mel(x)  # (128, T)
    assert lm.shape == (128, 1 + len(x) // 512) and lm.dtype == np.float32
    # librosa 0.6: centred frames (reflect padding), periodic Hann, |STFT|^2, mel filterbank, 10 log10
    xp = np.pad(x.astype(np.float64), 512, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(xp, 1024)[::512]  # (T, 1024)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1024) / 1024)
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (T, 513)
    ref = 20.0 / 2.0 * np.log10(_librosa_mel(16000, 1024, 128) @ power.T + LOG_EPS)
    np.testing.assert_allclose(lm, ref, atol=2e-3)  # dB; float32 against float64


def test_stacking_shape_and_equality_with_the_baseline_loop(tmp_path: Path) -> None:
    lm = np.random.default_rng(0).normal(size=(128, 32)).astype(np.float32)
    v = stack_frames(lm, 5)
    assert v.shape == (32 - 4, 640)
    np.testing.assert_array_equal(v, _baseline_stacking(lm, 5).astype(np.float32))
    assert stack_frames(lm[:, :4], 5).shape == (0, 640)  # too short: no vectors, as the baseline

    path = tmp_path / "clip.wav"
    sf.write(path, _noise(), 16000, subtype="FLOAT")
    vec = file_to_vectors(path)
    assert vec.shape == (1 + 16000 // 512 - 4, 640)
    np.testing.assert_array_equal(vec, _baseline_stacking(log_mel(sf.read(path, dtype="float32")[0]), 5))


def test_batched_files_equal_one_by_one(tmp_path: Path) -> None:
    paths = []
    for i, seconds in enumerate([1.0, 0.5, 1.0, 1.0]):
        paths.append(tmp_path / f"c{i}.wav")
        sf.write(paths[-1], _noise(seconds, seed=i), 16000, subtype="FLOAT")
    batched = files_to_vectors(paths, batch_size=3)
    assert [len(v) for v in batched] == [28, 12, 28, 28]
    for p, v in zip(paths, batched, strict=True):
        np.testing.assert_allclose(v, file_to_vectors(p), atol=1e-4)


# ---------------------------------------------------------------------------------------------------
# model and training


def test_autoencoder_matches_the_keras_baseline() -> None:
    model = DenseAutoencoder()
    widths = [b.linear.out_features for b in model.blocks] + [model.output.out_features]
    assert widths == [128, 128, 128, 128, 8, 128, 128, 128, 128, 640]
    trainable = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for n, b in model.named_buffers() if "running" in n)
    assert (trainable, buffers) == (267_928, 2_064)  # Keras summary: 269,992 params, 2,064 non-trainable
    assert all(b.norm.eps == 1e-3 and b.norm.momentum == 0.01 for b in model.blocks)
    assert all(not b.linear.bias.detach().any() for b in model.blocks)
    assert model(torch.zeros(3, 640)).shape == (3, 640)


def test_training_is_deterministic_and_validates_on_the_last_vectors() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 640)).astype(np.float32)
    x[-20:] = 50.0  # the last 10 %: Keras' validation_split keeps exactly these out of training
    cfg = BaselineConfig(epochs=3, batch_size=64)
    m1, h1 = train_autoencoder(x, cfg, torch.Generator().manual_seed(1))
    m2, h2 = train_autoencoder(x, cfg, torch.Generator().manual_seed(1))
    _, h3 = train_autoencoder(x, cfg, torch.Generator().manual_seed(2))
    assert h1 == h2 and h1 != h3
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True))
    assert [h["epoch"] for h in h1] == [1, 2, 3]
    assert h1[-1]["val_loss"] > 100 * h1[-1]["loss"]  # outliers only in validation
    _, h0 = train_autoencoder(x, BaselineConfig(epochs=1, validation_split=0.0), torch.Generator().manual_seed(1))
    assert math.isnan(h0[0]["val_loss"])


def test_clip_score_is_the_mean_vector_error() -> None:
    model = DenseAutoencoder(generator=torch.Generator().manual_seed(0)).eval()
    rng = np.random.default_rng(0)
    clips = [rng.normal(size=(n, 640)).astype(np.float32) for n in (3, 0, 5)]
    scores = clip_scores(model, clips)
    with torch.inference_mode():
        ref = [float(((model(torch.from_numpy(c)) - torch.from_numpy(c)) ** 2).mean()) for c in (clips[0], clips[2])]
    assert scores[0] == pytest.approx(ref[0], rel=1e-5) and scores[2] == pytest.approx(ref[1], rel=1e-5)
    assert math.isnan(scores[1])
    assert vector_errors(model, clips[2]).shape == (5,)


# ---------------------------------------------------------------------------------------------------
# end to end


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    generate_dataset(root, machines=["fan"], ids_per_machine=1, n_train=6, n_test_normal=4, n_test_anomaly=4,
                     seconds=1.0, progress=False)
    return root


def test_run_baseline_writes_everything(tiny_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    res = run_baseline(tiny_data, out, epochs=3, seed=0, progress=True)
    assert list(res.columns) == ["machine", "machine_id", "scorer", "auc", "pauc"]
    assert list(res.machine_id) == ["id_00", "all"] and set(res.scorer) == {"ae_baseline"}
    assert res.auc.between(0, 1).all()
    on_disk = pd.read_csv(out / "results.csv")
    assert list(on_disk.columns) == list(res.columns) and len(on_disk) == 2
    for name in ("results_extended.csv", "scores.csv", "training_log.csv", "training_curves.png", "report.html",
                 "baseline.json", "anomaly_score_fan_id_00.csv", "decision_result_fan_id_00.csv"):
        assert (out / name).is_file(), name
    scores = pd.read_csv(out / "scores.csv")
    assert list(scores.columns)[:7] == ["path", "machine", "machine_id", "label", "domain", "scorer", "score"]
    assert len(scores) == 8 and scores.threshold.notna().all()
    with open(out / "anomaly_score_fan_id_00.csv") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 8 and all(len(r) == 2 and r[0].endswith(".wav") for r in rows)
    with open(out / "decision_result_fan_id_00.csv") as f:
        assert {r[1] for r in csv.reader(f)} <= {"0", "1"}
    assert len(pd.read_csv(out / "training_log.csv")) == 3
    assert json.loads((out / "baseline.json").read_text())["config"]["epochs"] == 3
    assert "data:image/png;base64," in (out / "report.html").read_text()
    printed = capsys.readouterr().out
    assert re.search(r"^ae_baseline +[0-9.]+ / [0-9.]+", printed, re.M) and "fan/id_00" in printed


def test_unlabeled_test_folder_scores_without_metrics(tiny_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "eval"
    shutil.copytree(tiny_data / "fan" / "train", data / "fan" / "train")
    (data / "fan" / "test").mkdir(parents=True)
    for k, p in enumerate(sorted((tiny_data / "fan" / "test").glob("*.wav"))):
        shutil.copy(p, data / "fan" / "test" / f"id_00_{k:08d}.wav")  # DCASE 2020 evaluation names
    out = tmp_path / "report"
    res = run_baseline(data, out, epochs=1, seed=0, progress=False)
    assert res.auc.isna().all() and res.pauc.isna().all()
    ext = pd.read_csv(out / "results_extended.csv")
    assert ext.note.str.contains("no labels").any()
    with open(out / "anomaly_score_fan_id_00.csv") as f:
        assert len(list(csv.reader(f))) == 8
    assert pd.read_csv(out / "scores.csv").score.notna().all()
    assert (out / "report.html").is_file()
