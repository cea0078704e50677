"""Cost model of a sharded Muon step, per rank: bytes sent and received, flops, collectives and
peak transient memory, for a list of matrices sharded on rows over a group of ranks.

Designs:
* "all-to-all" (``fastmuon.torch`` for DTensors with one Shard placement): same-shape matrices
  in batches of one per owner; each rank's shard goes to the owner and the result's shard comes
  back; two batches in flight.
* "gather" (the fallback for other placements): each matrix is all-gathered to every rank, its
  owner orthogonalizes it and scatters the result's shards; a same-shape stack is gathered whole.
* "replicated" (data parallel, plain tensors): every rank holds every matrix; each orthogonalizes
  the chunks ``chunk_owners`` gives it and one all-gather shares the results, padded to the
  largest rank's load.

Bytes follow the collectives' payloads (ring all-gather: each rank sends its part to, and
receives every other part from, the others). Transient memory counts the full-matrix copies
alive at the peak; its two constants are read off measurements (``bench/bench_fsdp.py``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .flops import iteration_flops

DESIGNS = ("all-to-all", "gather", "replicated")
# Full-matrix copies alive at the peak of the all-to-all design (two batches' messages, the
# assembled matrix, the iteration's buffers, the result): 42 MiB of 4 MiB matrices, measured by
# bench/bench_fsdp.py at 16 and 32 x 1024^2 fp32 on 2 and 4 ranks (bench/results/fsdp.jsonl).
OWNER_COPIES = 10.5
# Gather design: per matrix of a rank's owned part of a stack, the copies besides the gathered
# stack (the same runs: 2.78x the weights at 2 ranks, 1.89x at 4).
GATHER_OWNER_COPIES = 3.5


def shard_rows(rows: int, world: int) -> np.ndarray:
    """Rows of each rank's shard, as DTensor's Shard(0) chunks them (ceil(rows / world) each)."""
    chunk = -(-rows // world)
    lo = np.minimum(rows, np.arange(world) * chunk)
    return np.minimum(rows, lo + chunk) - lo


def chunk_owners(shapes: Sequence[Tuple[int, int, int]], world: int) -> List[List[Tuple[int, int, int]]]:
    """The data-parallel share-out of one step's (n, rows, cols) stacks over ``world`` ranks, the
    same on every rank: each stack is cut into chunks of ceil(n / world) matrices, and each chunk,
    stack after stack, goes to the rank with the fewest elements so far (ties to the lowest). A
    rank's results then travel in one message for all stacks, padded only to the largest rank's
    load, where one gather per stack padded every rank to a whole chunk: with fewer matrices of a
    shape than ranks, each rank received world - 1 matrices per stack. Returns, per stack, its
    chunks as (lo, hi, owner)."""
    loads = [0] * world
    plan = []
    for n, rows, cols in shapes:
        size = max(1, -(-int(n) // world))
        chunks = []
        for lo in range(0, int(n), size):
            hi = min(int(n), lo + size)
            owner = min(range(world), key=lambda rank: (loads[rank], rank))
            loads[owner] += (hi - lo) * int(rows) * int(cols)
            chunks.append((lo, hi, owner))
        plan.append(chunks)
    return plan


def gather_layout(shapes: Sequence[Tuple[int, int, int]], plan: Sequence[Sequence[Tuple[int, int, int]]],
                  world: int) -> Tuple[int, List[List[Tuple[int, int, int, int]]]]:
    """Where the share-out's one all-gather carries the chunks of ``plan`` (``chunk_owners``, or
    a part of it) of these (n, rows, cols) stacks: each rank's message holds its chunks' results
    flattened, stack after stack, padded to the largest rank's load. Returns (that length in
    elements, per stack its chunks as (lo, hi, owner, offset in the owner's message))."""
    loads = [0] * world
    placed = []
    for (_, rows, cols), chunks in zip(shapes, plan):
        stack = []
        for lo, hi, owner in chunks:
            stack.append((lo, hi, owner, loads[owner]))
            loads[owner] += (hi - lo) * int(rows) * int(cols)
        placed.append(stack)
    return max(loads), placed


def step_cost(shapes: Sequence[Tuple[int, int]], world: int, design: str, *, element_bytes: int = 2,
              method: str = "polar_express", steps: int = 5) -> Dict[str, float]:
    """Per-rank maxima over the ranks of one step of Muon on ``shapes`` (rows, cols), each matrix
    sharded on rows over ``world`` ranks: "sent" and "received" bytes, "flops" of the
    orthogonalizations (dense count), "collectives" issued and "transient" bytes at the peak."""
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {', '.join(DESIGNS)}, got {design!r}")
    stacks: "OrderedDict[Tuple[int, int], int]" = OrderedDict()
    for rows, cols in shapes:
        stacks[(int(rows), int(cols))] = stacks.get((int(rows), int(cols)), 0) + 1
    if design == "replicated":
        return _replicated_cost(stacks, world, element_bytes, method, steps)
    sent, received, flops = np.zeros(world), np.zeros(world), np.zeros(world)
    collectives, transient, first = 1, 0.0, 0  # one finiteness all-reduce
    for (rows, cols), n in stacks.items():
        shard = shard_rows(rows, world) * cols * element_bytes
        matrix = rows * cols * element_bytes
        work = iteration_flops(method, steps, (rows, cols))[0]
        owners = (first + np.arange(n)) % world
        first = (first + n) % world
        for owner in owners:
            others = shard.sum() - shard[owner]
            if design == "all-to-all":  # shards to the owner, the result's shards back
                sent += shard
                sent[owner] += others - shard[owner]
                received[owner] += others
                received += shard
                received[owner] -= shard[owner]
            else:  # ring all-gather of the matrix, then the owner's scatter
                sent += (world - 1) * shard
                received += matrix - shard
                sent[owner] += others
                received += shard
                received[owner] -= shard[owner]
            flops[owner] += work
        if design == "all-to-all":
            collectives += 2 * -(-n // world)
        else:
            collectives += 2 * n
            owned = np.bincount(owners, minlength=world).max()
            transient = max(transient, n * matrix + owned * GATHER_OWNER_COPIES * matrix)
    if design == "all-to-all":
        transient = OWNER_COPIES * max((r * c for r, c in stacks), default=0) * element_bytes
    return {"sent": float(sent.max()), "received": float(received.max()), "flops": float(flops.max()),
            "collectives": collectives, "transient": transient}


def _replicated_cost(stacks, world: int, element_bytes: int, method: str, steps: int) -> Dict[str, float]:
    """``step_cost`` of the replicated design: ``chunk_owners``' share-out, then one all-gather
    of every rank's results padded to the largest load (after one finiteness all-reduce)."""
    shapes = [(n, rows, cols) for (rows, cols), n in stacks.items()]
    plan = chunk_owners(shapes, world)
    flops = np.zeros(world)
    for (_, rows, cols), chunks in zip(shapes, plan):
        work = iteration_flops(method, steps, (rows, cols))[0]
        for lo, hi, owner in chunks:
            flops[owner] += (hi - lo) * work
    gathered = float((world - 1) * gather_layout(shapes, plan, world)[0] * element_bytes)
    # the U stacks, the gathered results and O: three copies of the Muon weights
    transient = 3 * sum(n * r * c for (r, c), n in stacks.items()) * element_bytes
    return {"sent": gathered, "received": gathered, "flops": float(flops.max()), "collectives": 2,
            "transient": transient}


def llama_shapes(hidden: int, intermediate: int, layers: int, kv_heads_dim: int) -> list:
    """The Muon matrices of a Llama-style decoder (embeddings and head go to AdamW):
    per layer q and o (hidden^2), k and v (kv_heads_dim x hidden), gate and up
    (intermediate x hidden), down (hidden x intermediate)."""
    layer = [(hidden, hidden), (kv_heads_dim, hidden), (kv_heads_dim, hidden), (hidden, hidden),
             (intermediate, hidden), (intermediate, hidden), (hidden, intermediate)]
    return layer * layers


MODELS = {
    "Llama-2-7B": llama_shapes(4096, 11008, 32, 4096),
    "Llama-2-70B": llama_shapes(8192, 28672, 80, 1024),
}
