"""MuonWithAdamW's AdamW part (``use_muon=False`` groups): ``torch.optim.AdamW``'s rule with
fastmuon's non-finite policy, in two implementations: "foreach" (list-wide passes: CPU, eager,
float lr, fp32 weights, every gradient finite) and "per_parameter"."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..functional import adamw_update, adamw_update_lists_, all_finite
from ..orthogonalize import dtype_name
from .base import adamw_betas, is_dtensor, local, on_every_shard
from .pipeline import foreach_refusal


def adamw_impl(group: dict) -> Tuple[str, str]:
    """(implementation, why) for an AdamW group's parameters with a gradient this step; an
    explicit ``impl`` that cannot run raises."""
    impl = group.get("impl", "auto")
    if impl == "per_parameter":
        return "per_parameter", 'impl="per_parameter"'
    if impl == "fused":
        raise ValueError('impl="fused" is for Muon groups; an AdamW group takes "auto", "foreach" or "per_parameter"')
    params = [p for p in group["params"] if p.grad is not None]
    why = _foreach_refusal(params, group["lr"])
    if why is None:
        return "foreach", "list-wide passes"
    if impl == "foreach":
        raise ValueError(f'impl="foreach" cannot step this AdamW group: {why}')
    return "per_parameter", f"not foreach: {why}"


def _foreach_refusal(params, lr) -> Optional[str]:
    # fp32 only: the dtype of the bias corrections (list-wide ops would not round those to
    # narrower weights first, as the per-parameter ops do)
    if not params:
        return "no gradients"
    for p in params:
        if p.dtype != torch.float32:
            return f"{dtype_name(p.dtype)} weights (the list-wide passes take fp32)"
    return foreach_refusal(params, lr)


def adamw_step(group: dict, state) -> None:
    """One step of an AdamW group: "foreach" when it applies and every gradient is finite,
    else parameter by parameter."""
    if adamw_impl(group)[0] == "foreach" and _step_foreach(group, state):
        return
    for p in group["params"]:
        if p.grad is None:
            continue
        grad = p.grad
        if grad.is_sparse:
            raise RuntimeError("AdamW groups do not support sparse gradients (use SignSGD(sparse=True))")
        p_state = state[p]
        # Elementwise, so a sharded (DTensor) parameter steps on its local shard; the verdict
        # on the gradient is every shard's.
        W, grad, exp_avg, exp_avg_sq = (local(t) for t in (p.detach(), grad, p_state["exp_avg"],
                                                             p_state["exp_avg_sq"]))
        if is_dtensor(p):  # every shard's verdict, over the parameter's own mesh
            finite = on_every_shard(torch.isfinite(grad).all(), p)
        else:
            finite = torch.isfinite(grad).all()
        G = torch.where(finite, grad.to(W.dtype), 0.0)
        W_new, m, v, step = adamw_update(
            W, G, exp_avg, exp_avg_sq, p_state["step"],
            lr=group["lr"], betas=adamw_betas(group), eps=group["eps"], weight_decay=group["weight_decay"],
        )
        W.copy_(torch.where(finite, W_new, W))
        exp_avg.copy_(torch.where(finite, m, exp_avg))
        exp_avg_sq.copy_(torch.where(finite, v, exp_avg_sq))
        p_state["step"].copy_(torch.where(finite, step, p_state["step"]))
        p_state["skipped_steps"].add_((~finite).to(torch.int64))


def _step_foreach(group: dict, state) -> bool:
    """``functional.adamw_update_lists_``, op for op the arithmetic of ``adamw_update``, so the
    weights are bitwise the same; False, having changed nothing, if a gradient is not finite."""
    params = [p for p in group["params"] if p.grad is not None]
    grads = [p.grad for p in params]
    if not all_finite(grads):
        return False
    states = [state[p] for p in params]
    adamw_update_lists_([p.detach() for p in params], grads, *([st[key] for st in states] for key in
                        ("exp_avg", "exp_avg_sq", "step")), lr=group["lr"], betas=adamw_betas(group),
                        eps=group["eps"], weight_decay=group["weight_decay"])
    return True
