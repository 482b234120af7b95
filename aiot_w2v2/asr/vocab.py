"""Character vocabularies for CTC: fairseq's letter dictionary, and the index maps to HF and torchaudio.

Three layouts of the same 32 LibriSpeech outputs exist, and the published checkpoints use them:

- fairseq `Dictionary` + `dict.ltr.txt`: `<s>`=0 (used as the CTC blank), `<pad>`=1, `</s>`=2,
  `<unk>`=3, then `|` (word boundary), E, T, A, O, N, ... in `dict.ltr.txt` order.
- Hugging Face `vocab.json` (e.g. facebook/wav2vec2-base-960h): `<pad>`=0 is the blank
  (`pad_token_id`), `<s>`=1, `</s>`=2, `<unk>`=3, then the same letters. The weights are fairseq's,
  row for row; only the names of rows 0 and 1 are swapped.
- torchaudio's ASR bundles: `-`=0 (blank), then `|`, E, T, ... : fairseq's rows 1-3 removed.

`Vocabulary` is a token list plus which index is the blank; `index_map` / `remap_logits` move
outputs between layouts by role (blank to blank) and by name (everything else), so a model trained
with one layout can be scored or initialised with another. Our models use the fairseq layout.
Text handling (`normalize_text`, `encode`) is here too: transcripts become `W O R D |` targets.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

# fairseq's dict.ltr.txt for LibriSpeech, most frequent first (the order of the published checkpoints)
LIBRISPEECH_LETTERS = tuple("|ETAONIHSRDLUMWCFGYPBVK'XJQZ")
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
HF_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
WORD_BOUNDARY = "|"
BLANK_NAMES = ("<ctc_blank>", "<blank>")  # explicit blank tokens, wherever they sit
# Characters that are mapped before a transcript is checked against the vocabulary.
CHAR_MAP = {"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'", "-": " ", "\u2014": " ", "\u2013": " "}


class VocabularyError(ValueError):
    """A vocabulary is malformed, cannot represent a transcript, or does not match a model's outputs."""


@dataclass(frozen=True)
class Vocabulary:
    """CTC output tokens: `tokens[i]` is output i; `blank` is the CTC blank's index.

    `specials` are outputs that never stand for text (`<pad>`, `</s>`, `<unk>`, ...); decoding drops them.
    """

    tokens: tuple[str, ...]
    blank: int = 0
    word_boundary: str = WORD_BOUNDARY

    def __post_init__(self) -> None:
        if len(set(self.tokens)) != len(self.tokens):
            dup = sorted({t for t in self.tokens if self.tokens.count(t) > 1})
            raise VocabularyError(f"vocabulary has duplicate tokens {dup}")
        if not 0 <= self.blank < len(self.tokens):
            raise VocabularyError(f"blank index {self.blank} is outside the {len(self.tokens)} tokens")
        if self.word_boundary not in self.tokens:
            raise VocabularyError(f"vocabulary has no word boundary token {self.word_boundary!r}")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def specials(self) -> tuple[int, ...]:
        """Indices of tokens that are not text: the blank and `<...>` names."""
        return tuple(i for i, t in enumerate(self.tokens) if i == self.blank or (t.startswith("<") and t.endswith(">")))

    @property
    def characters(self) -> frozenset[str]:
        """Characters a transcript may contain (letters etc.; the word boundary stands for a space)."""
        return frozenset(t for i, t in enumerate(self.tokens) if i not in self.specials and t != self.word_boundary)

    def index(self, token: str) -> int:
        try:
            return self.tokens.index(token)
        except ValueError:
            raise VocabularyError(f"token {token!r} is not in the vocabulary") from None

    def role_keys(self) -> list[str]:
        """Names for matching across layouts: the blank is "<blank>", other tokens keep their name."""
        return ["<blank>" if i == self.blank else t for i, t in enumerate(self.tokens)]

    def to_dict(self) -> dict:
        return {"tokens": list(self.tokens), "blank": self.blank, "word_boundary": self.word_boundary}

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        try:
            return cls(tuple(data["tokens"]), int(data.get("blank", 0)), data.get("word_boundary", WORD_BOUNDARY))
        except (KeyError, TypeError) as exc:
            raise VocabularyError(f"not a vocabulary description: {exc}") from exc

    # ------------------------------------------------------------------------------------------
    # text <-> ids

    def encode(self, text: str) -> list[int]:
        """A normalised transcript -> target ids, fairseq "ltr" style: letters, `|` after every word."""
        ids = []
        for word in text.split():
            for ch in word:
                if ch not in self.characters:
                    raise VocabularyError(f"character {ch!r} of {text!r} is not in the vocabulary")
                ids.append(self.tokens.index(ch))
            ids.append(self.tokens.index(self.word_boundary))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Collapsed ids -> words (specials dropped)."""
        from aiot_edge.ctc import ids_to_text

        return ids_to_text(list(ids), self.tokens, self.word_boundary, skip=self.specials)


def letter_vocabulary(letters: Sequence[str] = LIBRISPEECH_LETTERS) -> Vocabulary:
    """fairseq's letter dictionary: `<s>`(blank) `<pad>` `</s>` `<unk>` + `letters` (dict.ltr.txt order)."""
    return Vocabulary(FAIRSEQ_SPECIALS + tuple(letters), blank=0)


