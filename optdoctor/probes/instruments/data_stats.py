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

    def finish(self, trace) -> None:
        stats = data_stats(torch.cat(self.parts)) if self.parts else {}
        trace.meta["data_stats"] = stats


def data_stats(X: torch.Tensor) -> dict[str, float]:
    """(N, D) float64 samples -> the statistics above (empty when they do not apply)."""
    if X.dim() != 2 or X.shape[1] < 2 or X.shape[0] < 2:
        return {}
    std = X.std(dim=0)
    live = std > 0
    if live.sum() < 2:
        return {}
    s = std[live]
    return {
        "feature_scale_spread": float(s.max() / s.min()),
        "feature_mean_over_std": float((X.mean(dim=0)[live].abs() / s).max()),
    }
