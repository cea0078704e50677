"""Tests of the Triton backend: the symmetric kernels (X X^T, X^T X, alpha A A + beta A), their
torch.library operators and ``orthogonalize(..., backend="triton")``.

Without a CUDA device the kernels run on CPU tensors under the Triton interpreter
(TRITON_INTERPRET=1, set here before any kernel module is imported; the other test modules do
not use Triton). With one, the same tests run on the GPU. Under the interpreter:

* fp32 dot products are numpy's fp32 matmul; on GPUs the kernels use exact-fp32 ("ieee") dots
  while torch's fp32 matmul precision is "highest" (its default), so the fp32 bounds below hold
  on both. 16-bit inputs: products are exact in the fp32 accumulator on both (the interpreter's
  broken bf16 dot is avoided by upcasting tiles first; see ``triton_common``).
* Kernel bounds are the derived dot-product bound of ``native_helpers`` (k u32 |X||X|^T, times
  2) plus the output dtype's rounding; orthogonalize uses ``check_against_exact`` with the unit
  roundoff of the compute dtype the run uses.
* Autotuning is off (one configuration), and tl.device_assert and out-of-bounds checks are
  inert: NaN-poisoned outputs and exact results are what show that every entry is written and
  no masked lane leaks in.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton", reason="triton is not installed (make test-triton adds it; CUDA torch brings it)")
import triton.language as tl  # noqa: E402
import torch.utils._python_dispatch  # noqa: E402

from fastmuon import tiles as host_tiles  # noqa: E402
from fastmuon import coefficients as coef  # noqa: E402
from fastmuon.plan import make_plan  # noqa: E402
from fastmuon.torch import ba_plus_caa, orthogonalize, xxt  # noqa: E402
from fastmuon.torch.orthogonalize import select_backend  # noqa: E402
from fastmuon.torch.backends import triton_backend, triton_common  # noqa: E402
from fastmuon.torch.backends.reference import through_operators  # noqa: E402
from fastmuon.torch.backends.triton_ba_plus_caa import ba_plus_caa_ref, launch_ba_plus_caa  # noqa: E402
from fastmuon.torch.backends.triton_common import GPU_CONFIGS, INTERPRETER_CONFIG, TileConfig, grid_for, upper_tile  # noqa: E402
from fastmuon.torch.backends.triton_xtx import launch_xtx, xtx_ref  # noqa: E402
from fastmuon.torch.backends.triton_xxt import launch_xxt, xxt_ref  # noqa: E402

from support.frameworks import FRAMEWORKS  # noqa: E402
from support.seeds import stable_seed  # noqa: E402
from support.native_helpers import assert_exactly_symmetric, assert_within_dot_bound  # noqa: E402
from support.spectral import SPECTRA, matrix_with_spectrum  # noqa: E402
from test_orthogonalize import check_against_exact  # noqa: E402

if not ON_GPU and not triton_common.INTERPRETED:
    pytest.skip(
        "no CUDA device, and fastmuon's Triton kernels were imported before TRITON_INTERPRET=1 was set",
        allow_module_level=True,
    )

ortho = importlib.import_module("fastmuon.torch.orthogonalize")  # the module, not the function
DEVICE = "cuda" if ON_GPU else "cpu"
METHODS = ("newton_schulz", "polar_express", "gram", "aol")
# (dtype, unit roundoff of the output, half the smallest subnormal spacing)
DTYPES = [
    (torch.float32, 0.0, 0.0),
    (torch.bfloat16, 2.0**-8, 2.0**-134),
    (torch.float16, 2.0**-11, 2.0**-25),
]
# Small tiles (several per matrix, ragged edges) next to the default configuration: one large
# tile under the interpreter, autotuned on GPUs.
CONFIGS = [None, TileConfig(block_m=32, block_k=32)]
CONFIG_IDS = ["default", "32x32"]


def _ids(shape):
    return "x".join(map(str, shape))


def _np(t) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def _dtype_id(entry):
    return str(entry[0]).removeprefix("torch.")


def _symmetric(rng, shape, dtype=torch.float32) -> torch.Tensor:
    """Exactly symmetric matrices in ``dtype`` (the mean of x and x^T rounds the same both ways)."""
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    return ((x + x.mT) / 2).to(dtype).to(DEVICE)


def _assert_gram(c, x, k, u_out=0.0, eta_out=0.0, transpose=False):
    """c == x x^T (or x^T x) within the dot-product bound for k terms, against the kernels'
    float64 references (``scale`` is the same product of absolute values)."""
    ref_fn = xtx_ref if transpose else xxt_ref
    x = x.cpu()
    ref, scale = ref_fn(x).numpy(), ref_fn(x.abs()).numpy()
    assert_within_dot_bound(_np(c), ref, scale, k, u_out=u_out, eta_out=eta_out)


def _assert_ba_plus_caa(c, a, alpha, beta, u_out=0.0, eta_out=0.0):
    """c == alpha a a + beta a within the bound for k = m + 2 terms; alpha, beta in fp32."""
    al, be = float(np.float32(alpha)), float(np.float32(beta))
    a = a.cpu()
    ref = ba_plus_caa_ref(a, al, be).numpy()
    scale = ba_plus_caa_ref(a.abs(), abs(al), abs(be)).numpy()
    assert_within_dot_bound(_np(c), ref, scale, a.shape[-1] + 2, u_out=u_out, eta_out=eta_out)


# ------------------------------------------------------------- the tile schedule --


def _brute_force_schedule(tiles):
    """Every tile (i, j), i <= j < tiles, column by column: what program p must compute."""
    return [(i, j) for j in range(tiles) for i in range(j + 1)]


# The tile sizes the Triton kernels launch with (interpreter and GPU autotuning candidates).
BLOCK_MS = sorted({INTERPRETER_CONFIG.block_m} | {c.block_m for c in GPU_CONFIGS})


@pytest.mark.parametrize("block", BLOCK_MS)
@pytest.mark.parametrize("tiles", [1, 2, 3, 7, 40])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "ragged"])
def test_schedule_is_the_upper_triangle_once(tiles, block, ragged):
    """The schedule and launch grid of ``fastmuon.tiles`` at the Triton tile sizes, against
    brute force; a ragged m has a last tile row of one entry."""
    m = (tiles - 1) * block + 1 if ragged else tiles * block
    assert host_tiles.tiles_per_side(m, block) == tiles
    pairs = host_tiles.tile_schedule(m, block)
    assert len(pairs) == host_tiles.upper_tile_count(m, block) == tiles * (tiles + 1) // 2
    assert set(pairs) == {(i, j) for i in range(tiles) for j in range(i, tiles)}
    assert pairs == _brute_force_schedule(tiles)
    programs = 3 * tiles * (tiles + 1) // 2  # a batch of 3
    assert grid_for(3, m, TileConfig(block, 32)) == (programs,)
    assert grid_for(3, m, None)(dict(BLOCK_M=block)) == (programs,)


@triton.jit
def _schedule_probe(P, I, J, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    i, j = upper_tile(tl.load(P + offs, mask=mask, other=0))
    tl.store(I + offs, i, mask=mask)
    tl.store(J + offs, j, mask=mask)


def test_kernel_schedule_arithmetic_matches_exact_integers():
    """The kernels' float square root plus integer correction gives the exact schedule: every
    program of a 300 x 300 tile grid against brute force, then program ids next to triangular
    numbers up to ~2^31 (T ~ 65000 tiles) against ``fastmuon.tiles.upper_tile``, whose integer
    correction makes it exact whatever the square root."""
    brute = _brute_force_schedule(300)
    t = np.unique(np.concatenate([np.arange(0, 300), np.geomspace(300, 65000, 400).astype(np.int64)]))
    tri = t * (t + 1) // 2
    p = np.unique(np.concatenate([np.arange(len(brute)), tri, tri + 1, np.maximum(tri - 1, 0), tri + t]))
    p = p[p < 2**31 - 1].astype(np.int32)
    P = torch.from_numpy(p).to(DEVICE)
    I, J = torch.empty_like(P), torch.empty_like(P)
    _schedule_probe[(triton.cdiv(p.size, 1024),)](P, I, J, p.size, BLOCK=1024)
    exact = np.array([host_tiles.upper_tile(int(v)) for v in p], dtype=np.int64)
    i_exact, j_exact = exact[:, 0], exact[:, 1]
    np.testing.assert_array_equal(J.cpu().numpy(), j_exact)
    np.testing.assert_array_equal(I.cpu().numpy(), i_exact)
    assert np.all((0 <= i_exact) & (i_exact <= j_exact))
    np.testing.assert_array_equal(p.astype(np.int64), j_exact * (j_exact + 1) // 2 + i_exact)
    dense = p < len(brute)  # p is sorted and holds every id below len(brute)
    np.testing.assert_array_equal(np.stack([I.cpu().numpy()[dense], J.cpu().numpy()[dense]], axis=1), brute)


LAUNCHERS = {
    "xxt": lambda x, out, **kw: launch_xxt(x, out, **kw),
    "xtx": lambda x, out, **kw: launch_xtx(x, out, **kw),
    "ba_plus_caa": lambda x, out, **kw: launch_ba_plus_caa(x, out, 0.5, -1.5, **kw),
}


@pytest.mark.parametrize("kernel", sorted(LAUNCHERS))
@pytest.mark.parametrize("m,block", [(70, 16), (64, 16), (33, 32), (16, 32)], ids=str)
def test_only_upper_tiles_are_computed(kernel, m, block, rng):
    """Each kernel counts the tiles it computes: every tile on or above the diagonal exactly once,
    none below: T (T + 1) / 2 of the T^2 tiles."""
    batch = 2
    shape = {"xxt": (batch, m, 24), "xtx": (batch, 24, m), "ba_plus_caa": (batch, m, m)}[kernel]
    x = _symmetric(rng, shape) if kernel == "ba_plus_caa" else torch.randn(shape).to(DEVICE)
    tiles = host_tiles.tiles_per_side(m, block)
    counts = torch.zeros((batch, tiles, tiles), dtype=torch.int32, device=DEVICE)
    out = torch.full((batch, m, m), float("nan"), device=DEVICE)
    LAUNCHERS[kernel](x, out, config=TileConfig(block, 32), tile_map=counts)
    expected = np.triu(np.ones((tiles, tiles), dtype=np.int32))
    np.testing.assert_array_equal(counts.cpu().numpy(), np.broadcast_to(expected, counts.shape))
    assert int(counts.sum()) == batch * tiles * (tiles + 1) // 2
    assert not torch.isnan(out).any()
    assert_exactly_symmetric(_np(out))


# ------------------------------------------------------------------ X X^T kernel --

XXT_SHAPES = [(1, 1, 1), (1, 70, 45), (1, 33, 100), (3, 45, 70), (2, 100, 33), (2, 5, 0)]


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("dtype,u_out,eta_out", DTYPES, ids=[_dtype_id(d) for d in DTYPES])
@pytest.mark.parametrize("shape", XXT_SHAPES, ids=_ids)
def test_xxt_kernel(shape, dtype, u_out, eta_out, config, rng):
    x = torch.from_numpy(rng.standard_normal(shape)).to(dtype).to(DEVICE)
    before = x.clone()
    out = torch.full(shape[:2] + shape[1:2], float("nan"), dtype=dtype, device=DEVICE)  # poisoned
    launch_xxt(x, out, config=config)
    assert not torch.isnan(out).any(), "output not fully written"
    assert torch.equal(x, before)
    _assert_gram(out, x, shape[-1], u_out, eta_out)
    assert_exactly_symmetric(_np(out))


XTX_SHAPES = [(1, 45, 70), (2, 100, 33), (1, 20, 37)]


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("dtype,u_out,eta_out", DTYPES, ids=[_dtype_id(d) for d in DTYPES])
@pytest.mark.parametrize("shape", XTX_SHAPES, ids=_ids)
def test_xtx_kernel(shape, dtype, u_out, eta_out, config, rng):
    x = torch.from_numpy(rng.standard_normal(shape)).to(dtype).to(DEVICE)  # (B, K, M)
    b, _, m = shape
    out = torch.full((b, m, m), float("nan"), dtype=dtype, device=DEVICE)
    launch_xtx(x, out, config=config)
    assert not torch.isnan(out).any(), "output not fully written"
    _assert_gram(out, x, shape[1], u_out, eta_out, transpose=True)
    assert_exactly_symmetric(_np(out))


# ------------------------------------------------------- alpha A A + beta A kernel --

# (alpha, beta): the Polar Express first step (c, b), Jordan's quintic, and pure terms.
ALPHA_BETA = [(15.878769915207462, -22.48329292557795), (2.0315, -4.7750), (1.0, 0.0), (0.0, 1.0)]
SQUARE_SHAPES = [(1, 1, 1), (1, 45, 45), (1, 70, 70), (3, 33, 33)]


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("alpha,beta", ALPHA_BETA, ids=str)
@pytest.mark.parametrize("shape", SQUARE_SHAPES, ids=_ids)
def test_ba_plus_caa_kernel(shape, alpha, beta, config, rng):
    a = _symmetric(rng, shape)
    before = a.clone()
    out = torch.full(shape, float("nan"), device=DEVICE)
    launch_ba_plus_caa(a, out, alpha, beta, config=config)
    assert not torch.isnan(out).any(), "output not fully written"
    assert torch.equal(a, before)
    _assert_ba_plus_caa(out, a, alpha, beta)
    assert_exactly_symmetric(_np(out))


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("dtype,u_out,eta_out", DTYPES[1:], ids=[_dtype_id(d) for d in DTYPES[1:]])
def test_ba_plus_caa_kernel_16bit(dtype, u_out, eta_out, config, rng):
    a = _symmetric(rng, (2, 45, 45), dtype)
    out = torch.full(a.shape, float("nan"), dtype=dtype, device=DEVICE)
    launch_ba_plus_caa(a, out, 0.5, -1.5, config=config)
    assert not torch.isnan(out).any()
    _assert_ba_plus_caa(out, a, 0.5, -1.5, u_out, eta_out)
    assert_exactly_symmetric(_np(out))


# ------------------------------------------- per-shape configurations and launches --


def _programs(batch, m, config):
    return batch * host_tiles.upper_tile_count(m, config.block_m)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bfloat16", "float32"])
def test_tile_config_fills_a_wave_with_the_largest_tile(dtype):
    """``tile_config_for`` against brute force: the largest ladder edge below 2 m whose grid fills
    one wave of 132 programs, else the smallest edge; fp32 halves BLOCK_K."""
    ladder = triton_common.ladder_configs(dtype)
    for batch in (1, 2, 3, 12, 200):
        for m in (1, 16, 40, 64, 65, 200, 768, 1024, 2048, 4096):
            chosen = triton_common.tile_config_for(batch, m, dtype, 132)
            allowed = [c for c in ladder if c.block_m < 2 * m] or [min(ladder, key=lambda c: c.block_m)]
            filling = [c for c in allowed if _programs(batch, m, c) >= 132]
            expected = max(filling, key=lambda c: c.block_m) if filling else min(ladder, key=lambda c: c.block_m)
            assert chosen == expected, (batch, m)
    # the cases the configurations were chosen for: a GPT-2-small stack fills the GPU with 128-row
    # tiles, one 768 x 768 Gram matrix needs 32-row ones (21 tiles of 128, 78 of 64, 300 of 32)
    assert triton_common.tile_config_for(12, 768, dtype, 132).block_m == 128
    assert triton_common.tile_config_for(1, 768, dtype, 132).block_m == 32
    assert triton_common.tile_config_for(1, 1024, dtype, 132).block_m == 64
    bf16_k = {c.block_m: c.block_k for c in triton_common.ladder_configs(torch.bfloat16)}
    assert all(c.block_k == bf16_k[c.block_m] // (2 if dtype == torch.float32 else 1) for c in ladder)


LADDER_CASES = [(dtype, c) for dtype in (torch.bfloat16, torch.float32) for c in triton_common.ladder_configs(dtype)]


@pytest.mark.parametrize("dtype,config", LADDER_CASES, ids=lambda v: str(v).removeprefix("torch."))
def test_every_per_shape_configuration_is_exact(dtype, config, rng):
    """Each configuration a GPU launch can take, on ragged shapes, for all three kernels, against
    the float64 references with the derived bounds (the interpreter runs the same tiles)."""
    u_out, eta = {torch.float32: (0.0, 0.0), torch.bfloat16: (2.0**-8, 2.0**-134)}[dtype]
    x = torch.from_numpy(rng.standard_normal((2, 70, 45))).to(dtype).to(DEVICE)
    out = torch.full((2, 70, 70), float("nan"), dtype=dtype, device=DEVICE)
    launch_xxt(x, out, config=config)
    _assert_gram(out, x, 45, u_out, eta)
    assert_exactly_symmetric(_np(out))
    out = torch.full((2, 45, 45), float("nan"), dtype=dtype, device=DEVICE)
    launch_xtx(x, out, config=config)
    _assert_gram(out, x, 70, u_out, eta, transpose=True)
    a = _symmetric(rng, (1, 70, 70), dtype)
    out = torch.full(a.shape, float("nan"), dtype=dtype, device=DEVICE)
    launch_ba_plus_caa(a, out, 0.5, -1.5, config=config)
    _assert_ba_plus_caa(out, a, 0.5, -1.5, u_out, eta)
    assert_exactly_symmetric(_np(out))


def test_launch_plans_are_decided_once_per_shape(monkeypatch, rng):
    """Default launches look their plan up by (kernel, batch, m, dtype, device, precision): one plan
    per shape, reused. With INTERPRETED off (fp32 needs no interpreter workaround) the plan is the
    GPU's per-shape configuration, and the launch it makes is exact."""
    monkeypatch.setattr(triton_common, "_plans", {})
    x = torch.from_numpy(rng.standard_normal((3, 40, 56))).float().to(DEVICE)
    first, again = triton_backend.xxt(x), triton_backend.xxt(x)
    assert torch.equal(first, again) and len(triton_common._plans) == 1
    triton_backend.xxt(x[:1])
    triton_backend.ba_plus_caa(first, 0.5, -1.5)
    assert len(triton_common._plans) == 3
    if not ON_GPU:
        assert all(p.meta["BLOCK_M"] == INTERPRETER_CONFIG.block_m for p in triton_common._plans.values())
        monkeypatch.setattr(triton_common, "INTERPRETED", False)
    triton_common._plans.clear()
    out = torch.full((3, 40, 40), float("nan"), device=DEVICE)
    launch_xxt(x, out)
    (plan,) = triton_common._plans.values()
    config = triton_common.tile_config_for(3, 40, torch.float32, triton_common.sm_count(x.device))
    assert plan.grid == grid_for(3, 40, config) and plan.meta == {**plan.meta, **config.meta()}
    _assert_gram(out, x, 56)


