"""The demo's TinyGPT in PyTorch with one optimizer, as a trainer for ``run.train``."""

from __future__ import annotations

import torch

import fastmuon.torch as fastmuon_torch
from fastmuon.rules import DEFAULT_EXCLUDE, NORMUON_BETA2

from .config import DemoConfig
from .torch_model import TinyGPT, loss_fn


def make_optimizer(name: str, model: torch.nn.Module, lr: float, adamw_lr: float, muon_options: tuple = ()):
    """AdamW on everything; "adamw_split", AdamW with the hidden matrices at ``lr`` and the rest
    at ``adamw_lr`` (Muon's routing and lr count, for bench/sweep_lr.py --split); or Muon /
    NorMuon on hidden matrices with AdamW (at ``adamw_lr``) on embeddings, head, norms and the
    position table, routed by fastmuon."""
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    # the learned position table is an embedding too: AdamW, like the token embedding
    groups = fastmuon_torch.muon_param_groups(model, exclude=DEFAULT_EXCLUDE + ("pos",))
    if name == "adamw_split":
        return torch.optim.AdamW([{"params": g["params"], "lr": lr if g["use_muon"] else adamw_lr} for g in groups],
                                 lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    beta2 = NORMUON_BETA2 if name == "normuon" else None
    return fastmuon_torch.MuonWithAdamW(groups, lr=lr, beta2=beta2, adamw_lr=adamw_lr, adamw_betas=(0.9, 0.95),
                                        **dict(muon_options))


class Trainer:
    def __init__(self, cfg: DemoConfig, optimizer: str, lr: float, adamw_lr: float, val_windows):
        torch.manual_seed(cfg.seed)
        self.model = TinyGPT(cfg)
        self.opt = make_optimizer(optimizer, self.model, lr, adamw_lr, cfg.muon_options)
        self.schedule = fastmuon_torch.warmup_cosine(self.opt, cfg.warmup_steps, cfg.steps)
        self.val = tuple(torch.from_numpy(a) for a in val_windows)

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        loss = loss_fn(self.model, *self.val).item()
        self.model.train()
        return loss

    def step(self, inputs, targets) -> float:
        loss = loss_fn(self.model, torch.from_numpy(inputs), torch.from_numpy(targets))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.schedule.step()
        return loss.item()
