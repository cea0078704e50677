"""Orthogonalization of PyTorch tensors: argument checks and the one choice of backend.

The backends are drivers of their own: ``reference.py`` (plain torch), ``native.py`` (the C++
kernels on the BLAS, CPU) and ``triton_backend.py`` (CUDA; imported on first use).
"""

from __future__ import annotations

import importlib.util
import math
from typing import Optional, Sequence, Tuple

import torch

from .. import auto_table, cpu, native as _native_loader, threads
from ..plan import (
    DEFAULT_STEPS,
    METHODS_DOC,
    check_backend,
    check_compute_bits,
    check_matrix_shape,
    choose_backend,
    gram_needs_wider,
    make_plan,
)
from .backends import native, reference

BACKENDS = ("auto", "reference", "native", "triton")

_TRITON_HINT = (
    'backend="triton" needs the triton package and torch >= 2.6: pip install "fastmuon[torch]" '
    "(or pip install triton; Linux with a CUDA GPU)"
)


def has_fast_bf16_matmul() -> bool:
    return cpu.has_fast_bf16_matmul()


def blas_available() -> bool:
    return _native_loader.blas_available()


def torch_threads() -> int:
    return torch.get_num_threads()


# What the machine offers is read once, at trace time, by torch.compile (not traced: it reads files
# and takes a lock). This is what torch.compiler.assume_constant_result sets; setting it here
# avoids importing torch._dynamo (and with it triton) whenever fastmuon.torch is imported.
has_fast_bf16_matmul._dynamo_marked_constant = True
blas_available._dynamo_marked_constant = True
torch_threads._dynamo_marked_constant = True

# Per-matrix work m * m * n (m <= n) from which a CPU with bf16 units computes in bf16 by default.
# Below it fp32 on the native kernels was faster (torch's bf16 matmul pays a fixed cost per call).
# Batches: the native kernels share their matrices out over the threads, and bf16 took
# 0.45-0.65x the fp32 reference's time from 256 x 1024 (6.7e7) up, level with the split native
# fp32 there. One matrix: the native kernels run it on one thread, and bf16 was faster from
# 256 x 256 (1.7e7; 0.79x against native's 1.1x) and level at 128 x 512 (8.4e6). (AMD EPYC with
# AVX512-BF16, 2 threads, 2026-11-30; bench/bench_cpu_paths.py, bench/results/cpu_paths.jsonl.)
BF16_MIN_WORK = 3e7
ONE_MATRIX_BF16_MIN_WORK = 8e6


def _device_type(device) -> str:
    return device.type if isinstance(device, torch.device) else torch.device(device).type


def default_compute_dtype(device, shape=None) -> torch.dtype:
    """The compute dtype ``dtype=None`` means for a stack of ``shape`` (..., m, n) on ``device``:
    bf16 on CUDA (as every public Muon does) and on CPUs with bf16 matrix units
    (``fastmuon.cpu.has_fast_bf16_matmul``: AMX-BF16 or AVX512-BF16) for matrices with at least
    ``BF16_MIN_WORK`` = m * m * n (``ONE_MATRIX_BF16_MIN_WORK`` for a single matrix on more than
    one thread; all matrices when ``shape`` is None); fp32 otherwise, and on CPUs without bf16
    units, where bf16 matmul is ~100x slower than fp32."""
    device_type = _device_type(device)
    if device_type == "cuda":
        return torch.bfloat16
    if device_type == "cpu" and has_fast_bf16_matmul():
        if shape is None:
            return torch.bfloat16
        matrices, work = threads.matrix_work(shape)
        threshold = ONE_MATRIX_BF16_MIN_WORK if matrices == 1 and torch_threads() > 1 else BF16_MIN_WORK
        return torch.bfloat16 if work >= threshold else torch.float32
    return torch.float32


# Per-matrix work m * m * n where, for a single fp32 matrix on more than one thread, torch's fp32
# reference (MKL on all threads) was faster than the native kernels (0.7-0.9x their time from
# 128 x 512 to 512 x 512, one OpenBLAS thread or two); from 768 x 768 up native on OpenBLAS's
# threads won (0.72-0.85x the reference). Same machine and script as above.
ONE_MATRIX_REFERENCE_WORK = (8e6, 3e8)


