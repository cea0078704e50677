"""Muon's options, for both frameworks: one frozen dataclass (``MuonOptions``) whose fields are
every option, with its default, and whose ``check`` validates them all, type and range, naming the
option at fault. ``fastmuon.torch`` keeps them in its param groups (dicts, as every torch
optimizer does) and checks each group through it; ``fastmuon.mlx`` holds one per optimizer.

An option a framework does not support is refused here too (``check(framework=...)``), so the
two cannot drift apart silently.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Tuple

from .plan import Plan, check_backend, make_plan
from .rules import ADJUST_LR, SPHERE_MODES, is_real

# How a Muon step is carried out ("auto": the fastest that applies; each optimizer's
# ``explain()`` says which one a parameter took and why). torch has all three: "fused" (the
# whole step in one native call: CPU, fp32), "foreach" (list-wide torch passes: CPU, eager) and
# "per_parameter" (any device, dtype and option; what torch.compile traces). MLX has "fused"
# (one native primitive: CPU, fp32) and "per_parameter" (mx.compile fuses it).
IMPLS = ("auto", "fused", "foreach", "per_parameter")
MLX_IMPLS = ("auto", "fused", "per_parameter")


@dataclass(frozen=True)
class MuonOptions:
    """Every Muon option and its default (``lr`` is "learning_rate" in MLX; ``ns_dtype`` None
    means orthogonalize's default compute dtype)."""

    lr: Any = 0.02
    momentum: float = 0.95
    nesterov: bool = True
    weight_decay: float = 0.0
    method: str = "auto"
    ns_steps: int = 5
    adjust_lr: str = "original"
    cautious_weight_decay: bool = False
    backend: str = "auto"
    ns_dtype: Any = None
    impl: str = "auto"
    # NorMuon's second-moment decay (None: plain Muon)
    beta2: Optional[float] = None
    # nGPT's unit-norm rows: None, "project" or "geodesic" (torch only)
    sphere: Optional[str] = None
    # torch.optim.Muon's: one (a, b, c) for every Newton-Schulz step
    ns_coefficients: Optional[Tuple[float, float, float]] = None
    # the normalization's epsilon (None: the method's)
    eps: Optional[float] = None
    # weights stored (in, out), as HF's Conv1D: the lr shape scale reads them the other way round
    transposed: bool = False
    # accept 3-D stacks and 4-D conv weights (torch; MLX always does)
    allow_nd: bool = False

    @classmethod
    def names(cls) -> Tuple[str, ...]:
        return _NAMES

    @classmethod
    def from_mapping(cls, given: Mapping[str, Any]) -> "MuonOptions":
        """The options in ``given`` (a torch param group: its other keys are ignored)."""
        return cls(**{name: given[name] for name in _NAMES if name in given})

    def check(self, backends: Sequence[str], impls: Sequence[str] = IMPLS, framework: str = "torch",
              where: str = "") -> "MuonOptions":
        """Raise ValueError naming the first bad option (``lr`` and ``ns_dtype`` are checked by
        the framework, which knows its tensors and dtypes); ``where`` (e.g. ``"param_groups[1]"``)
        follows the name in the message."""
        def label(name: str) -> str:
            return f"{name} ({where})" if where else name

        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"{label(name)} must be {expected}, got {getattr(self, name)!r}")

        if not is_real(self.momentum) or not 0.0 <= self.momentum < 1.0:
            raise bad("momentum", "a number in [0, 1)")
        if not _flag(self.nesterov):
            raise bad("nesterov", "True or False")
        if not is_real(self.weight_decay) or not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise bad("weight_decay", "a finite number >= 0")
        if isinstance(self.ns_steps, bool) or not isinstance(self.ns_steps, numbers.Integral) or self.ns_steps < 1:
            raise bad("ns_steps", "an int >= 1")
        if self.adjust_lr not in ADJUST_LR:
            raise ValueError(f"Adjust learning rate function {self.adjust_lr} is not supported: {label('adjust_lr')} "
                             f"must be one of {', '.join(ADJUST_LR)}, got {self.adjust_lr!r}")
        if not _flag(self.cautious_weight_decay):
            raise bad("cautious_weight_decay", "True or False")
        check_impl(self.impl, impls, where)
        if self.beta2 is not None and (not is_real(self.beta2) or not 0.0 <= self.beta2 < 1.0):
            raise bad("beta2", "a number in [0, 1)")
        if self.sphere not in SPHERE_MODES:
            raise bad("sphere", "one of None, 'project', 'geodesic'")
        if self.sphere is not None:
            if framework != "torch":
                raise ValueError(f"{label('sphere')}={self.sphere!r} is not supported by fastmuon.{framework} "
                                 "(fastmuon.torch only)")
            if self.weight_decay != 0:
                raise ValueError(f"{label('weight_decay')} must be 0 with sphere={self.sphere!r} (rows are kept at "
                                 f"unit norm, so a decay would only be undone), got {self.weight_decay!r}")
        if not _flag(self.transposed):
            raise bad("transposed", "True or False")
        if not _flag(self.allow_nd):
            raise bad("allow_nd", "True or False")
        if framework != "torch" and self.allow_nd is False:
            raise ValueError(f"{label('allow_nd')}=False is not supported by fastmuon.{framework}: its Muon always "
                             "takes 3-D and 4-D weights (and 0-D/1-D ones, with the momentum step)")
        if self.ns_coefficients is not None:
            coefficients = self.ns_coefficients
            if not (isinstance(coefficients, (tuple, list)) and len(coefficients) == 3
                    and all(is_real(c) for c in coefficients)):
                raise bad("ns_coefficients", "one (a, b, c) of numbers")
            if self.method != "newton_schulz":
                raise ValueError(f"{label('ns_coefficients')} sets Newton-Schulz's coefficients; method={self.method!r} "
                                 "has its own (leave ns_coefficients at None, or use method='newton_schulz')")
        self.plan()  # method, steps, coefficients, eps
        check_backend(self.backend, backends)
        return self

    def orthogonalize_kwargs(self) -> dict:
        """The polynomial iteration as ``orthogonalize`` takes it (method, steps, coefficients,
        eps)."""
        return orthogonalize_kwargs(self.method, self.ns_steps, self.ns_coefficients, self.eps)

    def plan(self) -> Plan:
        return make_plan(**self.orthogonalize_kwargs())


