"""Whether successive gradients agree or flip: oscillation across steep directions."""

from __future__ import annotations

import torch

from optdoctor.probes.instruments.base import Every, Instrument, Series


class GradCosine(Instrument):
    """Cosine between each layer's weight gradient at a scheduled step and at the step after it
    ("grad.cosine", per layer, recorded at the later step). Near +1: the steps agree (a smooth
    descent); near -1: the gradient flips sign step to step, the zig-zag of an iterate bouncing
    across a steep valley (an LR at or past the edge of stability, or an ill-conditioned
    problem); near 0: noise dominates (small batches). Costs a copy of the weight gradients on
    scheduled steps and two fused norm calls on the next one."""

    series = (Series("grad.cosine", "layer", "cosine between a layer's gradients on two successive steps", tag="grad_cosine"),)
    needs = frozenset({"grads"})

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
            both = [j for j, (p, g) in enumerate(zip(self._prev, grads)) if p is not None and g is not None]
            cos = torch.full((len(layers),), float("nan"), device=layers[0][1].weight.device)
            if both:  # ~L + 8 torch calls for all layers together, not ~8 per layer
                a, b = [self._prev[j] for j in both], [grads[j].detach() for j in both]
                dots = torch.stack([ab.sum() for ab in torch._foreach_mul(a, b)])
                norms = torch.stack(torch._foreach_norm(a + b))
                k = len(both)
                cos[both] = dots / (norms[:k] * norms[k:]).clamp_min(1e-30)
            self.recorder.log("grad.cosine", step, cos)
        self._prev = None
        if self.due(step):
            self._prev = [None if g is None else g.detach().clone() for g in grads]
            self._prev_step = step
