"""Hugging Face `transformers` wav2vec 2.0 <-> ours.

Reads `save_pretrained` folders of `Wav2Vec2ForPreTraining`, `Wav2Vec2Model` and `Wav2Vec2ForCTC`
(config.json + model.safetensors or pytorch_model.bin, sharded or not) without importing
transformers; writing (`to_hf`) builds the HF model with transformers and saves it.

Semantics that differ and how they map:
- HF `mask_time_prob` is fairseq's mask_prob (p*M, the share of frames before overlaps); ours is
  the start probability p, so p = mask_time_prob / mask_time_length (same for feature masking).
- HF has no feature-gradient multiplier, no cross-sample negatives, no feature penalty and no
  temperature schedule in its config; an exported config.json carries our full config under the
  key `aiot_w2v2`, so ours -> HF -> ours is exact. Plain HF folders get feature_grad_mult 1.0 and
  our defaults for the rest.
- In transformers 5, `output_hidden_states[-1]` of a pre-LN (stable layer norm) model is the last
  layer *before* the final layer norm; our last state (like fairseq's and HF's `last_hidden_state`)
  has it applied. Post-LN models agree on every state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from ..config import MaskingConfig, ModelConfig, PretrainConfig, from_dict, to_dict
from ..model import Wav2Vec2ForPreTraining, Wav2Vec2Model
from .common import (
    BACKBONE,
    ConversionError,
    Converted,
    build_model,
    load_pt,
    map_key,
    normalize_weight_norm,
    published_vocab,
    rename_keys,
    round_prob,
)

log = logging.getLogger(__name__)

# HF key (without the `wav2vec2.` prefix of the head models) -> ours. First match wins.
HF_TO_OURS: dict[str, str] = {
    r"feature_extractor\.conv_layers\.(\d+)\.conv\.": r"wav2vec2.feature_extractor.blocks.\1.conv.",
    r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.": r"wav2vec2.feature_extractor.blocks.\1.norm.",
    r"feature_projection\.layer_norm\.": "wav2vec2.layer_norm.",
    r"feature_projection\.projection\.": "wav2vec2.post_extract_proj.",
    r"masked_spec_embed$": "wav2vec2.mask_emb",
    r"encoder\.pos_conv_embed\.conv\.": "wav2vec2.encoder.pos_conv.conv.",
    r"encoder\.layer_norm\.": "wav2vec2.encoder.layer_norm.",
    r"encoder\.layers\.(\d+)\.attention\.": r"wav2vec2.encoder.layers.\1.self_attn.",
    r"encoder\.layers\.(\d+)\.layer_norm\.": r"wav2vec2.encoder.layers.\1.self_attn_layer_norm.",
    r"encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.": r"wav2vec2.encoder.layers.\1.fc1.",
    r"encoder\.layers\.(\d+)\.feed_forward\.output_dense\.": r"wav2vec2.encoder.layers.\1.fc2.",
    r"encoder\.layers\.(\d+)\.final_layer_norm\.": r"wav2vec2.encoder.layers.\1.final_layer_norm.",
    r"quantizer\.codevectors$": "quantizer.codevectors",
    r"quantizer\.weight_proj\.": "quantizer.weight_proj.",
    r"project_q\.": "project_q.",
    r"project_hid\.": "final_proj.",
}
CTC_HEAD = "lm_head."

# transformers.Wav2Vec2Config defaults, for config.json files that omit a key.
HF_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "hidden_act": "gelu", "hidden_dropout": 0.1, "activation_dropout": 0.1, "attention_dropout": 0.1,
    "feat_proj_dropout": 0.0, "feat_quantizer_dropout": 0.0, "layerdrop": 0.1, "layer_norm_eps": 1e-5,
    "feat_extract_norm": "group", "feat_extract_activation": "gelu", "conv_dim": [512] * 7,
    "conv_stride": [5, 2, 2, 2, 2, 2, 2], "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_bias": False,
    "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16, "do_stable_layer_norm": False,
    "mask_time_prob": 0.05, "mask_time_length": 10, "mask_time_min_masks": 2, "mask_feature_prob": 0.0,
    "mask_feature_length": 10, "num_codevectors_per_group": 320, "num_codevector_groups": 2,
    "contrastive_logits_temperature": 0.1, "num_negatives": 100, "codevector_dim": 256,
    "proj_codevector_dim": 256, "diversity_loss_weight": 0.1, "add_adapter": False, "adapter_attn_dim": None,
}
OUR_KEY = "aiot_w2v2"  # our full PretrainConfig inside an exported config.json


def config_from_hf(hf: dict[str, Any], preprocessor: dict[str, Any] | None = None) -> PretrainConfig:
    """Our `PretrainConfig` for an HF config.json dict (and preprocessor_config.json, if any)."""
    c = {**HF_DEFAULTS, **hf}
    for key, want in (("hidden_act", "gelu"), ("feat_extract_activation", "gelu"), ("add_adapter", False),
                      ("adapter_attn_dim", None)):
        if c[key] != want:
            raise ConversionError(f"HF config {key}={c[key]!r} is not supported (we implement {want!r})")
    if abs(float(c["layer_norm_eps"]) - 1e-5) > 1e-12:
        raise ConversionError(f"HF config layer_norm_eps={c['layer_norm_eps']} is not supported (ours is 1e-5)")
    modes = {"group": "group_norm", "layer": "layer_norm"}
    if c["feat_extract_norm"] not in modes:
        raise ConversionError(f"HF config feat_extract_norm={c['feat_extract_norm']!r}: expected 'group' or 'layer'")
    if not len(c["conv_dim"]) == len(c["conv_kernel"]) == len(c["conv_stride"]):
        raise ConversionError("HF config conv_dim, conv_kernel and conv_stride differ in length")
    conv = zip(c["conv_dim"], c["conv_kernel"], c["conv_stride"], strict=True)
    stored = from_dict(PretrainConfig, hf[OUR_KEY]) if isinstance(hf.get(OUR_KEY), dict) else None
    base = stored or PretrainConfig(model=ModelConfig(feature_grad_mult=1.0, codebook_init="uniform"))
    latent_dim = c["codevector_dim"]
    if dataclasses.replace(base.model, final_dim=c["proj_codevector_dim"]).codevector_dim == latent_dim:
        latent_dim = base.model.latent_dim  # the same size; keep how the stored config spells it
    model = dataclasses.replace(
        base.model,
        conv_layers=tuple((int(d), int(k), int(s)) for d, k, s in conv),
        extractor_mode=modes[c["feat_extract_norm"]],
        conv_bias=bool(c["conv_bias"]),
        embed_dim=c["hidden_size"],
        num_layers=c["num_hidden_layers"],
        ffn_dim=c["intermediate_size"],
        num_heads=c["num_attention_heads"],
        layer_norm_first=bool(c["do_stable_layer_norm"]),
        dropout=float(c["hidden_dropout"]),
        attention_dropout=float(c["attention_dropout"]),
        activation_dropout=float(c["activation_dropout"]),
        layerdrop=float(c["layerdrop"]),
        dropout_input=float(c["feat_proj_dropout"]),
        dropout_features=float(c["feat_quantizer_dropout"]),
        conv_pos=c["num_conv_pos_embeddings"],
        conv_pos_groups=c["num_conv_pos_embedding_groups"],
        quantize_targets=True,
        latent_groups=c["num_codevector_groups"],
        latent_vars=c["num_codevectors_per_group"],
        latent_dim=latent_dim,
        final_dim=c["proj_codevector_dim"],
    )
    masking = dataclasses.replace(
        base.masking,
        mask_prob=round_prob(c["mask_time_prob"] / max(1, c["mask_time_length"])),  # p*M -> p
        mask_length=max(1, c["mask_time_length"]),
        min_masks=c["mask_time_min_masks"],
        channel_prob=round_prob(c["mask_feature_prob"] / max(1, c["mask_feature_length"])),
        channel_length=max(1, c["mask_feature_length"]),
    )
    loss = dataclasses.replace(base.loss, num_negatives=c["num_negatives"],
                               logit_temp=float(c["contrastive_logits_temperature"]),
                               diversity_weight=float(c["diversity_loss_weight"]))
    data = base.data
    if preprocessor and stored is None:
        data = dataclasses.replace(data, normalize=bool(preprocessor.get("do_normalize", data.normalize)),
                                   sample_rate=int(preprocessor.get("sampling_rate", data.sample_rate)))
    return dataclasses.replace(base, model=model, masking=masking, loss=loss, data=data).validate()


def hf_config_from_ours(cfg: PretrainConfig) -> Any:
    """A `transformers.Wav2Vec2Config` for our config (our full config rides along under `aiot_w2v2`)."""
    from transformers import Wav2Vec2Config

    m, mk, lc = cfg.model, cfg.masking, cfg.loss
    return Wav2Vec2Config(
        hidden_size=m.embed_dim, num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
        intermediate_size=m.ffn_dim, hidden_act="gelu", hidden_dropout=m.dropout,
        activation_dropout=m.activation_dropout, attention_dropout=m.attention_dropout,
        feat_proj_dropout=m.dropout_input, feat_quantizer_dropout=m.dropout_features, layerdrop=m.layerdrop,
        layer_norm_eps=1e-5, feat_extract_norm="group" if m.extractor_mode == "group_norm" else "layer",
        feat_extract_activation="gelu", conv_dim=[c for c, _, _ in m.conv_layers],
        conv_kernel=[k for _, k, _ in m.conv_layers], conv_stride=[s for _, _, s in m.conv_layers],
        conv_bias=m.conv_bias, num_conv_pos_embeddings=m.conv_pos, num_conv_pos_embedding_groups=m.conv_pos_groups,
        do_stable_layer_norm=m.layer_norm_first,
        mask_time_prob=round_prob(mk.mask_prob * mk.mask_length), mask_time_length=mk.mask_length,
        mask_time_min_masks=mk.min_masks, mask_feature_prob=round_prob(mk.channel_prob * mk.channel_length),
        mask_feature_length=mk.channel_length, num_codevectors_per_group=m.latent_vars,
        num_codevector_groups=m.latent_groups, codevector_dim=m.codevector_dim, proj_codevector_dim=m.final_dim,
        contrastive_logits_temperature=lc.logit_temp, num_negatives=lc.num_negatives,
        diversity_loss_weight=lc.diversity_weight, **{OUR_KEY: to_dict(cfg)},
    )


def read_hf_weights(folder: str | Path) -> dict[str, Tensor]:
    """All tensors of an HF folder: model.safetensors, pytorch_model.bin, or their sharded index."""
    folder = Path(folder)
    for name in ("model.safetensors", "pytorch_model.bin"):
        index = folder / f"{name}.index.json"
        files = ([folder / name] if (folder / name).exists() else
                 [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
                 if index.exists() else [])
        if files:
            state: dict[str, Tensor] = {}
            for f in files:
                state.update(load_file(str(f)) if f.suffix == ".safetensors" else load_pt(f))
            return state
    raise ConversionError(f"{folder}: no weights found (expected model.safetensors or pytorch_model.bin)")


def from_hf(folder: str | Path) -> Converted:
    """Map an HF `save_pretrained` folder onto our model.

    `Wav2Vec2ForPreTraining` -> our `Wav2Vec2ForPreTraining`; `Wav2Vec2Model` -> our `Wav2Vec2Model`;
    `Wav2Vec2ForCTC` -> our `Wav2Vec2Model` with `ctc_head` (lm_head) and `vocab` (from vocab.json, or
    the published letter vocabulary when vocab.json is missing and the head has its 32 outputs).
    """
    folder = Path(folder)
    hf_cfg = json.loads((folder / "config.json").read_text())
    if hf_cfg.get("model_type") != "wav2vec2":
        raise ConversionError(f"{folder}: model_type {hf_cfg.get('model_type')!r}; expected 'wav2vec2'")
    pre_path = folder / "preprocessor_config.json"
    cfg = config_from_hf(hf_cfg, json.loads(pre_path.read_text()) if pre_path.exists() else None)
    raw = read_hf_weights(folder)
    raw = {k[len(BACKBONE):] if k.startswith(BACKBONE) else k: v for k, v in raw.items()}
    head = {k[len(CTC_HEAD):]: v.float() for k, v in raw.items() if k.startswith(CTC_HEAD)}
    state, unmatched = rename_keys({k: v for k, v in raw.items() if not k.startswith(CTC_HEAD)}, HF_TO_OURS)
    if unmatched:
        raise ConversionError(f"{folder}: weights we cannot place: {unmatched[:6]} (supported: "
                              "Wav2Vec2ForPreTraining, Wav2Vec2Model, Wav2Vec2ForCTC)")
    kind = "pretraining" if "final_proj.weight" in state else "encoder"
    model = build_model(cfg, state, kind, str(folder))
    notes = [] if "wav2vec2.mask_emb" in state else ["no masked_spec_embed: mask_emb is freshly initialised"]
    return Converted(model, cfg, kind, ctc_head=head or None, vocab=_read_vocab(folder, head), notes=notes,
                     source_format="hf")


def _read_vocab(folder: Path, head: dict[str, Tensor]) -> list[str] | None:
    """vocab.json's tokens in id order; without the file, the published letter vocabulary if the head
    has its size (warned); None when unknown (`convert` and `load_model` then refuse the model)."""
    path = folder / "vocab.json"
    if not head:
        return None
    if not path.exists():
        return published_vocab("hf", folder, head)
    vocab = json.loads(path.read_text())
    if not (isinstance(vocab, dict) and all(isinstance(i, int) for i in vocab.values())):
        log.warning("%s: not a flat {token: id} vocabulary; vocab left out", path)
        return None
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    if len(tokens) != head["weight"].shape[0]:
        log.warning("%s: %d tokens for %d CTC outputs; vocab left out", path, len(tokens), head["weight"].shape[0])
        return None
    return tokens


def to_hf(model: Wav2Vec2ForPreTraining | Wav2Vec2Model, out_dir: str | Path,
          cfg: PretrainConfig | None = None) -> Path:
    """Write a folder `transformers.Wav2Vec2ForPreTraining.from_pretrained` loads (or `Wav2Vec2Model`
    for our encoder-only model): config.json, model.safetensors and preprocessor_config.json.

    `cfg` defaults to the model's own configs (data settings then take our defaults). HF keeps no
    mask embedding when both masking probabilities are 0, so such a model's `mask_emb` is not exported.
    """
    import transformers

    pretraining = isinstance(model, Wav2Vec2ForPreTraining)
    backbone = model.wav2vec2 if pretraining else model
    if cfg is None:
        cfg = PretrainConfig(model=model.config, masking=getattr(model, "masking", MaskingConfig()),
                             **({"loss": model.loss_config} if pretraining else {}))
    if pretraining and model.quantizer is None:
        raise ConversionError("HF Wav2Vec2ForPreTraining always quantizes its targets; this model has "
                              "quantize_targets=False and has no HF equivalent")
    hf_config = hf_config_from_ours(cfg)
    hf_cls = transformers.Wav2Vec2ForPreTraining if pretraining else transformers.Wav2Vec2Model
    hf_model = hf_cls(hf_config)
    ours = {k if pretraining else BACKBONE + k: v for k, v in model.state_dict().items()}
    if backbone.post_extract_proj is None:  # conv dim == embed dim: HF's projection is the identity
        ours[BACKBONE + "post_extract_proj.weight"] = torch.eye(cfg.model.embed_dim)
        ours[BACKBONE + "post_extract_proj.bias"] = torch.zeros(cfg.model.embed_dim)
    state = {}
    for hf_key in hf_model.state_dict():
        short = hf_key[len(BACKBONE):] if hf_key.startswith(BACKBONE) else hf_key
        our_key = map_key(next(iter(normalize_weight_norm({short: None}))), HF_TO_OURS)
        if our_key not in ours:
            raise ConversionError(f"no weight of ours for HF {hf_key}")
        state[hf_key] = ours[our_key]
    hf_model.load_state_dict(state, strict=True)
    out_dir = Path(out_dir)
    hf_model.save_pretrained(str(out_dir), safe_serialization=True)
    transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=cfg.data.sample_rate, padding_value=0.0, do_normalize=cfg.data.normalize,
        return_attention_mask=cfg.model.extractor_mode == "layer_norm").save_pretrained(str(out_dir))
    return out_dir