class _RecordOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the name of every operator dispatched while active."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func._schema.name)
        return func(*args, **(kwargs or {}))


def test_plain_eager_calls_skip_the_dispatcher_and_tracers_see_the_operators(monkeypatch):
    """Eager launches call the implementation directly (same bits as the operator); under a
    dispatch mode (as make_fx, export and fake tensors use) the operators are dispatched."""
    x = torch.randn(2, 24, 40, device=DEVICE)
    direct_calls = []
    implementation = triton_backend._xxt_impl
    monkeypatch.setattr(triton_backend, "_xxt_impl", lambda X: direct_calls.append(1) or implementation(X))
    assert not through_operators(x)
    assert torch.equal(triton_backend.triton_xxt(x), torch.ops.fastmuon.triton_xxt(x))
    assert len(direct_calls) == 1  # the operator call above ran the registered function, not this one
    with _RecordOps() as recorded:
        O = orthogonalize(x, backend="triton", dtype=torch.float32)
    assert {"fastmuon::triton_xxt", "fastmuon::triton_ba_plus_caa"} <= set(recorded.names)
    assert len(direct_calls) == 1
    assert torch.equal(O, orthogonalize(x, backend="triton", dtype=torch.float32))


# Operators that read a tensor's value back to the host (and so sync the device, and cannot be
# captured in a CUDA graph): .item(), float(t), bool(t), data-dependent shapes, comparisons.
HOST_READS = {"aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::equal", "aten::item",
              "aten::masked_select", "aten::unique", "aten::_unique2", "aten::allclose"}


