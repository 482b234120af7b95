"""Tests for the synthetic machine sounds: layout, format, determinism and the honesty of the anomalies."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from scipy.signal import welch
from sklearn.metrics import roc_auc_score

from aiot_w2v2.synth import ANOMALIES, MACHINES, generate_dataset, synth_clip

NAME = re.compile(r"^(fan|pump|valve|slider)/(train/normal|test/(normal|anomaly))_id_\d{2}_\d{8}\.wav$")
SMALL = dict(ids_per_machine=2, n_train=3, n_test_normal=2, n_test_anomaly=2, seconds=1.0, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.wav"))}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("small")
    return root, generate_dataset(root, seed=0, **SMALL)


def test_layout_and_metadata(small: tuple[Path, pd.DataFrame]) -> None:
    root, meta = small
    files = _files(root)
    assert len(files) == len(meta) == 4 * 2 * (3 + 2 + 2)
    assert all(NAME.match(name) for name in files), [n for n in files if not NAME.match(n)]
    assert {n.split("_id_")[1][:2] for n in files} == {"00", "02"}
    assert set(meta.columns) >= {"path", "machine", "machine_id", "split", "label", "severity"}
    assert all(Path(p).is_file() for p in meta["path"])
    on_disk = pd.read_csv(root / "metadata.csv")
    assert sorted(on_disk["path"]) == sorted(files)
    anomalous = meta[meta["label"] == "anomaly"]
    assert (anomalous["split"] == "test").all()
    assert anomalous["severity"].between(0.2, 1.0).all()
    assert (meta.loc[meta["label"] == "normal", "severity"] == 0).all()


def test_audio_format(small: tuple[Path, pd.DataFrame]) -> None:
    _, meta = small
    for path in meta["path"]:
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 16000)
        x, _ = sf.read(path, dtype="float32")
        assert np.isfinite(x).all() and np.abs(x).max() <= 1.0
        assert np.sqrt(np.mean(x**2)) > 1e-3  # not silent


def test_synth_clip_contract() -> None:
    x = synth_clip("valve", 4, "leak", np.random.default_rng(0), 0.5, 8000, severity=0.5)
    assert x.dtype == np.float32 and x.shape == (4000,)
    assert np.isfinite(x).all() and np.abs(x).max() <= 1.0
    with pytest.raises(ValueError, match="allowed"):
        synth_clip("fan", 0, "cavitation", np.random.default_rng(0), 0.5, 16000, severity=0.5)
    with pytest.raises(ValueError, match="severity"):
        synth_clip("fan", 0, "rub", np.random.default_rng(0), 0.5, 16000)


def test_deterministic_per_seed(small: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    root, _ = small
    generate_dataset(tmp_path / "same", seed=0, **SMALL)
    generate_dataset(tmp_path / "other", seed=1, **SMALL)
    reference, same, other = _files(root), _files(tmp_path / "same"), _files(tmp_path / "other")
    assert same == reference
    assert other.keys() == reference.keys()
    assert all(other[k] != reference[k] for k in reference)


def test_growing_one_split_keeps_the_others(small: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    root, _ = small
    generate_dataset(tmp_path, seed=0, **{**SMALL, "n_test_anomaly": 4})
    reference, grown = _files(root), _files(tmp_path)
    assert len(grown) == len(reference) + 4 * 2 * 2
    assert all(grown[k] == v for k, v in reference.items())


def test_unknown_machine(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fan, pump, valve, slider"):
        generate_dataset(tmp_path, machines=["fan", "toaster"], progress=False)
    with pytest.raises(ValueError, match="allowed"):
        synth_clip("toaster", 0, None, np.random.default_rng(0), 1.0, 16000)


@pytest.mark.parametrize("machine", MACHINES)
def test_loudness_carries_no_label(machine: str) -> None:
    # 100 + 100 short clips per machine: with 20 + 20 the AUC of a label-free feature still wanders
    # by +-0.1 (one sd), which would make this test fail by chance rather than by a leak.
    rms, labels = [], []
    for i in range(200):
        rng = np.random.default_rng([MACHINES.index(machine), i])
        anomaly = ANOMALIES[machine][i % 3] if i % 2 else None
        x = synth_clip(machine, 0, anomaly, rng, 0.5, 16000, severity=rng.uniform(0.2, 1.0))
        rms.append(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
        labels.append(anomaly is not None)
    assert 0.3 <= roc_auc_score(labels, rms) <= 0.7


def _log_spectrum(path: str) -> np.ndarray:
    x, sr = sf.read(path, dtype="float32")
    _, power = welch(x, sr, nperseg=1024)
    log = np.log10(power + 1e-12)
    return log - log.mean()  # level-free: only the shape of the spectrum counts


def test_anomalies_are_detectable(tmp_path: Path) -> None:
    meta = generate_dataset(tmp_path, ids_per_machine=1, n_train=10, n_test_normal=20, n_test_anomaly=20,
                            seconds=1.0, seed=0, progress=False)
    aucs = {}
    for machine, rows in meta.groupby("machine"):
        normal_train = rows[rows["split"] == "train"]
        test = rows[rows["split"] == "test"]
        mean_normal = np.mean([_log_spectrum(p) for p in normal_train["path"]], axis=0)
        distance = [np.mean((_log_spectrum(p) - mean_normal) ** 2) for p in test["path"]]
        aucs[machine] = roc_auc_score(test["label"] == "anomaly", distance)
    assert sum(auc > 0.6 for auc in aucs.values()) >= 3, aucs
    # Pooled over machines (80 + 80 clips) loudness must stay uninformative in written files too.
    pooled = meta[meta["split"] == "test"]
    rms = [np.sqrt(np.mean(sf.read(p)[0] ** 2)) for p in pooled["path"]]
    assert 0.3 <= roc_auc_score(pooled["label"] == "anomaly", rms) <= 0.7
