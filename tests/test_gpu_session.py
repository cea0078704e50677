"""The one-command GPU session (bench/gpu_session.sh) and its fetch step, checked without a GPU:
the scripts parse, the phases that need no GPU run and leave their files where the device tool
brings them back, and the fetched anchors stay out of git."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
SCRIPTS = [os.path.join(ROOT, "bench", name) for name in ("gpu_session.sh", "fetch_gpu_anchors.sh")]


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", script], capture_output=True, text=True).returncode == 0
    if shutil.which("shellcheck"):
        done = subprocess.run(["shellcheck", script], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout


def test_session_without_a_gpu_writes_its_logs(tmp_path):
    """The env, profile and bench phases on this machine: the benchmark finds no CUDA device and exits 0,
    and every file lands directly in OUT with a name the device tool returns (letters, digits,
    '.', '_', '-'; at most 8 files)."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the session would measure (run it by hand)")
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PHASES="env profile bench", PYTHON=sys.executable, SESSION_SECONDS="120")
    done = subprocess.run(["bash", SCRIPTS[0]], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "no CUDA device: nothing to measure" in (out / "bench.log").read_text()
    assert "no CUDA device: nothing to profile" in (out / "bench.log").read_text()
    assert "=== finished" in (out / "session.log").read_text()
    names = sorted(os.listdir(out))
    assert names == ["bench.log", "env.txt", "session.log"]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in names)


def test_fetched_anchors_are_ignored_by_git():
    if not os.path.isdir(os.path.join(ROOT, ".git")) and not os.path.isfile(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout")
    for path in ("bench/.anchors/muon.py", "bench/.anchors/wheels/x.whl"):
        done = subprocess.run(["git", "-C", ROOT, "check-ignore", "-q", path])
        assert done.returncode == 0, f"{path} is not ignored"
