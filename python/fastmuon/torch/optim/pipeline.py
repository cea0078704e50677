"""The plan of one Muon step in one process: which parameters share an orthogonalization call,
and which implementation (``impl``) steps each batch of them, with the reason.

Same-shape matrices with the same orthogonalization options form a stack; a stack is cut into
chunks of at most ``STACK_BYTES`` (in the compute dtype), and consecutive chunks with the same
options, compute dtype and kernels go in batches of at most ``STACK_BYTES``: one
orthogonalization call a batch (``chunk_batches``). Each batch then takes one implementation:

* ``"fused"``: the whole step (finiteness check, momentum, orthogonalization, update) in one
  native call, each matrix on one of torch's threads, in place (CPU, fp32 weights computed in
  fp32 on the native kernels, C-contiguous, plain Muon);
* ``"foreach"``: list-wide ``torch._foreach_*`` passes around one stacked orthogonalization
  (CPU, eager, float lr, fp32/fp64 weights, Muon or NorMuon, no sphere or cautious decay);
* ``"per_parameter"``: any device, dtype or option (sphere, cautious decay), and what
  torch.compile traces.

"auto" takes the first that applies. The three give bitwise the same weights and state (the
tests check it). "fused" and "foreach" read one finiteness flag back (free on the CPU); a batch
with a non-finite gradient steps ``per_parameter`` that time, skipping that parameter.
``plan_local_step`` is the one place these choices are made, for the step and for ``explain``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from ...options import ORTHOGONALIZE_KEYS, orthogonalize_kwargs
from ...rules import matrix_view, shape_scale
from ..orthogonalize import auto_backend, dtype_name, resolve_compute_dtype, runs_native
from .base import is_dtensor

# Most bytes of a same-shape stack orthogonalized at once (in the compute dtype) by one process;
# at least one matrix. Bounds the step's workspace; bigger stacks go in several calls.
STACK_BYTES = 16 * 2**20


# Weights the list-wide passes take. (On bf16 and fp16 tensors torch's list-wide ops round their
# scalars to the tensors' dtype: 1 - lr * wd = 0.998 became 0.9961, twice the weight decay; the
# per-parameter ops keep them in fp32.)
FOREACH_DTYPES = (torch.float32, torch.float64)


def orthogonalize_key(group: dict) -> tuple:
    """The group's orthogonalization options (ORTHOGONALIZE_KEYS), hashable: matrices share a
    stack only when these agree."""
    return tuple(tuple(group[k]) if isinstance(group[k], list) else group[k] for k in ORTHOGONALIZE_KEYS)


def orthogonalize_options(group: dict) -> dict:
    """The group's polynomial iteration as ``orthogonalize`` takes it (method, steps,
    coefficients, eps)."""
    return orthogonalize_kwargs(group["method"], group["ns_steps"], group["ns_coefficients"], group["eps"])


def lr_scale(group: dict, rows: int, cols: int) -> float:
    """The group's lr shape scale for a (rows, cols) matrix view; a ``transposed`` group's
    weights are stored (in, out), so their view is read the other way round."""
    return shape_scale(*((cols, rows) if group["transposed"] else (rows, cols)), group["adjust_lr"])


def by_group(members) -> List[Tuple[dict, List[int]]]:
    """The positions of (parameter, group) pairs by group, in order of first appearance: a
    stack holds the same-shape matrices of every group with the same orthogonalization options,
    and the list-wide passes take one group's hyperparameters at a time."""
    positions: Dict[int, Tuple[dict, List[int]]] = {}
    for i, (_, group) in enumerate(members):
        positions.setdefault(id(group), (group, []))[1].append(i)
    return list(positions.values())