def _optimizers(backend, impl="auto"):
    from fastmuon.torch import Muon, MuonWithAdamW, NorMuon, muon_param_groups

    def params():
        return [torch.nn.Parameter(torch.randn(s, device=DEVICE)) for s in ((48, 32), (32, 48), (48, 32))]

    model = torch.nn.Sequential(torch.nn.Embedding(10, 16), torch.nn.Linear(16, 32), torch.nn.Linear(32, 16))
    options = dict(backend=backend, ns_dtype=torch.float32, impl=impl)
    yield "Muon", params(), lambda ps: Muon(ps, lr=0.02, **options)
    yield "NorMuon", params(), lambda ps: NorMuon(ps, lr=0.02, cautious_weight_decay=True, weight_decay=0.1,
                                                  **options)
    yield "Muon, Tensor lr", params(), lambda ps: Muon(ps, lr=torch.tensor(0.02), weight_decay=0.1, **options)
    yield "MuonWithAdamW", list(model.to(DEVICE).parameters()), lambda ps: MuonWithAdamW(
        muon_param_groups(model), lr=0.02, weight_decay=0.01, **options)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_optimizer_steps_read_nothing_back_from_the_device(backend):
    """CUDA-graph safety of a step: after the first step (state creation, kernel compilation), no
    operator of a Muon, NorMuon or MuonWithAdamW step reads a value back to the host, so none syncs
    the device and a data-dependent Python branch would show here (bool(t) is such a read).

    The CPU-only list-wide passes read one finiteness flag back by design (free on the CPU); they
    are never taken for CUDA tensors, so without a GPU impl="per_parameter" switches them off."""
    impl = "per_parameter" if DEVICE == "cpu" else "auto"
    for name, params, make in _optimizers(backend, impl):
        for p in params:
            p.grad = torch.randn_like(p)
        opt = make(params)
        opt.step()
        with _RecordOps() as recorded:
            opt.step()
        assert recorded.names, name
        assert not HOST_READS & set(recorded.names), (name, HOST_READS & set(recorded.names))


