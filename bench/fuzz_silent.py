#!/usr/bin/env python
"""Fuzz fastmuon for silently wrong results, in PyTorch and in MLX.

Every configuration is generated from ``(--seed, framework, index)`` alone, so any one of them
re-runs on its own with ``--only INDEX`` (the summary prints the command). Each is one of:

* ``ortho``: ``orthogonalize`` on a random input: 2-D wide/tall/square, 1-row/1-col, 3-D and 4-D
  batches, empty dims; float64/float32/bfloat16/float16; magnitudes 1, tiny (1e-30, 1e-300,
  1e-6 in float16), large (1e20), huge (1e39 and 1e300 in float64, 3e38 in float32/bfloat16,
  6e4 in float16), zeros, low-rank, ill-conditioned, batches mixing magnitudes, a few NaN/Inf
  entries; random methods, steps, custom coefficients, eps (1e-30 .. 1e3), backends, compute
  dtypes, non-contiguous inputs, inputs that require grad (torch).
* ``optim``: 2-5 steps of ``Muon``, ``NorMuon``, ``MuonWithAdamW`` or ``SignSGD`` with random
  options (torch: several param groups with their own options, ``impl``, Tensor lr, positional
  arguments; MLX: schedules, gradients in another dtype than the weights; both: options given as
  numpy scalars; torch: weights stored transposed, or transposed gradients), gradients of the
  magnitudes above, NaN/Inf gradients, missing gradients (torch), and a checkpoint round trip
  mid-run (torch ``state_dict``/``load_state_dict`` through ``torch.save``; MLX
  ``tree_flatten(opt.state)`` through ``mx.save_safetensors`` or, for float64, in memory).
* ``invalid``: one clearly invalid option or input (of orthogonalize or of an optimizer).

Not fuzzed: the Triton and Metal backends (no GPU here; they are skipped when unavailable),
torch.compile, distributed strategies, and AOL's Gram form: the fuzzed matrices have at most 80
rows, below the 256 from which "aol" and "auto" iterate in Gram space, so "aol" runs its standard
form and "auto" Polar Express (tests/test_aol_gram.py and tests/test_auto_method.py cover the
Gram form).

What is "silently wrong" (each a named check; the summary counts them):

1. ``nonfinite_output`` / ``nonfinite_state``: finite input, but a NaN/Inf in the output, the
   weights or the optimizer state, and no exception.
2. ``skip_*``: a parameter whose gradient has a NaN/Inf must keep its weight and state (value
   equality: -0.0 == +0.0) and count ``skipped_steps`` + 1; a finite step must not count one.
3. ``ortho_*``: orthogonalize against a float64 reference written in numpy
   (``tests/support/reference_optim.orthogonalize``: the same polynomials and normalization,
   independent of fastmuon's kernels), run on the exact input after scaling each matrix by a
   power of two (and eps by the same power), so that it is exact for every finite magnitude:
   that comparison *is* the scale-invariance check for tiny/large/huge inputs, against the exact
   answer; ``ortho_scale_invariance`` also compares the library's own results for G and
   G / 2^k. A zero matrix must give exact zeros (``ortho_zero``); a poisoned (NaN/Inf) matrix of
   a batch must not change the others and must not come out finite (``ortho_nan_swallowed``).
   Tolerances (MULTIPLE = 20 times a calibrated worst case, see ``calibrate``):

   * ``ortho_determined``: || (O - R) V ||_2 per matrix, V the right singular vectors of G with
     sigma >= TAU * sigma_max (the directions the polar factor determines well in any
     precision) <= MULTIPLE x the worst value measured on normal inputs for that compute dtype,
     method and steps bucket;
   * ``ortho_full``: || O - R ||_2 <= MULTIPLE x C x u A, with A the first-order rounding
     amplification of the polynomials (``tests/support/spectral.amplification``) and C the worst
     ratio measured on normal inputs for that compute dtype (meaningful in float32/float64;
     in 16-bit, directions of tiny singular values are noise and only the first check bites);
   * ``ortho_norm``: || O ||_2 <= 1.5 x the largest value the polynomials reach;
   * both get the output dtype's rounding (2 u_out sqrt(r)) and an underflow floor added.
4. ``optim_*``: each step is compared with a float64 numpy reference stepped from the
   optimizer's own state before the step (so errors do not accumulate): momentum and AdamW
   moments elementwise within 4 u (|old| + |new input|); weights elementwise within
   lr scale tol_full (+ the rounding of W and of the update, the cautious-decay mask flips
   near O = 0, NorMuon's normalization spread); for plain Muon also the update's
   well-determined part (``optim_update_determined``) against the calibrated tolerance of the
   coarser of the compute and weight dtypes; NorMuon's second moment; AdamW's own step count;
   the learning rate an MLX schedule gave.
5. ``torch_vs_mlx``: for MLX orthogonalize configurations, torch's result on the same input and
   options (the sum of both tolerances). (Optimizers of both frameworks are compared with the
   same framework-free numpy reference, which bounds their disagreement too.)
6. Exceptions: ValueError/TypeError (or the documented RuntimeError/ImportError of an
   unavailable backend) whose message names the option, argument or parameter are "clear";
   anything else (ZeroDivisionError, IndexError, KeyError, a RuntimeError from torch's
   internals, nanobind's "incompatible function arguments" dump, ...) is "unclear". An invalid
   option that is accepted is ``invalid_accepted`` (silently wrong).

Failures on inputs of a "huge" magnitude (float64 1e39/1e300, float32/bfloat16 3e38, float16
6e4: beyond, or with squares beyond, the compute dtype's range; for optimizers: of a Muon
parameter that has seen such a gradient) are reported apart: orthogonalize and the update
handle them, and what remains is the momentum's lerp overflowing when a gradient and the
momentum are both near the dtype's largest value with opposite signs (as in torch.optim.Muon);
failures of AdamW groups whose moments leave the dtype's range
(g^2 overflows, or v underflows in float16 so that the denominator falls to eps), as
torch.optim.AdamW's do, apart too.

Run (2 CPU cores: 15-90 s, depending on the load, for the default 2000 configurations per
framework; add ``--show`` to print each configuration's outcome as it runs)::

    cd /work/main && LD_LIBRARY_PATH=$PWD/.venv/lib/python3.11/site-packages/scipy_openblas32/lib \\
        PYTHONPATH=python FASTMUON_REQUIRE_NATIVE=1 .venv/bin/python bench/fuzz_silent.py \\
        [--configs 2000] [--seed 0] [--framework both|torch|mlx] [--out results.jsonl] [--only 3,17]

Calibration: before the run, CALIBRATION_CASES normal-magnitude inputs per (framework, compute
dtype, method, steps bucket) set the tolerances above; a calibration case beyond the test suite's
own first-order bound CALIBRATION_CAP x u A is reported as silently wrong (check
``calibration_over_model``) and left out, so that a systematic error cannot calibrate itself away
(breaking the reference or native backends by 0.5% or by one step, in memory, is caught this way).

Exit status: 1 if a silently wrong result was found (2 if only unclear errors), else 0;
``--ignore-known`` leaves the two apart buckets (huge magnitudes, AdamW moments beyond the
dtype's range) out of the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import math
import os
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from types import SimpleNamespace

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (os.path.join(ROOT, "tests"), os.path.join(ROOT, "python")):
    if _path not in sys.path:
        sys.path.append(_path)

from fastmuon import coefficients as coef  # noqa: E402
from fastmuon.plan import make_plan  # noqa: E402
from support import reference_optim as refopt  # noqa: E402  (tests/support)
from support.spectral import amplification  # noqa: E402

MULTIPLE = 20  # tolerance = MULTIPLE x the worst error calibrated on normal-magnitude inputs
TAU = 0.1  # "well-determined" directions: sigma >= TAU * sigma_max
CALIBRATION_SEED = 20240917
CALIBRATION_CASES = 8  # per (framework, compute dtype, method, steps bucket)
# A calibration case may not exceed the first-order rounding model that the test suite allows,
# 4 u A (tests/support/spectral.rounding_allowance; measured 0.001-0.7 u A there): a case above it
# is itself reported as silently wrong and its error is not taken into the tolerances (else a
# systematic bug on normal inputs would calibrate itself away).
CALIBRATION_CAP = 4.0

# unit roundoff, smallest normal, smallest subnormal (the absolute spacing below tiny), largest
INFO = {
    "float64": dict(u=2.0**-53, tiny=2.0**-1022, sub=2.0**-1074, max=1.7976931348623157e308),
    "float32": dict(u=2.0**-24, tiny=2.0**-126, sub=2.0**-149, max=3.4028234663852886e38),
    "bfloat16": dict(u=2.0**-8, tiny=2.0**-126, sub=2.0**-133, max=3.3895313892515355e38),
    "float16": dict(u=2.0**-11, tiny=2.0**-14, sub=2.0**-24, max=65504.0),
}
FLOATS = tuple(INFO)
U32 = INFO["float32"]["u"]

# magnitude labels per dtype: (label, max |entry|); "1" is normal
MAGNITUDES = {
    "float64": [("1", 1.0), ("1e-30", 1e-30), ("1e-300", 1e-300), ("1e20", 1e20), ("1e39", 1e39), ("1e300", 1e300)],
    "float32": [("1", 1.0), ("1e-30", 1e-30), ("1e20", 1e20), ("3e38", 3e38)],
    "bfloat16": [("1", 1.0), ("1e-30", 1e-30), ("1e20", 1e20), ("3e38", 3e38)],
    "float16": [("1", 1.0), ("1e-6", 1e-6), ("6e4", 6e4)],
}
HUGE = {"1e39", "1e300", "3e38", "6e4"}

METHODS = ("polar_express", "newton_schulz", "gram", "aol", "auto")
COEFF_SETS = ("jordan", "you5", "pe5", "pe_generated", "steady")
MUON_DEFAULTS = dict(lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0, method="auto", ns_steps=5,
                     adjust_lr="original", cautious_weight_decay=False, backend="auto", ns_dtype=None, impl="auto",
                     beta2=None, sphere=None, ns_coefficients=None, eps=None)
ADAMW_DEFAULTS = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.0)
SIGNSGD_DEFAULTS = dict(lr=1e-2, weight_decay=0.1, sparse=False)
NORMUON_BETA2 = 0.95

CLEAR_WORDS = ("momentum", "nesterov", "weight_decay", "method", "steps", "eps", "backend", "dtype", "impl",
               "beta2", "betas", "sphere", "adjust_lr", "coefficients", "lr", "learning_rate", "allow_nd",
               "cautious", "param", "gradient", "weight", "the input", "G ", "G must", "Gs[", "shape", "triton",
               "metal", "native", "fused", "foreach", "group", "checkpoint", "option", "sparse", "complex")


# ------------------------------------------------------------------------------ helpers

def steps_bucket(steps: int) -> str:
    return "1-2" if steps <= 2 else ("3-5" if steps <= 5 else "6+")


def coarser(a: str, b: str) -> str:
    return a if INFO[a]["u"] >= INFO[b]["u"] else b


def coefficient_set(name: str, k: int):
    if name == "jordan":
        return [coef.JORDAN_NEWTON_SCHULZ] * k
    if name == "you5":
        return list(coef.YOU_5STEP)
    if name == "pe5":
        return list(coef.POLAR_EXPRESS_5STEP)
    if name == "pe_generated":
        return list(coef.polar_express_coefficients(k))
    if name == "steady":
        return [coef.STEADY_STATE] * k
    raise KeyError(name)


def coefficient_family(name: str) -> str:
    """The calibrated family whose rounding explicit coefficients share in the standard form (in
    the Gram form, any coefficients round as the calibrated "gram" family)."""
    return "newton_schulz" if name in ("jordan", "steady") else "polar_express"


_AMP: dict = {}


def amp_info(coeffs, norm_scale: float):
    """(A, p_max, prod_growth) for the polynomial composition: A the first-order rounding
    amplification on [0, 1/scale], p_max the largest value it reaches on [0, 1/scale],
    prod_growth the growth bound of small values (prod of |a|+|b|+|c|)."""
    key = (tuple(map(tuple, coeffs)), norm_scale)
    if key not in _AMP:
        x_max = 1.0 / norm_scale
        A = amplification(coeffs, x_max)
        grid = np.linspace(0.0, x_max, 4001)
        p_max = float(np.max(np.abs(coef.apply_scalar(coeffs, grid))))
        growth = float(np.prod([abs(a) + abs(b) + abs(c) for a, b, c in coeffs]))
        _AMP[key] = (A, p_max, growth)
    return _AMP[key]


def aol_row_sum_floor(cd: str) -> float:
    """The floor under AOL's row sums in compute dtype ``cd``: the smallest normal number of the
    Gram matrix's dtype. A normalized X so small (an eps-dominated input, such as a gradient of
    1e-30) that X X^T underflows there is scaled by the floor's d, not brought back to norm 1 as
    exact arithmetic would."""
    return INFO[cd]["tiny"]


def ref_orthogonalize(G: np.ndarray, plan, cd: str) -> np.ndarray:
    """The float64 iteration (tests/support/reference_optim.orthogonalize) of ``plan`` (resolved
    for G's matrix shape: method "auto") on every matrix of G, each scaled by 2^-e (e: the
    exponent of its largest |entry|) with eps scaled alike: exactly the same normalized X for any
    finite magnitude (no overflow or underflow in the norm). AOL's row sums are floored as the
    compute dtype ``cd`` floors them (``aol_row_sum_floor``)."""
    G = np.asarray(G, dtype=np.float64)
    if G.size == 0:
        return np.zeros_like(G)
    plan = plan.for_shape(*G.shape[-2:])
    coeffs, norm_scale, eps = plan.coefficients, plan.norm_scale, plan.eps
    amax = np.max(np.abs(G), axis=(-2, -1), keepdims=True)
    e = np.where(amax > 0, np.frexp(amax)[1], 0).astype(np.int32)
    X = np.ldexp(G, -e)
    eps_scaled = np.clip(np.ldexp(np.full(amax.shape, float(eps)), -e), 5e-324, 1e300)
    plan = SimpleNamespace(norm_scale=norm_scale, eps=eps_scaled, coefficients=[tuple(c) for c in coeffs],
                           uses_gram=plan.uses_gram, uses_aol=plan.uses_aol, aol_floor=aol_row_sum_floor(cd))
    with np.errstate(all="ignore"):
        return refopt.orthogonalize(X, plan)


def safe_norm(a: np.ndarray) -> float:
    """Frobenius norm without overflow or underflow."""
    top = float(np.max(np.abs(a))) if a.size else 0.0
    if top == 0 or not math.isfinite(top):
        return top
    return top * float(np.linalg.norm(a / top))


def spectral(A: np.ndarray) -> float:
    if A.size == 0:
        return 0.0
    if not np.all(np.isfinite(A)):
        return float("inf")
    return float(np.linalg.norm(A, ord=2))


def determined_basis(G: np.ndarray) -> np.ndarray:
    """Right singular vectors (as columns) of a matrix with sigma >= TAU * sigma_max."""
    if G.size == 0 or not np.any(G):
        return np.zeros((G.shape[-1], 0))
    scale = np.max(np.abs(G))
    _, S, Vt = np.linalg.svd(G / scale, full_matrices=False)
    keep = S >= TAU * S[0]
    return Vt[keep].T


def matrices(a: np.ndarray):
    """The (m, n) matrices of a (..., m, n) array, with their batch index."""
    for index in np.ndindex(*a.shape[:-2]):
        yield index, a[index]


def nan_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))


def finite(a) -> bool:
    return bool(np.all(np.isfinite(a)))


def short(value, limit=300) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def classify_exception(exc: BaseException, keywords=CLEAR_WORDS, allowed=(ValueError, TypeError)) -> str:
    message = str(exc)
    if "incompatible function arguments" in message:
        return "unclear"
    if isinstance(exc, allowed) and any(word.lower() in message.lower() for word in keywords):
        return "clear"
    return "unclear"


# ------------------------------------------------------------------------------ random data

def log_dim(rng, low=1, high=96) -> int:
    if rng.random() < 0.04:
        high = 256
    return int(np.clip(np.round(np.exp(rng.uniform(np.log(low), np.log(high + 1)))), low, high))


def gen_ortho_shape(rng):
    kind = rng.choice(["wide", "tall", "square", "row1", "col1", "batch3", "batch4", "empty"],
                      p=[0.2, 0.2, 0.15, 0.06, 0.06, 0.17, 0.1, 0.06])
    m, n = log_dim(rng), log_dim(rng)
    if kind == "wide":
        m, n = min(m, n), max(m, n)
    elif kind == "tall":
        m, n = max(m, n), min(m, n)
    elif kind == "square":
        n = m
    elif kind == "row1":
        m = 1
    elif kind == "col1":
        n = 1
    shape = [m, n]
    if kind == "batch3":
        shape = [int(rng.integers(1, 5))] + [min(m, 64), min(n, 64)]
    elif kind == "batch4":
        shape = [int(rng.integers(1, 3)), int(rng.integers(1, 4)), min(m, 48), min(n, 48)]
    elif kind == "empty":
        shape = [int(rng.integers(1, 3))] * int(rng.integers(0, 2)) + [m, n]
        shape[int(rng.integers(len(shape)))] = 0
    return [int(s) for s in shape]


STRUCTS = ("gaussian", "lowrank", "rank1", "illcond", "zero", "zero_one", "mixed", "zero_rows", "ones")


def gen_struct(rng, batch: bool, allow_zero_rows=False) -> str:
    choices = ["gaussian", "lowrank", "rank1", "illcond", "zero", "ones"] + (["zero_one", "mixed"] if batch else []) \
        + (["zero_rows"] if allow_zero_rows else [])
    weights = {"gaussian": 0.5, "lowrank": 0.1, "rank1": 0.06, "illcond": 0.1, "zero": 0.04, "ones": 0.03,
               "zero_one": 0.06, "mixed": 0.08, "zero_rows": 0.1}
    p = np.array([weights[c] for c in choices])
    return str(rng.choice(choices, p=p / p.sum()))


def gen_magnitude(rng, dtype: str, normal=0.55) -> str:
    labels = [label for label, _ in MAGNITUDES[dtype]]
    if rng.random() < normal:
        return "1"
    return str(rng.choice(labels[1:]))


def magnitude_value(dtype: str, label: str) -> float:
    return dict(MAGNITUDES[dtype])[label]


def make_matrices(rng, vshape, struct: str) -> np.ndarray:
    """float64 data of shape vshape (..., m, n) with the structure, scaled to max |entry| = 1."""
    vshape = tuple(vshape)
    out = np.zeros(vshape)
    if out.size == 0 or struct == "zero":
        return out
    if len(vshape) < 2:
        out = np.asarray(rng.standard_normal(vshape), dtype=np.float64)
        return out / np.max(np.abs(out))
    *batch, m, n = vshape
    zero_index = tuple(int(rng.integers(b)) for b in batch) if batch else None
    for index in np.ndindex(*batch):
        r = min(m, n)
        if struct in ("gaussian", "zero_one", "mixed", "zero_rows"):
            A = rng.standard_normal((m, n))
        elif struct == "lowrank":
            k = int(rng.integers(1, max(1, r // 2) + 1))
            A = rng.standard_normal((m, k)) @ rng.standard_normal((k, n))
        elif struct == "rank1":
            A = np.outer(rng.standard_normal(m), rng.standard_normal(n))
        elif struct == "ones":
            A = np.ones((m, n))
        elif struct == "illcond":
            U, _ = np.linalg.qr(rng.standard_normal((m, r)))
            V, _ = np.linalg.qr(rng.standard_normal((n, r)))
            A = (U * np.logspace(0, -rng.uniform(3, 12), r)) @ V.T
        else:
            raise KeyError(struct)
        if struct == "zero_rows":
            A[rng.random(m) < 0.4] = 0.0
        if struct == "zero_one" and index == zero_index:
            A = np.zeros((m, n))
        if struct == "mixed":
            A = A * 2.0 ** int(rng.integers(-40, 41))
        out[index] = A
    top = np.max(np.abs(out))
    return out / top if top > 0 else out


def poison(rng, a: np.ndarray, kind: str, whole_matrix_index=None) -> np.ndarray:
    """Put NaN/Inf into one entry (or all entries) of a (of the matrix at whole_matrix_index)."""
    a = np.array(a, dtype=np.float64)
    value = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "nan_all": np.nan}[kind]
    target = a if whole_matrix_index is None else a[whole_matrix_index]
    if target.size == 0:
        return a
    if kind == "nan_all":
        target[...] = value
    else:
        flat = target.reshape(-1)
        flat[int(rng.integers(flat.size))] = value
        target[...] = flat.reshape(target.shape)
    if whole_matrix_index is not None:
        a[whole_matrix_index] = target
    return a


# ------------------------------------------------------------------------------ frameworks

class TorchFW:
    name = "torch"

    def __init__(self):
        import torch

        import fastmuon.torch as ft

        self.torch, self.ft = torch, ft
        self.omod = importlib.import_module("fastmuon.torch.orthogonalize")
        self.backends = [b for b in ("auto", "reference", "native") if b in ft.BACKENDS]
        if not self.omod.blas_available():
            self.backends.remove("native")
        self.impls = ("auto", "fused", "foreach", "per_parameter")

    def dt(self, name):
        return None if name is None else getattr(self.torch, name)

    def from64(self, a, dtype: str):
        return self.torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).to(self.dt(dtype))

    def to64(self, t) -> np.ndarray:
        return t.detach().to(self.torch.float64).cpu().numpy().copy()

    def dtype_name(self, t) -> str:
        return str(t.dtype).removeprefix("torch.")

    def noncontiguous(self, a64, dtype):
        return self.from64(np.swapaxes(a64, -1, -2), dtype).transpose(-1, -2)

    def ortho(self, G, opts: dict):
        kw = dict(opts)
        if "dtype" in kw:
            kw["dtype"] = self.dt(kw["dtype"])
        return self.ft.orthogonalize(G, **kw)

    def compute_dtype(self, opts: dict, shape, method: str) -> str:
        cd = self.omod.resolve_compute_dtype(self.dt(opts.get("dtype")), opts.get("backend", "auto"),
                                             self.torch.device("cpu"), self.torch.Size(shape), method)
        return str(cd).removeprefix("torch.")


class MlxFW:
    name = "mlx"

    def __init__(self):
        import mlx.core as mx

        import fastmuon.mlx as fm

        self.mx, self.fm = mx, fm
        self.omod = importlib.import_module("fastmuon.mlx.orthogonalize")
        from fastmuon.native import mlx_ext_available

        self.backends = [b for b in ("auto", "reference", "native") if b in fm.BACKENDS]
        if not mlx_ext_available():
            self.backends.remove("native")
        self.impls = ("auto", "fused", "per_parameter")

    def dt(self, name):
        return None if name is None else getattr(self.mx, name)

    def from64(self, a, dtype: str):
        mx = self.mx
        return mx.array(np.ascontiguousarray(a, dtype=np.float64), dtype=mx.float64).astype(self.dt(dtype))

    def to64(self, a) -> np.ndarray:
        return np.array(a.astype(self.mx.float64)).copy()

    def dtype_name(self, a) -> str:
        return str(a.dtype).removeprefix("mlx.core.")

    def noncontiguous(self, a64, dtype):
        return self.mx.swapaxes(self.from64(np.swapaxes(a64, -1, -2), dtype), -1, -2)

    def ortho(self, G, opts: dict):
        kw = dict(opts)
        if "dtype" in kw:
            kw["dtype"] = self.dt(kw["dtype"])
        out = self.fm.orthogonalize(G, **kw)
        self.mx.eval(out)
        return out

    def compute_dtype(self, opts: dict, shape, method: str) -> str:
        return str(self.omod.resolve_compute_dtype(self.dt(opts.get("dtype")), method)).removeprefix("mlx.core.")


# ------------------------------------------------------------------------------ calibration

class Calibration:
    """Worst errors of orthogonalize on normal-magnitude inputs, per framework and compute
    dtype (and method, steps bucket), against the float64 reference."""

    def __init__(self):
        self.determined = {}  # (fw, dtype, method, bucket) -> worst || (O - R) V ||_2
        self.ratio = {}  # (fw, dtype) -> worst || O - R ||_2 / (u A)
        self.seconds = {}
        self.over_cap = []  # Results of calibration cases above CALIBRATION_CAP x u A

    def run(self, fw, cases: int = CALIBRATION_CASES) -> None:
        start = time.time()
        rng = np.random.default_rng([CALIBRATION_SEED, 0 if fw.name == "torch" else 1])
        for cd in FLOATS:
            for method in METHODS:
                if method == "gram" and INFO[cd]["u"] > U32:
                    continue
                for bucket, (lo, hi) in (("1-2", (1, 2)), ("3-5", (3, 5)), ("6+", (6, 9))):
                    worst = 0.0
                    for _ in range(cases):
                        steps = int(rng.integers(lo, hi + 1))
                        m, n = log_dim(rng, 1, 80), log_dim(rng, 1, 80)
                        shape = (m, n) if rng.random() < 0.7 else (int(rng.integers(2, 4)), min(m, 48), min(n, 48))
                        struct = str(rng.choice(["gaussian", "lowrank", "illcond", "rank1"]))
                        G = make_matrices(rng, shape, struct) * (0.5 + rng.random())
                        backend = "native" if (cd == "float32" and "native" in fw.backends and rng.random() < 0.5) \
                            else "reference"
                        opts = dict(method=method, steps=steps, dtype=cd, backend=backend)
                        O = fw.to64(fw.ortho(fw.from64(G, "float64"), opts))
                        plan = make_plan(method, steps, None).for_shape(*G.shape[-2:])
                        R = ref_orthogonalize(G, plan, cd)
                        A, _, _ = amp_info(plan.coefficients, plan.norm_scale)
                        uA = INFO[cd]["u"] * A
                        for index, Gm in matrices(G):
                            D = O[index] - R[index]
                            ratio = spectral(D) / uA
                            if not ratio <= CALIBRATION_CAP:
                                case = dict(kind="calibration", shape=list(shape), struct=struct, input="float64",
                                            opts=opts, matrix=list(index))
                                res = Result(fw.name, -1 - len(self.over_cap), case)
                                res.fail("calibration_over_model", f"normal-magnitude input: ||O - R||_2 = "
                                         f"{spectral(D):.3g} = {ratio:.3g} u A > {CALIBRATION_CAP} u A "
                                         f"(u A = {uA:.3g}, compute {cd})")
                                self.over_cap.append(res)
                                continue
                            worst = max(worst, spectral(D @ determined_basis(Gm)))
                            key = (fw.name, cd)
                            self.ratio[key] = max(self.ratio.get(key, 0.0), ratio)
                    self.determined[(fw.name, cd, method, bucket)] = max(worst, 4 * INFO[cd]["u"])
        self.seconds[fw.name] = time.time() - start

    def tol_determined(self, fw: str, cd: str, method: str, steps: int) -> float:
        if method == "gram" and (fw, cd, method, steps_bucket(steps)) not in self.determined:
            method = "polar_express"
        return MULTIPLE * self.determined[(fw, cd, method, steps_bucket(steps))]

    def tol_full(self, fw: str, cd: str, A: float) -> float:
        return MULTIPLE * self.full_ratio(fw, cd) * INFO[cd]["u"] * A

    def full_ratio(self, fw: str, cd: str) -> float:
        return max(self.ratio.get((fw, cd), CALIBRATION_CAP), 0.01)

    def table(self) -> dict:
        return {"determined": {"/".join(k): v for k, v in sorted(self.determined.items())},
                "full_ratio": {"/".join(k): v for k, v in sorted(self.ratio.items())},
                "seconds": self.seconds}


# ------------------------------------------------------------------------------ config generation

def gen_iteration_options(rng, fw, *, optimizer: bool) -> dict:
    """method / steps / coefficients / eps / backend / compute dtype, mostly valid together."""
    opts: dict = {}
    method = str(rng.choice(METHODS, p=[0.25, 0.2, 0.2, 0.15, 0.2]))
    if rng.random() < 0.8 or method != "auto":  # "auto", the default, is sometimes left implicit
        opts["method"] = method
    steps_key = "ns_steps" if optimizer else "steps"
    if rng.random() < 0.5:
        opts[steps_key] = int(rng.integers(1, 10))
    if rng.random() < 0.12:
        if optimizer:  # one (a, b, c) for every step: Newton-Schulz with these
            opts["method"] = "newton_schulz"
            opts["ns_coefficients"] = list(coef.JORDAN_NEWTON_SCHULZ if rng.random() < 0.5 else coef.STEADY_STATE)
            method = "newton_schulz"
        else:
            name = str(rng.choice(COEFF_SETS))
            k = int(rng.integers(1, 8))
            opts["coefficients"] = name  # resolved by coefficient_set at run time
            opts["coefficients_k"] = k
            if rng.random() < 0.5:
                opts[steps_key] = len(coefficient_set(name, k))
            else:
                opts.pop(steps_key, None)
    if rng.random() < 0.3:
        opts["eps"] = float(rng.choice([1e-30, 1e-12, 1e-7, 1e-3, 1.0, 1e3]))
    if rng.random() < 0.75:
        opts["backend"] = str(rng.choice(fw.backends))
    dtype_key = "ns_dtype" if optimizer else "dtype"
    if rng.random() < 0.45:
        choices = ["float32", "float64", "bfloat16", "float16"]
        if opts.get("backend") == "native" and rng.random() < 0.85:
            choices = ["float32"]
        if method == "gram" and rng.random() < 0.9:
            choices = [c for c in choices if c in ("float32", "float64")] or ["float32"]
        opts[dtype_key] = str(rng.choice(choices))
    return opts


def gen_ortho_config(rng, fw) -> dict:
    shape = gen_ortho_shape(rng)
    dtype = str(rng.choice(FLOATS, p=[0.3, 0.4, 0.18, 0.12]))
    batch = len(shape) > 2 and int(np.prod(shape[:-2])) > 1
    cfg = dict(kind="ortho", shape=shape, dtype=dtype, magnitude=gen_magnitude(rng, dtype),
               struct=gen_struct(rng, batch), opts=gen_iteration_options(rng, fw, optimizer=False))
    if rng.random() < 0.06 and int(np.prod(shape)) > 0:
        cfg["poison"] = str(rng.choice(["nan", "inf", "-inf", "nan_all"]))
    if rng.random() < 0.12:
        cfg["noncontiguous"] = True
    if fw.name == "torch" and rng.random() < 0.06:
        cfg["requires_grad"] = True
    return cfg


LRS = (0.02, 0.1, 0.5, 1.0 / 64, 0.0, 1e-3, 2.0)
MOMENTA = (0.95, 0.9, 0.0, 0.5, 0.99, 0.999)
DECAYS = (0.0, 0.0, 0.1, 0.01, 1.0, 5.0)
BETA2S = (0.95, 0.9, 0.0, 0.5, 0.999)


def gen_muon_options(rng, fw, *, sphere_ok: bool, impl_ok: bool = True) -> dict:
    opts: dict = {}
    if rng.random() < 0.5:
        opts["lr"] = float(rng.choice(LRS))
    if rng.random() < 0.4:
        opts["momentum"] = float(rng.choice(MOMENTA))
    if rng.random() < 0.4:
        opts["nesterov"] = bool(rng.random() < 0.5)
    if rng.random() < 0.4:
        opts["weight_decay"] = float(rng.choice(DECAYS))
    if rng.random() < 0.3:
        opts["adjust_lr"] = str(rng.choice(["original", "match_rms_adamw"]))
    if rng.random() < 0.3:
        opts["cautious_weight_decay"] = bool(rng.random() < 0.6)
    if impl_ok and rng.random() < 0.4:
        weights = np.array([0.4, 0.15, 0.15, 0.3]) if len(fw.impls) == 4 else np.ones(len(fw.impls))
        opts["impl"] = str(rng.choice(fw.impls, p=weights / weights.sum()))
    opts.update(gen_iteration_options(rng, fw, optimizer=True))
    if sphere_ok and rng.random() < 0.1:
        opts["sphere"] = str(rng.choice(["project", "geodesic"]))
        opts["weight_decay"] = 0.0
    return opts


def gen_param_shape(rng, fw_name: str, cls: str, role: str):
    """A weight shape: role "muon" (2-D, 3-D stacks, 4-D convs; MLX Muon also 0-D/1-D),
    "adamw" (any) or "signsgd" (any)."""
    def dim(high=64):
        return log_dim(rng, 1, high)
    r = rng.random()
    if role == "muon" and fw_name == "torch":
        lowdim = False
    else:
        lowdim = role != "muon" or cls in ("Muon", "NorMuon")
    if lowdim and r < 0.15:
        return [dim()] if rng.random() < 0.85 else []
    if r < 0.62:
        shape = [dim(96), dim(96)]
    elif r < 0.8:
        shape = [int(rng.integers(1, 4)), dim(48), dim(48)]
    elif r < 0.95:
        k = int(rng.choice([1, 3]))
        shape = [dim(32), dim(16), k, k]
    else:
        shape = [dim(), 0] if rng.random() < 0.5 else [0, dim()]
    return shape


def gen_optim_config(rng, fw) -> dict:
    torch_fw = fw.name == "torch"
    cls = str(rng.choice(["Muon", "NorMuon", "MuonWithAdamW", "SignSGD"], p=[0.35, 0.2, 0.3, 0.15]))
    n_params = int(rng.integers(1, 5))
    base_dtype = str(rng.choice(FLOATS, p=[0.2, 0.5, 0.2, 0.1]))
    params = []
    for i in range(n_params):
        dtype = base_dtype if rng.random() < 0.75 else str(rng.choice(FLOATS))
        if cls == "MuonWithAdamW":
            role = "muon" if rng.random() < 0.6 else "adamw"
        else:
            role = "signsgd" if cls == "SignSGD" else "muon"
        shape = gen_param_shape(rng, fw.name, cls, role)
        if role == "muon" and cls == "MuonWithAdamW" and len(shape) < 2:
            role = "adamw"
        name = {"muon": "w", "adamw": "embed" if len(shape) >= 2 else "b", "signsgd": "p"}[role] + str(i)
        init = str(rng.choice(["normal", "zero", "small"], p=[0.85, 0.1, 0.05]))
        params.append(dict(name=name, shape=shape, dtype=dtype, role=role, init=init))
    cfg = dict(kind="optim", cls=cls, params=params, steps=int(rng.integers(2, 6)))

    ctor: dict = {}
    if cls == "SignSGD":
        if rng.random() < 0.6:
            ctor["lr"] = float(rng.choice(LRS))
        if rng.random() < 0.5:
            ctor["weight_decay"] = float(rng.choice(DECAYS))
        if rng.random() < 0.4:
            ctor["sparse"] = bool(rng.random() < 0.6)
    else:
        ctor = gen_muon_options(rng, fw, sphere_ok=torch_fw)
        if cls == "NorMuon" and rng.random() < 0.6:
            ctor["beta2"] = float(rng.choice(BETA2S))
        if cls == "MuonWithAdamW":
            if rng.random() < 0.25:
                ctor["beta2"] = float(rng.choice(BETA2S))
            if rng.random() < 0.5:
                ctor["adamw_lr"] = float(rng.choice([1e-3, 1e-2, 0.1, 0.0]))
            if rng.random() < 0.3:
                pairs = [(0.9, 0.95), (0.9, 0.999), (0.0, 0.5), (0.5, 0.0)]
                ctor["adamw_betas"] = [float(b) for b in pairs[int(rng.integers(len(pairs)))]]
            if rng.random() < 0.3:
                ctor["adamw_eps"] = float(rng.choice([1e-10, 1e-8, 1e-4]))
            if any(p["dtype"] == "float16" and p["role"] == "adamw" for p in params) and rng.random() < 0.8:
                ctor["adamw_eps"] = 1e-4  # float16 refuses eps < ~3e-8 (a clear error, tested in "invalid")
            if rng.random() < 0.3:
                ctor["adamw_weight_decay"] = float(rng.choice([0.0, 0.1, 1.0]))
    if torch_fw:
        needs_nd = any(len(p["shape"]) > 2 for p in params if p["role"] == "muon")
        if cls in ("Muon", "NorMuon", "MuonWithAdamW") and needs_nd and rng.random() < 0.95:
            ctor["allow_nd"] = True
        # param groups: a random split; each group may override options
        order = list(rng.permutation(n_params))
        if cls == "MuonWithAdamW":
            muon_idx = [i for i in order if params[i]["role"] == "muon"]
            adam_idx = [i for i in order if params[i]["role"] == "adamw"]
            groups = []
            for idx, use_muon in ((muon_idx, True), (adam_idx, False)):
                while idx:
                    k = int(rng.integers(1, len(idx) + 1))
                    groups.append(dict(params=[int(i) for i in idx[:k]], use_muon=use_muon, opts={}))
                    idx = idx[k:]
        else:
            groups = []
            while order:
                k = int(rng.integers(1, len(order) + 1))
                groups.append(dict(params=[int(i) for i in order[:k]], opts={}))
                order = order[k:]
        for g in groups:
            if rng.random() < 0.4:
                if cls == "SignSGD":
                    g["opts"] = {k: v for k, v in dict(lr=float(rng.choice(LRS)),
                                                       weight_decay=float(rng.choice(DECAYS))).items()
                                 if rng.random() < 0.6}
                elif g.get("use_muon", True):
                    o = gen_muon_options(rng, fw, sphere_ok=True)
                    if "ns_coefficients" in ctor:  # the constructor fixed Newton-Schulz's coefficients
                        o.pop("method", None)
                    g["opts"] = {k: v for k, v in o.items() if rng.random() < 0.6}
                    if "sphere" in g["opts"]:
                        g["opts"]["weight_decay"] = 0.0
                    if "ns_coefficients" in g["opts"]:
                        g["opts"]["method"] = "newton_schulz"
                    if g["opts"].get("sphere") is None and "sphere" in ctor and "weight_decay" in g["opts"]:
                        g["opts"]["weight_decay"] = 0.0
                else:
                    o = dict(lr=float(rng.choice([1e-3, 1e-2, 0.1])), betas=[0.9, float(rng.choice([0.95, 0.999]))],
                             eps=float(rng.choice([1e-10, 1e-8, 1e-4])), weight_decay=float(rng.choice([0.0, 0.1])))
                    g["opts"] = {k: v for k, v in o.items() if rng.random() < 0.5}
        cfg["groups"] = groups
        if cls in ("Muon",) and rng.random() < 0.2:
            cfg["positional"] = True
            for key, choices in (("lr", LRS), ("weight_decay", DECAYS), ("momentum", MOMENTA)):
                ctor.setdefault(key, float(rng.choice(choices)))
            if ctor.get("sphere") is not None:
                ctor["weight_decay"] = 0.0
        if cls != "SignSGD" and rng.random() < 0.12:
            cfg["lr_tensor"] = True
            ctor.setdefault("lr", 0.02)
    else:
        if rng.random() < 0.15:
            cfg["lr_schedule"] = True
        if rng.random() < 0.12:
            cfg["grad_dtype"] = "float32"
    if rng.random() < 0.08:
        cfg["numpy_scalars"] = True  # options given as numpy scalars (e.g. read from a numpy config)
    cfg["ctor"] = ctor

    grads = []
    for t in range(cfg["steps"]):
        row = []
        for p in params:
            g = dict(struct=gen_struct(rng, len(p["shape"]) == 3 and p["shape"][0] > 1, allow_zero_rows=True),
                     magnitude=gen_magnitude(rng, p["dtype"], normal=0.65))
            if rng.random() < 0.06:
                g["poison"] = str(rng.choice(["nan", "inf", "-inf", "nan_all"]))
            if torch_fw and rng.random() < 0.05:
                g["none"] = True
            row.append(g)
        grads.append(row)
    cfg["grads"] = grads
    if rng.random() < 0.4:
        cfg["roundtrip_after"] = int(rng.integers(0, cfg["steps"] - 1))
    return cfg


# Invalid options: (target, options, keywords the message must contain (any), allowed types)
def invalid_cases(fw_name: str):
    nan, inf = float("nan"), float("inf")
    optimizer = [
        ("Muon", dict(momentum=1.0), ("momentum",)), ("Muon", dict(momentum=-0.1), ("momentum",)),
        ("Muon", dict(momentum="0.9"), ("momentum",)), ("Muon", dict(momentum=nan), ("momentum",)),
        ("Muon", dict(nesterov="no"), ("nesterov",)), ("Muon", dict(weight_decay=-0.1), ("weight_decay",)),
        ("Muon", dict(weight_decay=inf), ("weight_decay",)), ("Muon", dict(weight_decay=nan), ("weight_decay",)),
        ("Muon", dict(ns_steps=0), ("steps",)), ("Muon", dict(ns_steps=2.5), ("steps",)),
        ("Muon", dict(ns_steps=True), ("steps",)), ("Muon", dict(method="svd"), ("method",)),
        ("Muon", dict(adjust_lr="spectral"), ("adjust_lr",)), ("Muon", dict(backend="cuda"), ("backend",)),
        ("Muon", dict(impl="fast"), ("impl",)), ("Muon", dict(eps=0.0), ("eps",)), ("Muon", dict(eps=-1e-8), ("eps",)),
        ("Muon", dict(eps=nan), ("eps",)), ("Muon", dict(eps=inf), ("eps",)), ("Muon", dict(eps=True), ("eps",)),
        ("Muon", dict(eps="1e-6"), ("eps",)), ("Muon", dict(lr=-1.0), ("lr", "learning_rate")),
        ("Muon", dict(lr=nan), ("lr", "learning_rate")), ("Muon", dict(lr=inf), ("lr", "learning_rate")),
        ("Muon", dict(lr="0.1"), ("lr", "learning_rate")),
        ("Muon", dict(ns_coefficients=[1.0, 2.0]), ("coefficients",)),
        ("Muon", dict(ns_coefficients=["a", "b", "c"]), ("coefficients",)),
        ("Muon", dict(ns_coefficients=[nan, 0.0, 0.0]), ("coefficients",)),
        ("Muon", dict(ns_coefficients=[3.4445, -4.775, 2.0315], method="gram"), ("ns_coefficients",)),
        ("Muon", dict(ns_dtype="int32"), ("dtype",)), ("Muon", dict(ns_dtype="str:float32"), ("dtype",)),
        ("Muon", dict(ns_dtype="bfloat16", method="gram"), ("gram", "dtype")),
        ("Muon", dict(cautious_weight_decay="yes"), ("cautious",)),
        ("Muon", dict(sphere="exp"), ("sphere",)), ("Muon", dict(unknown_option=1), ("unknown_option",)),
        ("NorMuon", dict(beta2=1.0), ("beta2",)), ("NorMuon", dict(beta2=None), ("beta2",)),
        ("NorMuon", dict(beta2=-0.5), ("beta2",)),
        ("MuonWithAdamW", dict(adamw_betas=[0.9]), ("betas",)),
        ("MuonWithAdamW", dict(adamw_betas=[0.9, 1.0]), ("betas",)),
        ("MuonWithAdamW", dict(adamw_eps=-1.0), ("eps",)),
        ("MuonWithAdamW", dict(adamw_weight_decay=-1.0), ("weight_decay",)),
        ("MuonWithAdamW", dict(adamw_lr=-1.0), ("lr",)), ("MuonWithAdamW", dict(adamw_lr=nan), ("lr",)),
        ("MuonWithAdamW:fp16_adamw", dict(adamw_eps=1e-10), ("eps",)),
        ("SignSGD", dict(lr=-1.0), ("lr", "learning_rate")), ("SignSGD", dict(weight_decay=-1.0), ("weight_decay",)),
        ("SignSGD", dict(lr=nan), ("lr", "learning_rate")),
        ("Muon:int_param", {}, ("dtype", "float", "param", "integer")),
    ]
    if fw_name == "torch":
        optimizer += [
            ("Muon", dict(sphere="project", weight_decay=0.1), ("weight_decay", "sphere")),
            ("Muon", dict(backend="triton"), ("triton", "backend")),
            ("Muon", dict(lr="schedule"), ("lr",)),
            ("Muon:3d_no_allow_nd", {}, ("allow_nd", "param", "2-D", "shape")),
            ("Muon:1d", dict(allow_nd=True), ("param", "shape", "2-D", "0-D", "1-D")),
            ("Muon:grad_is_weight", {}, ("gradient",)),
            ("NorMuon", dict(impl="fused"), ("impl", "fused")),
            ("Muon:complex", {}, ("complex",)),
            ("Muon:group_momentum", dict(momentum=1.5), ("momentum",)),
            ("Muon:group_eps", dict(eps=0.0), ("eps",)),
            ("Muon", dict(lr="tensor2"), ("lr",)),
        ]
    else:
        optimizer += [
            ("Muon", dict(impl="foreach"), ("impl",)), ("NorMuon", dict(impl="fused"), ("impl", "fused")),
            ("Muon", dict(sphere="project"), ("sphere",)),
            ("Muon", dict(allow_nd=False), ("allow_nd",)), ("Muon", dict(backend="metal"), ("metal", "backend")),
            ("Muon", dict(lr="schedule_nan"), ("lr", "learning_rate")),
            ("Muon:grad_tree", {}, ("gradient", "parameter", "path")),
            ("Muon:grad_shape", {}, ("shape", "gradient", "param")),  # (torch refuses such a .grad itself)
            ("MuonWithAdamW", dict(lr_muon=0.02, learning_rate=0.02), ("lr_muon", "learning_rate")),
        ]
    ortho = [
        ("ortho", dict(steps=0), ("steps",)), ("ortho", dict(steps=-1), ("steps",)),
        ("ortho", dict(steps=2.5), ("steps",)), ("ortho", dict(steps=True), ("steps",)),
        ("ortho", dict(method="svd"), ("method",)), ("ortho", dict(backend="cuda"), ("backend",)),
        ("ortho", dict(eps=0.0), ("eps",)), ("ortho", dict(eps=-1.0), ("eps",)), ("ortho", dict(eps=nan), ("eps",)),
        ("ortho", dict(eps=inf), ("eps",)), ("ortho", dict(eps=True), ("eps",)),
        ("ortho", dict(dtype="int32"), ("dtype",)), ("ortho", dict(dtype="str:float32"), ("dtype",)),
        ("ortho", dict(coefficients=[]), ("coefficients",)),
        ("ortho", dict(coefficients=[(1.0, 2.0)]), ("coefficients",)),
        ("ortho", dict(coefficients=[("a", 0.0, 0.0)]), ("coefficients",)),
        ("ortho", dict(coefficients=[(nan, 0.0, 0.0)]), ("coefficients",)),
        ("ortho", dict(coefficients=[3.4445, -4.775, 2.0315]), ("coefficients",)),
        ("ortho", dict(coefficients=[coef.JORDAN_NEWTON_SCHULZ] * 3, steps=7), ("steps", "coefficients")),
        ("ortho", dict(method="gram", dtype="bfloat16"), ("gram", "dtype")),
        ("ortho", dict(method="gram", dtype="float16"), ("gram", "dtype")),
        ("ortho", dict(backend="native", dtype="float64"), ("native", "dtype")),
        ("ortho:1d", {}, ("G", "shape", "matrix")), ("ortho:0d", {}, ("G", "shape", "matrix")),
        ("ortho:int", {}, ("G", "float", "dtype")), ("ortho:numpy", {}, ("G", "tensor", "array")),
        ("ortho", dict(unknown=1), ("unknown",)),
    ]
    if fw_name == "torch":
        ortho += [("ortho", dict(backend="triton"), ("triton",)), ("ortho:sparse", {}, ("dense", "G", "layout")),
                  ("ortho:requires_grad_native", dict(backend="native"), ("native", "grad")),
                  ("ortho", dict(backend="native", dtype="bfloat16"), ("native", "dtype"))]
    else:
        ortho += [("ortho", dict(backend="metal"), ("metal",)), ("ortho", dict(backend="native", dtype="float16"),
                                                                 ("native", "dtype"))]
    return optimizer + ortho


def gen_invalid_config(rng, fw) -> dict:
    cases = invalid_cases(fw.name)
    target, opts, keywords = cases[int(rng.integers(len(cases)))]
    return dict(kind="invalid", target=target, opts=opts, keywords=list(keywords),
                dtype=str(rng.choice(["float32", "float64", "bfloat16"])))


def gen_config(seed: int, fw, index: int) -> dict:
    rng = np.random.default_rng([seed, 0 if fw.name == "torch" else 1, index, 0])
    r = rng.random()
    if r < 0.45:
        return gen_ortho_config(rng, fw)
    if r < 0.9:
        cfg = gen_optim_config(rng, fw)
        if fw.name == "torch":  # its own stream, so the rest of each seed's configurations stay as they were
            gen_layouts(np.random.default_rng([seed, 0, index, 1]), cfg)
        return cfg
    return gen_invalid_config(rng, fw)


def gen_layouts(rng, cfg: dict) -> None:
    """torch: some >= 2-D parameters stored transposed (their gradients too), or with only their
    gradients transposed; the kernels must read such tensors as they are, not as contiguous."""
    for p in cfg["params"]:
        if len(p["shape"]) >= 2:
            p["layout"] = str(rng.choice(["contiguous", "transposed", "transposed_grad"], p=[0.8, 0.1, 0.1]))


# ------------------------------------------------------------------------------ result record

class Result:
    def __init__(self, fw: str, index: int, cfg: dict):
        self.fw, self.index, self.cfg = fw, index, cfg
        self.failures: list = []  # dict(check, detail, bucket)
        self.error = None  # (class: clear/unclear, type, message, where)
        self.harness_error = None
        self.notes: list = []

    def fail(self, check: str, detail: str, bucket: str = "main") -> None:
        self.failures.append(dict(check=check, detail=short(detail, 400), bucket=bucket))

    def raised(self, exc: BaseException, where: str, keywords=CLEAR_WORDS, allowed=(ValueError, TypeError)) -> None:
        kind = classify_exception(exc, keywords, allowed)
        tb = traceback.extract_tb(exc.__traceback__)
        origin = f"{os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else ""
        self.error = dict(cls=kind, type=type(exc).__name__, message=short(str(exc), 400), where=where, origin=origin)

    @property
    def outcome(self) -> str:
        if self.harness_error:
            return "harness_error"
        if self.failures:
            return "silent"
        if self.error:
            return "clear_error" if self.error["cls"] == "clear" else "unclear_error"
        return "ok"

    def record(self, seconds: float) -> dict:
        return dict(framework=self.fw, index=self.index, outcome=self.outcome, failures=self.failures,
                    error=self.error, harness_error=self.harness_error, notes=self.notes,
                    seconds=round(seconds, 4), config=self.cfg)


# ------------------------------------------------------------------------------ orthogonalize

def resolve_iteration(opts: dict):
    """(plan, the options to pass to orthogonalize) from a generated config."""
    kw = {k: v for k, v in opts.items() if k != "coefficients_k"}
    if "coefficients" in kw:
        kw["coefficients"] = coefficient_set(kw["coefficients"], opts["coefficients_k"])
    plan = make_plan(kw.get("method", "auto"), kw.get("steps", 5), kw.get("coefficients"), kw.get("eps"))
    return plan, kw


def ortho_tolerances(cal: Calibration, fw: str, cd: str, out_dtype: str, plan, method_family: str, r: int, size: int):
    A, p_max, growth = amp_info(plan.coefficients, plan.norm_scale)
    steps = len(plan.coefficients)
    out_term = 2 * INFO[out_dtype]["u"] * math.sqrt(max(r, 1)) * max(p_max, 1.0) \
        if INFO[out_dtype]["u"] > INFO[cd]["u"] else 0.0
    # gradual underflow: the compute dtype's subnormal spacing, grown by the polynomials; the output's
    floor = 4 * (growth * INFO[cd]["sub"] + INFO[out_dtype]["sub"]) * math.sqrt(max(size, 1))
    full = cal.tol_full(fw, cd, A) + out_term + floor
    det = cal.tol_determined(fw, cd, method_family, steps) + out_term + floor
    return full, det, 1.5 * max(p_max, 1e-300) + out_term + floor


def check_ortho_result(res: Result, cal: Calibration, fw_name: str, cd: str, out_dtype: str, plan, family: str,
                       G: np.ndarray, O: np.ndarray, bucket: str, label: str = "", poisoned=None) -> dict:
    """Compare the library's O with the float64 reference of G, matrix by matrix."""
    worst = dict(full=0.0, det=0.0)
    if G.size == 0:
        return worst
    Gf = np.where(np.isfinite(G), G, 0.0)
    R = ref_orthogonalize(Gf, plan, cd)
    m, n = G.shape[-2:]
    tol_full, tol_det, tol_norm = ortho_tolerances(cal, fw_name, cd, out_dtype, plan, family, min(m, n), m * n)
    for index, Gm in matrices(G):
        Om, Rm = O[index], R[index]
        where = f"{label}matrix {index}" if index else f"{label}matrix"
        if poisoned is not None and index == poisoned:
            if finite(Om):
                res.fail("ortho_nan_swallowed", f"{where}: NaN/Inf input came out all finite "
                         f"(max |O| = {np.max(np.abs(Om)):.3g})", bucket)
            continue
        if not finite(Om):
            res.fail("nonfinite_output", f"{where}: finite input of max |G| = {np.max(np.abs(Gm)):.3g}, "
                     f"output has {int(np.sum(~np.isfinite(Om)))} NaN/Inf of {Om.size}", bucket)
            continue
        if not np.any(Gm) and np.any(Om):
            res.fail("ortho_zero", f"{where}: zero input gave max |O| = {np.max(np.abs(Om)):.3g}", bucket)
            continue
        D = Om - Rm
        e_full = spectral(D)
        e_det = spectral(D @ determined_basis(Gm))
        norm = spectral(Om)
        worst["full"], worst["det"] = max(worst["full"], e_full / tol_full), max(worst["det"], e_det / tol_det)
        if e_det > tol_det:
            res.fail("ortho_determined", f"{where}: ||(O-R)V||_2 = {e_det:.3g} > tol {tol_det:.3g} "
                     f"(compute {cd}, ||R||_2 = {spectral(Rm):.3g}, ||O||_2 = {norm:.3g})", bucket)
        elif e_full > tol_full:
            res.fail("ortho_full", f"{where}: ||O-R||_2 = {e_full:.3g} > tol {tol_full:.3g} (compute {cd})", bucket)
        elif norm > tol_norm:
            res.fail("ortho_norm", f"{where}: ||O||_2 = {norm:.3g} > {tol_norm:.3g}", bucket)
    return worst


