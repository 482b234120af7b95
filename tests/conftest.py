"""Shared fixtures: tiny model configs that run in milliseconds on a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# The hook that ends the run with the tests skipped for a missing system package (mosquitto, chromium).
from system_packages import pytest_terminal_summary  # noqa: F401

from aiot_w2v2.config import LossConfig, MaskingConfig, ModelConfig, PretrainConfig

torch.set_num_threads(2)

TINY_CONV = ((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2


def tiny_model_config(**overrides) -> ModelConfig:
    base = dict(conv_layers=TINY_CONV, embed_dim=32, num_layers=2, ffn_dim=64, num_heads=4, conv_pos=8,
                conv_pos_groups=4, latent_vars=8, latent_groups=2, final_dim=16, dropout=0.0,
                attention_dropout=0.0, dropout_input=0.0, dropout_features=0.0, layerdrop=0.0)
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return tiny_model_config()


@pytest.fixture
def tiny_loss() -> LossConfig:
    return LossConfig(num_negatives=10)


@pytest.fixture
def tiny_masking() -> MaskingConfig:
    return MaskingConfig()


@pytest.fixture
def one_thread():
    """One torch thread for the test (small layers; on a busy 2-core CPU two threads wait on each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def save_tiny_pretraining_run(root: Path, seed: int = 0) -> Path:
    """A run folder with a random tiny layer-norm pretraining checkpoint (cross-sample distractors) in
    `root/checkpoint_last`, as the anomaly scorers read it; returns `root`."""
    from aiot_w2v2.checkpoint import save_pretrained
    from aiot_w2v2.model import Wav2Vec2ForPreTraining

    torch.manual_seed(seed)
    cfg = PretrainConfig(model=tiny_model_config(extractor_mode="layer_norm", conv_bias=True),
                         loss=LossConfig(num_negatives=0, cross_sample_negatives=10))
    save_pretrained(Wav2Vec2ForPreTraining(cfg.model, cfg.masking, cfg.loss), cfg, root / "checkpoint_last")
    return root
