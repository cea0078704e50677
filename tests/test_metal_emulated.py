"""The Metal kernels *run* on the CPU, through the stub's run mode (tests/support/metal_stub).

Every threadgroup runs its threads as std::threads with real barriers; simdgroup matrices are
computed by every lane on the whole value (``metal_tools.KernelProgram``). That executes the
kernels' own index math, bounds handling, tile schedule and mirroring, so the tests below check
results, not just syntax: the ``mx.fast.metal_kernel`` sources exactly as MLX generates them,
driven through ``fastmuon.mlx`` (``xxt``/``ba_plus_caa``/``orthogonalize`` with
``backend="metal"``, and ``metal_kernels`` directly), with MLX's kernel call replaced by the CPU
run: the Python side's grids, argument order, batching and dtype handling, against float64 numpy
within the dot-product rounding bound of ``native_helpers`` (k terms), with poisoned (NaN)
outputs, odd shapes and batches.

What this cannot show: Metal's own compiler and memory model (the emulation is more forgiving:
e.g. a missing simdgroup barrier would go unnoticed), speed, or real fp16/bf16 hardware rounding
inside simdgroup products (here accumulation is exact float32 FMA). test_metal_gpu.py runs on
Apple silicon.
"""

from __future__ import annotations

import numpy as np
import pytest

from support import metal_tools as mt
from support.native_helpers import assert_exactly_symmetric, assert_within_dot_bound
from fastmuon import tiles

mx = pytest.importorskip("mlx.core")