def run_ortho(fw, cfg: dict, drng, cal: Calibration, res: Result, torch_fw=None) -> None:
    shape, dtype, label = cfg["shape"], cfg["dtype"], cfg["magnitude"]
    bucket = "huge" if label in HUGE else "main"
    data = make_matrices(drng, shape, cfg["struct"]) * magnitude_value(dtype, label)
    poisoned = None
    if cfg.get("poison"):
        poisoned = tuple(int(drng.integers(s)) for s in shape[:-2])
        data = poison(drng, data, cfg["poison"], poisoned)
    plan, kw = resolve_iteration(cfg["opts"])
    family = "gram" if plan.uses_gram else coefficient_family(cfg["opts"]["coefficients"]) \
        if "coefficients" in cfg["opts"] else plan.method
    G = fw.noncontiguous(data, dtype) if cfg.get("noncontiguous") else fw.from64(data, dtype)
    if cfg.get("requires_grad"):
        G.requires_grad_(True)
    G_exact = fw.to64(G)
    if fw.name == "torch" and not cfg.get("poison") and not finite(G_exact) and finite(data):
        res.notes.append("the input overflowed in its dtype")  # cannot happen with the magnitudes above
    try:
        O = fw.ortho(G, kw)
        O64 = fw.to64(O)
    except Exception as exc:  # noqa: BLE001
        res.raised(exc, "orthogonalize")
        return
    cd = fw.compute_dtype(kw, shape, plan.method)
    if tuple(O.shape) != tuple(shape):
        res.fail("ortho_shape", f"output shape {tuple(O.shape)} != input shape {tuple(shape)}", bucket)
        return
    if fw.dtype_name(O) != dtype:
        res.fail("ortho_dtype", f"output dtype {fw.dtype_name(O)} != input dtype {dtype}", bucket)
    worst = check_ortho_result(res, cal, fw.name, cd, dtype, plan, family, G_exact, O64, bucket, poisoned=poisoned)
    res.notes.append(dict(compute=cd, worst_full=worst["full"], worst_det=worst["det"]))

    # explicit scale invariance: G vs G / 2^k (the library's own results, same options)
    if label != "1" and G_exact.size and finite(G_exact) and np.any(G_exact) and poisoned is None:
        k = int(np.frexp(np.max(np.abs(G_exact)))[1])
        G0 = np.ldexp(G_exact, -k)
        G0_t = fw.from64(G0, dtype)
        if nan_equal(np.ldexp(fw.to64(G0_t), k), G_exact):
            eps0 = np.ldexp(plan.eps, -k)
            if 0 < eps0 < 1e300:
                kw0 = dict(kw, eps=float(eps0))
                try:
                    O0 = fw.to64(fw.ortho(G0_t, kw0))
                except Exception as exc:  # noqa: BLE001
                    res.raised(exc, "orthogonalize (scale-invariance twin)")
                    return
                m, n = shape[-2:]
                tol_full, tol_det, _ = ortho_tolerances(cal, fw.name, cd, dtype, plan, family, min(m, n), m * n)
                for index, Gm in matrices(G0):
                    d = spectral((O64[index] - O0[index]) @ determined_basis(Gm))
                    if finite(O64[index]) and d > 2 * tol_det:
                        res.fail("ortho_scale_invariance", f"matrix {index}: orthogonalize(G) vs "
                                 f"orthogonalize(G/2^{k}, eps/2^{k}): ||(O1-O2)V||_2 = {d:.3g} > {2 * tol_det:.3g}",
                                 bucket)
                        break

    # torch vs mlx on the same input and options
    if torch_fw is not None and poisoned is None and G_exact.size and finite(G_exact):
        try:
            Gt = torch_fw.from64(G_exact, dtype)
            Ot = torch_fw.to64(torch_fw.ortho(Gt, kw))
            cdt = torch_fw.compute_dtype(kw, shape, plan.method)
        except Exception:  # noqa: BLE001  (options torch refuses: nothing to compare)
            return
        m, n = shape[-2:]
        tm = ortho_tolerances(cal, fw.name, cd, dtype, plan, family, min(m, n), m * n)
        tt = ortho_tolerances(cal, "torch", cdt, dtype, plan, family, min(m, n), m * n)
        for index, Gm in matrices(G_exact):
            if not (finite(Ot[index]) and finite(O64[index])):
                continue
            d = spectral((O64[index] - Ot[index]) @ determined_basis(Gm))
            if d > tm[1] + tt[1]:
                res.fail("torch_vs_mlx", f"matrix {index}: ||(O_mlx - O_torch) V||_2 = {d:.3g} > {tm[1] + tt[1]:.3g} "
                         f"(compute mlx {cd}, torch {cdt})", bucket)
                break


