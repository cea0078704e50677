"""Learning-rate schedules as MLX callables (step array -> learning-rate array).

They are built from mx ops only, so an optimizer evaluates them inside ``mx.compile``d steps
without a host sync. The formulas are those of ``fastmuon.schedules`` (pure Python), which also
validates the arguments, so both frameworks accept and reject the same settings.
"""

from __future__ import annotations

import math
from typing import Callable

import mlx.core as mx

from .. import schedules as _pure


def warmup_cosine(
    base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float = 0.1
) -> Callable[[mx.array], mx.array]:
    """Linear warm-up from 0 to ``base_lr`` over ``warmup_steps``, then a cosine decay to
    ``min_ratio * base_lr`` at ``total_steps``, held there afterwards.

    Pass it as an optimizer's learning rate: ``Muon(learning_rate=warmup_cosine(0.02, 100, 1000))``.
    MLX optimizers evaluate a schedule at their step count *before* incrementing it, so the first
    update uses step 0 (lr 0 when there is a warm-up), as ``torch.optim.lr_scheduler.LambdaLR`` does.
    """
    _pure.warmup_cosine(0, base_lr=base_lr, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_ratio)
    base_lr, min_ratio = float(base_lr), float(min_ratio)
    warmup, decay = int(warmup_steps), int(total_steps) - int(warmup_steps)

    def schedule(step) -> mx.array:
        t = mx.array(step).astype(mx.float32)
        warm = base_lr * t / max(warmup, 1)
        progress = mx.clip((t - warmup) / decay, 0.0, 1.0)
        cosine = base_lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + mx.cos(math.pi * progress)))
        return mx.where(t < warmup, warm, cosine)

    return schedule
