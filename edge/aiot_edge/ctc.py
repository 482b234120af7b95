"""Greedy CTC decoding in numpy: best path, collapse repeats, drop blanks, tokens to words.

Shared by the training side (`aiot_w2v2.asr.decode`) and anything that runs an exported CTC model
without torch. Knows nothing about models or vocab files: it gets scores or ids and a token list.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def collapse(ids: np.ndarray, blank: int) -> np.ndarray:
    """CTC collapse of a best path [frames]: merge runs of the same id, then remove `blank`.

    `A A - A B B` -> `A A B` (the blank between the two A runs keeps them apart).
    """
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"expected a 1-D path of ids, got shape {ids.shape}")
    if ids.size == 0:
        return ids.astype(np.int64)
    keep = np.ones(ids.shape[0], dtype=bool)
    keep[1:] = ids[1:] != ids[:-1]  # first frame of each run
    out = ids[keep]
    return out[out != blank].astype(np.int64)


def greedy_decode(scores: np.ndarray, blank: int, length: int | None = None) -> np.ndarray:
    """Best-path decode of one utterance's scores [frames, vocab] (logits or log-probs).

    Only the first `length` frames count (the rest is padding). Returns the collapsed ids.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"expected scores of shape (frames, vocab), got {scores.shape}")
    if not 0 <= blank < scores.shape[1]:
        raise ValueError(f"blank index {blank} is outside the vocabulary of {scores.shape[1]} tokens")
    if length is not None:
        scores = scores[: max(0, int(length))]
    return collapse(scores.argmax(axis=-1), blank)


def ids_to_text(ids: Sequence[int] | np.ndarray, tokens: Sequence[str], word_boundary: str = "|",
                skip: Sequence[int] = ()) -> str:
    """Token ids -> words: tokens are concatenated, `word_boundary` becomes a space, ids in `skip`
    (specials such as `<pad>`, `</s>`) are dropped, and spaces are collapsed and stripped.

    fairseq's "letter" post-processing: `"H E L L O | W O R L D |"` -> `"HELLO WORLD"`.
    """
    skipped = set(int(i) for i in skip)
    pieces = []
    for i in ids:
        i = int(i)
        if i in skipped:
            continue
        if not 0 <= i < len(tokens):
            raise ValueError(f"token id {i} is outside the vocabulary of {len(tokens)} tokens")
        tok = tokens[i]
        pieces.append(" " if tok == word_boundary else tok)
    return " ".join("".join(pieces).split())