# ------------------------------------------------------------------------------ optimizers: reference

def view_of(shape):
    if len(shape) < 2:
        return None
    return refopt.matrix_view(shape)


def hp_for(cfg: dict, group_opts: dict, role: str) -> dict:
    """The hyperparameters a parameter should step with (documented defaults <- constructor <-
    its param group)."""
    ctor = cfg["ctor"]
    if role == "signsgd":
        hp = dict(SIGNSGD_DEFAULTS)
        hp.update({k: v for k, v in ctor.items() if k in hp})
        hp.update(group_opts)
        return hp
    if role == "adamw":
        hp = dict(ADAMW_DEFAULTS)
        for key in ("lr", "betas", "eps", "weight_decay"):
            if f"adamw_{key}" in ctor:
                hp[key] = ctor[f"adamw_{key}"]
        hp.update(group_opts)
        hp["betas"] = tuple(hp["betas"])
        return hp
    hp = dict(MUON_DEFAULTS)
    if cfg["cls"] == "NorMuon":
        hp["beta2"] = NORMUON_BETA2
    hp.update({k: v for k, v in ctor.items() if k in hp})
    hp.update({k: v for k, v in group_opts.items() if k in hp})
    if cfg.get("lr_tensor") and "lr" not in group_opts:
        hp["lr"] = float(np.float32(hp["lr"]))
    return hp