def _reference_is_faster(shape) -> bool:
    """Whether "auto" runs an fp32 CPU stack of this shape on the reference (see
    ONE_MATRIX_REFERENCE_WORK)."""
    matrices, work = threads.matrix_work(shape)
    low, high = ONE_MATRIX_REFERENCE_WORK
    return matrices == 1 and torch_threads() > 1 and low <= work < high


def runs_native(backend: str, device, shape, compute_dtype: torch.dtype) -> bool:
    """Whether a stack of ``shape`` on ``device``, computed in ``compute_dtype`` and not needing
    gradients, runs on the native kernels: ``select_backend``'s choice for it, from its shape
    alone (the optimizers ask before they build the stack)."""
    if _device_type(device) != "cpu":
        return False
    if backend == "native":
        return True
    return backend == "auto" and _native_refusal(device, shape, compute_dtype, False) is None


def resolve_compute_dtype(dtype: Optional[torch.dtype], backend: str, device, shape=None,
                          method: str = "auto") -> torch.dtype:
    """The compute dtype of ``orthogonalize(G, dtype=dtype, backend=backend, method=method)`` for
    G of ``shape`` on ``device``: ``dtype`` when given; else fp32 for the native kernels (they
    compute in fp32 on every CPU) and ``default_compute_dtype(device, shape)`` for the others,
    widened to fp32 for the Gram-space iteration (``fastmuon.plan.GRAM_MIN_BITS``)."""
    if dtype is not None:
        return dtype
    chosen = torch.float32 if backend == "native" else default_compute_dtype(device, shape)
    return torch.float32 if gram_needs_wider(method, torch.finfo(chosen).bits) else chosen


