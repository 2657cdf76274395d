"""How the forward signal's scale changes through depth."""

from __future__ import annotations

import torch

from optdoctor.probes.instruments.base import At, Instrument, Series
from optdoctor.probes.instruments.layers import ParamView


class LayerScales(Instrument):
    """Standard deviation of each parametrised layer's output on a training forward pass
    ("layer.out_scale", per layer; NaN for a layer whose output is not one tensor, e.g. an RNN's
    (output, hidden) pair, or that was not called), at the scheduled steps (default: the first).

    Activation statistics see only the layers that have an activation after them; a linear or
    deep linear net has none, yet its signal can grow (or shrink) by a factor per layer just as
    well - the exploding/vanishing forward signal of a badly scaled init (Saxe et al. 2014;
    Glorot & Bengio 2010). A layer called several times in one pass is measured at its first call."""

    series = (Series("layer.out_scale", "layer", "standard deviation of each layer's output, first training forward"),)
    needs = frozenset({"forward", "update"})

    def __init__(self, at: tuple[int, ...] = (0,)):
        self.schedule = At(at)
        self._handles: list = []
        self._stats: dict[int, torch.Tensor] = {}

    def before_forward(self, step: int) -> None:
        if not self.due(step) or self._handles:
            return
        self._stats.clear()
        for j, (_, layer) in enumerate(self.ctx.layers):
            if isinstance(layer, ParamView):
                continue
            self._handles.append(layer.register_forward_hook(self._make(j)))

    def _make(self, j: int):
        def hook(m, _inp, out):
            if j in self._stats or not m.training or not isinstance(out, torch.Tensor) or out.numel() < 2:
                return
            with torch.no_grad():
                self._stats[j] = out.detach().float().std()

        return hook

    def after_step(self, step: int) -> None:
        if not self._handles:
            return
        self.detach()
        nan = torch.tensor(float("nan"))
        row = [self._stats.get(j, nan).cpu() for j in range(len(self.ctx.layers))]
        self.recorder.log("layer.out_scale", step, torch.stack(row) if row else torch.zeros(0))
        self._stats.clear()

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
