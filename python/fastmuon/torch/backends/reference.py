"""The plain-torch orthogonalization: what every faster torch backend is tested against.

``TorchOps`` supplies the matrix operations of ``fastmuon.iteration`` with plain torch calls
(cuBLAS on CUDA, MKL/oneDNN on CPUs); the Triton driver subclasses it.
"""

from __future__ import annotations

import math

import torch

from ...iteration import orthogonalize_with
from ...plan import Plan


def as_batch(t: torch.Tensor) -> torch.Tensor:
    """(..., m, n) -> (batch, m, n); also for empty tensors, where reshape(-1, m, n) is ambiguous."""
    return t.reshape(math.prod(t.shape[:-2]), *t.shape[-2:])


def through_operators(t: torch.Tensor) -> bool:
    """Whether a kernel call on ``t`` must go through its ``torch.library`` operator (native or
    Triton): while torch.compile traces, under a dispatch mode (make_fx, export, fake or
    functional tensors, a recording mode) and for tensor subclasses, all of which must see the
    operator (its fake implementation gives shapes without touching data). Plain eager calls
    run the implementation directly: the dispatcher round trip of a Python operator is host time
    on every call (about 50 us a native call on the CPU)."""
    return torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0 or type(t) is not torch.Tensor


# Rows from which a CPU Gram matrix X X^T is formed from its upper blocks: the top half of its rows
# X_1 X^T in one product, the lower right X_2 X_2^T, the lower left mirrored: 3/4 of the flops, and
# exactly symmetric. On the CPU's bf16 GEMM (oneDNN, AMD EPYC with AVX512-BF16, 2026-11-30) that
# took 0.71-0.86x the full product's time from 512 rows up (512x2048 .. 1024x4096; 0.94 at
# 768x768), batched or not; the top rows in one product instead of two blocks and a concatenation
# took a further 0.93-0.99x.
GRAM_BLOCKS_MIN_ROWS = 512
# Rows from which b A + c A A (A symmetric) is formed the same way (its diagonal blocks are
# whatever the GEMM gives, as in the full product): 0.85-0.91x the full product's time from 768
# rows (768 .. 1024), 1.04x at 512 (same machine and GEMM).
SQUARE_BLOCKS_MIN_ROWS = 768
# Entries per matrix from which the normalization divides each matrix by its own 0-dim divisor.
_PER_MATRIX_DIVISION_MIN = 1 << 16


def _max_exponent(dtype: torch.dtype) -> int:
    """e with the dtype's largest finite value below 2^e (16 for fp16, 128 for bf16 and fp32)."""
    return math.frexp(torch.finfo(dtype).max)[1]


def power_of_two_exponent(peak: torch.Tensor) -> torch.Tensor:
    """k with peak < 2^(k + 1), as a float tensor of peak's dtype, clamped to where 2^k is a
    normal number of that dtype (so that dividing by it is exact)."""
    top = math.frexp(torch.finfo(peak.dtype).max)[1] - 1  # 127 for fp32, 1023 for float64
    return (torch.frexp(peak).exponent - 1).clamp_(1 - top, top).to(peak.dtype)


def _from_upper_rows(out: torch.Tensor, top_rows, lower_right) -> torch.Tensor:
    """Fill the symmetric (..., m, m) ``out`` from its top m // 2 rows (``top_rows(out_slice)``
    writes them) and its lower right block (returned by ``lower_right()``); the lower left is
    the top right mirrored."""
    h = out.shape[-1] // 2
    top_rows(out[..., :h, :])
    out[..., h:, h:] = lower_right()
    out[..., h:, :h] = out[..., :h, h:].mT
    return out


def _by_blocks(t: torch.Tensor, min_rows: int) -> bool:
    """Whether a symmetric product of m-row ``t`` is formed from its upper rows: on the CPU from
    ``min_rows``, and not where autograd records (the blocks are written in place)."""
    return t.device.type == "cpu" and t.shape[-2] >= min_rows and not (t.requires_grad and torch.is_grad_enabled())


def _one_eager_matrix(t: torch.Tensor) -> bool:
    """Whether a (batch, m, n) operand holds one matrix outside a trace: its product then runs
    2-D (mm, addmm), which oneDNN ran faster than bmm (X X^T in bf16: 1.4x; a C + A B: 1.05x)."""
    return t.shape[0] == 1 and not through_operators(t)