_NAMES = tuple(f.name for f in dataclasses.fields(MuonOptions))


def orthogonalize_kwargs(method: str, ns_steps: int, ns_coefficients, eps) -> dict:
    """Muon's iteration options as ``orthogonalize`` takes them (method, steps, coefficients,
    eps): ``ns_coefficients``, one (a, b, c), repeats for every step. A plain function, so that
    a step traced by torch.compile calls it without building a MuonOptions."""
    coefficients = None if ns_coefficients is None else [tuple(ns_coefficients)] * ns_steps
    return dict(method=method, steps=ns_steps, coefficients=coefficients, eps=eps)


def check_impl(impl, valid: Sequence[str] = IMPLS, where: str = "") -> str:
    """Raise ValueError unless ``impl`` is one of ``valid`` (a framework's implementations);
    ``where`` as for ``MuonOptions.check``."""
    if not (isinstance(impl, str) and impl in valid):
        others = [name for name in IMPLS if name not in valid]
        hint = f" ({', '.join(others)}: torch only)" if impl in others else ""
        label = f"impl ({where})" if where else "impl"
        raise ValueError(f"{label} must be one of {', '.join(map(repr, valid))}, got {impl!r}{hint}")
    return impl


def _flag(value) -> bool:
    return type(value).__name__ in ("bool", "bool_")


_DEFAULTS = MuonOptions()
# The core options and their defaults (the keyword arguments of every Muon constructor).
MUON_DEFAULTS = {name: getattr(_DEFAULTS, name) for name in MuonOptions.names()[:11]}
# The options a torch param group holds besides MUON_DEFAULTS.
GROUP_EXTRAS = {name: getattr(_DEFAULTS, name) for name in MuonOptions.names()[11:]}
# The options that decide how a matrix is orthogonalized: matrices are stacked only when these agree.
ORTHOGONALIZE_KEYS = ("method", "ns_steps", "backend", "ns_dtype", "ns_coefficients", "eps")


def muon_options(given: dict, extra: Sequence[str] = ()) -> dict:
    """MUON_DEFAULTS updated with ``given``; a name that is neither a Muon option nor in
    ``extra`` raises TypeError naming it (as a misspelt keyword argument would)."""
    allowed = set(MUON_DEFAULTS) | set(extra)
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise TypeError(
            f"unexpected Muon option(s) {', '.join(map(repr, unknown))}; valid: {', '.join(sorted(allowed))}"
        )
    return {**MUON_DEFAULTS, **given}
