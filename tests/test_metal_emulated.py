"""The Metal kernels *run* on the CPU, through the stub's run mode (tests/metal_stub).

Every threadgroup runs its threads as std::threads with real barriers; simdgroup matrices and
reductions are computed by every lane on the whole value (``metal_tools.KernelProgram``). That
executes the kernels' own index math, bounds handling, tile schedule, mirroring and epilogues,
so the tests below check results, not just syntax:

* the metallib kernels (metal/*.metal) against float64 numpy, within the dot-product rounding
  bound of ``native_helpers`` (k terms), with poisoned (NaN) outputs, odd shapes and batches;
* the ``mx.fast.metal_kernel`` sources exactly as MLX generates them, driven through
  ``fastmuon.mlx`` (``xxt``/``ba_plus_caa``/``orthogonalize`` with ``backend="metal"``): the
  Python side's grids, argument order, batching and dtype handling, with MLX's kernel call
  replaced by the CPU run.

What this cannot show: Metal's own compiler and memory model (the emulation is more forgiving:
e.g. a missing simdgroup barrier would go unnoticed), speed, or real fp16/bf16 hardware rounding
inside simdgroup products (here accumulation is exact float32 FMA). test_metal_gpu.py runs on
Apple silicon.
"""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest

from support import metal_tools as mt
from support.native_helpers import assert_exactly_symmetric, assert_within_dot_bound
from fastmuon import tiles

mx = pytest.importorskip("mlx.core")

# dtype name -> (stub element type, generated-source template type, output unit roundoff,
# half the smallest subnormal spacing)
DTYPES = {
    "float32": ("float", "float", 0.0, 0.0),
    "float16": ("half", "half", 2.0**-11, 2.0**-25),
    "bfloat16": ("bfloat", "bfloat16_t", 2.0**-8, 2.0**-134),
}


