#!/usr/bin/env python3
"""cibuildwheel before-build on Linux: install fastmuon's build requirements into the build
interpreter (the build then runs with --no-isolation).

Why not an isolated build: mlx's Linux wheels (mlx, mlx-cpu) are tagged manylinux_2_35, newer
than the glibc of the manylinux_2_28 build image, so pip finds no mlx there. The build only needs
mlx's headers, CMake files and libmlx.so to compile and link fastmuon._mlx_ext (CMakeLists.txt
asks for mlx's folder and version without importing it), so the glibc-2.35 wheels are installed
by platform tag into site-packages. libmlx is never loaded in the container, and the repaired wheel
keeps needing the mlx package's own libmlx (.ci/repair_wheel.sh), i.e. a glibc >= 2.35 system
for the MLX extension; the torch/numpy extension (_blas) keeps the image's manylinux_2_28 floor.

The requirement strings are read from pyproject.toml's [build-system] so that the pins live in one
place.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import sysconfig

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib
from pip._vendor.packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLX_GLIBC = "2_35"  # the manylinux tag of mlx 0.32.4's Linux wheels


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def main() -> None:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        requires = tomllib.load(f)["build-system"]["requires"]
    plain, mlx = [], []
    for spec in requires:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate():
            continue
        (mlx if req.name in ("mlx", "mlx-cpu") else plain).append(spec.split(";")[0].strip())
    # scikit-build-core asks for cmake/ninja itself only in isolated builds.
    pip(*plain, "cmake>=3.27", "ninja", "build")
    if mlx:
        v = sys.version_info
        pip("--only-binary=:all:", "--platform", f"manylinux_{MLX_GLIBC}_{platform.machine()}",
            "--implementation", "cp", "--python-version", f"{v.major}.{v.minor}", "--abi", f"cp{v.major}{v.minor}",
            "--target", sysconfig.get_paths()["platlib"], "--upgrade", *mlx)


if __name__ == "__main__":
    main()
