"""fairseq wav2vec 2.0 checkpoints (`.pt`) -> ours, without fairseq and without unpickling.

Two kinds of file: a pretrained `Wav2Vec2Model` (weights under `model`, architecture in
`cfg["model"]`) and a fine-tuned `Wav2VecCtc` (weights under `w2v_encoder.w2v_model.`, the CTC
projection in `w2v_encoder.proj`, the pretraining config in `cfg["model"]["w2v_args"]`). Files are
read with `torch.load(weights_only=True)`: old files whose config is a pickled argparse Namespace
(`args`) are refused with a script that re-saves them as plain dicts (see `common.RESAVE_SCRIPT`).

fairseq's `conv_feature_layers` is a Python expression string; it is parsed with `ast`, never
evaluated. Its `mask_prob` is p*M (like HF's); ours is the start probability p = mask_prob / M.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
from pathlib import Path
from typing import Any

from torch import Tensor

from ..config import DataConfig, LossConfig, MaskingConfig, ModelConfig, PretrainConfig
from .common import ConversionError, Converted, build_model, load_pt, published_vocab, rename_keys, round_prob

log = logging.getLogger(__name__)

# fairseq key -> ours. First match wins (the layer-norm pattern `.2.1.` before group norm's `.2.`).
FAIRSEQ_TO_OURS: dict[str, str] = {
    r"feature_extractor\.conv_layers\.(\d+)\.0\.": r"wav2vec2.feature_extractor.blocks.\1.conv.",
    r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.": r"wav2vec2.feature_extractor.blocks.\1.norm.",  # LN mode
    r"feature_extractor\.conv_layers\.(\d+)\.2\.": r"wav2vec2.feature_extractor.blocks.\1.norm.",  # GN, layer 0
    r"layer_norm\.": "wav2vec2.layer_norm.",
    r"post_extract_proj\.": "wav2vec2.post_extract_proj.",
    r"mask_emb$": "wav2vec2.mask_emb",
    r"encoder\.pos_conv\.0\.": "wav2vec2.encoder.pos_conv.conv.",
    r"encoder\.layer_norm\.": "wav2vec2.encoder.layer_norm.",
    # self_attn.{q,k,v,out}_proj, self_attn_layer_norm, fc1, fc2, final_layer_norm: our names are fairseq's
    r"encoder\.layers\.(\d+)\.": r"wav2vec2.encoder.layers.\1.",
    r"quantizer\.vars$": "quantizer.codevectors",
    r"quantizer\.weight_proj\.": "quantizer.weight_proj.",
    r"project_q\.": "project_q.",
    r"final_proj\.": "final_proj.",
}
FINETUNED_PREFIX = "w2v_encoder.w2v_model."
CTC_HEAD = "w2v_encoder.proj."

BASE_CONV_STRING = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"
# fairseq Wav2Vec2Config defaults, for configs that omit a key (fairseq saves them all).
FAIRSEQ_DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default", "conv_feature_layers": BASE_CONV_STRING, "conv_bias": False,
    "feature_grad_mult": 1.0, "encoder_embed_dim": 768, "encoder_layers": 12, "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12, "activation_fn": "gelu", "layer_type": "transformer", "layer_norm_first": False,
    "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0, "encoder_layerdrop": 0.0,
    "dropout_input": 0.0, "dropout_features": 0.0, "conv_pos": 128, "conv_pos_groups": 16, "pos_conv_depth": 1,
    "quantize_targets": False, "quantize_input": False, "target_glu": False, "quantizer_depth": 1,
    "latent_groups": 2, "latent_vars": 320, "latent_dim": 0, "final_dim": 0, "logit_temp": 0.1,
    "num_negatives": 100, "cross_sample_negatives": 0, "latent_temp": (2.0, 0.5, 0.999995),
    "mask_prob": 0.65, "mask_length": 10, "no_mask_overlap": False, "mask_channel_prob": 0.0,
    "mask_channel_length": 10,
}
# Options that change the architecture in ways we do not implement: (key, the value we support).
UNSUPPORTED = (("activation_fn", "gelu"), ("layer_type", "transformer"), ("pos_conv_depth", 1),
               ("quantize_input", False), ("target_glu", False), ("quantizer_depth", 1))


def parse_conv_layers(spec: str) -> tuple[tuple[int, int, int], ...]:
    """fairseq `conv_feature_layers` ("[(512, 10, 5)] + [(512, 3, 2)] * 4 + ...") without eval."""
    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [value(e) for e in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ConversionError(f"conv_feature_layers: unsupported expression {ast.dump(node)[:80]}")

    try:
        layers = value(ast.parse(spec, mode="eval").body)
    except SyntaxError as exc:
        raise ConversionError(f"conv_feature_layers {spec!r} is not a list expression") from exc
    if not isinstance(layers, list) or not all(isinstance(x, list) and len(x) == 3 for x in layers):
        raise ConversionError(f"conv_feature_layers {spec!r} is not a list of (dim, kernel, stride)")
    return tuple((int(d), int(k), int(s)) for d, k, s in layers)


def config_from_fairseq(cfg: dict[str, Any]) -> PretrainConfig:
    """Our `PretrainConfig` from a fairseq checkpoint's `cfg` (pretrained or fine-tuned)."""
    model_cfg = _as_dict(cfg.get("model"), "cfg['model']")
    pre = model_cfg.get("w2v_args")
    if pre is not None:  # fine-tuned: the architecture is the pretraining config
        pre = _as_dict(pre, "cfg['model']['w2v_args']")
        arch, task, criterion = pre.get("model", pre), pre.get("task", pre), pre.get("criterion") or {}
    else:
        arch, task, criterion = model_cfg, cfg.get("task") or {}, cfg.get("criterion") or {}
    name = arch.get("_name", arch.get("arch", "wav2vec2"))
    if name != "wav2vec2":
        raise ConversionError(f"fairseq model '{name}' is not wav2vec 2.0 (expected _name 'wav2vec2')")
    c = {**FAIRSEQ_DEFAULTS, **{k: v for k, v in arch.items() if v is not None}}
    for key, want in UNSUPPORTED:
        if c[key] != want:
            raise ConversionError(f"fairseq option {key}={c[key]!r} is not supported (we implement {want!r})")
    final_dim = c["final_dim"] if c["final_dim"] > 0 else c["encoder_embed_dim"]
    modes = {"default": "group_norm", "layer_norm": "layer_norm"}
    model = ModelConfig(
        conv_layers=parse_conv_layers(c["conv_feature_layers"]),
        extractor_mode=modes.get(c["extractor_mode"], c["extractor_mode"]),
        conv_bias=bool(c["conv_bias"]), feature_grad_mult=float(c["feature_grad_mult"]),
        embed_dim=c["encoder_embed_dim"], num_layers=c["encoder_layers"], ffn_dim=c["encoder_ffn_embed_dim"],
        num_heads=c["encoder_attention_heads"], layer_norm_first=bool(c["layer_norm_first"]),
        dropout=float(c["dropout"]), attention_dropout=float(c["attention_dropout"]),
        activation_dropout=float(c["activation_dropout"]), layerdrop=float(c["encoder_layerdrop"]),
        dropout_input=float(c["dropout_input"]), dropout_features=float(c["dropout_features"]),
        conv_pos=c["conv_pos"], conv_pos_groups=c["conv_pos_groups"], quantize_targets=bool(c["quantize_targets"]),
        latent_groups=c["latent_groups"], latent_vars=c["latent_vars"], latent_dim=c["latent_dim"],
        final_dim=final_dim, codebook_init="uniform",
    )
    masking = MaskingConfig(
        mask_prob=round_prob(c["mask_prob"] / c["mask_length"]), mask_length=c["mask_length"], min_masks=2,
        no_overlap=bool(c["no_mask_overlap"]),
        channel_prob=round_prob(c["mask_channel_prob"] / max(1, c["mask_channel_length"])),
        channel_length=max(1, c["mask_channel_length"]),
    )
    temp = list(_literal(c["latent_temp"]))
    weights = list(_literal(criterion.get("loss_weights") or arch.get("loss_weights") or [0.1, 10.0])) + [0.0, 0.0]
    loss = LossConfig(
        num_negatives=c["num_negatives"], cross_sample_negatives=c["cross_sample_negatives"],
        logit_temp=float(c["logit_temp"]), diversity_weight=float(weights[0]),
        feature_penalty_weight=float(weights[1]), temp_start=float(temp[0]), temp_end=float(temp[1]),
        temp_decay=float(temp[2]),
    )
    top_task = cfg.get("task") or {}
    data = dataclasses.replace(
        DataConfig(), normalize=bool(top_task.get("normalize", task.get("normalize", False))),
        sample_rate=int(top_task.get("sample_rate", task.get("sample_rate", 16000))))
    return PretrainConfig(model=model, masking=masking, loss=loss, data=data).validate()


