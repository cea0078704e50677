"""The torch CPU paths per size, in one run: the plain-torch fp32 reference against the native
fp32 kernels on one OpenBLAS thread and on torch.get_num_threads() threads, the bf16 reference,
and what ``orthogonalize`` picks with its defaults. The crossovers set
``fastmuon.torch.native.SINGLE_THREAD_WORK`` and ``fastmuon.torch.orthogonalize.BF16_MIN_WORK``.
Appends to bench/results/cpu_paths.jsonl.

    python bench/bench_cpu_paths.py [--repeats 7] [--busy]

--busy runs a second process that keeps one core loaded, as on a shared machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os

import torch

from fastmuon import bench, cpu
from fastmuon.torch import native, orthogonalize

SHAPES = ((2, 8, 8), (2, 64, 64), (2, 64, 256), (1, 128, 512), (1, 256, 256), (1, 256, 1024),
          (1, 512, 512), (1, 768, 768), (1, 768, 3072), (1, 2048, 2048))
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "cpu_paths.jsonl")


def median_ms(fn, repeats: int) -> float:
    return 1e3 * bench.median_time(fn, repeats)[0]


def spin(stop) -> None:
    while not stop.is_set():
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--busy", action="store_true")
    args = parser.parse_args()
    stop = multiprocessing.Event()
    loader = multiprocessing.Process(target=spin, args=(stop,)) if args.busy else None
    if loader:
        loader.start()
    rows = []
    threshold = native.SINGLE_THREAD_WORK
    try:
        for shape in SHAPES:
            G = torch.randn(shape)
            repeats = args.repeats if shape[-1] < 2048 else 2
            times = {"reference": median_ms(lambda: orthogonalize(G, backend="reference", dtype=torch.float32),
                                            repeats)}
            for name, limit in (("native_1_thread", float("inf")), ("native_n_threads", 0.0)):
                native.SINGLE_THREAD_WORK = limit
                times[name] = median_ms(lambda: orthogonalize(G, backend="native"), repeats)
            native.SINGLE_THREAD_WORK = threshold
            times["reference_bf16"] = median_ms(lambda: orthogonalize(G, backend="reference", dtype=torch.bfloat16),
                                                repeats)
            times["defaults"] = median_ms(lambda: orthogonalize(G), repeats)
            row = {"shape": list(shape), "threads": torch.get_num_threads(), "busy": args.busy,
                   **{f"{k}_ms": v for k, v in times.items()}}
            rows.append(row)
            print(f"{str(shape):16s} reference {times['reference']:9.3f} ms;  vs reference: "
                  + "  ".join(f"{k} {v / times['reference']:.2f}" for k, v in times.items() if k != "reference"),
                  flush=True)
    finally:
        native.SINGLE_THREAD_WORK = threshold
        if loader:
            stop.set()
            loader.join()
    print(cpu.describe())
    bench.append_results(RESULTS, rows, bench.environment())


if __name__ == "__main__":
    main()
