"""Helpers for checking fastmuon's Metal sources without Metal (``tests/support/metal_stub``).

* ``compile_check``: g++ -fsyntax-only of a Metal source against the stub ``metal_stdlib``.
* ``generated_sources``: the exact sources MLX generates for ``mx.fast.metal_kernel`` calls
  (header + signature + body + template instantiation). MLX only writes them when it is about
  to run a kernel, which needs Metal, or while exporting a function (``mx.export_function``),
  which does not: the kernel is called with ``verbose=True`` under an export, in a subprocess,
  and the printed source is captured.
* ``KernelProgram``: builds kernels into a CPU executable (the stub's run mode) and runs them
  on numpy arrays, one file per kernel argument.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
METAL_DIR = ROOT / "metal"
STUB_DIR = Path(__file__).resolve().parent / "metal_stub"

# What MLX puts in front of a metal_kernel's source (metal::utils(): MLX's kernels/utils.h) and
# the kernels may rely on: the Metal standard library, `using namespace metal` and the
# bfloat16_t / float16_t names that the generated signatures use.
MLX_UTILS_PREFIX = """#include <metal_stdlib>
using namespace metal;
typedef bfloat bfloat16_t;
typedef half float16_t;
"""

SYNTAX_FLAGS = [
    "-std=c++17",
    "-fsyntax-only",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wno-attributes",  # [[buffer(0)]], [[kernel]], [[host_name(...)]], ...
    "-Wno-unused-parameter",  # generated signatures pass every input, used or not
    "-Wdouble-promotion",  # Metal has no double: float math must stay float
    "-Wfloat-conversion",
]

RUN_FLAGS = ["-std=c++20", "-O0", "-pthread", "-Wno-attributes", "-DFASTMUON_METAL_STUB_RUN"]


def cxx() -> Optional[str]:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def compile_check(source: str):
    """Compile ``source`` (text) as C++ against the stub; returns the CompletedProcess."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.metal"
        path.write_text(source)
        cmd = [
            cxx(),
            *SYNTAX_FLAGS,
            f"-I{STUB_DIR}",
            "-x",
            "c++",
            str(path),
        ]
        return subprocess.run(cmd, capture_output=True, text=True)


# ------------------------------------------------------------------ generated sources --

_GENERATE = r"""
import json, os, sys, tempfile
import mlx.core as mx
from fastmuon.mlx.backends import metal_kernels as mk

for name, dtype, m, k in json.loads(sys.argv[1]):
    inputs, _ = mk.KERNELS[name]

    def f(x):
        extra = [mx.array([m, k], dtype=mx.int32)]
        if "coef" in inputs:
            extra.append(mx.array([2.0, -1.0], dtype=mx.float32))
        return mk.kernel(name)(
            inputs=[x, *extra], template=[("T", x.dtype)], grid=(128, 1, 1),
            threadgroup=(128, 1, 1), output_shapes=[(1, m, m)], output_dtypes=[x.dtype],
            verbose=True, stream=mx.gpu,
        )[0]

    with tempfile.TemporaryDirectory() as d:
        mx.export_function(os.path.join(d, "k.mlxfn"), f, mx.zeros((1, m, k), dtype=getattr(mx, dtype)))
    sys.stdout.flush()
"""


