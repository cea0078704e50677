"""How one parameter steps, as both frameworks' ``explain()`` report it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class Route:
    """How one parameter steps: ``explain()`` of the Muon optimizers returns one per parameter
    with a gradient, in the order they step.

    strategy: "local" (one process), "replicated" (data parallel: each rank orthogonalizes a
        share of the stacks) or "sharded" (torch DTensor parameters: FSDP2, HSDP, tensor
        parallel; ``why`` says whether by owner all-to-all, in place or gathered).
    impl: "fused", "foreach" or "per_parameter" (``fastmuon.rules.IMPLS``).
    backend: what orthogonalizes it ("native", "reference", "triton", "metal"; "" where
        nothing is orthogonalized: AdamW, and 0-D/1-D parameters of MLX's Muon).
    compute_dtype: of its orthogonalization (AdamW: the weight's dtype).
    call: which orthogonalization call of the step it shares (None for AdamW).
    stack: which stack of that call holds it (None for AdamW).
    stack_shape: (matrices, rows, cols) of that stack (None for AdamW).
    why: the reasons for impl and backend.
    method: the iteration its matrices run: the optimizer's ``method``, with "auto" resolved for
        the matrix shape ("aol" or "polar_express", ``fastmuon.plan.Plan.for_shape``); "" where
        nothing is orthogonalized.
    """

    name: str
    kind: str  # "muon" or "adamw"
    strategy: str
    impl: str
    backend: str
    compute_dtype: str
    call: Optional[int]
    stack: Optional[int]
    stack_shape: Optional[Tuple[int, int, int]]
    why: str
    method: str = ""
