"""The pretraining loop: audio folders -> wav2vec 2.0 checkpoint, in one process or under torchrun (DDP).

`pretrain(cfg, data_dirs, out)` builds the manifest (training clips only), the loader, the model,
AdamW and the learning-rate schedule, then runs one visible loop of updates that logs to
`RUN/metrics.csv` / TensorBoard / a progress bar and saves `RUN/checkpoint_last/`. It knows the model
only through `Wav2Vec2ForPreTraining.forward` / `set_num_updates`, and the data only through
`make_loader`'s dataset and batch sampler.

Loss normalisation (fairseq's): the model's loss is a mean over the masked frames of one batch. Each
micro-batch's loss is multiplied by its number of masked frames n before backward, and once all
micro-batches of an update (on every rank) are done the gradients are divided by the total masked
frames N of the update across micro-batches and ranks (DDP's average over R ranks is undone by a
factor R). Every masked frame of the global batch then weighs the same, however the frames are
split over ranks and micro-batches. The diversity and feature-penalty terms are per-batch statistics
and get the same weight n, as in fairseq (so they are not exactly those of one big batch).

Resume: `RUN/checkpoint_last/` holds the weights plus the training state (`train/state.py`); a
resumed run rebuilds everything, restores the RNGs and skips the batches the interrupted epoch had
already consumed (the batch order is a function of (seed, epoch)), so it continues exactly.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import checkpoint
from ..config import ConfigError, PretrainConfig, load_pretrain_config
from ..data import Batch, build_manifest, make_loader
from ..model import Wav2Vec2ForPreTraining
from . import state as train_state
from .metrics import MetricsLog, add, interval_row, postfix
from .schedule import lr_at

SUMMARY_JSON = "summary.json"
CURVES_PNG = "training_curves.png"
LOSS_PARTS = ("loss", "contrastive", "diversity", "feature_penalty")


class NoUsableAudioError(RuntimeError):
    """The data folders hold no clip that pretraining can use."""


@dataclass
class PretrainSummary:
    """What a run did; also written to `RUN/summary.json`."""

    run_dir: str
    steps: int  # updates done in total (including those before a resume)
    start_step: int  # 0, or the step this call resumed from
    stopped_by: str  # "max_steps" | "max_minutes" | "stop_after"
    epoch: int
    first: dict[str, float]  # loss parts at the first logged update
    final: dict[str, float]  # loss parts at the last logged update
    accuracy: float
    chance_accuracy: float
    code_perplexity: float
    wall_seconds: float  # of this call
    train_clips: int
    skipped_files: int
    skipped: dict[str, int] = field(default_factory=dict)  # unreadable / too_short / failed_to_decode
    unused_clips: int = 0  # clips outside a training split (test clips are never used)
    device: str = "cpu"
    world_size: int = 1
    checkpoint: str = ""

    def format(self, cfg: PretrainConfig) -> str:
        f, l = self.first, self.final
        chance = 1.0 / (1 + cfg.loss.num_negatives + cfg.loss.cross_sample_negatives)
        gv = cfg.model.latent_groups * cfg.model.latent_vars
        skipped = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.skipped.items())
        lines = [
            f"pretraining done: {self.steps} updates (this run {self.steps - self.start_step}, stopped by "
            f"{self.stopped_by}) in {self.wall_seconds:.1f} s on {self.device} x {self.world_size}",
            f"  data        {self.train_clips} training clips, {self.skipped_files} skipped ({skipped}), "
            f"{self.unused_clips} outside a train split",
            f"  loss        {f.get('loss', math.nan):.4f} -> {l.get('loss', math.nan):.4f}   "
            f"(contrastive {l.get('contrastive', math.nan):.4f}, diversity {l.get('diversity', math.nan):.4f}, "
            f"feature penalty {l.get('feature_penalty', math.nan):.4f})",
            f"  accuracy    {self.accuracy:.3f}   (chance {self.chance_accuracy:.3f} with the distractors equal to "
            f"the positive removed; 1/(K+1) = {chance:.3f})",
            f"  code ppl    {self.code_perplexity:.1f}   (of G*V = {gv})",
            f"  checkpoint  {self.checkpoint}",
            f"  curves      {Path(self.run_dir) / CURVES_PNG}, metrics.csv{', tb/' if cfg.train.tensorboard else ''}",
        ]
        return "\n".join(lines)


def pretrain(
    cfg: PretrainConfig,
    data_dirs: Iterable[str | Path] | str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> PretrainSummary:
    """Pretrain wav2vec 2.0 on the audio under `data_dirs`, writing the run to `out`.

    Stops at `optim.max_steps` updates or after `train.max_minutes` of wall time (of this call),
    saving either way. `resume` continues `out/checkpoint_last` exactly (same config and world size);
    without it an existing checkpoint is an error rather than something to overwrite. `stop_after`
    stops after that many updates of this call, like an interruption (used by the resume tests).
    Under torchrun (WORLD_SIZE > 1) every rank calls this; only rank 0 writes.
    """
    t_start = time.monotonic()
    cfg.validate()
    dirs = [str(data_dirs)] if isinstance(data_dirs, (str, Path)) else [str(d) for d in data_dirs]
    run = Path(out)
    resume = train_state.claim_run_dir(run, resume)
    rank, world, device, own_group = _setup_distributed(cfg.train.device)
    try:
        return _run(cfg, dirs, run, resume, progress and rank == 0, stop_after, rank, world, device, t_start)
    finally:
        if own_group:
            release_process_group()


def _run(cfg: PretrainConfig, dirs: list[str], run: Path, resume: bool, show: bool, stop_after: int | None,
         rank: int, world: int, device: torch.device, t_start: float) -> PretrainSummary:
    ckpt_dir = run / train_state.CHECKPOINT_LAST
    main = rank == 0
    seed, oc, tc = cfg.train.seed, cfg.optim, cfg.train
    amp_dtype = autocast_dtype(tc.amp, device)

    # Data: training clips only; test clips would leak into the scorers' evaluation.
    manifest, unreadable, unused = _training_manifest(dirs)
    try:
        loader = make_loader(manifest, cfg.data, seed=seed, rank=rank, world_size=world,
                             pin_memory=device.type == "cuda")
    except ValueError as err:  # AudioDataset: nothing left after dropping short clips
        raise NoUsableAudioError(
            f"no usable audio in {', '.join(dirs)}: {len(manifest) + len(unreadable)} files skipped "
            f"({len(manifest)} shorter than data.min_sample_size={cfg.data.min_sample_size} samples or "
            f"unreadable, {len(unreadable)} with unreadable headers; {unused} clips outside a train split "
            f"are never used) [{err}]") from err
    dataset = loader.dataset
    skipped = {"unreadable": len(unreadable), "too_short": dataset.num_filtered, "failed_to_decode": 0}

    # Model, optimiser. The same seed on every rank gives the same initial weights; afterwards each
    # rank draws its own dropout/masking randomness.
    torch.manual_seed(seed)
    raw = Wav2Vec2ForPreTraining(cfg.model, cfg.masking, cfg.loss).to(device)
    # fused: one kernel over all parameters (8% of a BASE-sized CPU step, benchmarks/RESULTS.md)
    optimizer = torch.optim.AdamW(_param_groups(raw, oc.weight_decay), lr=lr_at(0, oc), betas=oc.betas, eps=oc.eps,
                                  fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    generator = torch.Generator()  # CPU: the model draws masks, distractors and Gumbel noise on the CPU
    seed_everything(seed, rank, generator)

    step, epoch, batches_done, bad = 0, 0, 0, set()
    if resume:
        saved = train_state.load_checkpoint(ckpt_dir, cfg, raw, optimizer, scaler, generator, device,
                                            rank=rank, world=world)
        step, epoch, batches_done, bad = saved["step"], saved["epoch"], saved["batches_done"], saved["bad_clips"]
        if show:
            tqdm.write(f"resuming {run} at update {step} (epoch {epoch}, batch {batches_done})")
    start_step = step

    net: torch.nn.Module = raw
    if world > 1:
        # Parameters that get no gradient in some step (LayerDrop skips layers; feature_grad_mult=0
        # freezes the encoder) need find_unused_parameters, which costs a graph walk per step.
        unused_params = cfg.model.layerdrop > 0 or cfg.model.feature_grad_mult == 0
        net = DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=unused_params)
    params = [p for p in raw.parameters() if p.requires_grad]

    metrics = MetricsLog(run, tensorboard=tc.tensorboard, resume_step=step if resume else None) if main else None
    bar = tqdm(total=oc.max_steps, initial=step, disable=not show, unit="upd", dynamic_ncols=True, desc="pretrain")
    stream = batch_stream(loader, epoch, batches_done, world, device)
    dummy = _dummy_batch(cfg, device) if world > 1 else None
    sums: dict[str, float] = {}  # what the log interval has seen so far (metrics.SUM_KEYS)

    def reduce(values: list[float]) -> list[float]:
        return _all_sum(values, world, device)

    rows: list[dict[str, float]] = []
    t_log = time.monotonic()
    stopped_by, saved_at = "max_steps", step if resume else -1

    raw.train()
    while step < oc.max_steps:
        if stop_after is not None and step - start_step >= stop_after:
            stopped_by = "stop_after"
            break
        if tc.max_minutes > 0 and _any_rank(time.monotonic() - t_start > tc.max_minutes * 60, world, device):
            stopped_by = "max_minutes"
            break
        lr = lr_at(step, oc)
        for group in optimizer.param_groups:
            group["lr"] = lr
        temperature = raw.set_num_updates(step)

        # 1. Forward/backward grad_accum micro-batches; gradients sum n * loss (see the module docstring).
        masked = 0
        for micro in range(oc.grad_accum):
            epoch, pos, indices, batch = next(stream)
            real = batch is not None
            if real:
                bad.update(set(indices) - set(batch.index.tolist()))
            elif world == 1:
                continue
            else:  # every clip failed: run a zero-weight dummy so all ranks do the same backward passes
                batch = dummy
            gen = generator if real else torch.Generator().manual_seed(0)
            last = micro == oc.grad_accum - 1
            with nullcontext() if last or world == 1 else net.no_sync():
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    out = net(batch.waveform, batch.padding_mask, generator=gen)
                n = out.num_masked if real else 0
                scaler.scale(out.loss * n).backward()
            if real:
                masked += n
                audio = float(batch.lengths.sum()) / cfg.data.sample_rate
                parts = {k: v * n for k, v in out.losses.as_dict().items()}
                add(sums, n=n, batches=1, audio=audio, loss=float(out.loss.detach()) * n, **parts,
                    accuracy=float(out.accuracy) * n, chance_accuracy=float(out.chance_accuracy) * n,
                    code_perplexity=float(out.code_perplexity), prob_perplexity=float(out.prob_perplexity),
                    negatives_equal_positive=float(out.negatives_equal_positive))

        # 2. Normalise by the update's masked frames on all ranks (linear, so before or after the fp16
        #    unscale alike), clip, step.
        grad_norm = 0.0
        if normalize_gradients(params, masked, world, device) > 0:  # else nothing usable anywhere: no step
            scaler.unscale_(optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, oc.clip_norm if oc.clip_norm > 0 else math.inf))
            scaler.step(optimizer)  # skips the step when fp16 gradients overflowed
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        batches_done = pos + 1
        bar.update(1)
        add(sums, updates=1, grad_norm=grad_norm)

        # 3. Log every log_every updates (and the last), averaged over the interval and all ranks.
        if step % tc.log_every == 0 or step == oc.max_steps:
            now = time.monotonic()
            row = interval_row(sums, now - t_log, world, reduce, step=step, epoch=epoch, lr=lr,
                               temperature=temperature, loss_scale=scaler.get_scale() if scaler.is_enabled() else 1.0,
                               wall_s=now - t_start)
            sums, t_log = {}, now
            _check_finite(row, amp_dtype)
            rows.append(row)
            if metrics is not None:
                metrics.write(row)
                bar.set_postfix(postfix(row))
        if step % tc.save_every == 0:
            train_state.save_checkpoint(ckpt_dir, raw, cfg, optimizer, scaler, generator, device,
                                        step=step, epoch=epoch, batches_done=batches_done, bad_clips=bad,
                                        rank=rank, world=world)
            saved_at = step
    bar.close()

    if sums.get("updates"):  # the updates since the last log (stopped early)
        now = time.monotonic()
        row = interval_row(sums, now - t_log, world, reduce, step=step, epoch=epoch, lr=lr_at(max(step - 1, 0), oc),
                           temperature=raw.temperature, loss_scale=scaler.get_scale() if scaler.is_enabled() else 1.0,
                           wall_s=now - t_start)
        rows.append(row)
        if metrics is not None:
            metrics.write(row)
    if saved_at != step:
        train_state.save_checkpoint(ckpt_dir, raw, cfg, optimizer, scaler, generator, device,
                                    step=step, epoch=epoch, batches_done=batches_done, bad_clips=bad,
                                    rank=rank, world=world)
    skipped["failed_to_decode"] = int(_all_sum([float(len(bad))], world, device)[0])

    logged = metrics.rows if metrics is not None and metrics.rows else rows
    summary = PretrainSummary(
        run_dir=str(run), steps=step, start_step=start_step, stopped_by=stopped_by, epoch=epoch,
        first={k: logged[0][k] for k in LOSS_PARTS} if logged else {},
        final={k: logged[-1][k] for k in LOSS_PARTS} if logged else {},
        accuracy=logged[-1]["accuracy"] if logged else math.nan,
        chance_accuracy=logged[-1].get("chance_accuracy", math.nan) if logged else math.nan,
        code_perplexity=logged[-1]["code_perplexity"] if logged else math.nan,
        wall_seconds=time.monotonic() - t_start, train_clips=len(dataset), skipped_files=sum(skipped.values()),
        skipped=skipped, unused_clips=unused, device=str(device), world_size=world,
        checkpoint=str(ckpt_dir))
    if main:
        metrics.close()
        _plot(run, cfg)
        (run / SUMMARY_JSON).write_text(json.dumps(asdict(summary), indent=2, sort_keys=True))
        if show:
            print(summary.format(cfg))
    return summary


def normalize_gradients(params: list[Tensor], masked_frames: int, world_size: int, device: torch.device) -> int:
    """Divide the summed (n * loss) gradients by the total masked frames N of the update on all ranks.

    Under DDP the gradients have already been averaged over the R ranks, hence the factor R / N.
    Returns N (0: nothing to normalise, gradients untouched).
    """
    total = int(_all_sum([float(masked_frames)], world_size, device)[0])
    if total > 0:
        scale = world_size / total
        for p in params:
            if p.grad is not None:
                p.grad.mul_(scale)
    return total


# ----------------------------------------------------------------------------------------------
# Data


def _training_manifest(dirs: list[str]) -> tuple[pd.DataFrame, list[tuple[str, str]], int]:
    """(rows with split "train" or None, unreadable files, clips left out as not training clips)."""
    where = ", ".join(dirs)
    try:
        df = build_manifest(dirs)
    except ValueError as err:
        raise NoUsableAudioError(f"no usable audio in {where}: {err}") from err
    unreadable = list(df.attrs.get("skipped", []))
    keep = df["split"].isna() | (df["split"] == "train")
    unused = int((~keep).sum())
    if not keep.any():
        raise NoUsableAudioError(
            f"no usable audio in {where}: {len(df) + len(unreadable)} files skipped ({unused} outside a "
            f"train split: test clips are never used for pretraining; {len(unreadable)} unreadable)")
    out = df[keep].reset_index(drop=True)
    out.attrs = dict(df.attrs)
    return out, unreadable, unused


def batch_stream(loader: DataLoader, epoch: int, start: int, world: int,
                  device: torch.device) -> Iterator[tuple[int, int, list[int], Batch | None]]:
    """Endless (epoch, position in epoch, clip indices, batch) from `start` of `epoch` on.

    The sampler's batch list is a function of (seed, epoch), so a resumed run slices off the batches
    it had consumed instead of loading them. A whole epoch without one decodable clip (on any rank)
    means there is no usable audio at all.
    """
    dataset, sampler = loader.dataset, loader.batch_sampler
    while True:
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        plan = sampler.batches()
        if start < len(plan):
            todo = plan[start:]
            # Our own generator: without one, each new DataLoader iterator draws its worker base seed
            # from the global torch RNG, and a resumed run (one extra iterator) would shift dropout.
            epoch_loader = DataLoader(dataset, batch_sampler=todo, collate_fn=loader.collate_fn,
                                      num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                                      generator=torch.Generator().manual_seed(epoch))
            good = 0
            for pos, (indices, batch) in enumerate(zip(todo, epoch_loader, strict=True), start):
                good += batch is not None
                yield epoch, pos, indices, None if batch is None else batch.to(device, non_blocking=True)
            if start == 0 and _all_sum([float(good)], world, device)[0] == 0:
                raise NoUsableAudioError(f"no usable audio: none of the {len(dataset)} clips could be decoded "
                                         "(see the warnings above)")
        epoch, start = epoch + 1, 0


def _dummy_batch(cfg: PretrainConfig, device: torch.device) -> Batch:
    """A one-clip noise batch for a DDP rank whose batch failed entirely (its loss gets weight 0)."""
    n = max(cfg.data.min_sample_size, min(cfg.data.max_sample_size, cfg.data.sample_rate))
    wave = torch.randn(1, n, generator=torch.Generator().manual_seed(0))
    return Batch(wave, torch.zeros(1, n, dtype=torch.bool), torch.tensor([n]), ["dummy"], [None],
                 torch.tensor([-1])).to(device)


# ----------------------------------------------------------------------------------------------
# Optimiser, devices, seeds


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices/kernels only.

    No decay on biases, norm gains (LayerNorm/GroupNorm, the weight-norm magnitude of the positional
    conv), `mask_emb` and `codevectors`: decay pulls parameters toward zero, which for offsets and
    gains only fights the normalisation instead of limiting capacity, and for the embedding-like
    `mask_emb`/`codevectors` shrinks the rows that get little gradient (rarely picked codes) until they
    collapse, the opposite of what the diversity loss asks for.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if p.ndim < 2 or leaf in ("mask_emb", "codevectors", "original0"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _setup_distributed(device_pref: str) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether we created the process group). torchrun sets WORLD_SIZE etc."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() if device_pref == "auto" else device_pref == "cuda"
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but no CUDA device is available")
    if world <= 1:
        return 0, 1, torch.device("cuda" if cuda else "cpu"), False
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device, created


def release_process_group() -> None:
    """Destroy the default process group, and free it now rather than at interpreter exit.

    DistributedDataParallel holds the group inside reference cycles, so after the loop returns it lives
    on until a garbage collection; left to the end of the interpreter, gloo's threads were torn down
    while still joinable and the rank aborted (SIGABRT after a finished run, about 1 torchrun in 15)."""
    gc.collect()
    dist.destroy_process_group()


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "none":
        return None
    if device.type != "cuda":
        warnings.warn(f"train.amp={amp} needs CUDA; training on {device.type} in fp32", stacklevel=3)
        return None
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        warnings.warn("train.amp=bf16: this GPU has no bf16; training in fp32 (try amp=fp16)", stacklevel=3)
        return None
    return torch.bfloat16 if amp == "bf16" else torch.float16


def seed_everything(seed: int, rank: int, generator: torch.Generator) -> None:
    """Per-rank streams mixed from (seed, rank, purpose), so ranks and purposes never share one."""
    def mix(purpose: int) -> int:
        return int(np.random.SeedSequence([seed, rank, purpose]).generate_state(1, np.uint32)[0])

    torch.manual_seed(mix(1))  # dropout (CUDA too)
    generator.manual_seed(mix(2))  # masks, distractors, Gumbel noise, LayerDrop
    random.seed(mix(3))
    np.random.seed(mix(4))


# ----------------------------------------------------------------------------------------------
# Collectives (no-ops in one process)


def _all_sum(values: list[float], world: int, device: torch.device) -> list[float]:
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """True if `flag` is True on any rank (so all ranks stop on the same update)."""
    return _all_sum([float(flag)], world, device)[0] > 0


# ----------------------------------------------------------------------------------------------
# Logging


def _check_finite(row: dict[str, float], amp_dtype: torch.dtype | None) -> None:
    # fp16 runs see transient overflows that GradScaler handles; anywhere else a NaN is a dead run.
    if row["masked_frames"] > 0 and not math.isfinite(row["loss"]) and amp_dtype != torch.float16:
        raise FloatingPointError(f"loss is {row['loss']} at update {int(row['step'])}: lower optim.lr or set "
                                 "optim.clip_norm")


def _plot(run: Path, cfg: PretrainConfig) -> None:
    from ..plots import plot_training_curves

    try:
        plot_training_curves(run / "metrics.csv", run / CURVES_PNG,
                             num_negatives=cfg.loss.num_negatives + cfg.loss.cross_sample_negatives,
                             latent_groups=cfg.model.latent_groups if cfg.model.quantize_targets else None,
                             latent_vars=cfg.model.latent_vars)
    except (ValueError, OSError) as err:  # the checkpoint is saved; a figure is not worth failing the run
        warnings.warn(f"could not draw {run / CURVES_PNG}: {err}", stacklevel=2)


# ----------------------------------------------------------------------------------------------
# Module entry point for torchrun: python -m torch.distributed.run --nproc_per_node N -m aiot_w2v2.train.pretrain


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m aiot_w2v2.train.pretrain", description="Pretrain wav2vec 2.0.")
    p.add_argument("--config", default=None, help="preset name (tiny, base, large) or YAML file; default: BASE")
    p.add_argument("--data", nargs="+", required=True, help="audio folder(s)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. optim.lr=1e-3")
    p.add_argument("--resume", action="store_true", help="continue RUN/checkpoint_last")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or summary")
    args = p.parse_args(argv)
    try:
        cfg = load_pretrain_config(args.config, args.overrides)
        pretrain(cfg, args.data, args.out, resume=args.resume, progress=not args.no_progress)
    except (ConfigError, NoUsableAudioError, FileExistsError, checkpoint.CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