def muon_plan(hp: dict):
    coeffs = None if hp["ns_coefficients"] is None else [tuple(hp["ns_coefficients"])] * hp["ns_steps"]
    return make_plan(hp["method"], hp["ns_steps"], coeffs, hp["eps"])


def rows_normalized(W):
    """Rows scaled to unit norm (zero rows stay zero), each divided by its largest entry first so
    that the squares of tiny rows do not underflow (a row of 1e-200 has a norm of 0 otherwise)."""
    peak = np.max(np.abs(W), axis=-1, keepdims=True) if W.shape[-1] else np.ones(W.shape[:-1] + (1,))
    scaled = W / np.where(peak > 0, peak, 1.0)
    return scaled / np.maximum(np.linalg.norm(scaled, axis=-1, keepdims=True), 1e-300)


def muon_reference(W, M, s, G, hp, is_matrix: bool, cd: str):
    """One float64 Muon/NorMuon step of one weight (shape W.shape), orthogonalized as in compute
    dtype ``cd`` (``ref_orthogonalize``); returns a dict."""
    beta = hp["momentum"]
    M_new = beta * M + (1 - beta) * G
    U = (1 - beta) * G + beta * M_new if hp["nesterov"] else M_new
    out = dict(M=M_new, U=U, kappa=1.0, s=None)
    if not is_matrix:  # MLX 0-D/1-D: the momentum step
        O, scale = U, 1.0
        out.update(O_pre=U)
    else:
        b, R, C = refopt.matrix_view(W.shape)
        plan = muon_plan(hp)
        plan = plan.for_shape(R, C)
        O = ref_orthogonalize(U.reshape(b, R, C), plan, cd)
        out.update(O_pre=O, plan=plan, view=(b, R, C))
        scale = refopt.shape_scale(R, C, hp["adjust_lr"]) if C else 1.0
        if hp.get("beta2") is not None:
            O, out["s"], out["kappa"] = refopt.normuon_normalize(O, s, hp["beta2"])
    D = O.reshape(W.shape)
    lr, wd = hp["lr"], hp["weight_decay"]
    if hp.get("sphere") is not None and is_matrix:
        b, R, C = refopt.matrix_view(W.shape)
        Wv, Dv = W.reshape(b, R, C), (lr * scale) * D.reshape(b, R, C)
        if hp["sphere"] == "project":
            W_new = rows_normalized(Wv - Dv)
        else:
            w = rows_normalized(Wv)
            Dt = Dv - np.sum(Dv * w, axis=-1, keepdims=True) * w
            theta = np.linalg.norm(Dt, axis=-1, keepdims=True)
            W_new = w * np.cos(theta) - Dt * np.sinc(theta / np.pi)
        W_new = W_new.reshape(W.shape)
    else:
        W_new = refopt.decoupled_update(W, D, lr, wd, scale, hp["cautious_weight_decay"])
    out.update(W=W_new, D=D, scale=scale)
    return out


