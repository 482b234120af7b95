"""aiot_w2v2.train: the lr schedule, a short pretraining run and its artifacts, exact resume, bad data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import tiny_model_config
from safetensors.torch import load_file

from aiot_w2v2 import checkpoint
from aiot_w2v2.config import (
    DataConfig,
    LossConfig,
    OptimConfig,
    PretrainConfig,
    TrainConfig,
)
from aiot_w2v2.train import NoUsableAudioError, lr_at, pretrain
from aiot_w2v2.train.metrics import COLUMNS, read_metrics

SR = 16000


def write_clips(root: Path, n: int = 8, split: str = "train", machine: str = "fan", first: int = 0) -> Path:
    """`n` clips of 0.7-1 s (tone + noise) in the DCASE 2020 layout `machine/split/normal_id_00_N.wav`."""
    rng = np.random.default_rng(first)
    for i in range(first, first + n):
        samples = SR - 1500 * (i % 3)  # unequal lengths: padding and cropping both happen
        t = np.arange(samples) / SR
        x = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.1 * rng.standard_normal(samples)
        path = root / machine / split / f"normal_id_00_{i:08d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, x.astype(np.float32), SR, subtype="FLOAT")
    return root


def tiny_pretrain_config(**sections: dict) -> PretrainConfig:
    """2 layers, embed 32, V=8, K=10; 1 s crops, 2 s per batch (2-3 clips: 3-4 batches per epoch)."""
    model = tiny_model_config(num_heads=2, **sections.pop("model", {}))
    data = DataConfig(**{"max_sample_size": 12000, "min_sample_size": 4000, "max_batch_seconds": 2.0,
                         **sections.pop("data", {})})
    optim = OptimConfig(**{"lr": 2e-3, "warmup_steps": 2, "max_steps": 6, **sections.pop("optim", {})})
    train = TrainConfig(**{"log_every": 2, "save_every": 100, "device": "cpu", "tensorboard": False,
                           **sections.pop("train", {})})
    loss = LossConfig(**{"num_negatives": 10, **sections.pop("loss", {})})
    assert not sections, sections
    return PretrainConfig(model=model, loss=loss, data=data, optim=optim, train=train).validate()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clips(tmp_path_factory.mktemp("dcase"))


# ----------------------------------------------------------------------------------------------
# schedule


def test_lr_schedule_warmup_peak_then_decay_to_end() -> None:
    cfg = OptimConfig(lr=1e-3, warmup_steps=10, max_steps=100, end_lr=1e-5, power=1.0)
    lrs = [lr_at(s, cfg) for s in range(0, 121)]
    assert lrs[0] == pytest.approx(1e-4)  # the first update already moves (fairseq: lr / warmup)
    assert all(a < b for a, b in zip(lrs[1:10], lrs[2:11], strict=True))  # warmup rises...
    assert max(lrs) == lrs[10] == pytest.approx(1e-3)  # ...to the peak at warmup_steps
    assert all(a > b for a, b in zip(lrs[10:99], lrs[11:100], strict=True))  # then decays
    assert lrs[55] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)  # linear at power 1: halfway
    assert lrs[100] == lrs[120] == pytest.approx(1e-5)
    quad = OptimConfig(lr=1e-3, warmup_steps=0, max_steps=100, power=2.0)
    assert lr_at(0, quad) == pytest.approx(1e-3)
    assert lr_at(50, quad) == pytest.approx(1e-3 * 0.25)


# ----------------------------------------------------------------------------------------------
# a short run


def test_pretrain_writes_the_run(data_dir: Path, tmp_path: Path) -> None:
    cfg = tiny_pretrain_config(train={"tensorboard": True, "amp": "bf16", "save_every": 4},
                               optim={"clip_norm": 1.0})
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="needs CUDA"):  # amp is a CUDA feature; the CPU runs fp32
        summary = pretrain(cfg, [data_dir], run, progress=False)

    assert summary.steps == 6 and summary.stopped_by == "max_steps" and summary.train_clips == 8
    assert summary.skipped_files == 0 and math.isfinite(summary.final["loss"])
    rows = read_metrics(run / "metrics.csv")
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert set(COLUMNS) <= set(rows[0])
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("loss", "contrastive", "diversity", "feature_penalty",
                                                  "accuracy", "grad_norm", "lr", "temperature"))
        assert 0.0 <= r["negatives_equal_positive"] <= 1.0 and r["masked_frames"] > 0
    assert rows[-1]["lr"] == pytest.approx(lr_at(5, cfg.optim))  # the rate of the last update
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "training_curves.png").stat().st_size > 10_000

    ckpt = run / "checkpoint_last"
    for name in ("model.safetensors", "config.json", "train_state.safetensors", "train_state.json"):
        assert (ckpt / name).exists(), name
    meta = json.loads((ckpt / "config.json").read_text())
    assert meta["step"] == 6 and meta["config"]["model"]["embed_dim"] == 32
    model = checkpoint.load_pretrained(ckpt)  # the checkpoint describes itself
    assert model.temperature == pytest.approx(cfg.loss.temp_start * cfg.loss.temp_decay ** 6)
    state = json.loads((ckpt / "train_state.json").read_text())
    assert state["step"] == 6 and state["world_size"] == 1 and len(state["rng"]) == 1
    tensors = load_file(str(ckpt / "train_state.safetensors"))
    assert "rng.0.generator" in tensors and "rng.0.torch" in tensors
    assert any(k.startswith("optim.") and k.endswith(".exp_avg_sq") for k in tensors)

    saved = json.loads((run / "summary.json").read_text())
    assert saved["steps"] == 6 and saved["run_dir"] == str(run)
    with pytest.raises(FileExistsError, match="resume"):  # never overwrite a run by accident
        pretrain(cfg, [data_dir], run, progress=False)


# ----------------------------------------------------------------------------------------------
# resume


@pytest.mark.parametrize("case", ["mid_epoch", "grad_accum_dropout"])
def test_resume_continues_exactly(data_dir: Path, tmp_path: Path, case: str) -> None:
    if case == "mid_epoch":
        cfg = tiny_pretrain_config()
    else:  # dropout (global RNG) and LayerDrop (the injected generator) must continue their streams too
        cfg = tiny_pretrain_config(optim={"grad_accum": 2},
                                   model={"dropout": 0.1, "layerdrop": 0.3, "dropout_features": 0.1})
    straight = pretrain(cfg, [data_dir], tmp_path / "a", progress=False)
    first = pretrain(cfg, [data_dir], tmp_path / "b", progress=False, stop_after=3)
    assert first.steps == 3 and first.stopped_by == "stop_after"
    state = json.loads((tmp_path / "b/checkpoint_last/train_state.json").read_text())
    # Interrupted inside an epoch: the resumed run must skip exactly the batches already used.
    assert state["batches_done"] > 0 and state["epoch"] == (0 if case == "mid_epoch" else 1)
    resumed = pretrain(cfg, [data_dir], tmp_path / "b", resume=True, progress=False)
    assert resumed.start_step == 3 and resumed.steps == 6

    a = load_file(str(tmp_path / "a/checkpoint_last/model.safetensors"))
    b = load_file(str(tmp_path / "b/checkpoint_last/model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    oa = load_file(str(tmp_path / "a/checkpoint_last/train_state.safetensors"))
    ob = load_file(str(tmp_path / "b/checkpoint_last/train_state.safetensors"))
    assert all(torch.equal(oa[k], ob[k]) for k in oa)  # Adam moments and RNG states too
    # The metrics file continues: one row per logged step, the same losses as the straight run.
    rows_a, rows_b = read_metrics(tmp_path / "a/metrics.csv"), read_metrics(tmp_path / "b/metrics.csv")
    assert [r["step"] for r in rows_b] == [2, 3, 4, 6]  # 3: the row written at the interruption
    assert rows_b[-1]["loss"] == rows_a[-1]["loss"]
    assert straight.final == resumed.final


# ----------------------------------------------------------------------------------------------
# bad data


def test_no_usable_audio_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tiny_pretrain_config()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoUsableAudioError, match="no usable audio in .*empty"):
        pretrain(cfg, [empty], tmp_path / "r1", progress=False)

    only_test = write_clips(tmp_path / "only_test", n=2, split="test")
    with pytest.raises(NoUsableAudioError, match=r"2 files skipped \(2 outside a train split"):
        pretrain(cfg, [only_test], tmp_path / "r2", progress=False)

    garbage = tmp_path / "garbage" / "fan" / "train"
    garbage.mkdir(parents=True)
    for i in range(2):
        (garbage / f"normal_id_00_{i:08d}.wav").write_bytes(b"not a wav file at all" * 10)
    with pytest.raises(NoUsableAudioError, match="no usable audio"), pytest.warns(UserWarning, match="skipped 2"):
        pretrain(cfg, [tmp_path / "garbage"], tmp_path / "r3", progress=False)

    short = tmp_path / "short" / "fan" / "train"
    short.mkdir(parents=True)
    sf.write(short / "normal_id_00_00000000.wav", np.zeros(1000, np.float32), SR)
    with pytest.raises(NoUsableAudioError, match="1 files skipped"), pytest.warns(UserWarning, match="shorter"):
        pretrain(cfg, [tmp_path / "short"], tmp_path / "r4", progress=False)


def test_bad_files_are_skipped_and_counted(tmp_path: Path) -> None:
    data = write_clips(tmp_path / "data")
    write_clips(data, n=1, split="test", first=20)  # a test clip: never used for pretraining
    (data / "fan" / "train" / "normal_id_00_00000100.wav").write_bytes(b"RIFF garbage")  # bad header
    nan = np.full(SR, np.nan, dtype=np.float32)  # a valid header, but samples that fail at decode time
    sf.write(data / "fan" / "train" / "normal_id_00_00000101.wav", nan, SR, subtype="FLOAT")
    cfg = tiny_pretrain_config(optim={"max_steps": 5})  # > one epoch: every clip is read once
    with pytest.warns(UserWarning, match="skipping a bad clip"), \
            pytest.warns(UserWarning, match="skipped 1 unreadable"):
        summary = pretrain(cfg, [data], tmp_path / "run", progress=False)
    assert summary.steps == 5 and math.isfinite(summary.final["loss"])
    assert summary.train_clips == 9  # the NaN clip passes the header check
    assert summary.skipped == {"unreadable": 1, "too_short": 0, "failed_to_decode": 1}
    assert summary.skipped_files == 2 and summary.unused_clips == 1
    assert json.loads((tmp_path / "run/summary.json").read_text())["skipped_files"] == 2
