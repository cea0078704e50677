"""The CPU compute dtype follows the hardware: bf16 where the CPU has bf16 matrix units
(AMX-BF16, AVX512-BF16), fp32 elsewhere; and the bf16 default is as accurate as the all-bf16
iteration that torch.optim.Muon runs."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

from fastmuon import cpu
from fastmuon.bench import torch_all_bf16_iteration
from fastmuon.plan import make_plan
from support.frameworks import TorchFramework
from support.spectral import exact_iteration, matrix_with_spectrum

torch = pytest.importorskip("torch")


@pytest.fixture
def bf16_cpu(monkeypatch):
    """This CPU as one with bf16 units, with the bf16 default for matrices of every size."""
    monkeypatch.setenv("FASTMUON_CPU_BF16", "1")
    # the module, not the function of the same name that fastmuon.torch exports
    module = importlib.import_module("fastmuon.torch.orthogonalize")
    monkeypatch.setattr(module, "BF16_MIN_WORK", 0)
    monkeypatch.setattr(module, "ONE_MATRIX_BF16_MIN_WORK", 0)


@pytest.mark.parametrize(
    "flags, expected",
    [({"avx2", "avx512_bf16"}, True), ({"amx_bf16", "amx_tile"}, True), ({"avx2", "avx512f"}, False), (set(), False)],
)
def test_bf16_units_are_read_from_the_cpu_flags_without_torch(monkeypatch, flags, expected):
    monkeypatch.delenv("FASTMUON_CPU_BF16", raising=False)
    monkeypatch.setitem(sys.modules, "torch", None)  # as in an MLX-only process
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(flags))
    assert cpu.has_fast_bf16_matmul() is expected
    assert ("CPU compute dtype: bf16" in cpu.describe()) is expected
    monkeypatch.setenv("FASTMUON_CPU_BF16", "0" if expected else "1")  # the override wins
    assert cpu.has_fast_bf16_matmul() is not expected


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, True), (False, True, True), (False, False, False)])
def test_with_torch_loaded_its_own_detection_answers(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.delenv("FASTMUON_CPU_BF16", raising=False)
    monkeypatch.setattr(cpu, "cpu_flags", frozenset)  # the kernel's flags say nothing: torch answers
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert cpu.has_fast_bf16_matmul() is expected


def test_default_compute_dtype_follows_the_hardware(monkeypatch):
    from fastmuon.torch.orthogonalize import BF16_MIN_WORK, ONE_MATRIX_BF16_MIN_WORK, default_compute_dtype

    monkeypatch.setenv("FASTMUON_CPU_BF16", "1")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert default_compute_dtype("cpu") == torch.bfloat16
    # per size: small matrices stay in fp32, where bf16 matmul's fixed cost dominates
    assert default_compute_dtype("cpu", (4, 64, 256)) == torch.float32
    assert default_compute_dtype("cpu", (1024, 256)) == torch.bfloat16
    assert 64 * 64 * 256 < BF16_MIN_WORK <= 256 * 256 * 1024
    # one matrix: bf16 from a smaller size (the native kernels cannot split a batch of one)
    assert 64 * 64 * 256 < ONE_MATRIX_BF16_MIN_WORK <= 256 * 256 * 256 < BF16_MIN_WORK
    assert default_compute_dtype("cpu", (256, 256)) == torch.bfloat16
    assert default_compute_dtype("cpu", (1, 256, 256)) == torch.bfloat16
    assert default_compute_dtype("cpu", (4, 256, 256)) == torch.float32
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # nothing to split: one threshold
    assert default_compute_dtype("cpu", (256, 256)) == torch.float32
    monkeypatch.setenv("FASTMUON_CPU_BF16", "0")
    assert default_compute_dtype("cpu") == torch.float32
    assert default_compute_dtype("cpu", (1024, 256)) == torch.float32


def test_auto_takes_the_reference_for_one_mid_size_fp32_matrix(monkeypatch):
    """"auto" in fp32 on the CPU: the native kernels, except one matrix in the size range where
    torch's reference on all threads was faster (ONE_MATRIX_REFERENCE_WORK), on more than one
    thread."""
    module = importlib.import_module("fastmuon.torch.orthogonalize")

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    fp32 = torch.float32
    assert module.select_backend("auto", torch.zeros(64, 256), fp32) == "native"
    assert module.select_backend("auto", torch.zeros(256, 256), fp32) == "reference"
    assert module.select_backend("auto", torch.zeros(1, 512, 256), fp32) == "reference"
    assert module.select_backend("auto", torch.zeros(2, 256, 256), fp32) == "native"  # a batch splits
    assert module.select_backend("auto", torch.zeros(768, 768), fp32) == "native"  # OpenBLAS's threads win
    assert module.select_backend("native", torch.zeros(256, 256), fp32) == "native"
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert module.select_backend("auto", torch.zeros(256, 256), fp32) == "native"


@pytest.mark.parametrize("threads", [1, 2])
def test_runs_native_is_select_backends_choice(monkeypatch, threads):
    """The optimizers ask ``runs_native`` from a stack's shape before building it; it answers as
    ``select_backend`` does for such a stack (and no for other devices and dtypes)."""
    module = importlib.import_module("fastmuon.torch.orthogonalize")
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    for backend in ("auto", "native", "reference"):
        for shape in [(64, 256), (256, 256), (1, 512, 256), (2, 256, 256), (768, 768), (3, 8, 8)]:
            for dtype in (torch.float32, torch.bfloat16):
                if backend == "native" and dtype != torch.float32:
                    continue  # select_backend raises: native computes in fp32
                chosen = module.select_backend(backend, torch.zeros(shape), dtype)
                assert module.runs_native(backend, "cpu", shape, dtype) == (chosen == "native"), (backend, shape)
        assert not module.runs_native(backend, "meta", (64, 256), torch.float32)


def test_bf16_default_is_the_bf16_reference_and_native_stays_fp32(bf16_cpu, rng):
    from fastmuon.torch import orthogonalize

    G = torch.tensor(rng.standard_normal((2, 48, 80)), dtype=torch.float32)
    default = orthogonalize(G)
    assert default.dtype == torch.float32
    assert torch.equal(default, orthogonalize(G, dtype=torch.bfloat16, backend="reference"))
    assert not torch.equal(default, orthogonalize(G, dtype=torch.float32, backend="reference"))
    assert torch.equal(orthogonalize(G, backend="native"), orthogonalize(G, backend="native", dtype=torch.float32))


def polar_factor(G64):
    U, _, Vt = np.linalg.svd(G64, full_matrices=False)
    return U @ Vt


@pytest.mark.parametrize("shape", [(96, 384), (384, 96), (128, 128), (520, 1040), (1040, 520)])
def test_bf16_default_is_as_accurate_as_an_all_bf16_iteration(bf16_cpu, shape):
    """fastmuon's bf16 default dtype (bf16 products with fp32 accumulation, norm in fp32), with
    Polar Express (the default method on these shapes but the two Gram-form ones), is no
    further from its float64 iteration than the same iteration run all in bf16, and closer to
    the polar factor U V^T than torch.optim.Muon's bf16 Newton-Schulz."""
    from fastmuon.torch import orthogonalize

    zeropower = pytest.importorskip("torch.optim._muon")._zeropower_via_newtonschulz
    fw = TorchFramework()
    plan = make_plan("polar_express", 5, None)
    for seed in range(3):
        G = fw.array(matrix_with_spectrum(np.random.default_rng(seed), shape, "sigma_min_1e-3"), "float32")
        G64 = fw.to_numpy(G)
        exact = exact_iteration(G64, plan.coefficients, plan.norm_scale, plan.eps)[0]
        ours = fw.to_numpy(orthogonalize(G, method="polar_express"))
        naive = fw.to_numpy(torch_all_bf16_iteration(G, plan))
        assert np.linalg.norm(ours - exact, ord=2) <= np.linalg.norm(naive - exact, ord=2)
        assert np.linalg.norm(ours - exact, ord=2) > 1e-3  # a bf16 result: fp32 would be far closer
        torch_muon = fw.to_numpy(zeropower(G, (3.4445, -4.7750, 2.0315), 5, 1e-7))
        UVt = polar_factor(G64)
        assert np.linalg.norm(ours - UVt, ord=2) < np.linalg.norm(torch_muon - UVt, ord=2)


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float32"])
def test_cpu_gram_from_upper_blocks(dtype_name):
    """From GRAM_BLOCKS_MIN_ROWS rows the CPU Gram matrix is formed from its upper 2 x 2 blocks:
    exactly symmetric, and each entry within the dot-product rounding bound of float64 X X^T
    (2 * n * u * |X| |X|^T for the accumulation, plus the output rounding), odd rows too."""
    import torch

    from fastmuon.torch.backends import reference

    dtype = getattr(torch, dtype_name)
    u = 2.0**-24  # fp32 accumulation
    u_out = {"bfloat16": 2.0**-8, "float32": 2.0**-24}[dtype_name]
    for m, n in [(reference.GRAM_BLOCKS_MIN_ROWS, 700), (reference.GRAM_BLOCKS_MIN_ROWS + 3, 600)]:
        X = torch.randn(2, m, n, generator=torch.Generator().manual_seed(m)).to(dtype)
        A = reference.TorchOps.xxt(X)
        assert torch.equal(A, A.mT)
        X64 = X.double()
        exact = X64 @ X64.mT
        bound = 2 * n * u * (X64.abs() @ X64.abs().mT) + u_out * exact.abs()
        assert ((A.double() - exact).abs() <= bound).all()


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float32"])
def test_cpu_square_plus_from_upper_blocks(dtype_name):
    """From SQUARE_BLOCKS_MIN_ROWS rows the CPU's b A + c A A of a single symmetric A is formed
    from its top rows and lower right block: the lower left is the top right mirrored, and each
    entry is within the rounding bound of the float64 result (2 * m * u * (|b| |A| + |c| |A| |A|)
    for the accumulation, plus the output rounding), odd rows too; a batch keeps the full
    product."""
    import torch

    from fastmuon.torch.backends import reference

    dtype = getattr(torch, dtype_name)
    u = 2.0**-24  # fp32 accumulation
    u_out = {"bfloat16": 2.0**-8, "float32": 2.0**-24}[dtype_name]
    b, c = -4.7750, 2.0315
    for m in (reference.SQUARE_BLOCKS_MIN_ROWS, reference.SQUARE_BLOCKS_MIN_ROWS + 3):
        X = torch.randn(1, m, m + 100, generator=torch.Generator().manual_seed(m)) / (m + 100) ** 0.5
        A = reference.TorchOps.xxt(X.to(dtype))
        B = reference.TorchOps.ba_plus_caa(A, alpha=c, beta=b)
        h = m // 2
        assert torch.equal(B[..., h:, :h], B[..., :h, h:].mT)
        A64 = A.double()
        exact = b * A64 + c * A64 @ A64
        bound = 2 * m * u * (abs(b) * A64.abs() + abs(c) * A64.abs() @ A64.abs()) + u_out * exact.abs()
        assert ((B.double() - exact).abs() <= bound).all()
    batch = torch.cat([A, A])
    assert torch.equal(reference.TorchOps.ba_plus_caa(batch, alpha=c, beta=b),
                       torch.baddbmm(batch, batch, batch, alpha=c, beta=b))