def from_fairseq_dict(path: str | Path) -> Vocabulary:
    """A fairseq `dict.ltr.txt` ("TOKEN COUNT" per line) -> the Dictionary it builds (4 specials first).

    The blank is `<ctc_blank>` if the dictionary has one, else `<s>` (index 0), as fairseq's CTC does.
    """
    tokens = list(FAIRSEQ_SPECIALS)
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            parts = line.split()
            if len(parts) < 2 and not line.rstrip().endswith("#fairseq:overwrite"):
                raise VocabularyError(f"{path}:{n}: expected 'TOKEN COUNT', got {line!r}")
            tokens.append(parts[0])
    blank = tokens.index("<ctc_blank>") if "<ctc_blank>" in tokens else 0
    return Vocabulary(tuple(tokens), blank=blank)


def from_hf_vocab(vocab: dict[str, int] | str | Path, pad_token_id: int | None = None) -> Vocabulary:
    """An HF `vocab.json` ({token: id}) -> Vocabulary; the blank is `pad_token_id` (HF's CTC blank)."""
    if not isinstance(vocab, dict):
        vocab = json.loads(Path(vocab).read_text())
    if not (isinstance(vocab, dict) and all(isinstance(i, int) for i in vocab.values())):
        raise VocabularyError("vocab.json is not a flat {token: id} mapping")
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
        raise VocabularyError("vocab.json ids are not 0..n-1")
    tokens = tuple(t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]))
    blank = pad_token_id if pad_token_id is not None else vocab.get("<pad>", 0)
    return Vocabulary(tokens, blank=int(blank))


def from_torchaudio_labels(labels: Sequence[str], blank: str = "-") -> Vocabulary:
    """A torchaudio bundle's `get_labels()` tuple (blank `-` first) -> Vocabulary."""
    return Vocabulary(tuple(labels), blank=list(labels).index(blank))


def infer_vocabulary(tokens: Sequence[str]) -> Vocabulary:
    """A token list whose blank follows one of the known conventions (explicit `<ctc_blank>`/`<blank>`,
    or index 0 named `<s>` (fairseq), `<pad>` (HF) or `-` (torchaudio))."""
    tokens = tuple(tokens)
    for name in BLANK_NAMES:
        if name in tokens:
            return Vocabulary(tokens, blank=tokens.index(name))
    if tokens and tokens[0] in ("<s>", "<pad>", "-"):
        return Vocabulary(tokens, blank=0)
    raise VocabularyError(f"cannot tell which token is the CTC blank in {list(tokens[:6])}...")


