"""The model a CTC fine-tuning run starts from: `--init` (scratch, a pretrained or CTC checkpoint of
ours, HF or fairseq) or, on resume, the run's own last checkpoint, with the fine-tuning overrides of
`FinetuneConfig` applied (dropouts, LayerDrop, feature-gradient scale, masking, input normalisation).
Knows nothing about data or the training loop.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load_file

from .. import checkpoint
from ..config import ConfigError, ModelConfig, load_pretrain_config, to_dict
from ..convert import read_foreign
from ..loading import load_model
from ..model import Wav2Vec2ForPreTraining, Wav2Vec2Model
from .config import FinetuneConfig
from .ctc_model import Wav2Vec2ForCTC
from .vocab import Vocabulary, VocabularyError, letter_vocabulary, remap_head

RUN_CHECKPOINTS = ("checkpoint_last", "checkpoint_best")


def build_model(cfg: FinetuneConfig, init: str | Path) -> tuple[Wav2Vec2ForCTC, str]:
    """The CTC model to fine-tune, and a description of where its encoder came from.

    `init`: "scratch" (random encoder of `cfg.scratch_architecture`), a pretraining run folder or
    checkpoint (ours), an HF or fairseq model, or a CTC model (its head is kept when
    `ctc.reuse_head`, rows matched by token). Fine-tuning overrides (`cfg.encoder`) are applied.
    """
    vocabulary = letter_vocabulary(tuple(cfg.ctc.letters))
    head, normalize, what = None, False, str(init)
    if str(init) == "scratch":
        if cfg.encoder.feature_grad_mult == 0:
            warnings.warn("--init scratch with encoder.feature_grad_mult=0: the conv feature encoder stays random",
                          stacklevel=2)
        pcfg = load_pretrain_config(cfg.scratch_architecture)
        encoder, normalize = Wav2Vec2Model(pcfg.model), pcfg.data.normalize
        what = f"scratch ({cfg.scratch_architecture} architecture)"
    else:
        encoder, old_head, old_vocab, normalize = _load_init(Path(init))
        if old_head is not None and cfg.ctc.reuse_head:
            try:
                head = dict(zip(("weight", "bias"), remap_head(old_head["weight"], old_head["bias"], old_vocab,
                                                               vocabulary), strict=True))
            except VocabularyError as exc:
                raise VocabularyError(f"--init {init}: {exc}; set ctc.reuse_head=false to train a new head") from None
    if cfg.data.normalize is not None:
        if cfg.data.normalize != normalize and str(init) != "scratch":
            raise ConfigError(normalization_mismatch(str(init), normalize, cfg.data.normalize))
        normalize = cfg.data.normalize
    model_cfg = _with_overrides(encoder.config, cfg)
    model = Wav2Vec2ForCTC.from_encoder(encoder, vocabulary, head, cfg=model_cfg, masking=cfg.masking,
                                        final_dropout=cfg.ctc.final_dropout, normalize_input=normalize)
    return model, what


def normalization_mismatch(init: str, trained: bool, asked: bool) -> str:
    """Why fine-tuning refuses an input normalisation other than the init's, and the two ways out.

    One rule from pretraining through fine-tuning to evaluation: the encoder sees the input
    statistics it learned on. Per-utterance normalisation changes the scale by orders of magnitude
    (the espeak-ng corpora have an RMS near 0.007), and the `tiny` feature extractor (layer norm with
    conv bias) is not scale-invariant: a pretrained encoder fed the other statistics fine-tuned to an
    all-blank CTC output for 1500 updates (issue 15).
    """
    how = "normalised per utterance (zero mean, unit variance)" if trained else "as recorded (not normalised)"
    fix = f"pretrain with `--set data.normalize={str(asked).lower()}`, as the fine-tuning config expects"
    return (f"--init {init} was trained on waveforms {how} (data.normalize={str(trained).lower()}), but the "
            f"fine-tuning config sets data.normalize={str(asked).lower()}: the encoder would see input statistics "
            f"it never learned on. Either {fix}, or fine-tune with `--set data.normalize=null` to keep the init's "
            "setting (fine-tuning and evaluation then use it).")


def _load_init(path: Path) -> tuple[Wav2Vec2Model, dict | None, Vocabulary | None, bool]:
    """(encoder, CTC head or None, its vocabulary, whether inputs are normalised) of a checkpoint."""
    path = checkpoint.resolve_run(path, RUN_CHECKPOINTS)  # a run folder (pretraining or fine-tuning)
    if not path.exists():
        raise FileNotFoundError(f"--init {path}: no such checkpoint (or use --init scratch)")
    model = load_model(path)
    if checkpoint.is_checkpoint(path):
        normalize = checkpoint.read_config(path)[1].data.normalize
    elif isinstance(model, Wav2Vec2ForCTC):
        normalize = model.normalize_input
    else:
        normalize = read_foreign(path).config.data.normalize
    if isinstance(model, Wav2Vec2ForCTC):
        head = {"weight": model.lm_head.weight.detach(), "bias": model.lm_head.bias.detach()}
        return model.wav2vec2, head, model.vocabulary, normalize
    if isinstance(model, Wav2Vec2ForPreTraining):
        return model.wav2vec2, None, None, normalize
    return model, None, None, normalize


def _with_overrides(model_cfg: ModelConfig, cfg: FinetuneConfig) -> ModelConfig:
    return dataclasses.replace(model_cfg, **asdict(cfg.encoder))


def model_from_checkpoint(last: Path, cfg: FinetuneConfig) -> Wav2Vec2ForCTC:
    """The model of a run's `checkpoint_last` (resume), rebuilt with the current config's overrides;
    warns when the config changed since the checkpoint was written."""
    meta, pcfg = checkpoint.read_config(last)
    if meta.get("kind") != "ctc":
        raise checkpoint.CheckpointError(f"{last}: not a CTC fine-tuning checkpoint (kind {meta.get('kind')!r})")
    saved = meta.get("finetune") or {}
    ours = to_dict(cfg)
    changed = sorted(f"{sec}.{k}" for sec in ours if isinstance(ours[sec], dict)
                     for k in ours[sec] if ours[sec][k] != (saved.get(sec) or {}).get(k))
    if changed:
        warnings.warn(f"resuming with a changed config ({', '.join(changed)}): not an exact continuation",
                      stacklevel=3)
    vocabulary = Vocabulary.from_dict(meta["ctc"]["vocabulary"])
    if vocabulary != letter_vocabulary(tuple(cfg.ctc.letters)):
        raise VocabularyError(f"{last}: the checkpoint's vocabulary differs from ctc.letters of the config")
    model = Wav2Vec2ForCTC(_with_overrides(pcfg.model, cfg), vocabulary, masking=cfg.masking,
                           final_dropout=cfg.ctc.final_dropout, normalize_input=pcfg.data.normalize)
    model.load_state_dict(load_file(str(last / checkpoint.WEIGHTS)))
    return model
