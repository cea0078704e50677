"""The plan of an MLX Muon step: which parameters take the fused step (``choose_impls``), which
matrices share an orthogonalization call (one stack per matrix shape and dtype, ``stack_key``),
and ``explain_routes``, which reports it with the implementation and backend each parameter
takes, and why.

Implementations (``impl``):

* ``"fused"``: the whole step of every eligible parameter (finiteness check, momentum,
  orthogonalization, update) as one native primitive, ``_mlx_ext.muon_step``: plain Muon,
  weights, gradients and momenta all float32 or all bfloat16, the native backend (float32
  compute), one process. Its results are
  bitwise those of "per_parameter" (the tests check it).
* ``"per_parameter"``: MLX ops per parameter around one batched orthogonalization per stack.

``"auto"`` takes "fused" for each parameter that can, "per_parameter" for the others; an
explicit ``"fused"`` that cannot run raises, naming the parameter.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import mlx.core as mx

from ...plan import make_plan
from ...route import Route
from ..orthogonalize import auto_backend, dtype_name, resolve_compute_dtype
from .base import update_view


def stack_key(view: Tuple[int, int, int], dtype: mx.Dtype) -> tuple:
    """Matrices with the same (rows, cols) and dtype are orthogonalized in one stack."""
    return (view[1], view[2], dtype)


def optimizer_refusal(opt, distributed: bool) -> Optional[str]:
    """Why no parameter of Muon ``opt`` can take the fused step (None: each may)."""
    if opt.fused_refusal is not None:
        return opt.fused_refusal
    if distributed:
        return "the orthogonalization is shared out over mx.distributed"
    compute_dtype = resolve_compute_dtype(opt.ns_dtype, opt.method)
    backend = auto_backend(compute_dtype)[0] if opt.backend == "auto" else opt.backend
    if backend != "native" or compute_dtype != mx.float32:
        return (f"the fused step runs the native kernels in float32, and this step runs the {backend} backend in "
                f"{dtype_name(compute_dtype)}")
    return None


def parameter_refusal(param: mx.array, grad: mx.array, momentum: Optional[mx.array]) -> Optional[str]:
    """Why one parameter cannot take the fused step (None: it can); ``momentum`` None when its
    state is not made yet (it will have the parameter's dtype)."""
    if param.ndim < 2:
        return "a 0-D/1-D parameter takes the momentum step, not orthogonalized"
    dtypes = {param.dtype, grad.dtype} | ({param.dtype} if momentum is None else {momentum.dtype})
    if len(dtypes) > 1 or param.dtype not in (mx.float32, mx.bfloat16):
        return "the fused step takes weights, gradients and momenta all float32 or all bfloat16"
    return None


def choose_impls(opt, params: List[Tuple[str, mx.array, mx.array, Optional[mx.array]]],
                 distributed: bool) -> List[Tuple[str, str]]:
    """(impl, why) for each (path, gradient, parameter, momentum or None) of a Muon step."""
    if opt.impl == "per_parameter":
        return [("per_parameter", 'impl="per_parameter"')] * len(params)
    shared = optimizer_refusal(opt, distributed)
    chosen = []
    for path, grad, param, momentum in params:
        refusal = shared or parameter_refusal(param, grad, momentum)
        if refusal is not None and opt.impl == "fused":
            raise ValueError(f'impl="fused" cannot step {path!r}: {refusal}')
        chosen.append(("fused", "CPU, the native kernels in float32, plain Muon") if refusal is None
                      else ("per_parameter", f"not fused: {refusal}"))
    return chosen


def momentum_of(opt, keys: tuple) -> Optional[mx.array]:
    """The momentum in ``opt``'s state at ``keys``, or None where there is none yet."""
    state = opt.state
    for key in keys:
        try:
            state = state[key]
        except (KeyError, IndexError, TypeError):
            return None
    return state.get("momentum") if isinstance(state, dict) else None


def explain_routes(opt, leaves, strategy: str) -> List[Route]:
    """A Route per gradient leaf ((path, keys, gradient, parameter)) of Muon ``opt``, in order."""
    compute_dtype = resolve_compute_dtype(opt.ns_dtype, opt.method)
    plan = make_plan(**opt._iteration())
    if opt.backend == "auto":
        backend, backend_why = auto_backend(compute_dtype)
    else:
        backend, backend_why = opt.backend, f'backend="{opt.backend}"'
    impls = choose_impls(opt, [(path, grad, param, momentum_of(opt, keys)) for path, keys, grad, param in leaves],
                         strategy != "local")
    views = [update_view(param.shape, path) for path, _, _, param in leaves]
    fused: Dict[tuple, List[int]] = {}  # the fused call's stacks
    stacks: Dict[tuple, List[int]] = {}  # the other calls, one stack each
    for index, (path, _, grad, param) in enumerate(leaves):
        if param.ndim >= 2:
            into = fused if impls[index][0] == "fused" else stacks
            into.setdefault(stack_key(views[index], param.dtype), []).append(index)
    placed = {}
    calls = ([list(fused.values())] if fused else []) + [[members] for members in stacks.values()]
    for call, call_stacks in enumerate(calls):  # in the order they run
        for stack, members in enumerate(call_stacks):
            shape = (sum(views[i][0] for i in members), views[members[0]][1], views[members[0]][2])
            for i in members:
                placed[i] = (call, stack, shape)
    routes = []
    for index, (path, _, grad, param) in enumerate(leaves):
        impl, impl_why = impls[index]
        if index not in placed:
            routes.append(Route(path, "muon", strategy, impl, "", dtype_name(param.dtype), None, None, None, impl_why))
            continue
        call, stack, shape = placed[index]
        if impl == "fused":
            routes.append(Route(path, "muon", strategy, impl, "native", "float32", call, stack, shape,
                                f"{impl_why}; the fused step runs the native kernels", plan.for_shape(*shape[1:]).method))
            continue
        routes.append(Route(path, "muon", strategy, impl, backend, dtype_name(compute_dtype),
                            call, stack, shape, f"{impl_why}; {backend_why}", plan.for_shape(*shape[1:]).method))
    return routes
