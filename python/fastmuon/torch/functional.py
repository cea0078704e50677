"""The functional core of the torch optimizers: pure per-step update rules.

Each function takes tensors and hyperparameters and returns new tensors, except those whose
name ends in ``_``, which update their tensor arguments in place (``*_lists_``: list-wide
``torch._foreach_*`` versions of a rule for finite gradients, the same arithmetic op for op).
The Optimizer classes (``optimizers.py``) only gather tensors, call these, and commit the
results (or keep the old values where a gradient was not finite). The rules are written out in each docstring;
``fastmuon.mlx`` implements the same ones, so both frameworks give the same weights.

Matrix arguments named ``O``, ``s`` or ``W`` below are matrix views ``(batch, rows, cols)``
(see ``fastmuon.rules.matrix_view``); elementwise rules take any shape.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple, Union

import torch

from ..rules import NORMUON_EPS, normuon_reduce_dim
from .backends.reference import power_of_two_exponent


def muon_momentum(M: torch.Tensor, G: torch.Tensor, momentum: float, nesterov: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """EMA momentum and the tensor to orthogonalize.

    M' = beta M + (1 - beta) G; U = (1 - beta) G + beta M' with Nesterov, else U = M'.
    Returns (M', U). Written with lerp, as torch.optim.Muon does.
    """
    M_new = torch.lerp(M, G, 1.0 - momentum)
    return M_new, muon_lookahead(G, M_new, momentum, nesterov)


def muon_lookahead(G: torch.Tensor, M: torch.Tensor, momentum: float, nesterov: bool,
                   out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The tensor to orthogonalize from the gradient G and the new momentum M:
    (1 - beta) G + beta M with Nesterov, else M. With ``out`` (e.g. a slice of a stack, maybe in
    a narrower dtype) it is written there, without a temporary when the dtypes agree."""
    if out is None:
        return torch.lerp(G, M, momentum) if nesterov else M
    if not nesterov:
        return out.copy_(M)
    if out.dtype == M.dtype:
        return torch.lerp(G, M, momentum, out=out)
    return out.copy_(torch.lerp(G, M, momentum))


def muon_momentum_(M: torch.Tensor, grad: torch.Tensor, ok: torch.Tensor, momentum: float,
                   nesterov: bool) -> torch.Tensor:
    """``muon_momentum`` with M updated in place where ``ok`` (a 0-D bool): M <- M' there, M kept
    elsewhere (the gradient is replaced by M itself, and lerp(M, M, w) == M, bitwise but for -0.0,
    which becomes +0.0), so the step needs no copy of M. Returns U (M itself without Nesterov)."""
    G = torch.where(ok, grad.to(M.dtype), M)
    M.lerp_(G, 1.0 - momentum)
    return muon_lookahead(G, M, momentum, nesterov)


def muon_momentum_lists_(momenta: List[torch.Tensor], grads: List[torch.Tensor], momentum: float) -> None:
    """``muon_momentum_``'s M <- M' for a list of finite gradients, in one list-wide pass."""
    torch._foreach_lerp_(momenta, grads, 1.0 - momentum)


def muon_step_scalars(momentum: float, nesterov: bool, lr: float, weight_decay: float,
                      scale: float) -> Dict[str, Union[float, bool]]:
    """The scalars of ``muon_momentum_lists_``, ``muon_lookahead`` and ``decoupled_update_lists_``
    as the fused native step takes them (``fastmuon.torch.backends.native.muon_step``; the names are those
    of ``fastmuon::cpu::MuonParam``, csrc/cpu_kernels.h): the lerp weights 1 - beta and beta,
    Nesterov, whether weight decay is on, the decay factor and the update's alpha, each the same
    expression as in those rules, so the arithmetic is the same."""
    return {
        "momentum_weight": 1.0 - momentum,
        "lookahead_weight": momentum,
        "nesterov": nesterov,
        "decays": weight_decay != 0.0,
        "decay": 1.0 - lr * weight_decay,
        "step": -lr * scale,
    }


def decoupled_update_lists_(weights: List[torch.Tensor], updates: List[torch.Tensor], *, lr: float,
                            weight_decay: float, scale: float) -> None:
    """``decoupled_update`` (float lr, not cautious) of a list of weights, in place, list-wide;
    an update narrower than its weight widens exactly inside the add."""
    if weight_decay != 0.0:
        torch._foreach_mul_(weights, 1.0 - lr * weight_decay)
    torch._foreach_add_(weights, updates, alpha=-lr * scale)


def adamw_update_lists_(weights: List[torch.Tensor], grads: List[torch.Tensor], exp_avgs: List[torch.Tensor],
                        exp_avg_sqs: List[torch.Tensor], steps: List[torch.Tensor], *, lr: float,
                        betas: Tuple[float, float], eps: float, weight_decay: float) -> None:
    """``adamw_update`` of lists of fp32 weights and finite gradients, every tensor updated in
    place, op for op the same arithmetic (so bitwise the same results) in list-wide passes."""
    beta1, beta2 = betas
    torch._foreach_add_(steps, 1.0)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    squares = torch._foreach_mul(grads, grads)
    torch._foreach_mul_(squares, 1.0 - beta2)
    torch._foreach_add_(exp_avg_sqs, squares)
    corrections = []
    for beta in (beta1, beta2):  # 1 - beta^t, as -(beta^t) + 1 (the same rounding)
        c = torch._foreach_pow(beta, steps)
        torch._foreach_neg_(c)
        torch._foreach_add_(c, 1.0)
        corrections.append(c)
    bias_correction1, bias_correction2 = corrections
    torch._foreach_sqrt_(bias_correction2)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, bias_correction2)
    torch._foreach_add_(denoms, eps)
    torch._foreach_mul_(weights, 1.0 - lr * weight_decay)
    ratios = torch._foreach_div(exp_avgs, denoms)
    torch._foreach_mul_(ratios, [lr / c for c in bias_correction1])
    torch._foreach_sub_(weights, ratios)


