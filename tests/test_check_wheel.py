"""The wheel checker CI runs on every release wheel (.ci/check_wheel.py), on small synthetic zips:
building a real wheel takes minutes of the test budget, so `make wheel` checks real ones."""

from __future__ import annotations

import importlib.util
import os
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not os.path.isfile(os.path.join(ROOT, ".ci", "check_wheel.py")):
    pytest.skip(".ci/ is not in the sdist", allow_module_level=True)
_spec = importlib.util.spec_from_file_location("check_wheel", os.path.join(ROOT, ".ci", "check_wheel.py"))
check_wheel = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_wheel)

LINUX = "fastmuon-0.1.0-cp311-cp311-manylinux_2_34_x86_64.whl"
GOOD_LINUX = [
    "fastmuon/__init__.py",
    "fastmuon/py.typed",
    "fastmuon/_blas.cpython-311-x86_64-linux-gnu.so",
    "fastmuon/_mlx_ext.cpython-311-x86_64-linux-gnu.so",
    "fastmuon/_mlx_ext_build.py",
    "fastmuon/metal/fastmuon_tiles.h",
]


def make_wheel(tmp_path, name, files, tags=None, purelib="false"):
    """A zip named like a wheel, holding ``files`` (empty) and a WHEEL file with ``tags``."""
    if tags is None:
        py, abi, plat = name[:-4].split("-")[2:]
        tags = [f"{py}-{abi}-{p}" for p in plat.split(".")]
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        for f in files:
            zf.writestr(f, b"")
        wheel = "Wheel-Version: 1.0\nRoot-Is-Purelib: %s\n" % purelib + "".join(f"Tag: {t}\n" for t in tags)
        zf.writestr("fastmuon-0.1.0.dist-info/WHEEL", wheel)
    return str(path)


def test_a_good_linux_wheel_passes(tmp_path):
    assert check_wheel.check_wheel(make_wheel(tmp_path, LINUX, GOOD_LINUX)) == []


def test_a_good_macos_wheel_passes(tmp_path):
    files = [f.replace("x86_64-linux-gnu", "darwin") for f in GOOD_LINUX]
    path = make_wheel(tmp_path, "fastmuon-0.1.0-cp313-cp313-macosx_14_0_arm64.whl", files)
    assert check_wheel.check_wheel(path) == []


@pytest.mark.parametrize("missing, expected", [
    ("fastmuon/_blas.cpython-311-x86_64-linux-gnu.so", "fastmuon/_blas is missing"),
    ("fastmuon/_mlx_ext.cpython-311-x86_64-linux-gnu.so", "fastmuon/_mlx_ext is missing"),
    ("fastmuon/metal/fastmuon_tiles.h", "fastmuon/metal/fastmuon_tiles.h is missing"),
    ("fastmuon/_mlx_ext_build.py", "fastmuon/_mlx_ext_build.py is missing"),
])
def test_a_missing_part_is_named(tmp_path, missing, expected):
    files = [f for f in GOOD_LINUX if f != missing]
    problems = check_wheel.check_wheel(make_wheel(tmp_path, LINUX, files))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("vendored, lib", [
    ("fastmuon.libs/libmlx-0a1b2c3d.so", "libmlx"),
    ("fastmuon/libmlx.so", "libmlx"),
    ("fastmuon/.dylibs/libmlx.dylib", "libmlx"),
    ("fastmuon.libs/libscipy_openblas-b396d74f.so", "libscipy_openblas"),
    ("fastmuon.libs/libgomp-f9a9ad78.so.1.0.0", "libgomp"),
])
def test_a_vendored_shared_library_fails(tmp_path, vendored, lib):
    problems = check_wheel.check_wheel(make_wheel(tmp_path, LINUX, GOOD_LINUX + [vendored]))
    assert len(problems) == 1 and lib in problems[0] and vendored in problems[0], problems


@pytest.mark.parametrize("name, expected", [
    ("fastmuon-0.1.0-cp311-cp311-linux_x86_64.whl", "unrepaired"),
    ("fastmuon-0.1.0-cp311-cp311-win_amd64.whl", "neither manylinux"),
    ("fastmuon-0.1.0-cp312-abi3-manylinux_2_34_x86_64.whl", "per CPython version"),
    ("fastmuon-0.1.0-py3-none-any.whl", "neither manylinux"),
    ("fastmuon.whl", "not a wheel file name"),
])
def test_wrong_tags_fail(tmp_path, name, expected):
    files = [f.replace("311", "312") for f in GOOD_LINUX] if "cp312" in name else GOOD_LINUX
    problems = check_wheel.check_wheel(make_wheel(tmp_path, name, files, tags=[] if "-" not in name[9:] else None))
    assert any(expected in p for p in problems), problems


def test_tags_inside_must_match_the_file_name(tmp_path):
    path = make_wheel(tmp_path, LINUX, GOOD_LINUX, tags=["cp311-cp311-linux_x86_64"])
    problems = check_wheel.check_wheel(path)
    assert len(problems) == 1 and "do not match" in problems[0], problems


def test_an_extension_for_another_platform_fails(tmp_path):
    files = [f.replace("x86_64-linux-gnu", "darwin") for f in GOOD_LINUX]
    problems = check_wheel.check_wheel(make_wheel(tmp_path, LINUX, files))
    assert sum("not an extension module for" in p for p in problems) == 2, problems


def test_a_compilerless_build_fails(tmp_path):
    problems = check_wheel.check_wheel(make_wheel(tmp_path, LINUX, GOOD_LINUX + ["fastmuon/_native_build.py"]))
    assert len(problems) == 1 and "no C++ compiler" in problems[0], problems


def test_main_exit_status(tmp_path, capsys):
    good = make_wheel(tmp_path, LINUX, GOOD_LINUX)
    assert check_wheel.main([good]) == 0
    bad = make_wheel(tmp_path, "fastmuon-0.1.0-cp311-cp311-linux_x86_64.whl", GOOD_LINUX)
    assert check_wheel.main([good, bad]) == 1
    out = capsys.readouterr().out
    assert out.startswith("ok ") and "FAIL" in out
    assert check_wheel.main([str(tmp_path / "absent.whl")]) == 1
