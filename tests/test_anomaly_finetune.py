"""Anomaly fine-tuning: the angular-margin head, the pseudo-class batches, the loop, its resume and errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model_config

from aiot_w2v2.anomaly.embedder import AnomalyEmbedder, ConvEmbedder, LearnedExtras, Rhythm
from aiot_w2v2.anomaly.finetune import AnomalyFinetuneConfig, finetune_embedder
from aiot_w2v2.anomaly.margin import AngularMarginHead, arcface_cosine
from aiot_w2v2.anomaly.pseudo import make_batch
from aiot_w2v2.checkpoint import CheckpointError
from aiot_w2v2.config import ConfigError, LossConfig, PretrainConfig
from aiot_w2v2.model import Wav2Vec2ForPreTraining
from aiot_w2v2.synth import generate_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = AnomalyFinetuneConfig(part="transformer", steps=6, batch_windows=8, crop_seconds=0.5, warmup_steps=2,
                             embedding_dim=16, subclusters=2, save_every=2, min_clips=2)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[str]]:
    root = tmp_path_factory.mktemp("data")
    generate_dataset(root, machines=["fan", "valve"], ids_per_machine=1, n_train=4, n_test_normal=0,
                     n_test_anomaly=0, seconds=1.0, progress=False)
    paths = sorted(str(p) for p in root.glob("*/train/*.wav"))
    return paths, [f"{Path(p).parts[-3]}/id_00" for p in paths]


def _pretrained(seed: int = 0, **model) -> tuple[Wav2Vec2ForPreTraining, PretrainConfig]:
    torch.manual_seed(seed)
    cfg = PretrainConfig(model=tiny_model_config(extractor_mode="layer_norm", conv_bias=True, **model),
                         loss=LossConfig(num_negatives=0, cross_sample_negatives=10))
    return Wav2Vec2ForPreTraining(cfg.model, cfg.masking, cfg.loss), cfg


def test_arcface_margin_adds_m_to_the_target_angle_only() -> None:
    cos = torch.tensor([[[0.9, 0.2], [0.1, -0.99]]])  # (B=1, C=2, K=2)
    target = torch.tensor([[1.0, 0.0]])
    out = arcface_cosine(cos, target, 0.3)
    expected = torch.cos(torch.acos(torch.tensor([0.9, 0.2])) + 0.3)
    torch.testing.assert_close(out[0, 0], expected)
    torch.testing.assert_close(out[0, 1], cos[0, 1])  # not a target: unchanged
    near_pi = arcface_cosine(torch.tensor([[[-0.999]], [[0.5]]]), torch.ones(2, 1), 0.5)
    assert float(near_pi[0, 0, 0]) == pytest.approx(-1.0)  # theta + m capped at pi: the margin never raises it
    assert torch.equal(arcface_cosine(cos, target, 0.0), cos)


def test_head_class_probability_sums_its_subclusters_and_adacos_starts_at_eq_12() -> None:
    head = AngularMarginHead(4, num_classes=3, subclusters=2, generator=torch.Generator().manual_seed(0))
    assert float(head.scale) == pytest.approx(math.sqrt(2) * math.log(3 * 2 - 1))
    x = torch.randn(5, 4)
    cos = head.cosine(x)
    manual = torch.softmax(head.scale * cos.flatten(1), -1).view(5, 3, 2).sum(-1)
    torch.testing.assert_close(head.log_probs(cos).exp(), manual)
    # the loss of a one-hot target is the negative log of that class's summed probability
    target = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0, 1]), 3).float()
    head.eval()  # no scale update
    torch.testing.assert_close(head.loss(x, target), -manual[torch.arange(5), target.argmax(1)].log().mean())
    arc = AngularMarginHead(4, num_classes=3, margin=0.5, scale=10.0)
    arc.eval()
    with torch.no_grad():
        assert float(arc.loss(x, target)) > float(-(target * arc.log_probs(arc.cosine(x))).sum(-1).mean())


def test_adacos_scale_follows_eq_14() -> None:
    head = AngularMarginHead(4, num_classes=4, generator=torch.Generator().manual_seed(1))
    x, target = torch.randn(6, 4), torch.nn.functional.one_hot(torch.arange(6) % 4, 4).float()
    s0, cos = float(head.scale), head.cosine(x).detach()
    head.loss(x, target)  # train mode: updates the scale
    b_avg = (torch.exp(s0 * cos[:, :, 0]) * (1 - target)).sum(1).mean()
    theta = torch.acos(cos[torch.arange(6), target.argmax(1), 0]).median().clamp(max=math.pi / 4)
    assert float(head.scale) == pytest.approx(float(torch.log(b_avg) / torch.cos(theta)), rel=1e-5)


def test_pseudo_class_batches_are_a_function_of_the_generator() -> None:
    rng = np.random.default_rng(0)
    audio = [rng.standard_normal(4000).astype(np.float32) for _ in range(6)]
    classes = [0, 0, 1, 1, 2, 2]

    def batch(seed: int):
        return make_batch(audio.__getitem__, classes, 3, 8, 1000, (0.8, 1.25), 0.5, 0.3,
                          torch.Generator().manual_seed(seed))

    a, b, c = batch(7), batch(7), batch(8)
    assert torch.equal(a.audio, b.audio) and torch.equal(a.target, b.target) and torch.equal(a.label, b.label)
    assert not torch.equal(a.audio, c.audio)
    assert a.audio.shape == (8, 1000) and a.target.shape == (8, 9)
    torch.testing.assert_close(a.target.sum(1), torch.ones(8))
    assert int(a.label.max()) < 9
    # unmixed samples carry their own class; their speed class is label % 3
    pure = a.target.max(1).values == 1
    assert torch.equal(a.target[pure].argmax(1), a.label[pure])


def test_finetuning_reduces_its_training_loss(clips: tuple[list[str], list[str]], tmp_path: Path) -> None:
    model, pcfg = _pretrained()
    cfg = AnomalyFinetuneConfig(part="transformer", steps=40, batch_windows=8, crop_seconds=1.0, warmup_steps=5,
                                lr=3e-3, embedding_dim=16, subclusters=1, scale=10.0, speeds=(0.5,), mixup_prob=0.0,
                                exchange_prob=0.0, min_clips=2, save_every=100)
    paths, keys = clips
    embedder, summary = finetune_embedder(model, pcfg, paths, keys, keys, cfg, tmp_path, progress=False)
    assert summary.steps == 40 and summary.classes == 4
    assert summary.final_loss < summary.first_loss - 0.3
    assert isinstance(embedder, AnomalyEmbedder) and not embedder.training
    before = model.wav2vec2.encoder.layers[-1].fc2.weight
    assert not torch.equal(embedder.encoder.layers[-1].fc2.weight, before)  # the Transformer itself trained


def test_resume_continues_exactly(clips: tuple[list[str], list[str]], tmp_path: Path) -> None:
    paths, keys = clips
    model, pcfg = _pretrained()
    whole, _ = finetune_embedder(model, pcfg, paths, keys, keys, FAST, tmp_path / "a", progress=False)
    _, first = finetune_embedder(model, pcfg, paths, keys, keys, FAST, tmp_path / "b", progress=False, stop_after=3)
    assert first.stopped_by == "stop_after" and first.steps == 3
    resumed, second = finetune_embedder(model, pcfg, paths, keys, keys, FAST, tmp_path / "b", progress=False,
                                        resume=True)
    assert second.start_step == 3 and second.steps == 6
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_low_rank_adapters_train_only_adapters_and_merge(clips: tuple[list[str], list[str]], tmp_path: Path) -> None:
    paths, keys = clips
    model, pcfg = _pretrained()
    cfg = AnomalyFinetuneConfig(**{**FAST.__dict__, "adapter_rank": 2})
    embedder, _ = finetune_embedder(model, pcfg, paths, keys, keys, cfg, tmp_path, progress=False)
    # merged back into plain linears with the pretrained structure; the conv-independent norms never trained
    assert set(embedder.state_dict()) == set(AnomalyEmbedder(model.wav2vec2, 16).state_dict())
    torch.testing.assert_close(embedder.layer_norm.weight, model.wav2vec2.layer_norm.weight)
    q = embedder.encoder.layers[0].self_attn.q_proj.weight
    assert not torch.equal(q, model.wav2vec2.encoder.layers[0].self_attn.q_proj.weight)


def test_a_machine_id_with_too_few_clips_is_named(clips: tuple[list[str], list[str]], tmp_path: Path) -> None:
    paths, keys = clips
    model, pcfg = _pretrained()
    fan = [i for i, k in enumerate(keys) if k == "fan/id_00"]
    keep = fan + [next(i for i, k in enumerate(keys) if k != "fan/id_00")]
    sub_p, sub_k = [paths[i] for i in keep], [keys[i] for i in keep]
    with pytest.raises(ValueError, match=r"valve/id_00 \(1\)") as err:
        finetune_embedder(model, pcfg, sub_p, sub_k, sub_k, FAST, tmp_path, progress=False)
    assert "fan/id_00" not in str(err.value)


def test_resuming_from_another_pretrained_config_is_refused_with_the_difference(
        clips: tuple[list[str], list[str]], tmp_path: Path) -> None:
    paths, keys = clips
    model, pcfg = _pretrained()
    finetune_embedder(model, pcfg, paths, keys, keys, FAST, tmp_path, progress=False, stop_after=2)
    other, ocfg = _pretrained(embed_dim=48, ffn_dim=96)
    with pytest.raises(CheckpointError, match=r"embed_dim: 32 -> 48.*ffn_dim: 64 -> 96"):
        finetune_embedder(other, ocfg, paths, keys, keys, FAST, tmp_path, progress=False, resume=True)


def _pooled_blocks(w2v, x: torch.Tensor, layers: tuple[int, ...]) -> torch.Tensor:
    """Mean and std over time of the pretrained conv blocks' outputs (the `learned` embedding without fine-tuning)."""
    out, parts = x[:, :, None], []
    for i, block in enumerate(w2v.feature_extractor.blocks[: max(layers) + 1]):
        out, _ = block(out, None)
        if i in layers:
            parts += [out.mean(1), out.std(1)]
    return torch.cat(parts, 1)