def adamw_reference(W, m, v, G, hp, t: int):
    b1, b2 = hp["betas"]
    m_new = b1 * m + (1 - b1) * G
    v_new = b2 * v + (1 - b2) * G * G
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    den = np.sqrt(v_new) / math.sqrt(bc2) + hp["eps"]
    with np.errstate(all="ignore"):
        ratio = np.where(den > 0, m_new / den, 0.0)
    W_new = W * (1 - hp["lr"] * hp["weight_decay"]) - (hp["lr"] / bc1) * ratio
    return dict(W=W_new, m=m_new, v=v_new, ratio=ratio, den=den, bc1=bc1)


def signsgd_reference(W, G, hp):
    W_new = W * (1 - hp["lr"] * hp["weight_decay"]) - hp["lr"] * np.sign(G)
    if hp.get("sparse") and W.ndim >= 1:
        touched = np.any(G.reshape(G.shape[0], -1) != 0, axis=1).reshape((G.shape[0],) + (1,) * (G.ndim - 1)) \
            if G.shape and G.shape[0] else np.zeros(G.shape, bool)
        W_new = np.where(touched, W_new, W)
    elif hp.get("sparse"):
        W_new = np.where(G != 0, W_new, W)
    return W_new


# ------------------------------------------------------------------------------ optimizers: checks

def check_close(res, check, what, got, want, tol, bucket, dtype: str = "float64") -> None:
    """|got - want| <= tol elementwise, where the exact value (with its tolerance) is
    representable in ``dtype``, the dtype ``got`` is stored in (beyond it, inf is right)."""
    if got.shape != want.shape:
        res.fail(check, f"{what}: shape {got.shape} != {want.shape}", bucket)
        return
    if got.size == 0:
        return
    if not finite(want):
        return  # the exact value itself overflows the float64 reference: nothing to compare
    tol = np.broadcast_to(np.asarray(tol, dtype=np.float64), want.shape)
    with np.errstate(all="ignore"):
        representable = np.abs(want) + tol <= INFO[dtype]["max"]
        excess = np.where(representable, np.abs(got - want) - tol, -np.inf)
    if not np.all(np.isfinite(got[representable])):
        bad = int(np.sum(~np.isfinite(got) & representable))
        res.fail("nonfinite_state" if check != "optim_weight" else "nonfinite_weight",
                 f"{what}: {bad} NaN/Inf of {got.size} (reference finite and representable in {dtype}, "
                 f"max |ref| = {np.max(np.abs(want)):.3g})", bucket)
        return
    if np.any(excess > 0):
        i = int(np.argmax(excess))
        res.fail(check, f"{what}: |got - ref| = {abs(got.flat[i] - want.flat[i]):.3g} > tol {tol.flat[i]:.3g} at "
                 f"flat {i} (got {got.flat[i]:.6g}, ref {want.flat[i]:.6g}; {int(np.sum(excess > 0))} of {got.size})",
                 bucket)


def check_muon_param(res, cal, fw_name, name, hp, pre, post, G, cd, pdtype, bucket, lr_used, state_keys, mlx: bool,
                     gdtype=None):
    """A finite step of one Muon parameter against the float64 reference from its pre-step state
    (the gradient's terms round in the gradient's dtype when it is coarser than the weight's)."""
    W, M = pre["W"], pre[state_keys["M"]]
    s = pre.get(state_keys["s"]) if state_keys.get("s") else None
    is_matrix = len(W.shape) >= 2
    hp = dict(hp, lr=lr_used)
    if hp.get("beta2") is not None and is_matrix and s is None:
        res.fail("optim_state_missing", f"{name}: NorMuon has no second moment", bucket)
        return
    ref = muon_reference(W, M, s, G, hp, is_matrix, cd)
    # the momentum is stored in its own dtype (torch: the weight's; MLX: the gradient's, as mlx
    # makes state from the gradients); the gradient's terms round in the gradient's dtype
    mdtype = state_keys.get("M_dtype", pdtype)
    up = INFO[coarser(pdtype, mdtype)]["u"]
    gdtype = coarser(coarser(pdtype, mdtype), gdtype or pdtype)
    ug = INFO[gdtype]["u"]
    tiny = 8 * max(INFO[pdtype]["sub"], INFO[mdtype]["sub"])  # gradual underflow, absolute
    tol_M = 4 * up * np.abs(M) + 4 * ug * np.abs(G) + tiny
    check_close(res, "optim_momentum", f"{name} momentum", post[state_keys["M"]], ref["M"], tol_M, bucket, mdtype)
    lr, wd, scale = hp["lr"], hp["weight_decay"], ref["scale"]
    if not is_matrix:  # MLX 0-D/1-D momentum step
        U = ref["U"]
        tol_U = 8 * up * np.abs(M) + 8 * ug * np.abs(G)
        tol_W = 4 * up * (np.abs(W) * (1 + lr * wd) + lr * np.abs(U)) + lr * (tol_U + tiny) + tiny
        if hp["cautious_weight_decay"] and wd:
            tol_W = tol_W + lr * wd * np.abs(W) * (np.abs(U) <= tol_U + tiny)  # U's sign lost to underflow
        if mlx:
            tol_W = tol_W + 2 * U32 * lr * (np.abs(U) + wd * np.abs(W))
        check_close(res, "optim_weight", f"{name} weight", post["W"], ref["W"], tol_W, bucket, pdtype)
        return
    b, R, C = ref["view"]
    if R * C == 0:
        check_close(res, "optim_weight", f"{name} weight", post["W"], ref["W"], np.zeros(W.shape), bucket, pdtype)
        return
    plan = ref["plan"]
    A, p_max, growth = amp_info(plan.coefficients, plan.norm_scale)
    family = "gram" if plan.uses_gram else "newton_schulz" if hp["ns_coefficients"] is not None else plan.method
    eff = coarser(coarser(cd, pdtype), gdtype)
    # cancellation in U = lerp(G, M): rounding relative to |G| + |M|, not to |U|; and the gradual
    # underflow of a 16-bit momentum. Per matrix of the view (a stack may mix magnitudes).
    U = ref["U"]
    Uv = U.reshape(b, R, C)
    inputs = (np.abs(G) + np.abs(M) + np.abs(ref["M"])).reshape(b, R, C)
    ue = max(up, ug)
    factor = np.ones(b)
    for k in range(b):
        unorm = safe_norm(Uv[k])
        rho = (4 * ue * safe_norm(inputs[k]) + tiny * math.sqrt(R * C)) / unorm if unorm > 0 else 0.0
        factor[k] = max(1.0, rho / (4 * ue))
    r = min(R, C)
    out_term = 2 * INFO[eff]["u"] * math.sqrt(r) * max(p_max, 1.0)
    floor = (4 * growth * INFO[cd]["sub"] + tiny) * math.sqrt(R * C)
    tol_full = factor * (MULTIPLE * cal.full_ratio(fw_name, eff) * (INFO[cd]["u"] + 2 * ue) * A) \
        + out_term + floor
    tol_det = factor * cal.tol_determined(fw_name, eff, family, len(plan.coefficients)) + out_term + floor
    tol_full = np.minimum(tol_full, 2 * 1.5 * max(p_max, 1.0) * math.sqrt(r))  # never looser than "any bounded O"
    O_ref = ref["D"]
    tol_O = tol_full
    if hp.get("beta2") is not None:
        tol_O = tol_full * math.sqrt(r) * (1 + 4 * ref["kappa"])
    tol_O_elem = np.broadcast_to(tol_O[:, None, None], (b, R, C)).reshape(W.shape)
    lr_f32 = mlx or state_keys.get("lr_f32")  # the lr (and lr * scale, lr * wd, 1 - lr * wd) in float32
    tol_W = (lr * scale * tol_O_elem if lr * scale else 0.0) + tiny \
        + 4 * up * (np.abs(W) * (1 + lr * wd) + lr * scale * np.abs(O_ref))
    if hp["cautious_weight_decay"] and wd and hp.get("sphere") is None:
        tol_W = tol_W + lr * wd * np.abs(W) * (np.abs(O_ref) <= tol_O_elem)
    if hp.get("sphere") is not None:
        Wv = W.reshape(b, R, C)
        rows = np.linalg.norm(rows_normalized(Wv) if hp["sphere"] == "geodesic" else Wv, axis=-1)
        shortest = max(float(np.min(rows)) if rows.size else 1.0, 1e-3)
        tol_W = (4 * lr * scale * float(np.max(tol_O)) if lr * scale else 0.0) / shortest + 16 * up + tiny
        tol_W = np.full(W.shape, tol_W)
    if lr_f32:
        # on the sphere the step mixes each row (projection, rotation): the lr's rounding moves
        # an entry by up to its row's update, relative to the shortest row
        O_mag = np.abs(O_ref) if hp.get("sphere") is None else \
            np.full(W.shape, float(np.max(np.linalg.norm(O_ref.reshape(b, R, C), axis=-1))) / shortest)
        tol_W = tol_W + 2 * U32 * lr * (scale * O_mag + wd * np.abs(W))
        if state_keys.get("lr_f32") and wd:  # torch: W * (1 - lr * wd) with that factor a float32 tensor
            tol_W = tol_W + 2 * U32 * np.abs(W)
    check_close(res, "optim_weight", f"{name} weight", post["W"], ref["W"], tol_W, bucket, pdtype)
    # the update's well-determined part, for plain Muon (the update is then linear in O)
    plain = hp.get("beta2") is None and hp.get("sphere") is None and not (hp["cautious_weight_decay"] and wd)
    if plain and lr * scale > 0 and finite(post["W"]) and finite(ref["W"]):
        O_lib = ((W * (1 - lr * wd) - post["W"]) / (lr * scale)).reshape(b, R, C)
        rounding = 4 * up * (np.abs(W) * (1 + lr * wd) + lr * scale * np.abs(O_ref)) / (lr * scale)
        if state_keys.get("lr_f32") and wd:
            rounding = rounding + 2 * U32 * np.abs(W) / (lr * scale)
        for k in range(b):
            basis = determined_basis(Uv[k])
            if basis.shape[1] == 0:
                continue
            d = spectral((O_lib[k] - ref["O_pre"][k]) @ basis)
            worst_rounding = float(np.max(rounding.reshape(b, R, C)[k])) + tiny / (lr * scale)
            allowed = tol_det[k] + math.sqrt(R * C) * worst_rounding
            if state_keys.get("lr_f32"):  # a Tensor lr: lr * scale rounded to float32
                allowed += 2 * U32 * math.sqrt(r) * max(p_max, 1.0)
            if d > allowed:
                res.fail("optim_update_determined", f"{name} matrix {k}: ||(O_step - O_ref) V||_2 = {d:.3g} > "
                         f"{allowed:.3g} (compute {cd}, weights {pdtype})", bucket)
                break
    if hp.get("beta2") is not None and state_keys.get("s"):
        s_got, s_ref = post[state_keys["s"]], ref["s"]
        us = INFO[state_keys.get("s_dtype", "float32")]["u"]
        Omax = float(np.max(np.abs(ref["O_pre"])))
        tf = float(np.max(tol_full))
        tol_s = (1 - hp["beta2"]) * (2 * Omax * tf + tf**2) + 4 * us * (np.abs(s) + np.abs(s_ref)) + 1e-30
        check_close(res, "optim_second_moment", f"{name} second_moment", s_got, s_ref.reshape(s_got.shape)
                    if s_ref.size == s_got.size else s_ref, tol_s, bucket, state_keys.get("s_dtype", "float32"))


