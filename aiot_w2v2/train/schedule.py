"""Learning-rate schedules: linear warmup, then polynomial decay to `end_lr` (fairseq polynomial_decay,
for pretraining), and fairseq's tri-stage schedule (for CTC fine-tuning).

Pure functions of the update count and the optimiser settings; they know nothing about optimisers,
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


def tri_stage_lr(step: int, lr: float, max_steps: int, phase_ratio: tuple[float, float, float] = (0.1, 0.4, 0.5),
                 init_lr_scale: float = 0.01, final_lr_scale: float = 0.05) -> float:
    """fairseq's tri-stage schedule (used for CTC fine-tuning), for the update after `step` updates.

    With W, H, D = phase_ratio * max_steps: linear warmup from init_lr_scale * lr to lr over W updates,
    hold lr for H, then exponential decay to final_lr_scale * lr over D (lr * final_lr_scale ** (t / D)),
    and final_lr_scale * lr afterwards.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    warmup, hold, decay = (int(max_steps * r) for r in phase_ratio)
    if step < warmup:
        return lr * (init_lr_scale + (1.0 - init_lr_scale) * step / warmup)
    step -= warmup
    if step < hold:
        return lr
    step -= hold
    if step < decay:
        return lr * final_lr_scale ** (step / decay)
    return lr * final_lr_scale
