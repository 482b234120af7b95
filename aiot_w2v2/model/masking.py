"""Span masking of latent frames (paper Section 3.1; fairseq compute_mask_indices, "static" spans).

Each valid frame starts a span of M frames with probability p (p=0.065, M=10 masks about 49% of
frames, as spans overlap). Randomness comes only from the injected `torch.Generator`, so a seeded
run masks the same frames again. Padding frames are never masked. Nothing here knows the model.
"""

from __future__ import annotations

import torch
from torch import Tensor


def compute_span_mask(
    shape: tuple[int, int],
    mask_prob: float,
    mask_length: int,
    *,
    lengths: Tensor | None = None,
    min_masks: int = 0,
    no_overlap: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Bool mask (B, T), True = masked.

    For each clip with n valid frames, int(p * n + U[0,1)) span starts (at least `min_masks`) are
    drawn without replacement; spans are `mask_length` frames long, clipped to the valid part. A clip
    shorter than M frames gets one span covering all but one of its frames (none if it has one frame).
    """
    batch, frames = shape
    if mask_prob <= 0:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    lengths_list = [frames] * batch if lengths is None else [int(n) for n in lengths.tolist()]
    mask = torch.zeros(shape, dtype=torch.bool)
    uniform = torch.rand(batch, generator=generator)
    for b, n in enumerate(lengths_list):
        if n <= 1:
            continue
        span = min(mask_length, n - 1)
        num = max(min_masks, int(mask_prob * n + float(uniform[b])))
        if n <= mask_length:
            num = 1  # one span already covers all but one frame
        candidates = n - span + 1
        if no_overlap:
            num = min(num, max(1, n // (span + 1)))
            starts = _non_overlapping_starts(n, span, num, generator)
        else:
            num = min(num, candidates)
            starts = torch.randperm(candidates, generator=generator)[:num]
        if starts.numel() == 0:
            continue
        idx = (starts[:, None] + torch.arange(span)[None, :]).reshape(-1)  # (num * span,)
        mask[b, idx.clamp(max=n - 1)] = True
    return mask.to(device)


def _non_overlapping_starts(n: int, span: int, num: int, generator: torch.Generator | None) -> Tensor:
    # Place `num` spans with at least one free frame between them: distribute the free frames
    # randomly into num + 1 gaps (stars and bars).
    free = n - num * span
    if free < num - 1:
        num = max(1, (n + 1) // (span + 1))
        free = n - num * span
    cuts = torch.sort(torch.randperm(free - (num - 1) + num, generator=generator)[:num]).values
    gaps = cuts - torch.arange(num)  # non-decreasing, sum bounded by free - (num - 1)
    return gaps + torch.arange(num) * (span + 1)


def frame_padding_mask(lengths: Tensor, frames: int) -> Tensor:
    """(B, T) bool, True where frame index >= length (padding)."""
    return torch.arange(frames, device=lengths.device)[None, :] >= lengths[:, None]
