"""aiot_w2v2.asr.vocab and aiot_edge.ctc: the letter dictionary, index maps between fairseq / HF /
torchaudio layouts, text normalisation, and the numpy CTC greedy collapse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from aiot_edge.ctc import collapse, greedy_decode, ids_to_text

from aiot_w2v2.asr.decode import GreedyDecoder
from aiot_w2v2.asr.vocab import (
    LIBRISPEECH_LETTERS,
    Vocabulary,
    VocabularyError,
    from_fairseq_dict,
    from_hf_vocab,
    from_torchaudio_labels,
    index_map,
    infer_vocabulary,
    letter_vocabulary,
    normalize_text,
    remap_head,
    remap_logits,
)

# facebook/wav2vec2-base-960h vocab.json, as published (pad_token_id 0)
HF_BASE_960H = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "E": 5, "T": 6, "A": 7, "O": 8, "N": 9, "I": 10,
                "H": 11, "S": 12, "R": 13, "D": 14, "L": 15, "U": 16, "M": 17, "W": 18, "C": 19, "F": 20, "G": 21,
                "Y": 22, "P": 23, "B": 24, "V": 25, "K": 26, "'": 27, "X": 28, "J": 29, "Q": 30, "Z": 31}
# torchaudio.pipelines.WAV2VEC2_ASR_BASE_960H.get_labels()
TORCHAUDIO_LABELS = ("-", "|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D", "L", "U", "M", "W", "C", "F", "G",
                     "Y", "P", "B", "V", "K", "'", "X", "J", "Q", "Z")


def test_letter_dictionary_is_fairseqs_layout(tmp_path):
    v = letter_vocabulary()
    assert v.tokens[:5] == ("<s>", "<pad>", "</s>", "<unk>", "|") and len(v) == 32 and v.blank == 0
    assert v.tokens[5:9] == ("E", "T", "A", "O") and v.index("Z") == 31
    assert v.specials == (0, 1, 2, 3)
    # the dict.ltr.txt that fairseq ships with the LibriSpeech models gives the same dictionary
    (tmp_path / "dict.ltr.txt").write_text("".join(f"{c} {1000 - i}\n" for i, c in enumerate(LIBRISPEECH_LETTERS)))
    assert from_fairseq_dict(tmp_path / "dict.ltr.txt") == v
    (tmp_path / "dict2.ltr.txt").write_text("| 5\nA 4\n<ctc_blank> 1\n")
    assert from_fairseq_dict(tmp_path / "dict2.ltr.txt").blank == 6


def test_hf_layout_is_fairseqs_with_rows_0_and_1_renamed():
    hf, fs = from_hf_vocab(HF_BASE_960H, pad_token_id=0), letter_vocabulary()
    assert hf.blank == 0 and hf.tokens[:2] == ("<pad>", "<s>")
    mapping = index_map(hf, fs)
    assert mapping[0] == 0  # blank -> blank, whatever each layout calls it
    assert mapping[1] is None  # fairseq's <pad> has no HF counterpart (HF's row 1 is named <s>)
    assert mapping[2:] == list(range(2, 32))  # </s>, <unk>, | and every letter keep their row
    logits = torch.randn(2, 7, 32)
    moved = remap_logits(logits, hf, fs)
    assert torch.equal(moved[..., 2:], logits[..., 2:]) and torch.equal(moved[..., 0], logits[..., 0])
    assert bool((moved[..., 1] < -1e3).all())


def test_torchaudio_layout_drops_fairseq_rows_1_to_3():
    ta, fs = from_torchaudio_labels(TORCHAUDIO_LABELS), letter_vocabulary()
    assert index_map(fs, ta) == [0] + list(range(4, 32))
    assert index_map(ta, fs) == [0, None, None, None] + list(range(1, 29))
    try:
        import torchaudio

        assert tuple(torchaudio.pipelines.WAV2VEC2_ASR_BASE_960H.get_labels()) == TORCHAUDIO_LABELS
    except (ImportError, AttributeError):
        pass
    # a fairseq model's logits scored in torchaudio's layout, and back, decode to the same words
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 40, 32, generator=g)
    logits[..., 1:4] = -1e4  # a CTC model never emits fairseq's <pad>, </s>, <unk>
    as_ta = remap_logits(logits, fs, ta)
    back = remap_logits(as_ta, ta, fs)
    assert GreedyDecoder(ta)(as_ta) == GreedyDecoder(fs)(back) == GreedyDecoder(fs)(logits)
    np_moved = remap_logits(logits.numpy(), fs, ta)
    assert np.allclose(np_moved, as_ta.numpy())


def test_remap_head_moves_rows_and_silences_missing_outputs():
    ta, fs = from_torchaudio_labels(TORCHAUDIO_LABELS), letter_vocabulary()
    w, b = torch.randn(29, 8), torch.randn(29)
    w2, b2 = remap_head(w, b, ta, fs)
    assert w2.shape == (32, 8)
    assert torch.equal(w2[4:], w[1:]) and torch.equal(w2[0], w[0]) and bool((b2[1:4] < -1e3).all())
    small = Vocabulary(("<s>", "|", "A"), blank=0)
    with pytest.raises(VocabularyError, match="lacks"):
        remap_head(torch.randn(3, 8), torch.randn(3), small, fs)


def test_encode_decode_roundtrip_and_unknown_characters():
    v = letter_vocabulary()
    ids = v.encode("IT'S A TEST")
    assert [v.tokens[i] for i in ids] == list("IT'S") + ["|", "A", "|"] + list("TEST") + ["|"]
    assert v.decode(ids) == "IT'S A TEST"
    with pytest.raises(VocabularyError, match="'1'"):
        v.encode("ROOM 1")
    assert normalize_text("  don\u2019t  caf\u00e9-bar ", v) == ("DON'T CAFE BAR", set())
    assert normalize_text("room 7 ok?", v) == ("ROOM 7 OK?", {"7", "?"})


def test_infer_vocabulary_finds_the_blank_or_refuses():
    assert infer_vocabulary(["<pad>", "<s>", "</s>", "<unk>", "|", "A"]).blank == 0
    assert infer_vocabulary(["|", "A", "<blank>"]).blank == 2
    with pytest.raises(VocabularyError, match="blank"):
        infer_vocabulary(["|", "A", "B"])
    with pytest.raises(VocabularyError, match="duplicate"):
        Vocabulary(("<s>", "|", "A", "A"))
    with pytest.raises(VocabularyError, match="word boundary"):
        Vocabulary(("<s>", "A"))


def test_numpy_greedy_collapse():
    blank = 0
    assert collapse(np.array([1, 1, 0, 1, 2, 2, 0, 0]), blank).tolist() == [1, 1, 2]
    assert collapse(np.array([], dtype=np.int64), blank).tolist() == []
    scores = np.full((6, 3), -5.0)
    for t, k in enumerate([1, 1, 0, 2, 2, 1]):
        scores[t, k] = 0.0
    assert greedy_decode(scores, blank).tolist() == [1, 2, 1]
    assert greedy_decode(scores, blank, length=4).tolist() == [1, 2]  # padding frames ignored
    assert ids_to_text([5, 6, 4, 7, 4, 4], ["<s>", "<pad>", "</s>", "<unk>", "|", "H", "I", "A"],
                       skip=[0, 1, 2, 3]) == "HI A"
    with pytest.raises(ValueError, match="blank"):
        greedy_decode(scores, blank=3)
