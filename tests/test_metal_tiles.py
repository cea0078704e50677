"""The tile schedule of the Metal symmetric kernels (``fastmuon.tiles``), against brute force.

The Metal kernels compute the same map with a float32 square root (``fastmuon_upper_tile`` in
metal/fastmuon_tiles.h); these tests run the Python function with float32 and with deliberately
wrong square roots, so the correction steps are shown to carry the result.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from fastmuon import tiles

ROOT = Path(__file__).resolve().parents[1]


def brute_force_schedule(T: int):
    """All (i, j), i <= j < T, column by column: what threadgroup t must compute."""
    return [(i, j) for j in range(T) for i in range(j + 1)]


def float32_sqrt(v: float) -> float:
    """sqrt as the Metal kernel evaluates it: 8 t + 1 rounded to float32, float32 sqrt."""
    return float(np.sqrt(np.float32(v)))


@pytest.mark.parametrize(
    "sqrt",
    [math.sqrt, float32_sqrt, lambda v: math.sqrt(v) * (1 + 1e-3), lambda v: math.sqrt(v) * (1 - 1e-3),
     lambda v: math.sqrt(v) + 3.0, lambda v: max(math.sqrt(v) - 3.0, 0.0)],
    ids=["exact", "float32", "high", "low", "far_high", "far_low"],
)
def test_upper_tile_matches_brute_force(sqrt):
    T = 300  # 45150 tiles: m up to 9600
    expected = brute_force_schedule(T)
    got = [tiles.upper_tile(t, sqrt=sqrt) for t in range(len(expected))]
    assert got == expected


def test_upper_tile_float32_at_large_indices():
    """Near the float32 limits of the closed form (m ~ 2**20), where sqrt(8 t + 1) is rounded:
    every column start, and its neighbours, maps to the right tile."""
    for j in list(range(30000, 32768, 97)) + [32767]:
        start = j * (j + 1) // 2
        for t, want in ((start - 1, (j - 1, j - 1)), (start, (0, j)), (start + j, (j, j))):
            assert tiles.upper_tile(t, sqrt=float32_sqrt) == want


def test_schedule_covers_every_tile_once():
    """Each launched tile plus its mirror cover the T x T grid exactly once."""
    for m in (1, 31, 32, 33, 64, 70, 257):
        T = tiles.tiles_per_side(m)
        covered = np.zeros((T, T), dtype=int)
        for t in range(tiles.upper_tile_count(m)):
            i, j = tiles.upper_tile(t)
            assert 0 <= i <= j < T
            covered[i, j] += 1
            if i != j:
                covered[j, i] += 1
        np.testing.assert_array_equal(covered, np.ones((T, T), dtype=int))


@pytest.mark.parametrize("m,count", [(0, 0), (1, 1), (32, 1), (33, 3), (64, 3), (65, 6), (768, 300)])
def test_upper_tile_count(m, count):
    assert tiles.upper_tile_count(m) == count


def test_symmetric_grid():
    groups, threads = tiles.symmetric_grid(70, 3)
    assert groups == (6, 3, 1) and threads == (tiles.THREADS, 1, 1)
    with pytest.raises(ValueError):
        tiles.symmetric_grid(-1, 1)
    with pytest.raises(ValueError):
        tiles.upper_tile(-1)


def test_constants_agree_with_the_metal_source():
    """TILE and THREADS are stated in Python and in the Metal header; they must be the same
    numbers."""
    header = (ROOT / "metal" / "fastmuon_tiles.h").read_text()
    assert re.search(r"#define FASTMUON_TILE (\d+)", header).group(1) == str(tiles.TILE)
    assert re.search(r"#define FASTMUON_THREADS (\d+)", header).group(1) == str(tiles.THREADS)
    # four simdgroups of 32, each a 16 x 16 quarter of the tile
    assert tiles.THREADS == 4 * 32 and tiles.TILE == 2 * 16
