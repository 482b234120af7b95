"""aiot_w2v2.asr.decode / wer: greedy and beam-search decoding (lexicon, KenLM), WER and CER."""

from __future__ import annotations

import math

import pytest
import torch

from aiot_w2v2.asr.decode import BeamSearchDecoder, DecoderUnavailableError, GreedyDecoder, make_decoder, write_lexicon
from aiot_w2v2.asr.vocab import letter_vocabulary
from aiot_w2v2.asr.wer import score, utterance_errors

VOCAB = letter_vocabulary()


def emissions(frames: list[dict[str, float]], floor: float = -8.0) -> torch.Tensor:
    """(1, T, V) log-probabilities: each frame gives its tokens' probabilities, the rest share a floor."""
    out = torch.full((1, len(frames), len(VOCAB)), floor)
    for t, probs in enumerate(frames):
        for tok, p in probs.items():
            out[0, t, VOCAB.index(tok)] = math.log(p)
    return out


def spell(text: str) -> list[dict[str, float]]:
    """Confident frames for `text` with a blank between letters (so double letters survive)."""
    frames: list[dict[str, float]] = []
    for ch in text.replace(" ", "|"):
        frames += [{ch: 0.9}, {"<s>": 0.9}]
    return frames


def unigram_arpa(path, probs: dict[str, float]) -> str:
    """A KenLM-readable ARPA file that scores single words by `probs` (KenLM wants order >= 2: the
    bigrams `<s> W` and `W </s>` carry the same probabilities)."""
    words = {"<s>": 1.0, "</s>": 0.1, "<unk>": 1e-6, **probs}
    uni = [f"{math.log10(p) if w != '<s>' else -99:.4f}\t{w}\t0" for w, p in words.items()]
    bi = [f"{math.log10(p):.4f}\t<s> {w}" for w, p in probs.items()] + [f"0\t{w} </s>" for w in probs]
    lines = ["\\data\\", f"ngram 1={len(uni)}", f"ngram 2={len(bi)}", "", "\\1-grams:", *uni, "",
             "\\2-grams:", *bi, "", "\\end\\", ""]
    path.write_text("\n".join(lines))
    return str(path)


def test_greedy_decodes_best_path_within_lengths():
    logits = emissions(spell("HELLO WORLD") + spell("X"))
    n = len(spell("HELLO WORLD"))
    assert GreedyDecoder(VOCAB)(logits, torch.tensor([n])) == ["HELLO WORLD"]
    assert GreedyDecoder(VOCAB)(logits) == ["HELLO WORLDX"]
    with pytest.raises(ValueError, match="outputs"):
        GreedyDecoder(VOCAB)(torch.zeros(1, 4, 7))
    assert isinstance(make_decoder(VOCAB), GreedyDecoder)


def test_beam_search_lexicon_free_matches_greedy_on_clear_input():
    pytest.importorskip("flashlight.lib.text")
    logits = emissions(spell("IT'S A TEST"))
    assert BeamSearchDecoder(VOCAB, beam_size=8)(logits) == GreedyDecoder(VOCAB)(logits) == ["IT'S A TEST"]


def test_lexicon_and_kenlm_resolve_an_ambiguous_vowel(tmp_path):
    pytest.importorskip("flashlight.lib.text")
    lexicon = write_lexicon(["BAD", "BED", "RED"], tmp_path / "lexicon.txt", VOCAB)
    assert "BED\tB E D |" in lexicon.read_text()
    frames = [{"|": 0.9}, {"B": 0.9}, {"<s>": 0.9}, {"A": 0.5, "E": 0.45}, {"<s>": 0.9}, {"D": 0.9}, {"|": 0.9}]
    logits = emissions(frames)
    assert GreedyDecoder(VOCAB)(logits) == ["BAD"]
    likes_bed = unigram_arpa(tmp_path / "bed.arpa", {"BED": 0.8, "BAD": 0.01, "RED": 0.09})
    try:
        dec = BeamSearchDecoder(VOCAB, beam_size=10, lexicon=lexicon, lm=likes_bed, lm_weight=1.0)
    except DecoderUnavailableError as exc:  # flashlight-text built without KenLM
        pytest.skip(str(exc))
    assert dec(logits) == ["BED"]
    likes_bad = unigram_arpa(tmp_path / "bad.arpa", {"BED": 0.01, "BAD": 0.8, "RED": 0.09})
    assert BeamSearchDecoder(VOCAB, beam_size=10, lexicon=lexicon, lm=likes_bad, lm_weight=1.0)(logits) == ["BAD"]
    assert BeamSearchDecoder(VOCAB, beam_size=10, lexicon=lexicon)(logits) == ["BAD"]  # no LM: acoustics decide
    with pytest.raises(FileNotFoundError, match="missing.arpa"):
        BeamSearchDecoder(VOCAB, lexicon=lexicon, lm=tmp_path / "missing.arpa")


def test_wer_and_cer_count_edit_operations():
    u = utterance_errors("THE RED FAN", "THE BED FAN NOW")
    assert (u.words, u.substitutions, u.deletions, u.insertions, u.word_errors) == (3, 1, 0, 1, 2)
    assert (u.chars, u.char_errors) == (11, 5)  # R->B, and " NOW" inserted
    scores, per = score(["THE RED FAN", "STOP", ""], ["THE BED FAN NOW", "", "EXTRA"])
    assert [p.word_errors for p in per] == [2, 1, 1]
    assert scores.wer == pytest.approx(4 / 4) and scores.words == 4 and scores.utterances == 3
    assert scores.cer == pytest.approx((5 + 4 + 5) / (11 + 4))
    perfect, _ = score(["A B"], ["A  B"])
    assert perfect.wer == 0.0 and perfect.cer == 0.0
    with pytest.raises(ValueError, match="2 references but 1"):
        score(["A", "B"], ["A"])


def test_bigram_arpa_is_normalised_and_steers_the_decoder(tmp_path):
    from aiot_w2v2.asr.lm import write_bigram_arpa

    path = write_bigram_arpa(["THE RED BED", "THE RED BED", "A BAD DAY", "THE BED"], tmp_path / "lm.arpa")
    uni, bi, backoff = {}, {}, {}
    section = None
    for line in path.read_text().splitlines():
        if line.endswith("-grams:"):
            section = line
        elif line and not line.startswith("\\") and section:
            parts = line.split("\t")
            if section.startswith("\\1"):
                uni[parts[1]] = 10 ** float(parts[0])
                backoff[parts[1]] = 10 ** float(parts[2])
            else:
                bi[tuple(parts[1].split())] = 10 ** float(parts[0])
    words = [w for w in uni if w != "<s>"]
    assert sum(uni[w] for w in words) == pytest.approx(1.0, abs=1e-6)
    for h in ("<s>", "THE", "RED"):  # every history's distribution sums to 1
        total = sum(bi.get((h, w), backoff[h] * uni[w]) for w in words)
        assert total == pytest.approx(1.0, abs=1e-6)
    assert bi[("RED", "BED")] > bi[("THE", "BED")] > backoff["THE"] * uni["DAY"]
    pytest.importorskip("flashlight.lib.text")
    lexicon = write_lexicon(["BAD", "BED"], tmp_path / "lexicon.txt", VOCAB)
    frames = [{"|": 0.9}, {"B": 0.9}, {"<s>": 0.9}, {"A": 0.5, "E": 0.45}, {"<s>": 0.9}, {"D": 0.9}, {"|": 0.9}]
    assert BeamSearchDecoder(VOCAB, beam_size=10, lexicon=lexicon, lm=path, lm_weight=1.0)(emissions(frames)) == ["BED"]
