"""The two distributed strategies of a Muon step.

* ``replicated_step`` (data parallel: DDP, or any process group of more than one rank):
  gradients are expected to be averaged already, so that every rank holds the same ones. Each
  rank orthogonalizes a disjoint share of the stacks (contiguous chunks, given to the ranks by
  least load) and one all-gather per dtype shares the results;
  every rank applies every update itself, so weights and state stay replicated and equal those
  of a single process given the same gradients. Every Muon parameter joins every step, with
  zeros standing in for a missing gradient, so no rank can deadlock; a parameter is updated only
  if every rank had a finite gradient for it (otherwise it is skipped everywhere).
* ``sharded_step`` (DTensor parameters: FSDP2's fully_shard, HSDP, tensor parallel): momentum,
  state and update stay on each rank's shard. The placements ``owners.owner_layout`` takes (one
  ``Shard``; FSDP x TP on a mesh of every rank) take the owner strategy (``owners.py``:
  all-to-all to and from one owner per matrix); the others (``Partial``, a 2-D sharding on part
  of the world, a conv kernel sharded on a spatial dimension, ...) are gathered whole to every
  rank (``gather_step``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from ...cluster import chunk_owners, gather_layout
from ...rules import matrix_view
from ..functional import muon_momentum_, normuon_normalize
from .base import local, mesh_group, on_every_shard
from .local import Pending, apply_update, momentum_phase, orthogonalize_group_stacks, update_phase
from .owners import BATCH_AXIS, owner_members, owner_stacks, owner_step
from .pipeline import orthogonalize_key


def replicated_stacks(groups: List[dict]) -> Dict[tuple, List[Tuple[torch.Tensor, dict]]]:
    """Every Muon parameter (with a gradient or not) by stack, in the order every rank builds them."""
    stacks: Dict[tuple, List[Tuple[torch.Tensor, dict]]] = defaultdict(list)
    for group in groups:
        for p in group["params"]:
            _, rows, cols = matrix_view(p.shape)
            stacks[(rows, cols, p.dtype, p.device, *orthogonalize_key(group))].append((p, group))
    return stacks


def replicated_step(groups: List[dict], state, world) -> None:
    """One data-parallel step over ``world`` = (process group, rank, world size)."""
    stacks: Dict[tuple, List[Pending]] = defaultdict(list)
    for key, members in replicated_stacks(groups).items():
        # Every parameter joins, so all ranks build the same stacks; each rank's verdict on its
        # gradient is shared before the momentum is committed.
        stacks[key] = [momentum_phase(p, group, state[p], commit=False) for p, group in members]
    jobs = []
    for members in stacks.values():
        U = torch.cat([m.update for m in members]) if len(members) > 1 else members[0].update
        valid = torch.cat([m.finite.expand(m.batch) for m in members])
        for m in members:
            m.update = None  # the stack holds them now; free the per-parameter copies
        jobs.append((U, valid, members[0].group))
    results = _share_out(jobs, *world)
    for members, (O, ok) in zip(stacks.values(), results):
        start = 0
        for m in members:
            stop = start + m.batch
            update_phase(m, O[start:stop], ok[start:stop].all())
            start = stop


def _share_out(jobs, process_group, rank: int, world_size: int):
    """Each rank orthogonalizes its chunks of the stacks (``fastmuon.cluster.chunk_owners``: by
    least load, the same on every rank), then one all_gather per dtype shares [its results, its
    valid flag of every matrix], padded only to the largest rank's load. A matrix may be updated
    only if it was valid on every rank."""
    plan = chunk_owners([tuple(U.shape) for U, _, _ in jobs], world_size)
    by_dtype: Dict[tuple, List[int]] = defaultdict(list)
    for k, (U, _, _) in enumerate(jobs):
        by_dtype[(U.dtype, U.device)].append(k)
    results: List[Optional[Tuple[torch.Tensor, torch.Tensor]]] = [None] * len(jobs)
    for (dtype, device), stacks in by_dtype.items():
        length, placed = gather_layout([tuple(jobs[k][0].shape) for k in stacks], [plan[k] for k in stacks],
                                       world_size)
        flags = torch.cat([jobs[k][1] for k in stacks]).to(dtype)
        message = torch.zeros(length + flags.numel(), dtype=dtype, device=device)
        for k, chunks in zip(stacks, placed):
            U, _, group = jobs[k]
            for lo, hi, owner, offset in chunks:
                if owner == rank:
                    O = orthogonalize_group_stacks([U[lo:hi]], group)[0]
                    message[offset:offset + O.numel()] = O.reshape(-1)
        message[length:] = flags
        gathered = message.new_empty(world_size * message.numel())
        dist.all_gather_into_tensor(gathered, message, group=process_group)
        gathered = gathered.view(world_size, -1)
        valid = gathered[:, length:].amin(dim=0) > 0
        start = 0
        for k, chunks in zip(stacks, placed):
            U = jobs[k][0]
            O = torch.empty_like(U)
            for lo, hi, owner, offset in chunks:
                O[lo:hi] = gathered[owner, offset:offset + U[lo:hi].numel()].view(U[lo:hi].shape)
            results[k] = (O, valid[start:start + U.shape[0]])
            start += U.shape[0]
    return results


def check_sharded_groups(groups: List[dict]) -> None:
    """Refuse what the sharded strategy cannot take."""
    for group in groups:
        if group["sphere"] is not None:
            raise ValueError("sphere= is not supported for sharded (DTensor) parameters")


def gathered_stacks(groups: List[dict]) -> Dict[tuple, List[Tuple[torch.Tensor, dict]]]:
    """The DTensor parameters with a gradient that the gather path steps (``owner_members`` took
    the others out of ``groups``), by stack."""
    stacks: Dict[tuple, List[Tuple[torch.Tensor, dict]]] = defaultdict(list)
    for group in groups:
        for p in group["params"]:
            if p.grad is not None:
                _, rows, cols = matrix_view(p.shape)
                stacks[(rows, cols, p.dtype, *orthogonalize_key(group))].append((p, group))
    return stacks


def sharded_step(groups: List[dict], state) -> None:
    """Parameters sharded as DTensors (``Muon._parts`` gives this strategy only those): the owner
    strategy for those it takes, the gather path for the rest."""
    check_sharded_groups(groups)
    members, rest = owner_members(groups, state)
    owner_step(members)
    gather_step(rest, state)


def gather_step(groups: List[dict], state) -> None:
    """The fallback for placements the owner strategy does not take. Each matrix's U is gathered
    (one all-gather, O(parameters) per step), and on a 1-D mesh the matrix's owner, place
    (j + k) mod size in its mesh for matrix j of stack k, orthogonalizes it (same-shape matrices
    batched) and scatters the result's shards back (``distribute_tensor`` from the owner). On
    other meshes every rank orthogonalizes every matrix and keeps its shard. A gradient counts
    as finite only if every shard is (reduced over the parameter's mesh, a dimension at a time);
    NorMuon's second moment (one value per row or column) is kept whole on every rank."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for k, ((rows, cols, *_), members) in enumerate(gathered_stacks(groups).items()):
        pending = []
        for p, group in members:
            p_state = state[p]
            grad, M = local(p.grad), local(p_state["momentum_buffer"])
            mesh = mesh_group(p)
            ok = on_every_shard(torch.isfinite(grad).all(), p)
            U = muon_momentum_(M, grad, ok, group["momentum"], group["nesterov"])
            U_full = DTensor.from_local(U, p.device_mesh, p.placements, shape=p.shape, stride=p.stride(),
                                        run_check=False).full_tensor()
            pending.append((p, group, p_state, ok, U_full, mesh))
        # owners as places in each parameter's own mesh (None: every rank computes its matrix)
        owners = [None if g is None else (j + k) % g[2] for j, (*_, g) in enumerate(pending)]
        mine = [j for j, (owner, (*_, g)) in enumerate(zip(owners, pending)) if owner is None or owner == g[1]]
        results: Dict[int, torch.Tensor] = {}
        if mine:
            group = pending[mine[0]][1]
            views = [pending[j][4].reshape(matrix_view(pending[j][0].shape)) for j in mine]
            O = orthogonalize_group_stacks([torch.cat(views)], group)[0]
            start = 0
            for j, view in zip(mine, views):
                results[j] = O[start:start + view.shape[0]]
                start += view.shape[0]
        for j, (p, group, p_state, ok, U_full, mesh) in enumerate(pending):
            owner = owners[j]
            O = results.get(j)
            if group["beta2"] is not None:
                s_old = p_state["second_moment"]
                if O is not None:
                    O, s_new = normuon_normalize(O, s_old, group["beta2"])
                else:
                    s_new = torch.empty_like(s_old)
                if owner is not None:
                    dist.broadcast(s_new, group=mesh[0], group_src=owner)
                s_old.copy_(torch.where(ok, s_new, s_old))
            O_full = O.reshape(p.shape) if O is not None else torch.empty(p.shape, dtype=U_full.dtype,
                                                                          device=U_full.device)
            O_local = distribute_tensor(O_full, p.device_mesh, p.placements, src_data_rank=owner).to_local()
            apply_update(local(p.detach()), O_local, ok, group, matrix_view(p.shape))
            p_state["skipped_steps"].add_((~ok).to(torch.int64))


def distributed_stacks(strategy, groups, state):
    """explain()'s stacks of a distributed strategy: [(members [(p, group)], matrices per
    orthogonalization, how they are shared)]."""
    if strategy == "replicated":
        return [(members, sum(matrix_view(p.shape)[0] for p, _ in members),
                 "each rank orthogonalizes its chunks of the stacks (by least load), one all-gather per dtype "
                 "shares the results")
                for members in replicated_stacks(groups).values()]
    check_sharded_groups(groups)
    owned, rest = owner_members(groups, state)
    stacks = []
    for members in owner_stacks(owned).values():
        layout = members[0].layout
        if layout.axes == (BATCH_AXIS,):
            n = sum(local(m.param).shape[0] for m in members)
            how = "a stack sharded on its matrices: each rank orthogonalizes its own, no exchange"
        else:
            n = matrix_view(members[0].param.shape)[0]
            how = (f"owner all-to-all over a group of {layout.size} ranks: each matrix's shards go to one owner "
                   "and its result's shards come back, in batches of one matrix per owner")
        stacks.append(([(m.param, m.group) for m in members], n, how))
    for members in gathered_stacks(rest).values():
        n = sum(matrix_view(p.shape)[0] for p, _ in members)
        stacks.append((members, n, "gathered whole: placements the owner all-to-all does not take "
                                   "(Partial, other strided shardings, 2-D on a mesh of part of the world, a "
                                   "stack split twice, a conv kernel's spatial dimension)"))
    return stacks
