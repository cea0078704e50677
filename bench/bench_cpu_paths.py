"""The torch CPU paths per size, in one run: the plain-torch fp32 reference against the native
fp32 kernels on one thread, on torch.get_num_threads() OpenBLAS threads, and with a batch's
matrices split over torch.get_num_threads() threads; the bf16 reference; and what
``orthogonalize`` picks with its defaults, taking turns in every repeat. The crossovers set
``fastmuon.threads.SINGLE_THREAD_WORK``, ``fastmuon.threads.BATCH_SPLIT_WORK`` and
``fastmuon.torch.orthogonalize.BF16_MIN_WORK``.
Appends to bench/results/cpu_paths.jsonl.

    python bench/bench_cpu_paths.py [--repeats 7] [--busy] [--large] [--threads N]

--busy runs a second process that keeps one core loaded, as on a shared machine; --threads sets
torch.set_num_threads first (default: torch's own count).
"""

from __future__ import annotations

import argparse
import ast
import multiprocessing
import os

import torch

from fastmuon import bench, cpu, threads
from fastmuon.torch import orthogonalize

SHAPES = ((2, 8, 8), (2, 16, 16), (2, 64, 64), (2, 64, 256), (8, 64, 256), (1, 128, 512), (4, 128, 512),
          (1, 256, 256), (1, 256, 1024), (2, 256, 1024), (1, 512, 512), (1, 768, 768), (1, 768, 3072),
          (1, 2048, 2048))
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "cpu_paths.jsonl")


def with_thresholds(single_thread: float, batch_split: float, fn):
    """fn run with threads.SINGLE_THREAD_WORK and threads.BATCH_SPLIT_WORK set (inf: never more
    than one thread that way; 0: always)."""
    def run():
        saved = threads.SINGLE_THREAD_WORK, threads.BATCH_SPLIT_WORK
        threads.SINGLE_THREAD_WORK, threads.BATCH_SPLIT_WORK = single_thread, batch_split
        try:
            return fn()
        finally:
            threads.SINGLE_THREAD_WORK, threads.BATCH_SPLIT_WORK = saved
    return run


def spin(stop) -> None:
    while not stop.is_set():
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--busy", action="store_true")
    parser.add_argument("--large", action="store_true", help="also 4096x4096 (a few minutes more)")
    parser.add_argument("--shapes", type=ast.literal_eval, help='only these, e.g. "[(1, 256, 256)]"')
    parser.add_argument("--threads", type=int, help="torch.set_num_threads(N) first")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    stop = multiprocessing.Event()
    loader = multiprocessing.Process(target=spin, args=(stop,)) if args.busy else None
    if loader:
        loader.start()
    rows = []
    inf = float("inf")
    try:
        for shape in args.shapes or SHAPES + (((1, 4096, 4096),) if args.large else ()):
            G = torch.randn(shape)
            repeats = args.repeats if shape[-1] < 2048 else 2
            seconds, _ = bench.interleaved_times({
                "reference": lambda: orthogonalize(G, backend="reference", dtype=torch.float32),
                "native_1_thread": with_thresholds(inf, inf, lambda: orthogonalize(G, backend="native")),
                "native_n_threads": with_thresholds(0.0, inf, lambda: orthogonalize(G, backend="native")),
                "native_batch_split": with_thresholds(inf, 0.0, lambda: orthogonalize(G, backend="native")),
                "reference_bf16": lambda: orthogonalize(G, backend="reference", dtype=torch.bfloat16),
                "defaults": lambda: orthogonalize(G),
            }, repeats)
            times = {name: 1e3 * value for name, value in seconds.items()}  # ms
            row = {"shape": list(shape), "threads": torch.get_num_threads(), "busy": args.busy,
                   **{f"{k}_ms": v for k, v in times.items()}}
            rows.append(row)
            print(f"{str(shape):16s} reference {times['reference']:9.3f} ms;  vs reference: "
                  + "  ".join(f"{k} {v / times['reference']:.2f}" for k, v in times.items() if k != "reference"),
                  flush=True)
    finally:
        if loader:
            stop.set()
            loader.join()
    print(cpu.describe())
    print(threads.describe())
    bench.append_results(RESULTS, rows, bench.environment())


if __name__ == "__main__":
    main()
