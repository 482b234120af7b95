"""torchaudio `torchaudio.models.Wav2Vec2Model` (wav2vec 2.0 and HuBERT encoders) -> our `Wav2Vec2Model`.

torchaudio's model has no quantizer, so the result is always encoder-only; its optional `aux`
linear layer (a fine-tuned CTC head) comes back as `ctc_head`. A model in memory is read directly
(its architecture is inferred from the modules). A state dict alone does not say the conv strides or
the number of heads, so files must carry the `wav2vec2_model(...)` builder arguments beside it:

    bundle = torchaudio.pipelines.WAV2VEC2_BASE          # or any model you built
    torch.save({"config": bundle._params, "state_dict": bundle.get_model().state_dict()}, "w2v.pt")

Such a file is read with `torch.load(weights_only=True)`. WavLM (relative attention bias) is refused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..config import BASE_CONV, ModelConfig, PretrainConfig
from .common import ConversionError, Converted, build_model, load_pt, published_vocab, rename_keys

# torchaudio key -> ours. First match wins.
TORCHAUDIO_TO_OURS: dict[str, str] = {
    r"feature_extractor\.conv_layers\.(\d+)\.conv\.": r"wav2vec2.feature_extractor.blocks.\1.conv.",
    r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.": r"wav2vec2.feature_extractor.blocks.\1.norm.",
    r"encoder\.feature_projection\.layer_norm\.": "wav2vec2.layer_norm.",
    r"encoder\.feature_projection\.projection\.": "wav2vec2.post_extract_proj.",
    r"encoder\.transformer\.pos_conv_embed\.conv\.": "wav2vec2.encoder.pos_conv.conv.",
    r"encoder\.transformer\.layer_norm\.": "wav2vec2.encoder.layer_norm.",
    r"encoder\.transformer\.layers\.(\d+)\.attention\.": r"wav2vec2.encoder.layers.\1.self_attn.",
    r"encoder\.transformer\.layers\.(\d+)\.layer_norm\.": r"wav2vec2.encoder.layers.\1.self_attn_layer_norm.",
    r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.intermediate_dense\.": r"wav2vec2.encoder.layers.\1.fc1.",
    r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.output_dense\.": r"wav2vec2.encoder.layers.\1.fc2.",
    r"encoder\.transformer\.layers\.(\d+)\.final_layer_norm\.": r"wav2vec2.encoder.layers.\1.final_layer_norm.",
}
CTC_HEAD = "aux."
BUILDER_ARGS = (
    "extractor_mode", "extractor_conv_layer_config", "extractor_conv_bias", "encoder_embed_dim",
    "encoder_projection_dropout", "encoder_pos_conv_kernel", "encoder_pos_conv_groups", "encoder_num_layers",
    "encoder_num_heads", "encoder_attention_dropout", "encoder_ff_interm_features", "encoder_ff_interm_dropout",
    "encoder_dropout", "encoder_layer_norm_first", "encoder_layer_drop",
)


def config_from_torchaudio(args: dict[str, Any]) -> PretrainConfig:
    """Our config from `torchaudio.models.wav2vec2_model` keyword arguments (`bundle._params`)."""
    missing = [k for k in BUILDER_ARGS if k not in args]
    if missing:
        raise ConversionError(f"torchaudio config lacks {missing} (expected wav2vec2_model(...) arguments)")
    conv = args["extractor_conv_layer_config"] or BASE_CONV
    model = ModelConfig(
        conv_layers=tuple((int(d), int(k), int(s)) for d, k, s in conv),
        extractor_mode=args["extractor_mode"], conv_bias=bool(args["extractor_conv_bias"]),
        feature_grad_mult=1.0,  # torchaudio has no gradient multiplier
        embed_dim=args["encoder_embed_dim"], num_layers=args["encoder_num_layers"],
        ffn_dim=args["encoder_ff_interm_features"], num_heads=args["encoder_num_heads"],
        layer_norm_first=bool(args["encoder_layer_norm_first"]), dropout=float(args["encoder_dropout"]),
        attention_dropout=float(args["encoder_attention_dropout"]),
        activation_dropout=float(args["encoder_ff_interm_dropout"]), layerdrop=float(args["encoder_layer_drop"]),
        dropout_input=float(args["encoder_projection_dropout"]), dropout_features=0.0,
        conv_pos=args["encoder_pos_conv_kernel"], conv_pos_groups=args["encoder_pos_conv_groups"],
    )
    return dataclasses.replace(PretrainConfig(), model=model).validate()


def builder_args(model: nn.Module) -> dict[str, Any]:
    """The `wav2vec2_model(...)` arguments that rebuild a torchaudio model, read off its modules."""
    convs = model.feature_extractor.conv_layers
    transformer = model.encoder.transformer
    layer = transformer.layers[0]
    if type(layer.attention).__name__ != "SelfAttention":
        raise ConversionError(f"torchaudio attention {type(layer.attention).__name__} (WavLM?) is not wav2vec 2.0")
    norms = [type(block.layer_norm).__name__ if block.layer_norm is not None else None for block in convs]
    mode = "group_norm" if norms[0] == "GroupNorm" and not any(norms[1:]) else "layer_norm"
    return {
        "extractor_mode": mode,
        "extractor_conv_layer_config": [(b.conv.out_channels, b.conv.kernel_size[0], b.conv.stride[0]) for b in convs],
        "extractor_conv_bias": convs[0].conv.bias is not None,
        "encoder_embed_dim": model.encoder.feature_projection.projection.out_features,
        "encoder_projection_dropout": model.encoder.feature_projection.dropout.p,
        "encoder_pos_conv_kernel": transformer.pos_conv_embed.kernel_size,
        "encoder_pos_conv_groups": transformer.pos_conv_embed.conv.groups,
        "encoder_num_layers": len(transformer.layers),
        "encoder_num_heads": layer.attention.num_heads,
        "encoder_attention_dropout": float(layer.attention.dropout),
        "encoder_ff_interm_features": layer.feed_forward.intermediate_dense.out_features,
        "encoder_ff_interm_dropout": layer.feed_forward.intermediate_dropout.p,
        "encoder_dropout": transformer.dropout.p,
        "encoder_layer_norm_first": bool(layer.layer_norm_first),
        "encoder_layer_drop": float(transformer.layer_drop),
        "aux_num_out": model.aux.out_features if model.aux is not None else None,
    }


def from_torchaudio(source: nn.Module | str | Path, ckpt: dict[str, Any] | None = None) -> Converted:
    """Map a torchaudio `Wav2Vec2Model` (in memory, or a `{"config", "state_dict"}` file) onto our `Wav2Vec2Model`."""
    if isinstance(source, nn.Module):
        args, weights, where = builder_args(source), source.state_dict(), type(source).__name__
    else:
        ckpt = load_pt(source) if ckpt is None else ckpt
        if not is_torchaudio_checkpoint(ckpt):
            raise ConversionError(f"{source}: expected {{'config': wav2vec2_model arguments, 'state_dict': ...}}")
        args, weights, where = ckpt["config"], ckpt["state_dict"], str(source)
    cfg = config_from_torchaudio(args)
    head: dict[str, Tensor] = {k[len(CTC_HEAD):]: v.float() for k, v in weights.items() if k.startswith(CTC_HEAD)}
    state, unmatched = rename_keys({k: v for k, v in weights.items() if not k.startswith(CTC_HEAD)},
                                   TORCHAUDIO_TO_OURS)
    if unmatched:
        raise ConversionError(f"{where}: weights we cannot place: {unmatched[:6]}")
    model = build_model(cfg, state, "encoder", where)
    vocab = published_vocab("torchaudio", Path(where), head) if head else None  # no labels in the file
    return Converted(model, cfg, "encoder", ctc_head=head or None, vocab=vocab, source_format="torchaudio",
                     notes=["torchaudio has no mask embedding: mask_emb is freshly initialised"])


def is_torchaudio_checkpoint(ckpt: dict[str, Any]) -> bool:
    return isinstance(ckpt.get("config"), dict) and "encoder_embed_dim" in ckpt["config"] and "state_dict" in ckpt
