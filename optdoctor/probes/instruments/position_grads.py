"""How the gradient reaches each position of a sequence: depth in time."""

from __future__ import annotations

import torch
from torch import nn

from optdoctor.probes.instruments.base import Every, Instrument, Series
from optdoctor.probes.instruments.layers import owner_of

# Modules whose input is (batch, time, features) or, for recurrent layers without batch_first,
# (time, batch, features). Convolutions take (batch, channels, length): not a sequence of vectors.
_NOT_SEQUENCE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.BatchNorm1d, nn.Embedding)


class PositionGrads(Instrument):
    """Norm of the loss gradient with respect to each position of the sequence entering the
    model's first sequence layer ("grad.position": one column per position, on scheduled steps).

    Per-layer gradient ratios cannot see depth *in time*: a recurrent layer is one layer, yet its
    backward signal passes T times through the same recurrent matrix (Pascanu, Mikolov & Bengio
    2013). Comparing what reaches the first position with what reaches the last shows the
    gradient exploding (ratio >> 1) or vanishing (<< 1) through time. The first layer in forward
    order whose input is a float (N, T, d) tensor is watched (an RNN/GRU/LSTM with its
    ``batch_first``; a Linear or attention block on embeddings); a raw input tensor is made to
    require a gradient for that pass, an embedding's output is read by a tensor hook."""

    series = (Series("grad.position", "position", "norm of the loss gradient at each position of the sequence input"),)
    needs = frozenset({"forward", "grads"})

    def __init__(self, every: int = 10, min_length: int = 3):
        self.schedule, self.min_length = Every(every), min_length
        self._handles: list = []
        self._grad: torch.Tensor | None = None
        self._time_dim = 1

    def before_forward(self, step: int) -> None:
        if not self.due(step) or self._handles:
            return
        self._grad, self._taken = None, False
        seen = set()
        for _, layer in self.ctx.layers:
            m = owner_of(layer)
            if id(m) in seen or isinstance(m, _NOT_SEQUENCE):
                continue
            seen.add(id(m))
            self._handles.append(m.register_forward_pre_hook(self._make_pre(m)))

    def _make_pre(self, module: nn.Module):
        def pre(m, args):
            if self._taken or not m.training or not args or not isinstance(args[0], torch.Tensor):
                return None
            x = args[0]
            if x.dim() != 3 or not x.is_floating_point():
                return None
            time_dim = 0 if isinstance(m, nn.RNNBase) and not m.batch_first else 1
            if x.shape[time_dim] < self.min_length:
                return None
            self._taken, self._time_dim = True, time_dim
            if not x.requires_grad:  # the raw input: nothing upstream needs its gradient
                x = x.detach().requires_grad_(True)
                x.register_hook(self._keep)
                return (x, *args[1:])
            x.register_hook(self._keep)
            return None

        return pre

    def _keep(self, grad: torch.Tensor) -> None:
        self._grad = grad.detach()

    def after_backward(self, step: int) -> None:
        if not self._handles:
            return
        self.detach()
        g = self._grad
        self._grad = None
        if g is None:
            return
        other = [d for d in range(3) if d != self._time_dim]
        self.recorder.log("grad.position", step, g.float().pow(2).sum(dim=other).sqrt())

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