def from_fairseq(path: str | Path, ckpt: dict[str, Any] | None = None) -> Converted:
    """Map a fairseq wav2vec 2.0 `.pt` (pretrained or CTC fine-tuned) onto our model.

    Pretrained -> our `Wav2Vec2ForPreTraining`; fine-tuned -> our `Wav2Vec2Model` with `ctc_head`
    (w2v_encoder.proj) and `vocab` when a fairseq `dict.ltr.txt` lies beside the file.
    `ckpt` is the already loaded file (load_foreign reads it once).
    """
    path = Path(path)
    ckpt = load_pt(path) if ckpt is None else ckpt
    if "model" not in ckpt:
        raise ConversionError(f"{path}: no 'model' weights; not a fairseq checkpoint")
    if ckpt.get("cfg") is None:
        raise ConversionError(f"{path}: no 'cfg' config (old fairseq files keep a Namespace in 'args'); re-save "
                              "it with the script in aiot_w2v2.convert.common.RESAVE_SCRIPT")
    cfg = config_from_fairseq(_as_dict(ckpt["cfg"], "cfg"))
    weights: dict[str, Tensor] = ckpt["model"]
    head = None
    if any(k.startswith(FINETUNED_PREFIX) for k in weights):
        head = {k[len(CTC_HEAD):]: v.float() for k, v in weights.items() if k.startswith(CTC_HEAD)} or None
        others = [k for k in weights if not k.startswith((FINETUNED_PREFIX, CTC_HEAD))]
        if others:
            raise ConversionError(f"{path}: weights we cannot place: {others[:6]} (supported: Wav2VecCtc)")
        weights = {k[len(FINETUNED_PREFIX):]: v for k, v in weights.items() if k.startswith(FINETUNED_PREFIX)}
    state, unmatched = rename_keys(weights, FAIRSEQ_TO_OURS)
    if unmatched:
        raise ConversionError(f"{path}: weights we cannot place: {unmatched[:6]}")
    kind = "pretraining" if "final_proj.weight" in state and head is None else "encoder"
    if kind == "encoder":  # fine-tuning removes the pretraining head; drop leftovers if any
        state = {k: v for k, v in state.items() if k.startswith("wav2vec2.")}
    model = build_model(cfg, state, kind, str(path))
    history = ckpt.get("optimizer_history") or [{}]
    step = int(history[-1].get("num_updates", 0)) if isinstance(history[-1], dict) else 0
    return Converted(model, cfg, kind, ctc_head=head, vocab=_read_dict(path, head), step=step if head is None else 0,
                     source_format="fairseq")


