"""aiot-w2v2: wav2vec 2.0 pretraining on machine audio, anomaly scoring, and the ASR path.

Public API:
    model = aiot_w2v2.load_model(path)   # our checkpoint, a Hugging Face folder or a fairseq .pt
    out = model(waveform, padding_mask=None)            # pretraining forward (loss, losses, ...)
    states = model.extract_features(waveform, padding_mask=None)   # every layer's hidden states
    asr = aiot_w2v2.load_model(ctc_path)   # a CTC model: ours (kind "ctc"), HF Wav2Vec2ForCTC, fairseq fine-tuned
    logits = asr(waveform, padding_mask=None).logits    # [batch, frames, vocab]; asr.vocab lists the tokens
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


def load_model(path: str | Path, map_location: str = "cpu"):
    """Load our checkpoint folder, a Hugging Face `save_pretrained` folder, or a fairseq `.pt` file.

    CTC models (our fine-tuned checkpoints; HF `Wav2Vec2ForCTC` folders with vocab.json; fairseq
    fine-tuned `.pt` files with dict.ltr.txt beside them) come back as `asr.Wav2Vec2ForCTC`.

    fairseq files are read with `torch.load(weights_only=True)`; nothing is unpickled.
    """
    from . import checkpoint

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no model at {p}")
    if checkpoint.is_checkpoint(p):
        return checkpoint.load_pretrained(p, map_location)
    from . import convert

    return convert.load_foreign(p, map_location)


__all__ = ["load_model", "__version__"]
