"""The native CPU backend for torch tensors: fastmuon._blas (OpenBLAS syrk/gemm).

The kernels compute in fp32 on C-contiguous CPU buffers, which they receive as numpy views of the
tensors' memory, without a copy (``_kernel_batch``); other dtypes or layouts are converted once on
the way in and out.

Threads: ``fastmuon.threads.plan_threads`` within ``torch.get_num_threads()``, so the kernels
and torch's OpenMP pool share the cores instead of oversubscribing them (the batch's threads
are OpenMP's, with torch loaded torch's own; csrc/parallel.h).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ... import threads
from ...native import blas_module, kernel_plan
from ...plan import DEFAULT_STEPS, Plan, make_plan
from .reference import TorchOps, as_batch, through_operators


def check_native_input(t: torch.Tensor, name: str) -> None:
    if t.device.type != "cpu":
        raise ValueError(
            f'backend="native" runs on CPU tensors; {name} is on {t.device} '
            '(use backend="auto" or "reference")'
        )


def _fp32_copy(t: torch.Tensor) -> torch.Tensor:
    """A fresh C-contiguous fp32 copy, in one pass whatever t's dtype and layout."""
    return torch.empty(t.shape, dtype=torch.float32).copy_(t.detach())


def _fp32_view(t: torch.Tensor) -> torch.Tensor:
    """t itself when it already is C-contiguous fp32 (kernels read it in place), else a copy."""
    t = t.detach()
    return t if t.dtype == torch.float32 and t.is_contiguous() else _fp32_copy(t)


def _kernel_batch(t: torch.Tensor) -> np.ndarray:
    """A detached fp32 CPU tensor as the (batch, m, n) array the extension takes: a numpy view
    of its memory, which the extension takes in about a tenth of the time of torch's DLPack
    export (a few us an array, which added up to 100 us a step on small models)."""
    return as_batch(t.detach()).numpy()


def _set_blas_threads(count: int) -> None:
    blas = blas_module()
    if count != blas.get_num_threads():  # MLX's native calls set it too
        blas.set_num_threads(count)


def plan_threads(shapes) -> Tuple[int, int]:
    """``fastmuon.threads.plan_threads`` within ``torch.get_num_threads()``."""
    return threads.plan_threads(shapes, torch.get_num_threads())


def use_threads(shapes) -> int:
    """Set OpenBLAS's threads for a call on stacks of these shapes; returns the workers."""
    blas_threads, workers = plan_threads(shapes)
    _set_blas_threads(blas_threads)
    return workers


def xxt(X: torch.Tensor) -> torch.Tensor:
    m = X.shape[-2]
    if X.numel() == 0:
        return X.new_zeros((*X.shape[:-1], m))
    src = _kernel_batch(_fp32_view(X))
    out = torch.empty((src.shape[0], m, m), dtype=torch.float32)
    _set_blas_threads(threads.whole_call_threads(X.shape, torch.get_num_threads()))
    blas_module().xxt(src, out.numpy())
    return out.reshape(*X.shape[:-1], m).to(X.dtype)


