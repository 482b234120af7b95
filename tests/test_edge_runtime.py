"""aiot_edge.runtime: a tiny ONNX graph scores like its numpy reference; the offline JSON contract."""

from __future__ import annotations

import json
import logging
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
from aiot_edge.bundle import FORMAT, Bundle, BundleError, sha256_file, write_bundle_json
from aiot_edge.runtime import Scorer, machine_from_path, resolve_providers, score_file, score_files
from onnx import TensorProto, helper

SR, WINDOW, HOP = 16000, 1600, 800
COLUMNS = ["fan/id_00/mean_abs", "fan/id_00/max", "pump/id_02/energy"]
CONTRACT_KEYS = ["file", "machine", "machine_id", "window_start", "window_end", "scores", "score", "anomaly"]


def reference(windows: np.ndarray) -> np.ndarray:
    """What the tiny graph computes: [mean |x|, max x, mean x^2] per window."""
    return np.stack([np.abs(windows).mean(1), windows.max(1), (windows * windows).mean(1)], axis=1)


def tiny_model(path: Path, batch: int | str = "batch", samples: int | str = "samples",
               input_name: str = "audio") -> Path:
    """audio [batch, samples] -> scores [batch, 3] with ReduceMean(Abs), ReduceMax, ReduceMean(x*x); opset 17."""
    nodes = [
        helper.make_node("Abs", [input_name], ["abs"]),
        helper.make_node("ReduceMean", ["abs"], ["mean_abs"], axes=[1], keepdims=1),  # (B, 1)
        helper.make_node("ReduceMax", [input_name], ["max"], axes=[1], keepdims=1),  # (B, 1)
        helper.make_node("Mul", [input_name, input_name], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["energy"], axes=[1], keepdims=1),  # (B, 1)
        helper.make_node("Concat", ["mean_abs", "max", "energy"], ["scores"], axis=1),  # (B, 3)
    ]
    graph = helper.make_graph(
        nodes, "tiny_scores",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, samples])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def make_bundle(d: Path, **model_kw) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    tiny_model(d / "model.onnx", **model_kw)
    write_bundle_json(d, {
        "format": FORMAT, "format_version": 1, "sample_rate": SR, "window": WINDOW, "hop": HOP, "columns": COLUMNS,
        "machines": {
            "fan/id_00": {"machine": "fan", "machine_id": "id_00", "scorers": {"mean_abs": 0, "max": 1},
                          "decision_scorer": "mean_abs", "thresholds": {"mean_abs": 0.2, "max": 0.9}},
            "pump/id_02": {"machine": "pump", "machine_id": "id_02", "scorers": {"energy": 2},
                           "decision_scorer": "energy", "thresholds": {"energy": 0.05}},
        },
        "model": {"file": "model.onnx", "sha256": sha256_file(d / "model.onnx"), "opset": 17},
        "training": {"config_hash": "0" * 16},
    })
    return d


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    return Bundle.load(make_bundle(tmp_path / "bundle"))


def noise(n: int, amp: float = 0.3, seed: int = 0) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(n)).clip(-1, 1).astype(np.float32)


def write_wav(path: Path, x: np.ndarray, sr: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sr, subtype="FLOAT")
    return path


def test_scores_match_numpy_reference(bundle: Bundle) -> None:
    scorer = Scorer.from_bundle(bundle, batch_size=8)
    windows = np.random.default_rng(1).standard_normal((37, WINDOW)).astype(np.float32)  # 5 batches, last short
    np.testing.assert_allclose(scorer.score(windows), reference(windows), rtol=1e-5, atol=1e-6)
    assert scorer.score(np.zeros((0, WINDOW), np.float32)).shape == (0, 3)


