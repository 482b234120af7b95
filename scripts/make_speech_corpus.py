"""Make the shipped speech corpus: espeak-ng sentences in the LibriSpeech layout (FLAC, 16 kHz mono).

    python scripts/make_speech_corpus.py [--out data/speech_corpus] [--train 240] [--test 64] [--dev 0] [--seed 0]
        [--grammar commands|travel|shopping|office] [--voices a|b|c|d]

Writes `OUT/LibriSpeech/{train-tiny,dev-tiny,test-tiny}/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac` with
one `<spk>-<chapter>.trans.txt` per chapter, exactly as LibriSpeech is laid out, plus `OUT/README.md`
(dev-tiny only with `--dev N`). Sentences come from a small grammar (60-80 words, apostrophes
included): `commands` (spoken commands for machines and rooms, the shipped corpus) or one of three
others with their own words (`travel`, `shopping`, `office`), so that a recipe tuned on one corpus can
be measured on corpora it was not tuned on. The dev and test splits hold sentences that never occur in
the train split (nor in each other), spoken by the same voices; `--voices` picks one of four sets of
eight espeak-ng voices (`a`, the shipped corpus's; `b`, `c`, `d` other accents, variants and pitches).
Every speaker is one espeak-ng voice + variant + pitch; the speaking rate varies
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
import string
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
PEAK = 0.05
SPLITS = {"train": "train-tiny", "test": "test-tiny", "dev": "dev-tiny"}
CHAPTER = {"train": 10, "test": 20, "dev": 30}

# (speaker id, espeak-ng voice, variant, pitch 0-99); set "a" made the shipped corpus
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
VOICE_SETS = {
    "a": SPEAKERS,
    "b": [(201, "en-gb-x-gbclan", "m2", 42), (202, "en-us-nyc", "f1", 62), (203, "en-gb-x-gbcwmd", "m5", 38),
          (204, "en-us", "f5", 58), (205, "en-gb-scotland", "f4", 66), (206, "en-029", "m6", 44),
          (207, "en-gb", "klatt2", 52), (208, "en-us-nyc", "m8", 48)],
    "c": [(301, "en-gb-x-rp", "f1", 70), (302, "en-us", "m2", 30), (303, "en-gb-x-gbcwmd", "f3", 57),
          (304, "en-gb-x-gbclan", "klatt3", 45), (305, "en-029", "m5", 40), (306, "en-us-nyc", "f4", 64),
          (307, "en-gb", "m6", 36), (308, "en-gb-scotland", "f2", 55)],
    "d": [(401, "en-us-nyc", "m1", 50), (402, "en-gb-x-rp", "f5", 61), (403, "en-gb-scotland", "m3", 33),
          (404, "en-029", "f2", 68), (405, "en-gb-x-gbclan", "m8", 46), (406, "en-us", "klatt4", 54),
          (407, "en-gb-x-gbcwmd", "f1", 59), (408, "en-gb", "m2", 41)],
}
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
    """A `commands` sentence (the draw order is fixed: the shipped corpus depends on it)."""
    num, num2 = rng.sample(NUMBERS, 2)
    return rng.choice(TEMPLATES).format(
        verb=rng.choice(VERBS), color=rng.choice(COLORS), thing=rng.choice(THINGS), place=rng.choice(PLACES),
        num=num, num2=num2, onoff=rng.choice(["ON", "OFF"]), manner=rng.choice(MANNER),
        updown=rng.choice(["UP", "DOWN"]), state=rng.choice(STATE))


def commands_vocabulary() -> list[str]:
    words = set(COLORS + THINGS + PLACES + NUMBERS + VERBS + MANNER + " ".join(STATE).split())
    for t in TEMPLATES:
        words.update(w for w in t.split() if not w.startswith("{"))
    words.update(["ON", "OFF", "UP", "DOWN"])
    return sorted(words)


# The other grammars: slot name -> words (a slot used twice in a template, `{city}` and `{city2}`,
# gets two different words), and templates.
GRAMMARS: dict[str, tuple[dict[str, list[str]], list[str]]] = {
    "travel": ({
        "city": ["LONDON", "PARIS", "BERLIN", "MADRID", "OSLO", "VIENNA", "DUBLIN", "LISBON"],
        "transport": ["TRAIN", "BUS", "FLIGHT", "FERRY", "TAXI", "TRAM"],
        "day": ["MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY"],
        "part": ["MORNING", "AFTERNOON", "EVENING", "NIGHT"],
        "minutes": ["TWELVE", "FIFTEEN", "TWENTY", "THIRTY", "FORTY", "FIFTY"],
        "weather": ["SUNNY", "CLOUDY", "RAINY", "WINDY", "FOGGY", "COLD", "WARM"],
    }, [
        "BOOK A {transport} TO {city} ON {day}",
        "THE {transport} FROM {city} LEAVES IN {minutes} MINUTES",
        "WILL IT BE {weather} IN {city} ON {day}",
        "I NEED A {transport} TICKET FOR {day} {part}",
        "CANCEL MY {transport} TO {city}",
        "HOW LONG IS THE {transport} FROM {city} TO {city2}",
        "IT WAS {weather} ALL {part} IN {city}",
        "PLEASE CALL ME ON {day} {part}",
        "OUR {transport} ARRIVES IN {minutes} MINUTES",
        "WHY IS THE {transport} TO {city} LATE AGAIN",
    ]),
    "shopping": ({
        "person": ["ANNA", "PETER", "MARIA", "JAMES", "SARAH", "DAVID"],
        "food": ["APPLES", "BREAD", "BUTTER", "CHEESE", "COFFEE", "EGGS", "FISH", "MILK", "ONIONS", "PASTA",
                 "RICE", "SUGAR", "TEA", "TOMATOES"],
        "amount": ["A FEW", "SOME", "TWO KILOS OF", "HALF A KILO OF", "A BAG OF", "A BOX OF"],
        "shop": ["MARKET", "BAKERY", "SHOP", "STORE"],
        "hour": ["FIVE", "SIX", "SEVEN", "EIGHT", "NINE", "ELEVEN"],
    }, [
        "{person} BOUGHT {amount} {food} AT THE {shop}",
        "WE HAVE NO {food} LEFT",
        "ADD {food} AND {food2} TO THE LIST",
        "{person} DOESN'T LIKE {food}",
        "HOW MUCH ARE THE {food} TODAY",
        "PUT THE {food} IN THE FRIDGE",
        "ASK {person} TO BRING {amount} {food}",
        "THE {shop} CLOSES AT {hour}",
        "I'LL COOK {food} WITH {food2} TONIGHT",
        "IS THERE ANY {food} IN THE CUPBOARD",
    ]),
    "office": ({
        "person": ["TOM", "LUCY", "MARK", "EMMA", "OLIVER", "GRACE"],
        "doc": ["REPORT", "INVOICE", "CONTRACT", "BUDGET", "AGENDA", "SLIDES", "LETTER"],
        "month": ["JANUARY", "MARCH", "APRIL", "JUNE", "AUGUST", "OCTOBER", "DECEMBER"],
        "meeting": ["MEETING", "CALL", "REVIEW", "INTERVIEW", "WORKSHOP"],
        "time": ["NOON", "MIDNIGHT", "LUNCH", "BREAKFAST"],
        "adj": ["URGENT", "FINISHED", "MISSING", "WRONG", "SIGNED", "PRINTED"],
    }, [
        "SEND THE {doc} TO {person} BEFORE {time}",
        "THE {meeting} WITH {person} MOVED TO {month}",
        "{person} SAYS THE {doc} IS {adj}",
        "WHO HAS THE {adj} {doc}",
        "SCHEDULE A {meeting} AFTER {time}",
        "{person} AND {person2} WILL JOIN THE {meeting}",
        "THE {month} {doc} ISN'T {adj} YET",
        "PLEASE PRINT THE {doc} FOR THE {meeting}",
        "WE SHOULD FINISH THE {doc} BY {month}",
        "DID {person} SIGN THE {doc}",
    ]),
}


def grammar_sentence(name: str, rng: random.Random) -> str:
    slots, templates = GRAMMARS[name]
    template = rng.choice(templates)
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    values: dict[str, str] = {}
    for base in dict.fromkeys(f.rstrip("0123456789") for f in fields):
        same = [f for f in fields if f.rstrip("0123456789") == base]
        values.update(zip(same, rng.sample(slots[base], len(same)), strict=True))
    return template.format(**values)


def vocabulary(grammar: str = "commands") -> list[str]:
    """Every word the grammar can say."""
    if grammar == "commands":
        return commands_vocabulary()
    slots, templates = GRAMMARS[grammar]
    words = {w for choices in slots.values() for c in choices for w in c.split()}
    for t in templates:
        words.update(w for w in t.split() if "{" not in w)
    return sorted(words)


def sentences(n_train: int, n_test: int, seed: int, grammar: str = "commands",
              n_dev: int = 0) -> tuple[list[str], list[str], list[str]]:
    """Distinct sentences (train, test, dev); test and dev ones never occur in train. Train covers every word."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    draw = sentence if grammar == "commands" else lambda r: grammar_sentence(grammar, r)
    tries = 0
    while len(out) < n_train + n_test + n_dev:
        s = draw(rng)
        tries += 1
        if tries > 200 * (n_train + n_test + n_dev):
            raise SystemExit(f"the {grammar} grammar cannot make {n_train + n_test + n_dev} distinct sentences")
        if s not in seen:
            seen.add(s)
            out.append(s)
    train, test, dev = out[:n_train], out[n_train:n_train + n_test], out[n_train + n_test:]
    missing = set(vocabulary(grammar)) - {w for s in train for w in s.split()}
    if missing:
        raise SystemExit(f"the train split misses words {sorted(missing)}; use more --train sentences or another seed")
    return train, test, dev


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