# ------------------------------------------------------------------ public ops --


def _views():
    """Non-contiguous (..., m, k) views; builder(rng) -> tensor on DEVICE."""

    def transposed(rng):  # column-major: runs the X^T X kernel on its transpose
        return torch.randn(2, 45, 30).to(DEVICE).mT

    def sliced_rows(rng):  # row stride larger than k
        return torch.randn(30, 57).to(DEVICE)[:, :50]

    def every_other_column(rng):  # k stride 2
        return torch.randn(20, 62).to(DEVICE)[:, ::2]

    def batch_swapped(rng):
        return torch.randn(17, 3, 29).to(DEVICE).transpose(0, 1)

    def broadcast(rng):
        return torch.randn(1, 16, 28).to(DEVICE).expand(3, 16, 28)

    def four_d_bf16(rng):
        return torch.randn(2, 3, 20, 31).to(torch.bfloat16).to(DEVICE)

    return [transposed, sliced_rows, every_other_column, batch_swapped, broadcast, four_d_bf16]


@pytest.mark.parametrize("make_view", _views(), ids=lambda f: f.__name__)
def test_public_xxt_on_views(make_view, rng):
    x = make_view(rng)
    before = x.clone()
    c = xxt(x, backend="triton")
    assert c.shape == (*x.shape[:-1], x.shape[-2]) and c.dtype == x.dtype
    u_out, eta = {torch.float32: (0.0, 0.0), torch.bfloat16: (2.0**-8, 2.0**-134)}[x.dtype]
    _assert_gram(c, x, x.shape[-1], u_out, eta)
    assert_exactly_symmetric(_np(c))
    assert torch.equal(x, before)


