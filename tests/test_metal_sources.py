"""Every Metal source compiles, checked on machines without Metal.

No Mac is available to this project, so these tests prove what a C++ compiler can:

* each ``metal/*.metal`` file, and each ``mx.fast.metal_kernel`` source exactly as MLX generates
  it (header + signature + body + instantiation, captured from MLX itself), compiles with g++
  against ``tests/metal_stub/metal_stdlib``, a small C++ stand-in for the Metal language
  (address spaces, vector, half/bfloat and simdgroup-matrix types, barriers, attributes);
* the eval_gpu code of the C++ primitives (``#ifdef _METAL_``) compiles against MLX's own Metal
  backend headers (``mlx/backend/metal/device.h``, as installed with mlx) with a declarations-only
  stand-in for Apple's metal-cpp;
* the kernel names the C++ side asks for are the ones the .metal files instantiate, and the
  tile routine the metal_kernel path carries is the one the .metal files include;
* the checks can fail: broken snippets are rejected.

What they cannot prove: that Apple's Metal compiler accepts the sources (the stub does not check
address spaces, and Metal has rules of its own), or anything about speed. ``test_metal_gpu.py``
covers that on Apple silicon. ``test_metal_emulated.py`` runs the kernels on the CPU.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from support import metal_tools as mt

METAL_FILES = sorted(mt.METAL_DIR.glob("*.metal"))
CSRC_METAL_FILES = [
    "csrc/mlx/metal_dispatch.cpp",
    "csrc/mlx/xxt.cpp",
    "csrc/mlx/ba_plus_caa.cpp",
    "csrc/mlx/orthogonalize.cpp",
]
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


# ---------------------------------------------------------------- metal/*.metal --


def test_there_are_metal_sources():
    names = {p.name for p in METAL_FILES}
    assert {"symmetric.metal", "gemm.metal", "orthogonalize.metal"} <= names


@pytest.mark.parametrize("path", METAL_FILES, ids=lambda p: p.name)
def test_metal_file_compiles(compiler, path):
    _assert_compiled(mt.compile_check(path.read_text(), path.name), path.name)


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
    metal/fastmuon_tiles.h (the file the .metal kernels include), which equals the source: the
    tile schedule and index math exist once."""
    mk = pytest.importorskip("fastmuon.mlx.metal_kernels")
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
    from fastmuon.mlx.metal_kernels import shared_core

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


def test_a_broken_metal_file_is_rejected(compiler):
    """A real kernel file with one character removed fails."""
    source = (mt.METAL_DIR / "symmetric.metal").read_text()
    broken = source.replace("const ulong b = tg.y;", "const ulong b = tg.y", 1)
    assert broken != source
    assert mt.compile_check(broken).returncode != 0


# ------------------------------------------------- C++ eval_gpu against MLX's headers --


def _mlx_include() -> Path:
    core = pytest.importorskip("mlx.core")  # mlx is a namespace package: no mlx.__file__
    include = Path(core.__file__).resolve().parent / "include"
    if not (include / "mlx" / "backend" / "metal" / "device.h").exists():
        pytest.skip(f"this mlx ships no Metal backend headers under {include}")
    return include


def _compile_cpp(compiler, path, include, extra=()):
    cmd = [
        compiler, "-std=c++20", "-fsyntax-only", "-D_METAL_", "-Wall", "-Wextra", "-Werror",
        "-isystem", str(mt.STUB_DIR / "cxx"), "-isystem", str(include),
        "-I", str(mt.ROOT / "csrc"), "-I", str(mt.ROOT / "csrc" / "mlx"), *extra, str(path),
    ]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_eval_gpu_compiles_against_mlx_metal_headers(compiler):
    """csrc/mlx/*.cpp with -D_METAL_ (as MLX's CMake config sets it on macOS), in one
    translation unit, against the installed MLX headers: every eval_gpu and the kernel
    launcher type-check against MLX's CommandEncoder / Device API."""
    include = _mlx_include()
    with tempfile.TemporaryDirectory() as tmp:
        unity = Path(tmp) / "eval_gpu_unity.cpp"
        unity.write_text("".join(f'#include "{mt.ROOT / f}"\n' for f in CSRC_METAL_FILES))
        proc = _compile_cpp(compiler, unity, include)
    assert proc.returncode == 0, f"eval_gpu code with -D_METAL_:\n{proc.stderr[-6000:]}"


def test_mlx_metal_api_misuse_is_rejected(compiler):
    """The check sees MLX's real CommandEncoder: a call with a missing argument fails."""
    include = _mlx_include()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.cpp"
        path.write_text(
            '#include "mlx/backend/metal/device.h"\n'
            "void probe(mlx::core::metal::CommandEncoder& encoder, mlx::core::array& a) {\n"
            "  encoder.set_input_array(a);  // the buffer index is missing\n}\n"
        )
        proc = _compile_cpp(compiler, path, include)
    assert proc.returncode != 0
    assert "set_input_array" in proc.stderr


# ------------------------------------------------------------------ kernel names --


def _instantiated_kernels(compiler) -> set:
    """host_name(...) of every kernel instantiated by metal/*.metal, after macro expansion."""
    names = set()
    for path in METAL_FILES:
        proc = subprocess.run(
            [compiler, "-std=c++17", "-E", "-P", f"-I{mt.STUB_DIR}", f"-I{mt.METAL_DIR}", "-x", "c++",
             str(path)], capture_output=True, text=True,
        )
        assert proc.returncode == 0, proc.stderr
        for literals in re.findall(r'host_name\(((?:\s*"[^"]*")+)\s*\)', proc.stdout):
            names.add("".join(re.findall(r'"([^"]*)"', literals)))
    return names


def test_every_kernel_the_cpp_side_loads_is_instantiated_per_dtype(compiler):
    instantiated = _instantiated_kernels(compiler)
    dispatch = (mt.ROOT / "csrc" / "mlx" / "metal_dispatch.cpp").read_text()
    bases = set(re.findall(r'"(fastmuon_\w+)"', dispatch))
    assert {"fastmuon_xxt", "fastmuon_ba_plus_caa", "fastmuon_gemm", "fastmuon_gather",
            "fastmuon_sumsq", "fastmuon_load_wide", "fastmuon_store_wide",
            "fastmuon_add_identity"} <= bases
    missing = {f"{b}_{dt}" for b in bases for dt in DTYPES} - instantiated
    assert not missing, f"kernels asked for by metal_dispatch.cpp but not instantiated: {sorted(missing)}"
