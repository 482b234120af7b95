"""Anomaly fine-tuning: the pretrained wav2vec 2.0 -> an embedding trained on normal clips only.

The analogue of `asr finetune` for anomaly detection, run by `aiot-w2v2 fit` before the scorers are
fitted (`finetune.steps` > 0). With `finetune.part` `transformer`, a copy of the pretrained Transformer
(fully, or low-rank adapters on its attention / feed-forward linears) and a projection (`embedder.py`);
with `conv`, a copy of the pretrained conv blocks the `learned` scorer reads (`learned_layers`, conv<i>
only) through their pooled statistics, a layer norm and a projection; either learns to classify crops of
normal training clips into pseudo-classes (`pseudo.py`: metadata class x speed class, with mixup and
feature exchange) through an angular-margin head (`margin.py`: sub-cluster AdaCos by default, or
ArcFace). The pretrained feature encoder itself stays frozen. The `learned` scorer then compares the
embedding of a window (the projection of the Transformer; the conv copy's pooled statistics) with those of
the machine ID's normal training windows.

One visible loop; randomness from one injected `torch.Generator` (and torch's global RNG for dropout,
both saved), so `--resume` continues exactly: `MODEL/finetune/checkpoint_last` holds the weights (with
adapters unmerged), the optimiser state and RNG states (`train/state.py`), and `finetune.json` (this
config, the pretrained model's config, the classes, the update count).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..audio import load_audio
from ..checkpoint import CheckpointError
from ..config import ConfigError, PretrainConfig, to_dict
from ..model.wav2vec2 import Wav2Vec2ForPreTraining
from ..train import state as train_state
from .embedder import AnomalyEmbedder, ConvEmbedder, Embedder, LearnedExtras, conv_features
from .margin import AngularMarginHead
from .pseudo import make_batch, num_pseudo_classes

log = logging.getLogger(__name__)

FINETUNE_DIR = "finetune"
WEIGHTS, META = "finetune.safetensors", "finetune.json"


@dataclass(frozen=True)
class AnomalyFinetuneConfig:
    """`fit --set finetune.<key>=value`. `part`, `lr`, `batch_windows`, `crop_seconds` and the 300 updates the
    docs suggest were measured on the development suite only (docs/anomaly.md); the other values are first
    choices, not tuned."""

    # updates; 0 = off (the learned scorer then reads pooled pretrained layers, `learned_layers`). Off by default:
    # part "transformer" scored learned 0.53-0.56 mean AUC on the dev suite from update 2000 (the pooled
    # pretrained conv blocks 0.744) and 0.646 (0.659 with rank-8 adapters) from update 20000 (conv `learned`
    # 0.811, the pretrained Transformer's pooled layer 0 0.704); part "conv" adds +0.02 (dev) / +0.014
    # (held-out) to learned after a short pretraining, nothing after a longer one, never to the decision
    # scorer, for most of the fit's time (benchmarks/RESULTS.md, "Generalisation", issue 12).
    steps: int = 0
    # what trains: "transformer" (a copy of the Transformer + projection, `AnomalyEmbedder`) or "conv" (a copy
    # of the conv blocks `learned_layers` names, read through their pooled statistics, `ConvEmbedder`)
    part: str = "conv"
    lr: float = 1e-3  # AdamW peak, after `warmup_steps` of linear warm-up, cosine decay to 0
    conv_lr: float = 1e-4  # part "conv": the conv blocks' peak (the projection and head use `lr`)
    warmup_steps: int = 30
    weight_decay: float = 0.01
    clip_norm: float = 5.0
    batch_windows: int = 32  # crops per update
    crop_seconds: float = 1.0  # training crop (the scoring windows may be longer: the embedding is a mean)
    adapter_rank: int = 0  # 0 = the whole Transformer trains; r > 0: rank-r adapters on its linears
    adapter_alpha: float = 16.0
    embedding_dim: int = 128  # the pooled embedding's size (projection of the final Transformer state)
    subclusters: int = 4  # centres per class (sub-cluster AdaCos)
    margin: float = 0.0  # ArcFace margin m (radians); 0 with scale 0 = AdaCos
    scale: float = 0.0  # 0 = AdaCos's adaptive scale; > 0 = fixed (ArcFace)
    speeds: tuple[float, ...] = (0.8, 1.25)  # speed (pitch + tempo) pseudo-classes beside the unchanged crop
    mixup_prob: float = 0.5
    exchange_prob: float = 0.2
    domain_classes: bool = True  # DCASE 2021+ source / target domains are classes of their own
    min_clips: int = 4  # a machine ID with fewer normal training clips is an error (it names the ID)
    save_every: int = 100  # updates between resume checkpoints
    seed: int = 0

    def validate(self) -> AnomalyFinetuneConfig:
        if self.steps < 0 or self.lr <= 0 or self.warmup_steps < 0 or self.batch_windows < 2:
            raise ConfigError("finetune: steps >= 0, lr > 0, warmup_steps >= 0 and batch_windows >= 2 needed "
                              f"(got {self.steps}, {self.lr}, {self.warmup_steps}, {self.batch_windows})")
        if self.crop_seconds <= 0 or self.embedding_dim < 1 or self.subclusters < 1 or self.adapter_rank < 0:
            raise ConfigError("finetune: crop_seconds > 0, embedding_dim >= 1, subclusters >= 1, adapter_rank >= 0")
        if self.margin < 0 or self.scale < 0 or any(s <= 0 or s == 1 for s in self.speeds):
            raise ConfigError(f"finetune: margin >= 0, scale >= 0 (0 = adaptive), speeds > 0 and != 1 "
                              f"(got {self.margin}, {self.scale}, {list(self.speeds)})")
        if not (0 <= self.mixup_prob <= 1 and 0 <= self.exchange_prob <= 1):
            raise ConfigError("finetune: mixup_prob and exchange_prob must be in [0, 1]")
        if self.part not in ("transformer", "conv") or self.conv_lr <= 0:
            raise ConfigError(f"finetune.part must be 'transformer' or 'conv' and conv_lr > 0 (got {self.part!r}, "
                              f"{self.conv_lr})")
        if self.part == "conv" and self.adapter_rank:
            raise ConfigError("finetune.adapter_rank applies to part 'transformer' only (set it to 0 with 'conv')")
        if self.min_clips < 1 or self.save_every < 1:
            raise ConfigError("finetune: min_clips and save_every must be >= 1")
        return self


@dataclass
class AnomalyFinetuneSummary:
    """What a fine-tuning run did (also in `MODEL/finetune/summary.json` and scoring.json's info)."""

    steps: int
    start_step: int
    stopped_by: str  # "steps" | "stop_after"
    classes: int  # pseudo-classes (metadata classes x speed classes)
    clips: int
    first_loss: float
    final_loss: float
    first_accuracy: float  # on the unmixed samples of the first / last tenth of the updates
    final_accuracy: float
    seconds: float

    def format(self) -> str:
        return (f"fine-tuning: {self.steps} updates (this run {self.steps - self.start_step}, stopped by "
                f"{self.stopped_by}) on {self.clips} clips, {self.classes} pseudo-classes, {self.seconds:.0f} s; "
                f"loss {self.first_loss:.3f} -> {self.final_loss:.3f}, accuracy {self.first_accuracy:.2f} -> "
                f"{self.final_accuracy:.2f}")


def config_difference(saved: Any, given: Any, prefix: str = "") -> list[str]:
    """'key: saved -> given' for every differing field of two (nested) config dicts."""
    out = []
    for k in sorted(set(saved) | set(given)):
        a, b = saved.get(k), given.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_difference(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a} -> {b}")
    return out


def metadata_classes(keys: list[str], clips_per_id: dict[str, int], min_clips: int) -> tuple[list[str], list[int]]:
    """Class names (sorted) and each clip's class index; too few clips of a machine ID is an error naming it."""
    few = sorted(k for k, n in clips_per_id.items() if n < min_clips)
    if few:
        raise ValueError("fine-tuning needs at least finetune.min_clips = "
                         f"{min_clips} normal training clips per machine ID; too few for "
                         + ", ".join(f"{k} ({clips_per_id[k]})" for k in few))
    names = sorted(set(keys))
    index = {k: i for i, k in enumerate(names)}
    return names, [index[k] for k in keys]


def _lr(step: int, cfg: AnomalyFinetuneConfig) -> float:
    """Linear warm-up to `lr`, then cosine decay to 0 at `steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def finetune_embedder(pretrained: Wav2Vec2ForPreTraining, pcfg: PretrainConfig, paths: list[str],
                      class_keys: list[str], id_keys: list[str], cfg: AnomalyFinetuneConfig, out: str | Path, *,
                      conv_layers: tuple[int, ...] = (), extras: LearnedExtras | None = None, resume: bool = False,
                      progress: bool = True, stop_after: int | None = None,
                      sample_rate: int = 16000) -> tuple[Embedder, AnomalyFinetuneSummary]:
    """Fine-tune an `AnomalyEmbedder` (or, with `cfg.part` "conv", a `ConvEmbedder` of the conv blocks
    `conv_layers` [and their `extras`: rhythms, log kurtosis]) on the normal clips `paths` (their metadata class
    `class_keys`, their machine ID `id_keys`); the state goes to `out/finetune`. Returns the embedder
    (adapters merged, eval mode) and a summary. `stop_after` stops after that many updates of this call,
    like an interruption."""
    cfg.validate()
    if cfg.part == "conv" and not conv_layers:
        raise ConfigError("finetune.part 'conv' needs learned_layers of conv blocks (conv<i>), got none")
    t0 = time.monotonic()
    readable = []
    for i, path in enumerate(paths):  # unreadable clips are left out here as in the scorers' fit (warned)
        try:
            load_audio(path, sample_rate)
            readable.append(i)
        except (OSError, ValueError) as exc:
            log.warning("fine-tuning skips %s: %s", path, exc)
    paths, class_keys, id_keys = ([v[i] for i in readable] for v in (paths, class_keys, id_keys))
    state_dir = Path(out) / FINETUNE_DIR
    last = state_dir / train_state.CHECKPOINT_LAST
    per_id: dict[str, int] = {}
    for k in id_keys:
        per_id[k] = per_id.get(k, 0) + 1
    names, clip_class = metadata_classes(class_keys, per_id, cfg.min_clips)
    if len(names) * (1 + len(cfg.speeds)) < 2:
        raise ValueError("fine-tuning needs at least 2 pseudo-classes: one machine ID and no finetune.speeds")

    @lru_cache(maxsize=512)
    def clip(i: int) -> np.ndarray:
        return load_audio(paths[i], sample_rate)

    w2v = pretrained.wav2vec2.eval()
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # dropout inside the Transformer draws on the global generator
    embedder: Embedder
    if cfg.part == "conv":
        embedder = ConvEmbedder(w2v, conv_layers, cfg.embedding_dim, generator, extras)
    else:
        embedder = AnomalyEmbedder(w2v, cfg.embedding_dim, generator)
        if cfg.adapter_rank:
            embedder.add_adapters(cfg.adapter_rank, cfg.adapter_alpha, generator)
    n_classes = num_pseudo_classes(len(names), cfg.speeds)
    head = AngularMarginHead(cfg.embedding_dim, n_classes, cfg.subclusters, cfg.margin, cfg.scale, generator)
    slow = list(embedder.blocks.parameters()) if cfg.part == "conv" else []  # the conv blocks: conv_lr
    slow_ids = {id(p) for p in slow}
    fast = [p for m in (embedder, head) for p in m.parameters() if p.requires_grad and id(p) not in slow_ids]
    params = slow + fast
    groups = ([{"params": slow, "lr": cfg.conv_lr, "peak": cfg.conv_lr}] if slow else []) + \
        [{"params": fast, "lr": cfg.lr, "peak": cfg.lr}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    meta = dict(config=to_dict(cfg), model=to_dict(pcfg.model), classes=names, clips=len(paths),
                conv_layers=list(conv_layers) if cfg.part == "conv" else [],
                extras=extras.describe() if cfg.part == "conv" and extras else None)
    step, history = 0, []
    if resume and (last / META).exists():
        step, history = _load(last, meta, embedder, head, optimizer, generator)
    elif resume:
        warnings.warn(f"nothing to resume in {state_dir}: fine-tuning from the start", stacklevel=2)
    elif state_dir.exists():
        shutil.rmtree(state_dir)  # a new fit: an earlier fine-tuning state of this folder is replaced
    start_step, stopped_by = step, "steps"
    length = int(round(cfg.crop_seconds * sample_rate))
    bar = tqdm(total=cfg.steps, initial=step, desc="finetune", unit="upd", disable=not progress)
    embedder.train()
    head.train()
    saved_at = step
    while step < cfg.steps:
        if stop_after is not None and step - start_step >= stop_after:
            stopped_by = "stop_after"
            break
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, cfg) * group["peak"] / cfg.lr
        batch = make_batch(clip, clip_class, len(names), cfg.batch_windows, length, cfg.speeds, cfg.mixup_prob,
                           cfg.exchange_prob, generator)
        emb = embedder(batch.audio if cfg.part == "conv" else conv_features(w2v, batch.audio))  # (B, E)
        loss = head.loss(emb, batch.target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
        optimizer.step()
        step += 1
        with torch.no_grad():
            pure = batch.target.max(1).values == 1  # samples neither mixed nor exchanged
            hit = (head.log_probs(head.cosine(emb)).argmax(1) == batch.label)[pure].float()
        history.append([float(loss.detach()), float(hit.mean()) if len(hit) else math.nan])
        bar.update(1)
        bar.set_postfix(loss=f"{history[-1][0]:.3f}", scale=f"{float(head.scale):.1f}")
        if step % cfg.save_every == 0:
            _save(last, meta, step, history, embedder, head, optimizer, scaler, generator)
            saved_at = step
    bar.close()
    if saved_at != step or not (last / META).exists():
        _save(last, meta, step, history, embedder, head, optimizer, scaler, generator)
    tenth = max(1, len(history) // 10)
    first, final = np.asarray(history[:tenth]), np.asarray(history[-tenth:])
    summary = AnomalyFinetuneSummary(
        steps=step, start_step=start_step, stopped_by=stopped_by, classes=n_classes, clips=len(paths),
        first_loss=float(np.nanmean(first[:, 0])) if len(first) else math.nan,
        final_loss=float(np.nanmean(final[:, 0])) if len(final) else math.nan,
        first_accuracy=float(np.nanmean(first[:, 1])) if len(first) else math.nan,
        final_accuracy=float(np.nanmean(final[:, 1])) if len(final) else math.nan,
        seconds=round(time.monotonic() - t0, 1))
    (state_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    if progress:
        print(summary.format())
    embedder.merge_adapters()
    return embedder.eval(), summary


def _save(last: Path, meta: dict[str, Any], step: int, history: list[list[float]], embedder: Embedder,
          head: AngularMarginHead, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
          generator: torch.Generator) -> None:
    """Weights, optimiser, RNG states and progress to `last`, atomically (a new folder renamed over it)."""
    tmp = last.with_name(last.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    weights = {f"embedder.{k}": v.contiguous() for k, v in embedder.state_dict().items()}
    weights.update({f"head.{k}": v.contiguous() for k, v in head.state_dict().items()})
    save_file(weights, str(tmp / WEIGHTS))
    state = train_state.pack({"step": step, "epoch": 0, "batches_done": 0, "world_size": 1, "bad_clips": [[]]},
                             optimizer, scaler, [train_state.capture_rng(generator, torch.device("cpu"))])
    save_file(state[train_state.TENSORS_FILE], str(tmp / train_state.TENSORS_FILE))
    (tmp / train_state.JSON_FILE).write_text(json.dumps(state[train_state.JSON_FILE]) + "\n")
    (tmp / META).write_text(json.dumps({**meta, "step": step, "history": history}) + "\n")
    if last.exists():
        shutil.rmtree(last)
    tmp.rename(last)


def _load(last: Path, meta: dict[str, Any], embedder: Embedder, head: AngularMarginHead,
          optimizer: torch.optim.Optimizer, generator: torch.Generator) -> tuple[int, list[list[float]]]:
    """Restore a `_save`d state into freshly built objects; a state of another pretrained model is refused."""
    saved = json.loads((last / META).read_text())
    diff = config_difference(saved["model"], meta["model"])
    if diff:
        raise CheckpointError(f"{last}: fine-tuning was started from a pretrained model with another config; "
                              f"refusing to resume it with this one ({'; '.join(diff)})")
    extras = saved.get("extras")
    if "extras" not in saved and saved.get("rhythm"):  # a state of session 11, before the extras: one rhythm
        extras = {"rhythms": [saved["rhythm"]], "kurtosis": []}
    saved_part = (saved["config"].get("part", "transformer"), saved.get("conv_layers", []), extras)
    if saved_part != (meta["config"]["part"], meta["conv_layers"], meta["extras"]):
        raise CheckpointError(f"{last}: fine-tuning was started on part {saved_part[0]!r} (conv layers "
                              f"{saved_part[1]}, extras {saved_part[2]}), this fit trains {meta['config']['part']!r} "
                              f"(conv layers {meta['conv_layers']}, extras {meta['extras']}); fit without --resume "
                              "to start afresh")
    if saved["classes"] != meta["classes"]:
        raise CheckpointError(f"{last}: fine-tuning was started on the classes {saved['classes']}, these clips "
                              f"have {meta['classes']}; fit without --resume to start afresh")
    changed = config_difference(saved["config"], meta["config"])
    if changed:
        warnings.warn(f"resuming fine-tuning with a changed config ({'; '.join(changed)}): not an exact "
                      "continuation", stacklevel=3)
    weights = load_file(str(last / WEIGHTS))
    embedder.load_state_dict({k[len("embedder."):]: v for k, v in weights.items() if k.startswith("embedder.")})
    head.load_state_dict({k[len("head."):]: v for k, v in weights.items() if k.startswith("head.")})
    tensors = load_file(str(last / train_state.TENSORS_FILE))
    state = json.loads((last / train_state.JSON_FILE).read_text())
    train_state.optimizer_from_flat(optimizer, tensors, state["optimizer"])
    train_state.restore_rng(train_state.unpack_rng(tensors, state, 0), generator, torch.device("cpu"))
    return int(saved["step"]), list(saved["history"])
