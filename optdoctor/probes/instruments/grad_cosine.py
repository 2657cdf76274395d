"""Whether successive gradients agree or flip: oscillation across steep directions."""

from __future__ import annotations

import numpy as np
import torch

from optdoctor.probes.instruments.base import Every, Instrument, Series


class GradCosine(Instrument):
    """Cosine between each layer's weight gradient at a scheduled step and at the step after it
    ("grad.cosine", per layer, recorded at the later step). Near +1: the steps agree (a smooth
    descent); near -1: the gradient flips sign step to step, the zig-zag of an iterate bouncing
    across a steep valley (an LR at or past the edge of stability, or an ill-conditioned
    problem); near 0: noise dominates (small batches). Costs a copy of the weight gradients on
    scheduled steps and L dot products, one fused norm call and one stack on the next one; the
    cosines are taken once, when the trace is made."""

    RAW = "grad._cosine_parts"
    series = (Series(RAW, "raw"),
              Series("grad.cosine", "layer", "cosine between a layer's gradients on two successive steps", tag="grad_cosine"))
    needs = frozenset({"grads"})
    follows = True  # a due step's gradients are compared with the next step's

    def __init__(self, every: int = 10):
        self.schedule = Every(every)
        self._prev: list[torch.Tensor] | None = None
        self._prev_step: int | None = None

    def after_backward(self, step: int) -> None:
        pending = self._prev is not None and self._prev_step == step - 1
        if not (pending or self.due(step)) or not self.ctx.layers:
            return
        layers = self.ctx.layers
        grads = [m.weight.grad for _, m in layers]
        if pending:
            if all(p is not None for p in self._prev) and all(g is not None for g in grads):
                # L dot products and one _foreach_norm; the cosines are taken in ``finish``
                g = [x.detach() for x in grads]
                dots = [torch.dot(a.reshape(-1), b.reshape(-1)) for a, b in zip(self._prev, g)]
                self.recorder.log(self.RAW, step, torch.stack(dots + list(torch._foreach_norm(self._prev + g))))
            else:  # a layer without a gradient on either step: its cosine is NaN
                nan = torch.tensor(float("nan"))
                parts = [(torch.dot(a.reshape(-1), b.detach().reshape(-1)), a.norm(), b.norm()) if a is not None and b is not None
                         else (nan, nan, nan) for a, b in zip(self._prev, grads)]
                self.recorder.log(self.RAW, step, torch.stack([x.cpu() for x in [d for d, _, _ in parts] + [n for _, n, _ in parts]
                                                               + [n for _, _, n in parts]]))
        self._prev = None
        if self.due(step):
            self._prev = [None if g is None else g.detach().clone() for g in grads]
            self._prev_step = step

    def finish(self, trace) -> None:
        if self.RAW not in trace.series:
            return
        steps, raw = trace.series.pop(self.RAW)
        dots, na, nb = np.split(raw.reshape(len(steps), -1), 3, axis=1)  # (T, L) each
        with np.errstate(invalid="ignore"):
            trace.series["grad.cosine"] = (steps, dots / np.maximum(na * nb, 1e-30))
