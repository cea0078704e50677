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
from support.native_helpers import plan_arg

from fastmuon.plan import make_plan


@pytest.mark.parametrize("method", ["polar_express", "gram"])
@pytest.mark.parametrize("shape", [(5, 24, 40), (5, 40, 24), (3, 64, 256), (7, 16, 16)],
                         ids=lambda s: "x".join(map(str, s)))
def test_batch_split_is_bitwise_the_sequential_result(blas_ext, method, shape):
    plan = make_plan(method, 5, None)
    G = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    blas_ext.set_num_threads(1)
    alone = [G[i:i + 1].copy() for i in range(shape[0])]
    for x in alone:
        blas_ext.orthogonalize(x, plan_arg(plan))
    expected = np.concatenate(alone)
    for workers in (1, 2, 3, 8):
        x = G.copy()
        blas_ext.orthogonalize(x, plan_arg(plan), workers=workers)
        np.testing.assert_array_equal(x, expected, err_msg=f"workers={workers}")


def test_workers_must_be_positive(blas_ext):
    x = np.ones((2, 4, 6), np.float32)
    with pytest.raises(ValueError, match=r"workers must be >= 1, got 0"):
        blas_ext.orthogonalize(x, plan_arg(), workers=0)
    np.testing.assert_array_equal(x, 1.0)


def test_threads_stay_within_torch_threads(monkeypatch):
    torch = pytest.importorskip("torch")
    from fastmuon.torch.backends import native

    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert native.plan_threads([(8, 64, 256)]) == (1, 4)  # batch split, OpenBLAS on one thread
    assert native.plan_threads([(3, 256, 64)]) == (1, 3)  # at most one share per matrix
    assert native.plan_threads([(2, 8, 8)]) == (1, 1)  # too small to be worth a second thread
    assert native.plan_threads([(1, 64, 64)]) == (1, 1)
    assert native.plan_threads([(2048, 2048)]) == (4, 1)  # one big matrix: OpenBLAS's threads
    assert native.plan_threads([(64, 256), (64, 64), (192, 64)]) == (1, 3)  # stacks shared out together
    assert native.plan_threads([(2048, 2048), (2, 64, 64)]) == (4, 1)  # one matrix holds most of the work
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert native.plan_threads([(8, 64, 256)]) == (1, 1)
    assert native.plan_threads([(2048, 2048)]) == (1, 1)


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


@pytest.mark.parametrize("backend", ["auto", "native", "reference"])
def test_orthogonalize_stacks_equals_one_call_each(backend):
    """Stacks of several shapes (tall, wide, 2-D, empty, bf16) in one call give bitwise what one
    orthogonalize call each gives, whatever the threads."""
    torch = pytest.importorskip("torch")
    from fastmuon.torch.orthogonalize import orthogonalize, orthogonalize_stacks

    gen = torch.Generator().manual_seed(0)
    Gs = [torch.randn(3, 16, 40, generator=gen), torch.randn(40, 16, generator=gen), torch.randn(2, 24, 24, generator=gen),
          torch.zeros(0, 8, 8), torch.randn(2, 16, 40, generator=gen).to(torch.bfloat16)]
    if backend == "native":
        Gs = Gs[:4]  # native computes in fp32: a bf16 input is converted, which the other backends share
    expected = [orthogonalize(G, backend=backend, method="gram") for G in Gs]
    for threads in (1, 2):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            got = orthogonalize_stacks(Gs, backend=backend, method="gram")
        finally:
            torch.set_num_threads(before)
        for G, O, E in zip(Gs, got, expected):
            assert O.shape == G.shape and O.dtype == G.dtype
            assert torch.equal(O, E)