def is_fairseq_checkpoint(ckpt: dict[str, Any]) -> bool:
    return "model" in ckpt and ("cfg" in ckpt or "args" in ckpt)


def _read_dict(path: Path, head: dict[str, Tensor] | None) -> list[str] | None:
    """fairseq Dictionary order: <s>, <pad>, </s>, <unk>, then the lines of dict.ltr.txt."""
    dict_path = path.with_name("dict.ltr.txt")
    if head is None:
        return None
    if not dict_path.exists():  # the published dict.ltr.txt when the head has its size (warned)
        return published_vocab("fairseq", path, head)
    tokens = ["<s>", "<pad>", "</s>", "<unk>"]
    tokens += [line.split()[0] for line in dict_path.read_text().splitlines() if line.strip()]
    if len(tokens) != head["weight"].shape[0]:
        log.warning("%s: %d tokens for %d CTC outputs; vocab left out", dict_path, len(tokens), head["weight"].shape[0])
        return None
    return tokens


def _literal(value: Any) -> Any:
    """Old argparse configs keep tuples and lists as strings ("(2,0.5,0.999995)"); read them as literals."""
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError) as exc:
            raise ConversionError(f"fairseq config value {value!r} is not a literal") from exc
    return value


def _as_dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConversionError(f"fairseq {where} is a {type(value).__name__}, expected a plain dict")
    return value