def all_finite(tensors: List[torch.Tensor]) -> bool:
    """Whether every tensor is finite, read back to the host (meant for CPU tensors, where that
    costs nothing). A NaN or Inf makes its tensor's 2-norm non-finite; so does a finite tensor
    whose squares overflow, which errs on the safe side. The 2-norm is the fast list-wide one; the
    norms are summed on the host in double precision, where they cannot overflow (fewer ops than
    stacking them)."""
    return math.isfinite(sum(norm.item() for norm in torch._foreach_norm(tensors)))


def normuon_normalize(O: torch.Tensor, s: torch.Tensor, beta2: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """NorMuon's per-neuron normalization of an orthogonalized update ``O`` (batch, R, C).

    m = mean(O^2) over the smaller dimension (one value per row when R >= C, else per column);
    s' = beta2 s + (1 - beta2) m; O' = O / sqrt(max(s', NORMUON_EPS)), rescaled to O's Frobenius
    norm (per matrix). Computed in at least fp32, returned in O's and s's dtypes. A zero O gives
    zeros (the rescale divides by max(||O'||, tiny) only to avoid 0/0).
    Returns (O', s').
    """
    dim = normuon_reduce_dim(O.shape[-2], O.shape[-1])
    work = torch.promote_types(O.dtype, torch.float32)
    O32 = O.to(work)
    squares = O32 * O32
    # an empty view (a zero-length axis) has mean 0 here, not 0/0
    m = squares.mean(dim=dim, keepdim=True) if O.shape[dim] else squares.sum(dim=dim, keepdim=True)
    s_new = torch.lerp(s.to(work), m, 1.0 - beta2)
    normalized = O32 / s_new.clamp(min=NORMUON_EPS).sqrt()
    tiny = torch.finfo(work).tiny
    norm_before = torch.linalg.matrix_norm(O32, keepdim=True)
    norm_after = torch.linalg.matrix_norm(normalized, keepdim=True).clamp(min=tiny)
    return (normalized * (norm_before / norm_after)).to(O.dtype), s_new.to(s.dtype)


def decoupled_update(
    W: torch.Tensor, O: torch.Tensor, *, lr: float, weight_decay: float, scale: float, cautious: bool
) -> torch.Tensor:
    """W (1 - lr wd) - lr scale O, decoupled weight decay.

    With ``cautious`` the decay applies only where update and weight agree in sign,
    mask = (O * W) >= 0: W - lr wd mask W - lr scale O.
    """
    if isinstance(lr, torch.Tensor):  # a Tensor lr (schedulers without recompiles): tensor arithmetic
        step = O * (lr * scale)
        if weight_decay == 0.0:
            return W - step
        if cautious:
            return W - (lr * weight_decay) * (O * W >= 0).to(W.dtype) * W - step
        return W * (1.0 - lr * weight_decay) - step
    if weight_decay == 0.0:
        return W.add(O, alpha=-lr * scale)
    if cautious:
        mask = (O * W >= 0).to(W.dtype)
        return W.addcmul(mask, W, value=-lr * weight_decay).add_(O, alpha=-lr * scale)
    return W.mul(1.0 - lr * weight_decay).add_(O, alpha=-lr * scale)


def normalize_rows(W: torch.Tensor) -> torch.Tensor:
    """Each row (last axis) scaled to unit Euclidean norm; zero rows stay zero. Rows are first
    divided by a power of two near their largest entry, so that squares neither underflow (rows
    of 1e-30 came out with norms of 1e14) nor overflow."""
    if W.shape[-1] == 0:  # no entries: nothing to scale (amax has no empty reduction)
        return W.clone()
    peak = W.detach().abs().amax(dim=-1, keepdim=True)
    W = W / torch.exp2(power_of_two_exponent(peak))  # exact; |W| < 2 after it
    norm = torch.linalg.vector_norm(W, dim=-1, keepdim=True)
    return W / norm.clamp(min=torch.finfo(norm.dtype).tiny)


def sphere_project_update(W: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """nGPT retraction: step W - D, then put each row back on the unit sphere."""
    return normalize_rows(W - D)


def sphere_geodesic_update(W: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Move each row w of W along the great circle in the direction of -D.

    w is first normalized; D_t = D - (D . w) w is the part of the step tangent to the sphere at
    w; with theta = ||D_t|| (the arc length equals the length of the tangent step, so for small
    steps this agrees with the retraction to first order):
        w' = w cos(theta) - (D_t / theta) sin(theta)
    which stays on the sphere up to rounding. Rows with D_t = 0 stay where they are.
    """
    w = normalize_rows(W)
    D_t = D - (D * w).sum(dim=-1, keepdim=True) * w
    theta = torch.linalg.vector_norm(D_t, dim=-1, keepdim=True)
    # sin(theta) / theta == sinc(theta / pi), and sinc(0) == 1 needs no special case.
    return w * torch.cos(theta) - D_t * torch.sinc(theta / math.pi)


def adamw_update(
    W: torch.Tensor,
    G: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: torch.Tensor,
    *,
    lr: float,
    betas: Tuple[float, float],
    eps: float,
    weight_decay: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One AdamW step (decoupled decay, bias-corrected moments), as torch.optim.AdamW.

    ``step`` is a 0-D tensor (steps taken before this one); the bias corrections are computed
    from it with tensor ops, so no value is read back to the host.
    Returns (W', exp_avg', exp_avg_sq', step').
    """
    beta1, beta2 = betas
    step = step + 1
    exp_avg = torch.lerp(exp_avg, G, 1.0 - beta1)
    # v beta2 + (1 - beta2) G^2 as separate products and a sum (torch.optim.AdamW's addcmul
    # rounds once or twice depending on the CPU's kernel, and torch.compile decomposes it into an
    # fma: compiled and eager steps then drifted apart by an ulp a step)
    exp_avg_sq = exp_avg_sq.mul(beta2).add_(G.mul(G).mul_(1.0 - beta2))
    # The corrections in at least fp32, and in float64 for float64 weights.
    t = step.to(torch.promote_types(W.dtype, torch.float32))
    bias_correction1 = 1.0 - torch.pow(beta1, t)
    bias_correction2 = 1.0 - torch.pow(beta2, t)
    denom = (exp_avg_sq.sqrt() / bias_correction2.sqrt()).add_(eps)
    W = W.mul(1.0 - lr * weight_decay)
    W = W - (lr / bias_correction1) * (exp_avg / denom)
    return W, exp_avg, exp_avg_sq, step


def signsgd_update(W: torch.Tensor, G: torch.Tensor, *, lr: float, weight_decay: float) -> torch.Tensor:
    """W (1 - lr wd) - lr sign(G)."""
    if isinstance(lr, torch.Tensor):
        return W * (1.0 - lr * weight_decay) - lr * torch.sign(G)
    return W.mul(1.0 - lr * weight_decay).add_(torch.sign(G), alpha=-lr)


def rows_touched(G: torch.Tensor) -> torch.Tensor:
    """Boolean mask, broadcastable against G, of the rows (index along dim 0) holding any
    non-zero entry. A row containing a NaN counts as touched."""
    if G.ndim == 0:
        return G != 0
    flat = G.reshape(G.shape[0], math.prod(G.shape[1:]))  # also for empty rows, where -1 is ambiguous
    touched = (flat != 0).any(dim=1)
    return touched.reshape((G.shape[0],) + (1,) * (G.ndim - 1))
