"""aiot_w2v2.asr.ctc_model: parity with Hugging Face `Wav2Vec2ForCTC` and fake fairseq fine-tuned
checkpoints (randomly initialised, no download): logits within 1e-4 and identical greedy
transcripts; our CTC checkpoints; fine-tuning masking and freezing; vocabulary mismatches."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model_config
from test_convert import ATOL, fairseq_arch, fairseq_state, make_hf, maxdiff, wave

import aiot_w2v2
from aiot_w2v2 import checkpoint
from aiot_w2v2.asr import GreedyDecoder, Wav2Vec2ForCTC, letter_vocabulary
from aiot_w2v2.asr.ctc_model import ctc_meta, ctc_pretrain_config
from aiot_w2v2.asr.vocab import LIBRISPEECH_LETTERS
from aiot_w2v2.config import MaskingConfig
from aiot_w2v2.convert import convert
from aiot_w2v2.loading import load_ctc_model

transformers = pytest.importorskip("transformers")

HF_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", *LIBRISPEECH_LETTERS]  # wav2vec2-base-960h's vocab.json order


def hf_ctc(stable: bool, seed: int = 0):
    """A random HF Wav2Vec2ForCTC over the 32 LibriSpeech tokens; the head is scaled so letters win often."""
    model = make_hf("Wav2Vec2ForCTC", stable, seed=seed, vocab_size=32, pad_token_id=0)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
        model.lm_head.bias[1:4] = -100.0  # like a trained model, never emit <s> </s> <unk>
    return model


def hf_transcripts(hf, folder, logits: torch.Tensor) -> list[str]:
    """HF's own greedy decoding: argmax + Wav2Vec2CTCTokenizer.batch_decode, as its ASR pipeline does
    (skip_special_tokens=True would drop the blanks before merging repeats: "R - R" -> "R")."""
    tok = transformers.Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), word_delimiter_token="|")
    return [" ".join(t.split()) for t in tok.batch_decode(logits.argmax(-1))]


@pytest.mark.parametrize("stable", [False, True], ids=["post-LN-group", "pre-LN-layer"])
def test_hf_ctc_parity_logits_and_greedy_transcripts(tmp_path, stable):
    hf = hf_ctc(stable)
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(HF_TOKENS)}))
    ours = aiot_w2v2.load_model(tmp_path / "hf")
    assert isinstance(ours, Wav2Vec2ForCTC) and not ours.training
    assert ours.vocab == HF_TOKENS and ours.vocabulary.blank == 0
    x = wave(batch=3, samples=8000)
    with torch.no_grad():
        hf_logits = hf(x).logits
        out = ours(x)
    assert maxdiff(out.logits, hf_logits) <= ATOL
    assert out.lengths.tolist() == [hf_logits.shape[1]] * 3
    ours_text = GreedyDecoder(ours.vocabulary)(out.logits, out.lengths)
    assert ours_text == hf_transcripts(hf, tmp_path / "hf", hf_logits)
    assert any(len(t) > 3 for t in ours_text)  # the comparison is not between empty strings


def test_fairseq_finetuned_ctc_parity_with_its_dictionary(tmp_path):
    hf = hf_ctc(stable=True, seed=2)
    state = {("w2v_encoder.w2v_model." + k if not k.startswith("w2v_encoder.") else k): v
             for k, v in fairseq_state(hf, stable=True).items()}
    cfg = {"model": {"_name": "wav2vec_ctc", "w2v_path": "/x.pt",
                     "w2v_args": {"model": fairseq_arch(True), "task": {"normalize": True}}},
           "task": {"_name": "audio_finetuning", "normalize": True}}
    torch.save({"cfg": cfg, "model": state}, tmp_path / "ctc.pt")
    # without its dictionary, a head of 32 outputs is taken to be the published dict.ltr.txt's, and a
    # warning says so (never the bare encoder: issue 15)
    with pytest.warns(UserWarning, match="no dict.ltr.txt beside it; its 32 outputs match the published"):
        guessed = aiot_w2v2.load_model(tmp_path / "ctc.pt")
    assert isinstance(guessed, Wav2Vec2ForCTC) and guessed.vocabulary == letter_vocabulary()
    (tmp_path / "dict.ltr.txt").write_text("".join(f"{c} {1000 - i}\n" for i, c in enumerate(LIBRISPEECH_LETTERS)))
    ours = load_ctc_model(tmp_path / "ctc.pt")
    assert ours.vocabulary == letter_vocabulary() and ours.normalize_input is True
    x = wave(batch=2, samples=8000)
    with torch.no_grad():
        hf_logits = hf(x).logits
        logits = ours(x).logits
    assert maxdiff(logits, hf_logits) <= ATOL
    # fairseq's <s> and HF's <pad> are the same blank row: the transcripts agree
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(HF_TOKENS)}))
    assert GreedyDecoder(ours.vocabulary)(logits) == hf_transcripts(hf, tmp_path, hf_logits)
    # converted to our checkpoint, it still loads as the same CTC model
    out = convert(tmp_path / "ctc.pt", "fairseq", tmp_path / "ours")
    again = aiot_w2v2.load_model(out)
    assert isinstance(again, Wav2Vec2ForCTC) and again.vocabulary == ours.vocabulary
    with torch.no_grad():
        assert torch.equal(again(x).logits, logits)


def test_padded_batch_matches_single_clips():
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(tiny_model_config(), letter_vocabulary()).eval()
    a, b = wave(1, 6000, seed=1)[0], wave(1, 9000, seed=2)[0]
    batch = torch.zeros(2, 9000)
    batch[0, :6000], batch[1] = a, b
    pad = torch.zeros(2, 9000, dtype=torch.bool)
    pad[0, 6000:] = True
    with torch.no_grad():
        both = model(batch, pad)
        alone = model(a[None])
    n = int(both.lengths[0])
    assert n == alone.logits.shape[1] == int(model.num_frames(torch.tensor(6000)))
    assert both.padding_mask is not None and bool(both.padding_mask[0, n:].all())
    assert maxdiff(both.logits[0, :n], alone.logits[0]) <= ATOL


def test_our_ctc_checkpoint_roundtrip_and_vocabulary_mismatch(tmp_path):
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(tiny_model_config(), letter_vocabulary(), final_dropout=0.1).eval()
    checkpoint.save_pretrained(model, ctc_pretrain_config(model), tmp_path / "ctc", kind="ctc", meta=ctc_meta(model))
    loaded = aiot_w2v2.load_model(tmp_path / "ctc")
    assert isinstance(loaded, Wav2Vec2ForCTC) and loaded.vocabulary == model.vocabulary
    x = wave()
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    assert loaded.extract_features(x)[-1].shape[-1] == model.config.embed_dim  # `embed` works on CTC models
    meta = json.loads((tmp_path / "ctc" / "config.json").read_text())
    meta["ctc"]["vocabulary"]["tokens"] = meta["ctc"]["vocabulary"]["tokens"][:-1]  # 31 tokens for 32 outputs
    (tmp_path / "ctc" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(checkpoint.CheckpointError, match="32 outputs but its vocabulary 31 tokens"):
        aiot_w2v2.load_model(tmp_path / "ctc")


def test_training_mode_masks_and_frozen_encoder_trains_only_the_head():
    torch.manual_seed(0)
    masking = MaskingConfig(mask_prob=0.2, mask_length=2, min_masks=1, channel_prob=0.1, channel_length=4)
    model = Wav2Vec2ForCTC(tiny_model_config(), letter_vocabulary(), masking=masking).train()
    x = wave(2, 8000)
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert out.mask is not None and bool(out.mask.any())
    again = model(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.logits, again.logits)  # randomness comes only from the generator (dropout is 0)
    model.freeze_encoder(True)
    model.zero_grad()
    model(x).logits.sum().backward()
    assert model.lm_head.weight.grad is not None
    assert all(p.grad is None for p in model.wav2vec2.parameters())
    model.freeze_encoder(False)
    model(x).logits.sum().backward()
    assert model.wav2vec2.encoder.layers[0].fc1.weight.grad is not None
    with torch.no_grad():
        assert model.eval()(x).mask is None
