"""How far bf16 orthogonalizations of the GPT-2-small block's matrices land from the float64
iteration, on the CPU: the all-bf16 iteration (every value in bf16, the bound the bf16 default
must keep), fastmuon's bf16 default (bf16 products with fp32 accumulation, norm in fp32), and the
Gram-space iteration in bf16 with a restart after every second or third step, or none. The
Gram-space iteration does fewer flops on wide matrices; this is the measurement of whether bf16
can afford it.

Inputs: singular values from 1e-3 to 1 (log-spaced) and Gaussian matrices. The error is the
spectral norm of the difference to U p(S / norm) V^T (the exact Polar Express iteration,
computed from the float64 SVD). Appends to bench/results/bf16_accuracy.jsonl.

    python bench/bench_bf16_accuracy.py [--seeds 1]
"""

from __future__ import annotations

import argparse
import os
from unittest import mock

import numpy as np
import torch

from fastmuon import bench, plan as plan_module
from fastmuon.coefficients import apply_scalar
from fastmuon.plan import make_plan
from fastmuon.torch import orthogonalize
from fastmuon.torch.backends import reference

SHAPES = ((2304, 768), (768, 768), (3072, 768), (768, 3072))
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bf16_accuracy.jsonl")


def test_matrix(rng: np.random.Generator, shape, kind: str) -> np.ndarray:
    if kind == "gaussian":
        return rng.standard_normal(shape)
    m, n = shape
    r = min(m, n)
    U, _ = np.linalg.qr(rng.standard_normal((m, r)))
    V, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return (U * np.logspace(-3, 0, r)) @ V.T


def exact_iteration(G: np.ndarray, plan) -> np.ndarray:
    U, S, Vt = np.linalg.svd(G, full_matrices=False)
    x = S / (np.linalg.norm(S) * plan.norm_scale + plan.eps)
    return (U * apply_scalar(plan.coefficients, x)) @ Vt


def gram_bf16(G: torch.Tensor, restart_every: int) -> torch.Tensor:
    with mock.patch.object(plan_module, "GRAM_RESTART_EVERY", restart_every):
        return reference.orthogonalize(G, make_plan("gram", 5, None), torch.bfloat16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    plan = make_plan("polar_express", 5, None)
    candidates = {
        "all_bf16_iteration": lambda G: bench.torch_all_bf16_iteration(G, plan),
        "fastmuon_bf16_default": lambda G: orthogonalize(G, dtype=torch.bfloat16),
        "gram_bf16_restart_every_2": lambda G: gram_bf16(G, 2),
        "gram_bf16_restart_every_3": lambda G: gram_bf16(G, 3),
        "gram_bf16_no_restart": lambda G: gram_bf16(G, 99),
    }
    rows = []
    for kind in ("sigma_min_1e-3", "gaussian"):
        for shape in SHAPES:
            for seed in range(args.seeds):
                G = torch.tensor(test_matrix(np.random.default_rng(seed), shape, kind), dtype=torch.float32)
                exact = exact_iteration(G.double().numpy(), plan)
                errors = {name: float(np.linalg.norm(f(G).double().numpy() - exact, ord=2))
                          for name, f in candidates.items()}
                rows.append({"input": kind, "shape": list(shape), "seed": seed, "spectral_error": errors})
                print(f"{kind:15s} {str(shape):12s} " + "  ".join(f"{k} {v:.4f}" for k, v in errors.items()),
                      flush=True)
    bench.append_results(args.out, rows, bench.environment())


if __name__ == "__main__":
    main()
