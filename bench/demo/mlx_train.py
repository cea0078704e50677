"""The demo's TinyGPT in MLX with one optimizer, as a trainer for ``run.train``."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

import fastmuon.mlx as fastmuon_mlx
from fastmuon.rules import DEFAULT_EXCLUDE, NORMUON_BETA2

from .config import DemoConfig
from .mlx_model import TinyGPT, loss_fn


def make_optimizer(name: str, lr: float, adamw_lr: float, cfg: DemoConfig):
    """AdamW on everything (torch's rule: bias correction); "adamw_split", AdamW with the hidden
    matrices at ``lr`` and the rest at ``adamw_lr`` (Muon's routing and lr count, for
    bench/sweep_lr.py --split); or Muon / NorMuon on hidden matrices with AdamW on embeddings,
    head, norms and the position table."""
    schedule = lambda base_lr: fastmuon_mlx.warmup_cosine(base_lr, cfg.warmup_steps, cfg.steps)  # noqa: E731
    adamw = lambda base_lr: optim.AdamW(schedule(base_lr), betas=[0.9, 0.95], weight_decay=0.0,  # noqa: E731
                                        bias_correction=True)
    if name == "adamw":
        return adamw(lr)
    if name == "adamw_split":
        hidden = lambda path, array: fastmuon_mlx.muon_filter(path, array, DEFAULT_EXCLUDE + ("pos",))  # noqa: E731
        return optim.MultiOptimizer([adamw(lr), adamw(adamw_lr)], [hidden])
    return fastmuon_mlx.MuonWithAdamW(
        schedule(lr),
        schedule(adamw_lr),
        beta2=NORMUON_BETA2 if name == "normuon" else None,
        exclude=DEFAULT_EXCLUDE + ("pos",),
        **dict(cfg.muon_options),
    )


class Trainer:
    def __init__(self, cfg: DemoConfig, optimizer: str, lr: float, adamw_lr: float, val_windows):
        mx.random.seed(cfg.seed)
        self.model = TinyGPT(cfg)
        mx.eval(self.model.parameters())
        self.opt = make_optimizer(optimizer, lr, adamw_lr, cfg)
        self.loss_and_grad = nn.value_and_grad(self.model, loss_fn)
        self.val = tuple(mx.array(a) for a in val_windows)

    def evaluate(self) -> float:
        return loss_fn(self.model, *self.val).item()

    def step(self, inputs, targets) -> float:
        loss, grads = self.loss_and_grad(self.model, mx.array(inputs), mx.array(targets))
        self.opt.update(self.model, grads)
        mx.eval(self.model.parameters(), self.opt.state, loss)
        return loss.item()
