"""SignSGD for PyTorch: W <- W (1 - lr wd) - lr sign(G), for sparse embeddings."""

from __future__ import annotations

import torch

from ...rules import check_hyperparameters
from ..functional import rows_touched, signsgd_update
from .base import CheckedOptimizer, LearningRate, check_lr

__all__ = ["SignSGD"]


class SignSGD(CheckedOptimizer):
    """W <- W (1 - lr wd) - lr sign(G); no state (an optimizer for sparse embeddings).

    Args:
        params: parameters or param groups, any shape.
        lr: learning rate (default 1e-2).
        weight_decay: decoupled weight decay (default 0.1).
        sparse: if True, only rows (index along dim 0, e.g. embedding rows) whose gradient has a
            non-zero entry are decayed and updated; rows the batch did not touch stay exactly as
            they are. Sparse COO gradients (``nn.Embedding(sparse=True)``) are read directly
            with ``sparse=True`` and densified otherwise.

    A parameter whose gradient holds a NaN or Inf is left unchanged for that step (checked with
    tensor ops, no device sync). The caller's gradients are never modified.
    """

    def __init__(self, params, lr: LearningRate = 1e-2, weight_decay: float = 0.1, sparse: bool = False) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, sparse=bool(sparse)))

    def _check_group(self, group: dict, index: int) -> None:
        check_lr(group["lr"])
        check_hyperparameters(lr=0.0, weight_decay=group["weight_decay"])

    def _step(self) -> None:
        for group in self.param_groups:
            lr, wd, sparse = group["lr"], group["weight_decay"], group["sparse"]
            for p in group["params"]:
                G = p.grad
                if G is None:
                    continue
                if G.is_sparse:
                    G = G.coalesce()
                    if sparse and G.sparse_dim() == 1:
                        self._sparse_rows_step(p, G, lr, wd)
                        continue
                    G = G.to_dense()
                finite = torch.isfinite(G).all()
                W_new = signsgd_update(p.detach(), G.to(p.dtype), lr=lr, weight_decay=wd)
                keep = finite & rows_touched(G) if sparse else finite
                p.copy_(torch.where(keep, W_new, p))

    @staticmethod
    def _sparse_rows_step(p: torch.Tensor, G: torch.Tensor, lr: float, wd: float) -> None:
        """Update only the rows a coalesced COO gradient lists (and that hold a non-zero)."""
        rows, values = G.indices()[0], G.values()
        finite = torch.isfinite(values).all()
        W_rows = p.detach().index_select(0, rows)
        W_new = signsgd_update(W_rows, values.to(p.dtype), lr=lr, weight_decay=wd)
        keep = finite & rows_touched(values)
        p.index_copy_(0, rows, torch.where(keep, W_new, W_rows))
