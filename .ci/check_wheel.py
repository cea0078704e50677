#!/usr/bin/env python3
"""Check a built fastmuon wheel before it is published: .ci/check_wheel.py WHEEL [WHEEL ...]

Reads only the zip (no install, no import), so CI can run it on every wheel cibuildwheel makes,
for any platform, on one machine. Exits 1 and lists every problem found. Checks:

* both extension modules (fastmuon/_blas*, fastmuon/_mlx_ext*) are in the wheel, with a suffix
  for the wheel's platform, plus the MLX version record the build writes beside _mlx_ext;
* the Metal tile header (fastmuon/metal/fastmuon_tiles.h) and the typing marker are present;
* no "not built" record (fastmuon/_native_build.py: a build that found no compiler);
* the platform tag: manylinux_X_Y_<arch> on Linux (a bare linux_* tag is an unrepaired wheel),
  macosx_* on macOS, and the WHEEL file's Tag lines agree with the file name;
* no copy of libmlx is vendored (fastmuon must use the mlx package's own: no stable ABI, no
  versioned soname, shared nanobind types), nor of libscipy_openblas or libgomp (shared with the
  scipy-openblas32 dependency and with torch; .ci/repair_wheel.sh says why).

tests/test_check_wheel.py runs these checks on small synthetic zips.
"""

from __future__ import annotations

import re
import sys
import zipfile
from typing import List

# name-version-pythontag-abitag-platformtag.whl (no build tag in ours)
WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$")
MANYLINUX = re.compile(r"^manylinux_\d+_\d+_(x86_64|aarch64)$")
MACOS = re.compile(r"^macosx_\d+_\d+_(arm64|universal2)$")
# Libraries provided at run time by other packages: never inside our wheel (any folder, any hash).
NOT_VENDORED = {
    "libmlx": re.compile(r"(^|/)libmlx[^/]*\.(so|dylib)([.\d]*)$"),
    "libscipy_openblas": re.compile(r"(^|/)libscipy_openblas[^/]*\.(so|dylib)([.\d]*)$"),
    "libgomp": re.compile(r"(^|/)libgomp[^/]*\.(so|dylib)([.\d]*)$"),
}
REQUIRED_FILES = ("fastmuon/metal/fastmuon_tiles.h", "fastmuon/py.typed", "fastmuon/__init__.py",
                  "fastmuon/_mlx_ext_build.py")


def extension_suffix_ok(path: str, plat: str) -> bool:
    """Whether an extension module's file name fits the wheel's platform (.so on Linux and macOS;
    CPython names them module.cpython-3XY-<platform>.so or module.abi3.so)."""
    if plat.startswith(("manylinux", "linux")):
        return path.endswith(".so") and ("linux-gnu" in path or path.endswith(".abi3.so"))
    if plat.startswith("macosx"):
        return path.endswith(".so") and ("darwin" in path or path.endswith(".abi3.so"))
    return False


def check_names(wheel_name: str, names: List[str], wheel_metadata: str) -> List[str]:
    """Every problem with a wheel, given its file name, the paths in it and its WHEEL file."""
    problems: List[str] = []
    m = WHEEL_NAME.match(wheel_name)
    if m is None:
        return [f"{wheel_name}: not a wheel file name (name-version-python-abi-platform.whl)"]
    if m["name"] != "fastmuon":
        problems.append(f"distribution name is {m['name']!r}, not 'fastmuon'")
    plats = m["plat"].split(".")
    for plat in plats:
        if plat.startswith("linux_"):
            problems.append(f"platform tag {plat}: an unrepaired Linux wheel (run .ci/repair_wheel.sh)")
        elif not (MANYLINUX.match(plat) or MACOS.match(plat)):
            problems.append(f"platform tag {plat} is neither manylinux_X_Y (x86_64/aarch64) nor macosx (arm64)")
    # The extensions are per CPython version (_mlx_ext shares mlx.core's non-stable-ABI nanobind types).
    if m["abi"] == "abi3" or m["py"] in ("py3", "py2.py3"):
        problems.append(f"python/abi tags {m['py']}-{m['abi']}: fastmuon's wheels are per CPython version")
    tags = re.findall(r"^Tag: (\S+)$", wheel_metadata, re.M)
    expected = {f"{py}-{m['abi']}-{plat}" for py in m["py"].split(".") for plat in plats}
    if set(tags) != expected:
        problems.append(f"WHEEL Tag lines {sorted(tags)} do not match the file name's {sorted(expected)}")
    if not re.search(r"^Root-Is-Purelib: false$", wheel_metadata, re.M):
        problems.append("WHEEL says Root-Is-Purelib is not false: a wheel with extensions is platlib")

    for module in ("_blas", "_mlx_ext"):
        found = [n for n in names if re.fullmatch(rf"fastmuon/{module}\.[^/]+", n)]
        if not found:
            problems.append(f"extension module fastmuon/{module} is missing")
        for path in found:
            if not any(extension_suffix_ok(path, plat) for plat in plats):
                problems.append(f"{path}: not an extension module for {m['plat']}")
    for path in REQUIRED_FILES:
        if path not in names:
            problems.append(f"{path} is missing")
    if "fastmuon/_native_build.py" in names:
        problems.append("fastmuon/_native_build.py present: this build found no C++ compiler (pure-Python fallback)")
    for lib, pattern in NOT_VENDORED.items():
        for path in names:
            if pattern.search(path):
                problems.append(f"{path}: a vendored copy of {lib}, which must come from its own package")
    return problems


def check_wheel(path: str) -> List[str]:
    """Every problem with the wheel file at ``path``."""
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            meta = [n for n in names if re.fullmatch(r"fastmuon-[^/]+\.dist-info/WHEEL", n)]
            wheel_metadata = zf.read(meta[0]).decode("utf-8") if meta else ""
    except (OSError, zipfile.BadZipFile) as exc:
        return [f"cannot read {path}: {exc}"]
    problems = check_names(name, names, wheel_metadata)
    if not meta:
        problems.append("no fastmuon-*.dist-info/WHEEL file")
    return problems


def main(argv: List[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    failed = False
    for path in argv:
        problems = check_wheel(path)
        if problems:
            failed = True
            print(f"FAIL {path}")
            for p in problems:
                print(f"  - {p}")
        else:
            print(f"ok   {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
