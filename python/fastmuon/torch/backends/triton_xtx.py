"""Triton kernel C = X^T X for a batch of tall (K, M) matrices, with the symmetric-tile schedule
and mirrored store of ``triton_xxt`` (see ``triton_common``).

It reads X as (BLOCK_K, BLOCK_M) blocks along its rows and transposes them in registers, so a
row-major tall X is read coalesced and never copied to its transpose. The orthogonalize driver
uses it to keep a tall input in its own layout while iterating on the wide orientation X^T.
fp32 accumulation; bf16, fp16 and fp32 inputs, output in X's dtype; 64-bit offsets.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .triton_common import TileConfig, autotuned, cols_gram_tile, finish_tile, launch_symmetric, program_tile


@triton.jit
def xtx_kernel(
    X, C, TILE_MAP, M, K,
    stride_xb, stride_xk, stride_xm, stride_cb, stride_cm, stride_cn,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, SOFT_BF16: tl.constexpr,
    DOT_PRECISION: tl.constexpr, COUNT_TILES: tl.constexpr,
):
    b, ti, tj = program_tile(M, BLOCK_M)
    acc = cols_gram_tile(
        X + b.to(tl.int64) * stride_xb, ti, tj, M, K, stride_xk, stride_xm,
        BLOCK_M, BLOCK_K, UPCAST, DOT_PRECISION,
    )
    finish_tile(C, acc, b, ti, tj, M, stride_cb, stride_cm, stride_cn, TILE_MAP, BLOCK_M, SOFT_BF16, COUNT_TILES)


xtx_kernel_tuned = autotuned(xtx_kernel, key=["M", "K"])


def xtx_ref(X: torch.Tensor) -> torch.Tensor:
    """The float64 reference: X^T X over the last two axes."""
    X = X.to(torch.float64)
    return X.mT @ X


def launch_xtx(
    X: torch.Tensor,
    out: torch.Tensor,
    *,
    config: Optional[TileConfig] = None,
    tile_map: Optional[torch.Tensor] = None,
) -> None:
    """Write X^T X of X (B, K, M) into out (B, M, M), which must not overlap X. ``config`` and
    ``tile_map`` as for ``triton_xxt.launch_xxt``."""
    B, K, M = X.shape
    launch_symmetric(xtx_kernel, xtx_kernel_tuned, X, out, B, M, K, config=config, tile_map=tile_map)
