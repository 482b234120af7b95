"""aiot_edge.bundle: a valid bundle loads; every kind of mismatch is a clear BundleError; machine selection."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from aiot_edge.bundle import FORMAT, Bundle, BundleError, sha256_file, write_bundle_json

MODEL_BYTES = b"not really onnx; Bundle.load only hashes it" * 100


def bundle_dict(sha: str, machines: tuple[str, ...] = ("fan/id_00", "pump/id_02")) -> dict[str, Any]:
    """bundle.json for machines that each have scorers 'a' and 'b' (columns in that order)."""
    columns, specs = [], {}
    for key in machines:
        machine, machine_id = key.split("/")
        specs[key] = {"machine": machine, "machine_id": machine_id,
                      "scorers": {"a": len(columns), "b": len(columns) + 1}, "decision_scorer": "b",
                      "thresholds": {"a": 1.0, "b": 2.0}, "calibration": {"b": {"method": "gamma90"}}}
        columns += [f"{key}/a", f"{key}/b"]
    return {"format": FORMAT, "format_version": 1, "created": "2026-11-25T23:00:00Z", "sample_rate": 16000,
            "window": 1600, "hop": 800, "columns": columns, "machines": specs,
            "model": {"file": "model.onnx", "sha256": sha, "opset": 17, "quantization": "none", "name": "tiny"},
            "training": {"config_hash": "0123456789abcdef", "run": "runs/tiny"}}


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    d = tmp_path / "bundle"
    d.mkdir()
    (d / "model.onnx").write_bytes(MODEL_BYTES)
    write_bundle_json(d, bundle_dict(sha256_file(d / "model.onnx")))
    return d


def rewrite(bundle_dir: Path, edit) -> None:
    data = json.loads((bundle_dir / "bundle.json").read_text())
    edit(data)
    write_bundle_json(bundle_dir, data)


def test_valid_bundle_loads(bundle_dir: Path) -> None:
    b = Bundle.load(bundle_dir)
    assert (b.sample_rate, b.window, b.hop) == (16000, 1600, 800)
    assert b.window_s == 0.1 and b.hop_s == 0.05
    assert b.columns == ("fan/id_00/a", "fan/id_00/b", "pump/id_02/a", "pump/id_02/b")
    assert b.model_file == (bundle_dir / "model.onnx").resolve()
    assert b.sha256 == hashlib.sha256(MODEL_BYTES).hexdigest()
    assert (b.opset, b.quantization, b.name, b.config_hash) == (17, "none", "tiny", "0123456789abcdef")
    pump = b.machines["pump/id_02"]
    assert pump.scorers == {"a": 2, "b": 3} and pump.decision_column == 3 and pump.threshold == 2.0
    assert pump.calibration == {"b": {"method": "gamma90"}}
    assert Bundle.load(bundle_dir / "bundle.json").machines.keys() == b.machines.keys()


def test_tampered_model_is_refused(bundle_dir: Path) -> None:
    data = bytearray(MODEL_BYTES)
    data[10] ^= 0x01
    (bundle_dir / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx: sha256 mismatch"):
        Bundle.load(bundle_dir)
    Bundle.load(bundle_dir, verify_sha256=False)  # the check is what refused it


def test_newer_format_version_is_refused(bundle_dir: Path) -> None:
    rewrite(bundle_dir, lambda d: d.update(format_version=2))
    with pytest.raises(BundleError, match=r"bundle\.json: field 'format_version' is 2, newer than"):
        Bundle.load(bundle_dir)


@pytest.mark.parametrize("path", [
    ("format",), ("format_version",), ("sample_rate",), ("window",), ("hop",), ("columns",), ("machines",),
    ("model",), ("model", "sha256"),
    ("model", "file"), ("machines", "fan/id_00", "decision_scorer"), ("machines", "pump/id_02", "thresholds"),
])
def test_missing_field_is_named(bundle_dir: Path, path: tuple[str, ...]) -> None:
    def drop(d: dict) -> None:
        for key in path[:-1]:
            d = d[key]
        del d[path[-1]]

    rewrite(bundle_dir, drop)
    with pytest.raises(BundleError, match=f"field '{'.'.join(path)}' is missing"):
        Bundle.load(bundle_dir)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["machines"]["fan/id_00"]["scorers"].update(b=4), r"machines\.fan/id_00\.scorers\.b'.*out of range"),
    (lambda d: d["machines"]["fan/id_00"]["scorers"].update(b=-1), "out of range"),
    (lambda d: d["machines"]["fan/id_00"].update(decision_scorer="zzz"), "'zzz' is not one of the scorers"),
    (lambda d: d["machines"]["fan/id_00"]["thresholds"].pop("b"), r"thresholds\.b' is missing"),
    (lambda d: d["machines"]["fan/id_00"]["thresholds"].update(c=1.0), "names a scorer not in scorers"),
    (lambda d: d.update(window=0), "'window' must be an integer >= 1"),
    (lambda d: d.update(hop=1.5), "'hop' must be an integer >= 1"),
    (lambda d: d.update(format="something-else"), "not an aiot-w2v2 bundle"),
    (lambda d: d["model"].update(sha256="abc"), "64 hex digits"),
    (lambda d: d["model"].update(file="../model.onnx"), "inside the bundle folder"),
    (lambda d: d["machines"].update({"fan/id_09": d["machines"].pop("fan/id_00")}), "key must be"),
    # each of these once loaded and then failed in onnxruntime, with a MemoryError or a hang
    (lambda d: d.update(window=1), r"'window' must be between 160 and 960000 samples \(10 ms - 60 s"),
    (lambda d: d.update(window=100), "'window' must be between 160 and 960000 samples"),
    (lambda d: d.update(window=10**12), "'window' must be between 160 and 960000 samples"),
    (lambda d: d.update(hop=10**12), "'hop' must be between 1 and 960000 samples"),
    (lambda d: d.update(sample_rate=10**9), "'sample_rate' must be between 1000 and 384000"),
    (lambda d: d["machines"]["fan/id_00"]["thresholds"].update(b=-2.0), r"thresholds\.b' must be >= 0 \(a distance"),
])
def test_invalid_fields(bundle_dir: Path, edit, message: str) -> None:
    rewrite(bundle_dir, edit)
    with pytest.raises(BundleError, match=message):
        Bundle.load(bundle_dir)


def test_a_negative_ensemble_threshold_loads(bundle_dir: Path) -> None:
    def edit(d: dict[str, Any]) -> None:  # the ensemble's calibrated z-scores can sit below 0 on normal windows
        m = d["machines"]["fan/id_00"]
        m["scorers"]["ensemble"] = m["scorers"].pop("b")
        m.update(decision_scorer="ensemble", thresholds={"a": 1.0, "ensemble": -0.34}, calibration={})
        d["columns"][1] = "fan/id_00/ensemble"

    rewrite(bundle_dir, edit)
    assert Bundle.load(bundle_dir).machines["fan/id_00"].threshold == -0.34


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such file"):
        Bundle.load(tmp_path)
    (tmp_path / "bundle.json").write_text("{ not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(tmp_path)


def test_missing_model_file(bundle_dir: Path) -> None:
    (bundle_dir / "model.onnx").unlink()
    with pytest.raises(BundleError, match="does not exist"):
        Bundle.load(bundle_dir)


def test_machine_selection(bundle_dir: Path) -> None:
    b = Bundle.load(bundle_dir)
    assert b.machine("fan", "id_00").key == "fan/id_00"
    assert b.machine("fan/id_00").key == "fan/id_00"
    assert b.machine("pump").key == "pump/id_02"  # unambiguous alone
    assert b.machine(machine_id="id_02").key == "pump/id_02"
    with pytest.raises(BundleError, match="valve/id_00 is not in this bundle; available: fan/id_00, pump/id_02"):
        b.machine("valve", "id_00")
    with pytest.raises(BundleError, match=r"\(none given\) is ambiguous; available: fan/id_00, pump/id_02"):
        b.machine()


def test_single_machine_bundle_needs_no_selection(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(MODEL_BYTES)
    write_bundle_json(tmp_path, bundle_dict(sha256_file(tmp_path / "model.onnx"), machines=("valve/id_04",)))
    assert Bundle.load(tmp_path).machine().key == "valve/id_04"


def test_write_bundle_json_is_atomic_and_strict(tmp_path: Path) -> None:
    data = bundle_dict("0" * 64)
    out = write_bundle_json(tmp_path / "b", data)
    assert out == tmp_path / "b" / "bundle.json"
    assert json.loads(out.read_text()) == data
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["bundle.json"]  # no temporary left behind
    bad = copy.deepcopy(data)
    bad["machines"]["fan/id_00"]["thresholds"]["a"] = float("nan")
    with pytest.raises(ValueError):
        write_bundle_json(tmp_path / "b", bad)
    assert json.loads(out.read_text()) == data  # the old file is untouched


def test_sha256_file_streams(tmp_path: Path) -> None:
    p = tmp_path / "x.bin"
    p.write_bytes(bytes(range(256)) * 5000)
    assert sha256_file(p, chunk_size=1000) == hashlib.sha256(p.read_bytes()).hexdigest()


def test_external_weights_are_refused(tmp_path: Path) -> None:
    # External data files are loaded by onnxruntime but were not covered by the bundle's sha256.
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper, save_model

    weight = numpy_helper.from_array(np.ones((1600, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["audio", "w"], ["scores"])], "g",
                              [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", 1600])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 1])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    d = tmp_path / "bundle"
    d.mkdir()
    save_model(model, str(d / "model.onnx"), save_as_external_data=True, location="weights.bin",
               size_threshold=0)
    assert (d / "weights.bin").exists()
    data = bundle_dict(sha256_file(d / "model.onnx"), machines=("fan/id_00",))
    write_bundle_json(d, data)
    with pytest.raises(BundleError, match="external data.*weights.bin.*not covered"):
        Bundle.load(d)
