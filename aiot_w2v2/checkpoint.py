"""Our checkpoint format: a folder with `model.safetensors` and `config.json`.

`config.json` holds `{"format": "aiot-w2v2", "version": 1, "kind": "pretraining", "config": {...}}`
with the full `PretrainConfig`, so a checkpoint describes itself. Training state (optimizer,
scheduler, RNG, step) lives in `train_state.safetensors` + `train_state.json` beside it and is only read
by `--resume`. Writes are atomic (temp folder, then rename). Nothing here is ever unpickled.

This module knows the format, not the CTC model: `loading.load_model` dispatches CTC checkpoints
(`is_ctc`) to `asr.ctc_model` and the others to `load_pretrained`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .config import PretrainConfig, from_dict, to_dict

FORMAT = "aiot-w2v2"
VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged or of another format."""


def is_checkpoint(path: str | Path) -> bool:
    p = Path(path)
    if not (p.is_dir() and (p / WEIGHTS).exists() and (p / CONFIG).exists()):
        return False
    try:
        return json.loads((p / CONFIG).read_text()).get("format") == FORMAT
    except (OSError, json.JSONDecodeError):
        return False


def resolve_run(path: str | Path, order: tuple[str, ...] = ("checkpoint_last", "checkpoint_best")) -> Path:
    """A run folder's checkpoint (the first of `order` it holds), or `path` itself when it is not a run folder."""
    p = Path(path)
    if not is_checkpoint(p):
        for sub in order:
            if is_checkpoint(p / sub):
                return p / sub
    return p


def write_atomic(out: str | Path, files: dict[str, Any]) -> Path:
    """Write a folder atomically. `files` maps names to a tensor dict (safetensors) or a JSON-able object."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, content in files.items():
            if name.endswith(".safetensors"):
                save_file({k: v.detach().contiguous().cpu() for k, v in content.items()}, str(tmp / name))
            else:
                (tmp / name).write_text(json.dumps(content, indent=2, sort_keys=True))
        old = None
        if out.exists():
            old = out.with_name(out.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def save_pretrained(model: torch.nn.Module, cfg: PretrainConfig, out: str | Path, *, kind: str = "pretraining",
                    extra_files: dict[str, Any] | None = None, meta: dict[str, Any] | None = None) -> Path:
    """Save weights + config (+ optional extra files such as the training state) atomically."""
    config = {"format": FORMAT, "version": VERSION, "kind": kind, "config": to_dict(cfg), **(meta or {})}
    files: dict[str, Any] = {WEIGHTS: model.state_dict(), CONFIG: config}
    files.update(extra_files or {})
    return write_atomic(out, files)


def read_config(path: str | Path) -> tuple[dict[str, Any], PretrainConfig]:
    p = Path(path)
    try:
        meta = json.loads((p / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{p}: cannot read {CONFIG}: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not an aiot-w2v2 checkpoint (format={meta.get('format')!r})")
    if int(meta.get("version", 0)) > VERSION:
        raise CheckpointError(f"{p}: checkpoint version {meta['version']} is newer than this aiot-w2v2 ({VERSION})")
    return meta, from_dict(PretrainConfig, meta["config"]).validate()


def is_ctc(meta: dict[str, Any]) -> bool:
    """A CTC model: kind "ctc" (fine-tuned), or a converted encoder with a CTC head beside it."""
    kind = meta.get("kind", "pretraining")
    return kind == "ctc" or (kind == "encoder" and bool(meta.get("ctc_head")))


def load_pretrained(path: str | Path, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model a pretraining or encoder checkpoint describes and load its weights (strict).

    kind "pretraining" -> `Wav2Vec2ForPreTraining`; kind "encoder" (converted encoder-only sources)
    -> `Wav2Vec2Model`. CTC checkpoints are refused (`aiot_w2v2.load_model` reads them): their
    encoder alone is not what they are.
    """
    from .model import Wav2Vec2ForPreTraining, Wav2Vec2Model

    meta, cfg = read_config(path)
    kind = meta.get("kind", "pretraining")
    if is_ctc(meta):
        raise CheckpointError(f"{path}: a CTC model; load it with aiot_w2v2.load_model (or asr.load_ctc_model)")
    if kind == "pretraining":
        model: torch.nn.Module = Wav2Vec2ForPreTraining(cfg.model, cfg.masking, cfg.loss)
    elif kind == "encoder":
        model = Wav2Vec2Model(cfg.model)
    else:
        raise CheckpointError(f"{path}: checkpoint kind '{kind}' is not supported by this loader")
    state = load_file(str(Path(path) / WEIGHTS), device=str(map_location))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the config (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    if isinstance(model, Wav2Vec2ForPreTraining):
        model.set_num_updates(int(meta.get("step", 0)))
    model.to(map_location)  # load_state_dict copies into the CPU-built parameters
    model.eval()
    return model
