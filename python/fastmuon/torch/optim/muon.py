"""Muon, NorMuon and MuonWithAdamW for PyTorch: thin Optimizer classes over one step pipeline.

A step creates the state it lacks, then steps the Muon groups by strategy (``_parts``: "sharded"
for DTensor parameters; for plain ones "replicated" when torch.distributed has more than one rank
and no parameter is sharded, else "local"), then the AdamW groups. The local strategy is planned in ``pipeline.py`` and run by
``local.py``; the distributed ones are ``distributed.py``; AdamW is ``adamw.py``. ``explain()``
reports, per parameter, the strategy, implementation and backend the next step takes, and why.

Non-finite gradients. A parameter whose gradient holds a NaN or an Inf is skipped for that step:
its weight and every state tensor stay unchanged (bitwise, but for a momentum entry of -0.0,
which the per-parameter path's lerp turns into +0.0), and its ``state["skipped_steps"]``
(an int64 tensor) goes up by one. The test is a per-parameter ``isfinite(G).all()`` kept as a
tensor and applied with ``torch.where``, so the per-parameter step never reads a value back to
the host (no device sync). The gradient is replaced by zeros before use, so a NaN cannot reach
the batched orthogonalization of other matrices. The caller's gradients are never modified.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.distributed as dist

from ...route import Route
from ...options import GROUP_EXTRAS, MUON_DEFAULTS, muon_options
from ...plan import make_plan
from ...rules import ADAMW_DEFAULTS, NORMUON_BETA2, check_adamw_options, matrix_view, normuon_state_shape
from ..functional import all_finite
from ..orthogonalize import dtype_name, resolve_compute_dtype
from .adamw import adamw_impl, adamw_step
from .base import (CheckedOptimizer, LearningRate, check_adamw_group, check_lr, check_muon_group, is_dtensor, local,
                   param_name)
from .distributed import distributed_stacks, replicated_step, sharded_step
from .local import run_batch
from .pipeline import chunk_backend, orthogonalize_options, plan_local_step, stack_backend

__all__ = ["Muon", "NorMuon", "MuonWithAdamW", "Route"]

class _MuonFamily(CheckedOptimizer):
    """Shared step of Muon, NorMuon and MuonWithAdamW (see the module docstring)."""

    def __init__(self, params, defaults: dict, *, distributed: Optional[bool], process_group) -> None:
        if distributed not in (None, True, False):
            raise ValueError(f"distributed must be None, True or False, got {distributed!r}")
        self._distributed = distributed
        self._process_group = process_group
        super().__init__(params, defaults)
        self.register_load_state_dict_pre_hook(_check_checkpoint)
        self.register_load_state_dict_post_hook(_complete_loaded_groups)
        self.register_load_state_dict_post_hook(_complete_torch_muon_state)

    def _check_group(self, group: dict, index: int) -> None:
        if group["use_muon"]:
            check_muon_group(group, index)
        else:
            check_adamw_group(group, index)

    def _init_group(self) -> None:
        """Create the state of every parameter that steps this time and has none yet. (Named as
        torch's own optimizers name theirs: torch.compile runs it before tracing the step, so the
        first step and the later ones compile to the same graph. One call for all groups: the
        traced step then reads a state that is complete.)"""
        data_parallel = self._world() is not None  # every Muon parameter joins
        for index, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                if group["use_muon"] and p.is_complex():  # at step, as torch.optim.Muon raises it
                    raise RuntimeError(f"Muon does not support complex parameters: "
                                       f"{param_name(group, i, index)} is {p.dtype}")
                grad = p.grad
                shares_memory = grad is not None and not grad.is_sparse and local(grad).numel() and (
                    local(grad).data_ptr() == local(p).data_ptr())  # an empty shard's data_ptr is 0
                if shares_memory:
                    raise ValueError(f"the gradient of {param_name(group, i, index)} is its weight's own memory "
                                     "(p.grad = p.data?); the step would update one through the other")
                if (p.grad is None and not (group["use_muon"] and data_parallel)) or self.state.get(p):
                    continue
                self._init_state(p, group)

    def _init_state(self, p: torch.Tensor, group: dict) -> None:
        """Create the state entries ``p`` lacks (all of them before its first step)."""
        state = self.state[p]
        fresh = {"skipped_steps": lambda: torch.zeros((), dtype=torch.int64, device=p.device)}
        if not group["use_muon"]:
            fresh.update(step=lambda: torch.zeros((), dtype=torch.float32, device=p.device),
                         exp_avg=lambda: torch.zeros_like(p, memory_format=torch.preserve_format),
                         exp_avg_sq=lambda: torch.zeros_like(p, memory_format=torch.preserve_format))
        else:
            fresh["momentum_buffer"] = lambda: torch.zeros_like(p, memory_format=torch.contiguous_format)
            if group["beta2"] is not None:  # whole on every rank, also for a sharded parameter
                shape = normuon_state_shape(*matrix_view(p.shape))
                fresh["second_moment"] = lambda: torch.zeros(shape, dtype=p.dtype, device=local(p).device)
        for key, make in fresh.items():
            if key not in state:
                state[key] = make()

    def _world(self):
        """(process_group, rank, world_size) when the step is data parallel, else None."""
        if self._distributed is False:
            return None
        if not (dist.is_available() and dist.is_initialized()):
            if self._distributed:
                raise RuntimeError("distributed=True but torch.distributed is not initialized")
            return None
        world_size = dist.get_world_size(self._process_group)
        if world_size == 1:
            return None
        return self._process_group, dist.get_rank(self._process_group), world_size

    def _parts(self, groups: List[dict]) -> List[Tuple[str, List[dict]]]:
        """The Muon groups by strategy, [(strategy, groups)]: DTensor parameters "sharded"; plain
        ones "replicated" (data parallel) when the whole model is plain, else "local" (in a
        partly sharded model a plain parameter is each rank's own, as for any torch optimizer).
        A group holding both kinds is split. The distributed strategies step per parameter, so an
        explicit other ``impl`` raises there."""
        sharded = [dict(g, params=[p for p in g["params"] if is_dtensor(p)]) for g in groups]
        if not any(g["params"] for g in sharded):
            parts = [("replicated" if self._world() is not None else "local", groups)]
        elif all(len(s["params"]) == len(g["params"]) for s, g in zip(sharded, groups)):
            parts = [("sharded", groups)]
        else:
            plain = [dict(g, params=[p for p in g["params"] if not is_dtensor(p)]) for g in groups]
            parts = [("sharded", [g for g in sharded if g["params"]]), ("local", [g for g in plain if g["params"]])]
        for strategy, part in parts:
            for group in part if strategy != "local" else ():
                if group["impl"] in ("fused", "foreach"):
                    raise ValueError(f'impl="{group["impl"]}" steps one process; the {strategy} strategy steps '
                                     'per parameter (use impl="auto" or "per_parameter")')
        return parts

    def _step(self) -> None:
        self._init_group()
        for strategy, groups in self._parts([g for g in self.param_groups if g["use_muon"]]):
            if strategy == "sharded":
                sharded_step(groups, self.state)
            elif strategy == "replicated":
                replicated_step(groups, self.state, self._world())
            else:
                for batch in plan_local_step(groups, self.state):
                    run_batch(batch, self.state)
        for group in self.param_groups:
            if not group["use_muon"]:
                adamw_step(group, self.state)

    @torch.no_grad()
    def explain(self) -> List[Route]:
        """How the next ``step()`` with the current gradients steps each parameter that has one:
        a :class:`~fastmuon.torch.Route` per parameter, in the order they step (name, kind,
        strategy, impl, backend, compute dtype, orthogonalization call, stack, and why).
        Changes nothing."""
        names = {id(p): param_name(group, i, gi) for gi, group in enumerate(self.param_groups)
                 for i, p in enumerate(group["params"])}
        routes: List[Route] = []
        parts = self._parts([g for g in self.param_groups if g["use_muon"]])
        calls = 0  # orthogonalization calls of the parts before
        for strategy, groups in parts:
            part_routes = _explain_routes(strategy, groups, names, calls, self.state)
            calls += len({r.call for r in part_routes})  # consecutive from ``calls``, each with a route
            routes += part_routes
        strategy = parts[0][0]  # the AdamW groups step locally, reported under the model's strategy
        for group in self.param_groups:
            if group["use_muon"]:
                continue
            impl, why = adamw_impl(group, self.state)
            params = [p for p in group["params"] if p.grad is not None]
            if impl != "per_parameter" and not all_finite([p.grad for p in params]):
                impl, why = "per_parameter", "a gradient of the group is not finite this step"
            for p in params:
                routes.append(Route(names[id(p)], "adamw", strategy, impl, "", dtype_name(p.dtype), None, None, None, why))
        return routes


def _explain_routes(strategy, groups, names, first_call, state) -> List[Route]:
    """explain()'s routes of one part ``(strategy, groups)``, its calls numbered from ``first_call``."""
    routes: List[Route] = []
    if strategy == "local":
        for call, batch in enumerate(plan_local_step(groups, state), start=first_call):
            grads = [p.grad for chunk in batch.chunks for p, _ in chunk.members]
            fallback = batch.impl != "per_parameter" and not all_finite(grads)
            for index, chunk in enumerate(batch.chunks):
                backend, backend_why = chunk_backend(chunk)
                impl, why = chunk.impl, chunk.why
                if fallback:
                    impl, why = "per_parameter", f"a gradient of its batch is not finite this step ({why})"
                shape = (sum(chunk.counts), chunk.rows, chunk.cols)
                method = make_plan(**orthogonalize_options(chunk.group)).for_shape(chunk.rows, chunk.cols).method
                for p, _ in chunk.members:
                    routes.append(Route(names[id(p)], "muon", strategy, impl, backend,
                                        dtype_name(chunk.compute_dtype), call, index, shape,
                                        f"{why}; {backend_why}", method))
        return routes
    for call, (members, n, how) in enumerate(distributed_stacks(strategy, groups, state), start=first_call):
        p0, group = members[0]
        _, rows, cols = matrix_view(p0.shape)
        device = local(p0).device
        compute_dtype = resolve_compute_dtype(group["ns_dtype"], group["backend"], device, (n, rows, cols),
                                              group["method"])
        backend, backend_why = stack_backend(group["backend"], device, (n, rows, cols), compute_dtype)
        why = f"the {strategy} strategy steps per parameter ({how}); {backend_why}"
        method = make_plan(**orthogonalize_options(group)).for_shape(rows, cols).method
        for p, _ in members:
            routes.append(Route(names[id(p)], "muon", strategy, "per_parameter", backend,
                                dtype_name(compute_dtype), call, 0, (n, rows, cols), why, method))
    return routes


def _complete_loaded_groups(optimizer: "_MuonFamily") -> None:
    """Groups saved before an option existed take its default (``impl``: "auto")."""
    for group in optimizer.param_groups:
        if "use_muon" in group:
            group.setdefault("impl", MUON_DEFAULTS["impl"] if group["use_muon"] else "auto")


class Muon(_MuonFamily):
    """Muon: orthogonalized momentum for 2-D (and, with ``allow_nd``, 3-D stacked and 4-D conv)
    weights.

    Per weight W with gradient G:
        M <- beta M + (1 - beta) G;  U = (1 - beta) G + beta M (nesterov) or M
        O = orthogonalize(U)  on the matrix view: 2-D as is, 3-D (E, a, b) as E matrices,
                              4-D conv (out, in, kh, kw) as (out, in*kh*kw)
        W <- W (1 - lr wd) - lr scale O
    scale is sqrt(max(1, rows/cols)) ("original") or 0.2 sqrt(max(rows, cols))
    ("match_rms_adamw"), from the matrix view. ``cautious_weight_decay`` decays only where
    O * W >= 0. Same-shape matrices are orthogonalized in one batched call per step. With
    method="newton_schulz" this is torch.optim.Muon's rule (which computes NS in bf16 and
    normalizes by max(||X||, 1e-7) instead of ||X|| + 1e-7).

    The positional arguments are ``torch.optim.Muon``'s, in its order and with its meanings, so
    changing the import is enough; fastmuon's own options follow as keywords. The defaults
    differ: lr 0.02 and weight_decay 0 (torch: 1e-3 and 0.1), and ``method="auto"`` (AOL in
    Gram space on large wide or tall matrices, Polar Express on the others;
    ``method="polar_express"`` runs Polar Express on every matrix) instead of Jordan's
    Newton-Schulz unless ``ns_coefficients`` is given.

    Args:
        params: parameters or param groups (names allowed, as for any torch optimizer). Every
            parameter must be 2-D (as for torch.optim.Muon), or 3-D / 4-D with ``allow_nd``;
            others raise ValueError naming them (route 0-D/1-D ones to AdamW:
            ``muon_param_groups`` and ``MuonWithAdamW``). Complex parameters raise RuntimeError
            at ``step``, as in torch.optim.Muon.
        lr: a float, or a 0-D Tensor (a scheduler then changes it in place, and a compiled step
            is not recompiled); schedule it with torch.optim.lr_scheduler.
        weight_decay, momentum, nesterov: as above.
        ns_coefficients: one (a, b, c) for every step: Newton-Schulz with these coefficients
            (``method="newton_schulz"``), as in torch.optim.Muon.
        eps: the normalization's epsilon, X / (||X||_F * scale + eps); default the method's.
            (torch.optim.Muon divides by max(||X||_F, eps) instead; the two differ only for
            norms near eps.)
        ns_steps: polynomial steps.
        adjust_lr_fn: torch.optim.Muon's name for ``adjust_lr`` (None: "original").
        method, backend, ns_dtype: passed to ``fastmuon.torch.orthogonalize`` (``ns_dtype`` is
            its compute ``dtype``; None: bf16 on CUDA and on CPUs with bf16 units for large
            matrices, fp32 otherwise and for ``method="gram"``, which refuses 16-bit floats).
        adjust_lr: "original" or "match_rms_adamw".
        cautious_weight_decay: apply the decay only where update and weight agree in sign.
        allow_nd: accept 3-D weights (E, a, b), orthogonalized as E matrices (stacked MoE
            experts), and 4-D conv weights (out, in, kh, kw), orthogonalized as
            (out, in*kh*kw). Off by default, as torch.optim.Muon takes only 2-D weights;
            ``muon_param_groups`` turns it on for the Muon groups it builds.
        sphere: None, "project" or "geodesic": keep every row of the matrix view on the unit
            sphere (nGPT). Rows are the last axis, i.e. one unit vector per output feature of an
            nn.Linear weight (out, in); store a weight transposed if its unit vectors run along
            the other axis. "project" steps and renormalizes the rows; "geodesic" moves each row
            along its great circle by the arc length of the tangent part of lr * scale * O.
            Needs weight_decay=0.
        impl: how the step is carried out: "auto" (default: the fastest that applies),
            "fused" (the whole step in one native call: CPU, fp32 weights on the native
            kernels, plain Muon), "foreach" (list-wide torch passes: CPU, eager, fp32/fp64
            weights, Muon or NorMuon) or "per_parameter" (anything; what torch.compile traces).
            All give bitwise the same weights; an explicit one that cannot run raises at
            ``step``, saying why. ``explain()`` says which one each parameter takes and why.
        distributed: None (default) shards the orthogonalization when torch.distributed is
            initialized with more than one rank; False never; True requires it.
        process_group: the group to shard over (default: the world).

    Non-finite gradients skip the parameter for that step, leaving weight and state unchanged
    (bitwise, but a -0.0 in the momentum may become +0.0) and counting ``state["skipped_steps"]``;
    no device sync is forced.
    """

    _beta2: Optional[float] = None  # NorMuon sets it

    def __init__(
        self,
        params,
        lr: LearningRate = MUON_DEFAULTS["lr"],
        weight_decay: float = MUON_DEFAULTS["weight_decay"],
        momentum: float = MUON_DEFAULTS["momentum"],
        nesterov: bool = MUON_DEFAULTS["nesterov"],
        ns_coefficients: Optional[Tuple[float, float, float]] = None,
        eps: Optional[float] = None,
        ns_steps: int = MUON_DEFAULTS["ns_steps"],
        adjust_lr_fn: Optional[str] = None,
        *,
        method: str = MUON_DEFAULTS["method"],
        adjust_lr: str = MUON_DEFAULTS["adjust_lr"],
        cautious_weight_decay: bool = MUON_DEFAULTS["cautious_weight_decay"],
        backend: str = MUON_DEFAULTS["backend"],
        ns_dtype: Optional[torch.dtype] = MUON_DEFAULTS["ns_dtype"],
        allow_nd: bool = False,
        sphere: Optional[str] = None,
        impl: str = MUON_DEFAULTS["impl"],
        distributed: Optional[bool] = None,
        process_group=None,
    ) -> None:
        check_lr(lr)  # before the base class looks at params, as torch.optim.Muon does
        if adjust_lr_fn is not None:  # torch.optim.Muon's name for adjust_lr
            if adjust_lr != MUON_DEFAULTS["adjust_lr"] and adjust_lr != adjust_lr_fn:
                raise ValueError(f"adjust_lr_fn={adjust_lr_fn!r} and adjust_lr={adjust_lr!r} disagree; give one")
            adjust_lr = adjust_lr_fn
        if ns_coefficients is not None and method == MUON_DEFAULTS["method"]:
            method = "newton_schulz"  # torch.optim.Muon's meaning: Newton-Schulz with these
        options = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, method=method,
                       ns_steps=ns_steps, adjust_lr=adjust_lr, cautious_weight_decay=cautious_weight_decay,
                       backend=backend, ns_dtype=ns_dtype, impl=impl)
        defaults = dict(muon_options(options), beta2=self._beta2, sphere=sphere,
                        ns_coefficients=None if ns_coefficients is None else tuple(ns_coefficients), eps=eps,
                        transposed=False, allow_nd=bool(allow_nd), use_muon=True)
        super().__init__(params, defaults, distributed=distributed, process_group=process_group)

    def _fill_group_defaults(self, group: dict) -> None:
        if not group.setdefault("use_muon", True):
            raise ValueError(f"{type(self).__name__} takes only Muon groups; use MuonWithAdamW for use_muon=False")
        if group.get("ns_coefficients") is not None:  # as in the constructor: Newton-Schulz with these
            group.setdefault("method", "newton_schulz")
            group["ns_coefficients"] = tuple(group["ns_coefficients"])


