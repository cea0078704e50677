"""The measurement helpers behind `python -m fastmuon bench` and bench/, and that command."""

import importlib.util
import io
import re
import sys
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


def sleeping_provider(method, seconds, calls=None, name="test/sleep", slow=False):
    """A provider that sleeps ``seconds`` a call (noting (name, shape) in ``calls``) and returns its input."""

    def run(G):
        if calls is not None:
            calls.append((name, G.shape))
        time.sleep(seconds)
        return G

    return bench.Provider(name, method, lambda G: G, run, lambda O: O.astype(np.float64), slow=slow)


def shapes_by_method(rows):
    found = {}
    for r in rows:
        found.setdefault(r["method"], []).append(tuple(r["shape"]))
    return found


TINY_BLOCK = [(8, 6), (6, 6), (6, 8)]


def test_a_budget_leaves_out_whole_methods_never_shapes():
    # 4 methods x 3 shapes x (warm-up + 1 run) x 0.04 s = 0.96 s without a budget
    provs = [sleeping_provider(method, 0.04) for method in bench.METHODS]
    budget = 0.5
    start = time.perf_counter()
    rows, left_out = bench.measure_in_budget(provs, TINY_BLOCK, budget, repeats=1)
    elapsed = time.perf_counter() - start
    measured = shapes_by_method(rows)
    assert all(shapes == TINY_BLOCK for shapes in measured.values())  # each method on every shape
    assert next(iter(measured)) == bench.METHODS[0] and 1 <= len(measured) < len(bench.METHODS)
    # each later method is judged on its own: a cheaper one (aol, 4 steps) may fit after one that did not
    skipped = [line.split(" ")[0] for line in left_out]
    assert sorted([*measured, *skipped], key=bench.METHODS.index) == list(bench.METHODS)
    assert elapsed <= 1.5 * budget, (elapsed, left_out)


def test_a_spent_budget_still_measures_the_first_method_on_every_shape():
    provs = [sleeping_provider(method, 0.0) for method in bench.METHODS]
    rows, left_out = bench.measure_in_budget(provs, TINY_BLOCK, 0.0, repeats=1)
    assert shapes_by_method(rows) == {bench.METHODS[0]: TINY_BLOCK}
    assert len(left_out) == len(bench.METHODS) - 1
    # without a budget nothing is left out
    rows, left_out = bench.measure_in_budget(provs, TINY_BLOCK, None, repeats=1)
    assert len(rows) == len(provs) * len(TINY_BLOCK) and left_out == []
    assert len(bench.measure(provs, TINY_BLOCK, repeats=1)) == len(rows)  # measure: no budget


def test_quick_runs_slow_providers_alone_on_square_shapes_when_they_fit():
    calls = []
    provs = [sleeping_provider("polar_express", 0.0, calls, name="test/fast"),
             sleeping_provider("polar_express", 0.01, calls, name="test/slow", slow=True)]
    rows, left_out = bench.measure_in_budget(provs, TINY_BLOCK, None, repeats=1, quick=True)
    assert [(r["provider"], tuple(r["shape"])) for r in rows] == [("test/fast", s) for s in TINY_BLOCK] + [
        ("test/slow", (6, 6))]
    names = [name for name, _ in calls]
    assert names == sorted(names)  # every fast call before the first slow one: they never take turns
    assert left_out == []
    # a slow case predicted not to fit is left out, and says so; the fast ones still run
    rows, left_out = bench.measure_in_budget(provs, TINY_BLOCK, 0.0, repeats=1, quick=True)
    assert {r["provider"] for r in rows} == {"test/fast"}
    assert len(left_out) == 1 and left_out[0].startswith("test/slow polar_express on 6x6 (predicted")


def test_predicted_seconds_scale_a_small_call_by_the_work():
    calls = []
    prov = sleeping_provider("polar_express", 0.01, calls)
    predicted = bench.predicted_seconds(prov, (64, 96), repeats=2)
    assert calls == [("test/sleep", (16, 16))]  # one call, a quarter of the smaller side
    factor = bench.dense_flops((64, 96)) / bench.dense_flops((16, 16)) * 3
    assert 0.01 * factor <= predicted <= 0.01 * factor * 5


def test_singular_values_agree_with_the_svd():
    rng = np.random.default_rng(1)
    for shape in [(30, 12), (12, 30), (9, 9)]:
        A = rng.standard_normal(shape)
        expected = np.sort(np.linalg.svd(A, compute_uv=False))
        assert np.allclose(bench.singular_values(A), expected, rtol=1e-10, atol=1e-10)


