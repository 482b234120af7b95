"""Conversions between our wav2vec 2.0 and the reference implementations.

    read_foreign(path)            -> Converted   HF folder | fairseq .pt | torchaudio {"config","state_dict"} .pt
    load_foreign_ctc(path)        -> (Wav2Vec2Model, ctc_head, vocab)   HF Wav2Vec2ForCTC / fairseq Wav2VecCtc
    convert(src, fmt, out)        -> our checkpoint folder (kind "pretraining" or "encoder")
    export_hf(ckpt_dir, out_dir)  -> HF save_pretrained folder
    from_hf / to_hf / from_fairseq / from_torchaudio: the per-source mappings (hf.py, fairseq.py, torchaudio.py)

A source with a quantizer head (HF `Wav2Vec2ForPreTraining`, fairseq pretrained) becomes our
`Wav2Vec2ForPreTraining`; an encoder-only source our `Wav2Vec2Model`; a CTC source encoder + head +
vocab (`load_foreign_ctc`; `convert` writes `ctc_head.safetensors` + `vocab.json` beside the encoder).
`aiot_w2v2.loading` (above this package) turns them into models, a CTC source into
`asr.Wav2Vec2ForCTC`. A CTC head without its vocabulary file gets the published letter vocabulary
when its size is that vocabulary's (with a warning; `common.published_vocab`), else `convert` refuses
it, naming the missing file. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor

from .. import checkpoint
from ..model import Wav2Vec2Model
from .common import ConversionError, Converted, load_pt, missing_vocab_message
from .fairseq import from_fairseq, is_fairseq_checkpoint
from .hf import from_hf, to_hf
from .torchaudio import from_torchaudio, is_torchaudio_checkpoint

FORMATS = ("hf", "fairseq", "torchaudio")
EXPECTED = ("our checkpoint folder (config.json with format 'aiot-w2v2'), a Hugging Face save_pretrained folder "
            "(config.json with model_type 'wav2vec2'), a fairseq wav2vec 2.0 .pt file, or a torchaudio .pt file "
            "{'config': wav2vec2_model arguments, 'state_dict': ...}")


def read_foreign(path: str | Path) -> Converted:
    """Recognise a foreign model by what `path` is and map it onto ours."""
    p = Path(path)
    if p.is_dir():
        config = p / "config.json"
        if not config.exists():
            raise ValueError(f"{p}: a folder without config.json; expected {EXPECTED}")
        model_type = json.loads(config.read_text()).get("model_type")
        if model_type != "wav2vec2":
            raise ValueError(f"{p}: config.json has model_type {model_type!r}; expected {EXPECTED}")
        return from_hf(p)
    if p.is_file() and p.suffix in (".pt", ".pth"):
        ckpt = load_pt(p)
        if is_torchaudio_checkpoint(ckpt):
            return from_torchaudio(p, ckpt)
        if is_fairseq_checkpoint(ckpt):
            return from_fairseq(p, ckpt)
        raise ValueError(f"{p}: a torch file with keys {sorted(ckpt)[:8]}; expected {EXPECTED}")
    raise ValueError(f"{p}: not a model we recognise; expected {EXPECTED}")


def load_foreign_ctc(path: str | Path, map_location: str = "cpu") -> tuple[Wav2Vec2Model, dict[str, Tensor],
                                                                           list[str] | None]:
    """(encoder, CTC head {"weight": (V, D), "bias": (V,)}, vocab or None) of a CTC checkpoint.

    logits = encoder(waveform) @ head["weight"].T + head["bias"]; vocab[i] is output i's token
    (HF vocab.json, or fairseq dict.ltr.txt beside the .pt).
    """
    conv = read_foreign(path)
    if conv.ctc_head is None:
        raise ValueError(f"{path}: no CTC head (expected HF Wav2Vec2ForCTC, fairseq Wav2VecCtc or torchaudio with aux)")
    head = {k: v.to(map_location) for k, v in conv.ctc_head.items()}
    return conv.model.to(map_location), head, conv.vocab


def convert(src: str | Path, src_format: str, out: str | Path) -> Path:
    """Convert `src` (format "hf" | "fairseq" | "torchaudio") into our checkpoint folder `out`.

    Pretraining sources are saved with kind "pretraining", the others with kind "encoder";
    a CTC head goes to `ctc_head.safetensors` + `vocab.json` beside the weights. A CTC head whose
    vocabulary is unknown is refused (`ConversionError` naming the missing file).
    """
    readers = {"hf": from_hf, "fairseq": from_fairseq, "torchaudio": from_torchaudio}
    if src_format not in readers:
        raise ValueError(f"unknown source format '{src_format}' (expected one of {', '.join(FORMATS)})")
    conv = readers[src_format](Path(src))
    if conv.ctc_head is not None and conv.vocab is None:
        raise ConversionError(missing_vocab_message(src_format, Path(src), conv.ctc_head))
    meta = {"converted_from": {"format": src_format, "path": str(src)}, "step": conv.step, "notes": conv.notes}
    extra: dict[str, object] = {}
    if conv.ctc_head is not None:
        extra["ctc_head.safetensors"] = conv.ctc_head
        meta["ctc_head"] = "ctc_head.safetensors"
        extra["vocab.json"] = conv.vocab
    return checkpoint.save_pretrained(conv.model, conv.config, out, kind=conv.kind, extra_files=extra, meta=meta)


def export_hf(ckpt_dir: str | Path, out_dir: str | Path) -> Path:
    """Our checkpoint -> a Hugging Face folder (`Wav2Vec2ForPreTraining`, or `Wav2Vec2Model` for kind "encoder")."""
    _, cfg = checkpoint.read_config(ckpt_dir)
    return to_hf(checkpoint.load_pretrained(ckpt_dir), out_dir, cfg)


__all__ = [
    "ConversionError", "Converted", "convert", "export_hf", "from_fairseq", "from_hf", "from_torchaudio",
    "load_foreign_ctc", "read_foreign", "to_hf",
]