def _kind(optimizer) -> str:
    if isinstance(optimizer, MuonWithAdamW):
        return "MuonWithAdamW"
    return "NorMuon" if isinstance(optimizer, NorMuon) else "Muon"


def _check_checkpoint(optimizer: "_MuonFamily", state_dict: dict) -> dict:
    """Refuse, before anything changes, a checkpoint whose groups are of another kind than this
    optimizer's (a NorMuon group would make Muon step as NorMuon, a plain Muon group NorMuon as
    Muon, an AdamW group Muon step AdamW) or whose states do not fit the parameters' shapes,
    naming the group or parameter. A ``torch.optim.Muon`` checkpoint (no ``use_muon``) is a
    Muon group for any of them (``_complete_torch_muon_state``)."""
    kind = _kind(optimizer)
    saved_groups = state_dict.get("param_groups", [])
    for index, saved in enumerate(saved_groups):
        if "use_muon" not in saved:
            continue
        where = f"the checkpoint's param_groups[{index}]"
        if not saved["use_muon"]:
            if kind != "MuonWithAdamW":
                raise ValueError(f"{where} is an AdamW group (use_muon=False): {kind} takes only Muon groups; "
                                 "load it into MuonWithAdamW")
        elif kind == "Muon" and saved.get("beta2") is not None:
            raise ValueError(f"{where} is a NorMuon group (beta2={saved['beta2']!r}): Muon would step it as "
                             "NorMuon; load it into NorMuon (or MuonWithAdamW)")
        elif kind == "NorMuon" and saved.get("beta2") is None:
            raise ValueError(f"{where} is a plain Muon group (beta2=None): NorMuon would step it as plain Muon; "
                             "load it into Muon")
        if index < len(optimizer.param_groups):
            current = optimizer.param_groups[index]
            if bool(saved["use_muon"]) != bool(current.get("use_muon", True)):
                kinds = {True: "a Muon", False: "an AdamW"}
                raise ValueError(f"{where} is {kinds[bool(saved['use_muon'])]} group, param_groups[{index}] "
                                 f"{kinds[bool(current.get('use_muon', True))]} group")
    saved_ids = [i for group in saved_groups for i in group["params"]]
    current = [(p, group, gi, j) for gi, group in enumerate(optimizer.param_groups) for j, p in enumerate(group["params"])]
    if len(saved_ids) != len(current):
        return state_dict  # torch's own error names the counts
    states = state_dict.get("state", {})
    for saved_id, (p, group, gi, j) in zip(saved_ids, current):
        state = states.get(saved_id)
        if not state:
            continue
        expected = {key: tuple(p.shape) for key in ("momentum_buffer", "exp_avg", "exp_avg_sq")}
        if p.ndim >= 2:
            expected["second_moment"] = normuon_state_shape(*matrix_view(p.shape))
        for key, shape in expected.items():
            value = state.get(key)
            if isinstance(value, torch.Tensor) and tuple(value.shape) != tuple(shape):
                raise ValueError(f"the checkpoint's state {key!r} of {param_name(group, j, gi)} has shape "
                                 f"{tuple(value.shape)}, expected {tuple(shape)} for a parameter of shape "
                                 f"{tuple(p.shape)}; was it saved for another model?")
    return state_dict


