"""Whether units start out identical (a constant or zero init)."""

from __future__ import annotations

import torch

from optdoctor.probes.instruments.base import At, Instrument, Series


class WeightSymmetry(Instrument):
    """Per layer, max |W_i - mean_i W_i| / max |W| over the output units i (rows), at the start
    ("weight.row_spread"): 0 when every unit has the same incoming weights, as a constant or zero
    init gives (then the units can only ever compute the same function); ~1 for a random init."""

    series = (Series("weight.row_spread", "layer", "spread of the layer's weight rows relative to its largest weight, at init"),)
    needs = frozenset({"state"})
    schedule = At([0])

    def at_state(self, step: int) -> None:
        self.recorder.log("weight.row_spread", step, weight_row_spread(self.ctx.layers))


def weight_row_spread(layers) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for _, m in layers:
            w = m.weight.detach().reshape(m.weight.shape[0], -1).float()
            if w.shape[0] < 2:
                out.append(torch.tensor(float("nan")))
                continue
            spread = (w - w.mean(dim=0, keepdim=True)).abs().max()
            out.append((spread / w.abs().max().clamp_min(1e-30)).cpu())
    return torch.stack(out) if out else torch.zeros(0)
