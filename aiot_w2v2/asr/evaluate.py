"""Offline ASR evaluation: a CTC model + a decoder over a manifest -> WER / CER and the files behind them.

`transcribe` runs the model in eval mode over a loader and decodes every utterance (also used for
validation during fine-tuning); `evaluate` adds scoring and writes, into `DIR`:

- `metrics.json`: {"wer", "cer", "utterances", words and the error breakdown, model, subsets, decoder}
  (the contract's keys first);
- `hypotheses.txt`: "ID HYPOTHESIS" lines, as LibriSpeech's trans.txt;
- `utterances.csv`: id, reference, hypothesis, and each utterance's word and character errors.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .ctc_model import Wav2Vec2ForCTC
from .dataset import TranscribedDataset, make_asr_loader, prepare_transcripts
from .decode import BeamSearchDecoder, GreedyDecoder
from .wer import Scores, score

METRICS_JSON = "metrics.json"
HYPOTHESES_TXT = "hypotheses.txt"
UTTERANCES_CSV = "utterances.csv"


@dataclass
class Transcripts:
    ids: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    hypotheses: list[str] = field(default_factory=list)
    loss_sum: float = 0.0  # summed CTC loss (nats) over the utterances
    audio_seconds: float = 0.0


@torch.inference_mode()
def transcribe(model: Wav2Vec2ForCTC, loader: Any, decoder: GreedyDecoder | BeamSearchDecoder,
               device: torch.device | str = "cpu", progress: bool = False, desc: str = "decode") -> Transcripts:
    """Decode every batch of `loader` (a `make_asr_loader` loader); the model is put in eval mode."""
    was_training = model.training
    model.eval()
    out = Transcripts()
    blank = model.vocabulary.blank
    sample_rate = loader.dataset.audio.sample_rate
    try:
        for batch in tqdm(loader, disable=not progress, desc=desc, unit="batch", dynamic_ncols=True, leave=False):
            if batch is None:
                continue
            batch = batch.to(device)
            res = model(batch.audio.waveform, batch.audio.padding_mask)
            lprobs = F.log_softmax(res.logits.float(), dim=-1).transpose(0, 1)  # (T, B, V)
            out.loss_sum += float(F.ctc_loss(lprobs, batch.targets, res.lengths, batch.target_lengths, blank=blank,
                                             reduction="sum", zero_infinity=True))
            out.hypotheses.extend(decoder(res.logits, res.lengths))
            out.ids.extend(batch.ids)
            out.references.extend(batch.texts)
            out.audio_seconds += float(batch.audio.lengths.sum()) / sample_rate
    finally:
        model.train(was_training)
    return out


@dataclass
class EvalResult:
    scores: Scores
    transcripts: Transcripts
    seconds: float

    def format(self) -> str:
        s = self.scores
        rtf = self.seconds / max(self.transcripts.audio_seconds, 1e-9)
        return "\n".join([
            f"WER {100 * s.wer:.2f} %   CER {100 * s.cer:.2f} %   ({s.utterances} utterances, {s.words} words)",
            f"  word errors {s.word_errors}: {s.substitutions} substitutions, {s.deletions} deletions, "
            f"{s.insertions} insertions",
            f"  decoded {self.transcripts.audio_seconds:.0f} s of audio in {self.seconds:.1f} s (real-time factor "
            f"{rtf:.3f})",
        ])


def evaluate(model: Wav2Vec2ForCTC, manifest: pd.DataFrame, decoder: GreedyDecoder | BeamSearchDecoder, *,
             out: str | Path | None = None, batch_seconds: float = 200.0, device: str = "cpu",
             progress: bool = True, meta: dict[str, Any] | None = None) -> EvalResult:
    """Score `model` on the utterances of `manifest` (columns id, path, transcript); write `out` if given.

    Transcripts are normalised for the model's vocabulary; characters it cannot spell are an error.
    """
    t0 = time.monotonic()
    df = prepare_transcripts(manifest, model.vocabulary, on_unknown="error")
    dataset = TranscribedDataset(df, model.vocabulary, normalize=model.normalize_input)
    loader = make_asr_loader(dataset, batch_seconds, shuffle=False)
    model.to(device)
    tr = transcribe(model, loader, decoder, device, progress=progress)
    scores, per = score(tr.references, tr.hypotheses)
    result = EvalResult(scores, tr, time.monotonic() - t0)
    if out is not None:
        write_results(Path(out), result, per, meta or {})
    return result


def write_results(out: Path, result: EvalResult, per: list, meta: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    s, tr = result.scores, result.transcripts
    metrics = {"wer": s.wer, "cer": s.cer, "utterances": s.utterances,
               **{k: v for k, v in s.as_dict().items() if k not in ("wer", "cer", "utterances")},
               "loss_per_utterance": tr.loss_sum / max(s.utterances, 1), "audio_seconds": tr.audio_seconds,
               "seconds": result.seconds, **meta}
    (out / METRICS_JSON).write_text(json.dumps(metrics, indent=2))
    order = sorted(range(len(tr.ids)), key=lambda i: tr.ids[i])
    (out / HYPOTHESES_TXT).write_text("".join(f"{tr.ids[i]} {tr.hypotheses[i]}\n" for i in order))
    rows = [{"id": tr.ids[i], "reference": tr.references[i], "hypothesis": tr.hypotheses[i], **per[i].as_dict(),
             "wer": per[i].word_errors / per[i].words if per[i].words else float(per[i].word_errors > 0)}
            for i in order]
    pd.DataFrame(rows).to_csv(out / UTTERANCES_CSV, index=False)
