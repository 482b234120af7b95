"""aiot_w2v2.convert: exact parity with Hugging Face, torchaudio and (fake) fairseq checkpoints.

Reference models are tiny and randomly initialised (norm affines and biases perturbed so they
matter); everything runs in eval mode on unpadded float32 batches.
"""

from __future__ import annotations

import argparse
import json
import re
import warnings

import numpy as np
import pytest
import torch
from conftest import TINY_CONV, tiny_model_config
from safetensors.torch import load_file

import aiot_w2v2
from aiot_w2v2 import checkpoint
from aiot_w2v2.asr import VocabularyError, Wav2Vec2ForCTC
from aiot_w2v2.asr.vocab import LIBRISPEECH_LETTERS
from aiot_w2v2.config import LossConfig, MaskingConfig, PretrainConfig
from aiot_w2v2.convert import (
    ConversionError,
    convert,
    export_hf,
    from_hf,
    from_torchaudio,
    load_foreign_ctc,
    to_hf,
)
from aiot_w2v2.convert.fairseq import parse_conv_layers
from aiot_w2v2.convert.torchaudio import builder_args
from aiot_w2v2.loading import load_foreign
from aiot_w2v2.model import Wav2Vec2ForPreTraining, Wav2Vec2Model

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

ATOL = 1e-4
HIDDEN = 48  # != conv dim 32, so every source has a feature projection


