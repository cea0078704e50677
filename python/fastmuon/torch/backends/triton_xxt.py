"""Triton kernel C = X X^T for a batch of (M, K) matrices, computing only the tiles on and above
the diagonal and storing each one with its mirror (schedule and store: ``triton_common``).

The kernel reads X through its strides (rows are coalesced when K is the contiguous axis; for
X stored column-major use ``triton_xtx`` on its transpose) and accumulates in fp32; bf16, fp16
and fp32 inputs, output in X's dtype. Offsets are 64-bit, so large batches are addressed
correctly.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .triton_common import TileConfig, autotuned, finish_tile, launch_symmetric, program_tile, rows_gram_tile


@triton.jit
def xxt_kernel(
    X, C, TILE_MAP, M, K,
    stride_xb, stride_xm, stride_xk, stride_cb, stride_cm, stride_cn,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, SOFT_BF16: tl.constexpr,
    DOT_PRECISION: tl.constexpr, COUNT_TILES: tl.constexpr,
):
    b, ti, tj = program_tile(M, BLOCK_M)
    acc = rows_gram_tile(
        X + b.to(tl.int64) * stride_xb, ti, tj, M, K, stride_xm, stride_xk,
        BLOCK_M, BLOCK_K, UPCAST, DOT_PRECISION,
    )
    finish_tile(C, acc, b, ti, tj, M, stride_cb, stride_cm, stride_cn, TILE_MAP, BLOCK_M, SOFT_BF16, COUNT_TILES)


xxt_kernel_tuned = autotuned(xxt_kernel, key=["M", "K"])


def xxt_ref(X: torch.Tensor) -> torch.Tensor:
    """The float64 reference: X X^T over the last two axes."""
    X = X.to(torch.float64)
    return X @ X.mT


def launch_xxt(
    X: torch.Tensor,
    out: torch.Tensor,
    *,
    config: Optional[TileConfig] = None,
    tile_map: Optional[torch.Tensor] = None,
) -> None:
    """Write X X^T of X (B, M, K) into out (B, M, M), which must not overlap X.

    ``config`` fixes the block sizes (default: autotuned per (M, K) on GPUs, one configuration
    under the interpreter). ``tile_map``, an int32 (B, T, T) tensor of zeros with
    T = ceil(M / config.block_m), receives one count per computed tile (a test hook).
    """
    B, M, K = X.shape
    launch_symmetric(xxt_kernel, xxt_kernel_tuned, X, out, B, M, K, config=config, tile_map=tile_map)
