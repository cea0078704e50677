"""Muon, NorMuon, SignSGD and MuonWithAdamW as ``mlx.optimizers.Optimizer`` subclasses, thin
classes over ``functional.py``.

Semantics, defaults and errors follow ``fastmuon.torch`` (both use ``fastmuon.rules``);
the update rules are written out in each class docstring. What MLX adds:

* Learning rates may be schedules (``step -> lr``), evaluated at the step count before it is
  incremented, as every ``mlx.optimizers`` optimizer does.
* ``apply_gradients`` is overridden: it checks the gradient tree against the parameters (naming
  the offending path), then runs the momentum of every weight, stacks the matrices of the same
  shape and orthogonalizes each stack in one batched call. State keeps the usual layout (one dict
  per parameter, mirroring the parameter tree), so ``tree_flatten(opt.state)`` +
  ``mx.save_safetensors`` save it and ``opt.state = tree_unflatten(...)`` restores it.
* No host synchronisation: a gradient with a NaN or Inf is handled with ``mx.where`` on a
  finiteness flag, so steps compile with ``mx.compile(step, inputs=state, outputs=state)``.

Non-finite gradients (the policy of ``fastmuon.torch``): a parameter whose gradient holds a NaN
or an Inf is skipped for the step: its weight and every state array stay bitwise unchanged and
its ``state[...]["skipped_steps"]`` goes up by one. The gradient is replaced by zeros before use,
so a NaN never reaches the batched orthogonalization of other matrices. The optimizer's step
counter (and so the schedule) still advances.
"""

from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import mlx.core as mx
import mlx.nn as nn
from mlx.optimizers import AdamW, MultiOptimizer, Optimizer
from mlx.utils import tree_flatten, tree_map_with_path

