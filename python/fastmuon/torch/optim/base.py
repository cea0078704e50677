"""What every fastmuon.torch optimizer shares: group checks that name the option or parameter at
fault, the ``skipped_steps`` counters across ``state_dict``, the step's closure handling, and
the DTensor helpers of the distributed strategies."""

from __future__ import annotations

import functools
import sys
from typing import Tuple, Union

import torch
import torch.distributed as dist
from torch.optim import Optimizer

from ...plan import check_compute_bits
from ...options import IMPLS, MuonOptions, check_impl
from ...rules import check_adamw_eps, check_adamw_options, check_hyperparameters, is_real, matrix_view, plain
from ..orthogonalize import BACKENDS

__all__ = ["IMPLS", "CheckedOptimizer", "param_name", "check_lr", "check_muon_group", "check_adamw_group"]


# A float, or a 0-D floating Tensor that a scheduler changes in place (no recompiles under torch.compile)
LearningRate = Union[float, torch.Tensor]


def check_lr(lr, what: str = "lr") -> None:
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


def param_name(group: dict, index: int, group_index: int) -> str:
    """The parameter's name when the group has ``param_names``, else its place in the groups."""
    names = group.get("param_names")
    if names is not None and index < len(names):
        return str(names[index])
    return f"param_groups[{group_index}]['params'][{index}]"


def check_muon_group(group: dict, group_index: int) -> None:
    check_lr(group["lr"])
    checked = MuonOptions.from_mapping(group).check(BACKENDS, IMPLS, "torch", where=f"param_groups[{group_index}]")
    group.update({name: plain(getattr(checked, name)) for name in MuonOptions.names() if name in group})
    if group.get("ns_coefficients") is not None:
        group["ns_coefficients"] = tuple(float(c) for c in group["ns_coefficients"])
    ns_dtype = group["ns_dtype"]
    if ns_dtype is not None and not (isinstance(ns_dtype, torch.dtype) and ns_dtype.is_floating_point):
        raise ValueError(f"ns_dtype must be None or a floating torch.dtype, got {ns_dtype!r}")
    if ns_dtype is not None:
        check_compute_bits(group["method"], torch.finfo(ns_dtype).bits, ns_dtype, f"param_groups[{group_index}]['ns_dtype']")
    for i, p in enumerate(group["params"]):
        name = param_name(group, i, group_index)
        if not (p.is_floating_point() or p.is_complex()):  # complex: torch.optim.Muon's error at step
            raise ValueError(f"Muon steps floating-point parameters; {name} has dtype {p.dtype} (integer)")
        if p.ndim != 2 and not group["allow_nd"]:  # torch.optim.Muon's error, type and wording
            raise ValueError(
                f"Muon only supports 2D parameters whereas we found a parameter with size: {p.size()} ({name}); "
                "pass allow_nd=True to orthogonalize 3-D weights as stacks of matrices and 4-D conv weights as "
                "(out, in*kh*kw), or route 0-D/1-D parameters to AdamW (muon_param_groups, MuonWithAdamW)"
            )
        matrix_view(p.shape, name)


def adamw_betas(group: dict) -> Tuple[float, float]:
    """An AdamW group's (beta1, beta2); its ``momentum`` key, when present, is beta1 (so that
    OneCycleLR / CyclicLR with cycle_momentum cycle it along with Muon's momentum)."""
    beta1, beta2 = group["betas"]
    return (group.get("momentum", beta1), beta2)


def check_adamw_group(group: dict, group_index: int) -> None:
    where = f"param_groups[{group_index}]"
    check_lr(group["lr"])
    group["betas"], group["eps"], group["weight_decay"] = check_adamw_options(
        group["betas"], group["eps"], group["weight_decay"], where=where)
    check_impl(group.get("impl", "auto"), where=where)
    beta1, _ = adamw_betas(group)  # its momentum, when a scheduler cycles it
    if not (is_real(beta1) and 0.0 <= beta1 < 1.0):
        raise ValueError(f"momentum ({where}), the AdamW group's betas[0], must be in [0, 1), got {beta1!r}")
    eps = group["eps"]
    for i, p in enumerate(group["params"]):
        check_adamw_eps(eps, str(p.dtype), param_name(group, i, group_index))


def is_dtensor(t) -> bool:
    # A DTensor exists only once its module is loaded: no import, nothing to cache.
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (sharing its storage), or the tensor itself."""
    return t.to_local() if is_dtensor(t) else t


def mesh_group(p: torch.Tensor):
    """(process group, this rank's place in it, its size) of a 1-D mesh parameter's mesh, or None
    for other meshes. A sub-mesh (``mesh["dp"]`` of a 2-D mesh, a pipeline stage's mesh) has its
    own group: ranks, owners and collectives are counted within it, never in the world."""
    mesh = p.device_mesh
    if mesh.ndim != 1:
        return None
    return mesh.get_group(), mesh_place(p, 0), mesh.size()


def mesh_place(p: torch.Tensor, mesh_dim: int) -> int:
    """This rank's coordinate on ``mesh_dim`` of ``p``'s mesh, which collectives over that
    dimension's group must see as the rank's group rank. A mesh that lists a dimension's ranks
    out of increasing order breaks that, and DTensor itself then shards wrongly (torch 2.13,
    gloo: ``DeviceMesh("cpu", [2, 0, 3, 1])`` gives ``full_tensor()`` other than the tensor
    distributed), so it is refused."""
    mesh = p.device_mesh
    if not _lists_ranks_in_order(mesh, mesh_dim):
        raise ValueError(f"a sharded parameter of shape {tuple(p.shape)} is on a device mesh whose dimension "
                         f"{mesh_dim} lists its ranks out of increasing order ({mesh.mesh.tolist()}); DTensor does "
                         "not shard such a mesh consistently, so it is refused: list each dimension's ranks "
                         "in increasing order")
    return mesh.get_local_rank(mesh_dim)


@functools.lru_cache(maxsize=None)  # asked per parameter and step: once per mesh and dimension
def _lists_ranks_in_order(mesh, mesh_dim: int) -> bool:
    """Whether every line of ``mesh`` along ``mesh_dim`` lists its ranks increasingly (the same
    verdict on every rank: the whole mesh is known everywhere)."""
    lines = mesh.mesh.movedim(mesh_dim, -1).reshape(-1, mesh.size(mesh_dim))
    return bool((lines[:, 1:] > lines[:, :-1]).all())


def all_ranks(flag: torch.Tensor, group=None) -> torch.Tensor:
    """A 0-D bool that is True only where it is True on every rank of ``group`` (default: the
    world)."""
    value = flag.to(torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MIN, group=group)
    return value.bool()


def on_every_shard(flag: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``flag`` (0-D bool) reduced over the ranks of DTensor ``p``'s mesh, one dimension's group
    at a time (the minimum over each line is the minimum over the mesh), never over ranks
    outside it (another pipeline stage)."""
    mesh = p.device_mesh
    for d in range(mesh.ndim):
        flag = all_ranks(flag, mesh.get_group(d))
    return flag


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


class CheckedOptimizer(Optimizer):
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
