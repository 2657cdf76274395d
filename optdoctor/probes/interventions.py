"""Remedies that act inside a probe's training loop, each a probe setting that is off by default
(``probe.perturb_gd``, ``probe.negative_curvature_step``) so that a rule's remedy can patch it
in and ``--verify`` can measure it.

Both ride on the optimizer as a step post-hook registered *before* the instruments attach: it
runs after the optimizer's update and before the instruments' own post-hook, so the weights it
moves count in that step's update ratio, and its extra forward passes happen before the
instruments arm their module hooks for the next training forward pass. What they did is kept
as plain records (``records``) that the runner writes into the trace's metadata.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from optdoctor.probes.setup import fraction_steps

# A negative-curvature step takes the shortest length (of those tried) that buys at least this
# share of the best decrease found along the eigenvector.
SHARE_OF_BEST = 0.5


def _trainable(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad and p.is_floating_point()]


def ball_kick(params: list[torch.Tensor], radius: float, gen: torch.Generator) -> float:
    """Add a draw from the uniform distribution on the ball of ``radius`` (all ``params`` as one
    flat vector; Jin et al. 2017) in place; returns the kick's norm."""
    noise = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    norm = math.sqrt(sum(float(n.pow(2).sum()) for n in noise)) or 1.0
    d = sum(p.numel() for p in params)
    r = radius * float(torch.rand((), generator=gen, dtype=torch.float64)) ** (1.0 / max(d, 1))
    with torch.no_grad():
        for p, n in zip(params, noise):
            p.add_((n * (r / norm)).to(p.device))
    return r


class PerturbedGD:
    """Perturbed gradient descent (Jin, Ge, Netrapalli, Kakade & Jordan 2017, Algorithm 2): after
    a step whose gradient norm was below ``threshold``, and at least ``interval`` steps after the
    previous kick, add a uniform draw from the ball of ``radius``. (Jin et al. kick before the
    gradient step; kicking after it is the same sequence shifted by half a step.)"""

    def __init__(self, cfg: Any, model: nn.Module, seed: int):
        self.cfg, self.model = cfg, model
        self.gen = torch.Generator().manual_seed(seed + 104729)
        self.step = 0
        self.last = -math.inf
        self.records: list[dict] = []

    def __call__(self, _opt, _args, _kwargs) -> None:
        self.step += 1
        params = _trainable(self.model)
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        gnorm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        if gnorm < self.cfg.threshold and self.step - self.last >= self.cfg.interval:
            r = ball_kick(params, self.cfg.radius, self.gen)
            self.last = self.step
            self.records.append({"step": self.step, "grad_norm": gnorm, "radius": r})


class NegativeCurvatureStep:
    """After the configured steps, find the Hessian's smallest eigenvalue and its eigenvector by
    Lanczos (``curvature``, on the Hessian batch); when lambda_min < 0, step along the eigenvector
    (signed to go downhill to first order: g.v <= 0) by the shortest of ``radius * 2^k`` that buys
    at least half the best decrease on that batch, if any lowers its loss. Along v the loss is f + eta g.v + eta^2 lambda_min / 2 + O(eta^3):
    every length is a descent to second order, the search picks how far the cubic terms allow."""

    def __init__(self, cfg: Any, steps: int, model: nn.Module, loss_fn: Callable, batch: Any, seed: int):
        self.cfg, self.model, self.loss_fn, self.batch, self.seed = cfg, model, loss_fn, batch, seed
        self.at = {max(1, s) for s in fraction_steps(cfg.at, steps)}
        self.step = 0
        self.records: list[dict] = []

    def __call__(self, opt, _args, _kwargs) -> None:
        self.step += 1
        if self.step in self.at:
            lr = opt.param_groups[0]["lr"] if isinstance(opt, torch.optim.SGD) else None  # adaptive steps: no such check
            self.records.append(dict(step=self.step, **negative_curvature_step(
                self.model, self.loss_fn, self.batch, radius=self.cfg.radius, doublings=self.cfg.doublings,
                max_iter=self.cfg.max_iter, seed=self.seed + self.step, lr=lr)))


