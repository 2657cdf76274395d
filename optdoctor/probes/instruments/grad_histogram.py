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
    All layers are binned together (one ``bincount``); a value on an edge goes to the bin above
    it, as numpy does.
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
        self._rows: dict[tuple, torch.Tensor] = {}  # layers with a gradient -> each sample's row offset

    def after_backward(self, step: int) -> None:
        layers = self.ctx.layers
        if not self.due(step) or not layers:
            return
        lo, hi, bins = float(self.EDGES[0]), float(self.EDGES[-1]), len(self.EDGES) - 1
        grads = [m.weight.grad for _, m in layers]
        live = tuple(j for j, g in enumerate(grads) if g is not None)
        if not live:
            self.recorder.log("grad.hist", step, torch.full((len(layers), bins), float("nan")))
            return
        # all layers in one pass (~L + 9 torch calls, not 8 per layer): the sampled elements of
        # every layer, binned by arithmetic on the uniform edges (x - lo) * bins / (hi - lo) --
        # 0.25-wide bins, exact in float32 -- each layer's bins shifted by its row, one bincount
        parts = [torch.take(grads[j].detach(), self._index[j]) for j in live]
        if live not in self._rows:
            self._rows[live] = torch.cat([torch.full((len(p),), j * bins, dtype=torch.long, device=p.device)
                                          for j, p in zip(live, parts)])
        logs = torch.cat(parts).float().abs_().clamp_min_(1e-30).log10_().clamp_(lo, hi - 1e-6)
        which = logs.sub_(lo).mul_(bins / (hi - lo)).long().add_(self._rows[live])
        counts = torch.bincount(which, minlength=len(layers) * bins).reshape(len(layers), bins)
        if len(live) < len(layers):
            counts = counts.float()
            counts[[j for j in range(len(layers)) if grads[j] is None]] = float("nan")
        self.recorder.log("grad.hist", step, counts)

    def finish(self, trace) -> None:
        if "grad.hist" not in trace.series:
            return
        steps, flat = trace.series["grad.hist"]
        trace.series["grad.hist"] = (steps, flat.reshape(len(steps), len(self.ctx.layers), -1))
        trace.meta["grad.hist_edges"] = [float(e) for e in self.EDGES]
