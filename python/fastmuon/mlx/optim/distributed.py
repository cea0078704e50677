"""The replicated strategy of an MLX Muon step over an ``mx.distributed`` group (the sharded
strategy of fastmuon.torch has no MLX counterpart: mlx.distributed replicates the weights)."""

from __future__ import annotations

from typing import Callable, Dict, List

import mlx.core as mx

from ...cluster import chunk_owners, gather_layout


def share_out(stacks: List[mx.array], group, orthogonalize: Callable[[mx.array], mx.array]) -> List[mx.array]:
    """Orthogonalize one step's (n, rows, cols) ``stacks`` over ``group``: each of its W processes
    orthogonalizes its chunks (``fastmuon.cluster.chunk_owners``: by least load, the same on every
    process) and one ``all_gather`` per dtype shares them, padded only to the largest process's
    load; every process then holds every result, as one process would have computed it."""
    world, rank = group.size(), group.rank()
    plan = chunk_owners([tuple(U.shape) for U in stacks], world)
    by_dtype: Dict[object, List[int]] = {}
    for k, U in enumerate(stacks):
        by_dtype.setdefault(U.dtype, []).append(k)
    results: List[mx.array] = [None] * len(stacks)
    for dtype, members in by_dtype.items():
        length, placed = gather_layout([tuple(stacks[k].shape) for k in members], [plan[k] for k in members], world)
        mine = [orthogonalize(stacks[k][lo:hi]).reshape(-1)
                for k, chunks in zip(members, placed) for lo, hi, owner, _ in chunks if owner == rank]
        done = sum(part.size for part in mine)
        message = mx.concatenate(mine + [mx.zeros((length - done,), dtype=dtype)])
        gathered = mx.distributed.all_gather(message, group=group).reshape(world, length)
        for k, chunks in zip(members, placed):
            U = stacks[k]
            parts = [gathered[owner, offset:offset + (hi - lo) * U.shape[1] * U.shape[2]].reshape(hi - lo, *U.shape[1:])
                     for lo, hi, owner, offset in chunks]
            results[k] = mx.concatenate(parts) if len(parts) > 1 else parts[0]
    return results