def test_public_ba_plus_caa_batch_and_views(rng):
    a = _symmetric(rng, (2, 3, 24, 24))
    c = ba_plus_caa(a, alpha=2.0315, beta=-4.7750, backend="triton")
    assert c.shape == a.shape
    _assert_ba_plus_caa(c, a, 2.0315, -4.7750)
    t = a.transpose(0, 1)  # batch axes swapped: not contiguous
    c_t = ba_plus_caa(t, alpha=2.0315, beta=-4.7750, backend="triton")
    assert torch.equal(c_t, c.transpose(0, 1))


def test_public_ops_on_empty_inputs():
    assert xxt(torch.zeros(0, 3, 4, device=DEVICE), backend="triton").shape == (0, 3, 3)
    assert torch.equal(xxt(torch.zeros(2, 3, 0, device=DEVICE), backend="triton"), torch.zeros(2, 3, 3, device=DEVICE))
    A = torch.zeros(2, 0, 3, 3, device=DEVICE)
    assert ba_plus_caa(A, alpha=1.0, beta=1.0, backend="triton").shape == A.shape


def test_public_ops_agree_with_the_reference_backend(rng):
    x = torch.randn(3, 40, 56).to(DEVICE)
    ref = xxt(x, backend="reference")
    got = xxt(x, backend="triton")
    _assert_gram(ref, x, 56)  # both within the same bound of the float64 product
    _assert_gram(got, x, 56)


# -------------------------------------------------------------- orthogonalize --

ORTHO_SHAPES = [(48, 80), (80, 48), (3, 40, 56), (1, 37), (37, 1), (2, 2, 24, 16)]


def _orthogonalize_and_check(G, method, compute, output, **kwargs):
    dtype = getattr(torch, compute)
    O = orthogonalize(G, method=method, backend="triton", dtype=dtype, **kwargs)
    assert O.shape == G.shape and O.dtype == G.dtype and O.device == G.device
    plan = make_plan(method, kwargs.get("steps", 5), kwargs.get("coefficients"))
    return check_against_exact(FRAMEWORKS["torch"](), _np(G), _np(O), plan, compute, output)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", ORTHO_SHAPES, ids=str)
def test_orthogonalize_fp32_matches_exact_iteration(method, shape):
    rng = np.random.default_rng(stable_seed(method, shape))
    G = torch.from_numpy(matrix_with_spectrum(rng, shape, "sigma_min_1e-3")).float().to(DEVICE)
    _orthogonalize_and_check(G, method, "float32", "float32")


def test_orthogonalize_default_in_gram_form():
    """The default method on a matrix large enough for AOL's Gram form (256 rows, aspect 2) meets
    the bound against the exact iteration of the plan it chooses."""
    rng = np.random.default_rng(stable_seed("auto", (256, 512)))
    G = torch.from_numpy(matrix_with_spectrum(rng, (256, 512), "sigma_min_1e-3")).float().to(DEVICE)
    O = orthogonalize(G, backend="triton", dtype=torch.float32)
    plan = make_plan("auto", 5, None).for_shape(256, 512)
    assert plan.gram_form(256, 512)
    check_against_exact(FRAMEWORKS["torch"](), _np(G), _np(O), plan, "float32", "float32")


