"""Tests for the evaluation suites: DCASE 2021+ layout, determinism, structurally different families,
a held-out part disjoint from development, a pretraining corpus on other machines, clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from scipy.signal import welch
from sklearn.metrics import roc_auc_score

from aiot_w2v2.cli import main as cli_main
from aiot_w2v2.data.manifest import build_manifest
from aiot_w2v2.synth import generate_dataset
from aiot_w2v2.synth_families import (
    DEV_FAMILIES,
    FAMILIES,
    HELDOUT_FAMILIES,
    HELDOUT_FAULTS,
    MACHINES,
    Condition,
    family,
)
from aiot_w2v2.synth_suite import SHIFTS, ClipCondition, generate_suite, make_section, render_clip

SR = 16000
TINY = dict(sections=2, n_train_source=2, n_train_target=1, n_test=1, seconds=0.5, progress=False)
NAME = re.compile(r"^(fan|pump|valve|slider)/(train|test)/section_\d{2}_(source|target)_(train|test)_"
                  r"(normal|anomaly)_\d{4}\.wav$")


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.wav"))}


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("dev")
    return root, generate_suite(root, "dev", **TINY)


def test_layout_is_read_by_the_manifest(dev: tuple[Path, pd.DataFrame]) -> None:
    root, meta = dev
    files = _files(root)
    assert len(files) == len(meta) == 4 * 2 * (2 + 1 + 4 * 1)
    assert all(NAME.match(n) for n in files), [n for n in files if not NAME.match(n)]
    df = build_manifest(root)
    assert set(df["machine"]) == set(MACHINES)
    assert set(df["machine_id"]) == {"section_00", "section_01"}
    assert set(df["domain"]) == {"source", "target"}
    train = df[df["split"] == "train"]
    assert set(train["label"]) == {"normal"}
    assert (train["domain"] == "target").sum() == 8 and (train["domain"] == "source").sum() == 16
    test = df[df["split"] == "test"]
    assert test.groupby(["domain", "label"]).size().to_dict() == {
        ("source", "anomaly"): 8, ("source", "normal"): 8, ("target", "anomaly"): 8, ("target", "normal"): 8}
    # metadata.csv and the attribute files describe every file.
    on_disk = pd.read_csv(root / "metadata.csv", keep_default_na=False)
    assert sorted(on_disk["path"]) == sorted(files)
    assert set(on_disk["family"]) == set(DEV_FAMILIES)
    assert (on_disk.loc[on_disk["label"] == "anomaly", "fault"] != "").all()
    assert (on_disk.loc[on_disk["label"] == "normal", "severity"] == 0).all()
    attrs = pd.read_csv(root / "fan" / "attributes_00.csv")
    assert len(attrs) == 7 and set(attrs.columns) >= {"file_name", "d1p", "d1v", "d4v"}
    assert all((root / "fan" / f).is_file() for f in attrs["file_name"])


def test_target_domain_shifts_what_the_section_says(dev: tuple[Path, pd.DataFrame]) -> None:
    _, meta = dev
    src = meta[meta["domain"] == "source"]
    assert set(src["mic"]) == {"near"} and set(src["scene"]) == {"factory"} and src["speed"].between(0.95, 1.05).all()
    for _, rows in meta[meta["domain"] == "target"].groupby(["machine", "section"]):
        shift = rows["shift"].iloc[0]
        assert shift in SHIFTS
        if shift == "speed":
            assert (~rows["speed"].between(0.9, 1.1)).all()
        elif shift == "load":
            assert (rows["load"] >= 0.8).all()
        elif shift == "mic":
            assert set(rows["mic"]) == {"far"}
        else:
            assert "factory" not in set(rows["scene"])


def test_deterministic_and_seeded(dev: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    root, _ = dev
    generate_suite(tmp_path / "again", "dev", **TINY)
    assert _files(tmp_path / "again") == _files(root)
    generate_suite(tmp_path / "other", "dev", seed=1, **TINY)
    other = _files(tmp_path / "other")
    assert other.keys() == _files(root).keys()
    assert all(other[k] != v for k, v in _files(root).items())


def test_heldout_shares_no_family_or_fault_with_dev(dev: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    assert not set(HELDOUT_FAMILIES) & set(DEV_FAMILIES)
    dev_faults = {f for name in DEV_FAMILIES for m in MACHINES for f in family(name).faults(m)}
    assert not dev_faults & set(HELDOUT_FAULTS)
    _, dev_meta = dev
    held = generate_suite(tmp_path, "heldout", **TINY)
    assert set(held["family"]) == set(HELDOUT_FAMILIES)
    assert set(held.loc[held["label"] == "anomaly", "fault"]) <= set(HELDOUT_FAULTS)
    assert not set(dev_meta["fault"]) & set(HELDOUT_FAULTS)


def test_pretrain_corpus_is_normal_training_audio_on_other_machines(tmp_path: Path) -> None:
    meta = generate_suite(tmp_path, "pretrain", hours=40 * 0.5 / 3600, instances=2, seconds=0.5, progress=False)
    assert len(meta) == 40
    assert set(meta["split"]) == {"train"} and set(meta["label"]) == {"normal"}
    assert set(meta["family"]) <= set(DEV_FAMILIES) and set(meta["domain"]) == {"source", "target"}
    df = build_manifest(tmp_path)
    assert set(df["split"]) == {"train"}
    # Corpus section 00 of a family is another machine than evaluation section 00 of that family.
    for name in DEV_FAMILIES:
        a, b = make_section("fan", 0, name, 0, SR), make_section("fan", 0, name, 1, SR)
        assert any(not np.array_equal(np.asarray(a.params[k]), np.asarray(b.params[k]))
                   for k in a.params if not k.startswith("_")), name


def _stats(x: np.ndarray) -> dict[str, float]:
    """Spectral flatness of the long-term spectrum and the crest of the 2 ms envelope."""
    _, p = welch(x, SR, nperseg=1024)
    p = p[4:] + 1e-20
    env = np.sqrt(np.convolve(x * x, np.ones(32) / 32, mode="valid"))
    return dict(flatness=float(np.exp(np.mean(np.log(p))) / np.mean(p)), crest=float(env.max() / env.mean()))


@pytest.mark.parametrize("machine", MACHINES)
def test_families_differ_structurally(machine: str) -> None:
    stats = {}
    for name in ("harmonic", "broadband", "impact"):
        fam = FAMILIES[name]
        values = []
        for inst in range(3):
            params = fam.draw(machine, np.random.default_rng([5, inst]))
            x = fam.render(params, None, 0.0, Condition(), np.random.default_rng(inst), SR, SR)
            values.append(_stats(x))
        stats[name] = {k: float(np.median([v[k] for v in values])) for k in values[0]}
    # A harmonic series is peaky, modulated flow is flat; hits are impulsive, the other two are not.
    assert stats["broadband"]["flatness"] > 5 * stats["harmonic"]["flatness"], stats
    assert stats["impact"]["crest"] > 2 * max(stats["harmonic"]["crest"], stats["broadband"]["crest"]), stats


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_fault_changes_the_sound(name: str) -> None:
    # At full severity each fault moves at least one view of the sound (level-free log spectrum,
    # envelope crest and spread, envelope modulation spectrum = rhythm, fine spectrum below 1 kHz for
    # the electrical hum's harmonics) away from normal further
    # than normal clips are, so no suite holds blank anomalies.
    fam = FAMILIES[name]
    params = fam.draw("pump", np.random.default_rng(3))

    def views(fault: str | None, seed: int) -> list[np.ndarray]:
        x = fam.render(params, fault, 1.0 if fault else 0.0, Condition(), np.random.default_rng(seed), 2 * SR, SR)
        _, p = welch(x, SR, nperseg=512)
        log = np.log(p[2:] + 1e-12)
        env = np.sqrt(np.convolve(x * x, np.ones(32) / 32, mode="valid"))[::32]  # 2 ms frames
        mod = np.log(np.abs(np.fft.rfft(env / env.mean() - 1.0))[1:80] + 1e-3)
        _, fine = welch(x, SR, nperseg=8192)
        low = np.log(fine[2:512] + 1e-12)
        return [log - log.mean(), np.log([env.max() / env.mean(), np.std(env) / env.mean()]), mod - mod.mean(),
                low - low.mean()]

    normal = [views(None, s) for s in range(8)]
    for fault in fam.faults("pump"):
        faulty = [views(fault, 100 + s) for s in range(4)]
        aucs = []
        for v in range(4):
            centre = np.mean([n[v] for n in normal[:4]], axis=0)
            d = [np.mean((c[v] - centre) ** 2) for c in normal[4:] + faulty]
            aucs.append(roc_auc_score([0] * 4 + [1] * 4, d))
        assert max(aucs) >= 0.9, (name, fault, aucs)


def test_rendered_clips_are_valid_audio(dev: tuple[Path, pd.DataFrame]) -> None:
    _, meta = dev
    for path in meta["path"][::5]:
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (SR, 1, "PCM_16", SR // 2)
        x, _ = sf.read(path, dtype="float32")
        assert np.isfinite(x).all() and np.sqrt(np.mean(x**2)) > 1e-3


@pytest.mark.parametrize("kwargs, message", [
    (dict(suite="bogus"), "unknown suite 'bogus'"),
    (dict(suite="dev", hours=1.0), "hours is only for the pretrain suite"),
    (dict(suite="pretrain"), "needs hours > 0"),
    (dict(suite="pretrain", hours=-1.0), "needs hours > 0"),
    (dict(suite="dev", n_test=-1), "n_test must be >= 0"),
    (dict(suite="dev", machines=["drill"]), "unknown machine 'drill'"),
    (dict(suite="dev", seconds=0.0), "seconds and sample_rate must be > 0"),
])
def test_bad_arguments_are_refused_clearly(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        generate_suite(tmp_path, progress=False, **kwargs)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_unknown_fault_and_family_are_refused() -> None:
    sec = make_section("valve", 0, "impact", 0, SR)
    with pytest.raises(ValueError, match="unknown fault 'leak' for impact valve"):
        render_clip(sec, ClipCondition(1.0, 0.0, "near", "factory"), "leak", 1.0, np.random.default_rng(0), SR, SR)
    with pytest.raises(ValueError, match="unknown generator family 'gearbox'"):
        family("gearbox")


def test_cli_suite_and_unchanged_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["synth", "--suite", "heldout", "--out", str(tmp_path / "h"), "--machines", "valve",
                     "--sections", "1", "--n-train", "2", "--n-target-train", "1", "--n-test", "1",
                     "--seconds", "0.5"]) == 0
    assert len(_files(tmp_path / "h")) == 2 + 1 + 4
    with pytest.raises(SystemExit, match="hours is only for the pretrain suite"):
        cli_main(["synth", "--suite", "dev", "--hours", "1", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="--hours needs --suite pretrain"):
        cli_main(["synth", "--hours", "1", "--out", str(tmp_path / "x")])
    # Without --suite the command writes exactly what the DCASE 2020 generator always wrote.
    assert cli_main(["synth", "--out", str(tmp_path / "cli"), "--machines", "valve", "--ids", "1",
                     "--seconds", "0.25"]) == 0
    generate_dataset(tmp_path / "lib", machines=["valve"], ids_per_machine=1, n_train=40, n_test_normal=12,
                     n_test_anomaly=12, seconds=0.25, progress=False)
    assert _files(tmp_path / "cli") == _files(tmp_path / "lib")
    assert len(_files(tmp_path / "cli")) == 64
