"""The measurement helpers behind `python -m fastmuon bench` and bench/."""

import time

import numpy as np
import pytest

from fastmuon import bench


def test_dense_flop_count_uses_the_smaller_side():
    assert bench.dense_flops((768, 3072), steps=1) == 4 * 768**2 * 3072 + 2 * 768**3
    assert bench.dense_flops((3072, 768), steps=5) == bench.dense_flops((768, 3072), steps=5)


def test_polar_errors_of_exact_and_scaled_polar_factor():
    rng = np.random.default_rng(0)
    G = rng.standard_normal((6, 9))
    U, _, Vt = np.linalg.svd(G, full_matrices=False)
    exact = bench.polar_errors(G, U @ Vt)
    assert exact["polar_err"] < 1e-12 and exact["orth_err"] < 1e-12
    half = bench.polar_errors(G, 0.5 * U @ Vt)
    assert half["polar_err"] == pytest.approx(0.5) and half["orth_err"] == pytest.approx(0.5)


def test_baseline_matches_jordan_iteration_in_float64():
    torch = pytest.importorskip("torch")
    from fastmuon.torch import orthogonalize

    G = torch.randn(20, 12, dtype=torch.float64)
    ours = orthogonalize(G, method="newton_schulz", backend="reference", dtype=torch.float64)
    theirs = bench.torch_newton_schulz_addmm(G.float()).double()
    assert torch.linalg.matrix_norm(ours - theirs, ord=2) < 1e-4  # fp32 baseline vs fp64


def test_ratios_and_block_totals():
    rows = [
        {"provider": bench.BASELINE, "method": "newton_schulz", "shape": [2, 4], "seconds": 2.0, "polar_err": 0.3},
        {"provider": bench.BASELINE, "method": "newton_schulz", "shape": [4, 2], "seconds": 2.0, "polar_err": 0.3},
        {"provider": "torch/native", "method": "gram", "shape": [2, 4], "seconds": 1.0, "polar_err": 0.1},
        {"provider": "torch/native", "method": "gram", "shape": [4, 2], "seconds": 0.5, "polar_err": 0.2},
        {"provider": "mlx/reference", "method": "gram", "shape": [4, 2], "seconds": 9.0, "polar_err": 0.2},
    ]
    bench.with_ratios(rows)
    assert rows[2]["vs_baseline"] == 0.5 and rows[3]["vs_baseline"] == 0.25
    totals = {t["provider"]: t for t in bench.block_totals(rows, [(2, 4), (4, 2)])}
    assert set(totals) == {bench.BASELINE, "torch/native"}  # mlx/reference lacks a shape
    assert totals["torch/native"]["vs_baseline"] == pytest.approx(1.5 / 4.0)
    assert totals["torch/native"]["polar_err"] == 0.2


def test_time_budget_leaves_out_the_cases_after_it():
    calls = []

    def slow(G):
        calls.append(1)
        time.sleep(0.02)
        return G

    provider = bench.Provider("test/slow", "polar_express", lambda G: G, slow, lambda O: O)
    shapes = [(4, 4), (4, 6), (6, 4)]
    rows = bench.measure([provider], shapes, repeats=1, budget=0.0)
    assert len(rows) == 1 and rows[-1]["skipped_for_budget"] == 2
    assert len(bench.measure([provider], shapes, repeats=1)) == 3


def test_vs_sgemm_is_the_rate_over_the_sgemm_rate():
    row = {"provider": "p", "method": "m", "shape": [4, 4], "seconds": 1.0, "gflops": 300.0, "vs_baseline": 0.5,
           "polar_err": 0.1, "orth_err": 0.1}
    table = bench.format_table([row], peak=150.0)
    assert "vs sgemm" in table and "  2.00" in table


def test_iteration_flops_count_each_presets_products():
    """Dense: the standard iteration's steps * (4 m^2 n + 2 m^3) (AOL reuses its Gram matrix, so
    4 AOL steps are 4 standard ones); issued: the symmetric products at half, steps *
    (3 m^2 n + m^3); the Gram iteration does less for m << n."""
    from fastmuon.bench import dense_flops
    from fastmuon.flops import iteration_flops

    m, n = 48, 200
    assert iteration_flops("polar_express", 5, (n, m)) == (dense_flops((m, n)), 5 * (3.0 * m * m * n + m**3))
    assert iteration_flops("aol", 4, (m, n)) == (dense_flops((m, n), steps=4), 4 * (3.0 * m * m * n + m**3))
    assert iteration_flops("polar_express", 5, (3, m, n))[0] == 3 * dense_flops((m, n))
    assert iteration_flops("gram", 5, (m, n))[1] < iteration_flops("polar_express", 5, (m, n))[1]
