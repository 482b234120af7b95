"""Evaluation suites and the pretraining corpus: synthetic machine sounds in the DCASE 2021+ layout.

`generate_suite(out, suite)` writes

    OUT/<machine>/train/section_<SS>_{source,target}_train_normal_<NNNN>.wav
    OUT/<machine>/test/section_<SS>_{source,target}_test_{normal,anomaly}_<NNNN>.wav
    OUT/<machine>/attributes_<SS>.csv     (DCASE 2022 style: file_name, d1p, d1v, ... per file)
    OUT/metadata.csv                      (one row per file: family, condition, domain, fault, ...)

as 16-bit mono WAV, which `data/manifest.py` reads as machine_id "section_SS" with its domain.

Suites:
- `dev`      the development families (`synth_families.DEV_FAMILIES`): every method choice is made here.
- `heldout`  only the FROZEN held-out families and their fault kinds (`HELDOUT_FAMILIES`,
             `HELDOUT_FAULTS`): looked at once, at the end of a change, in a separate column.
- `pretrain` an unlabeled corpus of normal training clips only, `hours` long, from the development
             families, on machine instances disjoint from the evaluation sections (their parameters
             come from another seed space), over all operating conditions.

A section is one machine instance (one family, one set of drawn parameters). Its source domain is
the nominal operating condition (speed 0.95-1.05, light load, microphone near the machine in a dry
room, factory background); its target domain shifts one thing, as in DCASE 2021: speed (x0.75-0.8 or
x1.25-1.3), load (heavy), microphone (far, in a reverberant room) or background scene (HVAC plant,
outdoor yard or workshop). Target training clips are few (default 6 vs 80 source), as in DCASE.

Each clip: the family's source under its condition, convolved with the section's synthetic room
impulse response for that microphone position, mixed into the scene at a random SNR (0-10 dB), then
scaled to a random overall level drawn the same way for every label (loudness carries no label).

Randomness: a section's parameters and domain shift come from rngs seeded by (seed space, family,
machine, section) only; each clip from its own rng seeded by (suite, seed, family, machine, section,
domain, split, label, index), so growing one split leaves the other files byte-identical.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from scipy.signal import fftconvolve
from tqdm.auto import tqdm

from aiot_w2v2.synth_families import (
    DEV_FAMILIES,
    FAMILIES,
    HELDOUT_FAMILIES,
    MACHINES,
    Condition,
    family,
)
from aiot_w2v2.synth_sources import (
    TWO_PI,
    add_at,
    bandpass,
    factory_background,
    freqs,
    harmonics,
    highpass,
    impulses,
    lowpass,
    modes,
    rms,
    shaped_noise,
    slow_walk,
)

SUITES = ("dev", "heldout", "pretrain")
SHIFTS = ("speed", "load", "mic", "scene")  # what a section's target domain changes
SCENES = ("factory", "hvac", "outdoor", "workshop")
SNR_DB = (0.0, 10.0)
LEVEL_DBFS = (-34.0, -22.0)
SEVERITY = (0.2, 1.0)
_INSTANCE_TAG, _SHIFT_TAG, _ROOM_TAG, _CLIP_TAG = 11, 12, 13, 14
_EVAL_SPACE, _PRETRAIN_SPACE = 0, 1  # instance seed spaces: corpus machines are never evaluation machines
_SUITE_CODE = {name: i for i, name in enumerate(SUITES)}


def suite_families(suite: str) -> tuple[str, ...]:
    """The generator families a suite holds (the corpus: the development families only)."""
    _check_suite(suite)
    return HELDOUT_FAMILIES if suite == "heldout" else DEV_FAMILIES


def _check_suite(suite: str) -> None:
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; allowed: {', '.join(SUITES)}")


# ---------------------------------------------------------------- backgrounds and rooms


def scene_background(scene: str, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Unit-RMS background of a scene: factory floor, HVAC plant, outdoor yard or workshop."""
    f = freqs(n, sr)
    t = np.arange(n) / sr
    if scene == "factory":
        return factory_background(rng, n, sr)
    if scene == "hvac":
        # Duct rumble, an air handler's blade-pass tone and a slow swell of the airflow.
        x = shaped_noise(rng, lowpass(f, rng.uniform(300, 900), 2) * highpass(f, 20.0, 2), n)
        bpf = rng.uniform(60.0, 200.0)
        tone = harmonics(TWO_PI * bpf * t, rng.uniform(0.3, 1.0, 4) / np.arange(1, 5), rng.uniform(0, TWO_PI, 4))
        x = add_at(x, tone, rng.uniform(-18.0, -6.0))
        x *= 1.0 + 0.2 * slow_walk(rng, n, sr, 0.5)
    elif scene == "outdoor":
        # Traffic rumble with passing vehicles, wind gusts and the odd bird chirp.
        x = shaped_noise(rng, f ** -1.0 * lowpass(f, 400.0, 1) * highpass(f, 15.0, 2), n)
        x *= 1.0 + 0.6 * np.clip(slow_walk(rng, n, sr, 0.4), 0, None)
        wind = shaped_noise(rng, bandpass(f, rng.uniform(300, 1200), 0.5), n)
        x = add_at(x, wind * np.clip(0.5 + slow_walk(rng, n, sr, 1.0), 0, None), rng.uniform(-14.0, -4.0))
        k = rng.poisson(rng.uniform(0.0, 2.0) * n / sr)
        for start in rng.integers(0, n, k):
            m = min(n - start, int(rng.uniform(0.05, 0.15) * sr))
            sweep = rng.uniform(2500, 5000) * (1.0 + 0.3 * np.linspace(0, 1, m))
            chirp = np.sin(TWO_PI * np.cumsum(sweep) / sr) * np.hanning(m)
            x[start:start + m] += chirp * rms(x) * rng.uniform(0.3, 1.0)
    elif scene == "workshop":
        # A factory floor plus a hand tool's whine switching on and off and more bench impacts.
        x = factory_background(rng, n, sr)
        whine = np.sin(TWO_PI * np.cumsum(rng.uniform(800, 3000) * (1 + 0.02 * slow_walk(rng, n, sr, 1.0))) / sr)
        on = np.convolve((slow_walk(rng, n, sr, 0.8) > 0.3).astype(float), np.ones(400) / 400, mode="same")
        x = add_at(x, whine * on, rng.uniform(-16.0, -6.0)) if on.any() else x
        k = rng.poisson(rng.uniform(1.0, 4.0) * n / sr)
        if k:
            hits = impulses(n, rng.integers(0, n, k), rng.lognormal(0.0, 0.5, k))
            table = [(rng.uniform(300, 4000), rng.uniform(0.005, 0.04), 1.0) for _ in range(2)]
            x = add_at(x, modes(hits, sr, table), rng.uniform(-10.0, -2.0))
    else:
        raise ValueError(f"unknown scene {scene!r}; allowed: {', '.join(SCENES)}")
    return x / rms(x)


