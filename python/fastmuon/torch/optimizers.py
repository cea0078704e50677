"""Muon, NorMuon, MuonWithAdamW and SignSGD for PyTorch: thin Optimizer classes over
``functional.py``.

All three share one step path (``_MuonFamily``): per parameter, the EMA momentum and the tensor
to orthogonalize; then one batched orthogonalization per stack of same-shape matrices
(``_orthogonalize_stacks`` is the only place that calls the orthogonalizer; on the CPU, stacks
of several shapes go in one call, and fp32 parameters on the native kernels take the whole step
in one native call, ``_native_step``); then, per parameter, NorMuon's normalization when the group
has ``beta2``, and the decoupled (or sphere) update.
MuonWithAdamW also steps AdamW groups (``use_muon=False``).

Non-finite gradients. A parameter whose gradient holds a NaN or an Inf is skipped for that step:
its weight and every state tensor stay unchanged (bitwise, but for a momentum entry of -0.0,
which the per-parameter path's lerp turns into +0.0), and its ``state["skipped_steps"]``
(an int64 tensor) goes up by one. The test is a per-parameter ``isfinite(G).all()`` kept as a
tensor and applied with ``torch.where``, so the step never reads a value back to the host (no
device sync). The gradient is replaced by zeros before use, so a NaN cannot reach the batched
orthogonalization of other matrices. The caller's gradients are never modified.

Data parallel. When torch.distributed is initialized with more than one rank (or
``distributed=True``), gradients are expected to be averaged already (DDP) so that every rank
holds the same ones. Each rank then orthogonalizes a disjoint share of every stack (contiguous
chunks, the chunk-to-rank assignment rotated from stack to stack) and one all-gather per stack
shares the results; every rank applies every update itself, so weights and state stay
replicated and equal those of a single process given the same gradients. In this mode every
Muon parameter joins every step, with zeros standing in for a missing gradient, so no rank can
deadlock. Each rank also shares whether it had a finite gradient for each matrix; a parameter
is updated only if every rank had one (otherwise it is skipped everywhere, as above). AdamW
parameters are elementwise and are updated locally without communication.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch.optim import Optimizer

from ..rules import (
    ADAMW_DEFAULTS,
    MUON_DEFAULTS,
    NORMUON_BETA2,
    check_adamw_eps,
    check_hyperparameters,
    check_muon_options,
    matrix_view,
    muon_options,
    normuon_state_shape,
    shape_scale,
)
from .functional import (
    adamw_update,
    adamw_update_lists_,
    all_finite,
    decoupled_update,
    decoupled_update_lists_,
    muon_lookahead,
    muon_momentum,
    muon_momentum_,
    muon_momentum_lists_,
    muon_step_scalars,
    normuon_normalize,
    rows_touched,
    signsgd_update,
    sphere_geodesic_update,
    sphere_project_update,
)
from ..plan import check_compute_bits, make_plan
from .native import muon_step as native_muon_step
from .orthogonalize import BACKENDS, orthogonalize_stacks, resolve_compute_dtype, runs_native

__all__ = ["Muon", "NorMuon", "MuonWithAdamW", "SignSGD"]

# Muon group options besides MUON_DEFAULTS: NorMuon's beta2 (None: plain Muon), nGPT's sphere,
# torch.optim.Muon's ns_coefficients (one (a, b, c) for every Newton-Schulz step) and eps (the
# normalization's; None: the method's), transposed (weights stored (in, out), as HF's Conv1D:
# the lr shape scale reads them the other way round) and allow_nd (accept 3-D stacks and 4-D conv
# weights; off by default, as torch.optim.Muon accepts only 2-D weights).
_GROUP_EXTRAS = dict(beta2=None, sphere=None, ns_coefficients=None, eps=None, transposed=False, allow_nd=False)


def _check_lr(lr, what: str = "lr") -> None:
    """A float, or a 0-D floating Tensor (as torch's optimizers take, so that a scheduler can
    change it in place without recompiling a compiled step); schedules are lr_schedulers."""
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1 or not lr.is_floating_point():
            raise ValueError(f"Tensor {what} must be 1-element and floating, got shape {tuple(lr.shape)} "
                             f"and dtype {lr.dtype}")
        lr = float(lr)  # checked once, here
    elif callable(lr):
        raise ValueError(
            f"{what} must be a float or a Tensor, got {type(lr).__name__}; schedule it with "
            "torch.optim.lr_scheduler (e.g. fastmuon.torch.warmup_cosine)"
        )
    check_hyperparameters(lr=lr)


def _param_name(group: dict, index: int, group_index: int) -> str:
    names = group.get("param_names")
    if names is not None and index < len(names):
        return str(names[index])
    return f"param_groups[{group_index}]['params'][{index}]"


def _check_muon_group(group: dict, group_index: int) -> None:
    _check_lr(group["lr"])
    check_muon_options(group, BACKENDS)
    ns_dtype = group["ns_dtype"]
    if ns_dtype is not None and not (isinstance(ns_dtype, torch.dtype) and ns_dtype.is_floating_point):
        raise ValueError(f"ns_dtype must be None or a floating torch.dtype, got {ns_dtype!r}")
    if ns_dtype is not None:
        check_compute_bits(group["method"], torch.finfo(ns_dtype).bits, ns_dtype, f"param_groups[{group_index}]['ns_dtype']")
    for i, p in enumerate(group["params"]):
        name = _param_name(group, i, group_index)
        if p.ndim != 2 and not group["allow_nd"]:  # torch.optim.Muon's error, type and wording
            raise ValueError(
                f"Muon only supports 2D parameters whereas we found a parameter with size: {p.size()} ({name}); "
                "pass allow_nd=True to orthogonalize 3-D weights as stacks of matrices and 4-D conv weights as "
                "(out, in*kh*kw), or route 0-D/1-D parameters to AdamW (muon_param_groups, MuonWithAdamW)"
            )
        matrix_view(p.shape, name)


def _adamw_betas(group: dict) -> Tuple[float, float]:
    """An AdamW group's (beta1, beta2); its ``momentum`` key, when present, is beta1 (so that
    OneCycleLR / CyclicLR with cycle_momentum cycle it along with Muon's momentum)."""
    beta1, beta2 = group["betas"]
    return (group.get("momentum", beta1), beta2)