from ..rules import (
    ADAMW_DEFAULTS,
    DEFAULT_EXCLUDE,
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
from ..plan import check_compute_bits
from .functional import decoupled_update, muon_momentum, normuon_normalize, rows_touched, signsgd_update
from .orthogonalize import BACKENDS, orthogonalize
from .routing import embedding_paths, muon_filter, under

LearningRate = Union[float, Callable[[mx.array], mx.array]]


class TreeMismatchError(ValueError):
    """The gradient tree does not match the parameter tree; the message names the path."""


def check_gradient_tree(gradients, parameters) -> List[Tuple[str, tuple, mx.array, mx.array]]:
    """Walk ``gradients`` alongside ``parameters`` (which may be a superset, e.g. a whole
    ``nn.Module``) and return ``(path, keys, gradient, parameter)`` for every gradient leaf.

    Raises TypeError for a ``(grads, total_norm)`` pair as returned by ``clip_grad_norm`` and for
    leaves that are not arrays, and TreeMismatchError (a ValueError) naming the first path whose
    gradient has no parameter of the same shape. Empty subtrees are allowed.
    """
    if (
        isinstance(gradients, tuple)
        and len(gradients) == 2
        and isinstance(gradients[0], (dict, list, tuple))
        and isinstance(gradients[1], mx.array)
        and gradients[1].size == 1
    ):
        raise TypeError(
            "gradients is a (grads, total_norm) pair, as returned by "
            "mlx.optimizers.clip_grad_norm; unpack it first: "
            "grads, total_norm = clip_grad_norm(grads, max_norm)"
        )
    if not isinstance(gradients, (dict, list, tuple)):
        raise TypeError(
            f"gradients must be a tree (dict or list) of arrays, got {type(gradients).__name__}"
        )
    leaves: List[Tuple[str, tuple, mx.array, mx.array]] = []
    _walk(gradients, parameters, (), leaves)
    paths = [path for path, *_ in leaves]
    if len(set(paths)) != len(paths):  # mlx's trees are keyed by these dotted paths
        duplicate = next(path for path in paths if paths.count(path) > 1)
        keys = [repr(keys) for path, keys, *_ in leaves if path == duplicate]
        raise TreeMismatchError(
            f"two parameters share the path {duplicate!r} (keys {', '.join(keys)}): a dict key "
            "containing '.' collides with a nested key, and one update would overwrite the other; rename it"
        )
    return leaves


def _walk(grad, param, keys: tuple, out: list) -> None:
    path = ".".join(str(k) for k in keys)
    where = f"at {path!r}" if path else "at the root"
    if isinstance(grad, (dict, list, tuple)) and len(grad) == 0:
        # No gradient below: nn.value_and_grad gives {} for a leaf that is not an array (e.g.
        # mlx-lm's LlamaModel keeps a list of strings), whatever the parameter tree holds there.
        return
    if isinstance(grad, dict):
        if not isinstance(param, dict):
            raise TreeMismatchError(
                f"gradients and parameters do not match {where}: gradients hold a dict, "
                f"parameters a {type(param).__name__}"
            )
        for key, child in grad.items():
            if key not in param:
                raise TreeMismatchError(
                    f"gradients and parameters do not match: no parameter "
                    f"{'.'.join(str(k) for k in keys + (key,))!r}"
                )
            _walk(child, param[key], keys + (key,), out)
    elif isinstance(grad, (list, tuple)):
        if not isinstance(param, (list, tuple)):
            raise TreeMismatchError(
                f"gradients and parameters do not match {where}: gradients hold a list, "
                f"parameters a {type(param).__name__}"
            )
        if len(grad) > len(param):
            raise TreeMismatchError(
                f"gradients and parameters do not match {where}: {len(grad)} gradient entries, "
                f"{len(param)} parameter entries"
            )
        for index, child in enumerate(grad):
            _walk(child, param[index], keys + (index,), out)
    elif isinstance(grad, mx.array):
        if not isinstance(param, mx.array):
            raise TreeMismatchError(
                f"gradients and parameters do not match {where}: the parameter is a "
                f"{type(param).__name__}, not an array"
            )
        if grad.shape != param.shape:
            raise TreeMismatchError(
                f"gradients and parameters do not match {where}: gradient shape {grad.shape}, "
                f"parameter shape {param.shape}"
            )
        if not mx.issubdtype(param.dtype, mx.floating):
            raise TypeError(
                f"the parameter {where} has dtype {param.dtype}: fastmuon's optimizers update floating "
                "parameters only (an update would be truncated); freeze it or leave it out of the gradients"
            )
        out.append((path, keys, grad, param))
    else:
        raise TypeError(f"gradient {where} must be an mlx array, got {type(grad).__name__}")


def _has_state(state, keys: tuple) -> bool:
    for key in keys:
        try:
            state = state[key]
        except (KeyError, IndexError, TypeError):
            return False
    return isinstance(state, dict) and len(state) > 0


def _init_missing_state(optimizer: Optimizer, gradients, leaves) -> None:
    """``optimizer.init(gradients)`` unless every leaf already has state (mlx's init adds state
    for new parameters and keeps the existing)."""
    if not optimizer._initialized or not all(_has_state(optimizer.state, keys) for _, keys, _, _ in leaves):
        optimizer.init(gradients)


def _state_at(state: dict, keys: tuple) -> dict:
    for key in keys:
        state = state[key]
    return state


def _check_learning_rate(learning_rate) -> None:
    lr = float(learning_rate.item()) if isinstance(learning_rate, mx.array) else learning_rate
    check_hyperparameters(lr=lr)


def _view(shape: Sequence[int], path: str) -> Tuple[int, int, int]:
    """The matrix view of a Muon parameter; 0-D/1-D ones (which take the momentum step) as one
    row."""
    if len(shape) < 2:
        return (1, 1, int(shape[0]) if shape else 1)
    return matrix_view(shape, path)


def _work_dtype(dtype: mx.Dtype) -> mx.Dtype:
    """Weight arithmetic runs in fp32 (fp64 for fp64 weights), then casts back: bf16 weights
    would otherwise lose updates smaller than their 8-bit mantissa resolves."""
    return mx.float64 if dtype == mx.float64 else mx.float32


class _TreeOptimizer(Optimizer):
    """Optimizer whose ``apply_gradients`` checks the trees and hands all leaves to
    ``_apply_all`` at once (so subclasses can batch across parameters)."""

    def apply_gradients(self, gradients, parameters):
        leaves = check_gradient_tree(gradients, parameters)
        self._check_leaves(leaves)
        _init_missing_state(self, gradients, leaves)
        for name, scheduler in self._schedulers.items():
            self.state[name] = scheduler(self.step)
        self.state["step"] = self.step + 1
        items = [(path, grad, param, _state_at(self.state, keys)) for path, keys, grad, param in leaves]
        updated = dict(zip((item[0] for item in items), self._apply_all(items)))
        return tree_map_with_path(lambda path, _: updated[path], gradients)

    def _check_leaves(self, leaves) -> None:
        """Raise, naming the path, for parameters this optimizer cannot update."""

    def _apply_all(self, items) -> List[mx.array]:
        return [self.apply_single(grad, param, state) for _, grad, param, state in items]

    def _lr(self, dtype: mx.Dtype) -> mx.array:
        return mx.array(self.learning_rate).astype(dtype)

    def init_single(self, parameter: mx.array, state: dict):
        state["skipped_steps"] = mx.array(0, mx.int32)


class Muon(_TreeOptimizer):
    r"""Muon: momentum, orthogonalized per matrix, with decoupled weight decay.

    For each weight W with gradient G (matrix view: 2-D as is, 3-D ``(E, a, b)`` as E matrices,
    4-D conv as one ``(out, prod(rest))`` matrix; MLX's ``(out, kh, kw, in)`` layout gives a
    column permutation of PyTorch's ``(out, in*kh*kw)``, which orthogonalization commutes with):

    .. math::

        M &\leftarrow \beta M + (1 - \beta) G \\
        U &= (1 - \beta) G + \beta M \ \text{(nesterov)}, \text{ else } M \\
        O &= \mathrm{orthogonalize}(U) \\
        W &\leftarrow W (1 - \eta \lambda) - \eta\, s\, O

    with ``s = shape_scale(rows, cols, adjust_lr)`` of the orthogonalized matrix. 0-D/1-D
    parameters (biases, norms), as in ``mlx.optimizers.Muon``, take the momentum step without
    orthogonalization: ``W <- W (1 - eta lambda) - eta U``. (Routing them to AdamW, see
    ``MuonWithAdamW``, usually trains better; ``fastmuon.torch.Muon`` refuses them, as
    ``torch.optim.Muon`` does.) With
    ``cautious_weight_decay`` the decay only touches entries where update and weight agree in
    sign: ``W <- W - eta lambda [O W >= 0] W - eta s O``.

    Differences from ``mlx.optimizers.Muon``: weight decay is decoupled (mlx adds
    ``wd * W`` to the gradient, an L2 penalty that then passes through momentum and
    orthogonalization, so its effect is scaled and rotated); the default is 0 (mlx: 0.01); the
    polynomial is Polar Express by default and its compute dtype fp32 on the CPU (mlx: Jordan's
    Newton-Schulz in the gradient dtype); 3-D weights are a batch of matrices (mlx flattens them
    to ``(E, a*b)``); same-shape matrices are orthogonalized in one batched call; everything after
    ``learning_rate`` is keyword-only, since mlx orders (weight_decay, nesterov) the other way.

    State per parameter: ``momentum`` (the weight's shape and dtype) and ``skipped_steps``.

    Args:
        learning_rate: float or schedule ``step -> lr``.
        momentum: EMA coefficient beta in [0, 1).
        nesterov: use the Nesterov look-ahead U (default) instead of M.
        weight_decay: decoupled decay lambda >= 0.
        method, ns_steps: the orthogonalizer (``fastmuon.mlx.orthogonalize``).
        adjust_lr: ``"original"`` (sqrt(max(1, rows/cols))) or ``"match_rms_adamw"``
            (0.2 sqrt(max(rows, cols))).
        cautious_weight_decay: decay only where sign(O) == sign(W).
        backend: orthogonalize backend (``"auto"``, ``"reference"``, ``"native"``, ...).
        ns_dtype: compute dtype of the orthogonalization (default: orthogonalize's; 16-bit
            floats are refused with ``method="gram"``).
        distributed: None (default) shares the orthogonalization over the ``mx.distributed``
            group when one of size > 1 is initialized (each process orthogonalizes a share of
            every same-shape stack, one all_gather per stack); False never; True requires it.
            Gradients must already be averaged (``mlx.nn.average_gradients``), so that every
            process holds the same ones; weights then equal one process's.
    """

    def __init__(
        self,
        learning_rate: LearningRate = MUON_DEFAULTS["lr"],
        *,
        momentum: float = MUON_DEFAULTS["momentum"],
        nesterov: bool = MUON_DEFAULTS["nesterov"],
        weight_decay: float = MUON_DEFAULTS["weight_decay"],
        method: str = MUON_DEFAULTS["method"],
        ns_steps: int = MUON_DEFAULTS["ns_steps"],
        adjust_lr: str = MUON_DEFAULTS["adjust_lr"],
        cautious_weight_decay: bool = MUON_DEFAULTS["cautious_weight_decay"],
        backend: str = MUON_DEFAULTS["backend"],
        ns_dtype: Optional[mx.Dtype] = MUON_DEFAULTS["ns_dtype"],
        distributed: Optional[bool] = None,
    ):
        _check_learning_rate(learning_rate)
        if distributed not in (None, True, False):
            raise ValueError(f"distributed must be None, True or False, got {distributed!r}")
        options = muon_options(dict(
            momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, method=method, ns_steps=ns_steps,
            adjust_lr=adjust_lr, cautious_weight_decay=cautious_weight_decay, backend=backend, ns_dtype=ns_dtype,
        ))
        check_muon_options(options, BACKENDS)
        if ns_dtype is not None and not (
            isinstance(ns_dtype, mx.Dtype) and mx.issubdtype(ns_dtype, mx.floating)
        ):
            raise ValueError(f"ns_dtype must be None or a floating mlx dtype, got {ns_dtype!r}")
        if ns_dtype is not None:
            check_compute_bits(method, 8 * ns_dtype.size, ns_dtype, "ns_dtype")
        super().__init__()
        self._maybe_schedule("learning_rate", learning_rate)
        del options["lr"]
        for name, value in options.items():
            default = MUON_DEFAULTS[name]
            setattr(self, name, type(default)(value) if isinstance(default, (bool, int, float)) else value)
        self.distributed = distributed
        self._group = None  # the mx.distributed group, looked up on first use

    def _world(self):
        """The mx.distributed group to share the orthogonalization over, or None."""
        if self.distributed is False:
            return None
        if self._group is None:
            self._group = mx.distributed.init() if mx.distributed.is_available() else False
        if not self._group or self._group.size() == 1:
            if self.distributed:
                raise RuntimeError("distributed=True but no mx.distributed group of size > 1 is initialized")
            return None
        return self._group

    def _orthogonalize_stack(self, U: mx.array, k: int) -> mx.array:
        """Orthogonalize the (n, rows, cols) stack ``U``, the ``k``-th of this step. In a group of
        W > 1 processes each orthogonalizes one chunk of ceil(n / W) matrices (chunk (rank + k)
        mod W, so single-matrix stacks spread over the ranks) and one all_gather shares them;
        every rank then holds every result, as one process would have computed it."""
        group = self._world()
        if group is None:
            return self._orthogonalize(U)
        world, rank = group.size(), group.rank()
        n = U.shape[0]
        size = -(-n // world)
        start = ((rank + k) % world) * size
        if start >= n:  # this rank's chunk is all padding
            mine = mx.zeros((size, *U.shape[1:]), dtype=U.dtype)
        else:
            mine = self._orthogonalize(U[start:start + size])
            if mine.shape[0] < size:
                mine = mx.concatenate([mine, mx.zeros((size - mine.shape[0], *U.shape[1:]), dtype=U.dtype)])
        gathered = mx.distributed.all_gather(mine, group=group)  # rank r's chunk at r * size
        chunks = [gathered[((j - k) % world) * size:((j - k) % world + 1) * size] for j in range(world)]
        return mx.concatenate(chunks)[:n]

    def init_single(self, parameter: mx.array, state: dict):
        super().init_single(parameter, state)
        state["momentum"] = mx.zeros_like(parameter)

    def _check_leaves(self, leaves) -> None:
        for path, _, _, param in leaves:
            _view(param.shape, path)

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict):
        """One parameter on its own (the optimizer itself batches; this is the same rule)."""
        return self._apply_all([("parameter", gradient, parameter, state)])[0]

    def _orthogonalize(self, U: mx.array) -> mx.array:
        return orthogonalize(
            U, method=self.method, steps=self.ns_steps, backend=self.backend, dtype=self.ns_dtype
        )

    def _apply_all(self, items) -> List[mx.array]:
        prepared = []
        groups: dict = {}
        orthogonal: dict = {}
        for index, (path, grad, param, state) in enumerate(items):
            view = _view(param.shape, path)
            self._check_state(path, param, state)
            G = grad.reshape(view)
            ok = mx.all(mx.isfinite(G))  # one flag per parameter, kept on the device
            G = mx.where(ok, G, mx.zeros_like(G))  # NaN/Inf never enter the arithmetic
            M_old = state["momentum"].reshape(view)
            M, U = muon_momentum(M_old, G, self.momentum, self.nesterov)
            prepared.append((view, ok, M_old, M))
            if param.ndim < 2:  # no matrix: the momentum is the update, as in mlx.optimizers.Muon
                orthogonal[index] = U
                continue
            groups.setdefault((view[1], view[2], U.dtype), []).append((index, U))

        for k, members in enumerate(groups.values()):  # one batched call per matrix shape
            if len(members) == 1:
                index, U = members[0]
                orthogonal[index] = self._orthogonalize_stack(U, k)
                continue
            O = self._orthogonalize_stack(mx.concatenate([U for _, U in members], axis=0), k)
            sizes = [U.shape[0] for _, U in members]
            splits = [sum(sizes[: k + 1]) for k in range(len(sizes) - 1)]
            for (index, _), part in zip(members, mx.split(O, splits, axis=0)):
                orthogonal[index] = part

        out = []
        for index, (path, grad, param, state) in enumerate(items):
            view, ok, M_old, M = prepared[index]
            work = _work_dtype(param.dtype)
            O = orthogonal[index].astype(work)
            if param.ndim >= 2:
                O = self._transform(O, ok, state)
            W = param.reshape(view).astype(work)
            W_new = decoupled_update(W, O, lr=self._lr(work), weight_decay=self.weight_decay,
                                     scale=shape_scale(view[1], view[2], self.adjust_lr) if param.ndim >= 2 else 1.0,
                                     cautious=self.cautious_weight_decay)
            W_new = mx.where(ok, W_new, W).astype(param.dtype).reshape(param.shape)
            # kept in its own dtype (the weight's): fp32 gradients on bf16 weights promote M
            state["momentum"] = mx.where(ok, M, M_old).astype(M_old.dtype).reshape(param.shape)
            state["skipped_steps"] = state["skipped_steps"] + (1 - ok.astype(mx.int32))
            out.append(W_new)
        return out

    def _expected_state(self, param: mx.array) -> dict:
        return {"momentum": param.shape}

    def _check_state(self, path: str, param: mx.array, state: dict) -> None:
        for key, shape in self._expected_state(param).items():
            if key not in state or state[key].shape != tuple(shape):
                found = state[key].shape if key in state else "nothing"
                raise ValueError(
                    f"optimizer state {key!r} of {path!r} has shape {found}, expected {tuple(shape)} "
                    f"for a parameter of shape {param.shape}; was the state saved for another model?"
                )

    def _transform(self, O: mx.array, ok: mx.array, state: dict) -> mx.array:
        """Hook between orthogonalization and the update (NorMuon's normalization)."""
        return O


class NorMuon(Muon):
    r"""NorMuon (Li et al., arXiv 2510.05491): Muon with a per-neuron second moment.

    After orthogonalization O (rows x cols), with one value per row if rows >= cols and per
    column otherwise (the mean is over the smaller dimension):

    .. math::

        m &= \mathrm{mean}(O^2 \text{ over the smaller dimension}) \\
        v &\leftarrow \beta_2 v + (1 - \beta_2) m \\
        O' &= O / \sqrt{\max(v, 10^{-10})}, \text{ rescaled to } \|O\|_F

    then Muon's scale, decay and update. State adds ``second_moment`` (float32; shape
    ``normuon_state_shape(E, rows, cols)``, i.e. ``(E, rows, 1)`` or ``(E, 1, cols)`` of the
    matrix view, as in ``fastmuon.torch``). Same arguments as :class:`Muon`, plus ``beta2``
    (0.95, the paper's code; modded-nanogpt uses 0.9).
    """

    def __init__(self, learning_rate: LearningRate = MUON_DEFAULTS["lr"], *, beta2: float = NORMUON_BETA2, **options):
        check_hyperparameters(lr=0.0, beta2=beta2)
        super().__init__(learning_rate, **options)
        self.beta2 = float(beta2)

    def init_single(self, parameter: mx.array, state: dict):
        super().init_single(parameter, state)
        if parameter.ndim < 2:
            return
        shape = normuon_state_shape(*matrix_view(parameter.shape))
        state["second_moment"] = mx.zeros(shape, dtype=_work_dtype(parameter.dtype))

    def _expected_state(self, param: mx.array) -> dict:
        if param.ndim < 2:  # no matrix, no per-neuron moment
            return super()._expected_state(param)
        return {**super()._expected_state(param), "second_moment": normuon_state_shape(*matrix_view(param.shape))}

    def _transform(self, O: mx.array, ok: mx.array, state: dict) -> mx.array:
        v_old = state["second_moment"]
        O, v = normuon_normalize(O, v_old, self.beta2)
        state["second_moment"] = mx.where(ok, v, v_old)
        return O


class SignSGD(_TreeOptimizer):
    r"""Sign SGD with decoupled weight decay, for sparse embeddings:

    .. math::

        W \leftarrow W (1 - \eta \lambda) - \eta\, \mathrm{sign}(G)

    No state besides ``skipped_steps``: a parameter whose gradient holds a NaN or Inf is left
    unchanged. MLX has no sparse arrays; ``sparse=True`` treats every row (index along the first
    axis) whose gradient is entirely zero as absent from the batch, as a sparse PyTorch embedding
    gradient would be: such rows get neither the decay nor an update.
    """

    def __init__(self, learning_rate: LearningRate = 1e-2, *, weight_decay: float = 0.1, sparse: bool = False):
        _check_learning_rate(learning_rate)
        check_hyperparameters(lr=0.0, weight_decay=weight_decay)
        super().__init__()
        self._maybe_schedule("learning_rate", learning_rate)
        self.weight_decay = float(weight_decay)
        self.sparse = bool(sparse)

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict):
        work = _work_dtype(parameter.dtype)
        lr = self._lr(work)
        W = parameter.astype(work)
        ok = mx.all(mx.isfinite(gradient))
        G = mx.where(ok, gradient, mx.zeros_like(gradient))
        W_new = signsgd_update(W, G, lr=lr, weight_decay=self.weight_decay)
        if self.sparse:
            W_new = mx.where(rows_touched(G), W_new, W)
        state["skipped_steps"] = state["skipped_steps"] + (1 - ok.astype(mx.int32))
        return mx.where(ok, W_new, W).astype(parameter.dtype)


