"""Preconditioned sharpness of Adam-type optimisers: the analogue of lr * lambda_max for SGD.

Adam's step is -lr * m_hat / (sqrt(v_hat) + eps), i.e. preconditioned gradient descent with
P = diag(sqrt(v_hat) + eps). Cohen et al. (2022, "Adaptive gradient methods at the edge of
stability") show that full-batch Adam is stable on a quadratic only while
lambda_max(P^-1 H) < (2 + 2 beta1) / ((1 - beta1) lr), i.e. 38/lr for beta1 = 0.9, and that
training hovers at that edge. lambda_max(P^-1 H) equals that of the symmetric
P^-1/2 H P^-1/2, which Lanczos gets from Hessian-vector products.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from optdoctor.curvature.hvp import hvp_operator
from optdoctor.curvature.lanczos import lanczos

ADAM_LIKE = ("adam", "adamw", "nadam", "radam", "adamax")


def adam_stability_factor(beta1: float) -> float:
    """(2 + 2 beta1) / (1 - beta1): lr * lambda_max(P^-1 H) above it is unstable (38 for 0.9)."""
    return (2.0 + 2.0 * beta1) / (1.0 - beta1)


def preconditioner(model: nn.Module, optimizer: torch.optim.Optimizer, names: list[str]) -> tuple[torch.Tensor, float] | None:
    """diag(sqrt(v_hat) + eps) as a flat vector in the Hessian operator's layout, and beta1;
    None before the first step (no second-moment estimate yet) or for another optimiser."""
    if type(optimizer).__name__.lower() not in ADAM_LIKE:
        return None
    params = dict(model.named_parameters())
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    parts, beta1 = [], None
    for name in names:
        p = params[name]
        state, group = optimizer.state.get(p, {}), group_of.get(id(p))
        if group is None or "exp_avg_sq" not in state:
            return None
        b1, b2 = group["betas"]
        step = float(state["step"])
        v_hat = state["exp_avg_sq"] / (1.0 - b2**step)
        parts.append((v_hat.sqrt() + group["eps"]).reshape(-1))
        beta1 = b1
    if not parts:
        return None
    return torch.cat(parts), float(beta1)


def preconditioned_sharpness(model: nn.Module, loss_fn: Callable[[Any, Any], torch.Tensor], batch: Any,
                             optimizer: torch.optim.Optimizer, *, max_iter: int = 20, tol: float = 1e-3,
                             seed: int = 0) -> tuple[float, float] | None:
    """(lambda_max(P^-1 H), beta1), or None when not applicable (see ``preconditioner``)."""
    hvp, n = hvp_operator(model, loss_fn, batch)
    if n == 0 or not hvp.finite:
        return None
    pre = preconditioner(model, optimizer, hvp.names)
    if pre is None:
        return None
    d, beta1 = pre
    s = d.to(hvp.dtype).rsqrt()  # P^-1/2
    gen = torch.Generator().manual_seed(seed)
    v0 = torch.randn(n, generator=gen, dtype=hvp.dtype).to(hvp.device)
    run = lanczos(lambda v: s * hvp(s * v), v0, max_iter=max_iter, k=1, tol=tol)
    theta, _ = run.ritz()
    return float(max(theta)), beta1
