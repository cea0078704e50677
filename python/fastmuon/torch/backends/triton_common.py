"""Pieces shared by the symmetric Triton kernels: the launch, which tile a program computes, the
tile products and the mirrored store. Imports triton; ``fastmuon.torch`` imports this module only
when a Triton path is asked for.

Tile schedule: that of ``fastmuon.tiles`` with tiles of BLOCK_M rows. Program p of a matrix
computes tile ``upper_tile(p)`` (i, j), i <= j, walking the upper triangle column by column; the
launch grid is ``fastmuon.tiles.upper_tile_count`` programs a matrix. Each program stores its
tile and the tile's transpose in the mirror position. On a diagonal tile the entries on and above
the diagonal come from the tile and those below from its transpose, so the whole result is
exactly symmetric whatever order the dot product accumulates in.

Interpreter (TRITON_INTERPRET=1, CPU tensors; for tests). It must be set before this package's
kernel modules are imported, since ``@triton.jit`` picks the interpreter when it decorates.
Two of its gaps are worked around here (both flags are compile-time constants, off on GPUs):
bf16 ``tl.dot`` multiplies raw bits, so tiles are upcast to fp32 before the dot (products of
16-bit numbers are exact in fp32, so the math is that of the GPU's 16-bit dot with fp32
accumulation); and its fp32 -> bf16 cast truncates, so bf16 outputs are rounded to nearest even
with integer arithmetic instead.

Launches. A default launch (no fixed configuration) takes a per-shape configuration
(``tile_config_for``: small tiles where a large one would leave most multiprocessors idle),
decided once per (kernel, batch, m, dtype, device) and cached with its grid and compile-time
arguments (``launch_plan``), so the hot loop does a dict lookup and the launch. No launch reads a
value back from the device, so a warmed-up step can be captured in a CUDA graph (the first
launch of a shape compiles the kernel, which must happen before capture). The configurations are
unmeasured until a GPU run; autotuning over them and others is opt-in (``use_autotuning``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ...tiles import upper_tile_count


def _kernels_interpreted() -> bool:
    @triton.jit
    def probe(x):
        pass

    return not isinstance(probe, triton.runtime.jit.JITFunction)


# Whether the kernels of this package, decorated when their modules were imported, run under the
# interpreter. Fixed at import, like triton's own choice.
INTERPRETED = _kernels_interpreted()


@dataclass(frozen=True)
class TileConfig:
    """Block sizes for one launch: BLOCK_M x BLOCK_M output tiles, BLOCK_K along the reduction."""

    block_m: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3

    def meta(self) -> dict:
        return dict(BLOCK_M=self.block_m, BLOCK_K=self.block_k, num_warps=self.num_warps, num_stages=self.num_stages)


# The interpreter costs a few ms per tile and reduction step whatever the tile size, so under it the
# default launch runs one large configuration; tests run the GPU configurations explicitly.
INTERPRETER_CONFIG = TileConfig(block_m=64, block_k=64)

# GPU configurations by tile edge, for 16-bit inputs (fp32 inputs halve BLOCK_K, so a pipeline
# stage holds the same bytes: 2 operands x BLOCK_M x BLOCK_K x 2 bytes, at most 32 KiB, 128 KiB
# over 4 stages, within Hopper's 227 KiB a block). UNMEASURED: chosen from the kernels' resource
# needs and from public Hopper kernels of the same kind (fixed 128 x 128 x 64 tiles, 8 warps, 4
# stages for batched GPT-sized stacks; 32-128 edges for small matrices), not timed here. Replace
# them with what bench/bench_triton_gpu.py measures on a GPU.
TILE_LADDER = {
    128: TileConfig(128, 64, num_warps=8, num_stages=4),
    64: TileConfig(64, 128, num_warps=4, num_stages=4),
    32: TileConfig(32, 128, num_warps=4, num_stages=4),
}

# Streaming multiprocessors of an H100 / H200 SXM: sizes grids where no device can be asked (under
# the interpreter).
NOMINAL_SM_COUNT = 132


def tile_config_for(batch: int, m: int, dtype: torch.dtype, sm_count: int) -> TileConfig:
    """The configuration of a launch over ``batch`` symmetric (m, m) outputs, per shape.

    The largest tile edge of ``TILE_LADDER`` whose grid (``batch`` x upper tiles) fills at least
    one wave of ``sm_count`` programs; when none does, the smallest edge, which has the most
    programs (a 768 x 768 Gram matrix has 21 tiles of 128 but 300 of 32). Edges of twice m or more
    are never taken: their tiles would be mostly masked. Split-K is not used: Muon stacks
    same-shape matrices, so batch x tiles fills the GPU for the shapes that matter, and splitting
    the reduction needs a second pass or atomics (which would break the exact symmetry of the
    output) where launch overhead is the measured problem. Unmeasured, like ``TILE_LADDER``.
    """
    edges = [edge for edge in sorted(TILE_LADDER, reverse=True) if edge < 2 * m or edge == min(TILE_LADDER)]
    chosen = next((edge for edge in edges if batch * upper_tile_count(m, edge) >= sm_count), edges[-1])
    return _for_dtype(TILE_LADDER[chosen], dtype)


def _for_dtype(config: TileConfig, dtype: torch.dtype) -> TileConfig:
    """A ladder configuration for inputs of ``dtype``: fp32 halves BLOCK_K (same bytes a stage)."""
    return replace(config, block_k=config.block_k // 2) if dtype == torch.float32 else config


def ladder_configs(dtype: torch.dtype) -> list:
    """Every configuration ``tile_config_for`` can return for inputs of ``dtype``."""
    return [_for_dtype(config, dtype) for config in TILE_LADDER.values()]


# Autotuning candidates (opt-in, ``use_autotuning``): the ladder for both dtype groups and a few
# other shapes. 128 x 128 fp32 accumulators over 8 warps use 64 registers a thread; configurations
# that do not fit are skipped by the autotuner.
GPU_CONFIGS = tuple(dict.fromkeys((
    *ladder_configs(torch.bfloat16),
    *ladder_configs(torch.float32),
    TileConfig(128, 64, num_warps=8, num_stages=3),
    TileConfig(128, 32, num_warps=4, num_stages=4),
    TileConfig(64, 64, num_warps=4, num_stages=4),
    TileConfig(64, 32, num_warps=4, num_stages=5),
)))


def triton_configs() -> list:
    """GPU_CONFIGS as ``triton.Config`` for ``@triton.autotune``."""
    return [
        triton.Config(dict(BLOCK_M=c.block_m, BLOCK_K=c.block_k), num_warps=c.num_warps, num_stages=c.num_stages)
        for c in GPU_CONFIGS
    ]


def autotuned(kernel, key: list):
    """``kernel`` autotuned over GPU_CONFIGS per value of the arguments named in ``key``; None
    under the interpreter, which cannot time configurations."""
    return None if INTERPRETED else triton.autotune(configs=triton_configs(), key=key)(kernel)


# Whether default launches autotune (FASTMUON_TRITON_AUTOTUNE=1, or ``use_autotuning``) instead of
# taking ``tile_config_for``. Autotuning times every candidate on a shape's first launch (seconds,
# with device syncs, so never inside a CUDA-graph capture); it exists to compare against the
# per-shape configurations on a GPU.
_autotune = os.environ.get("FASTMUON_TRITON_AUTOTUNE", "0") == "1"


def use_autotuning(enabled: bool) -> None:
    """Turn autotuning of default launches on or off (GPUs only; the interpreter ignores it)."""
    global _autotune
    _autotune = bool(enabled)
    _plans.clear()


def pick_config(config: "TileConfig | None", tile_map) -> "TileConfig | None":
    """The fixed configuration an explicit launch uses, or None to autotune (GPUs only)."""
    if config is None and INTERPRETED:
        return INTERPRETER_CONFIG
    if config is None and tile_map is not None:
        raise ValueError("tile_map needs an explicit config (autotuning launches the kernel several times)")
    return config


def grid_for(batch: int, m: int, config: "TileConfig | None"):
    """Launch grid: one program per upper tile of every matrix, batch-major."""
    if config is not None:
        return (batch * upper_tile_count(m, config.block_m),)
    return lambda meta: (batch * upper_tile_count(m, meta["BLOCK_M"]),)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 products follow torch's own matmul setting: exact fp32 ("highest", torch's default)
    or TF32 ("high"/"medium"), so the kernels round like the torch GEMMs beside them. 16-bit
    inputs ignore it (their products are exact in the fp32 accumulator)."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def soft_bf16_rounding(dtype: torch.dtype) -> bool:
    return INTERPRETED and dtype == torch.bfloat16


def launch_meta(dtype: torch.dtype) -> dict:
    """Compile-time flags of every kernel for an input/output ``dtype``."""
    return dict(
        UPCAST=INTERPRETED,
        SOFT_BF16=soft_bf16_rounding(dtype),
        DOT_PRECISION=dot_precision(dtype),
    )


_sm_counts: dict = {}


def sm_count(device: torch.device) -> int:
    """The device's multiprocessor count (asked once per device); NOMINAL_SM_COUNT for CPU
    tensors (the interpreter)."""
    if device.type != "cuda":
        return NOMINAL_SM_COUNT
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _sm_counts:
        _sm_counts[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _sm_counts[index]


@dataclass(frozen=True)
class LaunchPlan:
    """What a default launch of one kernel on one (batch, m, dtype, device) needs besides its
    tensors: the kernel (autotuned or not), the grid and the compile-time arguments."""

    kernel: object
    grid: object
    meta: dict


# Launch plans by (kernel, batch, m, dtype, device, dot precision, autotuning): decided once per
# shape, so a repeated launch costs a dict lookup on the host. Muon sees a handful of shapes.
_plans: dict = {}


def launch_plan(kernel, tuned, batch: int, m: int, dtype: torch.dtype, device: torch.device) -> LaunchPlan:
    """The cached ``LaunchPlan`` of a default launch (no fixed config, no tile map): under the
    interpreter INTERPRETER_CONFIG, on GPUs ``tile_config_for`` the shape, or the autotuner when
    ``use_autotuning`` is on."""
    precision = dot_precision(dtype)
    key = (kernel, batch, m, dtype, device, precision, _autotune)
    # symbolic sizes (torch.compile's dynamic shapes, opcheck's AOT dispatch) are not hashable:
    # such a launch plans afresh each time it is traced
    cached = isinstance(batch, int) and isinstance(m, int)
    plan = _plans.get(key) if cached else None
    if plan is None:
        meta = dict(launch_meta(dtype), COUNT_TILES=False)
        if _autotune and not INTERPRETED:
            plan = LaunchPlan(tuned, grid_for(batch, m, None), meta)
        else:
            config = INTERPRETER_CONFIG if INTERPRETED else tile_config_for(batch, m, dtype, sm_count(device))
            plan = LaunchPlan(kernel, grid_for(batch, m, config), {**meta, **config.meta()})
        if cached:
            _plans[key] = plan
    return plan


def launch_symmetric(kernel, tuned, x, out, batch, m, *scalars, config, tile_map) -> None:
    """Run ``kernel`` over the upper tiles of ``out`` (batch, m, m) with the arguments every
    symmetric kernel takes: (x, out, tile_map, m, *scalars, x's strides, out's strides), then the
    compile-time flags for x's dtype. Without ``config`` and ``tile_map`` the launch follows its
    cached ``launch_plan``; ``tuned`` (``autotuned(kernel)``) runs when autotuning. ``config`` and
    ``tile_map`` as for ``triton_xxt.launch_xxt``."""
    if out.numel() == 0:
        return
    if config is None and tile_map is None:
        plan = launch_plan(kernel, tuned, batch, m, x.dtype, x.device)
        wrap_triton(plan.kernel)[plan.grid](x, out, None, m, *scalars, *x.stride(), *out.stride(), **plan.meta)
        return
    config = pick_config(config, tile_map)
    meta = dict(launch_meta(x.dtype), COUNT_TILES=tile_map is not None)
    if config is not None:
        meta.update(config.meta())
    wrap_triton(kernel if config is not None else tuned)[grid_for(batch, m, config)](
        x, out, tile_map, m, *scalars, *x.stride(), *out.stride(), **meta
    )


# ---------------------------------------------------------------- device helpers


@triton.jit
def upper_tile(p):
    """Program p of a matrix -> its tile (i, j), i <= j: ``fastmuon.tiles.upper_tile`` with an
    fp32 square root. Works elementwise on blocks of p too."""
    q = p.to(tl.int64)
    j = ((tl.sqrt(8.0 * p.to(tl.float32) + 1.0) - 1.0) * 0.5).to(tl.int64)
    # the fp32 square root may be off by one either way for large p: correct in integers
    j = tl.where(j * (j + 1) // 2 > q, j - 1, j)
    j = tl.where((j + 1) * (j + 2) // 2 <= q, j + 1, j)
    return (q - j * (j + 1) // 2).to(tl.int32), j.to(tl.int32)


@triton.jit
def program_tile(M, BLOCK_M: tl.constexpr):
    """This program's matrix b of the batch and its tile (ti, tj) of that matrix's (M, M) result
    (programs are batch-major, ``grid_for``)."""
    T = tl.cdiv(M, BLOCK_M)
    per_matrix = T * (T + 1) // 2
    pid = tl.program_id(0)
    b = pid // per_matrix
    ti, tj = upper_tile(pid - b * per_matrix)
    return b, ti, tj


@triton.jit
def load_operand(ptr, mask, UPCAST: tl.constexpr):
    """One block of a dot operand, zero outside ``mask``; fp32 when UPCAST (the interpreter's
    16-bit dot, see the module docstring)."""
    x = tl.load(ptr, mask=mask, other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def rows_gram_tile(
    base, ti, tj, M, K, stride_m, stride_k,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Tile (ti, tj) of X X^T: sum over k of X[rows_i, k] X[rows_j, k], reading rows of X (a
    matrix whose k axis has stride ``stride_k``) from ``base``; fp32 accumulator."""
    rows_i = ti * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_j = tj * BLOCK_M + tl.arange(0, BLOCK_M)
    ks = tl.arange(0, BLOCK_K)
    ptr_i = base + rows_i[:, None].to(tl.int64) * stride_m + ks[None, :].to(tl.int64) * stride_k
    ptr_j = base + rows_j[:, None].to(tl.int64) * stride_m + ks[None, :].to(tl.int64) * stride_k
    in_i = rows_i[:, None] < M
    in_j = rows_j[:, None] < M
    step = BLOCK_K * tl.cast(stride_k, tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        in_k = ks[None, :] < K - k0
        a = load_operand(ptr_i, in_i & in_k, UPCAST)
        b = load_operand(ptr_j, in_j & in_k, UPCAST)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=DOT_PRECISION)
        ptr_i += step
        ptr_j += step
    return acc