class _FiniteAdamW(AdamW):
    """mlx's AdamW (bias-corrected here, as ``torch.optim.AdamW``), with the fastmuon
    non-finite policy: a parameter whose gradient holds a NaN or Inf keeps its value and its
    moments for the step (counted in ``skipped_steps``). The bias corrections count the
    parameter's own steps, as ``fastmuon.torch`` and ``torch.optim.AdamW`` do: the optimizer's
    steps since its state was made (``steps_before`` holds the steps before that), less the
    skipped ones. (mlx's AdamW takes the optimizer's step: after a skipped step, or for a
    parameter that joined late, its first real update came out up to 0.6x too small.)"""

    def init_single(self, parameter: mx.array, state: dict):
        super().init_single(parameter, state)
        state["skipped_steps"] = mx.array(0, mx.int32)
        state["steps_before"] = mx.array(self.step, mx.int32)

    def apply_gradients(self, gradients, parameters):
        leaves = check_gradient_tree(gradients, parameters)
        for path, _, _, parameter in leaves:
            check_adamw_eps(self.eps, str(parameter.dtype), f"the parameter at {path!r}")
        # A parameter routed here after ``init`` (an embedding recognised by its module type only
        # once the update is given the model) gets its state now instead of a KeyError.
        if self._initialized:  # else the base class initializes every state
            _init_missing_state(self, gradients, leaves)
        return super().apply_gradients(gradients, parameters)

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict):
        ok = mx.all(mx.isfinite(gradient))
        moments = {key: state[key] for key in ("m", "v")}
        optimizer_step = self.state["step"]
        # mlx's Adam reads self.step for its corrections: this parameter's own count meanwhile
        not_taken = state["skipped_steps"] + state.get("steps_before", 0)
        self.state["step"] = optimizer_step - not_taken.astype(optimizer_step.dtype)  # stays an integer
        try:
            updated = super().apply_single(mx.where(ok, gradient, mx.zeros_like(gradient)), parameter, state)
        finally:
            self.state["step"] = optimizer_step
        for key, old in moments.items():
            state[key] = mx.where(ok, state[key], old)
        state["skipped_steps"] = state["skipped_steps"] + (1 - ok.astype(mx.int32))
        return mx.where(ok, updated, parameter)


