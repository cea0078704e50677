"""The three implementations of a local Muon step (``pipeline``'s docstring), each taking one
batch of chunks: ``step_per_parameter``, ``step_foreach`` and ``step_fused``; and the
per-parameter phases the distributed strategies share (``momentum_phase``, ``update_phase``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from ...plan import make_plan
from ...rules import matrix_view
from ..functional import (
    all_finite,
    decoupled_update,
    decoupled_update_lists_,
    muon_lookahead,
    muon_momentum,
    muon_momentum_,
    muon_momentum_lists_,
    muon_step_scalars,
    normuon_normalize,
    sphere_geodesic_update,
    sphere_project_update,
)
from ..backends.native import muon_step as native_muon_step
from .. import orthogonalize as orthogonalizer  # the module (see orthogonalize_group_stacks)
from .pipeline import Batch, by_group, lr_scale, orthogonalize_options


def orthogonalize_group_stacks(stacks: List[torch.Tensor], group: dict,
                               dtype: Optional[torch.dtype] = None) -> List[torch.Tensor]:
    """The optimizers' one call of the orthogonalizer: (batch, rows, cols) stacks of any shapes,
    with the group's options, computed in ``dtype`` (default: the group's ``ns_dtype``; the local
    step passes the dtype it chose for the whole same-shape stack, so that its chunks agree). It
    is looked up on the module ``fastmuon.torch.orthogonalize`` at each call, so that a wrapper
    installed there (a profiler, a test counting matrices) sees every call."""
    return orthogonalizer.orthogonalize_stacks(stacks, **orthogonalize_options(group), backend=group["backend"],
                                               dtype=group["ns_dtype"] if dtype is None else dtype)


def apply_update(W: torch.Tensor, O: torch.Tensor, ok: torch.Tensor, group: dict, view: Tuple[int, int, int]) -> None:
    """W <- the group's update of W with the orthogonalized O where ``ok`` (a 0-D bool), in place.

    ``W`` is the weight, or a sharded weight's local shard (O then holds the same rows);
    ``view`` is the whole weight's matrix view (batch, rows, cols), which sets the lr scale.
    """
    batch, rows, cols = view
    lr = group["lr"]
    scale = lr_scale(group, rows, cols)
    if group["sphere"] is None:
        W_new = decoupled_update(W, O.reshape(W.shape).to(W.dtype), lr=lr, weight_decay=group["weight_decay"],
                                 scale=scale, cautious=group["cautious_weight_decay"])
    else:
        move = sphere_project_update if group["sphere"] == "project" else sphere_geodesic_update
        W_new = move(W.reshape(batch, rows, cols), (lr * scale) * O.to(W.dtype)).reshape(W.shape)
    W.copy_(torch.where(ok, W_new, W))


def second_moment(state: dict) -> torch.Tensor:
    """A NorMuon parameter's second moment; a RuntimeError if its state has none."""
    if "second_moment" not in state:
        raise RuntimeError("a parameter's state has no second_moment: beta2 was set after it was stepped")
    return state["second_moment"]


@dataclass
class Pending:
    """One Muon parameter between the momentum step and the update."""

    param: torch.Tensor
    group: dict
    state: dict
    batch: int
    rows: int
    cols: int
    has_grad: bool
    finite: torch.Tensor  # 0-D bool: the local gradient exists and is finite
    momentum: Optional[torch.Tensor]  # the new momentum if not committed yet (data parallel)
    update: Optional[torch.Tensor]  # (batch, rows, cols), what gets orthogonalized


def momentum_phase(p: torch.Tensor, group: dict, state: dict, commit: bool) -> Pending:
    """The momentum step of one parameter; ``commit`` writes the new momentum (where the
    gradient is finite) at once, else it is kept for ``update_phase``."""
    batch, rows, cols = matrix_view(p.shape)
    if group["beta2"] is not None:
        second_moment(state)
    M = state["momentum_buffer"]
    grad = p.grad
    if grad is None:
        G, finite = torch.zeros_like(M), torch.zeros((), dtype=torch.bool, device=p.device)
    else:
        if grad.is_sparse:
            raise RuntimeError("Muon does not support sparse gradients (use SignSGD(sparse=True))")
        finite = torch.isfinite(grad).all()
    if commit and grad is not None:
        U = muon_momentum_(M, grad, finite, group["momentum"], group["nesterov"])
        M_new = None
    else:
        if grad is not None:
            G = torch.where(finite, grad.to(M.dtype), 0.0)
        M_new, U = muon_momentum(M, G, group["momentum"], group["nesterov"])
    return Pending(p, group, state, batch, rows, cols, grad is not None, finite, M_new, U.reshape(batch, rows, cols))


def update_phase(item: Pending, O: torch.Tensor, ok: torch.Tensor) -> None:
    """NorMuon normalization (if ``beta2``), the weight update, and the commit: new values
    where ``ok`` (a 0-D bool tensor), old ones elsewhere."""
    group, state, p = item.group, item.state, item.param
    if group["beta2"] is not None:
        O, s_new = normuon_normalize(O, state["second_moment"], group["beta2"])
        state["second_moment"].copy_(torch.where(ok, s_new, state["second_moment"]))
    apply_update(p.detach(), O, ok, group, (item.batch, item.rows, item.cols))
    if item.has_grad:
        if item.momentum is not None:  # not committed yet (data parallel)
            state["momentum_buffer"].copy_(torch.where(ok, item.momentum, state["momentum_buffer"]))
        state["skipped_steps"].add_((~ok).to(torch.int64))


