"""Per-layer and global gradient norms."""

from __future__ import annotations

import numpy as np
import torch

from optdoctor.probes.instruments.base import Every, Instrument, Series


class GradNorms(Instrument):
    """L2 norm of each layer's weight gradient ("grad.norm", per layer; NaN for a layer that got
    no gradient at all, e.g. a module never called) and of the whole gradient
    ("grad.global_norm"), read when the optimizer is about to step (before clipping).

    Per measurement it runs two torch calls (one ``_foreach_norm`` over all gradients, one
    stack): on small models torch's per-call overhead is what costs (benchmarks/overhead.py). The per-layer
    columns and the global norm are derived once, in ``finish``.
    """

    RAW = "grad._param_norms"
    series = (
        Series(RAW, "raw"),
        Series("grad.norm", "layer", "L2 norm of each layer's weight gradient", tag="grad_norm", log10="grad_norm_log10"),
        Series("grad.global_norm", "step", "L2 norm of the whole gradient", tag="grad_norm/global"),
    )
    needs = frozenset({"grads"})

    def __init__(self, every: int = 1):
        self.schedule = Every(every)

    def attach(self, ctx):
        super().attach(ctx)
        self.params = [p for p in ctx.model.parameters() if p.requires_grad]
        index = {id(p): i for i, p in enumerate(self.params)}
        self.columns = [index.get(id(m.weight), -1) for _, m in ctx.layers]

    def after_backward(self, step: int) -> None:
        if not self.due(step) or not self.params:
            return
        grads = [p.grad for p in self.params]
        if any(g is None for g in grads):  # some parameter got no gradient: its norm is NaN, not 0
            live = [g for g in grads if g is not None]
            norms = torch.stack(torch._foreach_norm(live)) if live else torch.zeros(0)
            full = torch.full((len(grads),), float("nan"), device=norms.device)
            full[[i for i, g in enumerate(grads) if g is not None]] = norms
            norms = full
        else:  # stacked now: one tensor kept per measurement, not one per parameter (each kept
            # tensor is one more object for Python's GC and the allocator: measured, the
            # unmeasured steps of the small MLP ran ~15 us slower with 0-d tensors kept)
            norms = torch.stack(torch._foreach_norm(grads))
        self.recorder.log(self.RAW, step, norms)

    def finish(self, trace) -> None:
        if self.RAW not in trace.series:
            return
        steps, raw = trace.series.pop(self.RAW)
        raw = raw.reshape(len(steps), -1)
        trace.series["grad.global_norm"] = (steps, np.sqrt(np.nansum(raw**2, axis=1)))
        if self.columns:
            cols = np.array(self.columns)
            per_layer = np.where(cols >= 0, raw[:, np.maximum(cols, 0)], np.nan)
            trace.series["grad.norm"] = (steps, per_layer)