def check_adamw_param(res, name, hp, pre, post, G, t, pdtype, bucket, lr_used, keys, mlx: bool, gdtype=None):
    """One finite AdamW step against the float64 reference. Roundings: the moments in the
    weight's dtype (the gradient's terms in the gradient's dtype, if coarser); the bias
    corrections 1 - beta^t in float32 (MLX; torch: float64 for float64 weights), whose relative
    error u beta^t / (1 - beta^t) grows as beta -> 1."""
    hp = dict(hp, lr=lr_used)
    W, m, v = pre["W"], pre[keys["m"]], pre[keys["v"]]
    ref = adamw_reference(W, m, v, G, hp, t)
    sdtype = post.get(keys["m"] + ":dtype", pdtype)  # MLX: the gradient's dtype
    u = INFO[coarser(pdtype, sdtype)]["u"]
    ug = INFO[coarser(coarser(pdtype, sdtype), gdtype or pdtype)]["u"]
    sub = 8 * max(INFO[pdtype]["sub"], INFO[sdtype]["sub"])
    check_close(res, "optim_adamw_m", f"{name} exp_avg", post[keys["m"]], ref["m"],
                4 * u * np.abs(m) + 4 * ug * np.abs(G) + sub, bucket, sdtype)
    check_close(res, "optim_adamw_v", f"{name} exp_avg_sq", post[keys["v"]], ref["v"],
                6 * u * np.abs(v) + 6 * ug * G * G + sub, bucket, sdtype)
    if not finite(post[keys["v"]]) or not finite(post[keys["m"]]):
        return
    step = hp["lr"] / ref["bc1"]
    b1, b2 = hp["betas"]
    uc = U32 if (mlx or pdtype != "float64") else INFO["float64"]["u"]
    corr = 4 * uc * (b1**t / max(1 - b1**t, 1e-300) + b2**t / max(1 - b2**t, 1e-300)) + 4 * u
    with np.errstate(all="ignore"):
        numerator = 8 * u * np.abs(m) + 8 * ug * np.abs(G) + 8 * u * np.abs(ref["m"])
        rel = np.where(ref["den"] > 0, numerator / ref["den"], 0.0)
    tol_W = 4 * u * np.abs(W) * (1 + hp["lr"] * hp["weight_decay"]) + sub \
        + step * (rel + (8 * u + corr) * np.abs(ref["ratio"]))
    if mlx:
        tol_W = tol_W + 4 * U32 * (step * np.abs(ref["ratio"]) + hp["lr"] * hp["weight_decay"] * np.abs(W))
    # the moments' gradual underflow in a 16-bit dtype (v = (1 - beta2) g^2 below its subnormals):
    # the denominator may shrink to eps, as in torch.optim.AdamW and mlx's AdamW; counted apart
    sbc2 = math.sqrt(1 - b2**t)
    m_lo, m_hi = np.abs(ref["m"]) - sub, np.abs(ref["m"]) + sub
    den_lo = np.sqrt(np.maximum(ref["v"] - sub, 0.0)) / sbc2 + hp["eps"]
    with np.errstate(all="ignore"):
        spread = step * np.maximum(np.abs(np.maximum(m_hi, 0) / den_lo - np.abs(ref["ratio"])),
                                   np.abs(np.maximum(m_lo, 0) / den_lo - np.abs(ref["ratio"])))
        if mlx:  # mlx's Adam forms lr / (1 - beta1^t) * m before dividing: that product may underflow too
            spread = spread + sub / den_lo
    spread = np.where(np.isfinite(spread), spread, np.inf)
    got, want = post["W"], ref["W"]
    if bucket == "main" and got.shape == want.shape and finite(got) and finite(want) \
            and np.any(np.abs(got - want) > tol_W) and not np.any(np.abs(got - want) > tol_W + spread):
        i = int(np.argmax(np.abs(got - want) - tol_W))
        res.fail("optim_weight_underflow", f"{name} weight: |got - ref| = {abs(got.flat[i] - want.flat[i]):.3g} > tol "
                 f"{tol_W.flat[i]:.3g} at flat {i} (got {got.flat[i]:.6g}, ref {want.flat[i]:.6g}), within the "
                 f"allowance for the moments' underflow in {sdtype} (v ref {ref['v'].flat[i]:.3g})", "adamw_range")
    else:
        check_close(res, "optim_weight", f"{name} weight", got, want, tol_W, bucket, pdtype)


def check_signsgd_param(res, name, hp, pre, post, G, pdtype, bucket, lr_used, mlx: bool):
    hp = dict(hp, lr=lr_used)
    W = pre["W"]
    ref = signsgd_reference(W, G, hp)
    u = INFO[pdtype]["u"]
    decay = abs(1 - hp["lr"] * hp["weight_decay"])
    tol = 4 * u * (np.abs(W) * decay + np.abs(ref) + hp["lr"]) + 8 * INFO[pdtype]["sub"]
    if mlx:
        tol = tol + 2 * U32 * hp["lr"] * (1 + hp["weight_decay"] * np.abs(W))
    check_close(res, "optim_weight", f"{name} weight", post["W"], ref, tol, bucket, pdtype)


def grad_data(drng, p: dict, g: dict) -> np.ndarray:
    shape = p["shape"]
    view = view_of(shape) if len(shape) >= 2 else tuple(shape)
    data = np.array(make_matrices(drng, view, g["struct"]).reshape(shape) * magnitude_value(p["dtype"], g["magnitude"]),
                    dtype=np.float64)
    if g.get("poison") and data.size:
        data = poison(drng, data, g["poison"])
    return data


def init_weight(drng, p: dict, sphere: bool) -> np.ndarray:
    shape = p["shape"]
    W = drng.standard_normal(shape) * 0.5
    if p["init"] == "zero":
        W = np.zeros(shape)
    elif p["init"] == "small":
        W = W * 1e-20
    if sphere and len(shape) >= 2 and W.size:
        b, R, C = refopt.matrix_view(shape)
        W = rows_normalized(W.reshape(b, R, C)).reshape(shape)
    return W


def param_bucket(history: list, p: dict, role: str, grad_dtype=None) -> str:
    """"adamw_range" if an AdamW parameter's gradient squares overflow its dtype or its
    gradient's; "huge" if a Muon parameter has seen a gradient of a huge magnitude (AdamW and
    SignSGD narrow nothing: their failures on huge gradients stay "main"); else "main"."""
    labels = [g["magnitude"] for g in history if not g.get("none")]
    top = min(INFO[p["dtype"]]["max"], INFO[grad_dtype or p["dtype"]]["max"])
    if role == "adamw" and any(magnitude_value(p["dtype"], lb) > math.sqrt(top) for lb in labels):
        return "adamw_range"
    if role == "muon" and any(label in HUGE for label in labels):
        return "huge"
    return "main"


# ------------------------------------------------------------------------------ optimizers: torch

def numpy_scalars(value):
    """Options as numpy scalars (as read from a numpy-based config): float -> numpy.float64,
    bool -> numpy.bool_, int -> numpy.int64 (lists and tuples element-wise); others as they are."""
    if isinstance(value, bool):
        return np.bool_(value)
    if isinstance(value, int):
        return np.int64(value)
    if isinstance(value, float):
        return np.float64(value)
    if isinstance(value, (list, tuple)):
        return type(value)(numpy_scalars(v) for v in value)
    return value


def torch_options(fw, opts: dict, as_numpy: bool = False) -> dict:
    out = {}
    for k, v in opts.items():
        if as_numpy:
            v = numpy_scalars(v)
        if k == "ns_dtype" and isinstance(v, str):
            v = v[4:] if v.startswith("str:") else fw.dt(v)
        elif k in ("ns_coefficients", "adamw_betas", "betas") and isinstance(v, list):
            v = tuple(v)
        out[k] = v
    return out


def build_torch_optimizer(fw, cfg: dict, params: list):
    ft, torch = fw.ft, fw.torch
    cls = cfg["cls"]
    groups = []
    for g in cfg["groups"]:
        d = dict(params=[params[i] for i in g["params"]],
                 **torch_options(fw, g["opts"], cfg.get("numpy_scalars", False)))
        if cls == "MuonWithAdamW":
            d["use_muon"] = g["use_muon"]
        groups.append(d)
    ctor = torch_options(fw, cfg["ctor"], cfg.get("numpy_scalars", False))
    if cfg.get("lr_tensor"):
        ctor["lr"] = torch.tensor(ctor["lr"])
    if cls == "Muon":
        if cfg.get("positional"):
            args = [ctor.pop("lr"), ctor.pop("weight_decay"), ctor.pop("momentum")]
            return ft.Muon(groups, *args, **ctor)
        return ft.Muon(groups, **ctor)
    return getattr(ft, cls)(groups, **ctor)


def torch_snapshot(fw, opt, params) -> list:
    out = []
    for p in params:
        snap = dict(W=fw.to64(p))
        for key, value in opt.state.get(p, {}).items():
            if isinstance(value, fw.torch.Tensor):
                snap[key] = fw.to64(value) if value.is_floating_point() else value.detach().cpu().numpy().copy()
                snap[key + ":dtype"] = fw.dtype_name(value)
            else:
                snap[key] = value
        out.append(snap)
    return out


def as_laid_out(fw, a64: np.ndarray, p: dict, what: str):
    """A parameter's weight or gradient in its dtype, stored as its ``layout`` says."""
    layout = p.get("layout", "contiguous")
    if layout == "transposed" or (layout == "transposed_grad" and what == "gradient"):
        return fw.noncontiguous(a64, p["dtype"])
    return fw.from64(a64, p["dtype"])


def run_torch_optim(fw, cfg: dict, drng, cal: Calibration, res: Result) -> None:
    torch = fw.torch
    cls = cfg["cls"]
    sphere_any = any(g["opts"].get("sphere") for g in cfg["groups"]) or cfg["ctor"].get("sphere")
    params = [torch.nn.Parameter(as_laid_out(fw, init_weight(drng, p, bool(sphere_any)), p, "weight"))
              for p in cfg["params"]]
    where_group = {}
    for gi, g in enumerate(cfg["groups"]):
        for j, i in enumerate(g["params"]):
            where_group[i] = (gi, j)
    roles = [p["role"] for p in cfg["params"]]
    hps = [hp_for(cfg, cfg["groups"][where_group[i][0]]["opts"], roles[i]) for i in range(len(params))]
    try:
        opt = build_torch_optimizer(fw, cfg, params)
    except Exception as exc:  # noqa: BLE001
        res.raised(exc, "constructor")
        return
    history = [[] for _ in params]
    adam_t = [0] * len(params)
    for t in range(cfg["steps"]):
        grads = []
        for i, (p, g) in enumerate(zip(params, cfg["grads"][t])):
            history[i].append(g)
            if g.get("none"):
                p.grad = None
                grads.append(None)
                continue
            data = grad_data(drng, cfg["params"][i], g)
            p.grad = as_laid_out(fw, data, cfg["params"][i], "gradient")
            grads.append(fw.to64(p.grad))
        pre = torch_snapshot(fw, opt, params)
        routes = {}
        if cls != "SignSGD":
            try:
                for route in opt.explain():
                    routes[route.name] = route
            except Exception as exc:  # noqa: BLE001
                res.raised(exc, f"explain() before step {t}")
                return
        try:
            opt.step()
        except Exception as exc:  # noqa: BLE001
            res.raised(exc, f"step {t}")
            return
        post = torch_snapshot(fw, opt, params)
        for i, p in enumerate(params):
            spec, G = cfg["params"][i], grads[i]
            name = f"step {t} param {i} {tuple(spec['shape'])} {spec['dtype']} ({roles[i]})"
            bucket = param_bucket(history[i], spec, roles[i])
            gi, j = where_group[i]
            skipped_before = int(pre[i].get("skipped_steps", 0))
            skipped_after = int(post[i].get("skipped_steps", 0))
            if G is None:
                if not nan_equal(pre[i]["W"], post[i]["W"]):
                    res.fail("grad_none_changed", f"{name}: weight changed without a gradient", bucket)
                continue
            if not finite(G):
                if not nan_equal(pre[i]["W"], post[i]["W"]):
                    res.fail("skip_weight_changed", f"{name}: non-finite gradient changed the weight", bucket)
                for key in ("momentum_buffer", "second_moment", "exp_avg", "exp_avg_sq", "step"):
                    if key in pre[i] and not nan_equal(np.asarray(pre[i][key]), np.asarray(post[i].get(key))):
                        res.fail("skip_state_changed", f"{name}: non-finite gradient changed state {key!r}", bucket)
                if cls != "SignSGD" and skipped_after != skipped_before + 1:
                    res.fail("skip_not_counted", f"{name}: skipped_steps {skipped_before} -> {skipped_after}", bucket)
                continue
            if cls != "SignSGD" and skipped_after != skipped_before:
                res.fail("skip_counted_finite", f"{name}: finite gradient, skipped_steps {skipped_before} -> "
                         f"{skipped_after}", bucket)
            hp = hps[i]
            lr_used = float(hp["lr"])
            if roles[i] == "muon":
                route = routes.get(f"param_groups[{gi}]['params'][{j}]")
                cd = route.compute_dtype if route is not None else "float32"
                if route is None:
                    res.notes.append(f"no explain() route for param {i}: compute dtype taken as float32")
                s_dtype = post[i].get("second_moment:dtype", "float32")
                pre_i = dict(pre[i])
                if "momentum_buffer" not in pre_i:
                    pre_i["momentum_buffer"] = np.zeros(spec["shape"])
                if hp.get("beta2") is not None and "second_moment" not in pre_i and len(spec["shape"]) >= 2:
                    b, R, C = refopt.matrix_view(spec["shape"])
                    pre_i["second_moment"] = np.zeros((b, R, 1) if R >= C else (b, 1, C))
                for key in ("momentum_buffer",) + (("second_moment",) if hp.get("beta2") is not None else ()):
                    if key not in post[i]:
                        res.fail("optim_state_missing", f"{name}: no state {key!r} after a step", bucket)
                        break
                else:
                    check_muon_param(res, cal, "torch", name, hp, pre_i, post[i], G, cd, spec["dtype"], bucket,
                                     lr_used, dict(M="momentum_buffer", s="second_moment" if hp.get("beta2") is not None
                                                   else None, s_dtype=s_dtype,
                                                   M_dtype=post[i].get("momentum_buffer:dtype", spec["dtype"]),
                                                   lr_f32=bool(cfg.get("lr_tensor"))
                                                   and "lr" not in cfg["groups"][gi]["opts"]),
                                     mlx=False)
            elif roles[i] == "adamw":
                adam_t[i] += 1
                pre_i = dict(pre[i])
                for key in ("exp_avg", "exp_avg_sq"):
                    pre_i.setdefault(key, np.zeros(spec["shape"]))
                if "step" in post[i] and float(post[i]["step"]) != adam_t[i]:
                    res.fail("optim_adamw_step", f"{name}: state step {float(post[i]['step'])} != {adam_t[i]} "
                             "own steps", bucket)
                if "exp_avg" not in post[i]:
                    res.fail("optim_state_missing", f"{name}: no AdamW state after a step", bucket)
                else:
                    check_adamw_param(res, name, hp, pre_i, post[i], G, adam_t[i], spec["dtype"], bucket, lr_used,
                                      dict(m="exp_avg", v="exp_avg_sq"), mlx=False)
            else:
                check_signsgd_param(res, name, hp, pre[i], post[i], G, spec["dtype"], bucket, lr_used, mlx=False)
            # finite gradients so far: weights and state must be finite
            if all(finite(h) for h in [G]) and bucket == "main":
                for key, value in post[i].items():  # (W: checked against the reference, where representable)
                    if key != "W" and isinstance(value, np.ndarray) and value.dtype.kind == "f" and not finite(value) \
                            and not any(f["check"].startswith("nonfinite") for f in res.failures):
                        res.fail("nonfinite_state", f"{name}: {key!r} has NaN/Inf after a finite step", bucket)
        if cfg.get("roundtrip_after") == t:
            try:
                sd = opt.state_dict()
                buffer = io.BytesIO()
                torch.save(sd, buffer)
                buffer.seek(0)
                loaded = torch.load(buffer, weights_only=False)
                fresh = build_torch_optimizer(fw, cfg, params)
                fresh.load_state_dict(loaded)
            except Exception as exc:  # noqa: BLE001
                res.raised(exc, f"state_dict round trip after step {t}")
                return
            before, after = torch_snapshot(fw, opt, params), torch_snapshot(fw, fresh, params)
            for i in range(len(params)):
                for key in set(before[i]) | set(after[i]):
                    a, b = before[i].get(key), after[i].get(key)
                    same = nan_equal(np.asarray(a), np.asarray(b)) if isinstance(a, np.ndarray) else a == b
                    if not same:
                        res.fail("roundtrip_state", f"param {i}: state {key!r} differs after load_state_dict "
                                 f"({short(a, 60)} vs {short(b, 60)})",
                                 param_bucket(history[i], cfg["params"][i], roles[i]))
            for gi, (ga, gb) in enumerate(zip(opt.param_groups, fresh.param_groups)):
                for key in set(ga) - {"params"}:
                    va, vb = ga.get(key), gb.get(key)
                    if isinstance(va, torch.Tensor) or isinstance(vb, torch.Tensor):
                        same = float(va) == float(vb)
                    else:
                        same = va == vb
                    if not same:
                        res.fail("roundtrip_group", f"param_groups[{gi}][{key!r}]: {va!r} -> {vb!r}")
            opt = fresh