@pytest.mark.parametrize("kind", SPECTRA)
@pytest.mark.parametrize("method", METHODS)
def test_orthogonalize_spectra(method, kind):
    rng = np.random.default_rng(17)
    G = torch.from_numpy(matrix_with_spectrum(rng, (2, 40, 64), kind)).float().to(DEVICE)
    _orthogonalize_and_check(G, method, "float32", "float32")


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("dtype, exponent", [(torch.float64, 1000), (torch.float32, 127)], ids=str)
def test_huge_finite_inputs_stay_finite_in_bf16(backend, dtype, exponent):
    """On the device: a float64 1e301 and a float32 3.4e38 (inf once rounded to bf16) give the
    unscaled matrix's result, since normalize scales before it rounds. Bound: the error against
    float64 is at most 4x the unscaled input's own."""
    G = np.random.default_rng(3).standard_normal((40, 56))
    G *= 1.999 / np.abs(G).max()

    def run(values):
        return _np(orthogonalize(torch.from_numpy(values).to(dtype).to(DEVICE), backend=backend,
                                 dtype=torch.bfloat16))

    O, unscaled = run(G * 2.0**exponent), run(G)
    exact = _np(orthogonalize(torch.from_numpy(G), backend="reference", dtype=torch.float64))
    assert np.isfinite(O).all()
    assert np.abs(O - exact).max() <= 4 * np.abs(unscaled - exact).max()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(40, 56), (56, 40)], ids=str)
def test_orthogonalize_bf16_compute(method, shape):
    """bf16 compute (the default on GPUs): kernels output bf16 (rounded to nearest even; in
    software under the interpreter), GEMMs in bf16; the allowance uses bf16's unit roundoff."""
    rng = np.random.default_rng(5)
    G = torch.from_numpy(matrix_with_spectrum(rng, shape, "well_conditioned")).float().to(DEVICE)
    if method == "gram":  # refused in 16 bits (fastmuon.plan.GRAM_MIN_BITS)
        with pytest.raises(ValueError, match='method="gram"'):
            orthogonalize(G, method=method, backend="triton", dtype=torch.bfloat16)
        return
    _orthogonalize_and_check(G, method, "bfloat16", "float32")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("method", METHODS)
def test_orthogonalize_16bit_inputs(method, dtype):
    rng = np.random.default_rng(11)
    G = torch.from_numpy(matrix_with_spectrum(rng, (2, 40, 56), "sigma_min_1e-3")).to(getattr(torch, dtype))
    _orthogonalize_and_check(G.to(DEVICE), method, "float32", dtype)


def test_orthogonalize_custom_coefficients_and_steps():
    rng = np.random.default_rng(2)
    G = torch.from_numpy(matrix_with_spectrum(rng, (40, 56), "sigma_min_1e-3")).float().to(DEVICE)
    for method, kwargs in (
        ("newton_schulz", dict(coefficients=coef.YOU_5STEP)),
        ("polar_express", dict(steps=8)),
        ("gram", dict(steps=7)),
        ("gram", dict(steps=1)),
    ):
        _orthogonalize_and_check(G, method, "float32", "float32", **kwargs)


@pytest.mark.parametrize("method", METHODS)
def test_orthogonalize_views_equal_contiguous_copies(method):
    """A view is copied once into the row-major layout of its shape, so it runs the same
    kernels on the same data as a contiguous copy: equal bit for bit."""
    rng = np.random.default_rng(3)
    base = torch.from_numpy(matrix_with_spectrum(rng, (2, 56, 40), "sigma_min_1e-3")).float().to(DEVICE)
    for view in (base.mT, torch.cat([base, base], dim=-1)[..., ::2], base[:, 3:50]):
        O = orthogonalize(view, method=method, backend="triton", dtype=torch.float32)
        dense = orthogonalize(view.contiguous(), method=method, backend="triton", dtype=torch.float32)
        assert torch.equal(O, dense)
    _orthogonalize_and_check(base.mT, method, "float32", "float32")


@pytest.mark.parametrize("method", METHODS)
def test_orthogonalize_zero_and_empty(method):
    for shape in [(5, 7), (7, 5), (6, 1), (2, 3, 4)]:
        G = torch.zeros(shape, device=DEVICE)
        assert torch.equal(orthogonalize(G, method=method, backend="triton"), G)
    for shape in [(0, 4, 5), (2, 0, 5), (2, 4, 0)]:
        G = torch.zeros(shape, device=DEVICE)
        assert orthogonalize(G, method=method, backend="triton").shape == shape


def test_triton_and_reference_agree():
    rng = np.random.default_rng(9)
    G = torch.from_numpy(matrix_with_spectrum(rng, (2, 36, 60), "sigma_min_1e-3")).float().to(DEVICE)
    _, allowance = _orthogonalize_and_check(G, "polar_express", "float32", "float32")
    a = orthogonalize(G, backend="triton", dtype=torch.float32)
    b = orthogonalize(G, backend="reference", dtype=torch.float32)
    assert np.max(np.linalg.norm(_np(a) - _np(b), ord=2, axis=(-2, -1))) <= 2 * allowance


# ------------------------------------------------ backend choice and errors --


def _fake_cuda_tensor(*shape):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        return torch.empty(*shape, device="cuda")


def test_auto_keeps_cuda_tensors_on_cublas_until_triton_is_faster():
    """Measured on an H100, the Triton iteration is slower than cuBLAS at GPT-2 sizes, so
    "auto" uses the reference there; "triton" must be asked for."""
    t = _fake_cuda_tensor(4, 6)
    for dtype in (torch.bfloat16, torch.float32, torch.float64):
        assert select_backend("auto", t, dtype) == "reference"
    assert select_backend("triton", t, torch.bfloat16) == "triton"