def step_per_parameter(batch: Batch, state) -> None:
    """A batch stepped parameter by parameter (any device, dtype or option; a parameter with a
    non-finite gradient is skipped), with one orthogonalization call for the batch's stacks."""
    pending, stacks = [], []
    for chunk in batch.chunks:
        items = [momentum_phase(p, g, state[p], commit=True) for p, g in chunk.members]
        U = torch.empty((sum(item.batch for item in items), chunk.rows, chunk.cols), dtype=chunk.stack_dtype,
                        device=items[0].param.device)
        start = 0
        for item in items:
            U[start:start + item.batch].copy_(item.update)
            item.update = None
            start += item.batch
        pending.append(items)
        stacks.append(U)
    chunks = batch.chunks
    results = orthogonalize_group_stacks(stacks, chunks[0].group, chunks[0].compute_dtype)
    del stacks
    for items, O in zip(pending, results):
        start = 0
        for item in items:
            update_phase(item, O[start:start + item.batch], item.finite)
            start += item.batch


def step_foreach(batch: Batch, state) -> bool:
    """A batch stepped in a few list-wide passes (``torch._foreach_*``) when every gradient is
    finite, which one check on the host finds out; returns False, having changed nothing,
    otherwise. Same arithmetic, op for op, as ``step_per_parameter`` (NorMuon's normalization
    too, on each parameter's slice of the stack): bitwise the same weights."""
    if not all_finite([p.grad for chunk in batch.chunks for p, _ in chunk.members]):
        return False
    for chunk in batch.chunks:  # before anything changes
        for p, group in chunk.members:
            if group["beta2"] is not None:
                second_moment(state[p])
    stacks = []
    for chunk in batch.chunks:
        params = [p for p, _ in chunk.members]
        momenta = [state[p]["momentum_buffer"] for p in params]
        for group, positions in by_group(chunk.members):
            muon_momentum_lists_([momenta[i] for i in positions], [params[i].grad for i in positions],
                                 group["momentum"])
        U = torch.empty((sum(chunk.counts), chunk.rows, chunk.cols), dtype=chunk.stack_dtype, device=params[0].device)
        start = 0
        for (p, group), m, count in zip(chunk.members, momenta, chunk.counts):  # one matrix's temporary at a time
            muon_lookahead(p.grad, m, group["momentum"], group["nesterov"], out=U[start:start + count].view(m.shape))
            start += count
        stacks.append(U)
    chunks = batch.chunks
    results = orthogonalize_group_stacks(stacks, chunks[0].group, chunks[0].compute_dtype)
    del stacks
    for chunk, O in zip(chunks, results):
        weights = [p.detach() for p, _ in chunk.members]
        start, parts = 0, []
        for (p, group), count in zip(chunk.members, chunk.counts):
            part = O[start:start + count]
            if group["beta2"] is not None:  # NorMuon: each parameter's own slice, as update_phase
                moment = state[p]["second_moment"]  # present: checked above
                part, s_new = normuon_normalize(part, moment, group["beta2"])
                moment.copy_(s_new)
            parts.append(part.reshape(p.shape))
            start += count
        for group, positions in by_group(chunk.members):
            decoupled_update_lists_([weights[i] for i in positions], [parts[i] for i in positions], lr=group["lr"],
                                    weight_decay=group["weight_decay"], scale=lr_scale(group, chunk.rows, chunk.cols))
    return True


def step_fused(batch: Batch, state) -> bool:
    """The whole step of a batch (finiteness check, momentum, orthogonalization, update) in one
    native call, each matrix on one of torch's threads, in place and with no stack; the
    arithmetic is the torch ops', so the results are bitwise the same. False, having changed
    nothing, if a gradient is not finite."""
    grads, momenta, weights, views, hyper = [], [], [], [], []
    for chunk in batch.chunks:
        for group, positions in by_group(chunk.members):
            scalars = muon_step_scalars(group["momentum"], group["nesterov"], group["lr"], group["weight_decay"],
                                        lr_scale(group, chunk.rows, chunk.cols))
            for i in positions:
                p = chunk.members[i][0]
                grads.append(p.grad)
                momenta.append(state[p]["momentum_buffer"])
                weights.append(p)
                views.append((chunk.counts[i], chunk.rows, chunk.cols))
                hyper.append(scalars)
    return native_muon_step(grads, momenta, weights, views, hyper,
                            make_plan(**orthogonalize_options(batch.chunks[0].group)))


IMPLEMENTATIONS = {"fused": step_fused, "foreach": step_foreach}


def run_batch(batch: Batch, state) -> None:
    """Step one batch with its implementation; "fused" and "foreach" fall back to
    ``step_per_parameter`` for a step with a non-finite gradient."""
    run = IMPLEMENTATIONS.get(batch.impl)
    if run is None or not run(batch, state):
        step_per_parameter(batch, state)
