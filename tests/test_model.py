"""The wav2vec 2.0 modules: lengths, padding, masking, quantizer, losses, short clips."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_CONV, tiny_model_config

from aiot_w2v2.config import BASE_CONV, LossConfig, MaskingConfig
from aiot_w2v2.model import FeatureEncoder, Wav2Vec2ForPreTraining, conv_output_lengths, receptive_field
from aiot_w2v2.model.losses import contrastive_accuracy, sample_negative_indices
from aiot_w2v2.model.masking import compute_span_mask


def test_paper_conv_stack_has_stride_320_and_receptive_field_400():
    assert receptive_field(BASE_CONV) == (400, 320)


@pytest.mark.parametrize("mode", ["group_norm", "layer_norm"])
def test_conv_output_lengths_match_the_real_stack(mode):
    enc = FeatureEncoder(TINY_CONV, mode=mode).eval()
    for n in [400, 401, 719, 720, 721, 1000, 16000, 16001, 33333]:
        out, _ = enc(torch.randn(1, n))
        assert out.shape[-1] == int(conv_output_lengths(torch.tensor([n]), TINY_CONV)), n


def test_clip_shorter_than_receptive_field_is_a_clear_error(tiny_cfg):
    model = Wav2Vec2ForPreTraining(tiny_cfg).eval()
    with pytest.raises(ValueError, match="receptive field"):
        model.extract_features(torch.randn(1, 399))


def test_nan_input_is_a_clear_error(tiny_cfg):
    x = torch.randn(1, 4000)
    x[0, 10] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        Wav2Vec2ForPreTraining(tiny_cfg).eval().extract_features(x)


@pytest.mark.parametrize("layer_norm_first,mode", [(False, "group_norm"), (True, "layer_norm")])
def test_padding_does_not_change_an_unpadded_clip(layer_norm_first, mode):
    cfg = tiny_model_config(layer_norm_first=layer_norm_first, extractor_mode=mode)
    model = Wav2Vec2ForPreTraining(cfg).eval()
    torch.manual_seed(0)
    short, long = torch.randn(1, 9000), torch.randn(1, 16000)
    batch = torch.zeros(2, 16000)
    batch[0, :9000], batch[1] = short[0], long[0]
    pad = torch.zeros(2, 16000, dtype=torch.bool)
    pad[0, 9000:] = True
    alone = model.extract_features(short)
    padded = model.extract_features(batch, pad)
    frames = alone[-1].shape[1]
    for a, b in zip(alone, padded, strict=True):
        assert torch.allclose(a[0], b[0, :frames], atol=1e-5), (a[0] - b[0, :frames]).abs().max()
    # the long clip, unpadded in the batch, equals itself alone
    assert torch.allclose(model.extract_features(long)[-1][0], padded[-1][1], atol=1e-5)


def test_span_mask_matches_the_paper_rate_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    mask = compute_span_mask((64, 500), 0.065, 10, generator=g)
    # p=0.065, M=10 masks about 1 - (1 - p)^10 ~ 49% (spans overlap)
    assert abs(mask.float().mean().item() - (1 - (1 - 0.065) ** 10)) < 0.04
    again = compute_span_mask((64, 500), 0.065, 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)


def test_span_mask_respects_padding_and_short_clips():
    lengths = torch.tensor([100, 30, 5, 1])
    mask = compute_span_mask((4, 100), 0.065, 10, lengths=lengths, min_masks=2,
                             generator=torch.Generator().manual_seed(1))
    for b, n in enumerate(lengths.tolist()):
        assert not mask[b, n:].any()
    assert mask[2, :5].sum() == 4  # shorter than M: one span over all but one frame
    assert not mask[3].any()  # a single frame cannot be masked and still have context


def test_no_overlap_spans_are_separated():
    mask = compute_span_mask((8, 200), 0.065, 10, no_overlap=True, min_masks=2,
                             generator=torch.Generator().manual_seed(3))
    for row in mask:
        runs = torch.diff(torch.cat([torch.tensor([0]), row.int(), torch.tensor([0])])).nonzero()[:, 0]
        lengths = runs[1::2] - runs[0::2]
        assert (lengths % 10 == 0).all() and (lengths == 10).all()


def test_negatives_never_the_positive_and_stay_in_the_clip():
    clip = torch.tensor([0] * 7 + [1] * 3 + [2] * 12)
    idx = sample_negative_indices(clip, 20, generator=torch.Generator().manual_seed(0))
    rows = torch.arange(len(clip))[:, None]
    assert not (idx == rows).any()
    assert (clip[idx] == clip[:, None]).all()


def test_cross_sample_negatives_come_from_other_clips():
    clip = torch.tensor([0] * 7 + [1] * 3 + [2] * 12)
    idx = sample_negative_indices(clip, 0, 30, generator=torch.Generator().manual_seed(0))
    assert (clip[idx] != clip[:, None]).all()
    assert set(idx.unique().tolist()) == set(range(len(clip)))  # every frame is a candidate


def test_accuracy_counts_ties_as_wrong():
    logits = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 2.0, 0.0]])
    assert contrastive_accuracy(logits).item() == pytest.approx(1 / 3)


def test_pretraining_forward_reports_named_parts_and_backprops(tiny_cfg):
    loss_cfg = LossConfig(num_negatives=10, cross_sample_negatives=5)
    model = Wav2Vec2ForPreTraining(tiny_cfg, MaskingConfig(), loss_cfg).train()
    out = model(torch.randn(3, 16000), generator=torch.Generator().manual_seed(0))
    parts = out.losses
    expected = parts.contrastive + 0.1 * parts.diversity + 10.0 * parts.feature_penalty
    assert torch.allclose(out.loss, expected)
    assert out.logits.shape == (out.num_masked, 1 + 15)
    # an untrained model sits near chance: ln(K + 1)
    assert abs(parts.contrastive.item() - math.log(16)) < 1.5
    assert 1.0 <= out.code_perplexity.item() <= 16
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads if g is not None)
    assert model.wav2vec2.mask_emb.grad is not None and model.quantizer.codevectors.grad is not None


def test_seeded_forward_is_reproducible(tiny_cfg):
    model = Wav2Vec2ForPreTraining(tiny_cfg).train()
    x = torch.randn(2, 12000)
    a = model(x, generator=torch.Generator().manual_seed(5))
    b = model(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.loss, b.loss)


def test_explicit_mask_is_used(tiny_cfg):
    model = Wav2Vec2ForPreTraining(tiny_cfg).eval()
    x = torch.randn(1, 16000)
    T = int(conv_output_lengths(torch.tensor([16000]), TINY_CONV))
    mask = torch.zeros(1, T, dtype=torch.bool)
    mask[0, 10:20] = True
    out = model(x, mask=mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.mask, mask) and out.num_masked == 10


def test_temperature_anneals_and_floors(tiny_cfg):
    model = Wav2Vec2ForPreTraining(tiny_cfg)
    assert model.set_num_updates(0) == pytest.approx(2.0)
    assert model.set_num_updates(1000) == pytest.approx(2 * 0.999995 ** 1000)
    assert model.set_num_updates(10_000_000) == pytest.approx(0.5)


def test_codebook_init_modes(tiny_cfg):
    uniform = Wav2Vec2ForPreTraining(tiny_model_config(codebook_init="uniform")).quantizer.codevectors
    normal = Wav2Vec2ForPreTraining(tiny_cfg).quantizer.codevectors
    assert uniform.min() >= 0 and normal.min() < 0


def test_feature_grad_mult_scales_encoder_gradients():
    torch.manual_seed(0)
    x = torch.randn(2, 8000)
    grads = {}
    for mult in (1.0, 0.1):
        torch.manual_seed(1)
        model = Wav2Vec2ForPreTraining(tiny_model_config(feature_grad_mult=mult)).train()
        model(x, generator=torch.Generator().manual_seed(0)).loss.backward()
        grads[mult] = model.wav2vec2.feature_extractor.blocks[0].conv.weight.grad.clone()
    assert torch.allclose(grads[0.1], 0.1 * grads[1.0], rtol=1e-3, atol=1e-7)


def test_frozen_feature_encoder_gets_no_gradient():
    model = Wav2Vec2ForPreTraining(tiny_model_config(feature_grad_mult=0.0)).train()
    model(torch.randn(2, 8000), generator=torch.Generator().manual_seed(0)).loss.backward()
    assert model.wav2vec2.feature_extractor.blocks[0].conv.weight.grad is None


def test_duplicate_distractors_masked_or_kept():
    from aiot_w2v2.model.losses import contrastive_logits

    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # frames 0 and 1 share a code
    context = torch.tensor([[1.0, 0.1], [0.9, 0.0], [0.0, 1.0]])
    neg = torch.tensor([[1, 2], [0, 2], [0, 1]])
    masked, dup = contrastive_logits(context, targets, neg, 0.1, mask_duplicates=True)
    kept, _ = contrastive_logits(context, targets, neg, 0.1, mask_duplicates=False)
    assert dup.tolist() == [[True, False], [True, False], [False, False]]
    assert torch.isinf(masked[0, 1]) and torch.isfinite(kept).all()
    assert torch.allclose(kept[0, 1], kept[0, 0])  # a twin scores exactly like the positive: a tie, counted wrong
    assert contrastive_accuracy(kept)[()] <= contrastive_accuracy(masked)[()]


def test_chance_accuracy_accounts_for_removed_duplicates(tiny_cfg):
    model = Wav2Vec2ForPreTraining(tiny_cfg, MaskingConfig(), LossConfig(num_negatives=10)).eval()
    out = model(torch.randn(2, 16000), generator=torch.Generator().manual_seed(0))
    valid = (~torch.isinf(out.logits)).sum(1).float()
    assert out.chance_accuracy.item() == pytest.approx((1 / valid).mean().item())
    no_mask = LossConfig(num_negatives=10, mask_duplicate_negatives=False)
    kept = Wav2Vec2ForPreTraining(tiny_cfg, MaskingConfig(), no_mask)
    out = kept.eval()(torch.randn(2, 16000), generator=torch.Generator().manual_seed(0))
    assert out.chance_accuracy.item() == pytest.approx(1 / 11)
