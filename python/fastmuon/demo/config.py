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
    steps: int = 300
    warmup_steps: int = 20
    eval_every: int = 25
    eval_windows: int = 64
    seed: int = 0


OPTIMIZERS = ("adamw", "muon", "normuon")
NORMUON_BETA2 = 0.95

FULL = DemoConfig()
QUICK = DemoConfig(steps=80, eval_every=20, eval_windows=32)
