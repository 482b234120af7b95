"""aiot_w2v2.train under DDP on the CPU (gloo): the masked-frame normalisation, and a 2-rank torchrun run.

The gradient check compares 2 ranks x 2 clips with one process holding all 4 clips. To make the two
computations the same function of the weights, randomness is taken out: an explicit mask, dropout
0, eval mode (the quantizer takes the argmax instead of Gumbel noise), and every clip masks at most 2
frames, so a frame's distractors can only be the other masked frame of its clip (or none). The
diversity and feature-penalty terms are per-batch statistics (as in fairseq under DDP), so their
weights are 0 here; what is left is the contrastive loss, a mean over all masked frames.
"""

from __future__ import annotations

import copy
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from conftest import tiny_model_config
from safetensors.torch import load_file
from test_pretrain import tiny_pretrain_config, write_clips
from torch.nn.parallel import DistributedDataParallel

from aiot_w2v2.config import LossConfig, MaskingConfig, to_dict
from aiot_w2v2.model import Wav2Vec2ForPreTraining
from aiot_w2v2.train import normalize_gradients, release_process_group
from aiot_w2v2.train.metrics import read_metrics

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """4 clips of 4000 samples (12 frames) and a mask with 2, 2 | 2, 1 masked frames (rank 0 | rank 1)."""
    g = torch.Generator().manual_seed(3)
    t = torch.arange(4000) / 16000
    wave = torch.stack([0.3 * torch.sin(2 * torch.pi * (200 + 90 * i) * t) for i in range(4)])
    wave = wave + 0.3 * torch.randn(4, 4000, generator=g)  # (4, 4000)
    mask = torch.zeros(4, 12, dtype=torch.bool)  # (4, T=12)
    mask[0, [1, 8]] = mask[1, [2, 10]] = mask[2, [0, 6]] = True
    mask[3, 5] = True  # unequal frame counts per rank: 4 vs 3
    return wave, mask


def _gradient_worker(rank: int, port: int) -> None:
    torch.set_num_threads(1)  # two processes share the CPU
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        _check_gradients(rank)
    finally:
        release_process_group()


def _check_gradients(rank: int) -> None:
    """The DDP gradients of this rank's half of the batch against one process on the whole batch."""
    torch.manual_seed(0)
    loss_cfg = LossConfig(num_negatives=10, diversity_weight=0.0, feature_penalty_weight=0.0)
    model = Wav2Vec2ForPreTraining(tiny_model_config(num_heads=2), MaskingConfig(), loss_cfg).eval()
    reference = copy.deepcopy(model)
    wave, mask = _global_batch()

    # One process, the global batch: the loss is the mean over all 7 masked frames.
    whole = reference(wave, mask=mask, generator=torch.Generator().manual_seed(1))
    whole.loss.backward()
    assert float(whole.loss.detach()) > 0.1

    # Two ranks, two clips each, through the training loop's normalisation.
    ddp = DistributedDataParallel(model)
    mine = slice(2 * rank, 2 * rank + 2)
    out = ddp(wave[mine], mask=mask[mine], generator=torch.Generator().manual_seed(1))
    assert out.num_masked == (4 if rank == 0 else 3)
    (out.loss * out.num_masked).backward()
    params = [p for p in model.parameters() if p.requires_grad]
    assert normalize_gradients(params, out.num_masked, WORLD, torch.device("cpu")) == 7

    # float32 sums in another order: equal up to rounding, relative to each tensor's scale (with a
    # floor for gradients that are zero up to rounding, like the attention key bias's)
    floor = 1e-6 * max(float(q.grad.abs().max()) for q in reference.parameters())
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        atol = max(1e-5 * float(q.grad.abs().max()), floor)
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=atol, msg=lambda m, n=name: f"{n}: {m}")
    # Averaging the per-rank means instead (DDP's default) would weigh rank 1's 3 frames like
    # rank 0's 4: a different objective, so the check above can tell the two apart.
    mean_of_means = out.loss.detach().clone()
    dist.all_reduce(mean_of_means)
    assert abs(float(mean_of_means) / WORLD - float(whole.loss.detach())) > 1e-3


@pytest.mark.slow
def test_ddp_gradients_equal_one_process_on_the_global_batch() -> None:
    mp.spawn(_gradient_worker, args=(_free_port(),), nprocs=WORLD, join=True)


@pytest.mark.slow
def test_two_rank_torchrun_pretrain_saves_and_resumes(tmp_path: Path) -> None:
    data = write_clips(tmp_path / "data")
    # LayerDrop makes the ranks skip different layers (find_unused_parameters), grad_accum uses no_sync.
    cfg = tiny_pretrain_config(optim={"max_steps": 4, "grad_accum": 2}, train={"save_every": 2},
                               model={"layerdrop": 0.5, "dropout": 0.1})
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(to_dict(cfg)))
    run = tmp_path / "run"

    def torchrun(*extra: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
               "-m", "aiot_w2v2.train.pretrain", "--config", str(config), "--data", str(data), "--out", str(run),
               "--no-progress", *extra]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
        return res

    torchrun()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == WORLD and summary["steps"] == 4 and summary["train_clips"] == 8
    state = json.loads((run / "checkpoint_last/train_state.json").read_text())
    assert state["world_size"] == WORLD and len(state["rng"]) == WORLD
    tensors = load_file(str(run / "checkpoint_last/train_state.safetensors"))
    # Each rank has its own masking stream, and each is saved.
    assert not torch.equal(tensors["rng.0.generator"], tensors["rng.1.generator"])
    assert [r["step"] for r in read_metrics(run / "metrics.csv")] == [2, 4]

    # Resume both ranks with a longer schedule (a changed config: warned, not exact, but it continues).
    res = torchrun("--resume", "--set", "optim.max_steps=6")
    assert "changed config (optim.max_steps)" in res.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["start_step"] == 4 and summary["steps"] == 6
    assert [r["step"] for r in read_metrics(run / "metrics.csv")] == [2, 4, 6]
