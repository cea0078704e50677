"""Learning-rate schedules as MLX callables (step array -> learning-rate array).

They are MLX's own schedules (``mlx.optimizers.join_schedules`` of ``linear_schedule`` and
``cosine_decay``), so an optimizer evaluates them inside ``mx.compile``d steps without a host
sync. The formulas are those of ``fastmuon.schedules`` (pure Python), which also
validates the arguments, so both frameworks accept and reject the same settings.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import mlx.optimizers as optim

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
    base_lr, warmup = float(base_lr), int(warmup_steps)
    cosine = optim.cosine_decay(base_lr, int(total_steps) - warmup, end=float(min_ratio) * base_lr)
    if warmup == 0:
        return cosine
    return optim.join_schedules([optim.linear_schedule(0.0, base_lr, warmup), cosine], [warmup])