def orthogonalize(
    G: torch.Tensor,
    *,
    method: str = "auto",
    steps: int = DEFAULT_STEPS,
    coefficients: Optional[Sequence] = None,
    backend: str = "auto",
    eps: Optional[float] = None,
    dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Approximate the polar factor U V^T of each matrix in ``G`` (shape ``(..., m, n)``).

    Args:
        G: a floating tensor with at least two dimensions; leading dimensions are a batch.
        method: {methods}
        steps: number of polynomial steps.
        coefficients: custom ``[(a, b, c), ...]``; replaces the method's polynomials and keeps
            its normalization (with ``"auto"``, Polar Express's, on every shape).
        eps: added to the scaled norm in the normalization X / (||X||_F * scale + eps); default
            the method's (1e-7 for newton_schulz, 1e-6 for the others).
        backend: ``"reference"`` is plain torch; ``"native"`` the fused C++ iteration on the
            BLAS (CPU tensors, fp32 compute); ``"triton"`` the symmetric Triton kernels (CUDA
            tensors; fp32, bf16 or fp16 compute); ``"auto"`` picks native for CPU tensors computed
            in fp32 when it is built (except a single matrix in ``ONE_MATRIX_REFERENCE_WORK``
            on more than one thread, where torch's fp32 was faster), Triton for CUDA tensors
            where ``auto_table`` records it measured faster (nowhere yet), else the reference
            (cuBLAS on CUDA).
        dtype: compute dtype; by default ``default_compute_dtype(G.device, G.shape)``: bf16 on
            CUDA, and on CPUs with bf16 matrix units for matrices of at least ``BF16_MIN_WORK``
            = m * m * n (``ONE_MATRIX_BF16_MIN_WORK`` for a single matrix); fp32 otherwise (and
            always for ``backend="native"`` and ``method="gram"``, which refuses 16-bit floats:
            ``fastmuon.plan.GRAM_MIN_BITS``).

    Returns:
        A tensor of ``G``'s shape and dtype. A zero matrix gives zeros, an empty one an empty
        tensor. An input that requires grad keeps autograd ("auto" takes the reference for it).
    """
    plan = make_plan(method, steps, coefficients, eps)
    check_backend(backend, BACKENDS)
    chosen, compute_dtype = _choose(G, "G", backend, dtype, plan.method)
    return _run(chosen, G, plan, compute_dtype)


orthogonalize.__doc__ = orthogonalize.__doc__.replace("{methods}", METHODS_DOC)


def orthogonalize_stacks(
    Gs: Sequence[torch.Tensor],
    *,
    method: str = "auto",
    steps: int = DEFAULT_STEPS,
    coefficients: Optional[Sequence] = None,
    backend: str = "auto",
    eps: Optional[float] = None,
    dtype: Optional[torch.dtype] = None,
) -> list:
    """``[orthogonalize(G, ...) for G in Gs]`` for tensors of any shapes, with the same options
    and bitwise the same results; the stacks that take the native kernels (in eager mode) go in
    one call, whose threads share out all their matrices together (``native.plan_threads``).
    The optimizers orthogonalize their same-shape stacks through it."""
    plan = make_plan(method, steps, coefficients, eps)
    check_backend(backend, BACKENDS)
    Gs = list(Gs)
    chosen = [_choose(G, f"Gs[{i}]", backend, dtype, plan.method) for i, G in enumerate(Gs)]
    together = [i for i, (name, _) in enumerate(chosen) if name == "native" and not reference.through_operators(Gs[i])]
    skip = set(together)
    out = [None if i in skip else _run(name, G, plan, compute_dtype)
           for i, (G, (name, compute_dtype)) in enumerate(zip(Gs, chosen))]
    for i, O in zip(together, native.orthogonalize_stacks([Gs[i] for i in together], plan)):
        out[i] = O
    return out


def _choose(G, name: str, backend: str, dtype, method: str) -> tuple:
    """(backend, compute dtype) for G, after checking it; backend "empty" for an empty G."""
    check_tensor(G, name)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    compute_dtype = resolve_compute_dtype(dtype, backend, G.device, G.shape, method)
    check_compute_bits(method, torch.finfo(compute_dtype).bits, compute_dtype)
    if G.numel() == 0:
        return "empty", compute_dtype
    return select_backend(backend, G, compute_dtype), compute_dtype


def _run(chosen: str, G, plan, compute_dtype):
    if chosen == "empty":  # the polar factor of an empty matrix is empty
        return torch.zeros_like(G)
    if chosen == "native":
        return native.orthogonalize(G, plan)
    if chosen == "triton":
        return triton_backend().orthogonalize(G, plan, compute_dtype)
    return reference.orthogonalize(G, plan, compute_dtype)


def check_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}; use {name}.to_dense()")
    check_matrix_shape(t.shape, name)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {t.dtype}")


def cuda_device_name(device) -> str:
    """torch's name of a CUDA device (asked once per device)."""
    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _CUDA_NAMES:
        _CUDA_NAMES[index] = torch.cuda.get_device_name(index)
    return _CUDA_NAMES[index]


_CUDA_NAMES: dict = {}
cuda_device_name._dynamo_marked_constant = True  # a machine query, read once at trace time


def dtype_name(dtype: torch.dtype) -> str:
    """A torch dtype's name without the module ("float32")."""
    return str(dtype).removeprefix("torch.")


def _native_refusal(device, shape, compute_dtype: torch.dtype, differentiable: bool) -> Optional[str]:
    """Why "auto" does not run a stack on the native kernels (None: it does)."""
    device_type = _device_type(device)
    if device_type != "cpu":
        return f"native runs on CPU tensors, not {device_type}"
    if differentiable:
        return "native has no autograd and the input requires grad"
    if compute_dtype != torch.float32:
        why = f"native computes in float32, the compute dtype is {dtype_name(compute_dtype)}"
        if compute_dtype == torch.bfloat16 and not has_fast_bf16_matmul():
            # an explicit bf16 is honoured, but costs ~70-100x here (fastmuon.cpu)
            why += " (this CPU has no bf16 matrix units, AVX512-BF16 or AMX: bf16 products run ~100x slower than fp32)"
        return why
    if not blas_available():
        return "fastmuon._blas is not built"
    if _reference_is_faster(shape):
        return "one fp32 matrix in ONE_MATRIX_REFERENCE_WORK on several threads: torch's fp32 was faster there"
    return None


def _triton_refusal(device, shape, compute_dtype: torch.dtype, differentiable: bool) -> Optional[str]:
    """Why "auto" does not run a stack on the Triton kernels (None: it does): only where
    ``auto_table`` records them measured faster for this GPU, dtype and shape."""
    device_type = _device_type(device)
    if device_type != "cuda":
        return f"triton runs on CUDA tensors, not {device_type}"
    if differentiable:
        return "triton has no autograd and the input requires grad"
    if not auto_table.TRITON_FASTER:
        return "auto_table records no shape where Triton beat cuBLAS"
    if not triton_installed():
        return "triton is not installed"
    dtype = dtype_name(compute_dtype)
    if dtype not in ("float32", "bfloat16", "float16"):
        return f"the Triton kernels take float32, bfloat16 or float16, not {dtype}"
    batch, (m, n) = math.prod(shape[:-2]), shape[-2:]
    gpu = cuda_device_name(device)
    if not auto_table.triton_measured_faster(gpu, dtype, batch, m, n):
        return f"auto_table records no Triton win on {gpu} for {dtype} {tuple(shape)}"
    return None


# The registry "auto" chooses from, in order: each backend's refusal for a stack (its device
# type, shape, compute dtype and whether it needs gradients); the reference takes the rest.
AUTO_CANDIDATES = (("native", _native_refusal), ("triton", _triton_refusal))


def auto_backend(device, shape, compute_dtype: torch.dtype, differentiable: bool = False) -> Tuple[str, str]:
    """("native" | "triton" | "reference", why): what ``backend="auto"`` runs for a stack of
    ``shape`` on ``device`` computed in ``compute_dtype``, and the reason."""
    device_type = _device_type(device)
    name, refusals = choose_backend(AUTO_CANDIDATES, device, shape, compute_dtype, differentiable)
    if name is not None:
        return name, f"{name} takes {device_type} stacks of this shape in {dtype_name(compute_dtype)}"
    engine = "cuBLAS" if device_type == "cuda" else "plain torch"
    return "reference", f"reference ({engine})" + (f": {refusals}" if refusals else "")


def select_backend(backend: str, t: torch.Tensor, compute_dtype: torch.dtype) -> str:
    """The one place that decides which backend runs: "auto" asks ``auto_backend`` (the
    registry ``AUTO_CANDIDATES``); an explicit backend that cannot take ``t`` raises, saying why.

    On an H100 (2026-11-22) and an H200 (2026-12-04; bench/results/triton_gpu.jsonl) the full
    Triton iteration was slower than the cuBLAS reference at every measured shape (3-5x at GPT-2
    sizes on the H200, 1.2x at 4096 x 4096), so the table is empty; backend="triton" asks for
    the kernels anywhere.
    """
    differentiable = t.requires_grad and torch.is_grad_enabled()
    if backend == "auto":
        return auto_backend(t.device, t.shape, compute_dtype, differentiable)[0]
    if backend in ("native", "triton") and differentiable:
        raise ValueError(
            f'backend="{backend}" has no autograd and the input requires grad; use backend="reference" '
            "(or detach the input, or run under torch.no_grad())"
        )
    if backend == "triton":
        triton_backend().check_input(t, "the input", compute_dtype)
    if backend == "native":
        native.check_native_input(t, "the input")
        if compute_dtype != torch.float32:
            raise ValueError(
                f'backend="native" computes in float32; dtype={compute_dtype} needs '
                'backend="reference"'
            )
    return backend


# Looked up once, without importing triton (which takes seconds and is needed only on use).
_TRITON_FOUND = importlib.util.find_spec("triton") is not None


def triton_installed() -> bool:
    return _TRITON_FOUND


def triton_backend():
    """``fastmuon.torch.backends.triton_backend``, imported on first use (it imports triton)."""
    if not triton_installed():
        raise ImportError(_TRITON_HINT)
    try:
        from .backends import triton_backend as module
    except ImportError as exc:
        raise ImportError(f"{_TRITON_HINT}; importing it failed: {exc}") from exc
    return module
