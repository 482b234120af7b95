"""aiot_w2v2.asr.librispeech / dataset: the LibriSpeech layout, the shipped corpus, batches with CTC
targets, and clear errors for bad input (missing transcripts, unknown characters, empty audio)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from aiot_w2v2.asr.dataset import TranscribedDataset, make_asr_loader, prepare_transcripts
from aiot_w2v2.asr.librispeech import (
    COLUMNS,
    LibriSpeechError,
    librispeech_manifest,
    read_manifest,
    write_manifest,
)
from aiot_w2v2.asr.vocab import VocabularyError, letter_vocabulary

CORPUS = Path(__file__).resolve().parents[1] / "data" / "speech_corpus"
SR = 16000


def write_libri(root: Path, subset: str, utterances: dict[str, str], seconds: float = 0.5,
                transcripts: bool = True) -> Path:
    """A LibriSpeech subset: {"<spk>-<chapter>-<utt>": text} -> FLAC tones + trans.txt per chapter."""
    chapters: dict[Path, list[str]] = {}
    for i, (utt, text) in enumerate(utterances.items()):
        spk, chapter, _ = utt.split("-")
        folder = root / "LibriSpeech" / subset / spk / chapter
        folder.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(seconds * SR * (1 + 0.2 * i))) / SR
        sf.write(folder / f"{utt}.flac", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SR, format="FLAC")
        chapters.setdefault(folder, []).append(f"{utt} {text}")
    if transcripts:
        for folder, lines in chapters.items():
            (folder / f"{folder.parent.name}-{folder.name}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_shipped_corpus_is_librispeech_shaped():
    train = librispeech_manifest(CORPUS, "train-tiny")
    test = librispeech_manifest(CORPUS, "test-tiny")
    assert list(train.columns) == list(COLUMNS)
    assert len(train) >= 200 and len(test) >= 50
    assert set(train["sample_rate"]) == {SR} and set(test["sample_rate"]) == {SR}
    assert train["speaker"].nunique() >= 6  # several voices
    assert not set(train["transcript"]) & set(test["transcript"])  # held-out sentences
    words = {w for t in test["transcript"] for w in t.split()}
    assert words <= {w for t in train["transcript"] for w in t.split()}  # a closed vocabulary
    assert 50 <= len(words | {w for t in train["transcript"] for w in t.split()}) <= 100
    size = sum(p.stat().st_size for p in (CORPUS / "LibriSpeech").rglob("*") if p.is_file())
    assert size < 8e6  # a few MB
    prepare_transcripts(train, letter_vocabulary())  # every character is in the letter dictionary
    both = librispeech_manifest(CORPUS / "LibriSpeech", "train-tiny,test-tiny")  # ROOT may be LibriSpeech/ itself
    assert len(both) == len(train) + len(test) and set(both["subset"]) == {"train-tiny", "test-tiny"}


def test_length_filter_and_manifest_roundtrip(tmp_path):
    write_libri(tmp_path, "dev", {"1-2-0000": "A B", "1-2-0001": "C", "1-2-0002": "D E F"}, seconds=0.5)
    df = librispeech_manifest(tmp_path, ["dev"], max_seconds=0.65)
    assert df["id"].tolist() == ["1-2-0000", "1-2-0001"] and df.attrs["filtered"] == 1
    assert df["duration"].iloc[0] == pytest.approx(0.5)
    back = read_manifest(write_manifest(df, tmp_path / "dev.tsv"))
    assert back["id"].tolist() == df["id"].tolist() and back["transcript"].tolist() == ["A B", "C"]


def test_batches_carry_concatenated_targets(tmp_path):
    write_libri(tmp_path, "dev", {"1-2-0000": "hi there", "1-2-0001": "it's", "3-4-0000": "ok"})
    vocab = letter_vocabulary()
    ds = TranscribedDataset(prepare_transcripts(librispeech_manifest(tmp_path, "dev"), vocab), vocab)
    batches = list(make_asr_loader(ds, max_batch_seconds=100.0, shuffle=False))
    assert len(batches) == 1
    b = batches[0]
    assert b.audio.waveform.shape[0] == 3 and b.target_lengths.tolist() == [len(vocab.encode(t)) for t in b.texts]
    assert b.targets.shape == (int(b.target_lengths.sum()),)
    assert sorted(b.texts) == ["HI THERE", "IT'S", "OK"]
    first = b.targets[: b.target_lengths[0]].tolist()
    assert vocab.decode(first) == b.texts[0]


# ------------------------------------------------------------------------------------------------
# bad input


def test_missing_transcript_file_or_line_is_an_error(tmp_path):
    write_libri(tmp_path, "a", {"1-2-0000": "X"}, transcripts=False)
    with pytest.raises(LibriSpeechError, match="no transcript file 1-2.trans.txt"):
        librispeech_manifest(tmp_path, "a")
    write_libri(tmp_path, "b", {"1-2-0000": "X", "1-2-0001": "Y"})
    trans = tmp_path / "LibriSpeech" / "b" / "1" / "2" / "1-2.trans.txt"
    trans.write_text("1-2-0000 X\n")
    with pytest.raises(LibriSpeechError, match="1-2-0001.flac: no transcript line"):
        librispeech_manifest(tmp_path, "b")
    trans.write_text("1-2-0000 X\n1-2-0001 Y\n1-2-0002 Z\n")  # a line without audio: warned, ignored
    with pytest.warns(UserWarning, match="1 transcript lines have no audio"):
        assert len(librispeech_manifest(tmp_path, "b")) == 2


def test_missing_subset_names_what_exists(tmp_path):
    write_libri(tmp_path, "dev-clean", {"1-2-0000": "X"})
    with pytest.raises(LibriSpeechError, match="no LibriSpeech subset 'test-clean'.*found: dev-clean"):
        librispeech_manifest(tmp_path, "dev-clean,test-clean")


def test_empty_or_broken_audio_is_an_error(tmp_path):
    write_libri(tmp_path, "a", {"1-2-0000": "X", "1-2-0001": "Y"})
    folder = tmp_path / "LibriSpeech" / "a" / "1" / "2"
    (folder / "1-2-0001.flac").unlink()
    sf.write(folder / "1-2-0001.wav", np.zeros(0, dtype=np.float32), SR)  # a header and no samples
    with pytest.raises(LibriSpeechError, match="1-2-0001.wav: the audio file holds no samples"):
        librispeech_manifest(tmp_path, "a")
    (folder / "1-2-0001.wav").unlink()
    (folder / "1-2-0001.flac").write_bytes(b"not audio")
    with pytest.raises(LibriSpeechError, match="1-2-0001.flac: cannot read audio"):
        librispeech_manifest(tmp_path, "a")


def test_unknown_characters_are_mapped_or_reported(tmp_path):
    write_libri(tmp_path, "a", {"1-2-0000": "caf\u00e9 don\u2019t", "1-2-0001": "room 7?", "1-2-0002": "fine"})
    df = librispeech_manifest(tmp_path, "a")
    vocab = letter_vocabulary()
    with pytest.raises(VocabularyError, match=r"1 transcripts hold characters .*'7' '\?'.*1-2-0001"):
        prepare_transcripts(df, vocab)
    with pytest.warns(UserWarning, match="left out"):
        kept = prepare_transcripts(df, vocab, on_unknown="skip")
    assert kept["text"].tolist() == ["CAFE DON'T", "FINE"]  # accents and curly quotes are mapped