# ------------------------------------------------------------------------------ optimizers: mlx

def mlx_options(fw, opts: dict, as_numpy: bool = False) -> dict:
    out = {}
    for k, v in opts.items():
        if as_numpy:
            v = numpy_scalars(v)
        if k == "ns_dtype" and isinstance(v, str):
            v = v[4:] if v.startswith("str:") else fw.dt(v)
        elif k in ("ns_coefficients", "adamw_betas") and isinstance(v, list):
            v = tuple(v)
        out[k] = v
    return out


def mlx_schedule(fw, base: float):
    mx = fw.mx
    return lambda step: (step + 1).astype(mx.float32) * (base / 4.0)


def build_mlx_optimizer(fw, cfg: dict):
    fm = fw.fm
    ctor = mlx_options(fw, cfg["ctor"], cfg.get("numpy_scalars", False))
    lr = ctor.pop("lr", None)
    cls = cfg["cls"]
    if cfg.get("lr_schedule"):
        lr = mlx_schedule(fw, 0.02 if lr is None else float(lr))
    if cls == "SignSGD":
        return fm.SignSGD(*(() if lr is None else (lr,)), **ctor)
    if cls == "MuonWithAdamW":
        if "adamw_lr" in ctor:
            ctor["lr_adamw"] = ctor.pop("adamw_lr")
        return fm.MuonWithAdamW(*(() if lr is None else (lr,)), **ctor)
    return getattr(fm, cls)(*(() if lr is None else (lr,)), **ctor)


def mlx_parts(fw, opt, cfg):
    """(muon-or-single state dict, adamw state dict or None, the optimizers giving each lr)."""
    if cfg["cls"] == "MuonWithAdamW":
        return opt.muon.state, opt.adamw.state, (opt.muon, opt.adamw)
    return opt.state, None, (opt, None)


def mlx_snapshot(fw, opt, cfg, params: dict) -> dict:
    mx = fw.mx
    muon_state, adam_state, _ = mlx_parts(fw, opt, cfg)
    out = {}
    for name, a in params.items():
        snap = dict(W=fw.to64(a))
        for state in (muon_state, adam_state):
            if state is not None and isinstance(state.get(name), dict):
                for key, value in state[name].items():
                    if isinstance(value, mx.array):
                        snap[key] = fw.to64(value) if mx.issubdtype(value.dtype, mx.floating) else np.array(value)
                        snap[key + ":dtype"] = fw.dtype_name(value)
        out[name] = snap
    return out


def run_mlx_optim(fw, cfg: dict, drng, cal: Calibration, res: Result) -> None:
    mx = fw.mx
    from mlx.utils import tree_flatten, tree_unflatten

    cls = cfg["cls"]
    specs = {p["name"]: p for p in cfg["params"]}
    params = {p["name"]: fw.from64(init_weight(drng, p, False), p["dtype"]) for p in cfg["params"]}
    roles = {p["name"]: p["role"] for p in cfg["params"]}
    hps = {name: hp_for(cfg, {}, roles[name]) for name in params}
    try:
        opt = build_mlx_optimizer(fw, cfg)
    except Exception as exc:  # noqa: BLE001
        res.raised(exc, "constructor")
        return
    history = {name: [] for name in params}
    adam_t = {name: 0 for name in params}
    n_steps_done = 0
    for t in range(cfg["steps"]):
        grads, grads64 = {}, {}
        for (name, spec), g in zip(specs.items(), cfg["grads"][t]):
            history[name].append(g)
            data = grad_data(drng, spec, g)
            gd = cfg.get("grad_dtype") or spec["dtype"]
            grads[name] = fw.from64(data, gd)
            grads64[name] = fw.to64(grads[name])
        pre = mlx_snapshot(fw, opt, cfg, params)
        routes = {}
        if cls != "SignSGD":
            try:
                for route in opt.explain(grads, params):
                    routes[route.name] = route
            except Exception as exc:  # noqa: BLE001
                res.raised(exc, f"explain() before step {t}")
                return
        try:
            new = opt.apply_gradients(grads, params)
            mx.eval(new, opt.state)
        except Exception as exc:  # noqa: BLE001
            res.raised(exc, f"step {t}")
            return
        params = {**params, **dict(new)}
        post = mlx_snapshot(fw, opt, cfg, params)
        _, _, (lr_muon_opt, lr_adam_opt) = mlx_parts(fw, opt, cfg)
        lr_used = float(np.array(lr_muon_opt.learning_rate.astype(mx.float64)))
        lr_adam = float(np.array(lr_adam_opt.learning_rate.astype(mx.float64))) if lr_adam_opt is not None else None
        if cfg.get("lr_schedule"):
            base = cfg["ctor"].get("lr", 0.02)
            expected = base * (n_steps_done + 1) / 4.0
            if abs(lr_used - expected) > 1e-6 * max(abs(expected), 1e-12):
                res.fail("optim_schedule", f"step {t}: lr used {lr_used!r}, schedule gives {expected!r} at step "
                         f"{n_steps_done}")
        n_steps_done += 1
        for name in params:
            spec, G = specs[name], grads64[name]
            role = roles[name]
            label = f"step {t} {name} {tuple(spec['shape'])} {spec['dtype']} ({role})"
            bucket = param_bucket(history[name], spec, role, cfg.get("grad_dtype"))
            sk_before = int(pre[name].get("skipped_steps", 0))
            sk_after = int(post[name].get("skipped_steps", -1))
            if not finite(G):
                if not nan_equal(pre[name]["W"], post[name]["W"]):
                    res.fail("skip_weight_changed", f"{label}: non-finite gradient changed the weight", bucket)
                for key in ("momentum", "second_moment", "m", "v"):
                    if key in pre[name] and not nan_equal(pre[name][key], post[name].get(key)):
                        res.fail("skip_state_changed", f"{label}: non-finite gradient changed state {key!r}", bucket)
                if sk_after != sk_before + 1:
                    res.fail("skip_not_counted", f"{label}: skipped_steps {sk_before} -> {sk_after}", bucket)
                continue
            if sk_after != sk_before:
                res.fail("skip_counted_finite", f"{label}: finite gradient, skipped_steps {sk_before} -> {sk_after}",
                         bucket)
            hp = hps[name]
            # the gradient as the step sees it: in the gradient's dtype (MLX keeps fp32 gradients fp32)
            if role == "muon":
                route = routes.get(name)
                cd = route.compute_dtype if route is not None else "float32"
                if route is None:
                    res.notes.append(f"no explain() route for {name}: compute dtype taken as float32")
                pre_n = dict(pre[name])
                pre_n.setdefault("momentum", np.zeros(spec["shape"]))
                ismat = len(spec["shape"]) >= 2
                if hp.get("beta2") is not None and ismat and "second_moment" not in pre_n:
                    b, R, C = refopt.matrix_view(spec["shape"])
                    pre_n["second_moment"] = np.zeros((b, R, 1) if R >= C else (b, 1, C))
                if "momentum" not in post[name]:
                    res.fail("optim_state_missing", f"{label}: no momentum after a step", bucket)
                    continue
                check_muon_param(res, cal, "mlx", label, hp, pre_n, post[name], G, cd, spec["dtype"], bucket, lr_used,
                                 dict(M="momentum",
                                      s="second_moment" if hp.get("beta2") is not None and ismat else None,
                                      s_dtype=post[name].get("second_moment:dtype", "float32"),
                                      M_dtype=post[name].get("momentum:dtype", spec["dtype"])), mlx=True,
                                 gdtype=cfg.get("grad_dtype"))
            elif role == "adamw":
                adam_t[name] += 1
                pre_n = dict(pre[name])
                pre_n.setdefault("m", np.zeros(spec["shape"]))
                pre_n.setdefault("v", np.zeros(spec["shape"]))
                if "m" not in post[name]:
                    res.fail("optim_state_missing", f"{label}: no AdamW state after a step", bucket)
                    continue
                check_adamw_param(res, label, hp, pre_n, post[name], G, adam_t[name], spec["dtype"], bucket, lr_adam,
                                  dict(m="m", v="v"), mlx=True, gdtype=cfg.get("grad_dtype"))
            else:
                check_signsgd_param(res, label, hp, pre[name], post[name], G, spec["dtype"], bucket, lr_used, mlx=True)
            if bucket == "main":
                for key, value in post[name].items():
                    if key != "W" and isinstance(value, np.ndarray) and value.dtype.kind == "f" and not finite(value) \
                            and not any(f["check"].startswith("nonfinite") for f in res.failures):
                        res.fail("nonfinite_state", f"{label}: {key!r} has NaN/Inf after a finite step", bucket)
        if cfg.get("roundtrip_after") == t:
            try:
                flat = tree_flatten(opt.state)
                if any(isinstance(v, mx.array) and v.dtype == mx.float64 for _, v in flat):
                    loaded = dict(flat)  # save_safetensors refuses float64 (README): in memory
                else:
                    with tempfile.TemporaryDirectory() as tmp:
                        path = os.path.join(tmp, "state.safetensors")
                        mx.save_safetensors(path, dict(flat))
                        loaded = dict(mx.load(path))
                        mx.eval(loaded)
                fresh = build_mlx_optimizer(fw, cfg)
                fresh.state = tree_unflatten(list(loaded.items()))
            except Exception as exc:  # noqa: BLE001
                res.raised(exc, f"state round trip after step {t}")
                return
            a_flat, b_flat = dict(tree_flatten(opt.state)), dict(tree_flatten(fresh.state))

            def values(a):
                return fw.to64(a) if mx.issubdtype(a.dtype, mx.floating) else np.array(a)

            for key in set(a_flat) | set(b_flat):
                a, b = a_flat.get(key), b_flat.get(key)
                if a is None or b is None or a.dtype != b.dtype or not nan_equal(values(a), values(b)):
                    res.fail("roundtrip_state", f"state {key!r} differs after the round trip")
            opt = fresh


# ------------------------------------------------------------------------------ invalid options

def run_invalid(fw, cfg: dict, drng, res: Result) -> None:
    target, opts, keywords = cfg["target"], dict(cfg["opts"]), tuple(cfg["keywords"])
    dtype = cfg["dtype"]
    allowed = (ValueError, TypeError)
    if "backend" in opts and opts["backend"] in ("triton", "metal"):
        allowed = (ValueError, TypeError, RuntimeError, ImportError)  # documented for unavailable backends
    if target.endswith(":complex"):
        allowed = (RuntimeError, ValueError, TypeError)  # documented: RuntimeError at step, as torch.optim.Muon
    try:
        if target.startswith("ortho"):
            what = _invalid_ortho(fw, target, opts, dtype, drng)
        elif fw.name == "torch":
            what = _invalid_torch_optim(fw, target, opts, dtype, drng)
        else:
            what = _invalid_mlx_optim(fw, target, opts, dtype, drng)
    except Exception as exc:  # noqa: BLE001
        res.raised(exc, target, keywords, allowed)
        if res.error["cls"] == "unclear" and isinstance(exc, allowed):
            res.error["why"] = f"message does not name any of {keywords}"
        return
    if what is None:  # a documented non-raising outcome, checked by the runner (a skipped step)
        return
    res.fail("invalid_accepted", f"{target} with {short(opts)} ran without an exception; {what}")


def _fix_dtype(fw, opts: dict, key: str) -> dict:
    if key in opts and isinstance(opts[key], str):
        v = opts[key]
        opts[key] = v[4:] if v.startswith("str:") else fw.dt(v)
    return opts