def foreach_refusal(params: List[torch.Tensor], lr) -> Optional[str]:
    """Why parameters cannot take list-wide passes (None: they can): they need a float lr,
    dense gradients of the weights' dtype, on the CPU (where reading one finiteness flag back
    costs nothing), outside torch.compile (which fuses the per-parameter path itself)."""
    if isinstance(lr, torch.Tensor):
        return "a Tensor lr"
    if torch.compiler.is_compiling():
        return "under torch.compile, which fuses the per-parameter step"
    for p in params:
        grad = p.grad
        if not p.is_cpu:
            return f"a {p.device.type} tensor (the list-wide passes are for the CPU)"
        if grad is None or grad.is_sparse:
            return "a sparse gradient"
        if grad.dtype != p.dtype:
            return f"a {grad.dtype} gradient on a {p.dtype} weight"
        if is_dtensor(p):
            return "a DTensor parameter"
    return None


def _normuon_refusal(members) -> Optional[str]:
    """Why the fused native step (plain Muon) cannot step these pairs (None: it can)."""
    if any(g["beta2"] is not None for _, g in members):
        return "NorMuon's second moment (the native step is plain Muon's)"
    return None


def _muon_foreach_refusal(members) -> Optional[str]:
    """Why Muon (parameter, group) pairs cannot take the list-wide passes (None: they can)."""
    for _, g in members:
        if g["sphere"] is not None:
            return "sphere="
        if g["cautious_weight_decay"]:
            return "cautious weight decay"
        if isinstance(g["lr"], torch.Tensor):
            return "a Tensor lr"
    params = [p for p, _ in members]
    for p in params:
        if p.dtype not in FOREACH_DTYPES:
            return f"{dtype_name(p.dtype)} weights (list-wide ops round their scalars to them)"
    return foreach_refusal(params, lr=None)


@dataclass
class Chunk:
    """Same-shape Muon matrices orthogonalized in one stack."""

    members: List[Tuple[torch.Tensor, dict]]  # (parameter, its group)
    counts: List[int]  # matrices in each member's view
    group: dict  # the first member's: the orthogonalization options all members share (each
    # member's other hyperparameters are its own group's: by_group)
    rows: int
    cols: int
    stack_dtype: torch.dtype  # the weights': orthogonalize rounds to the compute dtype only after
    # scaling, so that no finite momentum overflows (a float64 1e39, a float32 3.4e38 in bf16)
    compute_dtype: torch.dtype  # of its orthogonalization
    options: tuple  # the group's orthogonalization options (ORTHOGONALIZE_KEYS), frozen
    nbytes: int  # of its stack
    native: bool  # fp32 weights, C-contiguous, on the native kernels
    impl: str  # "fused", "foreach" or "per_parameter"
    why: str


@dataclass
class Batch:
    """Chunks orthogonalized in one call, with one implementation (``chunk_batches`` keeps
    chunks of different implementations apart)."""

    chunks: List[Chunk]

    @property
    def impl(self) -> str:
        return self.chunks[0].impl


def chunk_batches(chunks: List[Chunk]):
    """Consecutive chunks with the same orthogonalization options, compute dtype, kernels
    (native or not) and implementation, at most ``STACK_BYTES`` a batch (a bigger chunk alone): the chunks that
    share one orthogonalization call."""
    batch: List[Chunk] = []
    for chunk in chunks:
        key = (chunk.options, chunk.compute_dtype, chunk.native, chunk.impl)
        if batch and (key != (batch[0].options, batch[0].compute_dtype, batch[0].native, batch[0].impl)
                      or sum(c.nbytes for c in batch) + chunk.nbytes > STACK_BYTES):
            yield batch
            batch = []
        batch.append(chunk)
    if batch:
        yield batch


def _contiguous(members, state) -> bool:
    """Whether weights, gradients and momenta are C-contiguous (a momentum not made yet will be)."""
    for p, _ in members:
        momentum = (state.get(p) or {}).get("momentum_buffer")
        if not (p.is_contiguous() and p.grad.is_contiguous() and (momentum is None or momentum.is_contiguous())):
            return False
    return True


def _native_refusal(members, state, dtype, compute_dtype, backend, device, shape) -> Optional[str]:
    """Why a chunk cannot take the native kernels in place, as the fused step does (None: it can)."""
    if dtype != torch.float32 or compute_dtype != torch.float32:
        return "the fused step takes fp32 weights computed in fp32"
    if not _contiguous(members, state):
        return "a weight, gradient or momentum is not C-contiguous"
    if not runs_native(backend, device, shape, compute_dtype):
        return "the stack does not run on the native kernels"
    return None