def test_conv_part_trains_a_copy_of_the_conv_blocks_and_resumes_exactly(
        clips: tuple[list[str], list[str]], tmp_path: Path) -> None:
    paths, keys = clips
    model, pcfg = _pretrained()
    w2v = model.wav2vec2
    frozen = {k: v.clone() for k, v in w2v.feature_extractor.state_dict().items()}
    x = torch.randn(2, 8000)
    with torch.no_grad():  # untrained, the copy pools exactly what the learned scorer reads without fine-tuning
        torch.testing.assert_close(ConvEmbedder(w2v, (0, 2), 16).pooled(x), _pooled_blocks(w2v, x, (0, 2)))
    cfg = AnomalyFinetuneConfig(**{**FAST.__dict__, "part": "conv", "conv_lr": 1e-3, "lr": 3e-3, "steps": 30,
                                   "scale": 10.0, "subclusters": 1, "mixup_prob": 0.0, "exchange_prob": 0.0})
    whole, summary = finetune_embedder(model, pcfg, paths, keys, keys, cfg, tmp_path / "a", conv_layers=(0, 2),
                                       progress=False)
    assert isinstance(whole, ConvEmbedder) and not whole.training and len(whole.blocks) == 3
    assert summary.final_loss < summary.first_loss
    for k, v in w2v.feature_extractor.state_dict().items():  # the pretrained encoder never moves
        assert torch.equal(v, frozen[k]), k
    assert not torch.equal(whole.blocks[0].conv.weight, w2v.feature_extractor.blocks[0].conv.weight)
    with torch.no_grad():
        assert whole.pooled(x).shape == (2, 2 * 2 * pcfg.model.conv_layers[0][0])
    _, first = finetune_embedder(model, pcfg, paths, keys, keys, cfg, tmp_path / "b", conv_layers=(0, 2),
                                 progress=False, stop_after=13)
    resumed, second = finetune_embedder(model, pcfg, paths, keys, keys, cfg, tmp_path / "b", conv_layers=(0, 2),
                                        progress=False, resume=True)
    assert first.steps == 13 and second.start_step == 13 and second.steps == 30
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # a state of the other part (or other blocks) is not resumed into this one
    with pytest.raises(CheckpointError, match=r"part 'conv' \(conv layers \[0, 2\], .*'conv' \(conv layers \[1\], "):
        finetune_embedder(model, pcfg, paths, keys, keys, cfg, tmp_path / "b", conv_layers=(1,), progress=False,
                          resume=True)
    extras = LearnedExtras((Rhythm.of(w2v.feature_extractor, 2, 10.0, (10.0, 20.0), 2),), (0,))  # nor other extras
    with pytest.raises(CheckpointError, match=r"extras None\).*extras \{'rhythms': \[\{'block': 2, 'pool': 8, "
                                              r"'lags': \[1, 2\], 'groups': 2\}\], 'kurtosis': \[0\]"):
        finetune_embedder(model, pcfg, paths, keys, keys, cfg, tmp_path / "b", conv_layers=(0, 2), extras=extras,
                          progress=False, resume=True)
    with pytest.raises(CheckpointError, match="part 'conv'.*'transformer'"):
        finetune_embedder(model, pcfg, paths, keys, keys, FAST, tmp_path / "b", progress=False, resume=True)
    # a state written before the extras existed (session 11: one `rhythm`) resumes with that rhythm alone
    one = LearnedExtras((extras.rhythms[0],))
    finetune_embedder(model, pcfg, paths, keys, keys, cfg, tmp_path / "c", conv_layers=(0, 2), extras=one,
                      progress=False, stop_after=3)
    meta_file = tmp_path / "c" / "finetune" / "checkpoint_last" / "finetune.json"
    meta = json.loads(meta_file.read_text())
    meta["rhythm"] = meta.pop("extras")["rhythms"][0]
    meta_file.write_text(json.dumps(meta))
    _, legacy = finetune_embedder(model, pcfg, paths, keys, keys, cfg, tmp_path / "c", conv_layers=(0, 2),
                                  extras=one, progress=False, resume=True, stop_after=2)
    assert legacy.start_step == 3 and legacy.steps == 5
    with pytest.raises(CheckpointError, match="extras"):  # but not with the kurtosis added
        finetune_embedder(model, pcfg, paths, keys, keys, cfg, tmp_path / "c", conv_layers=(0, 2), extras=extras,
                          progress=False, resume=True)


def test_conv_part_settings_are_checked(clips: tuple[list[str], list[str]], tmp_path: Path) -> None:
    paths, keys = clips
    model, pcfg = _pretrained()
    with pytest.raises(ConfigError, match="finetune.part must be"):
        AnomalyFinetuneConfig(part="mel").validate()
    with pytest.raises(ConfigError, match="adapter_rank applies to part 'transformer' only"):
        AnomalyFinetuneConfig(part="conv", adapter_rank=4).validate()
    with pytest.raises(ConfigError, match="needs learned_layers of conv blocks"):
        finetune_embedder(model, pcfg, paths, keys, keys, AnomalyFinetuneConfig(**{**FAST.__dict__, "part": "conv"}),
                          tmp_path, progress=False)
