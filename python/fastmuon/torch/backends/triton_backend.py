"""The Triton backend for torch tensors: the symmetric kernels as torch.library operators and the
orthogonalize driver built on them.

Imports triton; ``fastmuon.torch`` loads this module only when ``backend="triton"`` is asked for
(or chosen by "auto" for a CUDA tensor).

Operators (``torch.ops.fastmuon.*``, on 3-D batches; registered with ``torch.library.triton_op``
on GPUs so that torch.compile traces into the kernels, as an opaque ``custom_op`` under the
interpreter; both with a fake implementation that only allocates the output):

* ``triton_xxt(X) -> X X^T`` for X (B, M, K). A column-major X (a transposed view of a row-major
  tall matrix) goes to the X^T X kernel on its transpose, so no transposed copy is made.
* ``triton_ba_plus_caa(A, alpha, beta) -> alpha A A + beta A`` for symmetric A (B, M, M).

Plain eager calls skip the dispatcher and run the operators' implementations directly
(``triton_xxt``, ``triton_ba_plus_caa``); tracers still see the operators.

The driver iterates with ``fastmuon.iteration.iterate`` over ``TritonOps``: the two symmetric
steps are the kernels above and a X + B X is one batched GEMM with beta (``torch.baddbmm``, a
single cuBLAS call on GPUs). A tall input (m > n) is iterated on its wide orientation X^T
without copying it: X^T X comes from the X^T X kernel, and a X^T + B X^T is computed as the
transpose of a X + X B^T, so X keeps the input's row-major tall layout throughout.
"""

from __future__ import annotations

import torch
from torch.library import triton_op

from ...iteration import orthogonalize_with
from ...plan import Plan
from .reference import TorchOps, as_batch, through_operators
from .triton_ba_plus_caa import launch_ba_plus_caa
from .triton_common import INTERPRETED
from .triton_xtx import launch_xtx
from .triton_xxt import launch_xxt

# Compute dtypes the kernels take (tl.dot has no float64 path worth having).
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_input(t: torch.Tensor, name: str, compute_dtype: torch.dtype) -> None:
    """Raise ValueError unless ``t`` can run on the Triton backend in ``compute_dtype``."""
    if t.device.type == "cpu":
        if not INTERPRETED:
            raise ValueError(
                f'backend="triton" runs on CUDA tensors; {name} is a CPU tensor. CPU tensors run '
                "only under the Triton interpreter (for tests): set TRITON_INTERPRET=1 before "
                "fastmuon's Triton kernels are first used"
            )
    elif t.device.type != "cuda":
        raise ValueError(f'backend="triton" runs on CUDA tensors; {name} is on {t.device}')
    if compute_dtype not in DTYPES:
        raise ValueError(
            f'backend="triton" computes in float32, bfloat16 or float16; {compute_dtype} needs '
            'backend="reference"'
        )


def _column_major(t: torch.Tensor) -> bool:
    """Stored as the transpose of a row-major matrix (a .mT view), and not also row-major."""
    return t.stride(-2) == 1 and t.stride(-1) != 1


# ---------------------------------------------------------------- operators


def _register(name: str, fake):
    """Register ``fn`` as ``fastmuon::<name>`` with the fake implementation ``fake``.

    On GPUs this is ``torch.library.triton_op``: torch.compile traces into the launches and
    Inductor sees the kernels. The interpreter runs kernels eagerly on real data only (tracing
    would hand it fake tensors), so there the same function becomes an opaque ``custom_op``
    with the same schema, which torch.compile leaves as one call.
    """

    def register(fn):
        qualname = f"fastmuon::{name}"
        if INTERPRETED:
            op = torch.library.custom_op(qualname, fn, mutates_args=())
        else:
            op = triton_op(qualname, fn, mutates_args=())
        op.register_fake(fake)
        return op

    return register


def _xxt_fake(X: torch.Tensor) -> torch.Tensor:
    B, M, _ = X.shape
    return X.new_empty((B, M, M))


def _ba_plus_caa_fake(A: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    return A.new_empty(A.shape)


def _xxt_impl(X: torch.Tensor) -> torch.Tensor:
    B, M, _ = X.shape
    out = X.new_empty((B, M, M))
    if _column_major(X):
        launch_xtx(X.mT, out)
    else:
        launch_xxt(X, out)
    return out


def _ba_plus_caa_impl(A: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    out = A.new_empty(A.shape)
    launch_ba_plus_caa(A, out, alpha, beta)
    return out


_register("triton_xxt", _xxt_fake)(_xxt_impl)
_register("triton_ba_plus_caa", _ba_plus_caa_fake)(_ba_plus_caa_impl)


def triton_xxt(X: torch.Tensor) -> torch.Tensor:
    """``torch.ops.fastmuon.triton_xxt(X)`` for X (B, M, K), without the dispatcher in plain eager."""
    return torch.ops.fastmuon.triton_xxt(X) if through_operators(X) else _xxt_impl(X)


def triton_ba_plus_caa(A: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """``torch.ops.fastmuon.triton_ba_plus_caa(A, alpha, beta)`` for A (B, M, M), without the
    dispatcher in plain eager."""
    if through_operators(A):
        return torch.ops.fastmuon.triton_ba_plus_caa(A, alpha, beta)
    return _ba_plus_caa_impl(A, alpha, beta)


def xxt(X: torch.Tensor) -> torch.Tensor:
    """X X^T over the last two axes of X (..., m, k), exactly symmetric; output in X's dtype."""
    X3 = as_batch(X.detach())
    return triton_xxt(X3).reshape(*X.shape[:-1], X.shape[-2])


def ba_plus_caa(A: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """alpha A A + beta A for symmetric A (..., m, m), exactly symmetric; output in A's dtype."""
    A3 = as_batch(A.detach())
    return triton_ba_plus_caa(A3, float(alpha), float(beta)).reshape(A.shape)


# ---------------------------------------------------------------- driver


class TritonOps(TorchOps):
    """``fastmuon.iteration.MatrixOps`` on (batch, m, n) tensors with the Triton kernels.

    X operands may be column-major views (see the module docstring); products with them are
    computed transposed so that the result keeps that layout.
    """

    @staticmethod
    def xxt(X):
        return triton_xxt(X)

    @staticmethod
    def ba_plus_caa(A, alpha, beta):
        return triton_ba_plus_caa(A, float(alpha), float(beta))

    @staticmethod
    def addmm(C, A, B, alpha, beta):
        if _column_major(C) and _column_major(B):  # (beta C + alpha A B)^T = beta C^T + alpha B^T A^T
            return torch.baddbmm(C.mT, B.mT, A.mT, alpha=alpha, beta=beta).mT
        return torch.baddbmm(C, A, B, alpha=alpha, beta=beta)

    @staticmethod
    def matmul(A, B):
        if _column_major(B):
            return (B.mT @ A.mT).mT
        return A @ B

    @staticmethod
    def to_batch(G):
        # The kernels record no autograd; normalize writes the one dense copy, in the compute dtype.
        return as_batch(G.detach())


def orthogonalize(G: torch.Tensor, plan: Plan, compute_dtype: torch.dtype) -> torch.Tensor:
    """The plan's iteration on ``G`` (..., m, n) with the Triton kernels, in ``compute_dtype``."""
    return orthogonalize_with(G, plan, TritonOps(), compute_dtype)