def test_fixed_batch_model_is_padded(tmp_path: Path) -> None:
    b = Bundle.load(make_bundle(tmp_path / "b", batch=4, samples=WINDOW))
    scorer = Scorer.from_bundle(b)
    assert scorer.batch_size == 4
    windows = np.random.default_rng(2).standard_normal((6, WINDOW)).astype(np.float32)
    np.testing.assert_allclose(scorer.score(windows), reference(windows), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("windows", "message"), [
    (np.zeros(WINDOW, np.float32), "2-D"),
    (np.zeros((2, WINDOW), np.float64), "float32"),
    (np.zeros((2, WINDOW + 1), np.float32), f"windows of {WINDOW} samples"),
    (np.full((2, WINDOW), np.nan, np.float32), "NaN"),
])
def test_score_rejects_bad_input(bundle: Bundle, windows: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Scorer.from_bundle(bundle).score(windows)


def test_model_must_match_bundle(tmp_path: Path) -> None:
    b = Bundle.load(make_bundle(tmp_path / "a", samples=WINDOW * 2))
    with pytest.raises(BundleError, match="window is 1600"):
        Scorer.from_bundle(b)
    b = Bundle.load(make_bundle(tmp_path / "b", input_name="wave"))
    with pytest.raises(BundleError, match="expected input 'audio'"):
        Scorer.from_bundle(b)


def test_unavailable_provider_falls_back_to_cpu(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="aiot_edge.runtime"):
        providers = resolve_providers(["tensorrt", "cpu"])
    assert providers[-1] == "CPUExecutionProvider"
    if "TensorrtExecutionProvider" not in providers:
        assert "TensorrtExecutionProvider is not available" in caplog.text
    assert resolve_providers(None) == ["CPUExecutionProvider"]


@pytest.mark.parametrize(("path", "expected"), [
    ("data/fan/test/anomaly_id_00_00000001.wav", ("fan", "id_00")),
    ("data/fan/train/normal_id_04_00000123.wav", ("fan", "id_04")),
    ("dev/pump/source_test/section_02_source_test_normal_0007.wav", ("pump", "section_02")),
    ("dev/ToyCar/test/section_00_0012.wav", ("ToyCar", "section_00")),
    ("valve/id_06_00000002.wav", ("valve", "id_06")),  # directly in the machine folder
    ("-6_dB/slider/id_02/abnormal/00000005.wav", ("slider", "id_02")),  # MIMII as distributed
    ("recordings/clip.wav", None),
    ("fan/test/video_ideas.wav", None),
])
def test_machine_from_path(path: str, expected: tuple[str, str] | None) -> None:
    assert machine_from_path(path) == expected


def test_score_files_contract(tmp_path: Path, bundle: Bundle) -> None:
    x = noise(SR // 2)  # 0.5 s -> 1 + (8000 - 1600) // 800 = 9 windows
    wav = write_wav(tmp_path / "data" / "fan" / "test" / "anomaly_id_00_00000001.wav", x)
    rows = list(score_files(bundle.path, [wav]))
    assert len(rows) == 9
    for i, row in enumerate(rows):
        assert list(row) == CONTRACT_KEYS
        assert (row["file"], row["machine"], row["machine_id"]) == (str(wav), "fan", "id_00")
        assert row["window_start"] == pytest.approx(i * HOP / SR)
        assert row["window_end"] == pytest.approx((i * HOP + WINDOW) / SR)
        ref = reference(x[i * HOP: i * HOP + WINDOW][None])[0]
        assert list(row["scores"]) == ["mean_abs", "max"]
        assert row["scores"]["mean_abs"] == pytest.approx(ref[0], rel=1e-5)
        assert row["scores"]["max"] == pytest.approx(ref[1], rel=1e-5)
        assert row["score"] == row["scores"]["mean_abs"]
        assert row["anomaly"] is (row["score"] > 0.2)
        assert all(type(v) is float for v in row["scores"].values())  # JSON-able, not numpy


def test_explicit_machine_overrides_path(tmp_path: Path, bundle: Bundle) -> None:
    wav = write_wav(tmp_path / "anything.wav", noise(WINDOW))
    (row,) = score_files(bundle, [wav], machine="pump", machine_id="id_02")
    assert (row["machine"], row["machine_id"], list(row["scores"])) == ("pump", "id_02", ["energy"])
    (row,) = score_files(bundle, [wav], machine="pump/id_02")
    assert row["machine_id"] == "id_02"


def test_short_clip_is_zero_padded_to_one_window(tmp_path: Path, bundle: Bundle) -> None:
    x = noise(1000, amp=0.5, seed=3)
    wav = write_wav(tmp_path / "fan" / "test" / "normal_id_00_00000009.wav", x)
    (row,) = score_file(wav, bundle, bundle.machine("fan/id_00"), Scorer.from_bundle(bundle))
    assert row["padded"] is True
    assert (row["window_start"], row["window_end"]) == (0.0, pytest.approx(1000 / SR))
    padded = np.zeros((1, WINDOW), np.float32)
    padded[0, :1000] = x
    assert row["scores"]["mean_abs"] == pytest.approx(reference(padded)[0, 0], rel=1e-5)


def test_corrupt_and_unknown_files(tmp_path: Path, bundle: Bundle) -> None:
    bad = tmp_path / "fan" / "test" / "anomaly_id_00_00000002.wav"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"RIFF....WAVEfmt garbage")
    with pytest.raises(ValueError, match="anomaly_id_00_00000002.wav: cannot read audio"):
        list(score_files(bundle, [bad]))
    unknown = write_wav(tmp_path / "valve" / "test" / "normal_id_05_00000001.wav", noise(WINDOW))
    with pytest.raises(ValueError, match="normal_id_05_00000001.wav: .*available: fan/id_00, pump/id_02"):
        list(score_files(bundle, [unknown]))
    plain = write_wav(tmp_path / "clip.wav", noise(WINDOW))
    with pytest.raises(ValueError, match="clip.wav: cannot tell the machine"):
        list(score_files(bundle, [plain]))

    good = write_wav(tmp_path / "fan" / "test" / "normal_id_00_00000003.wav", noise(WINDOW))
    errors: list[tuple[str, ValueError]] = []
    rows = list(score_files(bundle, [bad, unknown, good], on_error=lambda f, e: errors.append((f, e))))
    assert [f for f, _ in errors] == [str(bad), str(unknown)]
    assert [r["file"] for r in rows] == [str(good)]


def test_non_finite_scores_are_valid_json_and_failed_windows(tmp_path: Path, bundle: Bundle, capsys) -> None:
    # Float samples of 1e20 overflow x*x: `aiot-edge score` printed a bare NaN/Infinity (not JSON).
    from aiot_edge.cli import main

    loud = np.full(WINDOW, 1e20, np.float32)
    wav = write_wav(tmp_path / "pump" / "test" / "anomaly_id_02_00000001.wav", np.concatenate([noise(WINDOW), loud]))
    assert main(["score", "--bundle", str(bundle.path), str(wav)]) == 1
    out, err = capsys.readouterr()

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    rows = [json.loads(line, parse_constant=no_constants) for line in out.splitlines()]
    bad = [r for r in rows if "error" in r]
    assert bad and all(r["score"] is None and r["scores"]["energy"] is None and r["anomaly"] is None for r in bad)
    assert "non-finite" in bad[0]["error"]
    assert all(r["score"] is not None for r in rows if "error" not in r)
    assert f"{len(bad)} window(s) failed" in err


def test_long_files_are_streamed(tmp_path: Path, bundle: Bundle) -> None:
    # A 10-minute clip took 586 MB in `score`: the whole file, its windows and its scores at once.
    x = noise(300 * SR, seed=5)  # 5 minutes: 19 MB as float32
    wav = write_wav(tmp_path / "fan" / "test" / "normal_id_00_00000011.wav", x)
    scorer = Scorer.from_bundle(bundle)
    spec = bundle.machine("fan/id_00")
    tracemalloc.start()
    try:
        n = 0
        for _row in score_file(wav, bundle, spec, scorer):
            n += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 1 + (len(x) - WINDOW) // HOP
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MB while scoring a 19 MB file"  # about 6 MB: blocks of 10 s


def test_streamed_scores_match_the_whole_file(tmp_path: Path, bundle: Bundle) -> None:
    x = noise(44100 * 23 + 17, seed=6)  # resampled, and longer than one read block, with a ragged end
    wav = write_wav(tmp_path / "fan" / "test" / "normal_id_00_00000012.wav", x, sr=44100)
    rows = list(score_file(wav, bundle, bundle.machine("fan/id_00"), Scorer.from_bundle(bundle)))
    from aiot_edge.audio import read_audio
    from aiot_edge.windowing import frame_windows

    ref = reference(frame_windows(read_audio(wav, SR), WINDOW, HOP))
    assert len(rows) == ref.shape[0]
    np.testing.assert_allclose([r["scores"]["mean_abs"] for r in rows], ref[:, 0], rtol=1e-5)
    assert rows[-1]["window_start"] == pytest.approx((ref.shape[0] - 1) * HOP / SR)