@dataclass(frozen=True)
class Room:
    """A microphone position in a room: reverberation time and direct-to-reverberant ratio."""

    mic: str  # "near" | "far"
    rt60: float  # s
    drr_db: float


def room_impulse_response(room: Room, rng: np.random.Generator, sr: int) -> np.ndarray:
    """Synthetic RIR: the direct path, a few early reflections, an exponentially decaying noise tail
    (darker as it decays), scaled to the room's direct-to-reverberant ratio."""
    m = max(16, int(min(room.rt60, 1.0) * sr))
    t = np.arange(m) / sr
    tail = rng.standard_normal(m) * np.exp(-6.91 * t / room.rt60)  # -60 dB at rt60
    tail = np.convolve(tail, np.ones(3) / 3, mode="same")
    early = impulses(m, rng.integers(int(0.002 * sr), int(0.02 * sr), 6), rng.uniform(-0.8, 0.8, 6))
    reverb = tail + early * np.sqrt(np.sum(tail**2))
    reverb[0] = 0.0
    h = reverb / np.sqrt(np.sum(reverb**2)) * 10.0 ** (-room.drr_db / 20.0)
    h[0] = 1.0
    return h


def _draw_room(mic: str, rng: np.random.Generator) -> Room:
    if mic == "near":
        return Room("near", float(rng.uniform(0.1, 0.25)), float(rng.uniform(8.0, 14.0)))
    return Room("far", float(rng.uniform(0.4, 0.9)), float(rng.uniform(-4.0, 2.0)))


# ---------------------------------------------------------------- sections and domains


@dataclass(frozen=True)
class Section:
    """One machine instance of a suite: its family, drawn parameters and domain shift."""

    machine: str
    section: int
    family: str
    shift: str  # what the target domain changes (one of SHIFTS)
    target_speed: tuple[float, float]
    target_scene: str
    params: dict
    rooms: dict[str, Room]  # mic position -> room
    rirs: dict[str, np.ndarray]


