"""Manifests: one pandas row per audio file, with what its path says about it.

`build_manifest` walks folders, recognises the public machine-sound layouts from each file's path
and (optionally) reads only the file headers for sample rate and length. Layouts, tried in order:

- DCASE 2021+  `<machine>/<split>/section_<SS>[_source|_target][_train|_test][_normal|_anomaly]_<NNNN>*.wav`
  -> machine_id "section_SS", section "SS", domain, label (the 2022/23 evaluation test files carry
  neither domain nor label: None).
- DCASE 2020   `<machine>/<split>/[normal_|anomaly_]id_<XX>_<N>.wav` (MIMII/ToyADMOS as distributed
  for DCASE 2020 Task 2; the evaluation test files carry no label) -> machine_id "id_XX".
- MIMII raw    `<snr>/<machine>/id_<XX>/{normal,abnormal}/<N>.wav` -> split None, label normal/anomaly.
- plain        anything else -> machine = the name of the folder passed in, machine_id None.

`split` is "train" or "test" when the layout says so (the split folder `source_test` gives "test";
its domain comes from the file name), the split folder's own name for other split folders
(e.g. "supplemental"), else None. Missing values are None (object columns), never NaN.
The module reads headers only; it knows nothing about decoding, cropping or batching.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import soundfile as sf

COLUMNS = ("path", "machine", "machine_id", "split", "label", "domain", "section", "sample_rate",
           "n_samples", "duration")

_DCASE21 = re.compile(
    r"^section_(?P<section>\d+)(?:_(?P<domain>source|target))?(?:_(?P<split>train|test))?"
    r"(?:_(?P<label>normal|anomaly))?_\d+"
)
_DCASE20 = re.compile(r"^(?:(?P<label>normal|anomaly)_)?id_(?P<id>\d+)_\d+$")
_MIMII_ID = re.compile(r"^id_\d+$")
# Folder names that hold one split of a DCASE machine: train, test, source_test, target_test, eval,
# supplemental, ...
_SPLIT_DIR = re.compile(r"^(?:\w+_)?(?:train|test)$|^(?:supplemental|eval|evaluation|dev|valid|validation)$")


@dataclass(frozen=True)
class PathInfo:
    """What a file's path says about it (the non-header columns of a manifest row)."""

    machine: str
    machine_id: str | None = None
    split: str | None = None
    label: str | None = None
    domain: str | None = None
    section: str | None = None


def parse_path(path: str | Path, root: str | Path | None = None) -> PathInfo:
    """Recognise one file's layout from its path; `root` is the folder it was found under.

    `root` only matters for plain folders (machine = root's name); without it the parent folder
    names the machine.
    """
    p = Path(path)
    parts = p.parts
    parent = parts[-2] if len(parts) >= 2 else ""
    grandparent = parts[-3] if len(parts) >= 3 else ""
    stem = p.stem

    m = _DCASE21.match(stem)
    if m:
        machine, split = _machine_and_split(parent, grandparent, m["split"])
        section = m["section"]
        return PathInfo(machine=machine, machine_id=f"section_{section}", split=split, label=m["label"],
                        domain=m["domain"], section=section)

    m = _DCASE20.match(stem)
    if m:
        machine, split = _machine_and_split(parent, grandparent, None)
        return PathInfo(machine=machine, machine_id=f"id_{m['id']}", split=split, label=m["label"])

    if parent in ("normal", "abnormal") and _MIMII_ID.match(grandparent) and len(parts) >= 4:
        return PathInfo(machine=parts[-4], machine_id=grandparent, split=None,
                        label="normal" if parent == "normal" else "anomaly")

    machine = parent
    if root is not None and Path(root) != p:
        machine = Path(os.path.abspath(root)).name
    return PathInfo(machine=machine or "unknown")


def _machine_and_split(parent: str, grandparent: str, split_in_name: str | None) -> tuple[str, str | None]:
    """DCASE layouts: `<machine>/<split dir>/file`; a file directly in a machine folder also works."""
    if _SPLIT_DIR.match(parent):
        split = "train" if parent.endswith("train") else "test" if parent.endswith("test") else parent
        return grandparent or "unknown", split
    return parent or "unknown", split_in_name


def build_manifest(
    dirs: Sequence[str | Path] | str | Path,
    exts: Sequence[str] = (".wav", ".flac"),
    probe: bool = True,
) -> pd.DataFrame:
    """One row per audio file under `dirs` (recursively), sorted by absolute path; columns `COLUMNS`.

    With `probe`, only headers are read (`soundfile.info`); unreadable and empty files are dropped,
    counted in one warning and listed in `df.attrs["skipped"]` as (path, reason). Without `probe`,
    `sample_rate`, `n_samples` and `duration` are None. Hidden files (`._x.wav` from macOS archives)
    are ignored. Raises ValueError when a folder does not exist or no audio is found.
    """
    if isinstance(dirs, (str, Path)):
        dirs = [dirs]
    if not dirs:
        raise ValueError("build_manifest: no folders given")
    wanted = {e.lower() if e.startswith(".") else "." + e.lower() for e in exts}

    found: dict[str, PathInfo] = {}
    for d in dirs:
        root = Path(os.path.abspath(d))
        if root.is_file():
            candidates = [root]
        elif root.is_dir():
            candidates = [q for q in root.rglob("*") if q.is_file()]
        else:
            raise ValueError(f"build_manifest: '{d}' is not a file or folder")
        for q in candidates:
            if q.suffix.lower() in wanted and not q.name.startswith("."):
                found.setdefault(str(q), parse_path(q, root))
    if not found:
        raise ValueError(
            f"no audio files ({', '.join(sorted(wanted))}) found under: {', '.join(str(d) for d in dirs)}"
        )

    rows = []
    skipped: list[tuple[str, str]] = []
    for path in sorted(found):
        info = found[path]
        sample_rate = n_samples = duration = None
        if probe:
            try:
                header = sf.info(path)
            except (sf.SoundFileError, RuntimeError, OSError) as err:
                skipped.append((path, f"unreadable: {err}"))
                continue
            if header.frames <= 0 or header.samplerate <= 0:
                skipped.append((path, "no samples"))
                continue
            sample_rate, n_samples = int(header.samplerate), int(header.frames)
            duration = n_samples / sample_rate
        rows.append((path, info.machine, info.machine_id, info.split, info.label, info.domain, info.section,
                     sample_rate, n_samples, duration))

    if skipped:
        names = ", ".join(Path(p).name for p, _ in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        msg = f"skipped {len(skipped)} unreadable or empty audio file(s): {names}"
        warnings.warn(msg, stacklevel=2)
    if not rows:
        raise ValueError(
            f"none of the {len(skipped)} audio files under {', '.join(str(d) for d in dirs)} could be read "
            f"(first: {skipped[0][0]}: {skipped[0][1]})"
        )

    df = pd.DataFrame({c: pd.Series([r[i] for r in rows], dtype=object) for i, c in enumerate(COLUMNS)})
    if probe:
        df["sample_rate"] = df["sample_rate"].astype("int64")
        df["n_samples"] = df["n_samples"].astype("int64")
        df["duration"] = df["duration"].astype("float64")
    df.attrs["skipped"] = skipped
    return df


def split_of(df: pd.DataFrame, split: str | Sequence[str]) -> pd.DataFrame:
    """Rows of `df` whose split is `split` (or one of several), re-indexed from 0."""
    wanted = [split] if isinstance(split, str) else list(split)
    out = df[df["split"].isin(wanted)].reset_index(drop=True)
    out.attrs = dict(df.attrs)
    return out
