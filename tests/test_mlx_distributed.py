"""mlx.distributed: in a 2-process ring group each process orthogonalizes its share of the
stacks and one all_gather per dtype shares the results; the weights equal one process's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("mlx.core")

from support.native_helpers import require_native  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(__file__), "support", "mlx_distributed_step.py")


def _launcher():
    found = shutil.which("mlx.launch") or os.path.join(os.path.dirname(sys.executable), "mlx.launch")
    if not os.path.exists(found):
        pytest.skip("mlx.launch is not installed")
    return found


def test_two_ring_processes_equal_one(tmp_path):
    require_native("mlx_ext")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    alone, shared = tmp_path / "alone.npz", tmp_path / "shared.npz"
    subprocess.run([sys.executable, SCRIPT, str(alone)], check=True, env=env, timeout=300)
    launched = subprocess.run([_launcher(), "-n", "2", "--backend", "ring", "--python", sys.executable, SCRIPT,
                               str(shared)], env=env, timeout=300, capture_output=True, text=True)
    assert launched.returncode == 0, launched.stderr[-3000:]
    one, two = np.load(alone), np.load(shared)
    assert int(one["size"]) == 1 and not bool(one["sharded"])
    assert int(two["size"]) == 2 and bool(two["sharded"])
    for key in ("a", "b", "c", "d", "e"):
        np.testing.assert_array_equal(two[key], one[key])  # each matrix is orthogonalized on its own
