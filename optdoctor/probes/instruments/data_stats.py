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
    ``feature_mean_over_std`` (largest |mean| / std).
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
        if not module.training:  # evaluations run in eval mode: not what the model trains on
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
        sums = torch.zeros(1 + 2 * d, dtype=torch.float64)
        if d and X.dim() == 2 and X.shape[1] == d and len(X):
            mean = X.mean(dim=0)
            m2 = ((X - mean) ** 2).sum(dim=0)  # two-pass per rank; Chan et al. across ranks
            sums[0] = len(X)
            sums[1:1 + d] = len(X) * mean
            sums[1 + d:] = m2 + len(X) * mean * mean
        sums = sums.to(distributed.device())
        dist.all_reduce(sums)
        sums = sums.cpu()
        n = float(sums[0])
        if n >= 2 and d:
            mean = sums[1:1 + d] / n
            var = ((sums[1 + d:] - n * mean * mean) / (n - 1)).clamp_min(0.0)
            self._reduced = (self.seen, moment_stats(mean, var.sqrt()))
        else:
            self._reduced = (self.seen, {})

    def finish(self, trace) -> None:
        reduced = getattr(self, "_reduced", None)
        if reduced is not None and reduced[0] == self.seen:
            trace.meta["data_stats"] = dict(reduced[1])
            return
        stats = data_stats(torch.cat(self.parts)) if self.parts else {}
        trace.meta["data_stats"] = stats


def data_stats(X: torch.Tensor) -> dict[str, float]:
    """(N, D) float64 samples -> the statistics above (empty when they do not apply)."""
    if X.dim() != 2 or X.shape[1] < 2 or X.shape[0] < 2:
        return {}
    return moment_stats(X.mean(dim=0), X.std(dim=0))


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
