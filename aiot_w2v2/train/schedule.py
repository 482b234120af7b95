"""Learning-rate schedule: linear warmup, then polynomial decay to `end_lr` (fairseq polynomial_decay).

A pure function of the update count and the optimiser config; it knows nothing about optimisers,
so the training loop sets `group["lr"]` itself and a resumed run gets the same rate from the step alone.
"""

from __future__ import annotations

from ..config import OptimConfig


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Learning rate for the update that follows `step` completed updates.

    - warmup (step <= warmup_steps): lr * step / warmup_steps, but never 0: the first update uses
      lr / warmup_steps, as fairseq's scheduler does before its first step;
    - decay: (lr - end_lr) * (1 - (step - warmup) / (max_steps - warmup)) ** power + end_lr;
    - step >= max_steps: end_lr.
    The peak `lr` is reached at step == warmup_steps.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    warmup = cfg.warmup_steps
    if warmup > 0 and step <= warmup:
        return cfg.lr * max(step, 1) / warmup
    if step >= cfg.max_steps:
        return cfg.end_lr
    remaining = 1.0 - (step - warmup) / (cfg.max_steps - warmup)
    return (cfg.lr - cfg.end_lr) * remaining**cfg.power + cfg.end_lr
