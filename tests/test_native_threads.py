"""Threads of the native CPU kernels: a batch split over threads gives the sequential result
bit for bit, the split stays within torch.get_num_threads(), its threads are torch's own
(one OpenMP runtime in the process), and OpenBLAS's idle threads do not keep spinning after
a call."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastmuon.plan import make_plan


def _plan_args(plan):
    return np.asarray(plan.coefficients, dtype=np.float64), plan.norm_scale, plan.eps, plan.uses_gram, 2


@pytest.mark.parametrize("method", ["polar_express", "gram"])
@pytest.mark.parametrize("shape", [(5, 24, 40), (5, 40, 24), (3, 64, 256), (7, 16, 16)],
                         ids=lambda s: "x".join(map(str, s)))
def test_batch_split_is_bitwise_the_sequential_result(blas_ext, method, shape):
    plan = make_plan(method, 5, None)
    G = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    blas_ext.set_num_threads(1)
    alone = [G[i:i + 1].copy() for i in range(shape[0])]
    for x in alone:
        blas_ext.orthogonalize(x, *_plan_args(plan))
    expected = np.concatenate(alone)
    for workers in (1, 2, 3, 8):
        x = G.copy()
        blas_ext.orthogonalize(x, *_plan_args(plan), workers=workers)
        np.testing.assert_array_equal(x, expected, err_msg=f"workers={workers}")


def test_workers_must_be_positive(blas_ext):
    plan = make_plan("polar_express", 5, None)
    x = np.ones((2, 4, 6), np.float32)
    with pytest.raises(ValueError, match=r"workers must be >= 1, got 0"):
        blas_ext.orthogonalize(x, *_plan_args(plan), workers=0)
    np.testing.assert_array_equal(x, 1.0)


def test_threads_stay_within_torch_threads(monkeypatch):
    torch = pytest.importorskip("torch")
    from fastmuon.torch import native

    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert native.plan_threads((8, 64, 256)) == (1, 4)  # batch split, OpenBLAS on one thread
    assert native.plan_threads((3, 256, 64)) == (1, 3)  # at most one share per matrix
    assert native.plan_threads((2, 8, 8)) == (1, 1)  # too small to be worth a second thread
    assert native.plan_threads((1, 64, 64)) == (1, 1)
    assert native.plan_threads((2048, 2048)) == (4, 1)  # one big matrix: OpenBLAS's threads
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert native.plan_threads((8, 64, 256)) == (1, 1)
    assert native.plan_threads((2048, 2048)) == (1, 1)


def _run(code: str, env: dict) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps")
def test_one_openmp_runtime_with_torch(blas_ext):
    """The batch threads are torch's: with torch imported first, the extension binds to torch's
    libgomp instead of loading a second OpenMP runtime (whose threads would fight torch's)."""
    pytest.importorskip("torch")
    code = """
        import torch
        from fastmuon.native import blas_module
        blas_module()
        print(sorted({line.split()[-1] for line in open("/proc/self/maps") if "libgomp" in line}))
    """
    runtimes = eval(_run(code, {}))
    assert len(runtimes) <= 1, runtimes


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores for OpenBLAS to start a thread")
def test_openblas_threads_do_not_spin_after_a_call(blas_ext):
    """After a two-thread OpenBLAS call, its idle thread must not burn a core while torch works.
    OpenBLAS's default (a user's OPENBLAS_THREAD_TIMEOUT=28, which the loader respects) spins
    about 0.1 s; the control run shows this test can tell."""
    code = """
        import time
        import numpy as np
        from fastmuon.native import blas_module
        blas = blas_module()
        blas.set_num_threads(2)
        x = np.random.default_rng(0).standard_normal((1, 1024, 1024)).astype(np.float32)
        out = np.empty((1, 1024, 1024), np.float32)
        spun = []
        for _ in range(3):
            blas.xxt(x, out)
            start = time.process_time()
            time.sleep(0.3)
            spun.append(time.process_time() - start)
        print(min(spun))
    """
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    quiet = float(subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                                 text=True, timeout=120, check=True).stdout)
    spinning = float(_run(code, {"OPENBLAS_THREAD_TIMEOUT": "28"}))
    assert quiet < 0.02, quiet
    assert spinning > 0.03, spinning
