"""Properties of the inputs the model trains on, from a bounded sample of its training batches."""

from __future__ import annotations

import torch

from optdoctor.probes.instruments.base import Instrument


def _first_float_tensor(args, kwargs):
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a if a.is_floating_point() else None
    return None


class DataStats(Instrument):
    """Features on wildly different scales make optimisation ill-conditioned (the Hessian of a
    linear layer's loss scales with E[x x^T]). Watches the inputs of the training forward
    passes (exactly what the model gets: standardised when the setup standardises) until
    ``cap`` samples were seen, and summarises them in ``meta["data_stats"]``:
    ``feature_scale_spread`` (largest / smallest per-feature std among non-constant features),
    ``feature_mean_over_std`` (largest |mean| / std) and, for at most ``CONDITION_MAX_DIM``
    features seen in at least twice as many samples, ``feature_condition``: the condition number
    of the varying features' correlation matrix (largest / smallest eigenvalue, capped at 1e12),
    the curvature ratio that correlation alone puts into a linear layer's Hessian after
    standardisation (collinear inputs).
    Nothing for integer inputs (token ids) or fewer than two varying features."""

    needs = frozenset()  # its own forward pre-hook, removed once ``cap`` samples were seen

    def __init__(self, cap: int = 2048):
        self.cap = cap
        self.parts: list[torch.Tensor] = []
        self.seen = 0

    def attach(self, ctx):
        super().attach(ctx)
        self._handle = ctx.model.register_forward_pre_hook(self._pre, with_kwargs=True)

    def _pre(self, module, args, kwargs):
        if not module.training or self.ctx.side_pass:  # evaluations: not what the model trains on
            return
        if self.seen >= self.cap:  # enough: the hook leaves the model
            self.detach()
            return
        x = _first_float_tensor(args, kwargs)
        if x is None or x.dim() == 0:
            return
        take = x.detach()[: self.cap - self.seen]
        self.parts.append(take.reshape(len(take), -1).to("cpu", torch.float64))
        self.seen += len(take)

    def detach(self) -> None:
        h = getattr(self, "_handle", None)
        if h is not None:
            h.remove()
            self._handle = None

    def reduce_across_ranks(self) -> None:
        """Under torch.distributed each rank saw its share of the batches: the statistics of all
        of them, from per-feature sums (two all-reduces; every rank must call this, at the same
        point). ``finish`` then reports those, as long as no more samples came in since."""
        import torch.distributed as dist

        from optdoctor import distributed

        X = torch.cat(self.parts) if self.parts else torch.zeros(0, 0, dtype=torch.float64)
        dims = torch.tensor([float(X.shape[1]) if X.dim() == 2 and len(X) else 0.0], dtype=torch.float64)
        dims = dims.to(distributed.device())
        dist.all_reduce(dims, op=dist.ReduceOp.MAX)
        d = int(dims.item())
        full = d <= CONDITION_MAX_DIM  # also the cross products, for the correlation matrix
        sums = torch.zeros(1 + d + (d * d if full else d), dtype=torch.float64)
        if d and X.dim() == 2 and X.shape[1] == d and len(X):
            sums[0] = len(X)
            sums[1:1 + d] = X.sum(dim=0)
            sums[1 + d:] = (X.T @ X).reshape(-1) if full else (X * X).sum(dim=0)
        sums = sums.to(distributed.device())
        dist.all_reduce(sums)
        sums = sums.cpu()
        n = float(sums[0])
        if n >= 2 and d:
            mean = sums[1:1 + d] / n
            if full:  # about the mean, in float64 (features are standardised or small in the cases that matter)
                cov = (sums[1 + d:].reshape(d, d) - n * torch.outer(mean, mean)) / (n - 1)
                stats = moment_stats(mean, cov.diagonal().clamp_min(0.0).sqrt())
                stats.update(condition_stats(cov, n))
            else:
                var = ((sums[1 + d:] - n * mean * mean) / (n - 1)).clamp_min(0.0)
                stats = moment_stats(mean, var.sqrt())
            self._reduced = (self.seen, stats)
        else:
            self._reduced = (self.seen, {})

    def finish(self, trace) -> None:
        reduced = getattr(self, "_reduced", None)
        if reduced is not None and reduced[0] == self.seen:
            trace.meta["data_stats"] = dict(reduced[1])
            return
        stats = data_stats(torch.cat(self.parts)) if self.parts else {}
        trace.meta["data_stats"] = stats


CONDITION_MAX_DIM = 512  # feature_condition for at most this many features
CONDITION_CAP = 1e12


def data_stats(X: torch.Tensor) -> dict[str, float]:
    """(N, D) float64 samples -> the statistics above (empty when they do not apply)."""
    if X.dim() != 2 or X.shape[1] < 2 or X.shape[0] < 2:
        return {}
    out = moment_stats(X.mean(dim=0), X.std(dim=0))
    if out and X.shape[1] <= CONDITION_MAX_DIM:
        out.update(condition_stats(torch.cov(X.T), X.shape[0]))
    return out


def condition_stats(cov: torch.Tensor, n: float) -> dict[str, float]:
    """A (D, D) covariance from ``n`` samples -> ``feature_condition`` of its varying features'
    correlation matrix; nothing with fewer than 2 D samples (a rank-starved estimate)."""
    std = cov.diagonal().clamp_min(0.0).sqrt()
    live = std > 0
    d = int(live.sum())
    if d < 2 or n < 2 * d:
        return {}
    s = std[live]
    corr = cov[live][:, live] / torch.outer(s, s)
    lam = torch.linalg.eigvalsh((corr + corr.T) / 2)
    top = float(lam[-1])
    low = max(float(lam[0]), top / CONDITION_CAP)
    return {"feature_condition": top / low}


def moment_stats(mean: torch.Tensor, std: torch.Tensor) -> dict[str, float]:
    """Per-feature means and standard deviations (D,) -> the statistics above."""
    if len(std) < 2:
        return {}
    live = std > 0
    if live.sum() < 2:
        return {}
    s = std[live]
    return {
        "feature_scale_spread": float(s.max() / s.min()),
        "feature_mean_over_std": float((mean[live].abs() / s).max()),
    }