class _CheckedMultiOptimizer(MultiOptimizer):
    """``MultiOptimizer`` that checks the gradient tree first (naming the path) and returns the
    gradients' own structure. (``mlx.utils.tree_merge``, which MultiOptimizer uses to join the
    parts, fails on a parameter-less module inside a list, such as an activation in
    ``nn.Sequential``, when only one part reaches past it.)"""

    def apply_gradients(self, gradients, parameters):
        leaves = check_gradient_tree(gradients, parameters)
        self._prepare(leaves, parameters)
        updated: dict = {}
        for optimizer, part in zip(self.optimizers, self._split_dictionary(gradients)):
            tree_flatten(optimizer.apply_gradients(part, parameters), destination=updated)
        return tree_map_with_path(lambda path, _: updated[path], gradients)

    def _prepare(self, leaves, parameters) -> None:
        """Hook run after the checks, before the split."""


class MuonWithAdamW(_CheckedMultiOptimizer):
    """Muon (or NorMuon) for hidden matrices, AdamW for everything else, as one optimizer.

    Routing: ``filter(path, array)`` (default :func:`muon_filter` with ``exclude``) picks Muon's
    parameters, and parameters of ``nn.Embedding``/``nn.QuantizedEmbedding`` modules always go
    to AdamW whatever their names (recognised when ``update(model, grads)`` or
    ``apply_gradients(grads, model)`` is given the module). State is
    ``{"states": [muon_state, adamw_state]}``; learning rates may be schedules.
    ``learning_rate`` is mlx's name for ``lr_muon`` (default 0.02): MultiOptimizer's
    ``learning_rate`` property reads the Muon part's (and its setter sets both parts').

    Muon keyword arguments (``momentum``, ``nesterov``, ``weight_decay``, ``method``,
    ``ns_steps``, ``adjust_lr``, ``cautious_weight_decay``, ``backend``, ``ns_dtype``) are those
    of :class:`~fastmuon.mlx.Muon`; setting ``beta2`` makes it :class:`~fastmuon.mlx.NorMuon`
    (as in ``fastmuon.torch.MuonWithAdamW``). The AdamW is ``torch.optim.AdamW``'s rule
    (decoupled decay, bias correction; mlx's AdamW without bias correction by default) with
    ``adamw_betas`` (0.9, 0.95), ``adamw_eps`` 1e-10 and ``adamw_weight_decay`` 0, the defaults of
    ``fastmuon.torch.MuonWithAdamW``, and the same non-finite policy as Muon.
    """

    def __init__(
        self,
        lr_muon: Optional[LearningRate] = None,
        lr_adamw: LearningRate = ADAMW_DEFAULTS["lr"],
        *,
        learning_rate: Optional[LearningRate] = None,
        beta2: Optional[float] = None,
        adamw_betas: Tuple[float, float] = ADAMW_DEFAULTS["betas"],
        adamw_eps: float = ADAMW_DEFAULTS["eps"],
        adamw_weight_decay: float = ADAMW_DEFAULTS["weight_decay"],
        exclude: Iterable[str] = DEFAULT_EXCLUDE,
        filter: Optional[Callable[[str, mx.array], bool]] = None,
        **muon_kwargs,
    ):
        if lr_muon is not None and learning_rate is not None:
            raise ValueError("give lr_muon or learning_rate (its mlx name), not both")
        lr_muon = next((lr for lr in (lr_muon, learning_rate) if lr is not None), MUON_DEFAULTS["lr"])
        muon = Muon(lr_muon, **muon_kwargs) if beta2 is None else NorMuon(lr_muon, beta2=beta2, **muon_kwargs)
        adamw = _make_adamw(lr_adamw, adamw_betas, adamw_eps, adamw_weight_decay)
        exclude = tuple(exclude)
        self._muon_filter = filter if filter is not None else (lambda path, a: muon_filter(path, a, exclude))
        self._embedding_paths: Tuple[str, ...] = ()
        super().__init__([muon, adamw], [self._routes_to_muon])

    def _routes_to_muon(self, path: str, array: mx.array) -> bool:
        return not under(path, self._embedding_paths) and bool(self._muon_filter(path, array))

    def _prepare(self, leaves, parameters) -> None:
        if isinstance(parameters, nn.Module):
            self._embedding_paths = embedding_paths(parameters)

    @property
    def muon(self) -> Muon:
        return self.optimizers[0]

    @property
    def adamw(self) -> AdamW:
        return self.optimizers[1]