def make_section(machine: str, section: int, family_name: str, space: int, sr: int) -> Section:
    """Draw one machine instance; the same arguments always give the same machine."""
    if machine not in MACHINES:
        raise ValueError(f"unknown machine {machine!r}; allowed: {', '.join(MACHINES)}")
    fam = family(family_name)
    key = [space, list(FAMILIES).index(family_name), MACHINES.index(machine), section]
    params = fam.draw(machine, np.random.default_rng([_INSTANCE_TAG, *key]))
    r = np.random.default_rng([_SHIFT_TAG, *key])
    shift = SHIFTS[(MACHINES.index(machine) + section) % len(SHIFTS)]
    target_speed = (0.75, 0.8) if r.random() < 0.5 else (1.25, 1.3)
    target_scene = str(r.choice(SCENES[1:]))
    rr = np.random.default_rng([_ROOM_TAG, *key])
    rooms = {mic: _draw_room(mic, rr) for mic in ("near", "far")}
    rirs = {mic: room_impulse_response(room, rr, sr) for mic, room in rooms.items()}
    return Section(machine, section, family_name, shift, target_speed, target_scene, params, rooms, rirs)


@dataclass(frozen=True)
class ClipCondition:
    """Everything about one clip's circumstances besides its label."""

    speed: float
    load: float
    mic: str
    scene: str


def draw_condition(sec: Section, domain: str, rng: np.random.Generator) -> ClipCondition:
    """A clip's operating condition in `domain` (source: nominal; target: the section's shift)."""
    speed = float(rng.choice([0.95, 1.0, 1.05]))
    load = float(rng.choice([0.0, 0.2]))
    mic, scene = "near", "factory"
    if domain == "target":
        if sec.shift == "speed":
            speed = float(rng.choice(sec.target_speed))
        elif sec.shift == "load":
            load = float(rng.choice([0.8, 1.0]))
        elif sec.shift == "mic":
            mic = "far"
        else:
            scene = sec.target_scene
    return ClipCondition(speed, load, mic, scene)


def render_clip(sec: Section, cond: ClipCondition, fault: str | None, severity: float,
                rng: np.random.Generator, n: int, sr: int) -> tuple[np.ndarray, float]:
    """One clip (float32 in [-1, 1]) and its SNR in dB."""
    fam = family(sec.family)
    if fault is not None and fault not in fam.faults(sec.machine):
        raise ValueError(f"unknown fault {fault!r} for {sec.family} {sec.machine}; "
                         f"allowed: {', '.join(fam.faults(sec.machine))}")
    h = sec.rirs[cond.mic]
    # Render the source longer by the RIR's length and keep the part after the reverb has built up.
    src = fam.render(sec.params, fault, severity, Condition(cond.speed, cond.load), rng, n + h.size - 1, sr)
    src = fftconvolve(src, h)[h.size - 1:h.size - 1 + n]
    snr_db = float(rng.uniform(*SNR_DB))
    mix = src / rms(src) * 10.0 ** (snr_db / 20.0) + scene_background(cond.scene, rng, n, sr)
    mix *= 10.0 ** (rng.uniform(*LEVEL_DBFS) / 20.0) / rms(mix)
    return (0.99 * np.tanh(mix / 0.99)).astype(np.float32), snr_db


# ---------------------------------------------------------------- writing suites

COLUMNS = ["path", "machine", "section", "machine_id", "family", "domain", "split", "label", "fault", "severity",
           "shift", "speed", "load", "mic", "rt60", "scene", "snr_db"]


