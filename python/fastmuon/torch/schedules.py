"""Learning-rate schedules for torch optimizers, as ``torch.optim.lr_scheduler`` objects.

The formulas are those of ``fastmuon.schedules`` (pure Python), which also validates the
arguments, so both frameworks accept and reject the same settings.
"""

from __future__ import annotations

from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from .. import schedules as _pure


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> LambdaLR:
    """A ``LambdaLR`` that scales every group's lr by a linear warm-up from 0 over
    ``warmup_steps``, then a cosine decay to ``min_ratio`` at ``total_steps`` (held there).

    Call ``scheduler.step()`` after each ``optimizer.step()``; the first step uses multiplier 0
    when there is a warm-up, as in ``fastmuon.mlx.warmup_cosine``.
    """
    # A LambdaLR, not SequentialLR(LinearLR, CosineAnnealingLR): LinearLR cannot start at 0
    # (start_factor > 0), and CosineAnnealingLR's eta_min is one absolute lr for every group, where
    # Muon and AdamW groups need min_ratio of their own lr.
    multiplier = partial(_pure.warmup_cosine, base_lr=1.0, warmup_steps=warmup_steps, total_steps=total_steps,
                         min_ratio=min_ratio)
    multiplier(0)  # validates the arguments now, not at the first step
    return LambdaLR(optimizer, multiplier)
