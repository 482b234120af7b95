"""Make the shipped speech corpus: espeak-ng sentences in the LibriSpeech layout (FLAC, 16 kHz mono).

    python scripts/make_speech_corpus.py [--out data/speech_corpus] [--train 240] [--test 64] [--seed 0]

Writes `OUT/LibriSpeech/{train-tiny,test-tiny}/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac` with one
`<spk>-<chapter>.trans.txt` per chapter, exactly as LibriSpeech is laid out, plus `OUT/README.md`.
Sentences are spoken commands for machines and rooms drawn from a small grammar (about 80 words,
apostrophes included); the test split holds sentences that never occur in the train split, spoken
by the same voices. Every speaker is one espeak-ng voice + variant + pitch; the speaking rate varies
per utterance. Audio is trimmed of leading/trailing silence, resampled to 16 kHz and scaled to a
peak of 0.05 (quiet 16-bit samples compress better in FLAC, so the corpus stays a few MB; the
models normalise the scale away).

Needs the `espeak-ng` binary (Debian: `apt-get install espeak-ng`); the output depends on its
version (the shipped corpus: see OUT/README.md), so tests use the shipped files, not this script.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
PEAK = 0.05
SPLITS = {"train": "train-tiny", "test": "test-tiny"}
CHAPTER = {"train": 10, "test": 20}

# (speaker id, espeak-ng voice, variant, pitch 0-99)
SPEAKERS = [
    (101, "en-us", "m3", 45),
    (102, "en-us", "f2", 60),
    (103, "en-gb", "m1", 40),
    (104, "en-gb", "f4", 65),
    (105, "en-gb-scotland", "m7", 50),
    (106, "en-029", "f3", 55),
    (107, "en-gb-x-rp", "m4", 35),
    (108, "en-us", "klatt", 50),
]
RATES = (150, 210)  # words per minute, drawn per utterance

COLORS = ["RED", "GREEN", "BLUE", "YELLOW", "BLACK", "WHITE"]
THINGS = ["FAN", "PUMP", "VALVE", "MOTOR", "LIGHT", "DOOR", "WINDOW", "SENSOR", "HEATER", "ALARM"]
PLACES = ["KITCHEN", "GARDEN", "OFFICE", "HALL", "GARAGE", "LAB"]
NUMBERS = ["ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE", "TEN"]
VERBS = ["START", "STOP", "CHECK", "OPEN", "CLOSE", "RESET", "TEST", "CLEAN"]
MANNER = ["SLOWLY", "QUICKLY", "NOW", "TODAY", "TONIGHT"]
TEMPLATES = [
    "{verb} THE {color} {thing} IN THE {place}",
    "TURN {onoff} THE {thing} IN ROOM {num}",
    "SET {thing} {num} TO LEVEL {num2}",
    "PLEASE {verb} THE {thing} ON FLOOR {num}",
    "DON'T {verb} THE {color} {thing}",
    "IT'S TIME TO {verb} THE {thing} {manner}",
    "MOVE THE {color} {thing} {updown} {manner}",
    "THE {thing} IN THE {place} IS {state}",
    "WE CAN'T {verb} {thing} {num} {manner}",
    "IS THE {color} {thing} {state}",
]
STATE = ["ON", "OFF", "BROKEN", "READY", "TOO LOUD", "VERY HOT"]


def sentence(rng: random.Random) -> str:
    num, num2 = rng.sample(NUMBERS, 2)
    return rng.choice(TEMPLATES).format(
        verb=rng.choice(VERBS), color=rng.choice(COLORS), thing=rng.choice(THINGS), place=rng.choice(PLACES),
        num=num, num2=num2, onoff=rng.choice(["ON", "OFF"]), manner=rng.choice(MANNER),
        updown=rng.choice(["UP", "DOWN"]), state=rng.choice(STATE))


def vocabulary() -> list[str]:
    words = set(COLORS + THINGS + PLACES + NUMBERS + VERBS + MANNER + " ".join(STATE).split())
    for t in TEMPLATES:
        words.update(w for w in t.split() if not w.startswith("{"))
    words.update(["ON", "OFF", "UP", "DOWN"])
    return sorted(words)


def sentences(n_train: int, n_test: int, seed: int) -> tuple[list[str], list[str]]:
    """Distinct sentences; the test ones never occur in train. Train covers every word."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n_train + n_test:
        s = sentence(rng)
        if s not in seen:
            seen.add(s)
            out.append(s)
    train, test = out[:n_train], out[n_train:]
    missing = set(vocabulary()) - {w for s in train for w in s.split()}
    if missing:
        raise SystemExit(f"the train split misses words {sorted(missing)}; use more --train sentences or another seed")
    return train, test


