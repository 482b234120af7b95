"""Training batches for anomaly fine-tuning: crops of normal clips, labelled with pseudo-classes.

The auxiliary task (Wilkinghoff 2023, "Self-supervised learning for anomalous sound detection"): a
classifier must tell apart not only the metadata classes of normal clips (machine type / ID [/ domain
or attribute]), which is too easy for a network that sees spectra (a few tones identify an ID), but
also transformations of them, so the embedding has to keep the fine structure anomalies change:

- speed classes: the crop resampled by a factor (pitch and tempo together, `speeds`); class
  `metadata_class * (1 + len(speeds)) + k` with k = 0 the unchanged crop;
- mixup: with probability `mixup_prob` a sample is mixed with another of the batch, weight lambda
  ~ U(0, 1) on the waveforms, and its soft target mixes the two classes by the same weights;
- feature exchange (`exchange_prob`): the second half of the crop is replaced by that of another sample
  (the target is half each): a clip whose two halves disagree is not one machine's normal sound.

Every draw comes from one injected `torch.Generator`, so a batch is a pure function of the generator's
state (exact resume; tests check it). Audio comes from a callable that returns a clip's samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class PseudoBatch:
    audio: Tensor  # (B, S) float32
    target: Tensor  # (B, num_classes) soft labels, rows sum to 1
    label: Tensor  # (B,) the main class of each sample (before mixing)


def num_pseudo_classes(num_meta_classes: int, speeds: Sequence[float]) -> int:
    return num_meta_classes * (1 + len(speeds))


def _speed_crop(clip: np.ndarray, length: int, speed: float, u: float) -> Tensor:
    """`length` samples of `clip` played `speed` times as fast, from a start at fraction `u` of the slack."""
    need = int(round(length * speed))
    x = torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32))
    if x.shape[0] < need:  # short clip: repeat it (a machine sound is stationary enough)
        x = x.repeat(need // max(x.shape[0], 1) + 1)
    start = int(u * (x.shape[0] - need))
    x = x[start:start + need]
    if need == length:
        return x
    return F.interpolate(x[None, None], size=length, mode="linear", align_corners=False)[0, 0]


def make_batch(clips: Callable[[int], np.ndarray], clip_classes: Sequence[int], num_meta_classes: int,
               batch_size: int, length: int, speeds: Sequence[float], mixup_prob: float, exchange_prob: float,
               generator: torch.Generator) -> PseudoBatch:
    """One batch: `batch_size` crops of `length` samples from random clips (`clips(i)` -> samples of clip i,
    `clip_classes[i]` its metadata class), each in a random speed class, then mixup / exchange."""
    n_t = 1 + len(speeds)
    C = num_pseudo_classes(num_meta_classes, speeds)
    idx = torch.randint(len(clip_classes), (batch_size,), generator=generator)
    kind = torch.randint(n_t, (batch_size,), generator=generator)
    where = torch.rand(batch_size, generator=generator)
    factors = (1.0,) + tuple(speeds)
    audio = torch.stack([_speed_crop(clips(int(i)), length, factors[int(k)], float(u))
                         for i, k, u in zip(idx, kind, where, strict=True)])  # (B, S)
    label = torch.tensor([clip_classes[int(i)] for i in idx]) * n_t + kind  # (B,)
    target = F.one_hot(label, C).float()  # (B, C)

    # Mixup and exchange pair each sample with another of the batch (a random permutation).
    partner = torch.randperm(batch_size, generator=generator)
    lam = torch.rand(batch_size, generator=generator)
    mix = torch.rand(batch_size, generator=generator) < mixup_prob
    swap = (torch.rand(batch_size, generator=generator) < exchange_prob) & ~mix
    mixed_audio = lam[:, None] * audio + (1 - lam[:, None]) * audio[partner]
    mixed_target = lam[:, None] * target + (1 - lam[:, None]) * target[partner]
    half = length // 2
    swapped_audio = torch.cat([audio[:, :half], audio[partner, half:]], 1)
    swapped_target = 0.5 * target + 0.5 * target[partner]
    audio = torch.where(mix[:, None], mixed_audio, torch.where(swap[:, None], swapped_audio, audio))
    target = torch.where(mix[:, None], mixed_target, torch.where(swap[:, None], swapped_target, target))
    return PseudoBatch(audio, target, label)
