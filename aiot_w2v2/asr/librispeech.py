"""LibriSpeech on disk -> a pandas manifest of utterances with their transcripts.

Reads the layout exactly as distributed: `ROOT/LibriSpeech/<subset>/<speaker>/<chapter>/`
`<speaker>-<chapter>-<utt>.flac` with one `<speaker>-<chapter>.trans.txt` per chapter ("ID TEXT"
lines). ROOT may also be the `LibriSpeech` folder itself. Several subsets can be read at once
(`"train-clean-100,train-clean-360"`), and utterances outside [min_seconds, max_seconds] are left
out (counted in `df.attrs`). Only file headers are read. An audio file without a transcript line,
an unreadable or empty file and a missing subset are errors that name the file.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import soundfile as sf

COLUMNS = ("id", "path", "subset", "speaker", "chapter", "transcript", "sample_rate", "n_samples", "duration")
AUDIO_EXTS = (".flac", ".wav")
_UTT = re.compile(r"^(\d+)-(\d+)-(\d+)$")


class LibriSpeechError(ValueError):
    """The folder does not hold the LibriSpeech layout, or a file in it is unusable."""


def subset_dir(root: str | Path, subset: str) -> Path:
    """`ROOT/LibriSpeech/<subset>` (or `ROOT/<subset>` when ROOT is the LibriSpeech folder)."""
    root = Path(root)
    for candidate in (root / "LibriSpeech" / subset, root / subset):
        if candidate.is_dir():
            return candidate
    base = root / "LibriSpeech" if (root / "LibriSpeech").is_dir() else root
    have = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    raise LibriSpeechError(f"no LibriSpeech subset '{subset}' under {root} (expected {root}/LibriSpeech/{subset}/; "
                           f"found: {', '.join(have) or 'nothing'})")


def parse_subsets(subsets: str | Sequence[str]) -> list[str]:
    names = subsets.split(",") if isinstance(subsets, str) else list(subsets)
    names = [s.strip() for s in names if s.strip()]
    if not names:
        raise LibriSpeechError("no subset given")
    return names


def read_transcripts(path: Path) -> dict[str, str]:
    """`<speaker>-<chapter>.trans.txt` -> {utterance id: text}."""
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        utt, _, text = line.strip().partition(" ")
        if not _UTT.match(utt):
            raise LibriSpeechError(f"{path}:{n}: expected '<speaker>-<chapter>-<utt> TEXT', got {line[:60]!r}")
        out[utt] = text.strip()
    return out


def librispeech_manifest(root: str | Path, subsets: str | Sequence[str], *, min_seconds: float = 0.0,
                         max_seconds: float = math.inf) -> pd.DataFrame:
    """One row per utterance of `subsets` (columns `COLUMNS`), sorted by subset and id.

    `df.attrs`: "filtered" (utterances outside the length range), "unused_transcripts" (lines without
    audio; warned about).
    """
    rows = []
    unused = 0
    for subset in parse_subsets(subsets):
        base = subset_dir(root, subset)
        chapters = sorted(p for p in base.glob("*/*") if p.is_dir())
        if not chapters:
            raise LibriSpeechError(f"{base}: no <speaker>/<chapter> folders")
        for chapter_dir in chapters:
            speaker, chapter = chapter_dir.parent.name, chapter_dir.name
            trans = chapter_dir / f"{speaker}-{chapter}.trans.txt"
            audio = sorted(p for p in chapter_dir.iterdir() if p.suffix.lower() in AUDIO_EXTS)
            if not audio:
                continue
            if not trans.exists():
                raise LibriSpeechError(f"{chapter_dir}: {len(audio)} audio files but no transcript file {trans.name}")
            texts = read_transcripts(trans)
            for path in audio:
                utt = path.stem
                if utt not in texts:
                    raise LibriSpeechError(f"{path}: no transcript line '{utt} ...' in {trans}")
                rows.append((utt, str(path), subset, speaker, chapter, texts.pop(utt), *_header(path)))
            unused += len(texts)
    if unused:
        warnings.warn(f"{unused} transcript lines have no audio file; they are ignored", stacklevel=2)
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    keep = (df["duration"] >= min_seconds) & (df["duration"] <= max_seconds)
    out = df[keep].sort_values(["subset", "id"]).reset_index(drop=True)
    out.attrs = {"filtered": int((~keep).sum()), "unused_transcripts": unused}
    if out.empty:
        raise LibriSpeechError(f"no utterance of {', '.join(parse_subsets(subsets))} under {root} lasts between "
                               f"{min_seconds} and {max_seconds} s ({len(df)} found)")
    return out


def _header(path: Path) -> tuple[int, int, float]:
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        raise LibriSpeechError(f"{path}: cannot read audio ({exc})") from exc
    if info.frames <= 0 or info.samplerate <= 0:
        raise LibriSpeechError(f"{path}: the audio file holds no samples")
    return int(info.samplerate), int(info.frames), info.frames / info.samplerate


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """A manifest as TSV (reload with `pd.read_csv(path, sep="\\t", dtype=str)` or `read_manifest`)."""
    path = Path(path)
    df.to_csv(path, sep="\t", index=False)
    return path


def read_manifest(path: str | Path) -> pd.DataFrame:
    df = pd.read_csv(path, sep="\t", dtype={"id": str, "speaker": str, "chapter": str, "transcript": str},
                     keep_default_na=False)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise LibriSpeechError(f"{path}: not a LibriSpeech manifest (missing columns {missing})")
    return df
