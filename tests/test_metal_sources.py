"""Every Metal source compiles, checked on machines without Metal.

No Mac is available to this project, so these tests prove what a C++ compiler can:

* each ``mx.fast.metal_kernel`` source exactly as MLX generates it (header + signature + body +
  instantiation, captured from MLX itself), the only Metal code fastmuon has, compiles with g++
  against ``tests/support/metal_stub/metal_stdlib``, a small C++ stand-in for the Metal language
  (address spaces, vector, half/bfloat and simdgroup-matrix types, barriers, attributes), on its
  own: the tile routine travels in the source, no include path is needed;
* the tile routine the kernels carry is the marked block of the installed
  ``metal/fastmuon_tiles.h``;
* the checks can fail: broken snippets and a broken generated source are rejected.

What they cannot prove: that Apple's Metal compiler accepts the sources (the stub does not check
address spaces, and Metal has rules of its own), or anything about speed. ``test_metal_gpu.py``
covers that on Apple silicon. ``test_metal_emulated.py`` runs the kernels on the CPU.
"""

from __future__ import annotations

import concurrent.futures
import os

import pytest

from support import metal_tools as mt

DTYPES = ("float32", "float16", "bfloat16")


@pytest.fixture(scope="module")
def compiler() -> str:
    path = mt.cxx()
    if path is None:
        if os.environ.get("FASTMUON_REQUIRE_NATIVE") == "1":
            pytest.fail("FASTMUON_REQUIRE_NATIVE=1 but no C++ compiler (g++) was found")
        pytest.skip("no C++ compiler (g++) found to check the Metal sources with")
    return path


def _assert_compiled(proc, what: str) -> None:
    assert proc.returncode == 0, f"{what} does not compile against the Metal stub:\n{proc.stderr[-6000:]}"


# ------------------------------------------------------ mx.fast.metal_kernel sources --

# (kernel, dtype, m, k): every kernel in every dtype with a `device` input, and with a small
# input (m k < 8), which MLX passes in the `constant` address space.
GENERATED = [(name, dt, 40, 40) for name in ("fastmuon_xxt", "fastmuon_ba_plus_caa") for dt in DTYPES]
GENERATED += [("fastmuon_xxt", "float32", 2, 3), ("fastmuon_ba_plus_caa", "float16", 2, 2)]


@pytest.fixture(scope="module")
def generated(compiler):
    """The generated sources and their compile results, compiled concurrently."""
    pytest.importorskip("mlx.core")
    sources = mt.generated_sources(GENERATED)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        procs = list(pool.map(lambda s: mt.compile_check(mt.MLX_UTILS_PREFIX + s), sources))
    return dict(zip(GENERATED, zip(sources, procs)))


@pytest.mark.parametrize("case", GENERATED, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}x{c[3]}")
def test_metal_kernel_source_compiles(generated, case):
    source, proc = generated[case]
    name, dtype, m, k = case
    # the signature MLX wrote: inputs, the output and the attributes the body names
    params = {p.name: p for p in mt.kernel_params(source, mt.kernel_name(source))}
    space = "constant" if m * k < 8 else "device"
    assert params["x"].type.split()[:2] == ["const", space]
    assert params["out"].writable
    assert {"threadgroup_position_in_grid", "thread_index_in_threadgroup",
            "simdgroup_index_in_threadgroup"} <= {p.attribute for p in params.values()}
    _assert_compiled(proc, f"the metal_kernel source of {name} ({dtype})")


def test_metal_kernel_reads_the_installed_tile_header():
    """The metal_kernel path takes its header from the installed copy of
    metal/fastmuon_tiles.h, which equals the source: the tile schedule and index math exist
    once."""
    mk = pytest.importorskip("fastmuon.mlx.backends.metal_kernels")
    text = (mt.METAL_DIR / "fastmuon_tiles.h").read_text()
    assert mk.tiles_header_path().read_text() == text
    core = mk.shared_core()
    assert core.startswith("// BEGIN fastmuon shared core") and core.endswith("// END fastmuon shared core\n")
    assert core in text and "fastmuon_upper_tile" in core and "fastmuon_symmetric_tile" in core


# ------------------------------------------------------------ the checks can fail --

BROKEN = {
    "missing semicolon": "  uint i = thread_position_in_grid.x\n  out[i] = x[i];",
    "undeclared name": "  out[thread_position_in_grid.x] = y[0];",
    "unknown Metal function": "  metal::simdgroup_loadd(thread_position_in_grid.x);",
    "double arithmetic": "  out[thread_position_in_grid.x] = x[0] * 0.5;",
    "mixed simdgroup matrix types": (
        "  metal::simdgroup_matrix<float, 8, 8> a;\n"
        "  metal::simdgroup_load(a, (const device half*)x, 8);\n  out[0] = x[0];"
    ),
    "wrong tile routine arguments": (
        "  threadgroup float As[FASTMUON_TILE * FASTMUON_LDS];\n"
        "  fastmuon_symmetric_tile<float, false>(x, out, 1u, 1u, 1.0f, 0.0f, 0u, As, 0u, 0u);"
    ),
}


def _wrapped(body: str) -> str:
    """A kernel shaped like MLX's generated ones, with the shared core as its header."""
    from fastmuon.mlx.backends.metal_kernels import shared_core

    return (
        mt.MLX_UTILS_PREFIX + shared_core() + "[[kernel]] void k(\n"
        "  const device float* x [[buffer(0)]],\n  device float* out [[buffer(1)]],\n"
        "  uint3 thread_position_in_grid [[thread_position_in_grid]]) {\n" + body + "\n}\n"
    )


def test_a_correct_snippet_compiles(compiler):
    pytest.importorskip("mlx.core")
    _assert_compiled(mt.compile_check(_wrapped("  out[thread_position_in_grid.x] = x[0] * 0.5f;")),
                     "the control snippet")


@pytest.mark.parametrize("what", sorted(BROKEN))
def test_a_broken_snippet_is_rejected(compiler, what):
    pytest.importorskip("mlx.core")
    proc = mt.compile_check(_wrapped(BROKEN[what]))
    assert proc.returncode != 0, f"the stub accepted a kernel with a {what}"


def test_a_broken_generated_source_is_rejected(generated):
    """A real generated kernel source with one character removed from its tile routine fails."""
    source, _ = generated[GENERATED[0]]
    broken = source.replace("const bool diag = ij.x == ij.y;", "const bool diag = ij.x == ij.y", 1)
    assert broken != source
    assert mt.compile_check(mt.MLX_UTILS_PREFIX + broken).returncode != 0
