"""Muon, NorMuon and SignSGD as ``mlx.optimizers.Optimizer`` subclasses.

Semantics, defaults and errors follow ``fastmuon.torch`` (both use ``fastmuon._optim_rules``);
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

from typing import Callable, List, Optional, Tuple, Union

import mlx.core as mx
from mlx.optimizers import Optimizer
from mlx.utils import tree_map_with_path

from .._optim_rules import (
    NORMUON_EPS,
    check_hyperparameters,
    matrix_view,
    normuon_reduce_dim,
    normuon_state_shape,
    shape_scale,
)
from .._plan import check_backend, make_plan
from .orthogonalize import BACKENDS, orthogonalize

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
    return leaves


def _walk(grad, param, keys: tuple, out: list) -> None:
    path = ".".join(str(k) for k in keys)
    where = f"at {path!r}" if path else "at the root"
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


def _state_at(state: dict, keys: tuple) -> dict:
    for key in keys:
        state = state[key]
    return state


def _check_learning_rate(learning_rate) -> None:
    lr = float(learning_rate.item()) if isinstance(learning_rate, mx.array) else learning_rate
    check_hyperparameters(lr=lr)


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
        if not self._initialized or not all(_has_state(self.state, keys) for _, keys, _, _ in leaves):
            self.init(gradients)  # also adds state for parameters that join later
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

    with ``s = shape_scale(rows, cols, adjust_lr)`` of the orthogonalized matrix. With
    ``cautious_weight_decay`` the decay only touches entries where update and weight agree in
    sign: ``W <- W - eta lambda [O W >= 0] W - eta s O``.

    Differences from ``mlx.optimizers.Muon``: weight decay is decoupled (mlx adds
    ``wd * W`` to the gradient, an L2 penalty that then passes through momentum and
    orthogonalization, so its effect is scaled and rotated); the default is 0 (mlx: 0.01); the
    polynomial is Polar Express by default and its compute dtype fp32 on the CPU (mlx: Jordan's
    Newton-Schulz in the gradient dtype); 3-D weights are a batch of matrices (mlx flattens them
    to ``(E, a*b)``); 0-D/1-D parameters raise (route them to AdamW, see ``MuonWithAdamW``);
    same-shape matrices are orthogonalized in one batched call; everything after
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
        ns_dtype: compute dtype of the orthogonalization (default: orthogonalize's).
    """

    def __init__(
        self,
        learning_rate: LearningRate = 0.02,
        *,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        method: str = "polar_express",
        ns_steps: int = 5,
        adjust_lr: str = "original",
        cautious_weight_decay: bool = False,
        backend: str = "auto",
        ns_dtype: Optional[mx.Dtype] = None,
    ):
        _check_learning_rate(learning_rate)
        check_hyperparameters(
            lr=0.0, momentum=momentum, weight_decay=weight_decay, adjust_lr=adjust_lr, ns_steps=ns_steps
        )
        make_plan(method, ns_steps, None)
        check_backend(backend, BACKENDS)
        if ns_dtype is not None and not (
            isinstance(ns_dtype, mx.Dtype) and mx.issubdtype(ns_dtype, mx.floating)
        ):
            raise ValueError(f"ns_dtype must be None or a floating mlx dtype, got {ns_dtype!r}")
        super().__init__()
        self._maybe_schedule("learning_rate", learning_rate)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay)
        self.method = method
        self.ns_steps = int(ns_steps)
        self.adjust_lr = adjust_lr
        self.cautious_weight_decay = bool(cautious_weight_decay)
        self.backend = backend
        self.ns_dtype = ns_dtype

    def init_single(self, parameter: mx.array, state: dict):
        super().init_single(parameter, state)
        state["momentum"] = mx.zeros_like(parameter)

    def _check_leaves(self, leaves) -> None:
        for path, _, _, param in leaves:
            matrix_view(param.shape, path)

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict):
        """One parameter on its own (the optimizer itself batches; this is the same rule)."""
        return self._apply_all([("parameter", gradient, parameter, state)])[0]

    def _orthogonalize(self, U: mx.array) -> mx.array:
        return orthogonalize(
            U, method=self.method, steps=self.ns_steps, backend=self.backend, dtype=self.ns_dtype
        )

    def _apply_all(self, items) -> List[mx.array]:
        beta = self.momentum
        prepared = []
        groups: dict = {}
        for index, (path, grad, param, state) in enumerate(items):
            view = matrix_view(param.shape, path)
            self._check_state(path, param, state)
            G = grad.reshape(view)
            ok = mx.all(mx.isfinite(G))  # one flag per parameter, kept on the device
            G = mx.where(ok, G, mx.zeros_like(G))  # NaN/Inf never enter the arithmetic
            M_old = state["momentum"].reshape(view)
            M = beta * M_old + (1.0 - beta) * G
            U = (1.0 - beta) * G + beta * M if self.nesterov else M
            prepared.append((view, ok, M_old, M))
            groups.setdefault((view[1], view[2], U.dtype), []).append((index, U))

        orthogonal: dict = {}
        for members in groups.values():  # one batched call per matrix shape
            if len(members) == 1:
                index, U = members[0]
                orthogonal[index] = self._orthogonalize(U)
                continue
            O = self._orthogonalize(mx.concatenate([U for _, U in members], axis=0))
            sizes = [U.shape[0] for _, U in members]
            splits = [sum(sizes[: k + 1]) for k in range(len(sizes) - 1)]
            for (index, _), part in zip(members, mx.split(O, splits, axis=0)):
                orthogonal[index] = part

        out = []
        for index, (path, grad, param, state) in enumerate(items):
            view, ok, M_old, M = prepared[index]
            work = _work_dtype(param.dtype)
            O = self._transform(orthogonal[index].astype(work), ok, state)
            W = param.reshape(view).astype(work)
            lr = self._lr(work)
            step = (lr * shape_scale(view[1], view[2], self.adjust_lr)) * O
            if self.weight_decay == 0.0:
                W_new = W - step
            elif self.cautious_weight_decay:
                agree = (O * W) >= 0
                W_new = W - (lr * self.weight_decay) * mx.where(agree, W, mx.zeros_like(W)) - step
            else:
                W_new = W * (1.0 - lr * self.weight_decay) - step
            W_new = mx.where(ok, W_new, W).astype(param.dtype).reshape(param.shape)
            state["momentum"] = mx.where(ok, M, M_old).reshape(param.shape)
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

    def __init__(
        self,
        learning_rate: LearningRate = 0.02,
        *,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        method: str = "polar_express",
        ns_steps: int = 5,
        adjust_lr: str = "original",
        cautious_weight_decay: bool = False,
        backend: str = "auto",
        ns_dtype: Optional[mx.Dtype] = None,
        beta2: float = 0.95,
    ):
        check_hyperparameters(lr=0.0, beta2=beta2)
        super().__init__(
            learning_rate,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            method=method,
            ns_steps=ns_steps,
            adjust_lr=adjust_lr,
            cautious_weight_decay=cautious_weight_decay,
            backend=backend,
            ns_dtype=ns_dtype,
        )
        self.beta2 = float(beta2)

    def init_single(self, parameter: mx.array, state: dict):
        super().init_single(parameter, state)
        shape = normuon_state_shape(*matrix_view(parameter.shape))
        state["second_moment"] = mx.zeros(shape, dtype=_work_dtype(parameter.dtype))

    def _expected_state(self, param: mx.array) -> dict:
        return {**super()._expected_state(param), "second_moment": normuon_state_shape(*matrix_view(param.shape))}

    def _transform(self, O: mx.array, ok: mx.array, state: dict) -> mx.array:
        axis = normuon_reduce_dim(O.shape[-2], O.shape[-1])
        v_old = state["second_moment"]
        m = mx.mean(O * O, axis=axis, keepdims=True)
        v = (self.beta2 * v_old + (1.0 - self.beta2) * m).astype(v_old.dtype)
        state["second_moment"] = mx.where(ok, v, v_old)
        normalized = O / mx.sqrt(mx.maximum(v, NORMUON_EPS)).astype(O.dtype)
        norm = mx.sqrt(mx.sum(O * O, axis=(1, 2), keepdims=True))
        norm_normalized = mx.sqrt(mx.sum(normalized * normalized, axis=(1, 2), keepdims=True))
        tiny = mx.finfo(O.dtype).smallest_normal  # a zero O stays zero instead of 0/0
        return normalized * (norm / mx.maximum(norm_normalized, tiny))


class SignSGD(_TreeOptimizer):
    r"""Sign SGD with decoupled weight decay, for sparse embeddings (seed notes):

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
        W_new = W * (1.0 - lr * self.weight_decay) - lr * mx.sign(G).astype(work)
        if self.sparse:  # rows along axis 0 holding a non-zero entry (a 0-D one: itself)
            reduce_axes = tuple(range(1, parameter.ndim))
            touched = mx.any(G != 0, axis=reduce_axes, keepdims=True) if reduce_axes else G != 0
            W_new = mx.where(touched, W_new, W)
        state["skipped_steps"] = state["skipped_steps"] + (1 - ok.astype(mx.int32))
        return mx.where(ok, W_new, W).astype(parameter.dtype)