def test_missing_triton_says_how_to_install(monkeypatch):
    monkeypatch.setattr(ortho, "_TRITON_FOUND", False)
    G = torch.ones(3, 4, device=DEVICE)
    with pytest.raises(ImportError, match=r"pip install"):
        orthogonalize(G, backend="triton")
    with pytest.raises(ImportError, match=r"needs the triton package"):
        xxt(G, backend="triton")


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setattr(triton_backend, "INTERPRETED", False)
    G = torch.ones(3, 4)
    for call in (
        lambda: orthogonalize(G, backend="triton"),
        lambda: xxt(G, backend="triton"),
        lambda: ba_plus_caa(torch.eye(3), alpha=1.0, beta=0.0, backend="triton"),
    ):
        with pytest.raises(ValueError, match=r"runs on CUDA tensors.*CPU tensor.*TRITON_INTERPRET=1"):
            call()


def test_rejects_other_devices_and_float64():
    with pytest.raises(ValueError, match=r"runs on CUDA tensors; the input is on meta"):
        orthogonalize(torch.ones(3, 4, device="meta"), backend="triton")
    G = torch.ones(3, 4, device=DEVICE)
    with pytest.raises(ValueError, match=r"float32, bfloat16 or float16; torch.float64 needs"):
        orthogonalize(G, backend="triton", dtype=torch.float64)
    with pytest.raises(ValueError, match=r'backend="triton" computes in float32; float64 input'):
        xxt(G.double(), backend="triton")
    with pytest.raises(ValueError, match=r"valid backends: auto, reference, native, triton"):
        orthogonalize(G, backend="cuda")


# --------------------------------------------------- torch.library / torch.compile --