# dtype name -> (generated-source template type, output unit roundoff, half the smallest
# subnormal spacing)
DTYPES = {
    "float32": ("float", 0.0, 0.0),
    "float16": ("half", 2.0**-11, 2.0**-25),
    "bfloat16": ("bfloat16_t", 2.0**-8, 2.0**-134),
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
    """The generated metal_kernel sources, built for the CPU into one executable, each in a
    namespace of its own."""
    if mt.cxx() is None:
        pytest.skip("no C++ compiler (g++) found to build the CPU emulation with")
    requests = [(name, dt, 40, 40) for name in ("fastmuon_xxt", "fastmuon_ba_plus_caa") for dt in DTYPES]
    sources = mt.generated_sources(requests)
    generated, entries = [mt.MLX_UTILS_PREFIX], {}
    for (name, dt, _, _), src in zip(requests, sources):
        scope = f"{name}_{dt}"
        generated.append(f"namespace {scope} {{\n{src}\n}}\n")
        entries[(name, dt)] = mt.Entry(mt.kernel_name(src), DTYPES[dt][0], scope)
    root = tmp_path_factory.mktemp("metal_emulated")
    return {
        "program": mt.KernelProgram("".join(generated), list(entries.values()), root / "metal_kernel"),
        "entries": entries,
        "sources": {(name, dt): src for (name, dt, _, _), src in zip(requests, sources)},
    }


def check_xxt(out, x, dtype):
    _, u_out, eta = DTYPES[dtype]
    assert not np.isnan(out).any(), "output not fully written"
    assert_exactly_symmetric(out)
    ref = x @ np.swapaxes(x, -1, -2)
    scale = np.abs(x) @ np.abs(np.swapaxes(x, -1, -2))
    assert_within_dot_bound(out, ref, scale, max(x.shape[-1], 1), u_out=u_out, eta_out=eta)


def check_ba_plus_caa(out, a, alpha, beta, dtype):
    _, u_out, eta = DTYPES[dtype]
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


# ---------------------------------------------- the metal_kernel path, end to end --


class EmulatedKernel:
    """Stands in for the object mx.fast.metal_kernel returns: runs the generated source on the
    CPU with the call's own grid, threadgroup, template and inputs."""

    def __init__(self, name, programs, calls):
        self.name, self.programs, self.calls = name, programs, calls

    def __call__(self, *, inputs, template, grid, threadgroup, output_shapes, output_dtypes,
                 init_value=None, stream=None, verbose=False):
        from fastmuon.mlx.backends import metal_kernels

        (tname, dtype), = template
        assert tname == "T"
        dt = str(dtype).removeprefix("mlx.core.")
        names, _ = metal_kernels.KERNELS[self.name]
        arrays = {n: np.array(a.astype(mx.float32) if a.dtype in (mx.bfloat16, mx.float16) else a)
                  for n, a in zip(names, inputs)}
        fill = np.nan if init_value is None else init_value  # unwritten memory shows as NaN
        arrays["out"] = np.full(output_shapes[0], fill)
        prog = self.programs["program"]
        entry = prog.entries.index(self.programs["entries"][(self.name, dt)])
        groups = tuple(-(-g // t) for g, t in zip(grid, threadgroup))
        out = prog.run(entry, arrays, groups, tuple(threadgroup), tuple(grid))["out"]
        self.calls.append((self.name, dt, tuple(grid), tuple(threadgroup)))
        return [mx.array(out.reshape(output_shapes[0])).astype(output_dtypes[0])]


def emulate(monkeypatch, programs):
    """Make fastmuon.mlx's Metal backend run ``programs`` on the CPU; returns the call log."""
    from fastmuon.mlx.backends import metal_kernels

    calls = []
    monkeypatch.setattr(metal_kernels, "metal_unavailable_reason", lambda: None)
    monkeypatch.setattr(metal_kernels, "device", lambda: mx.cpu)
    monkeypatch.setattr(metal_kernels, "kernel", lambda name: EmulatedKernel(name, programs, calls))
    return calls


@pytest.fixture
def emulated_metal(programs, monkeypatch):
    """fastmuon.mlx's Metal backend, with its kernels run on the CPU; returns the call log."""
    return emulate(monkeypatch, programs)


def _mx(values, dtype):
    return mx.array(np.asarray(values, dtype=np.float32)).astype(getattr(mx, dtype))


@pytest.mark.parametrize("shape,dtype", _cases(XXT_SHAPES) + [((70, 45), "float32"), ((2, 3, 33, 20), "bfloat16"),
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


@pytest.mark.parametrize("shape,dtype", _cases(SQUARE_SHAPES) + [((70, 70), "float32"), ((3, 33, 33), "float16")],
                         ids=str)
def test_metal_kernel_ba_plus_caa_through_the_public_op(emulated_metal, rng, shape, dtype):
    from fastmuon.mlx import ba_plus_caa

    a = symmetric(rng, shape, dtype)
    alpha, beta = ALPHA_BETA
    out = ba_plus_caa(_mx(a, dtype), alpha=alpha, beta=beta, backend="metal")
    assert out.dtype == getattr(mx, dtype) and out.shape == shape
    m = shape[-1]
    got = np.array(out.astype(mx.float32)).astype(np.float64).reshape(-1, m, m)
    check_ba_plus_caa(got, a.reshape(-1, m, m), alpha, beta, dtype)


def test_metal_kernel_ba_plus_caa_reads_only_the_upper_triangle(emulated_metal, rng):
    from fastmuon.mlx.backends import metal_kernels

    a = symmetric(rng, (40, 40), "float32")
    poisoned = a.copy()
    poisoned[np.tril_indices(40, -1)] = np.nan
    np.testing.assert_array_equal(np.array(metal_kernels.ba_plus_caa(_mx(poisoned, "float32"), 2.0, -1.0)),
                                  np.array(metal_kernels.ba_plus_caa(_mx(a, "float32"), 2.0, -1.0)))


def test_metal_kernel_transposed_input(emulated_metal, rng):
    """A non-contiguous view goes through (MLX makes it row-contiguous first)."""
    from fastmuon.mlx.backends import metal_kernels

    x = rounded(rng.standard_normal((40, 70)), "float32")
    view = _mx(x, "float32").T
    got = np.array(metal_kernels.xxt(view)).astype(np.float64)
    check_xxt(got[None], x.T[None], "float32")


@pytest.mark.parametrize(
    "method,shape,compute",
    [("polar_express", (2, 40, 24), "float32"), ("gram", (24, 40), "float32"),
     ("newton_schulz", (24, 40), "bfloat16"), ("aol", (40, 24), "float32"), ("aol", (24, 40), "bfloat16"),
     ("auto", (256, 512), "float32")],  # AOL in its Gram form
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
    check_against_exact(fw, fw.to_numpy(G), fw.to_numpy(O), make_plan(method, 5, None).for_shape(*shape[-2:]), compute,
                        "float32")
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


def test_the_emulation_catches_broken_kernels(programs, monkeypatch, tmp_path, rng):
    """Two one-line bugs in the tile routine, each built into the generated xxt source and run
    through metal_kernels.xxt like the real kernel: the checks above reject both."""
    from fastmuon.mlx.backends import metal_kernels

    key = ("fastmuon_xxt", "float32")
    source, real = programs["sources"][key], programs["entries"][key]
    text, entries = mt.MLX_UTILS_PREFIX, []
    for index, (old, new) in enumerate(MUTANTS.values()):
        assert old in source
        text += f"namespace mutant{index} {{\n{source.replace(old, new)}\n}}\n"
        entries.append(mt.Entry(real.function, real.template, f"mutant{index}"))
    prog = mt.KernelProgram(text, entries, tmp_path / "mutants")
    x = rounded(rng.standard_normal((40, 45)), "float32")
    for entry in entries:
        emulate(monkeypatch, {"program": prog, "entries": {key: entry}})
        got = np.array(metal_kernels.xxt(_mx(x, "float32"))).astype(np.float64)
        with pytest.raises(AssertionError):
            check_xxt(got[None], x[None], "float32")
