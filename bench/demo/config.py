"""Model size, step budgets and learning rates of the demo, one place for both frameworks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DemoConfig:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    context: int = 64
    batch_size: int = 16
    steps: int = 150
    warmup_steps: int = 15
    eval_every: int = 15
    eval_windows: int = 64
    seed: int = 0
    # extra Muon options as (name, value) pairs, e.g. (("method", "aol"), ("ns_steps", 4))
    muon_options: tuple = ()


OPTIMIZERS = ("adamw", "muon", "normuon")

FULL = DemoConfig()
# The Linux mlx-cpu wheel multiplies with a reference BLAS (~0.4 s a step for this model), which
# sets these budgets: full run under 5 minutes, --quick under 90 s on 2 cores.
QUICK = DemoConfig(steps=40, warmup_steps=5, eval_every=10, eval_windows=32)