def write_split(root: Path, split: str, texts: list[str], rng: random.Random, tmp: Path,
                speakers: list[tuple[int, str, str, int]] = SPEAKERS) -> float:
    seconds = 0.0
    chapter = CHAPTER[split]
    by_speaker: dict[int, list[tuple[str, tuple[int, str, str, int]]]] = {}
    for i, text in enumerate(texts):
        spk = speakers[i % len(speakers)]
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
    p.add_argument("--dev", type=int, default=0, help="dev sentences (never in train or test); 0: no dev-tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grammar", default="commands", choices=["commands", *GRAMMARS])
    p.add_argument("--voices", default="a", choices=sorted(VOICE_SETS))
    args = p.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("error: espeak-ng not found (Debian: apt-get install espeak-ng)", file=sys.stderr)
        return 2
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.split("  Data")[0]
    out = Path(args.out)
    root = out / "LibriSpeech"
    for split in SPLITS.values():
        shutil.rmtree(root / split, ignore_errors=True)
    train, test, dev = sentences(args.train, args.test, args.seed, args.grammar, args.dev)
    voices = VOICE_SETS[args.voices]
    rng = random.Random(args.seed + 1)
    splits = [("train", train), ("test", test)] + ([("dev", dev)] if dev else [])
    with tempfile.TemporaryDirectory() as tmp:
        secs = {s: write_split(root, s, texts, rng, Path(tmp), voices) for s, texts in splits}
    speakers = "\n".join(f"| {s} | {v} | {var} | {pitch} |" for s, v, var, pitch in voices)
    extra = "".join([f" --dev {args.dev}" if dev else "",
                     f" --grammar {args.grammar}" if args.grammar != "commands" else "",
                     f" --voices {args.voices}" if args.voices != "a" else ""])
    dev_row = (f"| dev-tiny | {len(dev)} (none occurs in train-tiny or test-tiny) | {secs['dev']:.0f} s |\n"
               if dev else "")
    words = vocabulary(args.grammar)
    (out / "README.md").write_text(f"""# Speech corpus (synthetic, espeak-ng)

Made by `python scripts/make_speech_corpus.py --out {args.out} --train {args.train} --test {args.test} \
--seed {args.seed}{extra}` with {version}.
LibriSpeech layout: `LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac` +
`<speaker>-<chapter>.trans.txt`; FLAC, 16 kHz mono, 16 bit.

| subset | sentences | audio |
|---|---|---|
| train-tiny | {len(train)} | {secs['train']:.0f} s |
| test-tiny | {len(test)} (none occurs in train-tiny) | {secs['test']:.0f} s |
{dev_row}
Vocabulary: {len(words)} words ({', '.join(words)}).
Speaking rate: {RATES[0]}-{RATES[1]} words per minute, drawn per utterance.

| speaker | espeak-ng voice | variant | pitch |
|---|---|---|---|
{speakers}
""")
    print(f"wrote {len(train)} train ({secs['train']:.0f} s), {len(test)} test ({secs['test']:.0f} s) and "
          f"{len(dev)} dev utterances to {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