@triton.jit
def cols_gram_tile(
    base, ti, tj, M, K, stride_k, stride_m,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Tile (ti, tj) of X^T X for a tall X (K, M): sum over k of X[k, cols_i] X[k, cols_j], read
    as (BLOCK_K, BLOCK_M) blocks along its rows; fp32 accumulator."""
    cols_i = ti * BLOCK_M + tl.arange(0, BLOCK_M)
    cols_j = tj * BLOCK_M + tl.arange(0, BLOCK_M)
    ks = tl.arange(0, BLOCK_K)
    ptr_i = base + ks[:, None].to(tl.int64) * stride_k + cols_i[None, :].to(tl.int64) * stride_m
    ptr_j = base + ks[:, None].to(tl.int64) * stride_k + cols_j[None, :].to(tl.int64) * stride_m
    in_i = cols_i[None, :] < M
    in_j = cols_j[None, :] < M
    step = BLOCK_K * tl.cast(stride_k, tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        in_k = ks[:, None] < K - k0
        a = load_operand(ptr_i, in_k & in_i, UPCAST)
        b = load_operand(ptr_j, in_k & in_j, UPCAST)
        acc = tl.dot(tl.trans(a), b, acc, input_precision=DOT_PRECISION)
        ptr_i += step
        ptr_j += step
    return acc


@triton.jit
def to_output(acc, dtype: tl.constexpr, SOFT_BF16: tl.constexpr):
    """Round the fp32 accumulator to the output dtype (nearest even)."""
    if SOFT_BF16:
        bits = acc.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        rounded = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        out = tl.where(acc == acc, rounded, acc.to(tl.bfloat16))  # NaN stays NaN
    else:
        out = acc.to(dtype)
    return out


@triton.jit
def store_mirrored(
    out, value, ti, tj, M, stride_m, stride_n, BLOCK_M: tl.constexpr,
):
    """Store tile (ti, tj), ti <= tj, of a symmetric (M, M) result and its transpose at (tj, ti).
    On the diagonal tile the upper part comes from ``value`` and the lower from its transpose."""
    rows = ti * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tj * BLOCK_M + tl.arange(0, BLOCK_M)
    upper = (rows[:, None] <= cols[None, :]) & (cols[None, :] < M)
    tl.store(out + rows[:, None].to(tl.int64) * stride_m + cols[None, :].to(tl.int64) * stride_n, value, mask=upper)
    lower = (cols[:, None] > rows[None, :]) & (cols[:, None] < M)
    tl.store(
        out + cols[:, None].to(tl.int64) * stride_m + rows[None, :].to(tl.int64) * stride_n,
        tl.trans(value),
        mask=lower,
    )


@triton.jit
def count_tile(tile_map, b, ti, tj, T):
    """Debug: add one at tile_map[b, ti, tj] (int32, (batch, T, T))."""
    tl.atomic_add(tile_map + (b.to(tl.int64) * T + ti) * T + tj, 1)


@triton.jit
def finish_tile(
    C, acc, b, ti, tj, M, stride_cb, stride_cm, stride_cn, TILE_MAP,
    BLOCK_M: tl.constexpr, SOFT_BF16: tl.constexpr, COUNT_TILES: tl.constexpr,
):
    """Every kernel's epilogue: round the fp32 tile (ti, tj) of matrix b to C's dtype, store it and
    its mirror in C (batch, M, M), and count it in TILE_MAP when COUNT_TILES."""
    value = to_output(acc, C.dtype.element_ty, SOFT_BF16)
    store_mirrored(C + b.to(tl.int64) * stride_cb, value, ti, tj, M, stride_cm, stride_cn, BLOCK_M)
    if COUNT_TILES:
        count_tile(TILE_MAP, b, ti, tj, tl.cdiv(M, BLOCK_M))
