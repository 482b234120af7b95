"""The training state that lets `--resume` continue exactly, stored as safetensors + JSON (never pickled).

`train_state.safetensors` holds the tensors: AdamW's per-parameter moments flattened to
`optim.{param_index}.{name}` (`exp_avg`, `exp_avg_sq`, `step`), and for every rank `r` its RNG
states `rng.{r}.torch` (CPU), `rng.{r}.cuda` (when on CUDA) and `rng.{r}.generator` (the injected
generator for masking, distractors, Gumbel noise and LayerDrop). `train_state.json` holds the rest:
update count, data position (epoch, batches consumed in it, world size), the optimiser's param
groups and scalar state, the GradScaler state, per rank python `random` / numpy states, and the
clips each rank found undecodable (for the summary's count).

`save_checkpoint` / `load_checkpoint` write and read `RUN/checkpoint_last` (weights via
`checkpoint.save_pretrained`, atomically) with that state; under DDP every rank contributes its RNG
states and rank 0 writes. This module knows what the loop must carry over, not how the loop runs.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import Tensor

from .. import checkpoint
from ..config import PretrainConfig, config_hash, to_dict

CHECKPOINT_LAST = "checkpoint_last"  # the folder a run saves to and resumes from

TENSORS_FILE = "train_state.safetensors"
JSON_FILE = "train_state.json"
FORMAT = "aiot-w2v2-train-state"
VERSION = 1


class TrainStateError(ValueError):
    """A training state does not fit the model/optimiser being resumed."""


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimizer state -> ({"optim.{i}.{name}": tensor}, JSON-able {"param_groups", "scalars"})."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for name, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Inverse of `optimizer_to_flat`; checks that the parameter groups match before loading."""
    groups = meta["param_groups"]
    saved, needed = [len(g["params"]) for g in groups], [len(g["params"]) for g in optimizer.param_groups]
    if saved != needed:
        raise TrainStateError(f"optimizer state has groups of {saved} parameters, the model needs {needed}")
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, entry in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    # JSON turned tuples (betas) into lists; give the optimiser back what it saved.
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in groups]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def capture_rng(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    """This process's RNG states: tensors under "torch", "generator", "cuda"; JSON under "python", "numpy"."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "python": [version, list(internal), gauss_next],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
    }
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def restore_rng(entry: dict[str, Any], generator: torch.Generator, device: torch.device) -> None:
    """Inverse of `capture_rng`."""
    torch.set_rng_state(entry["torch"])
    generator.set_state(entry["generator"])
    version, internal, gauss_next = entry["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, pos, has_gauss, gauss = entry["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if device.type == "cuda" and entry.get("cuda") is not None:
        torch.cuda.set_rng_state(entry["cuda"], device)


def pack(progress: dict[str, Any], optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
         rng_per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """The two extra files of a checkpoint: {TENSORS_FILE: tensors, JSON_FILE: JSON-able dict}.

    `progress` holds the loop's counters (step, epoch, batches_done, world_size, ...).
    """
    tensors, optim_meta = optimizer_to_flat(optimizer)
    rng_json = []
    for r, entry in enumerate(rng_per_rank):
        for name in ("torch", "generator", "cuda"):
            if entry.get(name) is not None:
                tensors[f"rng.{r}.{name}"] = entry[name]
        rng_json.append({"python": entry["python"], "numpy": entry["numpy"]})
    meta = {"format": FORMAT, "version": VERSION, **progress, "optimizer": optim_meta,
            "scaler": scaler.state_dict() if scaler.is_enabled() else None, "rng": rng_json}
    return {TENSORS_FILE: tensors, JSON_FILE: meta}


def unpack_rng(tensors: dict[str, Tensor], meta: dict[str, Any], rank: int) -> dict[str, Any]:
    """Rank `rank`'s RNG entry (as `capture_rng` made it) from a loaded training state."""
    entry: dict[str, Any] = dict(meta["rng"][rank])
    for name in ("torch", "generator", "cuda"):
        entry[name] = tensors.get(f"rng.{rank}.{name}")
    return entry


def save_checkpoint(out: Path, model: torch.nn.Module, cfg: PretrainConfig, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, generator: torch.Generator, device: torch.device, *,
                    step: int, epoch: int, batches_done: int, bad_clips: set[int], rank: int = 0,
                    world: int = 1) -> None:
    """Weights + training state to `out` (atomic). Every rank calls this; rank 0 writes."""
    mine = capture_rng(generator, device)
    mine["bad"] = sorted(bad_clips)
    if world > 1:
        per_rank: list[Any] = [None] * world
        dist.all_gather_object(per_rank, mine)
    else:
        per_rank = [mine]
    if rank == 0:
        progress = {"step": step, "epoch": epoch, "batches_done": batches_done, "world_size": world,
                    "bad_clips": [e.pop("bad") for e in per_rank]}
        checkpoint.save_pretrained(model, cfg, out, extra_files=pack(progress, optimizer, scaler, per_rank),
                                   meta={"step": step, "epoch": epoch, "config_hash": config_hash(cfg)})
    if world > 1:
        dist.barrier()  # nobody runs ahead (or exits) while rank 0 is still writing


def load_checkpoint(ckpt: Path, cfg: PretrainConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, generator: torch.Generator, device: torch.device, *,
                    rank: int = 0, world: int = 1) -> dict[str, Any]:
    """Load `ckpt` into freshly built objects. Returns {"step", "epoch", "batches_done", "bad_clips"}.

    The model config must match; other changes (a longer max_steps, say) are allowed with a warning
    that the continuation is no longer exact, and so is another world size (the data position is
    carried over as the same share of the epoch).
    """
    _, saved_cfg = checkpoint.read_config(ckpt)
    ours, theirs = to_dict(cfg), to_dict(saved_cfg)
    if ours["model"] != theirs["model"]:
        raise checkpoint.CheckpointError(f"{ckpt}: the checkpoint's model config differs from the one given")
    changed = sorted(f"{sec}.{k}" for sec in ours for k in ours[sec] if ours[sec][k] != theirs[sec].get(k))
    if changed:
        warnings.warn(f"resuming with a changed config ({', '.join(changed)}): not an exact continuation",
                      stacklevel=3)
    model.load_state_dict(load_file(str(ckpt / checkpoint.WEIGHTS), device=str(device)))
    tensors = load_file(str(ckpt / TENSORS_FILE))
    meta = json.loads((ckpt / JSON_FILE).read_text())
    if meta.get("format") != FORMAT or int(meta.get("version", 0)) > VERSION:
        raise checkpoint.CheckpointError(f"{ckpt}: {JSON_FILE} is not a training state this version reads")
    optimizer_from_flat(optimizer, tensors, meta["optimizer"])
    if scaler.is_enabled() and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    saved_world, batches_done = int(meta["world_size"]), int(meta["batches_done"])
    if saved_world != world:
        warnings.warn(f"resuming a {saved_world}-process run with {world}: the data order and RNG streams "
                      "differ from an uninterrupted run", stacklevel=3)
        batches_done = batches_done * saved_world // world
    restore_rng(unpack_rng(tensors, meta, rank % saved_world), generator, device)
    bad = meta["bad_clips"][rank] if rank < len(meta["bad_clips"]) else []
    return {"step": int(meta["step"]), "epoch": int(meta["epoch"]), "batches_done": batches_done,
            "bad_clips": set(bad)}


def claim_run_dir(run: Path, resume: bool) -> bool:
    """Check `run` before training into it; returns whether to resume.

    A finished or interrupted run is never overwritten: without `resume` an existing checkpoint is an
    error. With `resume` and nothing there, a new run starts (with a warning).
    """
    last = run / CHECKPOINT_LAST
    if not resume and checkpoint.is_checkpoint(last):
        raise FileExistsError(f"{run} already holds a run ({last}); resume it (--resume) or pick another --out")
    if resume and not last.exists():
        warnings.warn(f"nothing to resume in {run}: starting a new run", stacklevel=3)
        return False
    return resume