def test_cpu_symmetric_blocks_keep_autograd():
    """The blocks are written in place, which autograd cannot record: a Gram matrix or square
    that needs gradients takes the full product, and the gradient flows."""
    import torch

    from fastmuon.torch.backends import reference

    m = reference.SQUARE_BLOCKS_MIN_ROWS
    X = (torch.randn(1, m, m + 8, generator=torch.Generator().manual_seed(0)) / m).requires_grad_()
    A = reference.TorchOps.xxt(X)
    reference.TorchOps.ba_plus_caa(A, alpha=2.0, beta=-4.0).sum().backward()
    assert X.grad is not None and torch.isfinite(X.grad).all() and X.grad.abs().sum() > 0


def test_bf16_muon_step_matches_fp32_within_bf16_rounding(bf16_cpu, rng):
    """Muon with the bf16 default moves the weights like the fp32 step, to bf16 accuracy."""
    from fastmuon.torch import Muon

    W0 = torch.tensor(rng.standard_normal((64, 96)) * 0.1, dtype=torch.float32)
    G = torch.tensor(rng.standard_normal((64, 96)), dtype=torch.float32)
    steps = {}
    for name, ns_dtype in (("default", None), ("fp32", torch.float32)):
        p = torch.nn.Parameter(W0.clone())
        p.grad = G.clone()
        Muon([p], lr=0.02, ns_dtype=ns_dtype).step()
        steps[name] = (p.detach() - W0).double().numpy()
    # Both steps are lr * O (scale 1 for a wide matrix). The baseline: the same step with an
    # all-bf16 orthogonalization; the default must be within 1x of its distance to fp32.
    plan = make_plan("polar_express", 5, None)
    momentum = 0.05 * G + 0.95 * (0.05 * G)  # Nesterov after one step from zero momentum
    naive_step = -0.02 * torch_all_bf16_iteration(momentum, plan).double().numpy()
    difference = np.linalg.norm(steps["default"] - steps["fp32"], ord=2)
    baseline = np.linalg.norm(naive_step - steps["fp32"], ord=2)
    assert 1e-3 * baseline < difference <= baseline


@pytest.mark.parametrize("bf16_units", ["0", "1"])
def test_explain_says_when_an_explicit_bf16_has_no_hardware(monkeypatch, bf16_units):
    """bf16 asked for explicitly is honoured on every CPU; where the CPU has no bf16 matrix units
    (its bf16 products ~100x slower than fp32), explain() says so beside the backend it chose."""
    from fastmuon.torch import Muon

    monkeypatch.setenv("FASTMUON_CPU_BF16", bf16_units)
    weight = torch.nn.Parameter(torch.randn(32, 48, generator=torch.Generator().manual_seed(0)))
    weight.grad = torch.randn(32, 48, generator=torch.Generator().manual_seed(1))
    opt = Muon([weight], ns_dtype=torch.bfloat16)
    opt.step()
    (route,) = opt.explain()
    assert route.compute_dtype == "bfloat16" and route.backend == "reference"
    assert ("no bf16 matrix units" in route.why) == (bf16_units == "0")
