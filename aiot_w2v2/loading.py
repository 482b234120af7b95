"""One way in for every model file: what `aiot_w2v2.load_model` and `load_ctc_model` return for a path.

    load_model(path)       our checkpoint folder (pretraining, encoder, CTC), an HF folder or a fairseq /
                           torchaudio .pt  -> the model it describes, in eval mode
    load_foreign(path)     the same for a foreign path only
    load_ctc_model(path)   a CTC model (a fine-tuning run folder too), or a clear error saying why not

Imports go one way: this module sits above `checkpoint` (our format), `convert` (foreign formats)
and `asr.ctc_model` (the CTC model) and dispatches to them; none of them imports this module, and
`checkpoint` knows nothing of CTC models (`tests/test_loading.py` checks the import graph).
A CTC checkpoint never comes back as a bare encoder: without its vocabulary it is an error that
names the missing file.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from . import checkpoint
from .asr.ctc_model import Wav2Vec2ForCTC, ctc_from_checkpoint, ctc_from_converted
from .asr.vocab import VocabularyError
from .convert import read_foreign
from .convert.common import missing_vocab_message
from .model import Wav2Vec2ForPreTraining


def load_model(path: str | Path, map_location: str = "cpu") -> nn.Module:
    """Our checkpoint folder, a Hugging Face `save_pretrained` folder, or a fairseq / torchaudio `.pt`.

    Pretraining checkpoints -> `Wav2Vec2ForPreTraining`; encoder-only ones -> `Wav2Vec2Model`; CTC
    models (ours, kind "ctc"; converted ones with `ctc_head.safetensors` + `vocab.json`; HF
    `Wav2Vec2ForCTC`; fairseq fine-tuned) -> `asr.Wav2Vec2ForCTC`. fairseq files are read with
    `torch.load(weights_only=True)`; nothing is unpickled.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no model at {p}")
    if checkpoint.is_checkpoint(p):
        meta, cfg = checkpoint.read_config(p)
        if checkpoint.is_ctc(meta):
            return ctc_from_checkpoint(p, meta, cfg, map_location)
        return checkpoint.load_pretrained(p, map_location)
    return load_foreign(p, map_location)


def load_foreign(path: str | Path, map_location: str = "cpu") -> nn.Module:
    """Our model for a foreign checkpoint, in eval mode: `Wav2Vec2ForPreTraining` for pretraining
    sources, `asr.Wav2Vec2ForCTC` for CTC ones, `Wav2Vec2Model` for encoder-only ones.

    A CTC head whose vocabulary is unknown (no vocab.json / dict.ltr.txt, and a head size that is not
    the published letter vocabulary's) is a `VocabularyError`; `convert.load_foreign_ctc` still
    returns the encoder and the head separately.
    """
    conv = read_foreign(path)
    if conv.ctc_head is not None:
        if conv.vocab is None:
            raise VocabularyError(missing_vocab_message(conv.source_format, Path(path), conv.ctc_head))
        return ctc_from_converted(conv, path).to(map_location)
    if isinstance(conv.model, Wav2Vec2ForPreTraining):
        conv.model.set_num_updates(conv.step)
    return conv.model.to(map_location).eval()


def load_ctc_model(path: str | Path, map_location: str = "cpu") -> Wav2Vec2ForCTC:
    """A CTC model from our checkpoint (a fine-tuning run folder, its checkpoint, or a converted CTC
    model), an HF `Wav2Vec2ForCTC` folder or a fairseq fine-tuned `.pt` (+ dict.ltr.txt)."""
    p = checkpoint.resolve_run(path, ("checkpoint_best", "checkpoint_last"))  # a run folder
    model = load_model(p, map_location)
    if isinstance(model, Wav2Vec2ForCTC):
        return model
    raise VocabularyError(f"{path}: a {type(model).__name__}, not a CTC model (fine-tune it: aiot-w2v2 asr finetune)")


__all__ = ["load_ctc_model", "load_foreign", "load_model"]
