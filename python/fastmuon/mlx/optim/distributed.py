"""The replicated strategy of an MLX Muon step over an ``mx.distributed`` group (the sharded
strategy of fastmuon.torch has no MLX counterpart: mlx.distributed replicates the weights)."""

from __future__ import annotations

from typing import Callable

import mlx.core as mx


def share_out(U: mx.array, k: int, group, orthogonalize: Callable[[mx.array], mx.array]) -> mx.array:
    """Orthogonalize the (n, rows, cols) stack ``U``, the ``k``-th of this step, over ``group``:
    each of its W processes orthogonalizes one chunk of ceil(n / W) matrices (chunk (rank + k)
    mod W, so single-matrix stacks spread over the ranks) and one all_gather shares them; every
    rank then holds every result, as one process would have computed it."""
    world, rank = group.size(), group.rank()
    n = U.shape[0]
    size = -(-n // world)
    start = ((rank + k) % world) * size
    if start >= n:  # this rank's chunk is all padding
        mine = mx.zeros((size, *U.shape[1:]), dtype=U.dtype)
    else:
        mine = orthogonalize(U[start:start + size])
        if mine.shape[0] < size:
            mine = mx.concatenate([mine, mx.zeros((size - mine.shape[0], *U.shape[1:]), dtype=U.dtype)])
    gathered = mx.distributed.all_gather(mine, group=group)  # rank r's chunk at r * size
    chunks = [gathered[((j - k) % world) * size:((j - k) % world + 1) * size] for j in range(world)]
    return mx.concatenate(chunks)[:n]