def generate_suite(out: str | Path, suite: str, machines: Sequence[str] = MACHINES, sections: int = 2,
                   n_train_source: int = 80, n_train_target: int = 6, n_test: int = 10, hours: float | None = None,
                   instances: int = 8, seconds: float = 4.0, sample_rate: int = 16000, seed: int = 0,
                   progress: bool = True) -> pd.DataFrame:
    """Write one suite under `out` and return its metadata (paths absolute; `out/metadata.csv` relative).

    dev / heldout: `sections` machine instances per machine type (families in rotation), each with
    `n_train_source` + `n_train_target` normal training clips and `n_test` normal and `n_test`
    anomalous test clips per domain. pretrain: `hours` of normal training clips spread over
    `instances` instances per (machine type, development family), conditions drawn over every shift.
    """
    _check_suite(suite)
    if isinstance(machines, str):
        machines = [machines]
    machines = list(dict.fromkeys(machines))
    if not machines:
        raise ValueError("no machine types given")
    for machine in machines:
        if machine not in MACHINES:
            raise ValueError(f"unknown machine {machine!r}; allowed: {', '.join(MACHINES)}")
    counts = dict(sections=sections, n_train_source=n_train_source, n_train_target=n_train_target,
                  n_test=n_test, instances=instances, seed=seed)
    for name, value in counts.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if seconds <= 0 or sample_rate <= 0:
        raise ValueError(f"seconds and sample_rate must be > 0, got {seconds}, {sample_rate}")
    if suite == "pretrain":
        if hours is None or not hours > 0:
            raise ValueError(f"the pretrain suite needs hours > 0, got {hours}")
        if instances < 1:
            raise ValueError("the pretrain suite needs instances >= 1")
    elif hours is not None:
        raise ValueError(f"hours is only for the pretrain suite, not {suite!r} (use the clip counts)")
    out = Path(out)
    n = int(round(seconds * sample_rate))
    fams = suite_families(suite)

    jobs = _pretrain_jobs(machines, fams, instances, hours, seconds) if suite == "pretrain" else \
        _eval_jobs(machines, fams, sections, n_train_source, n_train_target, n_test)
    space = _PRETRAIN_SPACE if suite == "pretrain" else _EVAL_SPACE
    cache: dict[tuple[str, int], Section] = {}
    rows, attributes = [], {}
    for machine, section, fam_name, domain, split, label, i in tqdm(jobs, desc=f"synth {suite}", unit="clip",
                                                                     disable=not progress):
        sec = cache.get((machine, section))
        if sec is None:
            sec = cache[(machine, section)] = make_section(machine, section, fam_name, space, sample_rate)
        code = [_SUITE_CODE[suite], seed, list(FAMILIES).index(fam_name), MACHINES.index(machine), section,
                int(domain == "target"), int(split == "test"), int(label == "anomaly"), i]
        rng = np.random.default_rng([_CLIP_TAG, *code])
        domain_drawn = domain if suite != "pretrain" else ("source" if rng.random() < 0.5 else "target")
        cond = draw_condition(sec, domain_drawn, rng)
        fault, severity = None, 0.0
        if label == "anomaly":
            fault = str(rng.choice(family(fam_name).faults(machine)))
            severity = float(rng.uniform(*SEVERITY))
        clip, snr_db = render_clip(sec, cond, fault, severity, rng, n, sample_rate)
        name = f"section_{section:02d}_{domain_drawn}_{split}_{label}_{i:04d}.wav"
        rel = Path(machine) / split / name
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(out / rel, clip, sample_rate, subtype="PCM_16")
        rows.append(dict(path=rel.as_posix(), machine=machine, section=f"{section:02d}",
                         machine_id=f"section_{section:02d}", family=fam_name, domain=domain_drawn, split=split,
                         label=label, fault=fault or "", severity=round(severity, 4), shift=sec.shift,
                         speed=cond.speed, load=cond.load, mic=cond.mic, rt60=round(sec.rooms[cond.mic].rt60, 3),
                         scene=cond.scene, snr_db=round(snr_db, 2)))
        attributes.setdefault((machine, section), []).append(
            dict(file_name=f"{split}/{name}", d1p="speed", d1v=cond.speed, d2p="load", d2v=cond.load,
                 d3p="mic", d3v=cond.mic, d4p="scene", d4v=cond.scene))

    out.mkdir(parents=True, exist_ok=True)
    for (machine, section), attr in attributes.items():
        pd.DataFrame(attr).to_csv(out / machine / f"attributes_{section:02d}.csv", index=False)
    meta = pd.DataFrame(rows, columns=COLUMNS)
    meta.to_csv(out / "metadata.csv", index=False)
    meta["path"] = [str(out / p) for p in meta["path"]]
    return meta


def _eval_jobs(machines: list[str], fams: tuple[str, ...], sections: int, n_train_source: int,
               n_train_target: int, n_test: int) -> list[tuple]:
    """(machine, section, family, domain, split, label, index) for dev / heldout; families rotate
    over the sections of all machine types so each family gets about the same number of them."""
    jobs = []
    for machine in machines:
        for s in range(sections):
            fam = fams[(MACHINES.index(machine) * sections + s) % len(fams)]
            for domain, split, label, count in (
                    ("source", "train", "normal", n_train_source), ("target", "train", "normal", n_train_target),
                    ("source", "test", "normal", n_test), ("source", "test", "anomaly", n_test),
                    ("target", "test", "normal", n_test), ("target", "test", "anomaly", n_test)):
                jobs += [(machine, s, fam, domain, split, label, i) for i in range(count)]
    return jobs


def _pretrain_jobs(machines: list[str], fams: tuple[str, ...], instances: int, hours: float,
                   seconds: float) -> list[tuple]:
    """Normal training clips for `hours`, dealt round-robin over (machine, family, instance)."""
    total = math.ceil(hours * 3600.0 / seconds)
    slots = [(machine, f_idx * instances + j, fam) for machine in machines
             for f_idx, fam in enumerate(fams) for j in range(instances)]
    jobs = []
    for k in range(total):
        machine, section, fam = slots[k % len(slots)]
        # The domain of a corpus clip is drawn per clip; "source" here only keeps the seed code fixed.
        jobs.append((machine, section, fam, "source", "train", "normal", k // len(slots)))
    return jobs