def rounded(x: np.ndarray, dtype: str) -> np.ndarray:
    """x rounded to dtype, as float64 (exactly representable inputs)."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == "float16":
        x = x.astype(np.float16).astype(np.float32)
    elif dtype == "bfloat16":
        x = mt.from_bfloat_bits(mt.to_bfloat_bits(x))
    return x.astype(np.float64)


def symmetric(rng, shape, dtype) -> np.ndarray:
    x = rng.standard_normal(shape)
    return rounded((x + np.swapaxes(x, -1, -2)) / 2, dtype)


# ------------------------------------------------------------------- programs --


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """The kernels built for the CPU: metal/*.metal and the generated metal_kernel sources."""
    if mt.cxx() is None:
        pytest.skip("no C++ compiler (g++) found to build the CPU emulation with")
    root = tmp_path_factory.mktemp("metal_emulated")
    elems = {dt: v[0] for dt, v in DTYPES.items()}
    sym = [mt.Entry("fastmuon_symmetric", f"{elems[dt]}, {axpby}") for dt in DTYPES
           for axpby in ("false", "true")]
    gemm = [mt.Entry("fastmuon_gemm", elems[dt]) for dt in DTYPES]
    ortho = [mt.Entry(f"fastmuon_{k}", elems[dt]) for k in
             ("gather", "sumsq", "load_wide", "store_wide", "add_identity") for dt in DTYPES]
    # the metal_kernel path: each generated source in a namespace of its own
    requests = [(name, dt, 40, 40) for name in ("fastmuon_xxt", "fastmuon_ba_plus_caa") for dt in DTYPES]
    sources = mt.generated_sources(requests)
    generated, gen_entries = [mt.MLX_UTILS_PREFIX], {}
    for (name, dt, _, _), src in zip(requests, sources):
        scope = f"{name}_{dt}"
        generated.append(f"namespace {scope} {{\n{src}\n}}\n")
        gen_entries[(name, dt)] = mt.Entry(mt.kernel_name(src), DTYPES[dt][1], scope)
    # one executable for all of metal/*.metal (as the metallib holds them all), one for the
    # generated sources
    metallib = "".join((mt.METAL_DIR / f).read_text() for f in
                       ("symmetric.metal", "gemm.metal", "orthogonalize.metal"))
    jobs = {
        "metallib": (metallib, sym + gemm + ortho),
        "metal_kernel": ("".join(generated), list(gen_entries.values())),
    }
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {k: pool.submit(mt.KernelProgram, src, entries, root / k) for k, (src, entries) in jobs.items()}
        built = {k: f.result() for k, f in futures.items()}
    built["symmetric"] = built["gemm"] = built["orthogonalize"] = built["metallib"]
    built["metal_kernel_entries"] = gen_entries
    return built


def run_symmetric(program, entry, x, alpha=1.0, beta=0.0):
    batch, m, k = x.shape
    groups, group = tiles.symmetric_grid(m, batch)
    out = program.run(
        entry,
        {"x": x, "out": np.full((batch, m, m), np.nan), "rows": [m], "cols": [k],
         "alpha": [alpha], "beta": [beta]},
        groups, group,
    )["out"]
    return out.reshape(batch, m, m).astype(np.float64)


def check_xxt(out, x, dtype):
    _, _, u_out, eta = DTYPES[dtype]
    assert not np.isnan(out).any(), "output not fully written"
    assert_exactly_symmetric(out)
    ref = x @ np.swapaxes(x, -1, -2)
    scale = np.abs(x) @ np.abs(np.swapaxes(x, -1, -2))
    assert_within_dot_bound(out, ref, scale, max(x.shape[-1], 1), u_out=u_out, eta_out=eta)


def check_ba_plus_caa(out, a, alpha, beta, dtype):
    _, _, u_out, eta = DTYPES[dtype]
    assert not np.isnan(out).any(), "output not fully written"
    assert_exactly_symmetric(out)
    al, be = float(np.float32(alpha)), float(np.float32(beta))
    ref = al * (a @ a) + be * a
    scale = abs(al) * (np.abs(a) @ np.abs(a)) + abs(be) * np.abs(a)
    assert_within_dot_bound(out, ref, scale, a.shape[-1] + 2, u_out=u_out, eta_out=eta)


XXT_SHAPES = [(1, 1, 1), (1, 5, 3), (2, 33, 100), (1, 70, 45), (3, 64, 64), (1, 32, 0)]
SQUARE_SHAPES = [(1, 1, 1), (1, 5, 5), (2, 33, 33), (1, 70, 70), (3, 64, 64)]
ALPHA_BETA = (15.878769915207462, -22.48329292557795)  # Polar Express step 1 (c, b)


def _cases(shapes):
    return [(s, "float32") for s in shapes] + [(shapes[3], "float16"), (shapes[2], "bfloat16")]


# ------------------------------------------------------------- metal/*.metal --


@pytest.mark.parametrize("shape,dtype", _cases(XXT_SHAPES), ids=str)
def test_metallib_xxt(programs, rng, shape, dtype):
    x = rounded(rng.standard_normal(shape), dtype)
    prog = programs["symmetric"]
    out = run_symmetric(prog, prog.index("fastmuon_symmetric", f"{DTYPES[dtype][0]}, false"), x)
    check_xxt(out, x, dtype)


@pytest.mark.parametrize("shape,dtype", _cases(SQUARE_SHAPES), ids=str)
def test_metallib_ba_plus_caa(programs, rng, shape, dtype):
    a = symmetric(rng, shape, dtype)
    alpha, beta = ALPHA_BETA
    prog = programs["symmetric"]
    out = run_symmetric(prog, prog.index("fastmuon_symmetric", f"{DTYPES[dtype][0]}, true"), a, alpha, beta)
    check_ba_plus_caa(out, a, alpha, beta, dtype)


def test_metallib_ba_plus_caa_reads_only_the_upper_triangle(programs, rng):
    a = symmetric(rng, (1, 40, 40), "float32")
    poisoned = a.copy()
    poisoned[0][np.tril_indices(40, -1)] = np.nan
    prog = programs["symmetric"]
    entry = prog.index("fastmuon_symmetric", "float, true")
    np.testing.assert_array_equal(run_symmetric(prog, entry, poisoned, 2.0, -1.0),
                                  run_symmetric(prog, entry, a, 2.0, -1.0))


@pytest.mark.parametrize(
    "batch,M,N,K,has_c,dtype",
    [(1, 1, 1, 1, True, "float32"), (1, 33, 70, 45, True, "float32"), (2, 16, 40, 20, False, "float32"),
     (1, 64, 64, 64, True, "float32"), (1, 33, 70, 45, True, "bfloat16")],
    ids=str,
)
def test_metallib_gemm(programs, rng, batch, M, N, K, has_c, dtype):
    a = rounded(rng.standard_normal((batch, M, K)), dtype)
    b = rounded(rng.standard_normal((batch, K, N)), dtype)
    c = rounded(rng.standard_normal((batch, M, N)), dtype)
    alpha, beta = 1.0, 3.4445
    prog = programs["gemm"]
    out = prog.run(
        prog.index("fastmuon_gemm", DTYPES[dtype][0]),
        {"a": a, "b": b, "c": c, "out": np.full((batch, M, N), np.nan), "M": [M], "N": [N], "K": [K],
         "alpha": [alpha], "beta": [beta], "has_c": [int(has_c)]},
        (-(-N // 32), -(-M // 32), batch), (128, 1, 1),
    )["out"].reshape(batch, M, N).astype(np.float64)
    be = float(np.float32(beta)) if has_c else 0.0
    ref = alpha * (a @ b) + be * c
    scale = abs(alpha) * (np.abs(a) @ np.abs(b)) + abs(be) * np.abs(c)
    _, _, u_out, eta = DTYPES[dtype]
    assert not np.isnan(out).any()
    assert_within_dot_bound(out, ref, scale, K + 2, u_out=u_out, eta_out=eta)


def test_metallib_kernels_compose_one_polynomial_step(programs, rng):
    """A = X X^T, B = b A + c A A, X <- a X + B X with the three kernels, as eval_gpu chains
    them, equals the step in float64 (to fp32 rounding of the three products)."""
    X = rng.standard_normal((2, 24, 40)) / 25.0
    a, b, c = 3.4445, -4.7750, 2.0315
    sym, gemm = programs["symmetric"], programs["gemm"]
    A = run_symmetric(sym, sym.index("fastmuon_symmetric", "float, false"), X)
    B = run_symmetric(sym, sym.index("fastmuon_symmetric", "float, true"), A, c, b)
    X1 = gemm.run(
        gemm.index("fastmuon_gemm", "float"),
        {"a": B, "b": X, "c": X, "out": np.zeros_like(X), "M": [24], "N": [40], "K": [24],
         "alpha": [1.0], "beta": [a], "has_c": [1]},
        (2, 1, 2), (128, 1, 1),
    )["out"].reshape(X.shape)
    A64 = X @ np.swapaxes(X, -1, -2)
    ref = a * X + (b * A64 + c * A64 @ A64) @ X
    np.testing.assert_allclose(X1, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def _dispatch_threads(prog, name, dtype, arrays, grid, group):
    groups = tuple(-(-g // t) for g, t in zip(grid, group))
    return prog.run(prog.index(name, DTYPES[dtype][0]), arrays, groups, group, grid)


def _strided_view(rng, dtype):
    """A (2, 5, 7) view with offset 1 and strides (70, 1, 10) into a (2, 7, 10) buffer."""
    base = rounded(rng.standard_normal((2, 7, 10)), dtype)
    view = np.swapaxes(base, 1, 2)[:, 1:6, :]
    return base.ravel()[1:], view, [70, 1, 10]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_metallib_gather(programs, rng, dtype):
    flat, view, strides = _strided_view(rng, dtype)
    out = _dispatch_threads(
        programs["orthogonalize"], "fastmuon_gather", dtype,
        {"x": flat, "out": np.full(view.size, np.nan), "shape": list(view.shape), "strides": strides,
         "ndim": [3], "size": [view.size]},
        (view.size, 1, 1), (32, 1, 1),
    )["out"]
    np.testing.assert_array_equal(out, view.ravel())


@pytest.mark.parametrize("tall", [False, True])
def test_metallib_sumsq_load_and_store_wide(programs, rng, tall):
    flat, view, strides = _strided_view(rng, "float32")
    shape = list(view.shape)
    if tall:  # the same buffer seen as (2, 7, 5)
        view, shape, strides = np.swapaxes(view, 1, 2), [2, 7, 5], [70, 10, 1]
    prog = programs["orthogonalize"]
    geometry = {"x": flat, "shape": shape, "strides": strides, "ndim": [3]}
    ss = prog.run(prog.index("fastmuon_sumsq", "float"), {**geometry, "sumsq": np.zeros(2)},
                  (2, 1, 1), (256, 1, 1))["sumsq"]
    np.testing.assert_allclose(ss, np.sum(view**2, axis=(1, 2)), rtol=1e-6)

    scale, eps = 1.02, 1e-6
    wide = np.swapaxes(view, 1, 2) if tall else view
    b, m, n = wide.shape
    w = _dispatch_threads(prog, "fastmuon_load_wide", "float32",
                          {**geometry, "sumsq": ss, "w": np.full((b, m, n), np.nan),
                           "norm_scale": [scale], "eps": [eps]},
                          (n, m, b), (32, 8, 1))["w"].reshape(b, m, n)
    denom = np.sqrt(ss.astype(np.float64)) * scale + eps
    np.testing.assert_allclose(w, wide / denom[:, None, None], rtol=1e-6)

    rows, cols = view.shape[1:]
    out = _dispatch_threads(prog, "fastmuon_store_wide", "bfloat16",
                            {"w": w, "out": np.full(view.shape, np.nan), "rows": [rows], "cols": [cols]},
                            (cols, rows, b), (32, 8, 1))["out"].reshape(view.shape)
    back = np.swapaxes(w, 1, 2) if tall else w
    np.testing.assert_array_equal(out, rounded(back, "bfloat16"))


def test_metallib_add_identity(programs, rng):
    z = rng.standard_normal((2, 9, 9)).astype(np.float32)
    out = _dispatch_threads(programs["orthogonalize"], "fastmuon_add_identity", "float32",
                            {"z": z, "out": np.full(z.shape, np.nan), "m": [9], "a": [3.5]},
                            (9, 9, 2), (32, 8, 1))["out"].reshape(z.shape)
    np.testing.assert_array_equal(out, z + np.float32(3.5) * np.eye(9, dtype=np.float32))


# ---------------------------------------------- the metal_kernel path, end to end --


class EmulatedKernel:
    """Stands in for the object mx.fast.metal_kernel returns: runs the generated source on the
    CPU with the call's own grid, threadgroup, template and inputs."""

    def __init__(self, name, programs, calls):
        self.name, self.programs, self.calls = name, programs, calls

    def __call__(self, *, inputs, template, grid, threadgroup, output_shapes, output_dtypes,
                 init_value=None, stream=None, verbose=False):
        from fastmuon.mlx import metal_kernels

        (tname, dtype), = template
        assert tname == "T"
        dt = str(dtype).removeprefix("mlx.core.")
        names, _ = metal_kernels.KERNELS[self.name]
        arrays = {n: np.array(a.astype(mx.float32) if a.dtype in (mx.bfloat16, mx.float16) else a)
                  for n, a in zip(names, inputs)}
        fill = np.nan if init_value is None else init_value  # unwritten memory shows as NaN
        arrays["out"] = np.full(output_shapes[0], fill)
        prog = self.programs["metal_kernel"]
        entry = prog.entries.index(self.programs["metal_kernel_entries"][(self.name, dt)])
        groups = tuple(-(-g // t) for g, t in zip(grid, threadgroup))
        out = prog.run(entry, arrays, groups, tuple(threadgroup), tuple(grid))["out"]
        self.calls.append((self.name, dt, tuple(grid), tuple(threadgroup)))
        return [mx.array(out.reshape(output_shapes[0])).astype(output_dtypes[0])]


@pytest.fixture
def emulated_metal(programs, monkeypatch):
    """fastmuon.mlx's Metal backend, with its kernels run on the CPU; returns the call log."""
    from fastmuon.mlx import metal_kernels

    calls = []
    monkeypatch.setattr(metal_kernels, "metal_unavailable_reason", lambda: None)
    monkeypatch.setattr(metal_kernels, "device", lambda: mx.cpu)
    monkeypatch.setattr(metal_kernels, "kernel", lambda name: EmulatedKernel(name, programs, calls))
    return calls


def _mx(values, dtype):
    return mx.array(np.asarray(values, dtype=np.float32)).astype(getattr(mx, dtype))


@pytest.mark.parametrize("shape,dtype", [((70, 45), "float32"), ((2, 3, 33, 20), "bfloat16"),
                                         ((5, 1), "float16"), ((4, 0), "float32")], ids=str)
def test_metal_kernel_xxt_through_the_public_op(emulated_metal, rng, shape, dtype):
    from fastmuon.mlx import xxt

    x = rounded(rng.standard_normal(shape), dtype)
    out = xxt(_mx(x, dtype), backend="metal")
    assert out.dtype == getattr(mx, dtype) and out.shape == (*shape[:-1], shape[-2])
    m, k = shape[-2:]
    batch = int(np.prod(shape[:-2], dtype=int))
    got = np.array(out.astype(mx.float32)).astype(np.float64).reshape(batch, m, m)
    check_xxt(got, x.reshape(batch, m, k), dtype)
    if x.size:
        assert emulated_metal == [("fastmuon_xxt", dtype, (tiles.upper_tile_count(m) * 128, batch, 1),
                                   (128, 1, 1))]


@pytest.mark.parametrize("shape,dtype", [((70, 70), "float32"), ((3, 33, 33), "float16")], ids=str)
def test_metal_kernel_ba_plus_caa_through_the_public_op(emulated_metal, rng, shape, dtype):
    from fastmuon.mlx import ba_plus_caa

    a = symmetric(rng, shape, dtype)
    alpha, beta = ALPHA_BETA
    out = ba_plus_caa(_mx(a, dtype), alpha=alpha, beta=beta, backend="metal")
    assert out.dtype == getattr(mx, dtype) and out.shape == shape
    m = shape[-1]
    got = np.array(out.astype(mx.float32)).astype(np.float64).reshape(-1, m, m)
    check_ba_plus_caa(got, a.reshape(-1, m, m), alpha, beta, dtype)


def test_metal_kernel_transposed_input(emulated_metal, rng):
    """A non-contiguous view goes through (MLX makes it row-contiguous first)."""
    from fastmuon.mlx import metal_kernels

    x = rounded(rng.standard_normal((40, 70)), "float32")
    view = _mx(x, "float32").T
    got = np.array(metal_kernels.xxt(view)).astype(np.float64)
    check_xxt(got[None], x.T[None], "float32")


@pytest.mark.parametrize(
    "method,shape,compute",
    [("polar_express", (2, 40, 24), "float32"), ("gram", (24, 40), "float32"),
     ("newton_schulz", (24, 40), "bfloat16")],
    ids=str,
)
def test_orthogonalize_backend_metal(emulated_metal, rng, method, shape, compute):
    """The whole iteration on the metal backend meets the same bound as every other backend
    computing in that dtype (test_orthogonalize.check_against_exact)."""
    from support.frameworks import MlxFramework
    from support.spectral import matrix_with_spectrum
    from test_orthogonalize import check_against_exact

    from fastmuon.plan import make_plan
    from fastmuon.mlx import orthogonalize

    fw = MlxFramework()
    G = fw.array(matrix_with_spectrum(rng, shape, "sigma_min_1e-3"), "float32")
    O = orthogonalize(G, method=method, backend="metal", dtype=getattr(mx, compute))
    assert O.shape == G.shape and O.dtype == mx.float32
    check_against_exact(fw, fw.to_numpy(G), fw.to_numpy(O), make_plan(method, 5, None), compute, "float32")
    kinds = {c[0] for c in emulated_metal}
    assert kinds == {"fastmuon_xxt", "fastmuon_ba_plus_caa"}


# ----------------------------------------------------------- the checks can fail --

MUTANTS = {
    # the last, partial panel of the reduction is skipped: wrong values when k % 32 != 0
    "short reduction": ("for (uint k0 = 0; k0 < cols; k0 += FASTMUON_BK)",
                        "for (uint k0 = 0; k0 + FASTMUON_BK <= cols; k0 += FASTMUON_BK)"),
    # diagonal tiles do not write their lower half: caught by the NaN poison
    "no diagonal mirror": ("!(diag && r >= c)", "!diag"),
}


def test_the_emulation_catches_broken_kernels(tmp_path, rng):
    """Two one-line bugs in the tile routine, each built and run like the real kernel: the
    checks above reject both."""
    if mt.cxx() is None:
        pytest.skip("no C++ compiler (g++) found to build the CPU emulation with")
    header = (mt.METAL_DIR / "fastmuon_tiles.h").read_text()
    kernel = (mt.METAL_DIR / "symmetric.metal").read_text()
    entry = mt.Entry("fastmuon_symmetric", "float, false")

    body = kernel.replace("#include <metal_stdlib>", "")
    source, entries = "", []
    for index, (old, new) in enumerate(MUTANTS.values()):
        assert old in header
        mutated = header.replace(old, new).replace("#pragma once", "").replace("#include <metal_stdlib>", "")
        source += f"namespace mutant{index} {{\n" + body.replace('#include "fastmuon_tiles.h"', mutated) + "}\n"
        entries.append(mt.Entry("fastmuon_symmetric", "float, false", f"mutant{index}"))
    prog = mt.KernelProgram(source, entries, tmp_path / "mutants")
    x = rng.standard_normal((1, 40, 45))
    for index, name in enumerate(MUTANTS):
        with pytest.raises(AssertionError):
            check_xxt(run_symmetric(prog, index, x), x, "float32")