def synthesize(text: str, voice: str, variant: str, pitch: int, rate: int, tmp: Path) -> np.ndarray:
    """espeak-ng -> float32 mono at 16 kHz, silence trimmed, peak PEAK."""
    wav = tmp / "utt.wav"
    subprocess.run(["espeak-ng", "-v", f"{voice}+{variant}", "-s", str(rate), "-p", str(pitch), "-w", str(wav),
                    text], check=True, capture_output=True)
    x, rate_in = sf.read(wav, dtype="float32")
    x = trim(x, rate_in)
    from aiot_w2v2.audio import resample

    x = resample(x, rate_in, SAMPLE_RATE)
    return (x * (PEAK / max(float(np.abs(x).max()), 1e-6))).astype(np.float32)


def trim(x: np.ndarray, rate: int, margin_s: float = 0.08) -> np.ndarray:
    """Cut leading/trailing silence (below 2% of the peak), keeping a short margin."""
    loud = np.flatnonzero(np.abs(x) > 0.02 * float(np.abs(x).max()))
    if loud.size == 0:
        return x
    m = int(margin_s * rate)
    return x[max(0, loud[0] - m): loud[-1] + m]


def write_split(root: Path, split: str, texts: list[str], rng: random.Random, tmp: Path) -> float:
    seconds = 0.0
    chapter = CHAPTER[split]
    by_speaker: dict[int, list[tuple[str, str]]] = {}
    for i, text in enumerate(texts):
        spk = SPEAKERS[i % len(SPEAKERS)]
        by_speaker.setdefault(spk[0], []).append((text, spk))
    for spk_id, items in sorted(by_speaker.items()):
        folder = root / SPLITS[split] / str(spk_id) / str(chapter)
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for u, (text, (_, voice, variant, pitch)) in enumerate(items):
            utt = f"{spk_id}-{chapter}-{u:04d}"
            x = synthesize(text, voice, variant, pitch, rng.randint(*RATES), tmp)
            sf.write(folder / f"{utt}.flac", x, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            lines.append(f"{utt} {text}")
            seconds += len(x) / SAMPLE_RATE
        (folder / f"{spk_id}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="data/speech_corpus")
    p.add_argument("--train", type=int, default=240, help="train sentences")
    p.add_argument("--test", type=int, default=64, help="test sentences (never in train)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("error: espeak-ng not found (Debian: apt-get install espeak-ng)", file=sys.stderr)
        return 2
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.split("  Data")[0]
    out = Path(args.out)
    root = out / "LibriSpeech"
    for split in SPLITS.values():
        shutil.rmtree(root / split, ignore_errors=True)
    train, test = sentences(args.train, args.test, args.seed)
    rng = random.Random(args.seed + 1)
    with tempfile.TemporaryDirectory() as tmp:
        secs = {s: write_split(root, s, texts, rng, Path(tmp)) for s, texts in (("train", train), ("test", test))}
    speakers = "\n".join(f"| {s} | {v} | {var} | {pitch} |" for s, v, var, pitch in SPEAKERS)
    (out / "README.md").write_text(f"""# Speech corpus (synthetic, espeak-ng)

Made by `python scripts/make_speech_corpus.py --out {args.out} --train {args.train} --test {args.test} \
--seed {args.seed}` with {version}.
LibriSpeech layout: `LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac` +
`<speaker>-<chapter>.trans.txt`; FLAC, 16 kHz mono, 16 bit.

| subset | sentences | audio |
|---|---|---|
| train-tiny | {len(train)} | {secs['train']:.0f} s |
| test-tiny | {len(test)} (none occurs in train-tiny) | {secs['test']:.0f} s |

Vocabulary: {len(vocabulary())} words ({', '.join(vocabulary())}).
Speaking rate: {RATES[0]}-{RATES[1]} words per minute, drawn per utterance.

| speaker | espeak-ng voice | variant | pitch |
|---|---|---|---|
{speakers}
""")
    print(f"wrote {len(train)} train ({secs['train']:.0f} s) and {len(test)} test ({secs['test']:.0f} s) "
          f"utterances to {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