def _check_adamw_group(group: dict, group_index: int) -> None:
    lr, (beta1, beta2), eps, wd = group["lr"], _adamw_betas(group), group["eps"], group["weight_decay"]
    _check_lr(lr)
    check_hyperparameters(lr=0.0, weight_decay=wd)
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ValueError(f"betas must be in [0, 1), got {group['betas']!r}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    for i, p in enumerate(group["params"]):
        check_adamw_eps(eps, str(p.dtype), _param_name(group, i, group_index))


# Most bytes of a same-shape stack orthogonalized at once (in the compute dtype) by one process;
# at least one matrix. Bounds the step's workspace; bigger stacks go in several calls.
STACK_BYTES = 16 * 2**20


def _narrower(dtype: torch.dtype, compute_dtype: torch.dtype) -> torch.dtype:
    """The stack's dtype: the compute dtype when it has fewer bits than the weights' (orthogonalize
    would round to it first anyway), else the weights' own."""
    return compute_dtype if torch.finfo(compute_dtype).bits < torch.finfo(dtype).bits else dtype


# The group options that decide how a matrix is orthogonalized: matrices are stacked only when
# these agree.
_ORTHOGONALIZE_KEYS = ("method", "ns_steps", "backend", "ns_dtype", "ns_coefficients", "eps")


def _freeze(value):
    return tuple(value) if isinstance(value, list) else value


def _is_dtensor(t) -> bool:
    # A DTensor exists only once its module is loaded: no import, nothing to cache.
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (sharing its storage), or the tensor itself."""
    return t.to_local() if _is_dtensor(t) else t


def _all_ranks(flag: torch.Tensor) -> torch.Tensor:
    """A 0-D bool that is True only where it is True on every rank."""
    value = flag.to(torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return value.bool()


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _lr_scale(group: dict, rows: int, cols: int) -> float:
    """The group's lr shape scale for a (rows, cols) matrix view; a ``transposed`` group's
    weights are stored (in, out), so their view is read the other way round."""
    return shape_scale(*((cols, rows) if group["transposed"] else (rows, cols)), group["adjust_lr"])


def _apply_update(W: torch.Tensor, O: torch.Tensor, ok: torch.Tensor, group: dict, view: Tuple[int, int, int]) -> None:
    """W <- the group's update of W with the orthogonalized O where ``ok`` (a 0-D bool), in place.

    ``W`` is the weight, or a sharded weight's local shard (O then holds the same rows);
    ``view`` is the whole weight's matrix view (batch, rows, cols), which sets the lr scale.
    """
    batch, rows, cols = view
    lr = group["lr"]
    scale = _lr_scale(group, rows, cols)
    if group["sphere"] is None:
        W_new = decoupled_update(W, O.reshape(W.shape).to(W.dtype), lr=lr, weight_decay=group["weight_decay"],
                                 scale=scale, cautious=group["cautious_weight_decay"])
    else:
        move = sphere_project_update if group["sphere"] == "project" else sphere_geodesic_update
        W_new = move(W.reshape(batch, rows, cols), (lr * scale) * O.to(W.dtype)).reshape(W.shape)
    W.copy_(torch.where(ok, W_new, W))


def _list_wide_applies(params: List[torch.Tensor], lr) -> bool:
    """Whether parameters may take the list-wide passes (``_few_passes``,
    ``_adamw_few_passes``): a float lr, dense gradients of the weights' dtype, on the CPU (where
    reading one finiteness flag back costs nothing), outside torch.compile (which fuses the
    per-parameter path itself)."""
    if isinstance(lr, torch.Tensor) or torch.compiler.is_compiling():
        return False
    for p in params:
        grad = p.grad
        if not (p.is_cpu and grad is not None and not grad.is_sparse and grad.dtype == p.dtype) or _is_dtensor(p):
            return False
    return True


def _contiguous(members, state) -> bool:
    """Whether the weights, gradients and momenta of (parameter, group) pairs are C-contiguous,
    as the native step reads and writes them in place."""
    return all(p.is_contiguous() and p.grad.is_contiguous() and state[p]["momentum_buffer"].is_contiguous()
               for p, _ in members)


def _orthogonalize_options(group: dict) -> dict:
    """The group's polynomial iteration as ``orthogonalize`` takes it (method, steps,
    coefficients, eps)."""
    coefficients = group["ns_coefficients"]
    if coefficients is not None:
        coefficients = [tuple(coefficients)] * group["ns_steps"]
    return dict(method=group["method"], steps=group["ns_steps"], coefficients=coefficients, eps=group["eps"])


def _few_passes_apply(chunk) -> bool:
    """Whether a Muon chunk, (parameter, group) pairs, may take ``_few_passes``: plain Muon (no
    NorMuon moment, sphere or cautious decay) of fp32 or fp64 weights under
    ``_list_wide_applies``. (On bf16 and fp16 tensors torch's list-wide ops round their scalars to
    the tensors' dtype: 1 - lr * wd = 0.998 became 0.9961, twice the weight decay; the
    per-parameter ops keep them in fp32.)"""
    groups = {id(group): group for _, group in chunk}.values()
    if any(g["beta2"] is not None or g["sphere"] is not None or g["cautious_weight_decay"]
           or isinstance(g["lr"], torch.Tensor) for g in groups):
        return False
    params = [p for p, _ in chunk]
    return all(p.dtype in _LIST_WIDE_MUON_DTYPES for p in params) and _list_wide_applies(params, lr=None)


_LIST_WIDE_MUON_DTYPES = (torch.float32, torch.float64)


def _by_group(members) -> List[Tuple[dict, List[int]]]:
    """The positions of (parameter, group) pairs by group, in order of first appearance: a
    stack holds the same-shape matrices of every group with the same orthogonalization options,
    and the list-wide passes take one group's hyperparameters at a time."""
    positions: Dict[int, Tuple[dict, List[int]]] = {}
    for i, (_, group) in enumerate(members):
        positions.setdefault(id(group), (group, []))[1].append(i)
    return list(positions.values())


