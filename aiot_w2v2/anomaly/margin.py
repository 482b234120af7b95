"""Angular-margin classification heads for anomaly fine-tuning: ArcFace and (sub-cluster) AdaCos.

The embedding x and every class centre w are compared by their cosine only (both unit length), so a
normal clip's embedding learns to point at its class, and at test time the cosine distance to normal
embeddings is the anomaly score (Wilkinghoff 2021, sub-cluster AdaCos; 2023, self-supervised ASD).

- ArcFace (Deng et al. 2019): the target logit is s * cos(theta + m) instead of s * cos(theta): the
  margin m forces a gap between classes (a fixed scale s).
- AdaCos (Zhang et al. 2019): no margin; the scale s adapts during training so that the softmax keeps
  a useful gradient: s = log(B_avg) / cos(min(pi/4, theta_med)), with B_avg the mean over the batch of
  the summed exp(s * cos) of the non-target centres and theta_med the median target angle (eq. 14).
  Its starting value is sqrt(2) * log(C - 1) (eq. 12); both are floored at 1 (two centres would give 0).
- Sub-clusters: each class owns `subclusters` centres; a class's probability is the sum of the softmax
  over all centres of its own (a normal class may have several modes).

Targets are soft (B, classes): mixup spreads a sample over two classes. The knowledge here is only the
geometry; it knows nothing about audio or machines.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def arcface_cosine(cos: Tensor, target: Tensor, margin: float) -> Tensor:
    """cos (B, C, K), target (B, C) soft labels -> cos with cos(theta + m) where the class is a target.

    theta + m is capped at pi (cos(theta + m) would rise again past it: the margin must only ever lower
    the target's logit)."""
    if margin == 0:
        return cos
    theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    shifted = torch.cos((theta + margin).clamp(max=math.pi))
    return torch.where(target[:, :, None] > 0, shifted, cos)


class AngularMarginHead(nn.Module):
    """embedding (B, D) -> class log-probabilities (B, C); `loss` with soft targets.

    `scale` 0 = AdaCos's adaptive scale (then `margin` is normally 0); > 0 = a fixed scale (ArcFace).
    """

    def __init__(self, dim: int, num_classes: int, subclusters: int = 1, margin: float = 0.0, scale: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if num_classes < 2 or subclusters < 1 or margin < 0 or scale < 0:
            raise ValueError(f"need >= 2 classes, >= 1 sub-cluster, margin >= 0 and scale >= 0 (0 = adaptive); "
                             f"got {num_classes}, {subclusters}, {margin}, {scale}")
        self.num_classes, self.subclusters, self.margin = num_classes, subclusters, margin
        self.adaptive = scale == 0
        self.centres = nn.Parameter(torch.randn(num_classes * subclusters, dim, generator=generator))
        start = max(1.0, math.sqrt(2) * math.log(num_classes * subclusters - 1)) if self.adaptive else scale
        self.register_buffer("scale", torch.tensor(float(start)))  # saved, so a resumed run continues it

    def cosine(self, x: Tensor) -> Tensor:
        """(B, D) -> (B, C, K) cosine to every centre."""
        cos = F.normalize(x, dim=-1) @ F.normalize(self.centres, dim=-1).T  # (B, C * K)
        return cos.view(x.shape[0], self.num_classes, self.subclusters)

    def log_probs(self, cos: Tensor, target: Tensor | None = None) -> Tensor:
        """(B, C, K) cosines [with the margin on `target`'s classes] -> (B, C) class log-probabilities."""
        if target is not None:
            cos = arcface_cosine(cos, target, self.margin)
        logits = self.scale * cos.flatten(1)  # (B, C * K)
        lp = torch.log_softmax(logits, -1).view_as(cos)
        return torch.logsumexp(lp, -1)  # sum of sub-cluster probabilities, in log space

    def loss(self, x: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy of soft `target` (B, C) for embeddings `x` (B, D); updates the adaptive scale."""
        cos = self.cosine(x)
        if self.adaptive and self.training:
            self._update_scale(cos.detach(), target)
        return -(target * self.log_probs(cos, target)).sum(-1).mean()

    @torch.no_grad()
    def _update_scale(self, cos: Tensor, target: Tensor) -> None:
        """AdaCos eq. 14 on this batch (sub-clusters: the target angle is that of the nearest own centre)."""
        others = (target <= 0)[:, :, None].expand_as(cos)  # (B, C, K)
        b_avg = (torch.exp(self.scale * cos) * others).flatten(1).sum(1).mean()
        main = target.argmax(1)  # (B,)
        theta = torch.acos(cos[torch.arange(cos.shape[0]), main].max(-1).values.clamp(-1 + 1e-7, 1 - 1e-7))
        theta_med = torch.clamp(theta.median(), max=math.pi / 4)
        # floored at 1: with two centres B_avg is one term and eq. 14 would drive s towards 0
        self.scale.copy_((torch.log(b_avg.clamp(min=1.0 + 1e-6)) / torch.cos(theta_med)).clamp(min=1.0))
