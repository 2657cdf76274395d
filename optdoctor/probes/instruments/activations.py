"""Dead, saturated and collapsed units, measured on the activations of a training forward pass."""

from __future__ import annotations

from collections import deque

import torch

from optdoctor.probes.instruments.base import Every, Instrument, Series
from optdoctor.probes.instruments.functional import FunctionalActivations, is_site
from optdoctor.probes.instruments.layers import SIGMOID_SAT, TANH_SAT

KEYS = ("act.dead_frac", "act.sat_frac", "act.scale", "act.unit_diversity")


def _units(x: torch.Tensor) -> torch.Tensor:
    """Reshape an activation to (samples, units): (N, D) as is; (N, C, H, W) -> channels are
    units; (N, L, D) -> features are units and positions count as samples."""
    if x.dim() == 2:
        return x
    if x.dim() == 4:
        return x.transpose(0, 1).reshape(x.shape[1], -1).T
    if x.dim() == 3:
        return x.reshape(-1, x.shape[-1])
    return x.reshape(x.shape[0], -1)


class Activations(Instrument):
    """Statistics of each activation's output (``Context.acts``: modules and functional call
    sites) on scheduled steps:

    - ``act.dead_frac``: fraction of ReLU units that were never active on any input of the
      last ``window`` measured batches (NaN for non-ReLU layers);
    - ``act.sat_frac``: fraction of sigmoid/tanh outputs in the flat, gradient-killing tails
      (NaN for other layers);
    - ``act.scale``: standard deviation of the output;
    - ``act.unit_diversity``: mean over samples of the spread across units, relative to the
      output's std. ~0 means all units compute the same function (symmetric init); NaN for an
      all-zero (dead) output, for a softmax, and after the first measured step (symmetry is set
      by the init).

    Module hooks are registered only for the measured steps' training forward pass (idle hooks
    cost 5-22 ms per probe) and removed after that step. A module called several times in one
    forward (one ``nn.ReLU()`` reused for several layers) is measured at its first call; its
    window restarts when the number of units changes. Functional activations (``F.relu`` in a
    block's ``forward``) are measured by a ``FunctionalActivations`` mode, on for the first
    training forward pass of a measured step only (entered in the root's forward pre-hook, left
    in its forward hook, even when the forward raises); a site called on that pass but not found
    by the discovery pass is not measured, one found but not called is NaN.
    """

    series = (
        Series("act.dead_frac", "act", "fraction of a ReLU layer's units never active in the window", tag="activation/dead_frac"),
        Series("act.sat_frac", "act", "fraction of a sigmoid/tanh layer's outputs in the flat tails", tag="activation/saturated_frac"),
        Series("act.scale", "act", "standard deviation of the activation", tag="activation/scale"),
        Series("act.unit_diversity", "act", "spread across units relative to the activation's std, first measurement", tag="activation/unit_diversity"),
    )
    needs = frozenset({"forward", "update"})

    def __init__(self, every: int = 10, window: int = 4):
        self.schedule, self.window = Every(every), window
        self._stats: dict[str, torch.Tensor] = {}
        self._handles: list = []
        self._first = True

    def attach(self, ctx):
        super().attach(ctx)
        self.modules = list(ctx.acts)
        self._active: dict[str, deque] = {n: deque(maxlen=self.window) for n, _, _ in self.modules}
        self._sites = {n: kind for n, _, kind in self.modules if is_site(n)}
        self._watch = None
        if self._sites:  # activation modules are measured by their hooks, not again as the F.relu they call
            skip = {m for n, m, _ in self.modules if not is_site(n)}
            self._watch = FunctionalActivations(ctx.model, self._on_site, skip=skip)

    def _make_hook(self, name: str, kind: str):
        def hook(m, _inp, out):  # an evaluation inside a measured step (eval mode) is not measured
            if name in self._stats or not m.training or not isinstance(out, torch.Tensor):
                return
            with torch.no_grad():
                self._stats[name] = self._measure(name, kind, out.detach().float())

        return hook

    def _on_site(self, name: str, _module, _kind: str, out: torch.Tensor) -> None:
        kind = self._sites.get(name)  # None: a site the discovery pass did not see (no column)
        if kind is not None and name not in self._stats:
            with torch.no_grad():
                self._stats[name] = self._measure(name, kind, out.detach().float())

    def _start_watch(self, module, _args):
        if module.training and not self._watched:  # evaluations (eval mode) are not measured
            self._watch.start()

    def _stop_watch(self, *_):
        if self._watch.active:
            self._watch.stop()
            self._watched = True

    def _measure(self, name: str, kind: str, x: torch.Tensor) -> torch.Tensor:
        u = _units(x)
        nan = torch.full((), float("nan"), device=x.device)
        scale = x.std() if x.numel() > 1 else torch.zeros((), device=x.device)
        diversity = nan
        if self._first and kind != "softmax":  # symmetry is a property of the init: measured at the first measured step only
            if u.shape[1] > 1:  # two-pass variance across units: 2-8x faster than u.std(dim=1) here
                spread = ((u - u.mean(dim=1, keepdim=True)).pow(2).sum(dim=1) / (u.shape[1] - 1)).sqrt().mean()
            else:
                spread = torch.zeros((), device=x.device)
            diversity = torch.where(scale > 1e-12, spread / scale.clamp_min(1e-12), nan)
        dead = sat = nan
        if kind == "relu":
            active = (u > 0).sum(dim=0) > 0
            window = self._active[name]
            if window and window[-1].shape != active.shape:
                window.clear()
            window.append(active)
            ever = torch.stack(list(window)).any(dim=0)
            dead = 1.0 - ever.float().mean()
        elif kind == "sigmoid":
            sat = ((x < SIGMOID_SAT) | (x > 1 - SIGMOID_SAT)).float().mean()
        elif kind == "tanh":
            sat = (x.abs() > TANH_SAT).float().mean()
        return torch.stack([dead, sat, scale, diversity])

    def before_forward(self, step: int) -> None:
        if self.modules and self.due(step) and not self._handles:
            self._stats.clear()
            self._handles = [m.register_forward_hook(self._make_hook(n, kind)) for n, m, kind in self.modules if not is_site(n)]
            if self._watch is not None:  # the mode covers the step's first training forward pass only
                self._watched = False
                root = self.ctx.model
                self._handles += [root.register_forward_pre_hook(self._start_watch),
                                  root.register_forward_hook(self._stop_watch, always_call=True)]

    def after_step(self, step: int) -> None:
        if not self._handles:
            return
        self.detach()
        nan4 = torch.full((4,), float("nan"))
        rows = torch.stack([self._stats.get(n, nan4).cpu() for n, _, _ in self.modules])  # (A, 4)
        for j, key in enumerate(KEYS):
            self.recorder.log(key, step, rows[:, j])
        self._stats.clear()
        self._first = False

    def detach(self) -> None:
        if getattr(self, "_watch", None) is not None:
            self._watch.stop()
        for h in self._handles:
            h.remove()
        self._handles = []
