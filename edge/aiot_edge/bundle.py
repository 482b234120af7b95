"""Read and verify a bundle: the folder with `model.onnx` and `bundle.json` (docs/bundle.md).

`Bundle.load` checks everything the format promises before anything is scored: the format name and
version (newer versions are refused), the window geometry, that every machine's column indices are
in range and its decision scorer has a threshold, and the sha256 of `model.onnx`. Any mismatch is a
`BundleError` that names the file and the field; the reader never guesses. The module also holds
the two helpers the training side uses to write a bundle (`write_bundle_json`, `sha256_file`).

It knows nothing about onnxruntime, audio or MQTT.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMAT = "aiot-w2v2-bundle"
FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 384_000  # Hz; the same range the edge's audio reader accepts
MIN_WINDOW_S, MAX_WINDOW_S = 0.01, 60.0  # window length in seconds
_Fail = Callable[[str, str], "BundleError"]  # (field, message) -> error naming bundle.json and the field


class BundleError(ValueError):
    """A bundle is missing, malformed or does not match its checksum; the message names file and field."""


@dataclass(frozen=True)
class MachineSpec:
    """One machine type + ID served by a bundle: which output columns are its scorers, and its thresholds."""

    key: str  # "fan/id_00"
    machine: str  # "fan"
    machine_id: str  # "id_00"
    scorers: dict[str, int]  # scorer name -> column index in the model's `scores` output
    decision_scorer: str  # the scorer that raises alerts
    thresholds: dict[str, float]  # scorer name -> threshold (score > threshold = anomalous)
    calibration: dict[str, Any]  # free-form per-scorer calibration, passed through

    @property
    def threshold(self) -> float:
        """Threshold of the decision scorer."""
        return self.thresholds[self.decision_scorer]

    @property
    def decision_column(self) -> int:
        """Column index of the decision scorer."""
        return self.scorers[self.decision_scorer]


@dataclass(frozen=True)
class Bundle:
    """A verified bundle. `raw` is the parsed bundle.json, for fields this reader does not model."""

    path: Path  # the bundle folder
    sample_rate: int
    window: int  # samples per window fed to the model
    hop: int  # samples between window starts
    columns: tuple[str, ...]
    machines: dict[str, MachineSpec]
    model_file: Path  # absolute path of model.onnx
    sha256: str
    opset: int | None
    quantization: str | None
    name: str | None
    config_hash: str | None
    raw: dict[str, Any]

    @property
    def window_s(self) -> float:
        """Window length in seconds."""
        return self.window / self.sample_rate

    @property
    def hop_s(self) -> float:
        """Hop in seconds."""
        return self.hop / self.sample_rate

    @classmethod
    def load(cls, path: str | os.PathLike[str], verify_sha256: bool = True) -> Bundle:
        """Read and verify the bundle at `path` (the folder, or its bundle.json)."""
        path = Path(path)
        json_path = path if path.name == BUNDLE_JSON and path.is_file() else path / BUNDLE_JSON
        folder = json_path.parent
        if not json_path.is_file():
            raise BundleError(f"{json_path}: no such file (is {path} a bundle folder?)")
        try:
            with open(json_path, encoding="utf-8") as f:
                raw = json.load(f)
        except json.JSONDecodeError as err:
            raise BundleError(f"{json_path}: not valid JSON ({err})") from err
        except OSError as err:
            raise BundleError(f"{json_path}: cannot read ({err})") from err
        return _parse(raw, json_path, folder, verify_sha256)

    def machine(self, machine: str | None = None, machine_id: str | None = None) -> MachineSpec:
        """Select the machine this caller listens to.

        Accepts `("fan", "id_00")`, `("fan/id_00", None)`, a machine type or ID alone when it is
        unambiguous, and `(None, None)` when the bundle serves exactly one machine. Anything else
        is a `BundleError` listing the machines the bundle serves.
        """
        if machine is not None and machine_id is None and machine in self.machines:
            return self.machines[machine]
        if machine is not None and machine_id is not None:
            key = f"{machine}/{machine_id}"
            if key in self.machines:
                return self.machines[key]
            matches: list[MachineSpec] = []
        else:
            matches = [spec for spec in self.machines.values()
                       if machine in (None, spec.machine) and machine_id in (None, spec.machine_id)]
            if len(matches) == 1:
                return matches[0]
        wanted = "/".join(x for x in (machine, machine_id) if x is not None) or "(none given)"
        available = ", ".join(sorted(self.machines))
        reason = "is ambiguous" if len(matches) > 1 else "is not in this bundle"
        raise BundleError(f"{self.path}: machine {wanted} {reason}; available: {available}")


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so a large model never sits in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def external_data_files(model_file: str | os.PathLike[str]) -> list[str]:
    """Names of the external data files the ONNX model's initializers point to (empty for a self-contained one).

    Reads just enough protobuf to find them, without the onnx package: ModelProto.graph (field 7) ->
    GraphProto.initializer (5) -> TensorProto.data_location (14, 1 = EXTERNAL) and its external_data
    (13) entry "location". A file that is not a model gives [] (onnxruntime refuses it later).
    """
    try:
        data = memoryview(Path(model_file).read_bytes())  # the session holds it all soon anyway
        found = []
        for graph in _pb_fields(data, 7):
            for tensor in _pb_fields(graph, 5):
                for entry in _pb_fields(tensor, 13):
                    if bytes(next(iter(_pb_fields(entry, 1)), b"")) == b"location":
                        found.append(bytes(next(iter(_pb_fields(entry, 2)), b"")).decode("utf-8", "replace"))
        return sorted(set(found))
    except (OSError, ValueError):
        return []


def _pb_fields(buf: memoryview, number: int) -> list[memoryview]:
    """The length-delimited fields `number` of one protobuf message (ValueError if it is not protobuf)."""
    out, i, n = [], 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = _varint(buf, i)
            if i + length > n:
                raise ValueError("truncated")
            if field == number:
                out.append(buf[i:i + length])
            i += length
        else:
            raise ValueError(f"wire type {wire}")
    return out


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("bad varint")
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7


def write_bundle_json(path: str | os.PathLike[str], data: Mapping[str, Any]) -> Path:
    """Write `data` as `bundle.json` into the folder `path` (or to `path` itself if it names a .json file).

    The write is atomic (temporary file + rename), so a reader never sees half a file. NaN and
    infinity are refused: they are not JSON. Returns the path written.
    """
    path = Path(path)
    target = path if path.suffix == ".json" else path / BUNDLE_JSON
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".bundle-", suffix=".json.tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


# ---------------------------------------------------------------------------------------------
# parsing and verification


def _parse(raw: Any, json_path: Path, folder: Path, verify_sha256: bool) -> Bundle:
    def fail(field: str, msg: str) -> BundleError:
        return BundleError(f"{json_path}: field '{field}' {msg}")

    if not isinstance(raw, dict):
        raise BundleError(f"{json_path}: expected a JSON object at the top level, got {type(raw).__name__}")

    def get(obj: Mapping[str, Any], key: str, prefix: str = "") -> Any:
        if key not in obj:
            raise fail(prefix + key, "is missing")
        return obj[key]

    fmt = get(raw, "format")
    if fmt != FORMAT:
        raise fail("format", f"is {fmt!r}, expected {FORMAT!r} (not an aiot-w2v2 bundle)")
    version = get(raw, "format_version")
    if not _is_int(version) or version < 1:
        raise fail("format_version", f"must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise fail("format_version", f"is {version}, newer than this reader supports ({FORMAT_VERSION}); "
                                     "upgrade aiot-w2v2-edge")

    sample_rate = _positive_int(get(raw, "sample_rate"), "sample_rate", fail)
    window = _positive_int(get(raw, "window"), "window", fail)
    hop = _positive_int(get(raw, "hop"), "hop", fail)
    # Geometry a machine-sound model can have: outside it the model fails late (onnxruntime errors on a
    # window shorter than its convolutions, MemoryError or a hang on a huge one).
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise fail("sample_rate", f"must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE} Hz, got {sample_rate}")
    lo, hi = math.ceil(sample_rate * MIN_WINDOW_S), int(sample_rate * MAX_WINDOW_S)
    if not lo <= window <= hi:
        raise fail("window", f"must be between {lo} and {hi} samples ({MIN_WINDOW_S * 1000:g} ms - "
                             f"{MAX_WINDOW_S:g} s at {sample_rate} Hz), got {window}")
    if hop > hi:
        raise fail("hop", f"must be between 1 and {hi} samples ({MAX_WINDOW_S:g} s), got {hop}")

    columns = get(raw, "columns")
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
        raise fail("columns", "must be a non-empty list of strings")

    machines_raw = get(raw, "machines")
    if not isinstance(machines_raw, dict) or not machines_raw:
        raise fail("machines", "must be a non-empty object")
    machines = {key: _parse_machine(key, m, len(columns), fail, columns) for key, m in machines_raw.items()}

    model = get(raw, "model")
    if not isinstance(model, dict):
        raise fail("model", "must be an object")
    model_name = get(model, "file", "model.")
    if not isinstance(model_name, str) or not model_name:
        raise fail("model.file", f"must be a file name, got {model_name!r}")
    model_file = (folder / model_name).resolve()
    if Path(model_name).is_absolute() or not model_file.is_relative_to(folder.resolve()):
        raise fail("model.file", f"must name a file inside the bundle folder, got {model_name!r}")
    sha = get(model, "sha256", "model.")
    if not isinstance(sha, str) or not _SHA256.match(sha.lower()):
        raise fail("model.sha256", f"must be 64 hex digits, got {sha!r}")
    sha = sha.lower()
    if not model_file.is_file():
        raise BundleError(f"{model_file}: model file named by {json_path} field 'model.file' does not exist")
    if verify_sha256:
        actual = sha256_file(model_file)
        if actual != sha:
            raise BundleError(f"{model_file}: sha256 mismatch: {json_path} field 'model.sha256' says {sha}, "
                              f"the file hashes to {actual} (corrupt or replaced model)")
    external = external_data_files(model_file)
    if external:
        raise BundleError(f"{model_file}: the model loads external data ({', '.join(external)}), which is not "
                          f"covered by the sha256 in {json_path}; re-export it with the weights inside model.onnx")
    opset = model.get("opset")
    if opset is not None and not _is_int(opset):
        raise fail("model.opset", f"must be an integer, got {opset!r}")
    quantization = _optional_str(model.get("quantization"), "model.quantization", fail)
    name = _optional_str(model.get("name"), "model.name", fail)

    training = raw.get("training", {})
    if not isinstance(training, dict):
        raise fail("training", "must be an object")
    config_hash = _optional_str(training.get("config_hash"), "training.config_hash", fail)

    return Bundle(path=folder, sample_rate=sample_rate, window=window, hop=hop, columns=tuple(columns),
                  machines=machines, model_file=model_file, sha256=sha, opset=opset, quantization=quantization,
                  name=name, config_hash=config_hash, raw=raw)


def _parse_machine(key: str, m: Any, n_columns: int, fail: _Fail, columns: list[str]) -> MachineSpec:
    prefix = f"machines.{key}"
    if not isinstance(m, dict):
        raise fail(prefix, "must be an object")
    for field in ("machine", "machine_id", "scorers", "decision_scorer", "thresholds"):
        if field not in m:
            raise fail(f"{prefix}.{field}", "is missing")
    machine, machine_id = m["machine"], m["machine_id"]
    if not isinstance(machine, str) or not machine or not isinstance(machine_id, str) or not machine_id:
        raise fail(prefix, f"needs non-empty strings 'machine' and 'machine_id', got {machine!r}, {machine_id!r}")
    if key != f"{machine}/{machine_id}":
        raise fail(prefix, f"key must be '<machine>/<machine_id>' = '{machine}/{machine_id}'")

    scorers = m["scorers"]
    if not isinstance(scorers, dict) or not scorers:
        raise fail(f"{prefix}.scorers", "must be a non-empty object {scorer: column index}")
    for scorer, idx in scorers.items():
        if not _is_int(idx) or not 0 <= idx < n_columns:
            raise fail(f"{prefix}.scorers.{scorer}", f"column index {idx!r} is out of range [0, {n_columns})")
        expected = f"{key}/{scorer}"
        if columns[idx] != expected:
            # The index is authoritative; a differently named column is worth a look, not a refusal.
            log.warning("bundle column %d is named %r, expected %r", idx, columns[idx], expected)

    thresholds = m["thresholds"]
    if not isinstance(thresholds, dict):
        raise fail(f"{prefix}.thresholds", "must be an object {scorer: threshold}")
    for scorer, value in thresholds.items():
        if scorer not in scorers:
            raise fail(f"{prefix}.thresholds.{scorer}", f"names a scorer not in scorers ({', '.join(scorers)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise fail(f"{prefix}.thresholds.{scorer}", f"must be a finite number, got {value!r}")
        # Scores are distances (>= 0): a negative threshold would alert on everything. The ensemble is the
        # exception: a mean of z-scores calibrated on normal windows, negative for many of them.
        if value < 0 and scorer != "ensemble":
            raise fail(f"{prefix}.thresholds.{scorer}", f"must be >= 0 (a distance), got {value!r}")

    decision = m["decision_scorer"]
    if decision not in scorers:
        raise fail(f"{prefix}.decision_scorer", f"{decision!r} is not one of the scorers ({', '.join(scorers)})")
    if decision not in thresholds:
        raise fail(f"{prefix}.thresholds.{decision}", "is missing (the decision scorer needs a threshold)")

    calibration = m.get("calibration", {})
    if not isinstance(calibration, dict):
        raise fail(f"{prefix}.calibration", "must be an object")
    return MachineSpec(key=key, machine=machine, machine_id=machine_id, scorers=dict(scorers),
                       decision_scorer=decision, thresholds={k: float(v) for k, v in thresholds.items()},
                       calibration=calibration)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _positive_int(x: Any, field: str, fail: _Fail) -> int:
    if not _is_int(x) or x < 1:
        raise fail(field, f"must be an integer >= 1, got {x!r}")
    return x


def _optional_str(x: Any, field: str, fail: _Fail) -> str | None:
    if x is not None and not isinstance(x, str):
        raise fail(field, f"must be a string, got {x!r}")
    return x
