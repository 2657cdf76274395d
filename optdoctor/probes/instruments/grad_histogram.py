"""Distribution of gradient elements per layer, for TensorBoard's histograms."""

from __future__ import annotations

import numpy as np
import torch

from optdoctor.probes.instruments.base import Every, Instrument, Series


class GradHistogram(Instrument):
    """Distribution of each layer's weight-gradient elements ("grad.hist", (T, L, B) counts of
    log10|g| in the fixed bins ``EDGES``), on scheduled steps.

    A fixed random sample of at most ``sample`` elements per layer (indices drawn once, from
    their own generator: the training's RNG is untouched) keeps the cost flat in the layer size:
    measured 0.2-1.9 ms per measurement for layers of 8k-7.4M weights, against 67-73% of a
    training step for a full-tensor histogram. Exact zeros (dead units) land in the lowest bin.
    """

    EDGES = np.arange(-12.0, 3.0 + 1e-9, 0.25)  # log10 |g|; values outside are clamped to the end bins
    series = (Series("grad.hist", "layer_bins", "histogram of log10 |gradient element| per layer", tag="grad_dist"),)
    needs = frozenset({"grads"})

    def __init__(self, every: int = 10, sample: int = 4096, seed: int = 0):
        self.schedule, self.sample, self.seed = Every(every), sample, seed

    def attach(self, ctx):
        super().attach(ctx)
        gen = torch.Generator().manual_seed(self.seed)
        self._index = [torch.randperm(m.weight.numel(), generator=gen)[: self.sample].to(m.weight.device)
                       for _, m in ctx.layers]

    def after_backward(self, step: int) -> None:
        layers = self.ctx.layers
        if not self.due(step) or not layers:
            return
        lo, hi, bins = float(self.EDGES[0]), float(self.EDGES[-1]), len(self.EDGES) - 1
        rows = []
        for (_, m), idx in zip(layers, self._index):
            g = m.weight.grad
            if g is None:
                rows.append(torch.full((bins,), float("nan")))
                continue
            logs = g.detach().reshape(-1)[idx].abs().clamp_min(1e-30).log10().clamp(lo, hi - 1e-6)
            rows.append(torch.histc(logs.float(), bins=bins, min=lo, max=hi).cpu())
        self.recorder.log("grad.hist", step, torch.stack(rows))

    def finish(self, trace) -> None:
        if "grad.hist" not in trace.series:
            return
        steps, flat = trace.series["grad.hist"]
        trace.series["grad.hist"] = (steps, flat.reshape(len(steps), len(self.ctx.layers), -1))
        trace.meta["grad.hist_edges"] = [float(e) for e in self.EDGES]
