"""Word and character error rates with jiwer, per utterance and over a corpus.

The corpus WER is total word errors (substitutions + deletions + insertions) over total reference
words, as fairseq and the paper report it (not a mean of per-utterance rates); CER the same over
characters, spaces included (jiwer's definition). Texts are compared as given: normalise them first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import jiwer


@dataclass(frozen=True)
class UtteranceErrors:
    words: int  # reference words
    substitutions: int
    deletions: int
    insertions: int
    chars: int  # reference characters (spaces included)
    char_errors: int

    @property
    def word_errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "word_errors": self.word_errors}


@dataclass(frozen=True)
class Scores:
    wer: float
    cer: float
    utterances: int
    words: int
    word_errors: int
    substitutions: int
    deletions: int
    insertions: int
    chars: int
    char_errors: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def utterance_errors(reference: str, hypothesis: str) -> UtteranceErrors:
    """Edit operations between one reference and one hypothesis (an empty reference is allowed)."""
    ref, hyp = " ".join(reference.split()), " ".join(hypothesis.split())
    if not ref:  # jiwer refuses empty references; everything hypothesised is an insertion
        return UtteranceErrors(0, 0, 0, len(hyp.split()), 0, len(hyp))
    if not hyp:
        return UtteranceErrors(len(ref.split()), 0, len(ref.split()), 0, len(ref), len(ref))
    w = jiwer.process_words(ref, hyp)
    c = jiwer.process_characters(ref, hyp)
    return UtteranceErrors(
        words=w.hits + w.substitutions + w.deletions, substitutions=w.substitutions, deletions=w.deletions,
        insertions=w.insertions, chars=c.hits + c.substitutions + c.deletions,
        char_errors=c.substitutions + c.deletions + c.insertions)


def score(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[Scores, list[UtteranceErrors]]:
    """Corpus WER/CER and each utterance's errors."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    per = [utterance_errors(r, h) for r, h in zip(references, hypotheses, strict=True)]
    words = sum(u.words for u in per)
    chars = sum(u.chars for u in per)
    word_errors = sum(u.word_errors for u in per)
    char_errors = sum(u.char_errors for u in per)
    scores = Scores(
        wer=word_errors / words if words else float(word_errors > 0),
        cer=char_errors / chars if chars else float(char_errors > 0),
        utterances=len(per), words=words, word_errors=word_errors,
        substitutions=sum(u.substitutions for u in per), deletions=sum(u.deletions for u in per),
        insertions=sum(u.insertions for u in per), chars=chars, char_errors=char_errors)
    return scores, per
