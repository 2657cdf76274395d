"""Relative size of each layer's update."""

from __future__ import annotations

import numpy as np
import torch

from optdoctor.probes.instruments.base import Every, Instrument, Series


class UpdateRatios(Instrument):
    """||W_after - W_before|| / ||W_before|| per layer ("update.ratio") and ||W|| ("weight.norm").
    Karpathy's rule of thumb: ~1e-3 is healthy; >>1e-2 is a too-high LR, <<1e-5 a too-low one.
    Measured every other step by default (the symptoms use medians over steps); the ratio is
    taken once, in ``finish``.

    Also "update.first_order": g . (W_before - W_after) summed over the layers' weights, the
    loss decrease a first-order model predicts for the step the optimizer actually took. For
    plain SGD it is lr |g|^2; for momentum, Adam and other preconditioned steps it is what
    lr |g|^2 is not (Adam's step is ~lr per coordinate, whatever |g|)."""

    RAW = "update._norms"
    series = (
        Series(RAW, "raw"),
        Series("weight.norm", "layer", "L2 norm of each layer's weight before the step", tag="weight_norm"),
        Series("update.ratio", "layer", "||dW|| / ||W|| of each layer's step", tag="update_ratio", log10="update_ratio_log10"),
        Series("update.first_order", "step", "g . (W_before - W_after) over the layers' weights: the first-order loss decrease of the step taken"),
    )
    needs = frozenset({"grads", "update"})

    def __init__(self, every: int = 2):
        self.schedule = Every(every)
        self._buf: list[torch.Tensor] | None = None  # the weights before the step
        self._delta: list[torch.Tensor] | None = None  # views of ``_flat`` (None: layers of mixed dtype/device)
        self._flat: torch.Tensor | None = None
        self._armed = False

    def after_backward(self, step: int) -> None:
        layers = self.ctx.layers
        self._armed = self.due(step) and bool(layers)
        if not self._armed:
            return
        weights = [m.weight.detach() for _, m in layers]
        if self._buf is None:
            self._buf = [torch.empty_like(w) for w in weights]
            if len({(w.dtype, w.device) for w in weights}) == 1:
                self._flat, self._delta = _flat_views(weights)
        torch._foreach_copy_(self._buf, weights)

    def after_step(self, step: int) -> None:
        if not self._armed:
            return
        self._armed = False
        # a handful of torch calls whatever the depth (each call costs ~5-10 us on a small model's
        # step): the update into one flat buffer, the norms of the weights before it and of the
        # update in one _foreach_norm, and the first-order decrease as one sum over that buffer
        layers = self.ctx.layers
        weights = [m.weight.detach() for _, m in layers]
        if self._delta is not None:
            delta = self._delta
            torch._foreach_copy_(delta, weights)
            torch._foreach_sub_(delta, self._buf)
        else:
            delta = list(torch._foreach_sub(weights, self._buf))
        self.recorder.log(self.RAW, step, torch.stack(torch._foreach_norm(self._buf + delta)))
        # first order: g . (W_before - W_after) = -g . dW, over the layers that have a (dense) gradient
        grads = [m.weight.grad for _, m in layers]
        dense = [g is not None and g.layout == torch.strided for g in grads]
        if self._delta is not None and all(dense):
            torch._foreach_mul_(delta, [g.detach() for g in grads])  # dW is not needed any more
            self.recorder.log("update.first_order", step, -self._flat.sum(dtype=torch.float32))
        elif any(dense):
            dots = [torch.dot(g.detach().reshape(-1).float(), d.reshape(-1).float())
                    for g, d, ok in zip(grads, delta, dense) if ok]
            self.recorder.log("update.first_order", step, -torch.stack(dots).sum())

    def finish(self, trace) -> None:
        if self.RAW not in trace.series:
            return
        steps, raw = trace.series.pop(self.RAW)  # (T, 2L): ||W before|| per layer, then ||dW||
        before, delta = np.split(raw.reshape(len(steps), -1), 2, axis=1)
        trace.series["weight.norm"] = (steps, before)
        trace.series["update.ratio"] = (steps, delta / np.maximum(before, 1e-30))


def _flat_views(weights: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One buffer the size of all ``weights`` (same dtype and device) and a view of it shaped
    like each: per-layer foreach ops write into it, and one call reduces over all of it."""
    flat = torch.empty(sum(w.numel() for w in weights), dtype=weights[0].dtype, device=weights[0].device)
    views, at = [], 0
    for w in weights:
        views.append(flat[at:at + w.numel()].view(w.shape))
        at += w.numel()
    return flat, views
