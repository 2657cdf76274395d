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
        self._buf: list[torch.Tensor] | None = None
        self._armed = False

    def after_backward(self, step: int) -> None:
        layers = self.ctx.layers
        self._armed = self.due(step) and bool(layers)
        if not self._armed:
            return
        weights = [m.weight.detach() for _, m in layers]
        if self._buf is None:
            self._buf = [torch.empty_like(w) for w in weights]
        torch._foreach_copy_(self._buf, weights)

    def after_step(self, step: int) -> None:
        if not self._armed:
            return
        self._armed = False
        # three torch calls: the update, the norms of the weights before it and of the update in
        # one _foreach_norm, one stack; the ratios are taken in ``finish``
        layers = self.ctx.layers
        delta = torch._foreach_sub([m.weight.detach() for _, m in layers], self._buf)
        self.recorder.log(self.RAW, step, torch.stack(torch._foreach_norm(list(self._buf) + list(delta))))
        # first order: g . (W_before - W_after) = -g . dW, over the layers that have a gradient
        dots = [torch.dot(g.detach().reshape(-1), d.reshape(-1)) for (_, m), d in zip(layers, delta)
                if (g := m.weight.grad) is not None]
        if dots:
            self.recorder.log("update.first_order", step, -torch.stack(dots).sum().float())

    def finish(self, trace) -> None:
        if self.RAW not in trace.series:
            return
        steps, raw = trace.series.pop(self.RAW)  # (T, 2L): ||W before|| per layer, then ||dW||
        before, delta = np.split(raw.reshape(len(steps), -1), 2, axis=1)
        trace.series["weight.norm"] = (steps, before)
        trace.series["update.ratio"] = (steps, delta / np.maximum(before, 1e-30))
