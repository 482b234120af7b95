"""Score audio with a bundle's model: an onnxruntime session, offline file scoring, DCASE path parsing.

`Scorer` wraps one `onnxruntime.InferenceSession` and turns windows [n, window] into scores
[n, n_columns] in batches. `score_file` / `score_files` are the offline path behind `aiot-edge score`:
one JSON-able dict per window, exactly the CLI contract (ARCHITECTURE.md §4.1):

    {"file", "machine", "machine_id", "window_start", "window_end", "scores": {scorer: value},
     "score", "anomaly"}

Each file is streamed (read a block at a time: bounded memory for any length) and windowed on its
own with the bundle's window and hop; a tail shorter than one window is dropped. A clip shorter
than one window is zero-padded to exactly one window and scored once (logged; the daemon does the
same); its dict carries an extra `"padded": true` and its `window_end` is the clip's real end, not
the padded one. A non-finite score is `null` with an `"error"` field and `"anomaly": null`.
Decisions here are the plain threshold (score > threshold); debouncing belongs to
`aiot_edge.decision` and the daemon.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from aiot_edge.audio import stream_audio
from aiot_edge.bundle import Bundle, BundleError, MachineSpec
from aiot_edge.windowing import Windower

log = logging.getLogger(__name__)

INPUT_NAME = "audio"
OUTPUT_NAME = "scores"
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "rocm": "ROCMExecutionProvider",
}
# onnxruntime's own exception classes derive from Exception directly; catch exactly those.
_ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    cls for name in ("Fail", "InvalidArgument", "InvalidProtobuf", "NoSuchFile", "InvalidGraph", "NotImplemented",
                     "RuntimeException", "EPFail")
    if isinstance(cls := getattr(_ort_state, name, None), type)
)

_SPLIT_DIR = re.compile(r"^(?:\w+_)?(?:train|test)$|^(?:supplemental|eval|evaluation|dev|valid|validation)$")
_SECTION = re.compile(r"(?:^|_)(section_\d+)(?=_|$)")
_ID = re.compile(r"(?:^|_)(id_\d+)(?=_|$)")


def resolve_providers(providers: Sequence[str] | None = None) -> list[str]:
    """Map short names ("cpu", "cuda", "tensorrt") to onnxruntime provider names, keeping only available ones.

    Unavailable providers are dropped with a warning; CPU is always appended as the last fallback.
    """
    available = set(ort.get_available_providers())
    wanted = [PROVIDER_ALIASES.get(p.lower(), p) for p in (providers or ["cpu"])]
    chosen: list[str] = []
    for name in wanted:
        if name in chosen:
            continue
        if name in available:
            chosen.append(name)
        else:
            log.warning("onnxruntime provider %s is not available here (available: %s); falling back",
                        name, ", ".join(sorted(available)))
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class Scorer:
    """One onnxruntime session over a bundle's model: windows [n, window] float32 -> scores [n, n_columns]."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        providers: Sequence[str] | None = None,
        intra_op_num_threads: int | None = None,
        batch_size: int = 16,
        window: int | None = None,
        n_columns: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        options = ort.SessionOptions()
        if intra_op_num_threads is not None:
            options.intra_op_num_threads = int(intra_op_num_threads)
        options.log_severity_level = 3  # errors only; the provider fallback is logged by us
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=options,
                                                providers=resolve_providers(providers))
        except _ORT_ERRORS as err:
            raise BundleError(f"{model_path}: onnxruntime cannot load the model ({err})") from err

        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        names_in, names_out = [i.name for i in inputs], [o.name for o in outputs]
        if INPUT_NAME not in names_in or OUTPUT_NAME not in names_out:
            raise BundleError(f"{model_path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, "
                              f"the model has inputs {names_in} and outputs {names_out}")
        in_shape = inputs[names_in.index(INPUT_NAME)].shape
        out_shape = outputs[names_out.index(OUTPUT_NAME)].shape
        if len(in_shape) != 2 or len(out_shape) != 2:
            raise BundleError(f"{model_path}: expected audio [batch, samples] -> scores [batch, n_columns], "
                              f"got {in_shape} -> {out_shape}")
        if window is not None and isinstance(in_shape[1], int) and in_shape[1] != window:
            raise BundleError(f"{model_path}: model takes {in_shape[1]} samples, the bundle's window is {window}")
        if n_columns is not None and isinstance(out_shape[1], int) and out_shape[1] != n_columns:
            raise BundleError(f"{model_path}: model gives {out_shape[1]} scores, the bundle lists {n_columns} columns")
        # A model exported with a fixed batch size is fed exactly that many rows (the last batch padded).
        self.fixed_batch = in_shape[0] if isinstance(in_shape[0], int) and in_shape[0] > 0 else None
        self.batch_size = self.fixed_batch or int(batch_size)
        self.window = window if window is not None else (in_shape[1] if isinstance(in_shape[1], int) else None)
        self.n_columns = n_columns
        self.providers = self.session.get_providers()
        self._warned_nonfinite = False

    @classmethod
    def from_bundle(cls, bundle: Bundle, providers: Sequence[str] | None = None,
                    intra_op_num_threads: int | None = None, batch_size: int = 16) -> Scorer:
        """A scorer for `bundle`'s model, checked against its window and column count."""
        return cls(bundle.model_file, providers=providers, intra_op_num_threads=intra_op_num_threads,
                   batch_size=batch_size, window=bundle.window, n_columns=len(bundle.columns))

    def score(self, windows: np.ndarray) -> np.ndarray:
        """Scores for `windows` float32 [n, window]: float32 [n, n_columns]. Raises ValueError on bad input."""
        if not isinstance(windows, np.ndarray) or windows.ndim != 2:
            raise ValueError(f"expected windows as a 2-D array [n, window], got {getattr(windows, 'shape', windows)}")
        if windows.dtype != np.float32:
            raise ValueError(f"expected float32 windows, got {windows.dtype} (use .astype(np.float32))")
        if self.window is not None and windows.shape[1] != self.window:
            raise ValueError(f"expected windows of {self.window} samples, got {windows.shape[1]}")
        outs = []
        for i in range(0, windows.shape[0], self.batch_size):
            batch = np.ascontiguousarray(windows[i:i + self.batch_size])  # (b, window)
            if not np.isfinite(batch).all():
                raise ValueError(f"windows {i}..{i + batch.shape[0] - 1} hold NaN or Inf samples")
            b = batch.shape[0]
            if self.fixed_batch is not None and b < self.fixed_batch:
                batch = np.concatenate([batch, np.zeros((self.fixed_batch - b, batch.shape[1]), np.float32)])
            out = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0][:b]  # (b, n_columns)
            outs.append(np.asarray(out, dtype=np.float32))
        if not outs:
            return np.zeros((0, self.n_columns or 0), dtype=np.float32)
        scores = np.concatenate(outs)
        if not self._warned_nonfinite and not np.isfinite(scores).all():
            self._warned_nonfinite = True
            log.warning("the model returned NaN/Inf scores; those windows never count as anomalous")
        return scores


