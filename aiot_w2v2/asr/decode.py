"""CTC decoding: greedy (best path) and beam search, optionally with a lexicon and a KenLM model.

Greedy decoding calls the numpy collapse shared with the edge (`aiot_edge.ctc`). Beam search goes
through torchaudio's `ctc_decoder` (flashlight-text): lexicon-free over the model's tokens, or
constrained to a lexicon's words; `lm` is a KenLM file (ARPA or binary): a word LM with a lexicon,
a token-level LM without one. Both decoders map (logits, lengths) to one string per utterance and
know nothing about models or data.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from .vocab import Vocabulary


class DecoderUnavailableError(RuntimeError):
    """Beam search needs torchaudio's ctc_decoder and flashlight-text (and KenLM support for --lm)."""


class GreedyDecoder:
    """Best path per frame, repeats merged, blanks and specials dropped, `|` -> space."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary

    def __call__(self, logits: Tensor, lengths: Tensor | None = None) -> list[str]:
        """logits (B, T, V); lengths (B,) valid frames. Returns B transcripts."""
        from aiot_edge.ctc import greedy_decode

        _check(logits, self.vocabulary)
        scores = logits.detach().float().cpu().numpy()  # (B, T, V)
        lens = [scores.shape[1]] * scores.shape[0] if lengths is None else lengths.tolist()
        blank = self.vocabulary.blank
        return [self.vocabulary.decode(greedy_decode(s, blank, n)) for s, n in zip(scores, lens, strict=True)]


class BeamSearchDecoder:
    """torchaudio `ctc_decoder`: beam search over log-probabilities, with an optional lexicon and LM.

    `lm_weight` scales the LM score, `word_score` is added per emitted word (insertion bonus),
    `sil_score` per silence (word boundary). Without `lm`, the LM weight and word score play no role
    beyond `word_score`.
    """

    def __init__(self, vocabulary: Vocabulary, beam_size: int = 50, lexicon: str | Path | None = None,
                 lm: str | Path | None = None, lm_weight: float = 2.0, word_score: float = 0.0,
                 sil_score: float = 0.0, unk_score: float = float("-inf"), beam_threshold: float = 25.0) -> None:
        if beam_size < 1:
            raise ValueError(f"beam size must be >= 1, got {beam_size}")
        for name, path in (("lexicon", lexicon), ("lm", lm)):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{name} file {path} does not exist")
        try:
            from torchaudio.models.decoder import ctc_decoder
        except (ImportError, RuntimeError, OSError) as exc:
            raise DecoderUnavailableError(
                "beam search needs torchaudio's ctc_decoder with flashlight-text: pip install flashlight-text "
                f"({exc})") from exc
        self.vocabulary = vocabulary
        tokens = list(vocabulary.tokens)
        try:
            self._decoder = ctc_decoder(
                lexicon=str(lexicon) if lexicon else None, tokens=tokens, lm=str(lm) if lm else None,
                beam_size=beam_size, beam_threshold=beam_threshold, lm_weight=lm_weight, word_score=word_score,
                unk_score=unk_score, sil_score=sil_score, blank_token=tokens[vocabulary.blank],
                sil_token=vocabulary.word_boundary, unk_word="<unk>")
        except (RuntimeError, ValueError) as exc:
            raise DecoderUnavailableError(f"cannot build the beam-search decoder: {exc}") from exc
        self.lexicon = lexicon

    def __call__(self, logits: Tensor, lengths: Tensor | None = None) -> list[str]:
        _check(logits, self.vocabulary)
        emissions = torch.log_softmax(logits.detach().float().cpu(), dim=-1).contiguous()  # (B, T, V)
        lens = None if lengths is None else lengths.detach().cpu().to(torch.int32)
        out = []
        for hyps in self._decoder(emissions, lens):
            if not hyps:
                out.append("")
            elif self.lexicon:
                out.append(" ".join(w for w in hyps[0].words if w))
            else:
                out.append(self.vocabulary.decode(hyps[0].tokens.tolist()))
        return out


def make_decoder(vocabulary: Vocabulary, beam: int = 0, **beam_options: object) -> GreedyDecoder | BeamSearchDecoder:
    """Greedy for beam <= 1 (and no LM or lexicon), else beam search with `beam_options`."""
    wants_beam = beam > 1 or any(beam_options.get(k) for k in ("lm", "lexicon"))
    if not wants_beam:
        return GreedyDecoder(vocabulary)
    return BeamSearchDecoder(vocabulary, beam_size=max(beam, 1), **beam_options)  # type: ignore[arg-type]


def write_lexicon(words: Iterable[str], path: str | Path, vocabulary: Vocabulary) -> Path:
    """A flashlight lexicon: one `WORD W O R D |` line per distinct word (spelled with our tokens)."""
    lines = []
    for word in sorted(set(words)):
        ids = vocabulary.encode(word)  # validates the characters
        lines.append(f"{word}\t{' '.join(vocabulary.tokens[i] for i in ids)}")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def _check(logits: Tensor, vocabulary: Vocabulary) -> None:
    if logits.dim() != 3:
        raise ValueError(f"logits must be (batch, frames, vocab), got {tuple(logits.shape)}")
    if logits.shape[-1] != len(vocabulary):
        raise ValueError(f"logits have {logits.shape[-1]} outputs, the vocabulary {len(vocabulary)} tokens")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits contain NaN or Inf")


