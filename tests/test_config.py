"""Config loading: presets, overrides, and errors that name the key."""

from __future__ import annotations

import pytest

from aiot_w2v2.config import CONFIG_DIR, ConfigError, load_pretrain_config


@pytest.mark.parametrize("preset", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if not p.stem.startswith("asr")))
def test_every_preset_loads(preset):
    cfg = load_pretrain_config(preset)
    assert cfg.model.embed_dim % cfg.model.num_heads == 0


def test_base_and_large_follow_the_paper():
    base, large = load_pretrain_config("base"), load_pretrain_config("large")
    assert (base.model.embed_dim, base.model.num_layers, base.model.num_heads) == (768, 12, 12)
    assert (large.model.embed_dim, large.model.num_layers, large.model.num_heads) == (1024, 24, 16)
    assert not base.model.layer_norm_first and large.model.layer_norm_first
    assert base.model.extractor_mode == "group_norm" and large.model.extractor_mode == "layer_norm"
    assert (base.model.latent_groups, base.model.latent_vars) == (2, 320)
    assert base.loss.temp_end == 0.5 and large.loss.temp_end == 0.1
    assert base.masking.mask_prob == 0.065 and base.masking.mask_length == 10
    assert base.loss.num_negatives == 100 and base.loss.diversity_weight == 0.1


def test_override_and_nested_tuple():
    cfg = load_pretrain_config("base", ["optim.lr=1e-3", "model.conv_layers=[[64,10,5],[64,3,2]]"])
    assert cfg.optim.lr == 1e-3
    assert cfg.model.conv_layers == ((64, 10, 5), (64, 3, 2))


@pytest.mark.parametrize("override,needle", [
    ("model.embed_dimm=3", "model.embed_dimm"),
    ("optim.lr=fast", "optim.lr"),
    ("model.dropout=2.0", "model.dropout"),
    ("model.extractor_mode=batch_norm", "model.extractor_mode"),
    ("model.num_heads=5", "model.embed_dim"),
    ("train.amp=fp8", "train.amp"),
])
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_pretrain_config("base", [override])


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="tiny"):
        load_pretrain_config("nonexistent")
