"""Train the demo's TinyGPT in PyTorch with one optimizer; return its validation curve."""

from __future__ import annotations

import time

import numpy as np
import torch

from ..schedules import warmup_cosine
from .config import NORMUON_BETA2, DemoConfig
from .data import Corpus, batches, eval_windows
from .torch_model import TinyGPT, loss_fn


def make_optimizer(name: str, model: torch.nn.Module, lr: float, adamw_lr: float):
    """AdamW on everything, or Muon / NorMuon on hidden matrices with AdamW (at ``adamw_lr``)
    on embeddings, head, norms and the position table, routed by fastmuon."""
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    from ..rules import DEFAULT_EXCLUDE
    from ..torch import MuonWithAdamW, muon_param_groups

    # the learned position table is an embedding too: AdamW, like the token embedding
    groups = muon_param_groups(model, exclude=DEFAULT_EXCLUDE + ("pos",))
    beta2 = NORMUON_BETA2 if name == "normuon" else None
    return MuonWithAdamW(groups, lr=lr, beta2=beta2, adamw_lr=adamw_lr, adamw_betas=(0.9, 0.95))


@torch.no_grad()
def evaluate(model, windows) -> float:
    model.eval()
    inputs, targets = windows
    loss = loss_fn(model, torch.from_numpy(inputs), torch.from_numpy(targets)).item()
    model.train()
    return loss


def train(cfg: DemoConfig, corpus: Corpus, optimizer: str, lr: float, adamw_lr: float, progress=None) -> dict:
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = TinyGPT(cfg)
    opt = make_optimizer(optimizer, model, lr, adamw_lr)
    base_lrs = [g["lr"] for g in opt.param_groups]
    data = batches(corpus.train, cfg.batch_size, cfg.context, seed=cfg.seed)
    windows = eval_windows(corpus.val, cfg.eval_windows, cfg.context)
    curve, start = [], time.perf_counter()
    for step in range(cfg.steps + 1):
        if step % cfg.eval_every == 0 or step == cfg.steps:
            curve.append((step, evaluate(model, windows)))
        if step == cfg.steps:
            break
        factor = warmup_cosine(step, base_lr=1.0, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps)
        for group, base in zip(opt.param_groups, base_lrs):
            group["lr"] = base * factor
        inputs, targets = next(data)
        loss = loss_fn(model, torch.from_numpy(inputs), torch.from_numpy(targets))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None:
            progress.update(1)
    return {
        "final_val_loss": curve[-1][1],
        "curve": curve,
        "seconds": time.perf_counter() - start,
        "lr": lr,
        "adamw_lr": adamw_lr if optimizer != "adamw" else None,
        "train_loss_last": float(np.asarray(loss.item())),
    }
