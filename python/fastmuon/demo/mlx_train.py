"""Train the demo's TinyGPT in MLX with one optimizer; return its validation curve."""

from __future__ import annotations

import time

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

from ..rules import DEFAULT_EXCLUDE
from ..mlx.schedules import warmup_cosine
from .config import NORMUON_BETA2, DemoConfig
from .data import Corpus, batches, eval_windows
from .mlx_model import TinyGPT, loss_fn


def _schedule(base_lr: float, cfg: DemoConfig):
    return warmup_cosine(base_lr, cfg.warmup_steps, cfg.steps)


def make_optimizer(name: str, lr: float, adamw_lr: float, cfg: DemoConfig):
    """AdamW on everything (torch's rule: bias correction), or Muon / NorMuon on hidden
    matrices with AdamW on embeddings, head, norms and the position table."""
    if name == "adamw":
        return optim.AdamW(_schedule(lr, cfg), betas=[0.9, 0.95], weight_decay=0.0, bias_correction=True)
    from ..mlx import MuonWithAdamW

    return MuonWithAdamW(
        _schedule(lr, cfg),
        _schedule(adamw_lr, cfg),
        beta2=NORMUON_BETA2 if name == "normuon" else None,
        exclude=DEFAULT_EXCLUDE + ("pos",),
    )


def train(cfg: DemoConfig, corpus: Corpus, optimizer: str, lr: float, adamw_lr: float, progress=None) -> dict:
    mx.random.seed(cfg.seed)
    model = TinyGPT(cfg)
    mx.eval(model.parameters())
    opt = make_optimizer(optimizer, lr, adamw_lr, cfg)
    loss_and_grad = nn.value_and_grad(model, loss_fn)
    data = batches(corpus.train, cfg.batch_size, cfg.context, seed=cfg.seed)
    val_inputs, val_targets = (mx.array(a) for a in eval_windows(corpus.val, cfg.eval_windows, cfg.context))
    curve, start = [], time.perf_counter()
    for step in range(cfg.steps + 1):
        if step % cfg.eval_every == 0 or step == cfg.steps:
            curve.append((step, loss_fn(model, val_inputs, val_targets).item()))
        if step == cfg.steps:
            break
        inputs, targets = next(data)
        loss, grads = loss_and_grad(model, mx.array(inputs), mx.array(targets))
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state, loss)
        if progress is not None:
            progress.update(1)
    return {
        "final_val_loss": curve[-1][1],
        "curve": curve,
        "seconds": time.perf_counter() - start,
        "lr": lr,
        "adamw_lr": adamw_lr if optimizer != "adamw" else None,
        "train_loss_last": loss.item(),
    }