def test_polar_errors_with_a_precomputed_polar_factor():
    rng = np.random.default_rng(2)
    G, O = rng.standard_normal((20, 8)), rng.standard_normal((20, 8))
    assert bench.polar_errors(G, O, bench.polar_factor(G)) == bench.polar_errors(G, O)
    U, _, Vt = np.linalg.svd(G, full_matrices=False)
    expected = np.linalg.norm(O - U @ Vt, ord=2)
    assert bench.polar_errors(G, O)["polar_err"] == pytest.approx(expected, rel=1e-10)


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


# ------------------------------------------------------------------ python -m fastmuon bench
def run_bench(argv, capsys):
    """(stdout, stderr, seconds) of ``python -m fastmuon bench argv``, in this process."""
    start = time.perf_counter()
    assert bench.main(argv) == 0
    seconds = time.perf_counter() - start
    out, err = capsys.readouterr()
    return out, err, seconds


def block_table(stdout):
    """{(provider, method): the cells of its row} of the 'whole block' table."""
    lines = stdout.split("\nwhole block", 1)[1].splitlines()[2:]  # after its title and header
    rows = {}
    for line in lines:
        cells = line.split()
        if len(cells) != 5 or "/" not in cells[0]:
            break
        rows[(cells[0], cells[1])] = cells[2:]
    return rows


def table_cases(stdout):
    """{(provider, method): shapes} of the per-shape table."""
    cases = {}
    for line in stdout.split("\nwhole block", 1)[0].splitlines():
        match = re.match(r"(\S+/\S+)\s+(\w+) \d+\s+(\d+x\d+) ", line)
        if match:
            cases.setdefault(match.group(1, 2), []).append(match.group(3))
    return cases


FRAMEWORK_CHOICES = [["torch"], ["mlx"], ["torch", "mlx"]]


@pytest.mark.parametrize("frameworks", FRAMEWORK_CHOICES, ids="+".join)
def test_quick_bench_fills_every_block_row(frameworks, capsys, monkeypatch):
    for name in frameworks:
        pytest.importorskip(name)
    monkeypatch.setitem(sys.modules, "tqdm", None)  # progress must show without it
    shapes = ["48x32", "32x32", "32x48"]
    budget = 20.0
    out, err, seconds = run_bench(["--quick", "--budget", str(budget), "--frameworks", *frameworks,
                                   "--shapes", *shapes], capsys)
    assert seconds <= 1.5 * budget
    provs = bench.providers(frameworks=frameworks)
    block_providers = {(p.name, p.method) for p in provs if not p.slow}
    totals = block_table(out)
    assert set(totals) == block_providers  # every provider and method, nothing left out for time
    cases = table_cases(out)
    assert all(cases[key] == shapes for key in block_providers)
    for seconds_cell, ratio_cell, polar_err_cell in totals.values():  # every cell a number
        float(seconds_cell), float(polar_err_cell)
        if "torch" in frameworks:
            float(ratio_cell)
        else:
            assert ratio_cell == "-"  # no baseline without torch
    slow = {p.name for p in provs if p.slow}
    assert all(cases[(p.name, p.method)] == ["32x32"] for p in provs if p.slow)
    assert ("measured on some shapes only" in out) == bool(slow)
    assert "left out" not in out
    slow_cases = sum(1 for p in provs if p.slow)  # one shape each
    assert re.search(rf"^bench: {len(block_providers) * 3 + slow_cases}/\d+ cases", err, re.M), err


def test_quick_bench_keeps_to_a_budget_that_binds(capsys, monkeypatch):
    # 4 methods x 3 shapes x (warm-up + 1 run) x 0.06 s = 1.4 s without the budget
    fakes = [sleeping_provider(method, 0.06) for method in bench.METHODS]
    monkeypatch.setattr(bench, "providers", lambda methods, frameworks: fakes)
    monkeypatch.setattr(bench, "sgemm_gflops", lambda repeats: None)
    budget = 0.8
    out, _, seconds = run_bench(["--quick", "--budget", str(budget), "--shapes", "8x6", "6x6", "6x8"], capsys)
    assert seconds <= 1.5 * budget
    totals, cases = block_table(out), table_cases(out)
    assert 1 <= len(totals) < len(fakes) and set(totals) == set(cases)
    assert all(shapes == ["8x6", "6x6", "6x8"] for shapes in cases.values())
    left_out = out.split("(--budget to change it):\n", 1)[1].splitlines()
    assert {line.split()[0] for line in left_out if line.startswith("  ")} == (
        set(bench.METHODS) - {method for _, method in totals})