def _gram(X: torch.Tensor) -> torch.Tensor:
    """X X^T of (..., m, n) X."""
    m = X.shape[-2]
    if not _by_blocks(X, GRAM_BLOCKS_MIN_ROWS):
        return X @ X.mT
    h = m // 2
    return _from_upper_rows(X.new_empty((*X.shape[:-1], m)),
                            lambda top: torch.matmul(X[..., :h, :], X.mT, out=top),
                            lambda: X[..., h:, :] @ X[..., h:, :].mT)


def _symmetric_product(C: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """alpha A B + beta C of one (m, m) A, B, C whose result is symmetric, from its upper rows."""
    h = C.shape[-1] // 2
    return _from_upper_rows(torch.empty_like(C),
                            lambda top: torch.addmm(C[:h], A[:h], B, alpha=alpha, beta=beta, out=top),
                            lambda: torch.addmm(C[h:, h:], A[h:], B[:, h:], alpha=alpha, beta=beta))


def _one_matrix_by_blocks(A: torch.Tensor) -> bool:
    """Whether a symmetric (batch, m, m) product of ``A`` is formed from its upper rows
    (``_symmetric_product``): one CPU matrix of at least ``SQUARE_BLOCKS_MIN_ROWS`` rows."""
    return A.shape[0] == 1 and _by_blocks(A, SQUARE_BLOCKS_MIN_ROWS)


def frobenius_norm(Y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """||Y||_F of every matrix of a (batch, m, n) Y, accumulated in ``dtype``, shape (batch, 1, 1).
    Row norms first, then the norm of those: the CPU's one-pass reduction over m * n entries
    rounded in long serial chains (8649 equal fp32 entries: 67 ulps off, which Polar Express's
    steep last steps turned into 7e-4 on the result), and over a bf16 matrix it took a slow
    path (768x3072 on a CPU: 4.5 ms, against 1.0 ms in two passes)."""
    rows = torch.linalg.vector_norm(Y, dim=-1, keepdim=True, dtype=dtype)
    return torch.linalg.vector_norm(rows, dim=-2, keepdim=True)


class TorchOps:
    """Plain-torch matrix operations on (batch, m, n) tensors."""

    @staticmethod
    def xxt(X):
        if X.shape[0] == 1:  # 2-D: oneDNN's bf16 X X^T ran 1.4x faster as mm than as bmm
            return _gram(X[0]).unsqueeze(0)
        return _gram(X)

    @staticmethod
    def ba_plus_caa(A, alpha, beta):
        if _one_matrix_by_blocks(A):
            return _symmetric_product(A[0], A[0], A[0], alpha, beta).unsqueeze(0)
        return torch.baddbmm(A, A, A, alpha=alpha, beta=beta)

    @staticmethod
    def addmm(C, A, B, alpha, beta):
        if _one_eager_matrix(A):
            return torch.addmm(C[0], A[0], B[0], alpha=alpha, beta=beta).unsqueeze(0)
        return torch.baddbmm(C, A, B, alpha=alpha, beta=beta)

    @classmethod
    def symmetric_addmm(cls, C, A, B, alpha, beta):
        # from its upper rows as b A + c A A (0.86x the full product's time at 768x768 in bf16
        # on the CPU); elsewhere the backend's addmm
        if _one_matrix_by_blocks(A):
            return _symmetric_product(C[0], A[0], B[0], alpha, beta).unsqueeze(0)
        return cls.addmm(C, A, B, alpha, beta)

    @staticmethod
    def matmul(A, B):
        if _one_eager_matrix(A):
            return torch.mm(A[0], B[0]).unsqueeze(0)
        return A @ B

    @staticmethod
    def add_identity(Z, a):
        if (Z.requires_grad and torch.is_grad_enabled()) or through_operators(Z):
            return Z + a * torch.eye(Z.shape[-1], dtype=Z.dtype, device=Z.device)
        out = Z.clone()
        out.diagonal(dim1=-2, dim2=-1).add_(a)
        return out

    @staticmethod
    def aol_scale(X, A):
        row_sums = A.abs().sum(dim=-1, keepdim=True, dtype=torch.promote_types(A.dtype, torch.float32))
        # floored at the smallest normal of A's dtype: below it A's entries are subnormal or zero
        # (X X^T of a tiny X underflows in float16), the sum too small and d too large; a smaller
        # d only scales the row less, within the AOL bound
        d = torch.rsqrt(row_sums.clamp_min(torch.finfo(A.dtype).tiny))  # (batch, m, 1)
        if X.dtype in (torch.bfloat16, torch.float16):
            # d rounded to X's dtype first, so that D X is one same-dtype product (a broadcast fp32
            # d took the CPU's slow mixed-dtype path: 1.6-5 ms against 0.14 for 768x3072 bf16), and
            # D A D uses the same rounded d. Any positive d keeps D X's singular values within the
            # AOL bound up to that rounding (2^-9 relative in bf16).
            d = d.to(X.dtype)
            scaled = X * d
            d = d.to(row_sums.dtype)
        else:
            scaled = (X * d).to(X.dtype)
        return scaled, (A * (d * d.mT)).to(A.dtype)  # d_i d_j: symmetric as a product

    @staticmethod
    def to_batch(G):
        return as_batch(G)

    @staticmethod
    def transpose(X):
        return X.mT

    @staticmethod
    def normalize(X, scale, eps, dtype):
        # X / (||X||_F * scale + eps) computed as Y / (||Y||_F * scale + eps / p) with Y = X / p
        # and p a power of two near max |X|: Y is exact (a power-of-two scaling) and rounded to
        # the compute dtype only then, its squares cannot overflow however large X's entries are,
        # and the one division rounds into the compute dtype. The norm is accumulated in at least
        # fp32, and in X's dtype where that is wider.
        norm_dtype = torch.promote_types(torch.promote_types(X.dtype, dtype), torch.float32)
        # max |X| as the larger of max X and -min X: two reads of X, where abs() first wrote a copy
        # (768x3072 fp32 on the CPU: 0.17 against 1.9 ms).
        data = X.detach()
        peak = torch.maximum(data.amax(dim=(-2, -1), keepdim=True), data.amin(dim=(-2, -1), keepdim=True).neg())
        p = torch.exp2(power_of_two_exponent(peak.to(norm_dtype)))
        if X.requires_grad and torch.is_grad_enabled():  # out= and in-place ops have no autograd here
            Y = X.to(norm_dtype) / p
            return (Y / (frobenius_norm(Y, norm_dtype) * scale + eps / p)).to(dtype)
        # Written contiguous: a tall input arrives as a transposed view, and the iteration's
        # products ran faster on a contiguous wide copy (3072x768 bf16 on the CPU: 0.89x the time).
        # 1 / p in X's own dtype keeps the product on the same-dtype path, 5x faster than mixed on
        # the CPU. It is exact where X's dtype has the norm dtype's exponent range (bf16 and fp32
        # with an fp32 norm, float64); elsewhere (fp16; fp32 or bf16 computed in float64, whose p
        # for a subnormal X is below 2^-126) 1 / p may overflow X's dtype, so it stays wide.
        narrow = _max_exponent(X.dtype) < _max_exponent(norm_dtype)
        inverse = 1.0 / p if narrow else (1.0 / p).to(X.dtype)
        Y = torch.mul(X, inverse, out=torch.empty(X.shape, dtype=dtype, device=X.device))
        norm = frobenius_norm(Y, norm_dtype)
        divisor = norm * scale + eps / p
        if (Y.device.type != "cpu" or Y.dtype not in (torch.bfloat16, torch.float16) or torch.compiler.is_compiling()
                or Y.shape[-2] * Y.shape[-1] < _PER_MATRIX_DIVISION_MIN):
            return Y.div_(divisor)
        # An fp32 divisor broadcast over 16-bit Y takes the CPU's slow mixed-dtype path (2.4 ms for
        # 768x3072 bf16); one 0-dim divisor per matrix takes the fast one (0.17 ms), which divides
        # in fp32 all the same.
        for matrix, d in zip(Y, divisor.reshape(-1)):
            matrix.div_(d)
        return Y

    @staticmethod
    def restore(X, G):
        return X.reshape(G.shape).to(G.dtype)


def orthogonalize(G: torch.Tensor, plan: Plan, compute_dtype: torch.dtype) -> torch.Tensor:
    """The plan's iteration on G (..., m, n) with plain torch ops, in ``compute_dtype``."""
    return orthogonalize_with(G, plan, TorchOps(), compute_dtype)
