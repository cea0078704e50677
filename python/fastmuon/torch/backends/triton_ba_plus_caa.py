"""Triton kernel C = alpha A A + beta A for a batch of symmetric (M, M) matrices A, one step of
every Muon iteration (B = b A + c A^2), with the symmetric-tile schedule and mirrored store of
``triton_xxt`` (see ``triton_common``).

A A is formed as A A^T (equal for symmetric A) so that both operands are rows of A, read
coalesced; the result is exactly symmetric even if A is not, and then equals alpha A A^T + the
upper triangle of beta A mirrored. fp32 accumulation, alpha and beta in fp32; bf16, fp16 and
fp32 inputs, output in A's dtype; 64-bit offsets. The output must not overlap A (other
programs still read the rows a program writes).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .triton_common import TileConfig, autotuned, finish_tile, launch_symmetric, program_tile, rows_gram_tile


@triton.jit
def ba_plus_caa_kernel(
    A, C, TILE_MAP, M, alpha, beta,
    stride_ab, stride_am, stride_an, stride_cb, stride_cm, stride_cn,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, SOFT_BF16: tl.constexpr,
    DOT_PRECISION: tl.constexpr, COUNT_TILES: tl.constexpr,
):
    b, ti, tj = program_tile(M, BLOCK_M)
    base = A + b.to(tl.int64) * stride_ab
    acc = rows_gram_tile(base, ti, tj, M, M, stride_am, stride_an, BLOCK_M, BLOCK_K, UPCAST, DOT_PRECISION)
    rows = ti * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tj * BLOCK_M + tl.arange(0, BLOCK_M)
    a_tile = tl.load(
        base + rows[:, None].to(tl.int64) * stride_am + cols[None, :].to(tl.int64) * stride_an,
        mask=(rows[:, None] < M) & (cols[None, :] < M),
        other=0.0,
    ).to(tl.float32)
    acc = alpha * acc + beta * a_tile
    finish_tile(C, acc, b, ti, tj, M, stride_cb, stride_cm, stride_cn, TILE_MAP, BLOCK_M, SOFT_BF16, COUNT_TILES)


ba_plus_caa_kernel_tuned = autotuned(ba_plus_caa_kernel, key=["M"])


def ba_plus_caa_ref(A: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """The float64 reference: alpha A A + beta A over the last two axes."""
    A = A.to(torch.float64)
    return alpha * (A @ A) + beta * A


def launch_ba_plus_caa(
    A: torch.Tensor,
    out: torch.Tensor,
    alpha: float,
    beta: float,
    *,
    config: Optional[TileConfig] = None,
    tile_map: Optional[torch.Tensor] = None,
) -> None:
    """Write alpha A A + beta A of symmetric A (B, M, M) into out (B, M, M), which must not
    overlap A. ``config`` and ``tile_map`` as for ``triton_xxt.launch_xxt``."""
    B, M, _ = A.shape
    launch_symmetric(
        ba_plus_caa_kernel, ba_plus_caa_kernel_tuned, A, out, B, M, float(alpha), float(beta),
        config=config, tile_map=tile_map,
    )
