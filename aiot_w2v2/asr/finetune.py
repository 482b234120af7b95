"""CTC fine-tuning: a (pretrained) wav2vec 2.0 + a new CTC head -> an ASR checkpoint, in one visible loop.

`finetune(cfg, train, valid, init, out)` builds the model from `init` (`build.py`: our pretraining run
or checkpoint, an HF/fairseq model, a CTC model to continue, or "scratch"), then runs fairseq's recipe:
the conv feature encoder frozen (`encoder.feature_grad_mult` 0), the whole encoder frozen for the
first `ctc.freeze_updates` updates, time and channel masking and LayerDrop in the encoder, Adam with
the tri-stage schedule, and the CTC loss computed in float32 outside autocast, summed over the
utterances of an update and divided by their number (fairseq `sentence_avg`). Batches hold up to
`data.max_batch_seconds` of padded audio. Every `valid.every` updates it decodes the valid set
greedily and logs WER/CER; the best model goes to `OUT/checkpoint_best`. A run whose final
validation hypotheses are (almost) all empty has not left CTC's all-blank phase: the summary says so,
with what to change (`all_blank_advice`); without the printed summary it is an `AllBlankWarning`.

Run folder: `metrics.csv` (+ TensorBoard `tb/`), `checkpoint_last/` (weights + training state for
`resume`, via `train/state.py`), `checkpoint_best/`, `summary.json`. Single process.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from .. import checkpoint
from ..config import to_dict
from ..train import normalize_gradients
from ..train import state as train_state
from ..train.metrics import MetricsLog
from ..train.pretrain import autocast_dtype, batch_stream, seed_everything
from ..train.schedule import tri_stage_lr
from .build import build_model, model_from_checkpoint
from .config import FinetuneConfig
from .ctc_model import ctc_meta, ctc_pretrain_config
from .dataset import TranscribedDataset, make_asr_loader, prepare_transcripts
from .decode import GreedyDecoder
from .evaluate import transcribe
from .wer import score

CHECKPOINT_BEST = "checkpoint_best"
SUMMARY_JSON = "summary.json"
COLUMNS = ("step", "epoch", "loss", "lr", "grad_norm", "frozen", "utterances", "updates_per_s", "audio_s_per_s",
           "valid_loss", "valid_wer", "valid_cer", "valid_empty", "wall_s")
# A final validation where at least this share of the hypotheses is empty: CTC still emits only blanks.
ALL_BLANK_SHARE = 0.95


@dataclass
class FinetuneSummary:
    """What a run did; also written to `OUT/summary.json`."""

    run_dir: str
    init: str
    steps: int
    start_step: int
    stopped_by: str  # "max_steps" | "max_minutes" | "stop_after"
    epoch: int
    first_loss: float
    final_loss: float
    valid_wer: float  # at the end (nan without a valid set)
    valid_cer: float
    valid_empty: float  # share of empty validation hypotheses at the end (nan without a valid set)
    best_wer: float
    best_step: int
    wall_seconds: float
    train_utterances: int
    train_hours: float
    valid_utterances: int
    device: str
    checkpoint: str

    @property
    def all_blank(self) -> bool:
        """The final validation decoded (almost) nothing: the model has not left the all-blank phase."""
        return math.isfinite(self.valid_empty) and self.valid_empty >= ALL_BLANK_SHARE

    def format(self) -> str:
        lines = [
            f"fine-tuning done: {self.steps} updates (this run {self.steps - self.start_step}, stopped by "
            f"{self.stopped_by}) in {self.wall_seconds:.1f} s on {self.device}",
            f"  init        {self.init}",
            f"  data        {self.train_utterances} training utterances ({self.train_hours:.2f} h), "
            f"{self.valid_utterances} valid",
            f"  CTC loss    {self.first_loss:.3f} -> {self.final_loss:.3f} per utterance",
            f"  valid       WER {100 * self.valid_wer:.2f} %  CER {100 * self.valid_cer:.2f} %   "
            f"(best WER {100 * self.best_wer:.2f} % at update {self.best_step})",
            f"  checkpoint  {self.checkpoint}",
        ]
        if self.all_blank:
            lines.append("  WARNING     " + all_blank_advice(self))
        return "\n".join(lines)


def all_blank_advice(s: FinetuneSummary) -> str:
    """What a run that still emits only blanks should change (clear text, for the summary and the warning)."""
    return (f"{100 * s.valid_empty:.0f} % of the {s.valid_utterances} validation hypotheses are empty after "
            f"{s.steps} updates: the CTC output is still all blank and this model is not usable. CTC first learns "
            "to emit only blanks and leaves that phase later on small data; give it more updates (optim.max_steps, "
            "and train.max_minutes if that stopped the run), a shorter ctc.freeze_updates, or a higher optim.lr. "
            "Check that --init was pretrained with the data.normalize the fine-tuning uses, and that its pretraining "
            "ran long enough (accuracy well above chance).")


class AllBlankWarning(UserWarning):
    """A fine-tuning run ended with (almost) only empty validation hypotheses."""


# ----------------------------------------------------------------------------------------------
# The loop


def finetune(cfg: FinetuneConfig, train: pd.DataFrame, valid: pd.DataFrame | None, init: str | Path,
             out: str | Path, *, resume: bool = False, progress: bool = True,
             stop_after: int | None = None) -> FinetuneSummary:
    """Fine-tune with CTC on `train` (a manifest: id, path, transcript, n_samples, sample_rate),
    validating on `valid`; write the run to `out`.

    Stops at `optim.max_steps` or after `train.max_minutes`, saving either way. `resume` continues
    `out/checkpoint_last` (the model is rebuilt from it; `init` is then not read). `stop_after`
    stops after that many updates of this call, like an interruption (tests).
    """
    t_start = time.monotonic()
    cfg.validate()
    run = Path(out)
    resume = train_state.claim_run_dir(run, resume)
    last = run / train_state.CHECKPOINT_LAST
    oc, tc = cfg.optim, cfg.train
    device = torch.device("cuda" if tc.device == "cuda" or (tc.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    amp_dtype = autocast_dtype(tc.amp, device)

    # Model and vocabulary (the same seed gives the same new head).
    torch.manual_seed(tc.seed)
    if resume:
        model, what = model_from_checkpoint(last, cfg), f"resumed from {last}"
    else:
        model, what = build_model(cfg, init)
    vocabulary = model.vocabulary
    model.to(device)

    # Data: transcripts normalised for the vocabulary; long/short training utterances left out.
    dur = train["n_samples"] / train["sample_rate"]
    train = train[(dur >= cfg.data.min_seconds) & (dur <= cfg.data.max_seconds)]
    train_set = TranscribedDataset(prepare_transcripts(train, vocabulary, cfg.data.unknown_chars), vocabulary,
                                   cfg.data.sample_rate, model.normalize_input)
    loader = make_asr_loader(train_set, cfg.data.max_batch_seconds, seed=tc.seed, num_buckets=cfg.data.num_buckets,
                             num_workers=cfg.data.num_workers)
    valid_loader = None
    if valid is not None:
        if cfg.valid.max_utterances and len(valid) > cfg.valid.max_utterances:
            valid = valid.sample(cfg.valid.max_utterances, random_state=tc.seed)
        valid_set = TranscribedDataset(prepare_transcripts(valid, vocabulary, "error"), vocabulary,
                                       cfg.data.sample_rate, model.normalize_input)
        valid_loader = make_asr_loader(valid_set, cfg.valid.max_batch_seconds, shuffle=False)
    decoder = GreedyDecoder(vocabulary)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=oc.lr, betas=oc.betas, eps=oc.eps, weight_decay=oc.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    generator = torch.Generator()  # masking and LayerDrop draw on the CPU
    seed_everything(tc.seed, 0, generator)

    step, epoch, batches_done, best = 0, 0, 0, {"wer": math.inf, "step": -1}
    if resume:
        saved = _load_state(last, optimizer, scaler, generator, device)
        step, epoch, batches_done, best = saved["step"], saved["epoch"], saved["batches_done"], saved["best"]
    start_step = step

    metrics = MetricsLog(run, tensorboard=tc.tensorboard, resume_step=step if resume else None, columns=COLUMNS)
    bar = tqdm(total=oc.max_steps, initial=step, disable=not progress, unit="upd", dynamic_ncols=True,
               desc="finetune")
    if resume and progress:
        tqdm.write(f"resuming {run} at update {step} (epoch {epoch}, batch {batches_done})")
    stream = batch_stream(loader, epoch, batches_done, 1, device)
    sums = {"loss": 0.0, "utts": 0, "audio": 0.0, "updates": 0, "grad_norm": 0.0}
    rows: list[dict[str, float]] = []
    valid_row: dict[str, float] = {}
    t_log = time.monotonic()
    stopped_by, saved_at = "max_steps", step if resume else -1

    def save(path: Path, with_state: bool) -> None:
        extra = None
        if with_state:
            progress_state = {"step": step, "epoch": epoch, "batches_done": batches_done, "world_size": 1,
                              "bad_clips": [[]], "best": best}
            extra = train_state.pack(progress_state, optimizer, scaler, [train_state.capture_rng(generator, device)])
        checkpoint.save_pretrained(model, ctc_pretrain_config(model, cfg.data.sample_rate), path, kind="ctc",
                                   extra_files=extra, meta={**ctc_meta(model), "finetune": to_dict(cfg),
                                                            "step": step, "epoch": epoch, "init": what})

    def validate() -> None:
        nonlocal valid_row
        if valid_loader is None:
            return
        tr = transcribe(model, valid_loader, decoder, device)
        scores, _ = score(tr.references, tr.hypotheses)
        valid_row = {"valid_loss": tr.loss_sum / max(scores.utterances, 1), "valid_wer": scores.wer,
                     "valid_cer": scores.cer,
                     "valid_empty": sum(not h.strip() for h in tr.hypotheses) / max(len(tr.hypotheses), 1)}
        if scores.wer < best["wer"]:
            best.update(wer=scores.wer, step=step)
            save(run / CHECKPOINT_BEST, with_state=False)

    model.train()
    while step < oc.max_steps:
        if stop_after is not None and step - start_step >= stop_after:
            stopped_by = "stop_after"
            break
        if tc.max_minutes > 0 and time.monotonic() - t_start > tc.max_minutes * 60:
            stopped_by = "max_minutes"
            break
        lr = tri_stage_lr(step, oc.lr, oc.max_steps, oc.phase_ratio, oc.init_lr_scale, oc.final_lr_scale)
        for group in optimizer.param_groups:
            group["lr"] = lr
        frozen = step < cfg.ctc.freeze_updates
        model.freeze_encoder(frozen)

        # 1. Forward/backward grad_accum batches; the CTC loss is summed over utterances.
        utts = 0
        for _ in range(oc.grad_accum):
            epoch, pos, _, batch = next(stream)
            if batch is None:  # every file of the batch failed to load (warned)
                continue
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                res = model(batch.audio.waveform, batch.audio.padding_mask, generator=generator)
            with torch.autocast(device.type, enabled=False) if amp_dtype is not None else nullcontext():
                lprobs = F.log_softmax(res.logits.float(), dim=-1).transpose(0, 1)  # (T, B, V) float32
                loss = F.ctc_loss(lprobs, batch.targets, res.lengths, batch.target_lengths, blank=vocabulary.blank,
                                  reduction="sum", zero_infinity=True)
            scaler.scale(loss).backward()
            utts += len(batch)
            sums["loss"] += float(loss.detach())
            sums["audio"] += float(batch.audio.lengths.sum()) / cfg.data.sample_rate

        # 2. Divide by the update's utterances (sentence_avg), clip, step.
        grad_norm = 0.0
        if normalize_gradients(params, utts, 1, device) > 0:
            scaler.unscale_(optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, oc.clip_norm if oc.clip_norm > 0 else math.inf))
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        batches_done = pos + 1
        bar.update(1)
        sums["utts"] += utts
        sums["updates"] += 1
        sums["grad_norm"] += grad_norm if math.isfinite(grad_norm) else 0.0

        # 3. Validate, log, save.
        if cfg.valid.every and step % cfg.valid.every == 0:
            validate()
        if step % tc.log_every == 0 or step == oc.max_steps or (cfg.valid.every and step % cfg.valid.every == 0):
            row = _row(sums, time.monotonic() - t_log, step=step, epoch=epoch, lr=lr, frozen=float(frozen),
                       wall_s=time.monotonic() - t_start, **valid_row)
            sums, t_log, valid_row = dict.fromkeys(sums, 0.0), time.monotonic(), {}
            rows.append(row)
            metrics.write(row)
            bar.set_postfix(_postfix(row, best))
        if step % tc.save_every == 0:
            save(last, with_state=True)
            saved_at = step
    bar.close()

    if valid_loader is not None and (not rows or "valid_wer" not in rows[-1] or rows[-1]["step"] != step):
        validate()
    if sums["updates"] or valid_row:
        row = _row(sums, time.monotonic() - t_log, step=step, epoch=epoch,
                   lr=tri_stage_lr(max(step - 1, 0), oc.lr, oc.max_steps, oc.phase_ratio, oc.init_lr_scale,
                                   oc.final_lr_scale),
                   frozen=float(step - 1 < cfg.ctc.freeze_updates), wall_s=time.monotonic() - t_start, **valid_row)
        rows.append(row)
        metrics.write(row)
    if saved_at != step:
        save(last, with_state=True)
    metrics.close()

    logged = [r for r in metrics.rows if math.isfinite(r.get("loss", math.nan))] or rows
    valids = [r for r in metrics.rows if "valid_wer" in r]
    summary = FinetuneSummary(
        run_dir=str(run), init=what, steps=step, start_step=start_step, stopped_by=stopped_by, epoch=epoch,
        first_loss=logged[0]["loss"] if logged else math.nan, final_loss=logged[-1]["loss"] if logged else math.nan,
        valid_wer=valids[-1]["valid_wer"] if valids else math.nan,
        valid_cer=valids[-1]["valid_cer"] if valids else math.nan,
        valid_empty=valids[-1].get("valid_empty", math.nan) if valids else math.nan,
        best_wer=best["wer"] if math.isfinite(best["wer"]) else math.nan, best_step=int(best["step"]),
        wall_seconds=time.monotonic() - t_start, train_utterances=len(train_set),
        train_hours=float(train_set.lengths.sum()) / cfg.data.sample_rate / 3600,
        valid_utterances=len(valid_loader.dataset) if valid_loader is not None else 0, device=str(device),
        checkpoint=str(last))
    (run / SUMMARY_JSON).write_text(json.dumps({**asdict(summary), "all_blank": summary.all_blank}, indent=2,
                                               sort_keys=True))
    if progress:
        print(summary.format())
    if summary.all_blank and not progress:  # the printed summary already says it
        warnings.warn(all_blank_advice(summary), AllBlankWarning, stacklevel=2)
    return summary


def _row(sums: dict[str, float], seconds: float, **extra: float) -> dict[str, float]:
    u, n = max(sums["updates"], 1), sums["utts"]
    row = {"loss": sums["loss"] / n if n else math.nan, "grad_norm": sums["grad_norm"] / u, "utterances": n,
           "updates_per_s": sums["updates"] / max(seconds, 1e-9), "audio_s_per_s": sums["audio"] / max(seconds, 1e-9)}
    row.update(extra)
    return row


def _postfix(row: dict[str, float], best: dict[str, Any]) -> dict[str, str]:
    out = {"loss": f"{row['loss']:.2f}", "lr": f"{row['lr']:.1e}"}
    if math.isfinite(best["wer"]):
        out["best_wer"] = f"{100 * best['wer']:.1f}%"
    return out


# ----------------------------------------------------------------------------------------------
# Resume


def _load_state(last: Path, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    tensors = load_file(str(last / train_state.TENSORS_FILE))
    meta = json.loads((last / train_state.JSON_FILE).read_text())
    if meta.get("format") != train_state.FORMAT or int(meta.get("version", 0)) > train_state.VERSION:
        raise checkpoint.CheckpointError(f"{last}: {train_state.JSON_FILE} is not a training state this version reads")
    train_state.optimizer_from_flat(optimizer, tensors, meta["optimizer"])
    if scaler.is_enabled() and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    train_state.restore_rng(train_state.unpack_rng(tensors, meta, 0), generator, device)
    return {"step": int(meta["step"]), "epoch": int(meta["epoch"]), "batches_done": int(meta["batches_done"]),
            "best": meta.get("best") or {"wer": math.inf, "step": -1}}
