"""The plan of an MLX Muon step: which matrices share an orthogonalization call (one stack per
matrix shape and dtype, ``stack_key``), and ``explain_routes``, which reports it with the
implementation and backend each parameter takes, and why."""

from __future__ import annotations

from typing import Dict, List, Tuple

import mlx.core as mx

from ...options import orthogonalize_kwargs
from ...plan import make_plan
from ...route import Route
from ..orthogonalize import auto_backend, dtype_name, resolve_compute_dtype
from .base import update_view


def stack_key(view: Tuple[int, int, int], dtype: mx.Dtype) -> tuple:
    """Matrices with the same (rows, cols) and dtype are orthogonalized in one stack."""
    return (view[1], view[2], dtype)


def explain_routes(opt, leaves, strategy: str) -> List[Route]:
    """A Route per gradient leaf ((path, keys, gradient, parameter)) of Muon ``opt``, in order."""
    compute_dtype = resolve_compute_dtype(opt.ns_dtype, opt.method)
    plan = make_plan(**orthogonalize_kwargs(opt.method, opt.ns_steps, opt.ns_coefficients, opt.eps))
    if opt.backend == "auto":
        backend, backend_why = auto_backend(compute_dtype)
    else:
        backend, backend_why = opt.backend, f'backend="{opt.backend}"'
    impl_why = 'MLX has one implementation, "per_parameter" (mx.compile fuses it)'
    stacks: Dict[tuple, List[int]] = {}
    views = []
    for index, (path, _, grad, param) in enumerate(leaves):
        view = update_view(param.shape, path)
        views.append(view)
        if param.ndim >= 2:
            stacks.setdefault(stack_key(view, param.dtype), []).append(index)
    placed = {}
    for call, members in enumerate(stacks.values()):  # one call a stack, in this order
        shape = (sum(views[i][0] for i in members), views[members[0]][1], views[members[0]][2])
        for i in members:
            placed[i] = (call, shape)
    routes = []
    for index, (path, _, grad, param) in enumerate(leaves):
        if index not in placed:
            routes.append(Route(path, "muon", strategy, "per_parameter", "", dtype_name(param.dtype), None, None, None,
                                f"{impl_why}; a 0-D/1-D parameter takes the momentum step, not orthogonalized"))
            continue
        call, shape = placed[index]
        routes.append(Route(path, "muon", strategy, "per_parameter", backend, dtype_name(compute_dtype),
                            call, 0, shape, f"{impl_why}; {backend_why}", plan.for_shape(*shape[1:]).method))
    return routes
