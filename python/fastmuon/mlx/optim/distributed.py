"""The replicated strategy of an MLX Muon step over an ``mx.distributed`` group (the sharded
strategy of fastmuon.torch has no MLX counterpart: mlx.distributed replicates the weights)."""

from __future__ import annotations

from typing import Callable, Dict, List

import mlx.core as mx

from ...cluster import chunk_owners


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
        loads, mine = [0] * world, []
        for k in members:
            U = stacks[k]
            for lo, hi, owner in plan[k]:
                loads[owner] += (hi - lo) * U.shape[1] * U.shape[2]
                if owner == rank:
                    mine.append(orthogonalize(U[lo:hi]).reshape(-1))
        length = max(loads)
        done = sum(part.size for part in mine)
        message = mx.concatenate(mine + [mx.zeros((length - done,), dtype=dtype)])
        gathered = mx.distributed.all_gather(message, group=group).reshape(world, length)
        offsets = [0] * world
        for k in members:
            U = stacks[k]
            chunks = []
            for lo, hi, owner in plan[k]:
                size = (hi - lo) * U.shape[1] * U.shape[2]
                chunks.append(gathered[owner, offsets[owner]:offsets[owner] + size].reshape(hi - lo, *U.shape[1:]))
                offsets[owner] += size
            results[k] = mx.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    return results