def _complete_torch_muon_state(optimizer: "Muon") -> None:
    """Complete what a ``torch.optim.Muon`` state_dict lacks, so that its checkpoint resumes in
    the drop-in: its groups (no ``use_muon``; ``adjust_lr_fn`` for ``adjust_lr``, None meaning
    "original"; its ``ns_coefficients`` meaning Newton-Schulz with them, as in the constructor)
    take this optimizer's defaults for fastmuon's own options and are checked; its states get
    the counters (and NorMuon's second moment) a first step would have made."""
    for index, group in enumerate(optimizer.param_groups):
        if "use_muon" in group:
            continue
        group["use_muon"] = True
        group["adjust_lr"] = group.pop("adjust_lr_fn", None) or MUON_DEFAULTS["adjust_lr"]
        if group.get("ns_coefficients") is not None:
            group.setdefault("method", "newton_schulz")
        optimizer._fill_group_defaults(group)
        for key, value in optimizer.defaults.items():
            group.setdefault(key, value)
        optimizer._check_group(group, index)
    for group in optimizer.param_groups:
        for p in group["params"]:
            if optimizer.state.get(p):
                optimizer._init_state(p, group)


class NorMuon(Muon):
    """NorMuon (Li et al., arXiv 2510.05491): Muon plus a per-neuron second moment.

    After orthogonalization O (R x C), m = mean(O^2) over the smaller dimension (one value per
    row if R >= C, else per column), s <- beta2 s + (1 - beta2) m, O' = O / sqrt(max(s, 1e-10))
    rescaled to ||O||_F; then Muon's scale and update. State: ``second_moment`` of shape
    (batch, R, 1) or (batch, 1, C) on the matrix view. Other arguments (keywords after ``lr``)
    as :class:`Muon`.
    """

    def __init__(self, params, lr: LearningRate = MUON_DEFAULTS["lr"], *, beta2: float = NORMUON_BETA2,
                 **options) -> None:
        if beta2 is None:  # None would silently make this plain Muon
            raise ValueError("beta2 must be in [0, 1), got None")
        self._beta2 = beta2
        super().__init__(params, lr, **options)