@dataclass
class _Pending:
    """One Muon parameter between the momentum step and the update."""

    param: torch.Tensor
    group: dict
    state: dict
    batch: int
    rows: int
    cols: int
    has_grad: bool
    finite: torch.Tensor  # 0-D bool: the local gradient exists and is finite
    momentum: Optional[torch.Tensor]  # the new momentum if not committed yet (data parallel)
    update: Optional[torch.Tensor]  # (batch, rows, cols), what gets orthogonalized

    def stack_key(self) -> tuple:
        g = self.group
        return (self.rows, self.cols, self.update.dtype, self.update.device,
                *(_freeze(g[key]) for key in _ORTHOGONALIZE_KEYS))


@dataclass
class _Chunk:
    """Same-shape Muon matrices orthogonalized in one stack."""

    members: List[Tuple[torch.Tensor, dict]]  # (parameter, its group)
    counts: List[int]  # matrices in each member's view
    group: dict  # the first member's: the orthogonalization options all members share (each
    # member's other hyperparameters are its own group's: _by_group)
    rows: int
    cols: int
    stack_dtype: torch.dtype
    compute_dtype: torch.dtype  # of its orthogonalization
    options: tuple  # the group's orthogonalization options (_ORTHOGONALIZE_KEYS), frozen
    nbytes: int  # of its stack
    native: bool  # fp32 weights, C-contiguous, on the native kernels: takes _native_step (no stack)


def _chunk_batches(chunks: List[_Chunk]):
    """Consecutive chunks with the same orthogonalization options, compute dtype and kernels
    (native or not), at most ``STACK_BYTES`` a batch (a bigger chunk alone): the chunks that
    share one orthogonalization call."""
    batch: List[_Chunk] = []
    for chunk in chunks:
        key = (chunk.options, chunk.compute_dtype, chunk.native)
        if batch and (key != (batch[0].options, batch[0].compute_dtype, batch[0].native)
                      or sum(c.nbytes for c in batch) + chunk.nbytes > STACK_BYTES):
            yield batch
            batch = []
        batch.append(chunk)
    if batch:
        yield batch


def _counters_as_ints(optimizer: Optimizer, state_dict: dict) -> dict:
    state_dict["state"] = {
        key: {**state, "skipped_steps": int(state["skipped_steps"])} if "skipped_steps" in state else state
        for key, state in state_dict["state"].items()
    }
    return state_dict


def _counters_as_tensors(optimizer: Optimizer) -> None:
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and isinstance(state.get("skipped_steps"), int):
                state["skipped_steps"] = torch.tensor(state["skipped_steps"], dtype=torch.int64, device=p.device)


