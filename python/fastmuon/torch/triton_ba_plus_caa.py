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
from torch.library import wrap_triton

from .triton_common import (
    INTERPRETED,
    TileConfig,
    count_tile,
    grid_for,
    launch_meta,
    pick_config,
    rows_gram_tile,
    store_mirrored,
    to_output,
    triton_configs,
    upper_tile,
)


@triton.jit
def ba_plus_caa_kernel(
    A, C, TILE_MAP, M, alpha, beta,
    stride_ab, stride_am, stride_an, stride_cb, stride_cm, stride_cn,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, SOFT_BF16: tl.constexpr,
    DOT_PRECISION: tl.constexpr, COUNT_TILES: tl.constexpr,
):
    T = tl.cdiv(M, BLOCK_M)
    per_matrix = T * (T + 1) // 2
    pid = tl.program_id(0)
    b = pid // per_matrix
    ti, tj = upper_tile(pid - b * per_matrix)
    rows = ti * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tj * BLOCK_M + tl.arange(0, BLOCK_M)
    base = A + b.to(tl.int64) * stride_ab
    acc = rows_gram_tile(base, rows, cols, M, M, stride_am, stride_an, BLOCK_M, BLOCK_K, UPCAST, DOT_PRECISION)
    a_tile = tl.load(
        base + rows[:, None].to(tl.int64) * stride_am + cols[None, :].to(tl.int64) * stride_an,
        mask=(rows[:, None] < M) & (cols[None, :] < M),
        other=0.0,
    ).to(tl.float32)
    acc = alpha * acc + beta * a_tile
    value = to_output(acc, C.dtype.element_ty, SOFT_BF16)
    store_mirrored(C + b.to(tl.int64) * stride_cb, value, ti, tj, M, stride_cm, stride_cn, BLOCK_M)
    if COUNT_TILES:
        count_tile(TILE_MAP, b, ti, tj, T)


ba_plus_caa_kernel_tuned = (
    None if INTERPRETED else triton.autotune(configs=triton_configs(), key=["M"])(ba_plus_caa_kernel)
)


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
    if out.numel() == 0:
        return
    config = pick_config(config, tile_map)
    kernel = ba_plus_caa_kernel if config is not None else ba_plus_caa_kernel_tuned
    meta = dict(launch_meta(A.dtype), COUNT_TILES=tile_map is not None)
    if config is not None:
        meta.update(config.meta())
    wrap_triton(kernel)[grid_for(B, M, config)](
        A, out, tile_map, M, float(alpha), float(beta), *A.stride(), *out.stride(), **meta
    )