def generated_sources(requests: Sequence[Tuple[str, str, int, int]]) -> List[str]:
    """The full Metal sources MLX generates for metal_kernels.kernel(name) on a (1, m, k) input
    of ``dtype``, for each (name, dtype, m, k) (an input of m * k < 8 elements is passed in the
    `constant` address space, a larger one as `device`)."""
    import json

    proc = subprocess.run(
        [sys.executable, "-c", _GENERATE, json.dumps([list(r) for r in requests])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"generating the metal_kernel sources failed:\n{proc.stderr}")
    sources = re.findall(r"```\n(.*?)```", proc.stdout, flags=re.S)
    if len(sources) != len(requests):
        raise RuntimeError(f"expected {len(requests)} generated sources, got:\n{proc.stdout}")
    return sources


def kernel_name(source: str) -> str:
    """The name of the (first) [[kernel]] function in a generated source."""
    return re.search(r"\[\[kernel\]\]\s+void\s+(\w+)\s*\(", source).group(1)


# -------------------------------------------------------------------- kernel signatures --


@dataclass(frozen=True)
class Param:
    """One kernel parameter: element type, name, and its [[attribute]]."""

    type: str  # e.g. "const device float*", "constant const int&", "uint3"
    name: str
    attribute: str  # "buffer(3)" or a built-in such as "thread_position_in_grid"

    @property
    def is_buffer(self) -> bool:
        return self.attribute.startswith("buffer(")

    @property
    def buffer_index(self) -> int:
        return int(self.attribute[len("buffer(") : -1])

    @property
    def element(self) -> str:
        words = self.type.replace("*", " ").replace("&", " ").split()
        return " ".join(w for w in words if w not in ("const", "device", "constant", "thread"))

    @property
    def is_pointer(self) -> bool:
        return "*" in self.type

    @property
    def writable(self) -> bool:
        return self.is_pointer and "const" not in self.type.split()


def template_params(source: str, function: str) -> List[str]:
    """Names of the template parameters of the kernel ``function`` (first declaration)."""
    match = re.search(
        r"template\s*<([^<>]*)>\s*\[\[kernel\]\]\s*void\s+" + re.escape(function) + r"\s*\(",
        source,
    )
    if match is None:
        return []
    return [p.split()[-1] for p in match.group(1).split(",")]


def kernel_params(source: str, function: str, template: str = "") -> List[Param]:
    """Parameters of the kernel ``function`` declared (first) in ``source``, with the template
    parameters in their types replaced by the arguments in ``template`` (e.g. "float, false")."""
    match = re.search(r"\bvoid\s+" + re.escape(function) + r"\s*\(", source)
    if match is None:
        raise ValueError(f"no kernel {function!r} in the source")
    names = template_params(source, function)
    args = [a.strip() for a in template.split(",")] if template else []
    substitute = dict(zip(names, args))
    depth, i = 1, match.end()
    while depth:
        depth += {"(": 1, ")": -1}.get(source[i], 0)
        i += 1
    params = []
    for piece in source[match.end() : i - 1].split(","):
        piece = " ".join(piece.split())
        m = re.fullmatch(r"(.*?)\s*\b(\w+)\s*\[\[\s*(.*?)\s*\]\]", piece)
        if m is None:
            raise ValueError(f"cannot read kernel parameter {piece!r}")
        ptype = re.sub(r"\b\w+\b", lambda w: substitute.get(w.group(0), w.group(0)), m.group(1))
        params.append(Param(ptype, m.group(2), m.group(3)))
    return params


# ------------------------------------------------------------------------- run mode --

# element type in the kernel -> numpy dtype of its file (bfloat as raw uint16 bits)
_FILE_DTYPES = {
    "float": np.float32,
    "half": np.float16,
    "float16_t": np.float16,
    "bfloat": np.uint16,
    "bfloat16_t": np.uint16,
    "int": np.int32,
    "int32_t": np.int32,
    "uint": np.uint32,
    "int64_t": np.int64,
}


def to_bfloat_bits(a: np.ndarray) -> np.ndarray:
    """float -> bfloat16 bits, round to nearest even (as MLX and the stub round)."""
    u = np.asarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bfloat_bits(b: np.ndarray) -> np.ndarray:
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def to_file_array(values: np.ndarray, element: str) -> np.ndarray:
    if element in ("bfloat", "bfloat16_t"):
        return to_bfloat_bits(values)
    return np.asarray(values).astype(_FILE_DTYPES[element])


def from_file_array(raw: np.ndarray, element: str) -> np.ndarray:
    if element in ("bfloat", "bfloat16_t"):
        return from_bfloat_bits(raw)
    return raw


_DRIVER_HEAD = r"""
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

template <typename E>
static std::vector<E> fm_load(const std::string& path) {
  std::vector<E> v;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) { std::fprintf(stderr, "cannot open %s\n", path.c_str()); std::exit(2); }
  std::fseek(f, 0, SEEK_END);
  const long bytes = std::ftell(f);
  std::fseek(f, 0, SEEK_SET);
  v.resize(static_cast<size_t>(bytes) / sizeof(E) + 1);  // +1: never empty
  if (bytes > 0 && std::fread(v.data(), 1, static_cast<size_t>(bytes), f) != static_cast<size_t>(bytes)) std::exit(3);
  std::fclose(f);
  return v;
}

template <typename E>
static void fm_save(const std::string& path, const std::vector<E>& v) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::exit(4);
  std::fwrite(v.data(), sizeof(E), v.size() - 1, f);
  std::fclose(f);
}
"""

_DRIVER_ENTRY = r"""
static void fm_entry_{index}(const std::string& dir, uint3 groups, uint3 group, uint3 grid) {{
{loads}
  fastmuon_stub::dispatch(groups, group, [&](const fastmuon_stub::Attributes& at) {{
    {call};
  }}, &grid);
{saves}
}}
"""

_DRIVER_MAIN = r"""
int main(int argc, char** argv) {{
  if (argc != 12) {{ std::fprintf(stderr, "usage: entry dir groups(3) group(3) grid(3)\n"); return 1; }}
  const int entry = std::atoi(argv[1]);
  const std::string dir = argv[2];
  uint v[9];
  for (int i = 0; i < 9; ++i) v[i] = static_cast<uint>(std::strtoul(argv[3 + i], nullptr, 10));
  const uint3 groups(v[0], v[1], v[2]), group(v[3], v[4], v[5]), grid(v[6], v[7], v[8]);
  switch (entry) {{
{cases}
    default: return 5;
  }}
  return 0;
}}
"""


@dataclass(frozen=True)
class Entry:
    """One kernel of a KernelProgram: ``function<template>`` in namespace ``scope``."""

    function: str
    template: str = ""
    scope: str = ""


class KernelProgram:
    """Kernels compiled for the CPU with the stub's run mode (one executable for several).

    ``source`` is C++/Metal text holding the kernels (sources MLX generates for metal_kernels,
    each wrapped in its own namespace), ``entries`` the kernels to
    expose: function, template arguments (e.g. "float, false") and namespace. Arguments are
    exchanged as files named after the kernel's parameters.
    """

    def __init__(self, source: str, entries: Sequence[Entry], workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.entries = list(entries)
        self.params = []
        parts, cases = [_DRIVER_HEAD], []
        for index, entry in enumerate(self.entries):
            scoped = source
            if entry.scope:
                scoped = source[source.index(f"namespace {entry.scope} {{") :]
            params = kernel_params(scoped, entry.function, entry.template)
            self.params.append(params)
            loads, saves, args = [], [], []
            for p in params:
                if p.is_buffer:
                    loads.append(f'  auto b_{p.name} = fm_load<{p.element}>(dir + "/{p.name}.bin");')
                    args.append(f"b_{p.name}.data()" if p.is_pointer else f"b_{p.name}[0]")
                    if p.writable:
                        saves.append(f'  fm_save(dir + "/{p.name}.out.bin", b_{p.name});')
                else:
                    args.append(f"at.{p.attribute}")
            name = f"{entry.scope}::{entry.function}" if entry.scope else entry.function
            if entry.template:
                name += f"<{entry.template}>"
            parts.append(
                _DRIVER_ENTRY.format(
                    index=index, loads="\n".join(loads), call=f"{name}({', '.join(args)})",
                    saves="\n".join(saves),
                )
            )
            cases.append(f"    case {index}: fm_entry_{index}(dir, groups, group, grid); break;")
        parts.append(_DRIVER_MAIN.format(cases="\n".join(cases)))
        src = self.workdir / "kernels_run.cpp"
        src.write_text(source + "\n" + "".join(parts))
        self.binary = self.workdir / "kernels_run"
        cmd = [cxx(), *RUN_FLAGS, f"-I{STUB_DIR}", "-include", "metal_stdlib",
               "-x", "c++", str(src), "-o", str(self.binary)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"building the kernels for the CPU failed:\n{proc.stderr[-4000:]}")

    def run(
        self,
        entry: int,
        arrays: Dict[str, np.ndarray],
        groups: Tuple[int, int, int],
        group: Tuple[int, int, int],
        grid: Optional[Tuple[int, int, int]] = None,
    ) -> Dict[str, np.ndarray]:
        """Run kernel ``entry`` on ``arrays`` (one per buffer parameter; outputs hold their
        initial contents, e.g. NaN) over ``groups`` threadgroups of ``group`` threads, or with
        ``grid`` set, dispatch_threads semantics (threads beyond ``grid`` are not launched).
        Returns the writable buffers afterwards, flat."""
        run_dir = Path(tempfile.mkdtemp(dir=self.workdir))
        params = self.params[entry]
        for p in params:
            if p.is_buffer:
                to_file_array(np.ravel(arrays[p.name]), p.element).tofile(run_dir / f"{p.name}.bin")
        if grid is None:
            grid = tuple(g * t for g, t in zip(groups, group))
        argv = [str(self.binary), str(entry), str(run_dir), *map(str, (*groups, *group, *grid))]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"kernel run failed ({proc.returncode}): {proc.stderr}")
        out = {}
        for p in params:
            if p.is_buffer and p.writable:
                raw = np.fromfile(run_dir / f"{p.name}.out.bin", dtype=_FILE_DTYPES[p.element])
                out[p.name] = from_file_array(raw, p.element)
        shutil.rmtree(run_dir)
        return out
