"""The CPU fast paths (model/conv.py, contrastive logits) agree with plain PyTorch, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CONV

from aiot_w2v2.model import FeatureEncoder
from aiot_w2v2.model.conv import conv1d, conv1d_time_major
from aiot_w2v2.model.losses import contrastive_logits, sample_negative_indices


def _grads(out: torch.Tensor, grad: torch.Tensor, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    params = [t for t in tensors if t is not None and t.requires_grad]
    found = iter(torch.autograd.grad(out, params, grad))
    return [next(found) if t is not None and t.requires_grad else None for t in tensors]


@pytest.mark.parametrize("c_in,kernel,stride,bias", [(1, 10, 5, False), (6, 3, 2, True), (6, 2, 2, False),
                                                     (5, 3, 1, True)])
@pytest.mark.parametrize("time_major", [False, True])
def test_conv1d_matches_f_conv1d(c_in, kernel, stride, bias, time_major):
    torch.manual_seed(0)
    x = torch.randn(3, c_in, 101, requires_grad=c_in > 1)
    w = torch.randn(7, c_in, kernel, requires_grad=True)
    b = torch.randn(7, requires_grad=True) if bias else None
    ref = F.conv1d(x, w, b, stride)  # (B, C_out, T')
    g = torch.randn_like(ref)
    if time_major:
        x_tm = x.detach().transpose(1, 2).contiguous().requires_grad_(x.requires_grad)
        out = conv1d_time_major(x_tm, w, b, stride).transpose(1, 2)
        grads = _grads(out, g, x_tm, w, b)
        if grads[0] is not None:
            grads[0] = grads[0].transpose(1, 2)
    else:
        out = conv1d(x, w, b, stride)
        grads = _grads(out, g, x, w, b)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, _grads(ref, g, x, w, b), strict=True):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert torch.backends.mkldnn.enabled  # switched off only while a backward runs


@pytest.mark.parametrize("mode", ["group_norm", "layer_norm"])
def test_feature_encoder_training_path_matches_inference_path(mode):
    torch.manual_seed(0)
    enc = FeatureEncoder(TINY_CONV, mode=mode, conv_bias=True)
    wave = torch.randn(2, 6000)
    train_out, _ = enc(wave)  # grad enabled: the CPU training kernels
    with torch.no_grad():
        plain_out, _ = enc(wave)  # F.conv1d
    assert train_out.shape == plain_out.shape
    torch.testing.assert_close(train_out, plain_out, rtol=1e-5, atol=1e-5)


def _reference_logits(context, targets, negative_index, logit_temp):
    """The plain formulation: gather the (N, 1 + K, D) candidates, F.cosine_similarity."""
    negatives = targets[negative_index]
    candidates = torch.cat([targets[:, None, :], negatives], dim=1)
    logits = F.cosine_similarity(context[:, None, :], candidates, dim=-1) / logit_temp
    neg_is_pos = (negatives == targets[:, None, :]).all(-1)
    logits[:, 1:] = logits[:, 1:].masked_fill(neg_is_pos, float("-inf"))
    return logits, neg_is_pos


def test_contrastive_logits_match_the_gathered_cosine_similarity():
    g = torch.Generator().manual_seed(0)
    clip_index = torch.sort(torch.randint(0, 3, (60,), generator=g)).values
    neg = sample_negative_indices(clip_index, 10, 5, generator=g)
    context = torch.randn(60, 16, generator=g, requires_grad=True)
    targets = torch.randn(60, 16, generator=g)
    targets[7] = targets[3]  # duplicate targets: distractors equal to the positive get -inf
    targets[20] = targets[3]
    targets.requires_grad_(True)
    logits, neg_is_pos = contrastive_logits(context, targets, neg, 0.1)
    ref_logits, ref_neg_is_pos = _reference_logits(context, targets, neg, 0.1)
    assert torch.equal(neg_is_pos, ref_neg_is_pos) and bool(neg_is_pos.any())
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    target = torch.zeros(60, dtype=torch.long)
    grads = torch.autograd.grad(F.cross_entropy(logits, target), [context, targets])
    ref_grads = torch.autograd.grad(F.cross_entropy(ref_logits, target), [context, targets])
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
