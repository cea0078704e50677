"""The implementations of an MLX Muon step (``pipeline.py`` chooses, per parameter):

* ``step_fused``: every parameter's whole step in one native primitive
  (``backends.native.muon_step``);
* ``step_per_parameter``: per parameter the momentum, then one batched orthogonalization per
  stack of same-shape matrices (``pipeline.stack_key``), then per parameter NorMuon's
  normalization and the update.

``step`` runs each parameter with its implementation."""

from __future__ import annotations

from typing import List

import mlx.core as mx

from ...plan import make_plan
from ...rules import shape_scale
from ..backends import native
from ..functional import all_finite, decoupled_update, muon_momentum
from .base import update_view, work_dtype
from .pipeline import choose_impls, stack_key


def step(opt, items, distributed: bool) -> List[mx.array]:
    """The new weights of ``items`` ((path, gradient, parameter, state)) under Muon ``opt``, each
    parameter stepped by the implementation ``pipeline.choose_impls`` gives it."""
    impls = choose_impls(opt, [(path, grad, param, state.get("momentum")) for path, grad, param, state in items],
                         distributed)
    fused = [index for index, (impl, _) in enumerate(impls) if impl == "fused"]
    others = [index for index, (impl, _) in enumerate(impls) if impl != "fused"]
    new = {}
    for indices, run in ((fused, step_fused), (others, step_per_parameter)):
        if indices:
            new.update(zip(indices, run(opt, [items[index] for index in indices])))
    return [new[index] for index in range(len(items))]


def step_fused(opt, items) -> List[mx.array]:
    """``step_per_parameter``'s results, bitwise, from one primitive: float32 or bfloat16 matrix
    parameters of plain Muon on the native kernels (``pipeline.optimizer_refusal``,
    ``parameter_refusal``)."""
    views, scales = [], []
    for path, grad, param, state in items:
        opt._check_state(path, param, state)
        view = update_view(param.shape, path)
        views.append(view)
        scales.append(shape_scale(view[1], view[2], opt.adjust_lr))
    plan = make_plan(**opt._iteration())
    weights, momenta, skipped = native.muon_step(
        opt._lr(mx.float32), [grad for _, grad, _, _ in items], [state["momentum"] for *_, state in items],
        [param for _, _, param, _ in items], [state["skipped_steps"] for *_, state in items], views, scales, plan,
        momentum=opt.momentum, nesterov=opt.nesterov, weight_decay=opt.weight_decay,
        cautious=opt.cautious_weight_decay)
    for (*_, state), momentum, count in zip(items, momenta, skipped):
        state["momentum"] = momentum
        state["skipped_steps"] = count
    return weights


def step_per_parameter(opt, items) -> List[mx.array]:
    """The new weights of ``items`` ((path, gradient, parameter, state)) under Muon ``opt``."""
    prepared = []
    groups: dict = {}
    orthogonal: dict = {}
    for index, (path, grad, param, state) in enumerate(items):
        view = update_view(param.shape, path)
        opt._check_state(path, param, state)
        G = grad.reshape(view)
        # one flag per parameter, kept on the device; a non-finite learning rate (a schedule's)
        # skips the step as a non-finite gradient does
        ok = all_finite(G) & all_finite(mx.array(opt.learning_rate))
        G = mx.where(ok, G, mx.array(0, G.dtype))  # NaN/Inf never enter the arithmetic
        M_old = state["momentum"].reshape(view)
        M, U = muon_momentum(M_old, G, opt.momentum, opt.nesterov)
        prepared.append((view, ok, M_old, M))
        if param.ndim < 2:  # no matrix: the momentum is the update, as in mlx.optimizers.Muon
            orthogonal[index] = U
            continue
        groups.setdefault(stack_key(view, U.dtype), []).append((index, U))

    stacks = [members[0][1] if len(members) == 1 else mx.concatenate([U for _, U in members], axis=0)
              for members in groups.values()]  # one batched call per matrix shape
    for members, O in zip(groups.values(), opt._orthogonalize_stacks(stacks)):
        if len(members) == 1:
            orthogonal[members[0][0]] = O
            continue
        sizes = [U.shape[0] for _, U in members]
        splits = [sum(sizes[: k + 1]) for k in range(len(sizes) - 1)]
        for (index, _), part in zip(members, mx.split(O, splits, axis=0)):
            orthogonal[index] = part

    out = []
    for index, (path, grad, param, state) in enumerate(items):
        view, ok, M_old, M = prepared[index]
        work = work_dtype(param.dtype)
        O = orthogonal[index].astype(work)
        if param.ndim >= 2:
            O = opt._transform(O, ok, state)
        W = param.reshape(view).astype(work)
        W_new = decoupled_update(W, O, lr=opt._lr(work), weight_decay=opt.weight_decay,
                                 scale=shape_scale(view[1], view[2], opt.adjust_lr) if param.ndim >= 2 else 1.0,
                                 cautious=opt.cautious_weight_decay)
        W_new = mx.where(ok, W_new, W).astype(param.dtype).reshape(param.shape)
        # kept in its own dtype (the first gradient's, as mlx creates state): fp32 gradients on bf16
        # weights promote M
        state["momentum"] = mx.where(ok, M, M_old).astype(M_old.dtype).reshape(param.shape)
        state["skipped_steps"] = state["skipped_steps"] + (1 - ok.astype(mx.int32))
        out.append(W_new)
    return out

