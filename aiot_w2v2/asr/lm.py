"""A small word bigram language model in ARPA format, for corpora where KenLM's `lmplz` is not at hand.

Interpolated absolute discounting (D = 0.5) over sentences wrapped in `<s> ... </s>`, written in the
backoff form ARPA needs: listed bigrams carry the interpolated probability, each history the backoff
weight that keeps its distribution normalised. KenLM (through torchaudio's `ctc_decoder`) reads the
file. Good for small closed vocabularies such as the shipped corpus; for LibriSpeech use the official
4-gram (openslr.org/11) with KenLM.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

UNK_PROB = 1e-6  # probability mass given to <unk>


def write_bigram_arpa(sentences: Iterable[str], path: str | Path, discount: float = 0.5) -> Path:
    """Estimate a bigram LM on `sentences` (whitespace-separated words) and write it to `path`."""
    if not 0 < discount < 1:
        raise ValueError(f"discount must be in (0, 1), got {discount}")
    uni: Counter[str] = Counter()
    bi: Counter[tuple[str, str]] = Counter()
    for sentence in sentences:
        words = ["<s>", *sentence.split(), "</s>"]
        uni.update(words[1:])  # <s> is never predicted
        bi.update(zip(words[:-1], words[1:], strict=False))
    if not bi:
        raise ValueError("no sentences to estimate a language model from")
    total = sum(uni.values())
    p1 = {w: (1 - UNK_PROB) * c / total for w, c in uni.items()}
    p1["<unk>"] = UNK_PROB
    history: Counter[str] = Counter()
    followers: Counter[str] = Counter()
    for (h, _), c in bi.items():
        history[h] += c
        followers[h] += 1
    p2 = {}
    for (h, w), c in bi.items():
        lam = discount * followers[h] / history[h]
        p2[(h, w)] = (c - discount) / history[h] + lam * p1[w]
    backoff = {}
    for h in history:
        seen = [w for (hh, w) in p2 if hh == h]
        left = 1.0 - sum(p2[(h, w)] for w in seen)
        base = 1.0 - sum(p1[w] for w in seen)
        backoff[h] = left / base if base > 0 and left > 0 else 1.0
    lines = ["\\data\\", f"ngram 1={len(p1) + 1}", f"ngram 2={len(p2)}", "", "\\1-grams:",
             f"-99\t<s>\t{math.log10(backoff.get('<s>', 1.0)):.6f}"]
    for w in sorted(p1):
        lines.append(f"{math.log10(p1[w]):.6f}\t{w}\t{math.log10(backoff.get(w, 1.0)):.6f}")
    lines += ["", "\\2-grams:"]
    lines += [f"{math.log10(p):.6f}\t{h} {w}" for (h, w), p in sorted(p2.items())]
    lines += ["", "\\end\\", ""]
    path = Path(path)
    path.write_text("\n".join(lines))
    return path
