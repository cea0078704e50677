"""The tile schedule of every symmetric-product kernel (Metal and Triton), as pure Python.

A symmetric (m x m) output (X X^T, or b A + c A A) is cut into T x T tiles of ``tile`` x ``tile``
with T = ceil(m / tile). Only the T (T + 1) / 2 tiles (i, j) with i <= j are computed, one
threadgroup (Metal) or program (Triton) each; a tile also writes its mirror (j, i). Program t
handles tile ``upper_tile(t)``, the column-by-column enumeration t = j (j + 1) / 2 + i.

``metal/fastmuon_tiles.h`` (``fastmuon_upper_tile``) and the Triton kernels do the same index
math on the device with a float32 square root; ``upper_tile`` takes the square root as a
parameter so that tests can run it with float32 and deliberately wrong ones. The launch grids
are computed here, by the same functions the tests check against brute force. Needs neither
numpy nor a framework.
"""

from __future__ import annotations

import math
from typing import Callable, Tuple

TILE = 32  # FASTMUON_TILE: output tile edge
THREADS = 128  # FASTMUON_THREADS: threads per threadgroup (four simdgroups of 32)
# The kernels evaluate (j + 1) (j + 2) / 2 in 32-bit unsigned ints: fine for T <= 32768 tiles a
# side (1.07e9 < 2**32), i.e. matrices of up to 2**20 rows.
MAX_SYMMETRIC_DIM = TILE * 32768


def tiles_per_side(m: int, tile: int = TILE) -> int:
    """T = ceil(m / tile): tiles along one side of an (m x m) output."""
    if m < 0:
        raise ValueError(f"m must be non-negative, got {m}")
    if tile < 1:
        raise ValueError(f"tile must be positive, got {tile}")
    return -(-m // tile)


def upper_tile_count(m: int, tile: int = TILE) -> int:
    """T (T + 1) / 2: the tiles launched for an (m x m) symmetric output."""
    t = tiles_per_side(m, tile)
    return t * (t + 1) // 2


def upper_tile(t: int, sqrt: Callable[[float], float] = math.sqrt) -> Tuple[int, int]:
    """Tile (i, j), i <= j, of threadgroup ``t`` (the inverse of t = j (j + 1) / 2 + i).

    j starts from the closed form floor((sqrt(8 t + 1) - 1) / 2) with the given square root,
    then is corrected in both directions, so any sqrt that is merely close gives the right tile.
    """
    if t < 0:
        raise ValueError(f"tile index must be non-negative, got {t}")
    j = int((sqrt(8.0 * t + 1.0) - 1.0) * 0.5)
    while (j + 1) * (j + 2) // 2 <= t:
        j += 1
    while j * (j + 1) // 2 > t:
        j -= 1
    return t - j * (j + 1) // 2, j


def tile_schedule(m: int, tile: int = TILE) -> list:
    """The tile (i, j) of every program of one (m x m) output, in program order, in exact
    integers."""
    return [upper_tile(t, sqrt=lambda x: float(math.isqrt(int(x)))) for t in range(upper_tile_count(m, tile))]


def symmetric_grid(m: int, batch: int) -> Tuple[Tuple[int, int, int], Tuple[int, int, int]]:
    """(threadgroups, threads per threadgroup) of one symmetric-product launch: one
    threadgroup per upper tile of each of ``batch`` (m x m) outputs."""
    if batch < 0:
        raise ValueError(f"batch must be non-negative, got {batch}")
    return (upper_tile_count(m), batch, 1), (THREADS, 1, 1)