def _choose_impl(members, native_why: Optional[str], impl: str) -> Tuple[str, str]:
    """(implementation, why) for a chunk; an explicit ``impl`` that cannot run raises."""
    foreach_why = _muon_foreach_refusal(members)
    fused_why = foreach_why or native_why or _normuon_refusal(members)
    if impl == "per_parameter":
        return "per_parameter", 'impl="per_parameter"'
    if impl == "fused" or (impl == "auto" and fused_why is None):
        if fused_why is not None:
            raise ValueError(f'impl="fused" cannot step {_names(members)}: {fused_why}')
        return "fused", "CPU, fp32 on the native kernels, plain Muon"
    if foreach_why is not None:
        if impl == "foreach":
            raise ValueError(f'impl="foreach" cannot step {_names(members)}: {foreach_why}')
        return "per_parameter", f"not fused or foreach: {foreach_why}"
    return "foreach", "list-wide passes" + ("" if impl == "foreach" else f"; not fused: {fused_why}")


def _names(members) -> str:
    return ", ".join(f"the {tuple(p.shape)} weight of a group with lr={g['lr']}" for p, g in members[:2]) + (
        f" (and {len(members) - 2} more)" if len(members) > 2 else "")


def plan_local_step(groups: List[dict], state) -> List[Batch]:
    """The batches of one local Muon step over ``groups`` (parameters with a gradient), in the
    order they run, each with its implementation (``Chunk.impl``, ``Chunk.why``)."""
    stacks: Dict[tuple, List[Tuple[torch.Tensor, dict]]] = defaultdict(list)
    views: Dict[torch.Tensor, int] = {}  # matrices in each parameter's view
    for group in groups:
        options = orthogonalize_key(group)
        for p in group["params"]:
            if p.grad is not None:
                views[p], rows, cols = matrix_view(p.shape)
                stacks[(rows, cols, p.dtype, p.device, group["impl"], *options)].append((p, group))
    list_wide: List[Chunk] = []
    per_parameter: List[Chunk] = []
    for (rows, cols, dtype, device, impl, *options), members in stacks.items():
        group = members[0][1]
        count = sum(views[p] for p, _ in members)
        compute_dtype = resolve_compute_dtype(group["ns_dtype"], group["backend"], device, (count, rows, cols),
                                              group["method"])
        matrix_bytes = rows * cols * torch.finfo(compute_dtype).bits // 8
        per_chunk = max(1, STACK_BYTES // max(1, matrix_bytes))
        for start in range(0, len(members), per_chunk):
            part = members[start:start + per_chunk]
            counts = [views[p] for p, _ in part]
            native_why = _native_refusal(part, state, dtype, compute_dtype, group["backend"], device,
                                         (sum(counts), rows, cols))
            chosen, why = _choose_impl(part, native_why, impl)
            chunk = Chunk(part, counts, group, rows, cols, dtype, compute_dtype, tuple(options),
                          matrix_bytes * sum(counts), native_why is None, chosen, why)
            (per_parameter if chosen == "per_parameter" else list_wide).append(chunk)
    return [Batch(chunks) for chunks in (*chunk_batches(list_wide), *chunk_batches(per_parameter))]


def stack_backend(backend: str, device, shape, compute_dtype: torch.dtype) -> Tuple[str, str]:
    """(backend, why) of a stack's orthogonalization with a group's ``backend`` option."""
    if backend != "auto":
        return backend, f'backend="{backend}"'
    return auto_backend(device, shape, compute_dtype)


def chunk_backend(chunk: Chunk) -> Tuple[str, str]:
    """(backend, why) of a chunk's orthogonalization."""
    if chunk.impl == "fused":
        return "native", "the fused step runs the native kernels"
    return stack_backend(chunk.group["backend"], chunk.members[0][0].device,
                         (sum(chunk.counts), chunk.rows, chunk.cols), chunk.compute_dtype)