def test_compute_dtype_is_each_frameworks_own(monkeypatch):
    """On a CPU with bf16 units torch's reference computes in bf16 where MLX on the CPU stays
    fp32: each provider reports its own framework's choice, not torch's for all."""
    monkeypatch.setenv("FASTMUON_CPU_BF16", "1")
    installed = bench.installed_frameworks()
    if not installed:
        pytest.skip("no framework installed")
    shape = (768, 3072)
    seen = {}
    for prov in bench.providers(frameworks=installed):
        if prov.name == bench.BASELINE:
            continue
        framework, backend = prov.name.split("/")
        if framework == "torch":
            from fastmuon.torch.orthogonalize import resolve_compute_dtype

            expected = resolve_compute_dtype(None, backend, "cpu", shape, prov.method)
        else:
            from fastmuon.mlx.orthogonalize import resolve_compute_dtype

            expected = resolve_compute_dtype(None, prov.method)
        assert prov.compute_dtype(shape) == bench.dtype_name(expected), prov
        seen.setdefault(framework, set()).add(prov.compute_dtype(shape))
    rows = [{"provider": p.name, "method": p.method, "dtype": p.compute_dtype(shape)}
            for p in bench.providers(frameworks=installed)]
    line = bench.compute_dtype_line(rows)
    for framework, dtypes in seen.items():
        assert all(d in line for d in dtypes)
    if "mlx" in seen:
        assert not any("bf16" in part for part in line.split(", ") if part.startswith("mlx/"))


def test_compute_dtype_line_names_the_methods_that_differ():
    rows = [{"provider": "torch/reference", "method": m, "dtype": d}
            for m, d in [("newton_schulz", "bf16"), ("gram", "fp32"), ("aol", "bf16")]]
    assert bench.compute_dtype_line(rows) == "compute dtype: torch/reference bf16 (gram fp32)"


def test_progress_prints_counts_without_optional_packages():
    stream = io.StringIO()
    progress = bench.Progress(5, label="bench", every=0.0, stream=stream)
    progress.update(2, "polar_express on 6x6")
    progress.skip(1)
    progress.update(2)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("bench: 2/5 cases") and lines[0].endswith("; polar_express on 6x6")
    assert lines[-1].startswith("bench: 4/4 cases")
    quiet = io.StringIO()
    bench.Progress(3, enabled=False, every=0.0, stream=quiet).update(3)
    assert quiet.getvalue() == ""


def test_unknown_framework_or_bad_shape_is_a_usage_error(capsys):
    for argv in (["--frameworks", "jax"], ["--shapes", "768"], ["--shapes", "0x4"]):
        with pytest.raises(SystemExit) as exit_info:
            bench.main(argv)
        assert exit_info.value.code == 2
    assert "'768' is not a shape ROWSxCOLS" in capsys.readouterr().err
    missing = [name for name in bench.FRAMEWORKS if importlib.util.find_spec(name) is None]
    if missing:
        with pytest.raises(SystemExit):
            bench.main(["--frameworks", missing[0]])
        assert f"{missing[0]} is not installed" in capsys.readouterr().err


def test_environment_names_the_cpu_generation(monkeypatch, tmp_path):
    """Rows from two "AMD EPYC" machines generations apart (AVX2 only, or AVX512 with bf16) must
    be told apart: the environment records vendor, family, model and the widest vector unit."""
    from fastmuon import bench_report, cpu

    info = tmp_path / "cpuinfo"
    info.write_text("vendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 49\nmodel name\t: AMD EPYC\n"
                    "flags\t\t: fpu sse4_2 avx avx2 fma\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(info if path == "/proc/cpuinfo" else path,
                                                                          *a, **k))
    caches = (cpu._cpuinfo, cpu.cpu_flags, cpu.cpu_identity)
    for cache in caches:
        cache.cache_clear()
    try:
        assert cpu.cpu_identity() == "AuthenticAMD family 23 model 49, avx2"
        assert bench_report.environment()["cpu"] == "AuthenticAMD family 23 model 49, avx2"
    finally:
        for cache in caches:
            cache.cache_clear()