def ba_plus_caa(A: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    out = _fp32_copy(A)
    if out.numel() == 0:
        return out.to(A.dtype)
    batch = _kernel_batch(out)
    _set_blas_threads(threads.whole_call_threads(A.shape, torch.get_num_threads()))
    blas_module().ba_plus_caa(batch, batch, float(alpha), float(beta))
    return out.to(A.dtype)


def _run_kernel(Gs: List[torch.Tensor], plan: Dict[str, Any], shape_plan: Optional[Plan] = None) -> List[torch.Tensor]:
    """The fused iteration (``plan`` as ``kernel_plan`` gives it) on every tensor of ``Gs``, on
    fp32 copies (the kernel works in place), the results in the inputs' dtypes.

    One kernel call, and a second for float64 tensors: those could overflow float32, so they are
    normalized here first, in float64 (the reference's normalization: ``shape_plan.for_shape``'s,
    where ``shape_plan`` is given, for method "auto"), and iterated with the plan's ``normalize``
    off."""
    is_wide = [G.dtype == torch.float64 and G.numel() > 0 for G in Gs]
    wide = [i for i, w in enumerate(is_wide) if w]
    rest = [i for i, w in enumerate(is_wide) if not w]
    Xs: List[torch.Tensor] = [None] * len(Gs)
    for positions, call_plan in ((rest, plan), (wide, dict(plan, normalize=False))):
        if not positions:
            continue
        for i in positions:
            G = Gs[i].detach()
            if call_plan["normalize"]:
                Xs[i] = _fp32_copy(G)
                continue
            scaling = call_plan if shape_plan is None else kernel_plan(shape_plan.for_shape(*G.shape[-2:]))
            Xs[i] = TorchOps.normalize(as_batch(G), scaling["norm_scale"], scaling["eps"],
                                       torch.float32).reshape(G.shape)
        workers = use_threads([Gs[i].shape for i in positions])
        blas_module().orthogonalize_stacks([_kernel_batch(Xs[i]) for i in positions], plan=call_plan,
                                           workers=workers)
    return [X.to(G.dtype) for X, G in zip(Xs, Gs)]


# The fused iteration as a torch operator with a fake (shape-only) implementation, so that
# torch.compile(fullgraph=True) keeps an optimizer step that calls it in one graph. An operator's
# schema is typed and has no dict, so the plan crosses it as keyword arguments, kernel_plan's keys
# with both coefficient tables flattened to float lists: _op_arguments builds them, _op_kernel_plan turns
# them back. A new plan field is a new keyword here.


_COEFFICIENT_KEYS = ("coefficients", "standard_coefficients")


def _op_arguments(plan: Plan) -> Dict[str, Any]:
    args = kernel_plan(plan)
    for key in _COEFFICIENT_KEYS:
        args[key] = [float(c) for step in args[key] for c in step]
    return args


def _op_kernel_plan(args: Dict[str, Any]) -> Dict[str, Any]:
    return dict(args, **{key: tuple(tuple(args[key][i:i + 3]) for i in range(0, len(args[key]), 3))
                         for key in _COEFFICIENT_KEYS})


def _orthogonalize_kernel(G: torch.Tensor, **args) -> torch.Tensor:
    return _run_kernel([G], _op_kernel_plan(args))[0]


def _op_schema() -> str:
    """The operator's schema, from the fields ``kernel_plan`` gives (a new plan field needs no
    change here): the coefficients flattened to ``float[]``, the others by their Python type."""
    types = {bool: "bool", int: "int", float: "float", list: "float[]"}
    fields = _op_arguments(make_plan("polar_express", DEFAULT_STEPS, None))
    return "(Tensor G, *, " + ", ".join(f"{types[type(v)]} {k}" for k, v in fields.items()) + ") -> Tensor"


_OP_SCHEMA = _op_schema()
_orthogonalize_op = torch.library.custom_op("fastmuon::native_orthogonalize", _orthogonalize_kernel, mutates_args=(),
                                            schema=_OP_SCHEMA)


@_orthogonalize_op.register_fake
def _(G, **args):
    return torch.empty_like(G, memory_format=torch.contiguous_format)


def orthogonalize(G: torch.Tensor, plan: Plan) -> torch.Tensor:
    plan = plan.for_shape(*G.shape[-2:])
    if through_operators(G):
        return _orthogonalize_op(G, **_op_arguments(plan))
    return _run_kernel([G], kernel_plan(plan))[0]


def orthogonalize_stacks(Gs: List[torch.Tensor], plan: Plan) -> List[torch.Tensor]:
    """``orthogonalize`` of each tensor, in one kernel call (eager tensors only: no operator)."""
    if not Gs:
        return []
    return _run_kernel(Gs, kernel_plan(plan), plan)


def muon_step(grads: List[torch.Tensor], momenta: List[torch.Tensor], weights: List[torch.Tensor], views: list,
              hyper: list, plan: Plan) -> bool:
    """One Muon step of fp32 CPU parameters in one native call (``_blas.muon_step``): each
    parameter's C-contiguous gradient, momentum and weight, updated in place, seen as its
    (batch, rows, cols) ``views`` entry; ``hyper`` the dicts ``functional.muon_step_scalars`` gives.
    False, having changed nothing, if a gradient is not finite. The tensors go in as numpy views
    of their memory (see ``_kernel_batch``; 8 parameters: 19 instead of 119 us a call)."""
    workers = use_threads(views)
    return blas_module().muon_step([(G.detach() if G.requires_grad else G).numpy() for G in grads],
                                   [M.numpy() for M in momenta],
                                   [W.detach().numpy() for W in weights], views, hyper,
                                   plan=kernel_plan(plan), workers=workers)