class _CheckedOptimizer(Optimizer):
    """An Optimizer whose ``add_param_group`` fills per-kind defaults and validates the group
    (raising ValueError, with the optimizer left as it was), and whose ``step`` evaluates the
    closure and then runs the subclass's ``_step``."""

    def __init__(self, params, defaults: dict) -> None:
        super().__init__(params, defaults)
        # torch's load_state_dict casts every state tensor but "step" to the parameter's dtype;
        # the int64 skipped_steps counters travel as ints instead (in bf16 they would stop at 256).
        self.register_load_state_dict_pre_hook(_counters_as_ints)
        self.register_load_state_dict_post_hook(_counters_as_tensors)

    def _fill_group_defaults(self, group: dict) -> None:
        """Fill a new group's per-kind defaults (before the base class adds ``self.defaults``)."""

    def _check_group(self, group: dict, index: int) -> None:
        """Raise ValueError naming the first bad option or parameter of ``group``."""

    def add_param_group(self, param_group: dict) -> None:
        self._fill_group_defaults(param_group)
        super().add_param_group(param_group)
        try:
            self._check_group(self.param_groups[-1], len(self.param_groups) - 1)
        except ValueError:
            self.param_groups.pop()
            raise

    def _step(self) -> None:
        """Update every parameter that has a gradient (under torch.no_grad)."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._step()
        return loss


class _MuonFamily(_CheckedOptimizer):
    """Shared step of Muon, NorMuon and MuonWithAdamW (see the module docstring)."""

    def __init__(self, params, defaults: dict, *, distributed: Optional[bool], process_group) -> None:
        if distributed not in (None, True, False):
            raise ValueError(f"distributed must be None, True or False, got {distributed!r}")
        self._distributed = distributed
        self._process_group = process_group
        super().__init__(params, defaults)

    def _check_group(self, group: dict, index: int) -> None:
        if group["use_muon"]:
            _check_muon_group(group, index)
        else:
            _check_adamw_group(group, index)

    # ------------------------------------------------------------------- step
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
                                       f"{_param_name(group, i, index)} is {p.dtype}")
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
                fresh["second_moment"] = lambda: torch.zeros(shape, dtype=p.dtype, device=_local(p).device)
        for key, make in fresh.items():
            if key not in state:
                state[key] = make()

    def _step(self) -> None:
        self._init_group()
        self._muon_step([g for g in self.param_groups if g["use_muon"]])
        for group in self.param_groups:
            if not group["use_muon"]:
                self._adamw_step(group)

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

    def _muon_step(self, groups: List[dict]) -> None:
        if any(_is_dtensor(p) for group in groups for p in group["params"]):
            self._sharded_params_muon_step(groups)
            return
        world = self._world()
        if world is None:
            self._local_muon_step(groups)
            return
        stacks: Dict[tuple, List[_Pending]] = defaultdict(list)
        for group in groups:
            for p in group["params"]:
                # Every parameter joins, so all ranks build the same stacks; each rank's verdict
                # on its gradient is shared before the momentum is committed.
                item = self._momentum_phase(p, group, commit=False)
                stacks[item.stack_key()].append(item)

        jobs = []
        for members in stacks.values():
            U = torch.cat([m.update for m in members]) if len(members) > 1 else members[0].update
            valid = torch.cat([m.finite.expand(m.batch) for m in members])
            for m in members:
                m.update = None  # the stack holds them now; free the per-parameter copies
            jobs.append((U, valid, members[0].group))
        results = self._sharded(jobs, *world)

        for members, (O, ok) in zip(stacks.values(), results):
            start = 0
            for m in members:
                stop = start + m.batch
                self._update_phase(m, O[start:stop], ok[start:stop].all())
                start = stop

    def _sharded_params_muon_step(self, groups: List[dict]) -> None:
        """Parameters sharded as DTensors (FSDP2's fully_shard: Shard(0); HSDP; tensor parallel).

        Momentum, state and update stay on each rank's shard. Orthogonalization needs whole
        matrices: each matrix's U is gathered (one all-gather, O(parameters) per step), and on a
        1-D mesh the matrix's owner, rank (j + k) mod world for matrix j of stack k, orthogonalizes
        it (same-shape matrices batched) and scatters the result's shards back
        (``distribute_tensor`` from the owner). On other meshes every rank orthogonalizes every
        matrix and keeps its shard. A gradient counts as finite only if every shard is; NorMuon's
        second moment (one value per row or column) is kept whole on every rank."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        rank, world = dist.get_rank(), dist.get_world_size()
        stacks: Dict[tuple, List[Tuple[torch.Tensor, dict]]] = defaultdict(list)
        for group in groups:
            if group["sphere"] is not None:
                raise ValueError("sphere= is not supported for sharded (DTensor) parameters")
            for p in group["params"]:
                if not _is_dtensor(p):
                    raise ValueError("a Muon group mixes sharded (DTensor) and plain parameters")
                if p.grad is not None:
                    _, rows, cols = matrix_view(p.shape)
                    stacks[(rows, cols, p.dtype, *(_freeze(group[k]) for k in _ORTHOGONALIZE_KEYS))].append((p, group))
        for k, ((rows, cols, *_), members) in enumerate(stacks.items()):
            pending = []
            for p, group in members:
                state = self.state[p]
                grad, M = _local(p.grad), _local(state["momentum_buffer"])
                ok = _all_ranks(torch.isfinite(grad).all())
                U = muon_momentum_(M, grad, ok, group["momentum"], group["nesterov"])
                U_full = DTensor.from_local(U, p.device_mesh, p.placements, shape=p.shape, stride=p.stride(),
                                            run_check=False).full_tensor()
                pending.append((p, group, state, ok, U_full))
            one_dim = all(p.device_mesh.ndim == 1 for p, *_ in pending)
            owners = [(j + k) % world if one_dim else rank for j in range(len(pending))]
            mine = [j for j, owner in enumerate(owners) if owner == rank]
            results: Dict[int, torch.Tensor] = {}
            if mine:
                group = pending[mine[0]][1]
                views = [pending[j][4].reshape(matrix_view(pending[j][0].shape)) for j in mine]
                O = self._orthogonalize(torch.cat(views), group)
                start = 0
                for j, view in zip(mine, views):
                    results[j] = O[start:start + view.shape[0]]
                    start += view.shape[0]
            for j, (p, group, state, ok, U_full) in enumerate(pending):
                owner = owners[j]
                O = results.get(j)
                if group["beta2"] is not None:
                    s_old = state["second_moment"]
                    if O is not None:
                        O, s_new = normuon_normalize(O, s_old, group["beta2"])
                    else:
                        s_new = torch.empty_like(s_old)
                    if one_dim:
                        dist.broadcast(s_new, src=owner)
                    s_old.copy_(torch.where(ok, s_new, s_old))
                O_full = O.reshape(p.shape) if O is not None else torch.empty(p.shape, dtype=U_full.dtype,
                                                                              device=U_full.device)
                O_local = distribute_tensor(O_full, p.device_mesh, p.placements,
                                            src_data_rank=owner if one_dim else None).to_local()
                _apply_update(_local(p.detach()), O_local, ok, group, matrix_view(p.shape))
                state["skipped_steps"].add_((~ok).to(torch.int64))

    def _local_muon_step(self, groups: List[dict]) -> None:
        """One process: same-shape matrices are orthogonalized together, in chunks of at most
        ``STACK_BYTES``, and consecutive chunks with the same orthogonalization options go in
        batches of at most ``STACK_BYTES`` in all (``_chunk_batches``), each built,
        orthogonalized in one call and applied before the next, so the step's workspace stays
        bounded whatever the model's size. The stack is held in the orthogonalization's compute
        dtype (half the bytes in bf16).

        Batches of chunks that may take the list-wide passes (``_few_passes_apply``) make one
        finiteness check; a batch on the native kernels (fp32, C-contiguous) takes the whole
        step in one native call instead, its matrices shared out over the threads together
        (``_native_step``). The other chunks (NorMuon, sphere, cautious decay, other devices and
        dtypes) step parameter by parameter (``_per_parameter_chunks``)."""
        stacks: Dict[tuple, List[Tuple[torch.Tensor, dict]]] = defaultdict(list)
        batches: Dict[torch.Tensor, int] = {}  # matrices in each parameter's view
        for group in groups:
            options = tuple(_freeze(group[k]) for k in _ORTHOGONALIZE_KEYS)
            for p in group["params"]:
                if p.grad is not None:
                    batches[p], rows, cols = matrix_view(p.shape)
                    stacks[(rows, cols, p.dtype, p.device, *options)].append((p, group))
        few_passes: List[_Chunk] = []
        per_parameter: List[_Chunk] = []
        for (rows, cols, dtype, device, *options), members in stacks.items():
            group = members[0][1]
            count = sum(batches[p] for p, _ in members)
            compute_dtype = resolve_compute_dtype(group["ns_dtype"], group["backend"], device, (count, rows, cols),
                                                  group["method"])
            stack_dtype = _narrower(dtype, compute_dtype)
            matrix_bytes = rows * cols * torch.finfo(stack_dtype).bits // 8
            per_chunk = max(1, STACK_BYTES // max(1, matrix_bytes))
            for members_chunk in _chunks(members, per_chunk):
                counts = [batches[p] for p, _ in members_chunk]
                native = (dtype == compute_dtype == torch.float32 and _contiguous(members_chunk, self.state)
                          and runs_native(group["backend"], device, (sum(counts), rows, cols), compute_dtype))
                chunk = _Chunk(members_chunk, counts, group, rows, cols, stack_dtype, compute_dtype, tuple(options),
                               matrix_bytes * sum(counts), native)
                (few_passes if _few_passes_apply(members_chunk) else per_parameter).append(chunk)
        for batch in _chunk_batches(few_passes):
            if not self._few_passes(batch):
                self._per_parameter_chunks(batch)
        for batch in _chunk_batches(per_parameter):
            self._per_parameter_chunks(batch)

    def _per_parameter_chunks(self, batch: List[_Chunk]) -> None:
        """A batch of chunks (``_chunk_batches``) stepped parameter by parameter (any device,
        dtype or option; a parameter with a non-finite gradient is skipped), with one
        orthogonalization call for the batch's stacks."""
        pending, stacks = [], []
        for chunk in batch:
            items = [self._momentum_phase(p, g, commit=True) for p, g in chunk.members]
            U = torch.empty((sum(item.batch for item in items), chunk.rows, chunk.cols), dtype=chunk.stack_dtype,
                            device=items[0].param.device)
            start = 0
            for item in items:
                U[start:start + item.batch].copy_(item.update)
                item.update = None
                start += item.batch
            pending.append(items)
            stacks.append(U)
        results = self._orthogonalize_stacks(stacks, batch[0].group, batch[0].compute_dtype)
        del stacks
        for items, O in zip(pending, results):
            start = 0
            for item in items:
                self._update_phase(item, O[start:start + item.batch], item.finite)
                start += item.batch

    def _few_passes(self, batch: List[_Chunk]) -> bool:
        """A batch of chunks stepped in a few list-wide passes (``torch._foreach_*``) when every
        gradient is finite, which one check on the host finds out; returns False, having changed
        nothing, otherwise (the per-parameter path then skips the non-finite ones). Same
        arithmetic, op for op, as the per-parameter path, so the weights are bitwise the same."""
        if batch[0].native:
            return self._native_step(batch)
        if not all_finite([p.grad for chunk in batch for p, _ in chunk.members]):
            return False
        stacks = []
        for chunk in batch:
            params = [p for p, _ in chunk.members]
            momenta = [self.state[p]["momentum_buffer"] for p in params]
            for group, positions in _by_group(chunk.members):
                muon_momentum_lists_([momenta[i] for i in positions], [params[i].grad for i in positions],
                                     group["momentum"])
            U = torch.empty((sum(chunk.counts), chunk.rows, chunk.cols), dtype=chunk.stack_dtype,
                            device=params[0].device)
            start = 0
            for (p, group), m, count in zip(chunk.members, momenta, chunk.counts):  # one matrix's temporary at a time
                muon_lookahead(p.grad, m, group["momentum"], group["nesterov"], out=U[start:start + count].view(m.shape))
                start += count
            stacks.append(U)
        results = self._orthogonalize_stacks(stacks, batch[0].group, batch[0].compute_dtype)
        del stacks
        for chunk, O in zip(batch, results):
            weights = [p.detach() for p, _ in chunk.members]
            start, parts = 0, []
            for W, count in zip(weights, chunk.counts):
                parts.append(O[start:start + count].reshape(W.shape))
                start += count
            for group, positions in _by_group(chunk.members):
                decoupled_update_lists_([weights[i] for i in positions], [parts[i] for i in positions], lr=group["lr"],
                                        weight_decay=group["weight_decay"], scale=_lr_scale(group, chunk.rows, chunk.cols))
        return True

    def _native_step(self, batch: List[_Chunk]) -> bool:
        """``_few_passes`` of a batch that runs on the native kernels: the whole step (finiteness
        check, momentum, orthogonalization, update) in one native call, each matrix on one of
        torch's threads, in place and with no stack; the arithmetic is the torch ops', so the
        results are bitwise the same. False, having changed nothing, if a gradient is not
        finite."""
        grads, momenta, weights, views, hyper = [], [], [], [], []
        for chunk in batch:
            for group, positions in _by_group(chunk.members):
                scalars = muon_step_scalars(group["momentum"], group["nesterov"], group["lr"], group["weight_decay"],
                                            _lr_scale(group, chunk.rows, chunk.cols))
                for i in positions:
                    p = chunk.members[i][0]
                    grads.append(p.grad)
                    momenta.append(self.state[p]["momentum_buffer"])
                    weights.append(p)
                    views.append((chunk.counts[i], chunk.rows, chunk.cols))
                    hyper.append(scalars)
        return native_muon_step(grads, momenta, weights, views, hyper,
                                make_plan(**_orthogonalize_options(batch[0].group)))

    def _momentum_phase(self, p: torch.Tensor, group: dict, commit: bool) -> _Pending:
        batch, rows, cols = matrix_view(p.shape)
        state = self.state[p]
        if group["beta2"] is not None and "second_moment" not in state:
            raise RuntimeError("a parameter's state has no second_moment: beta2 was set after it was stepped")
        M = state["momentum_buffer"]
        grad = p.grad
        if grad is None:
            G, finite = torch.zeros_like(M), torch.zeros((), dtype=torch.bool, device=p.device)
        else:
            if grad.is_sparse:
                raise RuntimeError("Muon does not support sparse gradients (use SignSGD(sparse=True))")
            finite = torch.isfinite(grad).all()
        if commit and grad is not None:
            U = muon_momentum_(M, grad, finite, group["momentum"], group["nesterov"])
            M_new = None
        else:
            if grad is not None:
                G = torch.where(finite, grad.to(M.dtype), 0.0)
            M_new, U = muon_momentum(M, G, group["momentum"], group["nesterov"])
        return _Pending(p, group, state, batch, rows, cols, grad is not None, finite, M_new,
                        U.reshape(batch, rows, cols))

    @staticmethod
    def _orthogonalize(U: torch.Tensor, group: dict, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """One (batch, rows, cols) stack through ``_orthogonalize_stacks``."""
        return _MuonFamily._orthogonalize_stacks([U], group, dtype)[0]

    @staticmethod
    def _orthogonalize_stacks(stacks: List[torch.Tensor], group: dict,
                              dtype: Optional[torch.dtype] = None) -> List[torch.Tensor]:
        """The one call of the orthogonalizer: (batch, rows, cols) stacks of any shapes, with the
        group's options, computed in ``dtype`` (default: the group's ``ns_dtype``; the local step
        passes the dtype it chose for the whole same-shape stack, so that its chunks agree)."""
        return orthogonalize_stacks(stacks, **_orthogonalize_options(group), backend=group["backend"],
                                    dtype=group["ns_dtype"] if dtype is None else dtype)

    def _sharded(self, jobs, process_group, rank: int, world_size: int):
        """Each rank orthogonalizes one contiguous chunk of every stack (chunk (rank + k) mod
        world_size of stack k, so single-matrix stacks spread over the ranks), then one
        all_gather per stack shares [chunk, valid flags of the whole stack]. Chunks are padded
        to the same size with zeros. A matrix may be updated only if it was valid on every rank.
        All gathers are started before any is waited on."""
        pending = []
        for k, (U, valid, group) in enumerate(jobs):
            n, rows, cols = U.shape
            size = -(-n // world_size)
            lo = min(n, ((rank + k) % world_size) * size)
            hi = min(n, lo + size)
            chunk = U.new_zeros((size, rows, cols))
            if hi > lo:
                chunk[: hi - lo] = self._orthogonalize(U[lo:hi], group)
            message = torch.cat([chunk.reshape(-1), valid.to(U.dtype)])
            gathered = [torch.empty_like(message) for _ in range(world_size)]
            work = dist.all_gather(gathered, message, group=process_group, async_op=True)
            pending.append((work, gathered, n, size, rows, cols, k))
        results = []
        for work, gathered, n, size, rows, cols, k in pending:
            work.wait()
            chunks: List[Optional[torch.Tensor]] = [None] * world_size
            for r, message in enumerate(gathered):
                chunks[(r + k) % world_size] = message[: size * rows * cols].reshape(size, rows, cols)
            O = torch.cat(chunks)[:n]
            flags = torch.stack([message[size * rows * cols:] for message in gathered])
            results.append((O, flags.amin(dim=0) > 0))
        return results

    def _update_phase(self, item: _Pending, O: torch.Tensor, ok: torch.Tensor) -> None:
        """NorMuon normalization (if ``beta2``), the weight update, and the commit: new values
        where ``ok`` (a 0-D bool tensor), old ones elsewhere."""
        group, state, p = item.group, item.state, item.param
        if group["beta2"] is not None:
            O, s_new = normuon_normalize(O, state["second_moment"], group["beta2"])
            state["second_moment"].copy_(torch.where(ok, s_new, state["second_moment"]))
        _apply_update(p.detach(), O, ok, group, (item.batch, item.rows, item.cols))
        if item.has_grad:
            if item.momentum is not None:  # not committed yet (data parallel)
                state["momentum_buffer"].copy_(torch.where(ok, item.momentum, state["momentum_buffer"]))
            state["skipped_steps"].add_((~ok).to(torch.int64))

    # ------------------------------------------------------------------ AdamW
    def _adamw_step(self, group: dict) -> None:
        if self._adamw_few_passes(group):
            return
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad
            if grad.is_sparse:
                raise RuntimeError("AdamW groups do not support sparse gradients (use SignSGD(sparse=True))")
            state = self.state[p]
            # Elementwise, so a sharded (DTensor) parameter steps on its local shard; the verdict
            # on the gradient is every shard's.
            W, grad, exp_avg, exp_avg_sq = (_local(t) for t in (p.detach(), grad, state["exp_avg"],
                                                                  state["exp_avg_sq"]))
            finite = _all_ranks(torch.isfinite(grad).all()) if _is_dtensor(p) else torch.isfinite(grad).all()
            G = torch.where(finite, grad.to(W.dtype), 0.0)
            W_new, m, v, step = adamw_update(
                W, G, exp_avg, exp_avg_sq, state["step"],
                lr=group["lr"], betas=_adamw_betas(group), eps=group["eps"], weight_decay=group["weight_decay"],
            )
            W.copy_(torch.where(finite, W_new, W))
            exp_avg.copy_(torch.where(finite, m, exp_avg))
            exp_avg_sq.copy_(torch.where(finite, v, exp_avg_sq))
            state["step"].copy_(torch.where(finite, step, state["step"]))
            state["skipped_steps"].add_((~finite).to(torch.int64))

    def _adamw_few_passes(self, group: dict) -> bool:
        """The AdamW group's step in list-wide passes (``torch._foreach_*``), taken under the
        conditions of ``_few_passes`` (CPU, eager, float lr, every gradient finite) and for
        fp32 weights (the dtype of the bias corrections: list-wide ops would not round those to
        narrower weights first, as the per-parameter ops do): ``functional.adamw_update_lists_``,
        op for op the arithmetic of ``adamw_update``, so the weights are bitwise the same.
        Returns False, having changed nothing, where it does not apply."""
        params = [p for p in group["params"] if p.grad is not None]
        if not (params and all(p.dtype == torch.float32 for p in params) and _list_wide_applies(params, group["lr"])):
            return False
        grads = [p.grad for p in params]
        if not all_finite(grads):
            return False
        states = [self.state[p] for p in params]
        adamw_update_lists_([p.detach() for p in params], grads, *([st[key] for st in states] for key in
                            ("exp_avg", "exp_avg_sq", "step")), lr=group["lr"], betas=_adamw_betas(group),
                            eps=group["eps"], weight_decay=group["weight_decay"])
        return True


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
    differ: lr 0.02 and weight_decay 0 (torch: 1e-3 and 0.1), and Polar Express instead of
    Jordan's Newton-Schulz unless ``ns_coefficients`` is given.

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
        lr: float = MUON_DEFAULTS["lr"],
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
        distributed: Optional[bool] = None,
        process_group=None,
    ) -> None:
        _check_lr(lr)  # before the base class looks at params, as torch.optim.Muon does
        if adjust_lr_fn is not None:  # torch.optim.Muon's name for adjust_lr
            if adjust_lr != MUON_DEFAULTS["adjust_lr"] and adjust_lr != adjust_lr_fn:
                raise ValueError(f"adjust_lr_fn={adjust_lr_fn!r} and adjust_lr={adjust_lr!r} disagree; give one")
            adjust_lr = adjust_lr_fn
        if ns_coefficients is not None and method == MUON_DEFAULTS["method"]:
            method = "newton_schulz"  # torch.optim.Muon's meaning: Newton-Schulz with these
        options = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, method=method,
                       ns_steps=ns_steps, adjust_lr=adjust_lr, cautious_weight_decay=cautious_weight_decay,
                       backend=backend, ns_dtype=ns_dtype)
        defaults = dict(muon_options(options), beta2=self._beta2, sphere=sphere,
                        ns_coefficients=None if ns_coefficients is None else tuple(ns_coefficients), eps=eps,
                        transposed=False, allow_nd=bool(allow_nd), use_muon=True)
        super().__init__(params, defaults, distributed=distributed, process_group=process_group)
        self.register_load_state_dict_post_hook(_complete_torch_muon_state)

    def _fill_group_defaults(self, group: dict) -> None:
        if not group.setdefault("use_muon", True):
            raise ValueError(f"{type(self).__name__} takes only Muon groups; use MuonWithAdamW for use_muon=False")
        if group.get("ns_coefficients") is not None:  # as in the constructor: Newton-Schulz with these
            group.setdefault("method", "newton_schulz")
            group["ns_coefficients"] = tuple(group["ns_coefficients"])


def _complete_torch_muon_state(optimizer: "Muon") -> None:
    """Complete what a ``torch.optim.Muon`` state_dict lacks, so that its checkpoint resumes in
    the drop-in: its groups (no ``use_muon``; ``adjust_lr_fn`` for ``adjust_lr``, None meaning
    "original"; its ``ns_coefficients`` meaning Newton-Schulz with them, as in the constructor)
    take this optimizer's defaults for fastmuon's own options and are checked; its states get
    the counters (and NorMuon's second moment) a first step would have made."""
    for index, group in enumerate(optimizer.param_groups):
        if "use_muon" in group:
            continue
        group["adjust_lr"] = group.pop("adjust_lr_fn", None) or MUON_DEFAULTS["adjust_lr"]
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

    def __init__(self, params, lr: float = MUON_DEFAULTS["lr"], *, beta2: float = NORMUON_BETA2, **options) -> None:
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
    (decoupled decay, bias correction), with the same non-finite policy as Muon.
    """

    def __init__(
        self,
        param_groups,
        lr: float = MUON_DEFAULTS["lr"],
        *,
        adamw_lr: float = ADAMW_DEFAULTS["lr"],
        adamw_betas: Tuple[float, float] = ADAMW_DEFAULTS["betas"],
        adamw_eps: float = ADAMW_DEFAULTS["eps"],
        adamw_weight_decay: float = ADAMW_DEFAULTS["weight_decay"],
        distributed: Optional[bool] = None,
        process_group=None,
        **muon_options,
    ) -> None:
        self.muon_defaults = muon_options_with_extras(dict(muon_options, lr=lr))
        self.adamw_defaults = dict(lr=adamw_lr, betas=tuple(adamw_betas), eps=adamw_eps,
                                   weight_decay=adamw_weight_decay)
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
            group.setdefault("momentum", group["betas"][0])


def muon_options_with_extras(given: dict) -> dict:
    """Muon group defaults: MUON_DEFAULTS and ``_GROUP_EXTRAS``, updated with ``given`` (an
    unknown name raises TypeError). ``ns_coefficients`` without a method means Newton-Schulz."""
    if given.get("ns_coefficients") is not None:
        given = {"method": "newton_schulz", **given, "ns_coefficients": tuple(given["ns_coefficients"])}
    return {**_GROUP_EXTRAS, **muon_options(given, extra=_GROUP_EXTRAS)}


class SignSGD(_CheckedOptimizer):
    """W <- W (1 - lr wd) - lr sign(G); no state (an optimizer for sparse embeddings).

    Args:
        params: parameters or param groups, any shape.
        lr: learning rate (default 1e-2).
        weight_decay: decoupled weight decay (default 0.1).
        sparse: if True, only rows (index along dim 0, e.g. embedding rows) whose gradient has a
            non-zero entry are decayed and updated; rows the batch did not touch stay exactly as
            they are. Sparse COO gradients (``nn.Embedding(sparse=True)``) are read directly
            with ``sparse=True`` and densified otherwise.

    A parameter whose gradient holds a NaN or Inf is left unchanged for that step (checked with
    tensor ops, no device sync). The caller's gradients are never modified.
    """

    def __init__(self, params, lr: float = 1e-2, weight_decay: float = 0.1, sparse: bool = False) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, sparse=bool(sparse)))

    def _check_group(self, group: dict, index: int) -> None:
        _check_lr(group["lr"])
        check_hyperparameters(lr=0.0, weight_decay=group["weight_decay"])

    def _step(self) -> None:
        for group in self.param_groups:
            lr, wd, sparse = group["lr"], group["weight_decay"], group["sparse"]
            for p in group["params"]:
                G = p.grad
                if G is None:
                    continue
                if G.is_sparse:
                    G = G.coalesce()
                    if sparse and G.sparse_dim() == 1:
                        self._sparse_rows_step(p, G, lr, wd)
                        continue
                    G = G.to_dense()
                finite = torch.isfinite(G).all()
                W_new = signsgd_update(p.detach(), G.to(p.dtype), lr=lr, weight_decay=wd)
                keep = finite & rows_touched(G) if sparse else finite
                p.copy_(torch.where(keep, W_new, p))

    @staticmethod
    def _sparse_rows_step(p: torch.Tensor, G: torch.Tensor, lr: float, wd: float) -> None:
        """Update only the rows a coalesced COO gradient lists (and that hold a non-zero)."""
        rows, values = G.indices()[0], G.values()
        finite = torch.isfinite(values).all()
        W_rows = p.detach().index_select(0, rows)
        W_new = signsgd_update(W_rows, values.to(p.dtype), lr=lr, weight_decay=wd)
        keep = finite & rows_touched(values)
        p.index_copy_(0, rows, torch.where(keep, W_new, W_rows))
