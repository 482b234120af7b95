"""The pretraining objective (paper Section 3.2): L = L_m + alpha * L_d (+ feature penalty).

Distractors are drawn from the other masked frames of the same clip (never the positive itself,
never padding, since only valid masked frames are candidates) and optionally from masked frames of
the other clips in the batch ("cross-sample"). Everything here works on flat lists of masked
frames with a clip index, so clips of different lengths and mask counts need no truncation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class LossParts:
    """Unweighted loss terms; `total` combines them with named weights."""

    contrastive: Tensor  # L_m, mean over masked frames (eq. 3)
    diversity: Tensor  # L_d = (GV - prob_perplexity) / GV (eq. 4)
    feature_penalty: Tensor  # mean squared encoder output

    def total(self, diversity_weight: float, feature_penalty_weight: float) -> Tensor:
        return self.contrastive + diversity_weight * self.diversity + feature_penalty_weight * self.feature_penalty

    def as_dict(self) -> dict[str, float]:
        return {"contrastive": float(self.contrastive.detach()), "diversity": float(self.diversity.detach()),
                "feature_penalty": float(self.feature_penalty.detach())}


def sample_negative_indices(
    clip_index: Tensor, num_negatives: int, cross_sample_negatives: int = 0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Indices (N, K + K_cross) into the N masked frames, for frames sorted by clip.

    clip_index (N,) long, non-decreasing: the clip each masked frame belongs to. Same-clip
    distractors exclude the frame itself; cross-sample ones come from other clips only. A clip with a
    single masked frame (or a batch of one clip for cross-sample) has no candidates: its row points at
    the positive and the caller masks such entries out.
    """
    device = clip_index.device
    N = clip_index.shape[0]
    counts = torch.bincount(clip_index)  # (B,)
    offsets = torch.cumsum(counts, 0) - counts  # (B,)
    n_own = counts[clip_index]  # (N,) masked frames in this frame's clip
    start = offsets[clip_index]  # (N,)
    local = torch.arange(N, device=device) - start  # (N,) position within its clip
    parts = []
    if num_negatives > 0:
        u = torch.rand(N, num_negatives, generator=generator).to(device)
        high = (n_own - 1).clamp(min=1)[:, None]
        r = torch.minimum((u * high).long(), high - 1)  # uniform over n_own - 1 others
        r = r + (r >= local[:, None]).long()  # skip the positive
        r = torch.where(n_own[:, None] > 1, r, local[:, None])
        parts.append(start[:, None] + r)
    if cross_sample_negatives > 0:
        u = torch.rand(N, cross_sample_negatives, generator=generator).to(device)
        high = (N - n_own).clamp(min=1)[:, None]
        r = torch.minimum((u * high).long(), high - 1)  # uniform over frames of other clips
        r = r + (r >= start[:, None]).long() * n_own[:, None]  # jump over this clip's block
        r = torch.where((N - n_own)[:, None] > 0, r, torch.arange(N, device=device)[:, None])
        parts.append(r)
    return torch.cat(parts, dim=1)


def contrastive_logits(context: Tensor, targets: Tensor, negative_index: Tensor, logit_temp: float,
                       mask_duplicates: bool = True) -> tuple[Tensor, Tensor]:
    """Cosine similarities / kappa between each context vector and its target + distractors (eq. 3).

    context, targets: (N, D) for the masked frames; negative_index (N, K). Returns logits (N, 1 + K)
    with the positive in column 0, and neg_is_pos (N, K): distractors identical to the positive
    (same codes). With `mask_duplicates` (fairseq) they get -inf so they never count as a wrong answer;
    without, they stay in and a collapsed codebook is as bad as a random one.
    """
    # Cosine similarity is a dot product of unit vectors (as F.cosine_similarity, eps 1e-8 per norm).
    # Scoring every context against every masked target with one (N, D) x (D, N) matmul and picking
    # the candidates out of that matrix is faster than gathering an (N, 1 + K, D) candidate tensor, and
    # takes N * N floats instead of N * (1 + K) * D.
    N = targets.shape[0]
    sim = F.normalize(context.float(), dim=-1, eps=1e-8) @ F.normalize(targets.float(), dim=-1, eps=1e-8).T  # (N, N)
    candidates = torch.cat([torch.arange(N, device=targets.device)[:, None], negative_index], dim=1)  # (N, 1 + K)
    logits = sim.gather(1, candidates) / logit_temp
    # Identical targets get one id, so comparing ids is comparing the rows of `targets` exactly.
    target_id = torch.unique(targets.detach(), dim=0, return_inverse=True)[1]  # (N,)
    neg_is_pos = target_id[negative_index] == target_id[:, None]  # (N, K)
    if mask_duplicates:
        logits[:, 1:] = logits[:, 1:].masked_fill(neg_is_pos, float("-inf"))
    return logits, neg_is_pos


def contrastive_loss(logits: Tensor) -> Tensor:
    """Cross-entropy with the positive in column 0, mean over frames."""
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


def contrastive_accuracy(logits: Tensor) -> Tensor:
    """Share of frames whose positive scores strictly above every distractor (ties count as wrong)."""
    if logits.numel() == 0:
        return logits.new_zeros(())
    if logits.shape[1] == 1:
        return logits.new_ones(())
    return (logits[:, 0] > logits[:, 1:].max(-1).values).float().mean()


def diversity_loss(prob_perplexity: Tensor, num_codevectors: int) -> Tensor:
    """(GV - perplexity of the averaged softmax) / GV (eq. 4): 0 when every entry is used equally."""
    return (num_codevectors - prob_perplexity) / num_codevectors