def index_map(src: Vocabulary, dst: Vocabulary) -> list[int | None]:
    """For each output of `dst`, the output of `src` with the same role (blank) or name; None if none."""
    where = {k: i for i, k in enumerate(src.role_keys())}
    return [where.get(k) for k in dst.role_keys()]


def missing_in(src: Vocabulary, dst: Vocabulary) -> list[str]:
    """Text tokens of `dst` that `src` lacks (what a model with `src` outputs could never emit)."""
    have = set(src.role_keys())
    return [k for i, k in enumerate(dst.role_keys()) if k not in have and i not in dst.specials]


def remap_logits(logits: Tensor | np.ndarray, src: Vocabulary, dst: Vocabulary,
                 fill: float = -1e4) -> Tensor | np.ndarray:
    """Reorder the last axis of `logits` from `src`'s layout to `dst`'s.

    Outputs `dst` has and `src` lacks (fairseq's `<pad>` when coming from torchaudio, say) get `fill`,
    a score low enough never to win. Letters `dst` has and `src` lacks are an error.
    """
    lost = missing_in(src, dst)
    if lost:
        raise VocabularyError(f"the source vocabulary lacks {lost}")
    mapping = index_map(src, dst)
    if logits.shape[-1] != len(src):
        raise VocabularyError(f"logits have {logits.shape[-1]} outputs, the source vocabulary {len(src)}")
    if isinstance(logits, np.ndarray):
        out = np.full(logits.shape[:-1] + (len(dst),), fill, dtype=logits.dtype)
        for j, i in enumerate(mapping):
            if i is not None:
                out[..., j] = logits[..., i]
        return out
    out_t = logits.new_full(logits.shape[:-1] + (len(dst),), fill)
    for j, i in enumerate(mapping):
        if i is not None:
            out_t[..., j] = logits[..., i]
    return out_t


def remap_head(weight: Tensor, bias: Tensor, src: Vocabulary, dst: Vocabulary) -> tuple[Tensor, Tensor]:
    """A CTC projection (V_src, D) + (V_src,) re-laid out for `dst`: rows follow `index_map`; rows
    `dst` has and `src` lacks get zero weights and a very low bias (they never fire)."""
    lost = missing_in(src, dst)
    if lost:
        raise VocabularyError(f"the checkpoint's vocabulary lacks {lost}")
    w = weight.new_zeros(len(dst), weight.shape[1])
    b = bias.new_full((len(dst),), -1e4)
    for j, i in enumerate(index_map(src, dst)):
        if i is not None:
            w[j], b[j] = weight[i], bias[i]
    return w, b


def normalize_text(text: str, vocab: Vocabulary) -> tuple[str, set[str]]:
    """Upper-case (if the vocabulary is upper-case), map curly quotes and dashes, strip accents
    (`é` -> `E`), collapse spaces. Returns (text, characters still not in the vocabulary)."""
    letters = vocab.characters
    upper = any(c.isupper() for c in letters) and not any(c.islower() for c in letters)
    out = []
    for ch in text.upper() if upper else text:
        ch = CHAR_MAP.get(ch, ch)
        if ch not in letters and not ch.isspace():
            base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
            ch = base if base and all(c in letters for c in base) else ch
        out.append(" " if ch.isspace() else ch)
    clean = " ".join("".join(out).split())
    unknown = {c for c in clean if c != " " and c not in letters}
    return clean, unknown


def as_tensor_targets(texts: Sequence[str], vocab: Vocabulary) -> tuple[Tensor, Tensor]:
    """Concatenated target ids (sum L,) and their lengths (B,) for `F.ctc_loss`."""
    ids = [vocab.encode(t) for t in texts]
    flat = torch.tensor([i for seq in ids for i in seq], dtype=torch.long)
    return flat, torch.tensor([len(seq) for seq in ids], dtype=torch.long)