class MuonWithAdamW(_MuonFamily):
    """Muon for the groups marked ``use_muon=True``, AdamW for those marked ``use_muon=False``,
    in one optimizer (one step, one state_dict, one set of lr schedulers).

    Build the groups with :func:`fastmuon.torch.muon_param_groups`. Each group may set its own
    options; missing ones come from the arguments here: Muon groups take ``lr`` and the keyword
    options of :class:`Muon` (``beta2`` set makes them NorMuon; ``sphere`` as Muon); AdamW
    groups take ``adamw_lr``, ``adamw_betas``, ``adamw_eps`` and ``adamw_weight_decay`` (under
    the keys ``lr``, ``betas``, ``eps``, ``weight_decay``; an AdamW group's ``momentum`` key is
    its beta1, set from ``betas`` and cycled by OneCycleLR / CyclicLR with every other group's
    momentum). AdamW is torch.optim.AdamW's rule
    (decoupled decay, bias correction), with the same non-finite policy as Muon. ``impl``
    applies to the AdamW groups too: "fused" there is torch's fused AdamW kernel (bitwise
    ``torch.optim.AdamW(fused=True)``), which "auto" takes on the CPU; "foreach" and
    "per_parameter" are bitwise each other and within a few ulps of it.
    """

    def __init__(
        self,
        param_groups,
        lr: LearningRate = MUON_DEFAULTS["lr"],
        *,
        adamw_lr: LearningRate = ADAMW_DEFAULTS["lr"],
        adamw_betas: Tuple[float, float] = ADAMW_DEFAULTS["betas"],
        adamw_eps: float = ADAMW_DEFAULTS["eps"],
        adamw_weight_decay: float = ADAMW_DEFAULTS["weight_decay"],
        distributed: Optional[bool] = None,
        process_group=None,
        **muon_options,
    ) -> None:
        check_adamw_options(adamw_betas, adamw_eps, adamw_weight_decay, prefix="adamw_")
        self.muon_defaults = muon_options_with_extras(dict(muon_options, lr=lr))
        # impl applies to the AdamW groups too ("fused": torch's fused AdamW kernel)
        self.adamw_defaults = dict(lr=adamw_lr, betas=tuple(adamw_betas), eps=adamw_eps,
                                   weight_decay=adamw_weight_decay, impl=self.muon_defaults["impl"])
        # Kind-specific defaults are filled per group; ``defaults`` holds what all groups have: a
        # momentum (an AdamW group's is its beta1), which lr schedulers that cycle momentum
        # (OneCycleLR, CyclicLR) look for.
        super().__init__(param_groups, {"momentum": self.muon_defaults["momentum"]}, distributed=distributed,
                         process_group=process_group)

    def _fill_group_defaults(self, group: dict) -> None:
        if not isinstance(group, dict) or "use_muon" not in group:
            raise ValueError(
                "MuonWithAdamW takes param groups (dicts) that each set use_muon=True or False; "
                "build them with fastmuon.torch.muon_param_groups(model)"
            )
        group["use_muon"] = bool(group["use_muon"])
        for key, value in (self.muon_defaults if group["use_muon"] else self.adamw_defaults).items():
            group.setdefault(key, value)
        if not group["use_muon"]:
            betas = group["betas"]
            if isinstance(betas, (tuple, list)) and betas:  # else refused by the group check
                group.setdefault("momentum", betas[0])


def muon_options_with_extras(given: dict) -> dict:
    """Muon group defaults: MUON_DEFAULTS and ``GROUP_EXTRAS``, updated with ``given`` (an
    unknown name raises TypeError). ``ns_coefficients`` without a method means Newton-Schulz."""
    if given.get("ns_coefficients") is not None:
        given = {"method": "newton_schulz", **given, "ns_coefficients": tuple(given["ns_coefficients"])}
    return {**GROUP_EXTRAS, **muon_options(given, extra=GROUP_EXTRAS)}


