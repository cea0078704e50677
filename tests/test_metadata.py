"""Packaging metadata and documentation that users read: one version everywhere, the license and
citation files present, and every repository path README.md cites exists."""

from __future__ import annotations

import os
import re

import pytest

import fastmuon

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name: str) -> str:
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def test_one_version_everywhere():
    project = tomllib.loads(read("pyproject.toml"))["project"]
    assert "version" in project["dynamic"] and "version" not in project  # read from fastmuon/__init__.py
    assert re.search(r"^version: (\S+)$", read("CITATION.cff"), re.M).group(1) == fastmuon.__version__
    changelog = read("CHANGELOG.md")
    assert f"## [{fastmuon.__version__}]" in changelog or "## [Unreleased]" in changelog


def test_license_readme_and_typing_marker():
    project = tomllib.loads(read("pyproject.toml"))["project"]
    assert project["license"] == "MIT" and "MIT License" in read("LICENSE")
    assert project["readme"] == "README.md"
    assert os.path.isfile(os.path.join(os.path.dirname(fastmuon.__file__), "py.typed"))
    assert "Typing :: Typed" in project["classifiers"]


# Cited paths that are not files of this repository: PyTorch's and MLX's test files (fetched by
# the client checks), Keller Jordan's muon.py and build wheels fetched into the git-ignored
# bench/.anchors/, and the GPU session's output folder.
ELSEWHERE = {"test/test_optim.py", "python/tests/test_optimizers.py", "muon.py", "wheels/", "bench/out/gpu_session"}
# Git-ignored outputs: what make demo and the GPU scripts write, and the build's MLX record.
GENERATED = ("bench/out", "bench/.anchors", "fastmuon/_mlx_ext_build.py", "fastmuon/_native_build.py")


def test_every_path_the_readme_cites_exists():
    """Backticked paths with a folder or a source suffix, relative to the root, bench/, python/
    or python/fastmuon/ (bench/README.md's own paths are relative to bench/)."""
    cited = []
    for doc, base in (("README.md", ""), ("bench/README.md", "bench")):
        for path in re.findall(r"`([\w./-]+)`", read(doc)):
            if "/" not in path and not path.endswith((".py", ".md", ".cff", ".toml", ".sh")):
                continue
            if path.startswith(("http", "-", ".venv", "/") + GENERATED) or "*" in path or path in ELSEWHERE:
                continue
            cited.append((doc, base, path))
    assert len(cited) > 20
    missing = [(doc, path) for doc, base, path in cited
               if not any(os.path.exists(os.path.join(ROOT, prefix, path.rstrip("/")))
                          for prefix in (base, "", "python", "python/fastmuon"))]
    assert not missing, missing
