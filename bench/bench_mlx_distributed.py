"""Inside a 2-process mlx.distributed run: one Muon step on eight 768x768 matrices (each process
orthogonalizes four and an all_gather shares them) against orthogonalizing all eight in one
process of the same run. Appends to bench/results/mlx_distributed.jsonl.

    OPENBLAS_NUM_THREADS=1 .venv/bin/mlx.launch -n 2 --backend ring --python .venv/bin/python \\
        bench/bench_mlx_distributed.py

(one BLAS thread a process: the two processes share this machine's cores)
"""

from __future__ import annotations

import os

import mlx.core as mx
import numpy as np

import fastmuon.mlx as fm
from fastmuon import bench

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "mlx_distributed.jsonl")
REPEATS = 5


def main() -> None:
    group = mx.distributed.init()
    rng = np.random.default_rng(0)
    params = {f"w{i}": mx.array(rng.standard_normal((768, 768)).astype(np.float32) * 0.02) for i in range(8)}
    grads = {k: mx.array(rng.standard_normal((768, 768)).astype(np.float32)) for k in params}
    opt = fm.Muon(0.02)

    def step():
        mx.eval(opt.apply_gradients(grads, params), opt.state)

    stack = mx.stack(list(grads.values()))

    def orthogonalize_all():
        mx.eval(fm.orthogonalize(stack))

    step_s = bench.median_time(step, REPEATS)[0]
    all_s = bench.median_time(orthogonalize_all, REPEATS)[0]
    if group.rank() == 0:
        row = {"processes": group.size(), "matrices": 8, "shape": [768, 768], "step_seconds": step_s,
               "orthogonalize_all_seconds": all_s, "ratio": step_s / all_s,
               "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS")}
        print(f"{group.size()} processes: Muon step {step_s:.3f} s, orthogonalizing all eight {all_s:.3f} s, "
              f"ratio {step_s / all_s:.2f}", flush=True)
        bench.append_results(RESULTS, [row], bench.environment())


if __name__ == "__main__":
    main()
