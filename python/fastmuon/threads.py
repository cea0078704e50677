"""How many threads the native CPU kernels use for one call, written once for both frameworks.

A batch of two or more matrices is shared out over the threads (OpenMP's, torch's own with torch
loaded; one OpenBLAS thread each): the matrices are independent, so this scales where splitting each small product
does not. A single matrix uses OpenBLAS's threads from ``SINGLE_THREAD_WORK`` up, one below.
The caller gives the threads it may use: ``torch.get_num_threads()`` for torch tensors,
``available_cpus()`` for MLX arrays. ``bench/bench_cpu_paths.py`` measures the choices.
"""

from __future__ import annotations

import math
import os
from typing import Iterable, Tuple

# m * m * n (per call, summed over the batch) below which OpenBLAS runs on one thread: on 2 cores
# (AMD EPYC, 2026-11-30, four runs) two threads took 1.1-1.6x one thread's time at 256x256 and
# 256x1024 (m*m*n <= 6.7e7), 0.84-1.02x at 512x512 (1.3e8) and 0.6-0.71x at 768x768 (4.5e8).
SINGLE_THREAD_WORK = 1e8
# m * m * n per matrix from which a batch is split over threads: at 8x8 (512) waking the second
# thread cost more than the matrix (1.1x slower), from 16x16 (4096) up two threads were faster
# (0.5-0.85x of one; AMD EPYC, 2 cores, 2026-11-30).
BATCH_SPLIT_WORK = 4096


def matrix_work(shape) -> Tuple[int, float]:
    """(matrices, m * m * n per matrix) of a (..., m, n) stack, m <= n."""
    rows, cols = shape[-2], shape[-1]
    m, n = (rows, cols) if rows <= cols else (cols, rows)
    return math.prod(shape[:-2]), float(m) * m * n


def _blas_threads(total_work: float, available: int) -> int:
    return 1 if total_work < SINGLE_THREAD_WORK else max(1, available)


def whole_call_threads(shape, available: int) -> int:
    """OpenBLAS threads for a call that runs its matrices one after another."""
    batch, work = matrix_work(shape)
    return _blas_threads(batch * work, available)


def plan_threads(shapes: Iterable, available: int) -> Tuple[int, int]:
    """(OpenBLAS threads, workers) for one orthogonalization call on stacks of these (..., m, n)
    shapes, with ``available`` threads. The matrices are shared out over the workers (one
    OpenBLAS thread each) unless they are too small to pay for a second thread, or one big
    matrix holds more than a worker's share of the work (it then runs on OpenBLAS's threads)."""
    available = max(1, available)
    works = [matrix_work(shape) for shape in shapes]
    count = sum(batch for batch, _ in works)
    total = sum(batch * work for batch, work in works)
    largest = max((work for batch, work in works if batch), default=0.0)
    workers = min(count, available)
    dominated = largest >= SINGLE_THREAD_WORK and largest * workers > total
    if workers > 1 and total >= BATCH_SPLIT_WORK * count and not dominated:
        return 1, workers
    return _blas_threads(total, available), 1


def available_cpus() -> int:
    """The threads an MLX call may use: the CPUs this process may run on, or fewer where
    ``OMP_NUM_THREADS`` or ``OPENBLAS_NUM_THREADS`` says so (as for processes that share a
    machine, e.g. under ``mlx.launch``)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            cpus = min(cpus, int(value))
    return cpus


def describe() -> str:
    """One line for benchmark headers: how the native kernels use threads here."""
    from .native import blas_available, blas_module

    if not blas_available():
        return "native kernels: not built"
    split = "batches split over OpenMP threads" if blas_module().openmp else "one matrix at a time (no OpenMP)"
    return f"native kernels: {split}; MLX threads {available_cpus()}"