def machine_from_path(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """(machine, machine_id) from a DCASE-style path, or None when the path does not say.

    `<machine>/<split>/..._id_XX_...wav` -> (machine, "id_XX"); DCASE 2021+
    `<machine>/<split>/section_XX_...wav` -> (machine, "section_XX"); a file directly in the machine
    folder also works, as does MIMII's `<machine>/id_XX/{normal,abnormal}/N.wav`.
    """
    p = Path(path)
    parent, grandparent = p.parent.name, p.parent.parent.name
    if parent in ("normal", "abnormal") and _ID.fullmatch(grandparent) and p.parent.parent.parent.name:
        return p.parent.parent.parent.name, grandparent
    m = _SECTION.search(p.stem) or _ID.search(p.stem)
    if m is None:
        return None
    machine = grandparent if _SPLIT_DIR.match(parent) else parent
    return (machine, m.group(1)) if machine else None


def select_machine(bundle: Bundle, path: str | os.PathLike[str], machine: str | None = None,
                   machine_id: str | None = None) -> MachineSpec:
    """The bundle's machine for `path`: given names win; what is missing is read from the path.

    Raises ValueError naming the file when the machine cannot be told or the bundle does not serve it.
    """
    if machine is None or (machine_id is None and "/" not in machine):
        parsed = machine_from_path(path)
        if parsed is not None:
            machine = machine or parsed[0]
            machine_id = machine_id or parsed[1]
        elif machine is None and machine_id is None and len(bundle.machines) > 1:
            raise ValueError(f"{path}: cannot tell the machine from the path (expected "
                             "<machine>/<split>/..._id_XX_...wav); give machine and machine_id. "
                             f"Available: {', '.join(sorted(bundle.machines))}")
    try:
        return bundle.machine(machine, machine_id)
    except BundleError as err:
        raise ValueError(f"{path}: {err}") from err


def score_file(path: str | os.PathLike[str], bundle: Bundle, spec: MachineSpec, scorer: Scorer,
               block_s: float = 10.0) -> Iterator[dict[str, Any]]:
    """Score one file: one dict per window (see the module docstring), streamed.

    The file is read `block_s` seconds at a time and its windows scored as they complete, so
    memory stays bounded for a file of any length. Raises ValueError naming the file (possibly
    after the rows of the part before the problem).
    """
    sr, window = bundle.sample_rate, bundle.window
    windower = Windower(window, bundle.hop)
    head: list[np.ndarray] = []  # the samples so far while the clip is shorter than one window
    total = 0
    for block in stream_audio(path, sr, block_s):  # AudioFormatError (a ValueError) names the file
        if total < window:
            head.append(block)
        total += block.shape[0]
        windows = windower.push(block)
        if windows:
            yield from _rows(path, spec, scorer, np.stack([w for w, _ in windows]),  # (n, window)
                             [start for _, start in windows], sr, window)
    if 0 < total < window:
        # One rule with the daemon: a clip shorter than one window is zero-padded and scored once.
        log.warning("%s: %d samples, shorter than one window (%d): zero-padded to one window", path, total, window)
        padded = np.zeros((1, window), dtype=np.float32)  # (1, window)
        padded[0, :total] = np.concatenate(head)
        for row in _rows(path, spec, scorer, padded, [0], sr, total):
            row["padded"] = True
            yield row


def _rows(path: str | os.PathLike[str], spec: MachineSpec, scorer: Scorer, windows: np.ndarray,
          starts: list[int], sr: int, length: int) -> list[dict[str, Any]]:
    """The JSON-able dicts of `windows` [n, window] starting at `starts` (samples), each `length` samples long.

    A non-finite score is not a number JSON can carry: it becomes null, with an "error" field
    (and "anomaly": null), and the caller counts the window as failed.
    """
    try:
        scores = scorer.score(windows)  # (n, n_columns)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    rows = []
    for start, row in zip(starts, scores, strict=True):
        values: dict[str, float | None] = {name: float(row[col]) for name, col in spec.scorers.items()}
        bad = sorted(name for name, v in values.items() if v is not None and not math.isfinite(v))
        values.update({name: None for name in bad})
        score = values[spec.decision_scorer]
        d: dict[str, Any] = {
            "file": str(path), "machine": spec.machine, "machine_id": spec.machine_id,
            "window_start": start / sr, "window_end": (start + length) / sr,
            "scores": values, "score": score, "anomaly": None if score is None else bool(score > spec.threshold),
        }
        if bad:
            d["error"] = f"non-finite score (NaN or Inf) from {', '.join(bad)}"
        rows.append(d)
    return rows


def score_files(
    bundle_path: str | os.PathLike[str] | Bundle,
    files: Iterable[str | os.PathLike[str]],
    machine: str | None = None,
    machine_id: str | None = None,
    providers: Sequence[str] | None = None,
    *,
    batch_size: int = 16,
    intra_op_num_threads: int | None = None,
    on_error: Callable[[str, ValueError], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Score `files` with one bundle and session; yields one dict per window, file by file.

    Without `machine`/`machine_id` each file's machine is read from its DCASE path (a bundle with
    one machine needs neither). A file that cannot be scored raises ValueError naming it; with
    `on_error`, the error is passed to `on_error(file, error)` instead and scoring goes on (a
    generator that raised cannot resume, so this is how the CLI reports and continues).
    """
    bundle = bundle_path if isinstance(bundle_path, Bundle) else Bundle.load(bundle_path)
    scorer = Scorer.from_bundle(bundle, providers=providers, intra_op_num_threads=intra_op_num_threads,
                                batch_size=batch_size)
    for f in files:
        try:
            spec = select_machine(bundle, f, machine, machine_id)
            yield from score_file(f, bundle, spec, scorer)
        except ValueError as err:
            if on_error is None:
                raise
            on_error(str(f), err)
