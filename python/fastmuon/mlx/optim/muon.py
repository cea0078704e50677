"""Muon, NorMuon and MuonWithAdamW as ``mlx.optimizers.Optimizer`` subclasses, thin classes
over ``functional.py`` (the step: ``local.py``; its plan and ``explain``: ``pipeline.py``).

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

from typing import Callable, Iterable, List, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn
from mlx.optimizers import AdamW

from ...plan import check_compute_bits
from ...options import MLX_IMPLS, MUON_DEFAULTS, MuonOptions, orthogonalize_kwargs
from ...rules import ADAMW_DEFAULTS, DEFAULT_EXCLUDE, NORMUON_BETA2, check_hyperparameters, matrix_view, normuon_state_shape
from ..functional import normuon_normalize
from ..orthogonalize import BACKENDS, dtype_name, orthogonalize
from ..routing import embedding_paths, muon_filter, under
from .adamw import make_adamw
from ...route import Route
from .base import (
    CheckedMultiOptimizer,
    LearningRate,
    TreeOptimizer,
    check_gradient_tree,
    check_learning_rate,
    update_view,
    work_dtype,
)
from .distributed import share_out
from .local import step
from .pipeline import explain_routes

__all__ = ["Muon", "NorMuon", "MuonWithAdamW"]


class Muon(TreeOptimizer):
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
    iteration is ``method="auto"`` by default (AOL in Gram space on large wide or tall matrices,
    Polar Express on the others) and its compute dtype fp32 on the CPU (mlx: Jordan's
    Newton-Schulz in the gradient dtype); 3-D weights are a batch of matrices (mlx flattens them
    to ``(E, a*b)``); same-shape matrices are orthogonalized in one batched call; everything after
    ``learning_rate`` is keyword-only, since mlx orders (weight_decay, nesterov) the other way.

    State per parameter: ``momentum`` (the shape and dtype of the first gradient, from which mlx's
    optimizers create their state: float32 gradients on float64 weights give a float32 momentum)
    and ``skipped_steps``.

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
        ns_coefficients: one (a, b, c) for every step: Newton-Schulz with these coefficients
            (``method="newton_schulz"``), as in torch.optim.Muon and ``fastmuon.torch.Muon``.
        eps: the normalization's epsilon, X / (||X||_F * scale + eps); default the method's.
        impl: "auto" (default), "fused" or "per_parameter". "fused" runs the whole step of
            every float32 or bfloat16 matrix parameter as one native primitive (plain Muon on the native
            backend, one process; bitwise the results of "per_parameter"); "auto" takes it
            wherever it can, "per_parameter" (MLX ops around batched orthogonalizations;
            mx.compile fuses them) elsewhere. torch's "foreach" is refused.
            ``explain(gradients)`` says how each parameter steps and why.
        sphere: torch only (``fastmuon.torch.Muon``); any value but None is refused here.
        allow_nd: MLX's Muon always takes 3-D and 4-D weights (and 0-D/1-D ones): True (the
            default) is accepted for parity with ``fastmuon.torch``, False is refused.
        distributed: None (default) shares the orthogonalization over the ``mx.distributed``
            group when one of size > 1 is initialized (each process orthogonalizes its share of
            the stacks, one all_gather per dtype); False never; True requires it.
            Gradients must already be averaged (``mlx.nn.average_gradients``), so that every
            process holds the same ones; weights then equal one process's.
    """

    # Why this optimizer's parameters cannot take the fused step (None: they may).
    fused_refusal: Optional[str] = None

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
        ns_coefficients: Optional[Tuple[float, float, float]] = None,
        eps: Optional[float] = None,
        impl: str = MUON_DEFAULTS["impl"],
        sphere: Optional[str] = None,
        allow_nd: bool = True,
        distributed: Optional[bool] = None,
    ):
        check_learning_rate(learning_rate)
        if distributed not in (None, True, False):
            raise ValueError(f"distributed must be None, True or False, got {distributed!r}")
        if ns_coefficients is not None and method == MUON_DEFAULTS["method"]:
            method = "newton_schulz"  # torch.optim.Muon's meaning: Newton-Schulz with these
        checked = MuonOptions(
            momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, method=method, ns_steps=ns_steps,
            adjust_lr=adjust_lr, cautious_weight_decay=cautious_weight_decay, backend=backend, ns_dtype=ns_dtype,
            impl=impl, ns_coefficients=None if ns_coefficients is None else tuple(ns_coefficients), eps=eps,
            sphere=sphere, allow_nd=allow_nd,
        ).check(BACKENDS, MLX_IMPLS, "mlx")
        options = {name: getattr(checked, name) for name in MUON_DEFAULTS}
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
        self.ns_coefficients, self.eps = checked.ns_coefficients, checked.eps
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

    def explain(self, gradients, parameters=None) -> List[Route]:
        """How ``update``/``apply_gradients`` with these gradients steps each parameter: a
        :class:`~fastmuon.route.Route` per gradient leaf, in order (strategy, implementation,
        backend, compute dtype, orthogonalization call, and why). Changes nothing."""
        leaves = check_gradient_tree(gradients, gradients if parameters is None else parameters)
        self._check_leaves(leaves)
        return explain_routes(self, leaves, "local" if self._world() is None else "replicated")

    def _orthogonalize_stacks(self, stacks: List[mx.array]) -> List[mx.array]:
        """Orthogonalize one step's (n, rows, cols) stacks: here, or shared out over the
        mx.distributed group (``distributed.share_out``)."""
        group = self._world()
        if group is None:
            return [self._orthogonalize(U) for U in stacks]
        return share_out(stacks, group, self._orthogonalize)

    def init_single(self, parameter: mx.array, state: dict):
        super().init_single(parameter, state)
        state["momentum"] = mx.zeros_like(parameter)

    def _check_leaves(self, leaves) -> None:
        for path, _, _, param in leaves:
            update_view(param.shape, path)

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict):
        """One parameter on its own (the optimizer itself batches; this is the same rule)."""
        return self._apply_all([("parameter", gradient, parameter, state)])[0]

    def _iteration(self) -> dict:
        """The polynomial iteration as ``orthogonalize`` and ``make_plan`` take it (method,
        steps, coefficients, eps)."""
        return orthogonalize_kwargs(self.method, self.ns_steps, self.ns_coefficients, self.eps)

    def _orthogonalize(self, U: mx.array) -> mx.array:
        return orthogonalize(U, **self._iteration(), backend=self.backend, dtype=self.ns_dtype)

    def _apply_all(self, items) -> List[mx.array]:
        return step(self, items, self._world() is not None)

    def _expected_state(self, param: mx.array) -> dict:
        return {"momentum": param.shape}

    def _check_state(self, path: str, param: mx.array, state: dict) -> None:
        """A loaded state must be this optimizer's: the algorithm is the optimizer's, so a state
        saved by another kind (NorMuon's second moment into Muon, or the reverse) is refused
        by name rather than stepped with part of its state ignored or missing."""
        expected = self._expected_state(param)
        kind = type(self).__name__
        for key in state:
            if key not in expected and key != "skipped_steps":
                raise ValueError(f"optimizer state of {path!r} has {key!r}, which {kind} does not keep; was it saved "
                                 "by another optimizer (NorMuon keeps 'second_moment', Muon does not)?")
        for key, shape in expected.items():
            if key not in state:
                raise ValueError(f"optimizer state of {path!r} has no {key!r}, which {kind} keeps; was it saved by "
                                 "another optimizer (NorMuon keeps 'second_moment', Muon does not)?")
            if state[key].shape != tuple(shape):
                raise ValueError(
                    f"optimizer state {key!r} of {path!r} has shape {state[key].shape}, expected {tuple(shape)} "
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

    fused_refusal = "NorMuon normalizes between the orthogonalization and the update"

    def __init__(self, learning_rate: LearningRate = MUON_DEFAULTS["lr"], *, beta2: float = NORMUON_BETA2, **options):
        if beta2 is None:  # None would make this plain Muon (torch's NorMuon refuses it too)
            raise ValueError("beta2 must be in [0, 1), got None")
        check_hyperparameters(lr=0.0, beta2=beta2)
        super().__init__(learning_rate, **options)
        self.beta2 = float(beta2)

    def init_single(self, parameter: mx.array, state: dict):
        super().init_single(parameter, state)
        if parameter.ndim < 2:
            return
        shape = normuon_state_shape(*matrix_view(parameter.shape))
        state["second_moment"] = mx.zeros(shape, dtype=work_dtype(parameter.dtype))

    def _expected_state(self, param: mx.array) -> dict:
        if param.ndim < 2:  # no matrix, no per-neuron moment
            return super()._expected_state(param)
        return {**super()._expected_state(param), "second_moment": normuon_state_shape(*matrix_view(param.shape))}

    def _transform(self, O: mx.array, ok: mx.array, state: dict) -> mx.array:
        v_old = state["second_moment"]
        O, v = normuon_normalize(O, v_old, self.beta2)
        state["second_moment"] = mx.where(ok, v, v_old)
        return O


class MuonWithAdamW(CheckedMultiOptimizer):
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
        adamw = make_adamw(lr_adamw, adamw_betas, adamw_eps, adamw_weight_decay, prefix="adamw_")
        exclude = tuple(exclude)
        self._muon_filter = filter if filter is not None else (lambda path, a: muon_filter(path, a, exclude))
        self._embedding_paths: Tuple[str, ...] = ()
        super().__init__([muon, adamw], [self._routes_to_muon])

    def _routes_to_muon(self, path: str, array: mx.array) -> bool:
        return not under(path, self._embedding_paths) and bool(self._muon_filter(path, array))

    def _prepare(self, leaves, parameters) -> None:
        if isinstance(parameters, nn.Module):
            self._embedding_paths = embedding_paths(parameters)

    def explain(self, gradients, parameters=None) -> List[Route]:
        """``Muon.explain`` for the Muon part's parameters, then a Route (kind "adamw") for each
        of the AdamW part's. Changes nothing."""
        leaves = check_gradient_tree(gradients, gradients if parameters is None else parameters)
        self._prepare(leaves, parameters)
        muon_part, adamw_part = self._split_dictionary(gradients)
        routes = self.muon.explain(muon_part, parameters)
        for path, _, _, param in check_gradient_tree(adamw_part, adamw_part):
            routes.append(Route(path, "adamw", routes[0].strategy if routes else "local", "per_parameter", "",
                                dtype_name(param.dtype), None, None, None,
                                "mlx's AdamW, parameter by parameter"))
        return routes

    @property
    def muon(self) -> Muon:
        return self.optimizers[0]

    @property
    def adamw(self) -> AdamW:
        return self.optimizers[1]


