"""Learning-rate schedules shared by both frameworks (pure functions of the step)."""

from __future__ import annotations

import math


def warmup_cosine(step: int, *, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up from 0 to ``base_lr`` over ``warmup_steps``, then a cosine decay to
    ``min_ratio * base_lr`` at ``total_steps`` (held there afterwards).

    Usable through ``torch.optim.lr_scheduler.LambdaLR`` as
    ``lambda s: warmup_cosine(s, base_lr=1.0, ...)`` (a multiplier of the group's lr).
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps <= warmup_steps:
        raise ValueError(f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return base_lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
