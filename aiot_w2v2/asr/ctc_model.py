"""`Wav2Vec2ForCTC`: the wav2vec 2.0 encoder + dropout + a linear CTC head over a character vocabulary.

In training mode the encoder's input is masked as in fairseq's fine-tuning (time spans replaced by
the learned mask embedding, then channel spans zeroed), LayerDrop and the dropouts of the encoder
config apply, and `freeze_encoder(True)` runs the whole encoder without gradients so that only the
head trains (fairseq's freeze_finetune_updates). In eval mode nothing is masked or dropped.

Also here: building the model from our checkpoints (kind "ctc", or a converted "encoder" with a CTC
head beside it) and from converted foreign CTC sources (HF `Wav2Vec2ForCTC` folders, fairseq
fine-tuned `.pt`); `aiot_w2v2.loading` decides which applies (this module imports neither `loading`
nor `convert`). The module knows nothing about data, decoding or training loops.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from ..checkpoint import WEIGHTS, CheckpointError
from ..config import MaskingConfig, ModelConfig, PretrainConfig
from ..model import Wav2Vec2Model, compute_span_mask
from .vocab import Vocabulary, VocabularyError, from_hf_vocab, infer_vocabulary

log = logging.getLogger(__name__)

NO_MASKING = MaskingConfig(mask_prob=0.0, channel_prob=0.0)


@dataclass
class CTCOutput:
    logits: Tensor  # (B, T, V) scores before log-softmax
    lengths: Tensor  # (B,) valid frames of each clip
    padding_mask: Tensor | None  # (B, T) True = padding frame; None when nothing is padded
    mask: Tensor | None  # (B, T) frames masked in training; None in eval mode


class Wav2Vec2ForCTC(nn.Module):
    """Encoder (`Wav2Vec2Model`) -> final dropout -> `lm_head` Linear(embed_dim, len(vocab)).

    `vocab` lists the output tokens (`vocabulary.blank` is the CTC blank). `normalize_input` says
    whether waveforms must be normalised per utterance (zero mean, unit variance) before `forward`,
    as the model was trained (fairseq/HF `normalize`); the data pipeline does it, not the model.
    """

    def __init__(self, cfg: ModelConfig, vocabulary: Vocabulary, *, masking: MaskingConfig | None = None,
                 final_dropout: float = 0.0, normalize_input: bool = False) -> None:
        super().__init__()
        self.config = cfg
        self.vocabulary = vocabulary
        self.masking = masking or NO_MASKING
        self.final_dropout = final_dropout
        self.normalize_input = normalize_input
        self.encoder_frozen = False
        self.wav2vec2 = Wav2Vec2Model(cfg)
        self.dropout = nn.Dropout(final_dropout)
        self.lm_head = nn.Linear(cfg.embed_dim, len(vocabulary))
        nn.init.xavier_uniform_(self.lm_head.weight)  # fairseq's Linear for the CTC projection
        nn.init.zeros_(self.lm_head.bias)

    @property
    def vocab(self) -> list[str]:
        """The token of each output (the contract's `asr.vocab`)."""
        return list(self.vocabulary.tokens)

    def freeze_encoder(self, frozen: bool) -> None:
        """While frozen (and training), the encoder runs without gradients: only the head learns."""
        self.encoder_frozen = frozen

    def num_frames(self, lengths: Tensor) -> Tensor:
        return self.wav2vec2.num_frames(lengths)

    def extract_features(self, waveform: Tensor, padding_mask: Tensor | None = None, *,
                         num_layers: int | None = None) -> list[Tensor]:
        """The encoder's hidden states (see `Wav2Vec2Model.extract_features`), unmasked."""
        return self.wav2vec2.extract_features(waveform, padding_mask, num_layers=num_layers)

    def forward(self, waveform: Tensor, padding_mask: Tensor | None = None, *,
                generator: torch.Generator | None = None) -> CTCOutput:
        """waveform (B, S) float at 16 kHz; padding_mask (B, S) bool, True = padding."""
        w2v = self.wav2vec2
        train_encoder = not (self.training and self.encoder_frozen)
        with torch.set_grad_enabled(torch.is_grad_enabled() and train_encoder):
            enc = w2v.encode(waveform, padding_mask)
            x, mask = enc.projected, None  # (B, T, D)
            if self.training:
                x, mask = self._mask(x, enc.padding_mask, generator)
            x = w2v.encoder(x, enc.padding_mask, generator=generator)[-1]  # (B, T, D)
        logits = self.lm_head(self.dropout(x))  # (B, T, V)
        B, T = logits.shape[:2]
        if enc.padding_mask is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=logits.device)
        else:
            lengths = (~enc.padding_mask).sum(1)
        return CTCOutput(logits, lengths, enc.padding_mask, mask)

    def _mask(self, x: Tensor, frame_padding: Tensor | None,
              generator: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
        """fairseq apply_mask: time spans -> mask_emb, then channel spans -> 0 (same channels every frame)."""
        m = self.masking
        B, T, C = x.shape
        mask = None
        if m.mask_prob > 0:
            lengths = None if frame_padding is None else (~frame_padding).sum(1)
            mask = compute_span_mask((B, T), m.mask_prob, m.mask_length, lengths=lengths, min_masks=m.min_masks,
                                     no_overlap=m.no_overlap, generator=generator, device=x.device)
            x = torch.where(mask[..., None], self.wav2vec2.mask_emb.to(x.dtype), x)
        if m.channel_prob > 0:
            channels = compute_span_mask((B, C), m.channel_prob, m.channel_length, generator=generator,
                                         device=x.device)  # (B, C)
            x = x.masked_fill(channels[:, None, :], 0.0)
        return x, mask

    # ------------------------------------------------------------------------------------------
    # building

    @classmethod
    def from_encoder(cls, encoder: Wav2Vec2Model, vocabulary: Vocabulary, head: dict[str, Tensor] | None = None,
                     cfg: ModelConfig | None = None, **kwargs: Any) -> Wav2Vec2ForCTC:
        """A CTC model with `encoder`'s weights (copied) and `head` {"weight", "bias"} or a new head.

        `cfg` replaces the encoder's config where only dropouts, LayerDrop or the gradient scale
        differ (fine-tuning overrides); the architecture must be the same.
        """
        model = cls(cfg or encoder.config, vocabulary, **kwargs)
        model.wav2vec2.load_state_dict(encoder.state_dict())
        if head is not None:
            check_head(head, vocabulary, "the CTC head")
            model.lm_head.load_state_dict({"weight": head["weight"], "bias": head["bias"]})
        return model


def check_head(head: dict[str, Tensor], vocabulary: Vocabulary, where: str) -> None:
    rows = head["weight"].shape[0]
    if rows != len(vocabulary):
        raise VocabularyError(f"{where} has {rows} outputs but its vocabulary {len(vocabulary)} tokens "
                              f"({' '.join(vocabulary.tokens[:8])} ...): the vocabulary does not match the model")


def ctc_pretrain_config(model: Wav2Vec2ForCTC, sample_rate: int = 16000) -> PretrainConfig:
    """The `PretrainConfig` a CTC checkpoint stores: the encoder architecture, the fine-tuning
    masking, and the input normalisation."""
    from ..config import DataConfig

    return PretrainConfig(model=model.config, masking=model.masking,
                          data=DataConfig(sample_rate=sample_rate, normalize=model.normalize_input))


def ctc_meta(model: Wav2Vec2ForCTC) -> dict[str, Any]:
    """What `config.json` of a kind "ctc" checkpoint holds beside the config."""
    return {"ctc": {"vocabulary": model.vocabulary.to_dict(), "final_dropout": model.final_dropout}}


def ctc_from_checkpoint(path: Path, meta: dict[str, Any], cfg: PretrainConfig,
                        map_location: str | torch.device = "cpu") -> Wav2Vec2ForCTC:
    """Our checkpoint folder -> `Wav2Vec2ForCTC` in eval mode.

    kind "ctc": weights of the whole model, vocabulary in config.json; kind "encoder" with
    `ctc_head.safetensors` + `vocab.json` (a converted HF/fairseq CTC model).
    """
    state = load_file(str(path / WEIGHTS), device=str(map_location))
    if meta.get("kind") == "ctc":
        try:
            vocabulary = Vocabulary.from_dict(meta["ctc"]["vocabulary"])
        except (KeyError, TypeError, VocabularyError) as exc:
            raise CheckpointError(f"{path}: config.json has no valid CTC vocabulary ({exc})") from exc
        final_dropout = float(meta["ctc"].get("final_dropout", 0.0))
    else:
        vocab_path = path / "vocab.json"
        if not vocab_path.exists():
            raise CheckpointError(f"{path}: a CTC head ({meta['ctc_head']}) but no vocab.json beside it; "
                                  "convert the source again (convert now refuses a CTC model without its vocabulary)")
        head = load_file(str(path / meta["ctc_head"]), device=str(map_location))
        vocabulary = infer_vocabulary(json.loads(vocab_path.read_text()))
        state = {"wav2vec2." + k: v for k, v in state.items()} | {"lm_head." + k: v for k, v in head.items()}
        final_dropout = 0.0
    if "lm_head.weight" in state:
        try:
            check_head({"weight": state["lm_head.weight"]}, vocabulary, f"{path}: the checkpoint's CTC head")
        except VocabularyError as exc:
            raise CheckpointError(str(exc)) from None
    model = Wav2Vec2ForCTC(cfg.model, vocabulary, masking=cfg.masking, final_dropout=final_dropout,
                           normalize_input=cfg.data.normalize)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "wav2vec2.mask_emb"]  # converted sources may lack it
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the config (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    return model.to(map_location).eval()


def ctc_from_converted(conv: Any, source: str | Path) -> Wav2Vec2ForCTC:
    """A `convert.Converted` with a CTC head and vocab (HF Wav2Vec2ForCTC, fairseq Wav2VecCtc) -> ours."""
    if conv.ctc_head is None:
        raise VocabularyError(f"{source}: no CTC head (expected HF Wav2Vec2ForCTC or a fairseq fine-tuned .pt)")
    if conv.vocab is None:
        raise VocabularyError(
            f"{source}: a CTC model without its vocabulary; put the tokens beside it (fairseq: the dict.ltr.txt "
            "the model was trained with, e.g. https://dl.fbaipublicfiles.com/fairseq/wav2vec/dict.ltr.txt for "
            "the LibriSpeech models; Hugging Face: vocab.json)")
    vocabulary = _foreign_vocabulary(conv.vocab, Path(source))
    return Wav2Vec2ForCTC.from_encoder(conv.model, vocabulary, conv.ctc_head, masking=NO_MASKING,
                                       normalize_input=conv.config.data.normalize).eval()


def _foreign_vocabulary(tokens: list[str], source: Path) -> Vocabulary:
    """HF folders name their blank in config.json (pad_token_id); fairseq's is `<s>` (or `<ctc_blank>`)."""
    if source.is_dir() and (source / "vocab.json").exists():
        hf_cfg = json.loads((source / "config.json").read_text())
        return from_hf_vocab(json.loads((source / "vocab.json").read_text()), hf_cfg.get("pad_token_id"))
    return infer_vocabulary(tokens)

