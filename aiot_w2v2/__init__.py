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

    CTC models (our fine-tuned checkpoints; HF `Wav2Vec2ForCTC` folders; fairseq fine-tuned `.pt`
    files) come back as `asr.Wav2Vec2ForCTC`, never as their bare encoder. `aiot_w2v2.loading` does
    the dispatch (imported here on first use: `import aiot_w2v2` stays light).

    fairseq files are read with `torch.load(weights_only=True)`; nothing is unpickled.
    """
    from .loading import load_model as load

    return load(path, map_location)


__all__ = ["load_model", "__version__"]