def hf_config(stable: bool, **overrides) -> transformers.Wav2Vec2Config:
    base = dict(
        hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        conv_dim=(32,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        feat_extract_norm="layer" if stable else "group", do_stable_layer_norm=stable, conv_bias=stable,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, num_codevectors_per_group=8,
        num_codevector_groups=2, codevector_dim=16, proj_codevector_dim=12, mask_time_prob=0.65,
        mask_time_length=10, vocab_size=10)
    base.update(overrides)
    return transformers.Wav2Vec2Config(**base)


def perturb(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Norm affines start at 1/0 and many biases at 0; make them matter for the parity checks."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def make_hf(cls_name: str, stable: bool, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return perturb(getattr(transformers, cls_name)(hf_config(stable, **overrides)))


def wave(batch: int = 2, samples: int = 4000, seed: int = 3) -> torch.Tensor:
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


def assert_states_match_hf(ours: list[torch.Tensor], hf_out, stable: bool) -> float:
    """Our [input, layer 1, ..., final] vs HF hidden_states (+ last_hidden_state); returns the max diff."""
    hf_states = hf_out.hidden_states
    assert len(ours) == len(hf_states) == 3
    # transformers 5 records the last layer before the final layer norm in pre-LN models; ours (and HF's
    # last_hidden_state, and fairseq) have it applied
    compare = list(zip(ours[:-1], hf_states[:-1], strict=True)) + [(ours[-1], hf_out.last_hidden_state)]
    if not stable:
        compare.append((ours[-1], hf_states[-1]))
    worst = max(maxdiff(a, b) for a, b in compare)
    assert worst <= ATOL
    return worst


# --------------------------------------------------------------------------------------------
# Hugging Face -> ours


@pytest.mark.parametrize("stable", [False, True], ids=["post-LN-group", "pre-LN-layer"])
def test_hf_pretraining_parity_every_hidden_state(tmp_path, stable):
    hf = make_hf("Wav2Vec2ForPreTraining", stable)
    hf.save_pretrained(tmp_path / "hf")
    ours = aiot_w2v2.load_model(tmp_path / "hf")
    assert isinstance(ours, Wav2Vec2ForPreTraining) and not ours.training
    assert ours.config.layer_norm_first is stable and ours.config.conv_bias is stable
    assert ours.masking.mask_prob == 0.065 and ours.masking.mask_length == 10  # p*M = 0.65 -> p
    x = wave()
    with torch.no_grad():
        hf_out = hf.wav2vec2(x, output_hidden_states=True)
        states = ours.extract_features(x)
        features = ours.wav2vec2.encode(x).features
    assert maxdiff(features, hf_out.extract_features) <= ATOL
    assert_states_match_hf(states, hf_out, stable)


@pytest.mark.parametrize("stable", [False, True], ids=["post-LN-group", "pre-LN-layer"])
def test_hf_quantizer_and_projections_parity(tmp_path, stable):
    hf = make_hf("Wav2Vec2ForPreTraining", stable, seed=5)
    hf.save_pretrained(tmp_path / "hf")
    ours = aiot_w2v2.load_model(tmp_path / "hf")
    x = wave()
    with torch.no_grad():
        enc = ours.wav2vec2.encode(x)
        B, T, C = enc.features.shape
        q = ours.quantizer(enc.features.reshape(B * T, C))
        hf_q, hf_ppl = hf.quantizer(enc.features)
        hf_codes = hf.quantizer.weight_proj(enc.features).view(B * T, 2, 8).argmax(-1)
        assert torch.equal(q.codes, hf_codes)
        assert maxdiff(q.quantized.view(B, T, -1), hf_q) == 0.0
        assert abs(float(q.code_perplexity) - float(hf_ppl)) < 1e-4
        # projections of context and targets, without and with a mask (which uses mask_emb)
        out = hf(x)
        context = ours.extract_features(x)[-1]
        assert maxdiff(ours.final_proj(context), out.projected_states) <= ATOL
        assert maxdiff(ours.project_q(q.quantized).view(B, T, -1), out.projected_quantized_states) <= ATOL
        mask = torch.zeros(B, T, dtype=torch.bool)
        mask[:, 2:6] = True
        masked = hf(x, mask_time_indices=mask)
        inp = torch.where(mask[..., None], ours.wav2vec2.mask_emb, enc.projected)
        assert maxdiff(ours.final_proj(ours.wav2vec2.encoder(inp)[-1]), masked.projected_states) <= ATOL


def test_hf_ctc_folder_gives_encoder_head_and_vocab(tmp_path):
    hf = make_hf("Wav2Vec2ForCTC", stable=True)
    hf.save_pretrained(tmp_path / "ctc")
    tokens = ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N"]
    (tmp_path / "ctc" / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    assert isinstance(aiot_w2v2.load_model(tmp_path / "ctc"), Wav2Vec2ForCTC)  # with its vocab: a CTC model
    encoder, head, vocab = load_foreign_ctc(tmp_path / "ctc")
    assert vocab == tokens
    x = wave()
    with torch.no_grad():
        logits = encoder(x) @ head["weight"].T + head["bias"]
        assert maxdiff(logits, hf(x).logits) <= ATOL


HF_LETTERS = ["<pad>", "<s>", "</s>", "<unk>", *LIBRISPEECH_LETTERS]  # wav2vec2-base-960h's vocab.json


def test_hf_ctc_folder_without_vocab_json_uses_the_published_letters_or_refuses(tmp_path):
    """Issue 15: a Wav2Vec2ForCTC folder without vocab.json was converted to an encoder + head, and
    load_model then returned the bare encoder without a word."""
    hf = make_hf("Wav2Vec2ForCTC", stable=True, vocab_size=32, pad_token_id=0)
    hf.save_pretrained(tmp_path / "letters")  # 32 outputs: the published letter vocabulary's size
    with pytest.warns(UserWarning, match="no vocab.json beside it; its 32 outputs match the published"):
        out = convert(tmp_path / "letters", "hf", tmp_path / "ours")
    assert json.loads((out / "vocab.json").read_text()) == HF_LETTERS
    x = wave()
    for source in (out, tmp_path / "letters"):  # the converted checkpoint, and the HF folder itself
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = aiot_w2v2.load_model(source)
        assert isinstance(model, Wav2Vec2ForCTC) and model.vocab == HF_LETTERS and model.vocabulary.blank == 0
        with torch.no_grad():
            assert maxdiff(model(x).logits, hf(x).logits) <= ATOL
    # a head of another size: refused at convert time, naming the missing file; load_model refuses too
    make_hf("Wav2Vec2ForCTC", stable=True, vocab_size=10).save_pretrained(tmp_path / "ten")
    with pytest.raises(ConversionError, match="10 outputs but no usable vocab.json.*put the vocab.json"):
        convert(tmp_path / "ten", "hf", tmp_path / "ten_ours")
    assert not (tmp_path / "ten_ours").exists()
    with pytest.raises(VocabularyError, match="no usable vocab.json"):
        aiot_w2v2.load_model(tmp_path / "ten")
    # a folder an older convert wrote (ctc_head.safetensors, no vocab.json): an error, not the encoder
    (out / "vocab.json").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="no vocab.json beside it"):
        aiot_w2v2.load_model(out)
    with pytest.raises(checkpoint.CheckpointError, match="a CTC model; load it with aiot_w2v2.load_model"):
        checkpoint.load_pretrained(out)


def test_hf_model_bin_with_old_weight_norm_names_and_no_mask_embedding(tmp_path):
    hf = make_hf("Wav2Vec2Model", stable=False, mask_time_prob=0.0)  # no masked_spec_embed
    folder = tmp_path / "bin"
    folder.mkdir()
    hf.config.to_json_file(str(folder / "config.json"))
    state = {k.replace("parametrizations.weight.original0", "weight_g")
             .replace("parametrizations.weight.original1", "weight_v"): v for k, v in hf.state_dict().items()}
    assert "encoder.pos_conv_embed.conv.weight_g" in state
    torch.save(state, folder / "pytorch_model.bin")
    ours = aiot_w2v2.load_model(folder)
    assert isinstance(ours, Wav2Vec2Model)
    x = wave()
    with torch.no_grad():
        assert_states_match_hf(ours.extract_features(x), hf(x, output_hidden_states=True), stable=False)


# --------------------------------------------------------------------------------------------
# ours -> Hugging Face -> ours


def our_pretraining_model(**model_overrides) -> tuple[Wav2Vec2ForPreTraining, PretrainConfig]:
    torch.manual_seed(0)
    cfg = PretrainConfig(model=tiny_model_config(embed_dim=HIDDEN, **model_overrides),
                         masking=MaskingConfig(mask_prob=0.05, mask_length=5, channel_prob=0.01, channel_length=4),
                         loss=LossConfig(num_negatives=7, feature_penalty_weight=3.0)).validate()
    return perturb(Wav2Vec2ForPreTraining(cfg.model, cfg.masking, cfg.loss)), cfg


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_ours_to_hf_to_ours_round_trip(tmp_path, layer_norm_first):
    mode = "layer_norm" if layer_norm_first else "group_norm"
    ours, cfg = our_pretraining_model(layer_norm_first=layer_norm_first, extractor_mode=mode,
                                      conv_bias=layer_norm_first)
    checkpoint.save_pretrained(ours, cfg, tmp_path / "ckpt")
    export_hf(tmp_path / "ckpt", tmp_path / "hf")
    hf, info = transformers.Wav2Vec2ForPreTraining.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    back = from_hf(tmp_path / "hf")
    assert back.config == cfg
    theirs = back.model.state_dict()
    assert theirs.keys() == ours.state_dict().keys()
    assert all(torch.equal(v, theirs[k]) for k, v in ours.state_dict().items())
    x = wave()
    with torch.no_grad():
        hf.eval()
        assert_states_match_hf(ours.extract_features(x), hf.wav2vec2(x, output_hidden_states=True), layer_norm_first)


def test_to_hf_encoder_only_and_equal_dims_identity_projection(tmp_path):
    torch.manual_seed(0)
    model = perturb(Wav2Vec2Model(tiny_model_config()))  # conv dim == embed dim: no projection of ours
    to_hf(model, tmp_path / "hf")
    hf = transformers.Wav2Vec2Model.from_pretrained(tmp_path / "hf").eval()
    back = load_foreign(tmp_path / "hf")
    assert isinstance(back, Wav2Vec2Model) and back.post_extract_proj is None
    x = wave()
    with torch.no_grad():
        assert_states_match_hf(back.extract_features(x), hf(x, output_hidden_states=True), stable=False)


# --------------------------------------------------------------------------------------------
# torchaudio -> ours

torchaudio_models = pytest.importorskip("torchaudio.models")


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_torchaudio_parity(tmp_path, layer_norm_first):
    torch.manual_seed(0)
    ta = perturb(torchaudio_models.wav2vec2_model(
        extractor_mode="layer_norm" if layer_norm_first else "group_norm",
        extractor_conv_layer_config=list(TINY_CONV), extractor_conv_bias=layer_norm_first,
        encoder_embed_dim=HIDDEN, encoder_projection_dropout=0.0, encoder_pos_conv_kernel=16,
        encoder_pos_conv_groups=4, encoder_num_layers=2, encoder_num_heads=4, encoder_attention_dropout=0.0,
        encoder_ff_interm_features=64, encoder_ff_interm_dropout=0.0, encoder_dropout=0.0,
        encoder_layer_norm_first=layer_norm_first, encoder_layer_drop=0.0, aux_num_out=6))
    conv = from_torchaudio(ta)
    assert conv.kind == "encoder" and conv.ctc_head["weight"].shape == (6, HIDDEN)
    torch.save({"config": builder_args(ta), "state_dict": ta.state_dict()}, tmp_path / "ta.pt")
    # aux of 6 outputs and no labels (torchaudio files carry none): not a model load_model can return
    with pytest.raises(VocabularyError, match="torchaudio files carry no labels"):
        aiot_w2v2.load_model(tmp_path / "ta.pt")
    from_file, _, _ = load_foreign_ctc(tmp_path / "ta.pt")
    x = wave()
    with torch.no_grad():
        layers, _ = ta.extract_features(x)  # per-layer outputs, no final layer norm
        ours = conv.model.extract_features(x)
        worst = max(maxdiff(a, b) for a, b in zip(ours[1:-1], layers[:-1], strict=True))
        if not layer_norm_first:
            worst = max(worst, maxdiff(ours[-1], layers[-1]))
        logits, _ = ta(x)
        worst = max(worst, maxdiff(ours[-1] @ conv.ctc_head["weight"].T + conv.ctc_head["bias"], logits))
        worst = max(worst, maxdiff(from_file(x), ours[-1]))
    assert worst <= ATOL


# --------------------------------------------------------------------------------------------
# fairseq (fake checkpoints built from HF models, named as fairseq names them) -> ours

HF_TO_FAIRSEQ = [  # (HF key regex, fairseq name); `{ln}` is the conv norm's index path
    (r"wav2vec2\.feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"wav2vec2\.feature_extractor\.conv_layers\.(\d+)\.layer_norm\.", r"feature_extractor.conv_layers.\1.{ln}."),
    (r"wav2vec2\.feature_projection\.layer_norm\.", "layer_norm."),
    (r"wav2vec2\.feature_projection\.projection\.", "post_extract_proj."),
    (r"wav2vec2\.masked_spec_embed", "mask_emb"),
    (r"wav2vec2\.encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original0", "encoder.pos_conv.0.weight_g"),
    (r"wav2vec2\.encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original1", "encoder.pos_conv.0.weight_v"),
    (r"wav2vec2\.encoder\.pos_conv_embed\.conv\.", "encoder.pos_conv.0."),
    (r"wav2vec2\.encoder\.layer_norm\.", "encoder.layer_norm."),
    (r"wav2vec2\.encoder\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
    (r"wav2vec2\.encoder\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"wav2vec2\.encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
    (r"wav2vec2\.encoder\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
    (r"wav2vec2\.encoder\.layers\.(\d+)\.final_layer_norm\.", r"encoder.layers.\1.final_layer_norm."),
    (r"quantizer\.codevectors", "quantizer.vars"),
    (r"quantizer\.weight_proj\.", "quantizer.weight_proj."),
    (r"project_q\.", "project_q."),
    (r"project_hid\.", "final_proj."),
    (r"lm_head\.", "w2v_encoder.proj."),
]


def fairseq_state(hf: torch.nn.Module, stable: bool) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in hf.state_dict().items():
        for pattern, repl in HF_TO_FAIRSEQ:
            new, n = re.subn("^" + pattern, repl.replace("{ln}", "2.1" if stable else "2"), key)
            if n:
                out[new] = value.clone()
                break
        else:
            raise AssertionError(f"test mapping misses {key}")
    return out


def fairseq_arch(stable: bool) -> dict:
    return {
        "_name": "wav2vec2", "extractor_mode": "layer_norm" if stable else "default",
        "conv_feature_layers": "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32,2,2)] + [(32,2,2)]",
        "conv_bias": stable, "feature_grad_mult": 0.1, "encoder_embed_dim": HIDDEN, "encoder_layers": 2,
        "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 4, "activation_fn": "gelu",
        "layer_type": "transformer", "layer_norm_first": stable, "dropout": 0.1, "attention_dropout": 0.1,
        "activation_dropout": 0.0, "encoder_layerdrop": 0.05, "dropout_input": 0.1, "dropout_features": 0.1,
        "conv_pos": 16, "conv_pos_groups": 4, "pos_conv_depth": 1, "quantize_targets": True,
        "quantize_input": False, "latent_groups": 2, "latent_vars": 8, "latent_dim": 16, "final_dim": 12,
        "logit_temp": 0.1, "num_negatives": 100, "cross_sample_negatives": 0, "latent_temp": [2.0, 0.5, 0.999995],
        "mask_prob": 0.65, "mask_length": 10, "no_mask_overlap": False, "mask_channel_prob": 0.0,
        "mask_channel_length": 10,
    }


def test_fairseq_pretrained_parity(tmp_path):
    hf = make_hf("Wav2Vec2ForPreTraining", stable=False)
    ckpt = {"args": None, "cfg": {"model": fairseq_arch(False), "task": {"_name": "audio_pretraining",
                                                                         "normalize": False},
                                  "criterion": {"_name": "wav2vec", "loss_weights": [0.1, 10]}},
            "model": fairseq_state(hf, stable=False), "optimizer_history": [{"num_updates": 1000}],
            "extra_state": {"metrics": {"loss": np.float64(1.25)}}}  # numpy scalars are data, allowed
    torch.save(ckpt, tmp_path / "w2v.pt")
    ours = aiot_w2v2.load_model(tmp_path / "w2v.pt")
    assert isinstance(ours, Wav2Vec2ForPreTraining)
    assert ours.config.feature_grad_mult == 0.1 and ours.masking.mask_prob == 0.065
    assert ours.temperature == pytest.approx(2.0 * 0.999995**1000)
    x = wave()
    with torch.no_grad():
        assert_states_match_hf(ours.extract_features(x), hf.wav2vec2(x, output_hidden_states=True), stable=False)
        out = hf(x)
        assert maxdiff(ours.final_proj(ours.extract_features(x)[-1]), out.projected_states) <= ATOL


def test_fairseq_finetuned_ctc_parity_and_convert(tmp_path):
    hf = make_hf("Wav2Vec2ForCTC", stable=True)
    state = {("w2v_encoder.w2v_model." + k if not k.startswith("w2v_encoder.") else k): v
             for k, v in fairseq_state(hf, stable=True).items()}
    cfg = {"model": {"_name": "wav2vec_ctc", "w2v_path": "/x.pt",
                     "w2v_args": {"model": fairseq_arch(True), "task": {"normalize": True}}},
           "task": {"_name": "audio_finetuning", "normalize": True}}
    torch.save({"cfg": cfg, "model": state}, tmp_path / "ctc.pt")
    (tmp_path / "dict.ltr.txt").write_text("".join(f"{c} {100 - i}\n" for i, c in enumerate("|ETAON")))
    encoder, head, vocab = load_foreign_ctc(tmp_path / "ctc.pt")
    assert vocab == ["<s>", "<pad>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N"]
    x = wave()
    with torch.no_grad():
        assert maxdiff(encoder(x) @ head["weight"].T + head["bias"], hf(x).logits) <= ATOL
    out = convert(tmp_path / "ctc.pt", "fairseq", tmp_path / "ours")
    meta = json.loads((out / "config.json").read_text())
    assert meta["kind"] == "encoder" and meta["config"]["data"]["normalize"] is True
    assert json.loads((out / "vocab.json").read_text()) == vocab
    assert torch.equal(load_file(str(out / "ctc_head.safetensors"))["weight"], head["weight"])
    reloaded = aiot_w2v2.load_model(out)  # encoder + ctc_head.safetensors + vocab.json: a CTC model
    assert isinstance(reloaded, Wav2Vec2ForCTC) and reloaded.vocab == vocab
    with torch.no_grad():
        assert torch.equal(reloaded.wav2vec2(x), encoder(x))


tripped = []


class Tripwire:
    def __setstate__(self, state):  # would run if the file were unpickled
        tripped.append(state)


def test_fairseq_namespace_is_refused_without_unpickling(tmp_path):
    wire = Tripwire()
    wire.x = 1
    torch.save({"args": argparse.Namespace(arch="wav2vec2"), "model": {}, "wire": wire}, tmp_path / "old.pt")
    with pytest.raises(ConversionError, match="argparse Namespace") as err:
        aiot_w2v2.load_model(tmp_path / "old.pt")
    assert "add_safe_globals([argparse.Namespace])" in str(err.value) and "torch.save" in str(err.value)  # the script
    assert not tripped
    torch.save({"model": {}, "cfg": {}, "wire": wire}, tmp_path / "obj.pt")
    with pytest.raises(ConversionError, match="Tripwire"):
        aiot_w2v2.load_model(tmp_path / "obj.pt")
    assert not tripped


def test_old_namespace_checkpoint_loads_after_the_printed_resave_script(tmp_path):
    hf = make_hf("Wav2Vec2ForPreTraining", stable=False, seed=2)
    flat = {**fairseq_arch(False), "arch": "wav2vec2", "latent_temp": "(2,0.5,0.999995)",
            "loss_weights": "[0.1, 10]", "normalize": False}
    del flat["_name"]
    torch.save({"args": argparse.Namespace(**flat), "model": fairseq_state(hf, stable=False)}, tmp_path / "old.pt")
    with pytest.raises(ConversionError) as err:
        aiot_w2v2.load_model(tmp_path / "old.pt")
    script = str(err.value).split("\n\n", 1)[1]
    exec(script.replace("IN.pt", str(tmp_path / "old.pt")).replace("OUT.pt", str(tmp_path / "new.pt")), {})
    ours = aiot_w2v2.load_model(tmp_path / "new.pt")
    assert ours.loss_config.temp_decay == 0.999995 and ours.loss_config.feature_penalty_weight == 10
    x = wave()
    with torch.no_grad():
        assert_states_match_hf(ours.extract_features(x), hf.wav2vec2(x, output_hidden_states=True), stable=False)


def test_conv_feature_layers_are_parsed_not_evaluated():
    assert parse_conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2") == (
        ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2)
    with pytest.raises(ConversionError):
        parse_conv_layers("__import__('os').getcwd()")


# --------------------------------------------------------------------------------------------
# dispatch and the CLI-facing functions


def test_unrecognised_paths_are_clear_value_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "x.txt").write_text("hello")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    for name in ("empty", "bert", "x.txt", "other.pt"):
        with pytest.raises(ValueError, match="Hugging Face save_pretrained folder"):
            aiot_w2v2.load_model(tmp_path / name)
    with pytest.raises(ValueError, match="unknown source format"):
        convert(tmp_path / "x.txt", "onnx", tmp_path / "out")


def test_convert_hf_and_torchaudio_to_our_checkpoints(tmp_path):
    hf = make_hf("Wav2Vec2ForPreTraining", stable=False)
    hf.save_pretrained(tmp_path / "hf")
    convert(tmp_path / "hf", "hf", tmp_path / "ours")
    ours = aiot_w2v2.load_model(tmp_path / "ours")
    assert isinstance(ours, Wav2Vec2ForPreTraining)
    x = wave()
    with torch.no_grad():
        assert maxdiff(ours.extract_features(x)[-1], hf.wav2vec2(x).last_hidden_state) <= ATOL
    ta = torchaudio_models.wav2vec2_model("group_norm", list(TINY_CONV), False, HIDDEN, 0.0, 16, 4, 2, 4, 0.0, 64,
                                          0.0, 0.0, False, 0.0, None).eval()
    torch.save({"config": builder_args(ta), "state_dict": ta.state_dict()}, tmp_path / "ta.pt")
    convert(tmp_path / "ta.pt", "torchaudio", tmp_path / "from_ta")
    enc = aiot_w2v2.load_model(tmp_path / "from_ta")
    assert isinstance(enc, Wav2Vec2Model)
    with torch.no_grad():
        assert maxdiff(enc(x), ta(x)[0]) <= ATOL