def _make_adamw(learning_rate, betas, eps, weight_decay) -> AdamW:
    _check_learning_rate(learning_rate)
    check_hyperparameters(lr=0.0, weight_decay=weight_decay)
    if len(betas) != 2:
        raise ValueError(f"AdamW betas must be a pair, got {betas!r}")
    return _FiniteAdamW(learning_rate, betas=list(betas), eps=eps, weight_decay=weight_decay, bias_correction=True)


class _NamedSplit(_CheckedMultiOptimizer):
    """MultiOptimizer([first, rest]) sending the parameters under the named modules to the first;
    raises if a step's gradients contain none of them (a misspelt name would otherwise silently
    hand the embedding to the second optimizer)."""

    def __init__(self, first, rest, names: Tuple[str, ...]):
        self.names = names
        super().__init__([first, rest], [lambda path, _: under(path, names)])

    def _prepare(self, leaves, parameters) -> None:
        if not any(under(path, self.names) for path, *_ in leaves):
            raise ValueError(
                f"no gradient under {', '.join(repr(n) for n in self.names)}; gradient paths "
                f"start with {sorted({path.split('.')[0] for path, *_ in leaves})}"
            )


def embedding_signsgd_with_adamw(
    learning_rate: LearningRate,
    embedding: Union[str, Sequence[str]],
    *,
    embedding_lr_ratio: float = 100.0,
    embedding_weight_decay: float = 0.1,
    sparse: bool = True,
    betas: Tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    weight_decay: float = 0.1,
) -> MultiOptimizer:
    """A two-optimizer set-up for models with a sparse embedding: :class:`SignSGD` for the named sparse embedding(s) at
    ``embedding_lr_ratio`` (100) times ``learning_rate``, AdamW with betas (0.9, 0.95) and weight
    decay 0.1 (bias-corrected, as ``torch.optim.AdamW``) for every other parameter.

    ``embedding`` is the module path of the embedding (``"tok_embeddings"``; ``"encoder.embed"``
    for a nested one), or several. A schedule for ``learning_rate`` drives both optimizers.

    Example::

        opt = embedding_signsgd_with_adamw(3e-4, "tok_embeddings")
        loss, grads = nn.value_and_grad(model, loss_fn)(model, x, y)
        opt.update(model, grads)
    """
    names = (embedding,) if isinstance(embedding, str) else tuple(embedding)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"embedding must name one or more modules, got {embedding!r}")
    if not (embedding_lr_ratio > 0):
        raise ValueError(f"embedding_lr_ratio must be > 0, got {embedding_lr_ratio!r}")
    if callable(learning_rate):
        schedule = learning_rate
        embedding_lr = lambda step: embedding_lr_ratio * schedule(step)  # noqa: E731
    else:
        _check_learning_rate(learning_rate)
        embedding_lr = embedding_lr_ratio * learning_rate
    signsgd = SignSGD(embedding_lr, weight_decay=embedding_weight_decay, sparse=sparse)
    adamw = _make_adamw(learning_rate, betas, eps, weight_decay)
    return _NamedSplit(signsgd, adamw, names)
