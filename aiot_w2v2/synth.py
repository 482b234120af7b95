"""Synthetic machine sounds in the DCASE 2020 Task 2 layout: the embedded default data for the demo
and the tests.

`generate_dataset` writes

    OUT/<machine>/train/normal_id_<XX>_<NNNNNNNN>.wav
    OUT/<machine>/test/normal_id_<XX>_<NNNNNNNN>.wav
    OUT/<machine>/test/anomaly_id_<XX>_<NNNNNNNN>.wav
    OUT/metadata.csv

as 16-bit mono WAV. `synth_clip` makes one clip: a machine source from `synth_sources` (with an
optional anomaly), mixed into factory background at a random SNR, then scaled to a random overall
level drawn from the same range for normal and anomalous clips, so loudness carries no label.

Randomness: each machine ID's fixed character (speeds, blade counts, resonances) comes from an rng
seeded by (machine, id) only, so "fan id 00" is the same fan in every dataset; each clip comes from
its own rng seeded by (seed, machine, id, split, index), so growing one split leaves the others'
files byte-identical.

What it doesn't know: real machines. The anomalies are caricatures of known faults (imbalance,
bearing defects, cavitation, leaks, ...), good for exercising a pipeline and for honest relative
comparisons, not for claims about accuracy on recorded data such as MIMII or ToyADMOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from tqdm.auto import tqdm

from aiot_w2v2.synth_sources import ANOMALIES, MACHINE_SOURCES, factory_background, rms

MACHINES = ("fan", "pump", "valve", "slider")

SNR_DB = (0.0, 10.0)  # machine vs. factory background, per clip
LEVEL_DBFS = (-34.0, -22.0)  # overall clip RMS, per clip, identical for normal and anomalous clips
SEVERITY = (0.2, 1.0)  # per anomalous clip: 0.2 is subtle, 1.0 is clear
_PARAM_TAG, _CLIP_TAG = 1, 2  # keep machine-parameter and clip seed sequences apart


def _check_machine(machine: str) -> None:
    if machine not in MACHINES:
        raise ValueError(f"unknown machine {machine!r}; allowed: {', '.join(MACHINES)}")


def synth_clip(machine: str, machine_id: int, anomaly: str | None, rng: np.random.Generator,
               seconds: float, sample_rate: int, severity: float = 0.0) -> np.ndarray:
    """One clip of `machine` (ID `machine_id`), normal when `anomaly` is None.

    `anomaly` is one of `ANOMALIES[machine]`; `severity` (> 0 when an anomaly is given; 0.2 subtle,
    1.0 clear) sets how strongly it shows. Returns float32 mono samples in [-1, 1].
    """
    _check_machine(machine)
    if anomaly is not None:
        if anomaly not in ANOMALIES[machine]:
            raise ValueError(f"unknown anomaly {anomaly!r} for {machine}; "
                             f"allowed: {', '.join(ANOMALIES[machine])}")
        if severity <= 0:
            raise ValueError("severity must be > 0 when an anomaly is given")
    if machine_id < 0:
        raise ValueError(f"machine_id must be >= 0, got {machine_id}")
    n = int(round(seconds * sample_rate))
    if n < 2:
        raise ValueError(f"clip too short: {seconds} s at {sample_rate} Hz")

    draw_params, source = MACHINE_SOURCES[machine]
    params = draw_params(np.random.default_rng([_PARAM_TAG, MACHINES.index(machine), machine_id]))
    x = source(params, anomaly, float(severity), rng, n, sample_rate)
    background = factory_background(rng, n, sample_rate)
    snr_db = rng.uniform(*SNR_DB)
    mix = x / rms(x) * 10.0 ** (snr_db / 20.0) + background
    mix *= 10.0 ** (rng.uniform(*LEVEL_DBFS) / 20.0) / rms(mix)
    # A soft limiter instead of rescaling by the peak: rescaling would make clicky (often anomalous)
    # clips quieter and so leak the label into loudness. At these levels it only touches rare peaks.
    return (0.99 * np.tanh(mix / 0.99)).astype(np.float32)


def generate_dataset(out: str | Path, machines: Sequence[str] = MACHINES, ids_per_machine: int = 2,
                     n_train: int = 40, n_test_normal: int = 12, n_test_anomaly: int = 12,
                     seconds: float = 4.0, sample_rate: int = 16000, seed: int = 0,
                     progress: bool = True) -> pd.DataFrame:
    """Write a synthetic DCASE-2020-layout dataset under `out` and return its metadata.

    Machine IDs are 0, 2, 4, ... (as in the DCASE development set). The returned frame has one row
    per file: path (under `out`), machine, machine_id (int), split (train/test), label
    (normal/anomaly), severity (0 for normal clips) and anomaly_type ("" for normal clips).
    `out/metadata.csv` holds the same rows with paths relative to `out`.
    """
    if isinstance(machines, str):
        machines = [machines]
    for machine in machines:
        _check_machine(machine)
    for name, value in (("ids_per_machine", ids_per_machine), ("n_train", n_train),
                        ("n_test_normal", n_test_normal), ("n_test_anomaly", n_test_anomaly), ("seed", seed)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if seconds <= 0 or sample_rate <= 0:
        raise ValueError(f"seconds and sample_rate must be > 0, got {seconds}, {sample_rate}")
    out = Path(out)

    # (machine, id, split, label, split code for the seed, index): the code keeps each split's
    # clip seeds independent of the other splits' sizes.
    jobs = [(machine, 2 * j, split, label, code, i)
            for machine in dict.fromkeys(machines)
            for j in range(ids_per_machine)
            for split, label, code, count in (("train", "normal", 0, n_train),
                                              ("test", "normal", 1, n_test_normal),
                                              ("test", "anomaly", 2, n_test_anomaly))
            for i in range(count)]
    rows = []
    for machine, machine_id, split, label, code, i in tqdm(jobs, desc="synth", unit="clip", disable=not progress):
        rng = np.random.default_rng([_CLIP_TAG, seed, MACHINES.index(machine), machine_id, code, i])
        anomaly, severity = None, 0.0
        if label == "anomaly":
            anomaly = str(rng.choice(ANOMALIES[machine]))
            severity = float(rng.uniform(*SEVERITY))
        clip = synth_clip(machine, machine_id, anomaly, rng, seconds, sample_rate, severity)
        rel = Path(machine) / split / f"{label}_id_{machine_id:02d}_{i:08d}.wav"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(out / rel, clip, sample_rate, subtype="PCM_16")
        rows.append(dict(path=rel.as_posix(), machine=machine, machine_id=machine_id, split=split,
                         label=label, severity=round(severity, 4), anomaly_type=anomaly or ""))

    columns = ["path", "machine", "machine_id", "split", "label", "severity", "anomaly_type"]
    meta = pd.DataFrame(rows, columns=columns)
    out.mkdir(parents=True, exist_ok=True)
    meta.to_csv(out / "metadata.csv", index=False)
    meta["path"] = [str(out / p) for p in meta["path"]]
    return meta