def test_opcheck():
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch of both
    operators (under the interpreter they are opaque custom ops; on GPUs triton_op)."""
    x = torch.randn(2, 20, 30, device=DEVICE)
    torch.library.opcheck(torch.ops.fastmuon.triton_xxt.default, (x,))
    torch.library.opcheck(torch.ops.fastmuon.triton_xxt.default, (torch.randn(2, 30, 20, device=DEVICE).mT,))
    a = triton_backend.xxt(x)
    torch.library.opcheck(torch.ops.fastmuon.triton_ba_plus_caa.default, (a, 2.0, -1.0))


def test_torch_compile_graph_with_the_ops():
    """A compiled function calling orthogonalize(backend="triton") and xxt runs the operators
    (fullgraph: no graph breaks) and matches eager bit for bit. Inductor on GPUs; the aot_eager
    backend under the interpreter (it traces with fake tensors and functionalization exactly as
    Inductor does, without Inductor's C++ compile of the surrounding ops)."""
    compile_backend = "inductor" if ON_GPU else "aot_eager"
    G = torch.randn(2, 24, 40, device=DEVICE)

    def step(G):
        O = orthogonalize(G, backend="triton", dtype=torch.float32)
        return 2.0 * O + 1.0, xxt(O, backend="triton")

    torch._dynamo.reset()
    compiled = torch.compile(step, backend=compile_backend, fullgraph=True)
    got, eager = compiled(G), step(G)
    if ON_GPU:  # Inductor may fuse the elementwise tail differently
        torch.testing.assert_close(got, eager)
    else:
        for g, e in zip(got, eager):
            assert torch.equal(g, e)


# ------------------------------------------------- GPU code generation, no GPU --

HERE = os.path.dirname(os.path.abspath(__file__))


def test_kernels_compile_for_nvidia_gpus_with_pipelined_loops():
    """Compile the kernels for sm_90 (and sm_80) the way a launch on contiguous, aligned tensors
    would (unit strides as constants): the interpreter never type-checks that, and the main loop
    must be software-pipelined (async copies) on tensor cores (wgmma / mma) for 16-bit inputs."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    done = subprocess.run(
        [sys.executable, os.path.join(HERE, "support", "triton_compile_check.py")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert {r["kernel"] for r in results} == {"xxt_kernel", "xtx_kernel", "ba_plus_caa_kernel"}
    compiled = {(r["dtype"], tuple(r["config"])) for r in results if r["arch"] == 90}
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        for c in triton_common.ladder_configs(dtype):  # every per-shape configuration, compiled
            assert (name, (c.block_m, c.block_k, c.num_warps, c.num_stages)) in compiled
    for r in results:
        assert r["async_copies"] > 0, r
        assert r["shared"] <= 227 * 1024, r  # a Hopper block's shared-memory limit
        if r["dtype"] != "fp32":  # tensor cores: wgmma needs 64-row tiles, smaller ones use mma
            assert (r["wgmma"] if r["arch"] == 90 and r["config"][0] >= 64 else r["mma"]) > 0, r


def test_gpu_benchmark_exits_cleanly_without_a_gpu(tmp_path):
    if ON_GPU:
        pytest.skip("a CUDA device is present: the benchmark would measure (run it by hand)")
    script = os.path.join(HERE, os.pardir, "bench", "bench_triton_gpu.py")
    out = tmp_path / "rows.jsonl"
    done = subprocess.run([sys.executable, script, "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no CUDA device: nothing to measure" in done.stdout
    assert not out.exists()


def _gpu_bench_module():
    path = os.path.join(HERE, os.pardir, "bench", "bench_triton_gpu.py")
    spec = importlib.util.spec_from_file_location("bench_triton_gpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_arguments_and_budget():
    gpu_bench = _gpu_bench_module()
    args = gpu_bench.parse_args(["--ops", "xxt,optimizer_step", "--budget", "30", "--compile"])
    assert args.ops == ["xxt", "optimizer_step"] and args.budget == 30.0 and args.compile and not args.autotune
    assert gpu_bench.parse_args([]).ops == list(gpu_bench.OPS)
    with pytest.raises(SystemExit):
        gpu_bench.parse_args(["--ops", "xxt,gemm"])
    assert gpu_bench.Budget(None).left() and not gpu_bench.Budget(0.0).left()


def test_gpu_benchmark_measures_every_step_provider(monkeypatch, capsys):
    """The benchmark's optimizer_step and orthogonalize measurements, run on small shapes on this
    device (CPU: the interpreter, a stand-in timer; the CUDA-graph variants need a GPU): every
    provider gives a row with the fields the results need, Keller Jordan's Muon included or
    recorded as not available, and the rows feed ``auto_table.entries_from_rows``."""
    from fastmuon import auto_table

    gpu_bench = _gpu_bench_module()
    monkeypatch.setattr(gpu_bench, "DEVICE", DEVICE)
    monkeypatch.setattr(gpu_bench, "GPT2_SMALL_BLOCK", ((48, 16), (16, 16), (64, 16), (16, 64)))
    monkeypatch.setattr(gpu_bench, "GPT2_SMALL_BLOCKS", 2)
    rows, failed = [], []

    def record(op, shape, provider, ms, dense=None, done=None, **extra):
        rows.append(gpu_bench.make_row({"gpu": "test", "date": "today"}, op, shape, "float32", provider, ms, **extra))

    def timed(fn):
        fn()
        return 1.0 if not rows else 2.0

    def guarded(what, fn):
        try:
            fn()
        except Exception:
            failed.append(what)

    gpu_bench.optimizer_step_rows(torch, timed, guarded, record)
    by_provider = {r["provider"]: r for r in rows}
    expected = {"fastmuon_auto", "fastmuon_triton", "torch.optim.Muon", "keller_muon", "fastmuon_aol4",
                "fastmuon_aol5", "fastmuon_polar_express5", "fastmuon_triton_whole_stacks"}
    graphed = ("fastmuon_auto", "fastmuon_triton", "fastmuon_aol4", "fastmuon_aol5", "fastmuon_polar_express5",
               "fastmuon_triton_whole_stacks")
    if ON_GPU:
        expected |= {f"{name}_cuda_graph" for name in graphed}
        assert by_provider["fastmuon_triton_cuda_graph"]["graph_vs_eager_max_abs"] < 1e-3
    else:
        assert len(failed) == len(graphed) and all("CUDA graph" in what for what in failed)
    assert set(by_provider) == expected
    keller = by_provider["keller_muon"]
    assert keller["ms"] is not None or keller["status"] == "not available"
    for row in rows:
        assert set(gpu_bench.ROW_FIELDS) <= set(row) and row["op"] == "optimizer_step"
        assert (row["batch"], row["m"], row["n"]) == (8, 16, 64) and row["params"] == 2 * (3 + 1 + 4 + 4) * 256
    gpu_bench.print_step_speedups(rows)
    assert "torch.optim.Muon" in capsys.readouterr().out

    rows.clear()
    gpu_bench.kernel_rows(torch, timed, record, "orthogonalize", (2, 24, 40), torch.float32, autotuned=False)
    assert [r["provider"] for r in rows] == ["reference", "triton", "auto"]
    entries = auto_table.entries_from_rows(rows)  # triton 2 ms vs reference 1 ms: no entry
    assert entries == {} and auto_table.entries_from_rows([{**r, "ms": 0.5} if r["provider"] == "triton" else r
                                                            for r in rows])


# ------------------------------------------------------------------ GPU only --


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device: the batch spans more than 2^31 elements")
def test_batch_offsets_beyond_int32():
    m = 64
    batch = 2**31 // (m * m) + 3  # the last matrices start past element 2^31
    x = torch.empty((batch, m, m), dtype=torch.bfloat16, device="cuda")
    x[-3:] = torch.randn(3, m, m, device="cuda").to(torch.bfloat16)
    out = triton_backend.xxt(x)
    _assert_gram(out[-3:], x[-3:], m, 2.0**-8, 2.0**-134)


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device: captures a CUDA graph")
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_a_muon_step_captured_in_a_cuda_graph_matches_eager(backend):
    """A warmed-up step (state created, kernels compiled) captured once and replayed with new
    gradients copied into the captured ones gives the weights of eager steps."""
    from fastmuon.torch import Muon

    torch.manual_seed(0)
    shapes = [(256, 128), (128, 256), (256, 128), (192, 192)]
    weights = [torch.randn(s, device="cuda") for s in shapes]
    grads = [[torch.randn(s, device="cuda") for s in shapes] for _ in range(3)]

    def make():
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        for p in params:
            p.grad = torch.zeros_like(p)
        return params, Muon(params, lr=0.02, weight_decay=0.01, backend=backend)

    def set_grads(params, values):
        for p, g in zip(params, values):
            p.grad.copy_(g)

    eager_params, eager = make()
    for values in grads:
        set_grads(eager_params, values)
        eager.step()

    params, opt = make()
    set_grads(params, grads[0])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # the warm-up step runs for real
        opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # recorded, not run
        opt.step()
    for values in grads[1:]:
        set_grads(params, values)
        graph.replay()
    for got, want in zip(params, eager_params):
        torch.testing.assert_close(got, want)