def negative_curvature_step(model: nn.Module, loss_fn: Callable, batch: Any, *, radius: float = 0.05,
                            doublings: int = 8, max_iter: int = 40, seed: int = 0, lr: float | None = None) -> dict[str, float | str]:
    """One step along the most negative curvature direction of ``loss_fn(model(X), y)`` on
    ``batch`` (in place; ``X`` as the curvature instruments take it: a tensor, or bound to the
    model, ``probes.batches.Call``). Returns what it found and did: lambda_min, lambda_max, the step length
    ``eta`` (0 when it did not move) and the batch loss before and after. ``lr``: a plain-SGD
    learning rate that must stay stable where the step lands (a trial gradient step from there
    must not raise the loss): leaving a saddle grows the weights, and with them the curvature."""
    import numpy as np

    from optdoctor.curvature.hvp import eval_mode, hvp_operator, split_batch
    from optdoctor.curvature.lanczos import lanczos
    from optdoctor.probes.batches import call_model

    with torch.random.fork_rng(devices=[]), torch.enable_grad():  # a step post-hook may run under no_grad
        op, n = hvp_operator(model, loss_fn, batch)
        out: dict[str, float | str] = {"loss_before": op.loss, "loss_after": op.loss, "eta": 0.0}
        if not op.finite or n == 0:
            return {**out, "lambda_min": math.nan, "lambda_max": math.nan, "outcome": "no Hessian (non-finite loss or nothing trainable)"}
        gen = torch.Generator().manual_seed(seed)

        def draw() -> torch.Tensor:
            return torch.randn(n, generator=gen, dtype=torch.float64).to(dtype=op.dtype, device=op.device)

        run = lanczos(op, draw(), max_iter=max_iter, k=1, tol=1e-4, restart=draw)
        theta, _ = run.ritz()
        lam_min, lam_max = float(theta[0]), float(theta[-1])
        out.update(lambda_min=lam_min, lambda_max=lam_max)
        if not lam_min < 0:
            return {**out, "outcome": "no negative curvature"}
        v = torch.as_tensor(run.ritz_vectors([int(np.argmin(theta))])[0], dtype=op.dtype, device=op.device)
        named = dict(model.named_parameters())
        params = [named[name] for name in op.names]
        inputs, targets = split_batch(batch)

        def forward():
            return call_model(model, inputs)

        def loss_at() -> float:
            return float(loss_fn(forward(), targets).detach())

        def move(eta: float) -> None:
            i = 0
            for p in params:
                k = p.numel()
                p.add_(v[i:i + k].view_as(p).to(p.dtype), alpha=eta)
                i += k

        def stable(val: float) -> bool:
            """A plain gradient step at ``lr`` from here does not raise the loss (lr * lambda_max
            there is below ~2: gradient descent survives the new curvature)."""
            gs = torch.autograd.grad(loss_fn(forward(), targets), params,
                                     allow_unused=True)
            with torch.no_grad():
                for p, g in zip(params, gs):
                    if g is not None:
                        p.sub_(g, alpha=lr)
                after = loss_at()
                for p, g in zip(params, gs):
                    if g is not None:
                        p.add_(g, alpha=lr)
            return math.isfinite(after) and after <= val

        with eval_mode(model):
            loss0 = loss_at()
            grads = torch.autograd.grad(loss_fn(forward(), targets), params,
                                        allow_unused=True)
            gv = sum(float((g.reshape(-1) * v[i:i + g.numel()].to(g.dtype)).sum()) if g is not None else 0.0
                     for g, i in zip(grads, np.cumsum([0] + [p.numel() for p in params])[:-1]))
            if gv > 0:
                v = -v
            tried = []  # (eta, loss)
            for k in range(doublings + 1):
                eta = radius * 2.0**k
                with torch.no_grad():
                    move(eta)
                val = loss_at()
                if lr is not None and math.isfinite(val) and val < loss0 and not stable(val):
                    val = math.inf  # lower, but too sharp there for the optimiser's rate
                with torch.no_grad():
                    move(-eta)
                tried.append((eta, val))
            gains = [(eta, loss0 - val) for eta, val in tried if math.isfinite(val) and val < loss0]
            best_eta, best = 0.0, loss0
            if gains:
                top = max(g for _, g in gains)
                # the shortest step that buys half the best decrease: longer ones leave the saddle
                # with larger weights, hence sharper curvature
                best_eta = min(eta for eta, g in gains if g >= SHARE_OF_BEST * top)
                best = dict(tried)[best_eta]
                with torch.no_grad():
                    move(best_eta)
        return {**out, "loss_before": loss0, "loss_after": best, "eta": best_eta,
                "outcome": "stepped" if best_eta else "no step length lowered the loss"}


class EarlyStopping:
    """Stop at the validation minimum (Prechelt 1998): after each validation checkpoint, keep a
    copy of the weights when the validation loss reached a new minimum; stop once ``patience``
    checkpoints in a row did not; then (``restore_best``) end with the best checkpoint's weights.
    Reads the "loss.val" rows the evaluation instrument records; without a validation split it
    never stops."""

    def __init__(self, cfg: Any, model: nn.Module):
        self.cfg, self.model = cfg, model
        self.best, self.best_step, self.state = math.inf, None, None
        self.since, self.seen = 0, 0
        self.records: dict = {}

    def observe(self, rows: list, step: int) -> bool:
        """``rows``: the (checkpoint, val loss) rows so far; ``step``: updates done. True: stop."""
        if len(rows) == self.seen:
            return False
        self.seen = len(rows)
        at, val = rows[-1]
        val = float(val)
        if val < self.best:
            self.best, self.best_step, self.since = val, int(at), 0
            self.state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self.since += 1
        if self.since >= self.cfg.patience:
            self.records.update(stopped_at=step)
            return True
        return False

    def finish(self) -> bool:
        """Restore the best checkpoint (as configured); True when the weights changed."""
        self.records.update(best_step=self.best_step, best_val=self.best)
        restore = self.cfg.restore_best and self.state is not None and self.since > 0
        if restore:
            self.model.load_state_dict(self.state)
        self.records["restored"] = bool(restore)
        return bool(restore)