def _invalid_ortho(fw, target, opts, dtype, drng):
    data = drng.standard_normal((6, 9))
    opts = _fix_dtype(fw, dict(opts), "dtype")
    if target == "ortho:1d":
        G = fw.from64(data[0], dtype)
    elif target == "ortho:0d":
        G = fw.from64(np.array(1.5), dtype)
    elif target == "ortho:int":
        G = fw.from64(data, "float32")
        G = G.astype(fw.mx.int32) if fw.name == "mlx" else G.to(fw.torch.int32)
    elif target == "ortho:numpy":
        G = data
    elif target == "ortho:sparse":
        G = fw.from64(data, dtype).to_sparse()
    else:
        G = fw.from64(data, dtype)
    if target == "ortho:requires_grad_native":
        G.requires_grad_(True)
    out = fw.fm.orthogonalize(G, **opts) if fw.name == "mlx" else fw.ft.orthogonalize(G, **opts)
    if fw.name == "mlx":
        fw.mx.eval(out)
    return f"output finite: {finite(fw.to64(out))}"


def _invalid_torch_optim(fw, target, opts, dtype, drng):
    torch, ft = fw.torch, fw.ft
    cls = target.split(":")[0]
    opts = _fix_dtype(fw, dict(opts), "ns_dtype")
    if opts.get("lr") == "schedule":
        opts["lr"] = lambda step: 0.1
    elif opts.get("lr") == "tensor2":
        opts["lr"] = torch.tensor([0.1, 0.2])
    for key in ("ns_coefficients", "adamw_betas"):
        if isinstance(opts.get(key), list):
            opts[key] = tuple(opts[key])
    shape = (5, 7)
    if target.endswith("3d_no_allow_nd"):
        shape = (2, 5, 7)
    elif target.endswith(":1d"):
        shape = (7,)
    if target.endswith(":int_param"):
        p = torch.nn.Parameter(torch.ones(shape, dtype=torch.int32), requires_grad=False)
        p.grad = torch.ones(shape, dtype=torch.int32)
    elif target.endswith(":complex"):
        p = torch.nn.Parameter(torch.randn(shape, dtype=torch.complex64))
        p.grad = torch.randn(shape, dtype=torch.complex64)
    else:
        p = torch.nn.Parameter(fw.from64(drng.standard_normal(shape), dtype))
        p.grad = fw.from64(drng.standard_normal(shape), dtype)
    if target.endswith(":grad_is_weight"):
        p.grad = p.data
    if cls == "MuonWithAdamW":
        fp16 = target.endswith("fp16_adamw")
        q = torch.nn.Parameter(fw.from64(drng.standard_normal(8), "float16" if fp16 else dtype))
        q.grad = fw.from64(drng.standard_normal(8), "float16" if fp16 else dtype)
        opt = ft.MuonWithAdamW([dict(params=[p], use_muon=True), dict(params=[q], use_muon=False)], **opts)
    elif target.endswith(":group_momentum") or target.endswith(":group_eps"):
        opt = ft.Muon([dict(params=[p], **opts)])
    elif cls == "SignSGD":
        opt = ft.SignSGD([p], **opts)
    else:
        opt = getattr(ft, cls)([p], **opts)
    opt.step()
    return f"weights finite after a step: {finite(fw.to64(p))}"


def _invalid_mlx_optim(fw, target, opts, dtype, drng):
    mx, fm = fw.mx, fw.fm
    cls = target.split(":")[0]
    opts = _fix_dtype(fw, dict(opts), "ns_dtype")
    lr = opts.pop("lr", None)
    opts_lr_is_nan_schedule = lr == "schedule_nan"
    if opts_lr_is_nan_schedule:
        lr = lambda step: mx.array(float("nan"))  # noqa: E731
    for key in ("ns_coefficients", "adamw_betas"):
        if isinstance(opts.get(key), list):
            opts[key] = tuple(opts[key])
    params = {"w": fw.from64(drng.standard_normal((5, 7)), dtype)}
    grads = {"w": fw.from64(drng.standard_normal((5, 7)), dtype)}
    if target.endswith(":int_param"):
        params["w"] = mx.ones((5, 7), dtype=mx.int32)
        grads["w"] = mx.ones((5, 7), dtype=mx.int32)
    if target.endswith(":grad_shape"):
        grads["w"] = fw.from64(drng.standard_normal((7, 5)), dtype)
    if target.endswith(":grad_tree"):
        grads["x"] = grads["w"]
    if cls == "MuonWithAdamW":
        fp16 = target.endswith("fp16_adamw")
        params["b"] = fw.from64(drng.standard_normal(8), "float16" if fp16 else dtype)
        grads["b"] = fw.from64(drng.standard_normal(8), "float16" if fp16 else dtype)
        if "adamw_lr" in opts:
            opts["lr_adamw"] = opts.pop("adamw_lr")
        opt = fm.MuonWithAdamW(*(() if lr is None else (lr,)), **opts)
    else:
        opt = getattr(fm, cls)(*(() if lr is None else (lr,)), **opts)
    new = opt.apply_gradients(grads, params)
    mx.eval(new, opt.state)
    if opts_lr_is_nan_schedule and all(np.array_equal(fw.to64(new[k]), fw.to64(params[k])) for k in new) \
            and int(opt.state["w"]["skipped_steps"].item()) == 1:
        return None  # documented: a non-finite learning rate skips the step, counted in skipped_steps
    return f"weights finite after a step: {all(finite(fw.to64(v)) for v in dict(new).values())}"


# ------------------------------------------------------------------------------ driver

def run_one(fw, seed: int, index: int, cal: Calibration, torch_fw=None) -> Result:
    cfg = gen_config(seed, fw, index)
    res = Result(fw.name, index, cfg)
    drng = np.random.default_rng([seed, 0 if fw.name == "torch" else 1, index, 1])
    try:
        if cfg["kind"] == "ortho":
            run_ortho(fw, cfg, drng, cal, res, torch_fw)
        elif cfg["kind"] == "optim":
            (run_torch_optim if fw.name == "torch" else run_mlx_optim)(fw, cfg, drng, cal, res)
        else:
            run_invalid(fw, cfg, drng, res)
    except Exception:  # noqa: BLE001  (a bug of this script, not of the library)
        res.harness_error = short(traceback.format_exc(), 2000)
    return res


def repro_command(args, fw: str, index: int) -> str:
    if index < 0:
        return f"calibration case of {fw} (any run; its config below, input float64, seed {CALIBRATION_SEED})"
    return f"bench/fuzz_silent.py --seed {args.seed} --framework {fw} --only {index}"


def compact(cfg: dict) -> str:
    return json.dumps(cfg, default=str, separators=(",", ":"))


def summarize(args, results: list, cal: Calibration, elapsed: float) -> int:
    print()
    print("=" * 100)
    print(f"fastmuon fuzz: seed {args.seed}, {len(results)} configurations in {elapsed:.0f} s "
          f"(tolerances: {MULTIPLE}x the calibrated worst case; TAU = {TAU})")
    by_fw = defaultdict(list)
    for r in results:
        by_fw[r.fw].append(r)
    for fw, rs in by_fw.items():
        kinds = Counter(r.cfg["kind"] for r in rs)
        outcomes = Counter(r.outcome for r in rs)
        print(f"  {fw}: {len(rs)} configurations ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}); "
              + ", ".join(f"{k} {outcomes.get(k, 0)}" for k in ("ok", "clear_error", "silent", "unclear_error",
                                                                 "harness_error")))
    print("  calibrated worst errors on normal inputs (before the multiple), ||(O-R)V||_2:")
    for fw in by_fw:
        for cd in FLOATS:
            vals = {k[2] + "/" + k[3]: v for k, v in cal.determined.items() if k[0] == fw and k[1] == cd}
            ratio = cal.ratio.get((fw, cd), float("nan"))
            print(f"    {fw:5s} {cd:8s} full ratio/(uA) {ratio:.3g}; "
                  + ", ".join(f"{k} {v:.2g}" for k, v in vals.items()))

    buckets = {"main": "SILENTLY WRONG", "huge": "SILENTLY WRONG on huge-magnitude inputs (the momentum's lerp "
               "overflowing near the dtype's largest value, as in torch.optim.Muon)", "adamw_range": "SILENTLY WRONG in AdamW groups whose moments leave the dtype's range "
               "(g^2 overflows, or v underflows in 16 bits), as torch.optim.AdamW and mlx's AdamW do"}
    status = 0
    for bucket, title in buckets.items():
        failing = [r for r in results if any(f["bucket"] == bucket for f in r.failures)]
        print()
        print(f"--- {title}: {len(failing)} configurations")
        by_check = defaultdict(list)
        for r in failing:
            for check in dict.fromkeys(f["check"] for f in r.failures if f["bucket"] == bucket):
                by_check[check].append(r)
        for check, rs in sorted(by_check.items(), key=lambda kv: -len(kv[1])):
            per_fw = ", ".join(f"{k} {v}" for k, v in Counter(r.fw for r in rs).items())
            print(f"  [{check}] {len(rs)} configurations ({per_fw})")
            for r in sorted(rs, key=lambda r: len(compact(r.cfg)))[: args.max_repro]:
                detail = next(f["detail"] for f in r.failures if f["check"] == check and f["bucket"] == bucket)
                print(f"    {repro_command(args, r.fw, r.index)}")
                print(f"      {detail}")
                print(f"      config {short(compact(r.cfg), 700)}")
        if failing and (bucket == "main" or not args.ignore_known):
            status = 1
    unclear = [r for r in results if r.outcome == "unclear_error"]
    print()
    print(f"--- UNCLEAR ERRORS: {len(unclear)} configurations")
    by_msg = defaultdict(list)
    for r in unclear:
        by_msg[(r.error["type"], r.error["message"][:120], r.error["origin"])].append(r)
    for (etype, msg, origin), rs in sorted(by_msg.items(), key=lambda kv: -len(kv[1])):
        print(f"  {len(rs)}x {etype} at {origin}: {msg}")
        for r in rs[: args.max_repro]:
            print(f"    {repro_command(args, r.fw, r.index)}   ({r.error['where']}; {r.error.get('why', '')})")
            print(f"      config {short(compact(r.cfg), 500)}")
    if unclear and status == 0:
        status = 2
    harness = [r for r in results if r.outcome == "harness_error"]
    if harness:
        print()
        print(f"--- HARNESS ERRORS (bugs of this script, not results): {len(harness)}")
        for r in harness[: args.max_repro * 3]:
            last = r.harness_error.splitlines()[-1] if r.harness_error else ""
            print(f"    {repro_command(args, r.fw, r.index)}: {short(last, 300)}")
    clear = [r for r in results if r.outcome == "clear_error"]
    print()
    print(f"--- clear errors (expected refusals): {len(clear)} configurations; distinct messages:")
    msgs = Counter((r.cfg["kind"], r.error["type"], r.error["message"][:110]) for r in clear)
    for (kind, etype, msg), count in msgs.most_common(args.max_messages):
        print(f"  {count:4d}x [{kind}] {etype}: {msg}")
    if len(msgs) > args.max_messages:
        print(f"  ... {len(msgs) - args.max_messages} more distinct messages (see --out)")
    print()
    print(f"exit status {status}")
    return status


DEFAULT_CONFIGS = 2000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=int, default=DEFAULT_CONFIGS, help="configurations per framework")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--framework", choices=("both", "torch", "mlx"), default="both")
    parser.add_argument("--out", help="write one JSON line per configuration here")
    parser.add_argument("--only", help="comma-separated configuration indices (per framework) to run")
    parser.add_argument("--show", action="store_true", help="print every configuration's result as it runs")
    parser.add_argument("--max-repro", type=int, default=3, help="reproducers printed per failure category")
    parser.add_argument("--max-messages", type=int, default=40)
    parser.add_argument("--calibration-cases", type=int, default=CALIBRATION_CASES)
    parser.add_argument("--ignore-known", action="store_true",
                        help="leave the two apart buckets (huge magnitudes; AdamW moments beyond the dtype's "
                             "range) out of the exit status")
    parser.add_argument("--no-cross", action="store_true", help="skip the torch-vs-mlx orthogonalize comparison")
    args = parser.parse_args(argv)
    np.seterr(all="ignore")  # the checks handle NaN/Inf explicitly

    frameworks = []
    torch_fw = None
    if args.framework in ("both", "torch") or not args.no_cross:
        try:
            torch_fw = TorchFW()
        except ImportError as exc:
            print(f"torch: not available ({exc})")
    if args.framework in ("both", "torch") and torch_fw is not None:
        frameworks.append(torch_fw)
    if args.framework in ("both", "mlx"):
        try:
            frameworks.append(MlxFW())
        except ImportError as exc:
            print(f"mlx: not available ({exc})")
    if not frameworks:
        print("no framework to fuzz")
        return 2
    indices = list(range(args.configs)) if not args.only else [int(i) for i in args.only.split(",")]
    start = time.time()
    cal = Calibration()
    for fw in frameworks:
        cal.run(fw, args.calibration_cases)
    if torch_fw is not None and torch_fw not in frameworks and not args.no_cross:
        cal.run(torch_fw, args.calibration_cases)
    results = list(cal.over_cap)
    print(f"calibration: {', '.join(f'{k} {v:.1f} s' for k, v in cal.seconds.items())}; backends "
          + "; ".join(f"{fw.name}: {', '.join(fw.backends)}" for fw in frameworks), flush=True)
    out = open(args.out, "w") if args.out else None
    if out:
        out.write(json.dumps(dict(calibration=cal.table(), seed=args.seed, multiple=MULTIPLE, tau=TAU)) + "\n")
        for res in results:
            out.write(json.dumps(res.record(0.0), default=str) + "\n")
    for fw in frameworks:
        t_fw = time.time()
        cross = torch_fw if (fw.name == "mlx" and not args.no_cross) else None
        for n, index in enumerate(indices):
            t0 = time.time()
            res = run_one(fw, args.seed, index, cal, cross)
            results.append(res)
            if out:
                out.write(json.dumps(res.record(time.time() - t0), default=str) + "\n")
                out.flush()
            if args.show or res.outcome not in ("ok", "clear_error"):
                what = res.failures[0]["check"] + ": " + res.failures[0]["detail"] if res.failures else \
                    (f"{res.error['type']}: {res.error['message']}" if res.error else (res.harness_error or "")[-300:])
                print(f"  {fw.name} #{index} {res.cfg['kind']} {res.outcome} ({time.time() - t0:.2f} s) "
                      f"{short(what, 240)}", flush=True)
            if (n + 1) % 100 == 0:
                print(f"{fw.name}: {n + 1}/{len(indices)} configurations, {time.time() - t_fw:.0f} s", flush=True)
    if out:
        out.close()
    return summarize(args, results, cal, time.time() - start)


if __name__ == "__main__":
    sys.exit(main())
