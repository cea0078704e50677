"""MuonWithAdamW's AdamW part (``use_muon=False`` groups): ``torch.optim.AdamW``'s rule with
fastmuon's non-finite policy, in three implementations:

- "fused": torch's own fused AdamW kernel (what ``torch.optim.AdamW(fused=True)`` runs, so the
  same results bitwise): one pass over each tensor (CPU, eager, every gradient finite);
- "foreach": list-wide passes, op for op the arithmetic of "per_parameter", so bitwise the same
  (CPU, eager, float lr, fp32 weights, every gradient finite);
- "per_parameter": ``functional.adamw_update`` per parameter, which skips a parameter whose
  gradient is not finite.

"fused" and "foreach" step the whole group only when every gradient is finite; otherwise that
step runs per parameter."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch.optim.adamw import adamw as torch_adamw

from ..functional import adamw_update, adamw_update_lists_, all_finite
from ..orthogonalize import dtype_name
from .base import adamw_betas, is_dtensor, local, on_every_shard
from .pipeline import foreach_refusal

# torch's fused AdamW kernel computes in fp32 (fp64 for float64) and rounds each result once
FUSED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def adamw_impl(group: dict, state) -> Tuple[str, str]:
    """(implementation, why) for an AdamW group's parameters with a gradient this step: "auto"
    takes the first of "fused", "foreach" and "per_parameter" that applies; an explicit ``impl``
    that cannot run raises."""
    impl = group.get("impl", "auto")
    if impl == "per_parameter":
        return "per_parameter", 'impl="per_parameter"'
    params = [p for p in group["params"] if p.grad is not None]
    fused_why = _fused_refusal(params, group["lr"], state)
    if impl == "fused" or (impl == "auto" and fused_why is None):
        if fused_why is not None:
            raise ValueError(f'impl="fused" cannot step this AdamW group: {fused_why}')
        return "fused", "torch's fused AdamW kernel"
    foreach_why = _foreach_refusal(params, group["lr"])
    if foreach_why is None:
        return "foreach", "list-wide passes" + ("" if impl == "foreach" else f"; not fused: {fused_why}")
    if impl == "foreach":
        raise ValueError(f'impl="foreach" cannot step this AdamW group: {foreach_why}')
    why = fused_why if foreach_why == fused_why else f"{fused_why}; not foreach: {foreach_why}"
    return "per_parameter", f"not fused: {why}"


def _fused_refusal(params, lr, state) -> Optional[str]:
    """Why torch's fused AdamW kernel cannot step these parameters here (None: it can)."""
    if not params:
        return "no gradients"
    for p in params:
        if p.dtype not in FUSED_DTYPES:
            return f"{dtype_name(p.dtype)} weights (the fused kernel takes floating-point weights)"
    if isinstance(lr, torch.Tensor) and not (lr.is_cpu and lr.numel() == 1):
        return "a Tensor lr that is not one number on the CPU"
    why = foreach_refusal(params, 0.0)  # device, dense gradients of the weights' dtype, DTensor, torch.compile
    if why is not None:
        return why
    for p in params:
        # torch 2.13's CPU kernel walks every tensor as if it were C-contiguous: a transposed or
        # strided weight, gradient or moment silently gets a wrong update
        moments = [state[p][key] for key in ("exp_avg", "exp_avg_sq") if key in state.get(p, {})]
        if not all(t.is_contiguous() for t in (p, p.grad, *moments)):
            return "a weight, gradient or moment that is not C-contiguous"
    return None


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
    """One step of an AdamW group: "fused" or "foreach" when it applies and every gradient is
    finite (one check on the host), else parameter by parameter."""
    list_wide = LIST_WIDE.get(adamw_impl(group, state)[0])
    if list_wide is not None:
        params = [p for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        if all_finite(grads):
            states = [state[p] for p in params]
            list_wide(group, [p.detach() for p in params], grads,
                      *([st[key] for st in states] for key in ("exp_avg", "exp_avg_sq", "step")))
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


def _step_fused(group: dict, weights, grads, exp_avgs, exp_avg_sqs, steps) -> None:
    """torch's fused AdamW kernel on the group's lists (finite gradients). The state is
    torch.optim.AdamW's own (float32 ``step`` tensors on the weights' device), so the kernel
    reads and writes it as it does for torch.optim.AdamW(fused=True)."""
    beta1, beta2 = adamw_betas(group)
    torch_adamw(weights, grads, exp_avgs, exp_avg_sqs, [], steps, fused=True, amsgrad=False, beta1=beta1,
                beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)


def _step_foreach(group: dict, weights, grads, exp_avgs, exp_avg_sqs, steps) -> None:
    """``functional.adamw_update_lists_`` on the group's lists (finite gradients), op for op the
    arithmetic of ``adamw_update``, so the weights are bitwise the same."""
    adamw_update_lists_(weights, grads, exp_avgs, exp_avg_sqs, steps, lr=group["lr"], betas=adamw_betas(group),
                        eps=group["eps"], weight_decay=group["weight_decay"])


# the list-wide implementations, each on (group, weights, grads, exp_avgs, exp_avg_sqs, steps)
LIST_WIDE = {"fused": _step_fused, "foreach": _step_foreach}