def test_orthogonalize_stacks_errors(blas_ext):
    torch = pytest.importorskip("torch")
    from fastmuon.torch.orthogonalize import orthogonalize_stacks

    with pytest.raises(TypeError, match=r"Gs\[1\] must be a floating tensor"):
        orthogonalize_stacks([torch.ones(4, 4), torch.ones(4, 4, dtype=torch.int64)])
    x = np.ones((4, 6, 8), np.float32)
    with pytest.raises(ValueError, match=r"`xs\[1\]` overlaps xs\[0\]"):
        blas_ext.orthogonalize_stacks([x[:2], x[1:]], plan_arg())
    with pytest.raises(TypeError, match=r"`xs\[0\]` must have dtype float32"):
        blas_ext.orthogonalize_stacks([x.astype(np.float64)], plan_arg())
    with pytest.raises(ValueError, match=r"orthogonalize_stacks\(\): `plan\['eps'\]` must be finite"):
        blas_ext.orthogonalize_stacks([x], plan=plan_arg(eps=-1.0))
    with pytest.raises(ValueError, match=r"orthogonalize_stacks\(\): `plan` has an unknown key 'precondition'"):
        blas_ext.orthogonalize_stacks([x], plan=plan_arg(precondition=True))
    np.testing.assert_array_equal(x, 1.0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_split_in_a_forked_child_finishes(blas_ext):
    """A child forked after the parent split a batch over OpenMP threads cannot start those
    threads (libgomp hangs there); the kernels run its batch one matrix at a time, with the same
    result."""
    code = """
        import os, signal, time
        import numpy as np
        from fastmuon.native import blas_module, kernel_plan
        from fastmuon.plan import make_plan
        plan = kernel_plan(make_plan("polar_express", 5, None))
        blas = blas_module()
        blas.set_num_threads(1)
        G = np.random.default_rng(0).standard_normal((4, 24, 40)).astype(np.float32)
        parent = G.copy()
        blas.orthogonalize(parent, plan, workers=2)
        pid = os.fork()
        if pid == 0:
            child = G.copy()
            blas.orthogonalize(child, plan, workers=2)
            os._exit(0 if np.array_equal(child, parent) else 3)
        deadline = time.time() + 30
        while time.time() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                print("exit", os.waitstatus_to_exitcode(status))
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            print("hung")
    """
    assert _run(code, {}) == "exit 0"


def test_mlx_batch_split_is_bitwise_the_sequential_result(mlx_ext):
    """The MLX primitive shares a batch out over threads too (fastmuon.threads' plan, within
    the process's CPUs), with bitwise the one-thread result; bad thread counts raise when the
    graph is built."""
    import mlx.core as mx

    from fastmuon import threads
    from fastmuon.mlx.backends import native as mlx_native

    plan = make_plan("polar_express", 5, None)
    args = plan_arg(plan, coefficients=[tuple(s) for s in plan.coefficients])
    G = mx.array(np.random.default_rng(2).standard_normal((5, 24, 40)).astype(np.float32))
    one = mlx_ext.orthogonalize(G, args, workers=1, blas_threads=1, stream=mx.cpu)
    for workers in (2, 3, 8):
        split = mlx_ext.orthogonalize(G, args, workers=workers, blas_threads=1, stream=mx.cpu)
        np.testing.assert_array_equal(np.array(split), np.array(one))
    assert threads.plan_threads([G.shape], 4) == (1, 4)
    np.testing.assert_array_equal(np.array(mlx_native.orthogonalize(G, plan)), np.array(one))
    with pytest.raises(ValueError, match=r"workers must be >= 1 and blas_threads >= 0, got 0 and 0"):
        mlx_ext.orthogonalize(G, args, workers=0, stream=mx.cpu)


def test_mlx_threads_follow_the_thread_variables(monkeypatch):
    """Processes sharing a machine (mlx.launch) say how many threads each may use with the
    usual variables; MLX has no thread count of its own."""
    from fastmuon import threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    cpus = threads.available_cpus()
    assert cpus >= 1
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert threads.available_cpus() == 1
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "junk")
    monkeypatch.setenv("OMP_NUM_THREADS", str(cpus + 5))
    assert threads.available_cpus() == cpus


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="other builds may lack OpenMP (Apple clang)")
def test_linux_build_splits_batches(blas_ext):
    """The Linux build has OpenMP, without which batches would run one matrix at a time."""
    from fastmuon import threads

    assert blas_ext.openmp is True
    assert "split over OpenMP threads" in threads.describe()
