"""Compile fastmuon's Triton kernels for NVIDIA targets without a GPU (run as a script, with
TRITON_INTERPRET unset, by tests/test_triton.py).

Triton's front end, its GPU passes and ptxas run on the CPU; only the launch needs a device. The
signatures are those a launch on contiguous, 16-aligned tensors produces (unit strides become
compile-time constants, the other integers are marked divisible by 16), so this catches what the
interpreter cannot: code that does not type-check once unit strides are constants, and a main
loop that is not software-pipelined. Prints one JSON object per compiled kernel.
"""

from __future__ import annotations

import json
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fastmuon.torch.backends.triton_ba_plus_caa import ba_plus_caa_kernel
from fastmuon.torch.backends.triton_common import TileConfig, ladder_configs
from fastmuon.torch.backends.triton_xtx import xtx_kernel
from fastmuon.torch.backends.triton_xxt import xxt_kernel

FLAGS = ("BLOCK_M", "BLOCK_K", "UPCAST", "SOFT_BF16", "DOT_PRECISION", "COUNT_TILES")
# Unit strides of contiguous inputs and outputs (the reduction axis of X X^T and A A^T, the
# column axis of X^T X, the output's columns).
UNIT_STRIDES = {
    "xxt_kernel": ("stride_xk", "stride_cn"),
    "xtx_kernel": ("stride_xm", "stride_cn"),
    "ba_plus_caa_kernel": ("stride_an", "stride_cn"),
}


def compile_kernel(kernel, dtype: str, precision: str, count_tiles: bool, arch: int,
                   config: TileConfig = TileConfig(128, 64, num_warps=8, num_stages=3)):
    signature, constants = {}, dict(
        BLOCK_M=config.block_m, BLOCK_K=config.block_k, UPCAST=False, SOFT_BF16=False, DOT_PRECISION=precision,
        COUNT_TILES=count_tiles,
    )
    for name in kernel.arg_names:
        if name in FLAGS:
            signature[name] = "constexpr"
        elif name in ("X", "A", "C"):
            signature[name] = f"*{dtype}"
        elif name == "TILE_MAP":
            signature[name] = "*i32" if count_tiles else "constexpr"
            if not count_tiles:
                constants[name] = None
        elif name in ("alpha", "beta"):
            signature[name] = "fp32"
        elif name in UNIT_STRIDES[kernel.__name__]:
            signature[name] = "constexpr"
            constants[name] = 1
        else:
            signature[name] = "i32"
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(kernel.arg_names)
        if signature[name] not in ("constexpr", "fp32")
    }
    compiled = triton.compile(
        ASTSource(kernel, signature, constants, attrs=attrs),
        target=GPUTarget("cuda", arch, 32),
        options=dict(num_warps=config.num_warps, num_stages=config.num_stages),
    )
    ptx = compiled.asm["ptx"]
    return dict(
        kernel=kernel.__name__,
        dtype=dtype,
        arch=arch,
        count_tiles=count_tiles,
        config=[config.block_m, config.block_k, config.num_warps, config.num_stages],
        shared=compiled.metadata.shared,
        async_copies=ptx.count("cp.async.cg") + ptx.count("cp.async.ca") + ptx.count("cp.async.bulk"),
        wgmma=ptx.count("wgmma.mma_async"),
        mma=ptx.count("mma.sync"),
    )


def main() -> None:
    cases = [(k, "bf16", "tf32", False, 90) for k in (xxt_kernel, xtx_kernel, ba_plus_caa_kernel)]
    cases += [(xxt_kernel, "fp32", "ieee", False, 90), (xxt_kernel, "fp16", "tf32", True, 80)]
    # Every configuration a per-shape launch can take (bf16 and fp32 inputs), as a Hopper GPU
    # would compile it.
    for torch_dtype, dtype, precision in ((torch.bfloat16, "bf16", "tf32"), (torch.float32, "fp32", "ieee")):
        cases += [(xxt_kernel, dtype, precision, False, 90, config) for config in ladder_configs(torch_dtype)]
    for case in cases:
        print(json.dumps(compile_kernel(*case)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
