"""The weights as they start: whether units start out identical (a constant or zero init), and
how their scale compares with a variance-preserving init."""

from __future__ import annotations

import torch
from torch import nn

from optdoctor.probes.instruments.base import At, Instrument, Series


class WeightSymmetry(Instrument):
    """At the start, per layer:

    - "weight.row_spread": max |W_i - mean_i W_i| / max |W| over the output units i (rows): 0
      when every unit has the same incoming weights, as a constant or zero init gives (then the
      units can only ever compute the same function); ~1 for a random init.
    - "weight.init_gain": rms(W) * sqrt(fan_in) for Linear and Conv layers (NaN for others:
      embeddings and recurrent/attention matrices are scaled by other conventions). A layer
      multiplies its input's second moment by about fan_in * E[W^2], so the root mean square,
      not the spread around the mean, is what matters (a shifted init counts at its full size).
      Every standard init lands near 1: PyTorch's default 1/sqrt(3) = 0.58, LeCun and Xavier ~1,
      Kaiming sqrt(2) = 1.41 (Glorot & Bengio 2010; He et al. 2015). Far below or above that
      range, each layer shrinks or amplifies the signal by a constant factor.
    - "weight.recurrent_gain": the same for a recurrent layer's hidden-to-hidden matrices
      (``weight_hh`` of nn.RNN/GRU/LSTM, fan_in = the hidden size; NaN for other layers). The
      state crosses that matrix once per position, so its scale compounds over time as a
      feed-forward layer's does over depth. PyTorch's default gives 1/sqrt(3) = 0.58 there
      too, an orthogonal init 1. The input-to-hidden matrix has no such convention (PyTorch
      scales it by the hidden size, not its fan_in), so it is left out."""

    series = (
        Series("weight.row_spread", "layer", "spread of the layer's weight rows relative to its largest weight, at init"),
        Series("weight.init_gain", "layer", "rms(W) * sqrt(fan_in) of each Linear/Conv layer at init (standard inits: ~0.6-1.4)"),
        Series("weight.recurrent_gain", "layer", "rms(W_hh) * sqrt(hidden) of each recurrent layer's hidden-to-hidden matrix at init (standard inits: ~0.6-1)"),
    )
    needs = frozenset({"state"})
    schedule = At([0])

    def at_state(self, step: int) -> None:
        self.recorder.log("weight.row_spread", step, weight_row_spread(self.ctx.layers))
        self.recorder.log("weight.init_gain", step, weight_init_gain(self.ctx.layers))
        self.recorder.log("weight.recurrent_gain", step, weight_recurrent_gain(self.ctx.layers))


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


_GAIN_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def weight_init_gain(layers) -> torch.Tensor:
    """rms(W) * sqrt(fan_in) per layer (fan_in: the number of inputs of one output unit, the
    kernel's in_channels x size for a convolution); NaN where that convention does not apply."""
    out = []
    with torch.no_grad():
        for _, m in layers:
            if not isinstance(m, _GAIN_LAYERS) or m.weight.numel() < 2:
                out.append(torch.tensor(float("nan")))
                continue
            w = m.weight.detach().float()
            fan_in = w[0].numel()
            out.append((w.square().mean().sqrt() * fan_in ** 0.5).cpu())
    return torch.stack(out) if out else torch.zeros(0)


def weight_recurrent_gain(layers) -> torch.Tensor:
    """rms(W_hh) * sqrt(fan_in) per layer for the hidden-to-hidden matrices of nn.RNN, nn.GRU and
    nn.LSTM (each gate's block maps the previous state, of W_hh.shape[1] units, to one gate: that
    is its fan_in); NaN for every other layer."""
    from optdoctor.probes.instruments.layers import ParamView

    out = []
    with torch.no_grad():
        for _, m in layers:
            if not (isinstance(m, ParamView) and isinstance(m.owner, nn.RNNBase) and m.param_name.startswith("weight_hh")
                    and m.weight.numel() >= 2):
                out.append(torch.tensor(float("nan")))
                continue
            w = m.weight.detach().float()
            out.append((w.square().mean().sqrt() * w.shape[1] ** 0.5).cpu())
    return torch.stack(out) if out else torch.zeros(0)
