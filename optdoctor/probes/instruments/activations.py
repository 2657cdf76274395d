"""Dead, saturated and collapsed units, measured on the activations of a training forward pass."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
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


@dataclass
class _Moments:
    """What one measured forward says about one activation output x, in sums that add up
    across ranks: n elements of x (n_samples rows of n_units units, ``_units``), its mean and
    (unbiased) variance, the count of saturated elements, the sum over rows of the spread
    across units (first measurement only), and a ReLU's per-unit "active on some row" mask."""

    n: int
    n_samples: int
    n_units: int
    mean: torch.Tensor
    var: torch.Tensor
    n_sat: torch.Tensor | None = None
    div_sum: torch.Tensor | None = None
    active: torch.Tensor | None = None


def combine_across_ranks(got: list[_Moments | None]) -> list[_Moments | None]:
    """Each rank's statistics of its share of the batch -> those of the whole batch, on every
    rank: two all-reduces (every rank calls both, with the same sizes, whatever it measured).

    Counts and sums add; the variance by Chan et al.'s pairwise formula in float64
    (M2 = sum_r [M2_r + n_r mean_r^2] - n mean^2); a ReLU unit is active if it is on any rank.
    """
    import torch.distributed as dist

    from optdoctor import distributed

    device = distributed.device()
    fields = 8  # present, n, n_samples, n_units, n*mean, M2 + n*mean^2, n_sat, div_sum
    head = torch.zeros(len(got), fields, dtype=torch.float64)
    has = torch.zeros(len(got), 3, dtype=torch.float64)  # which optional parts any rank has
    parts = []
    for a, m in enumerate(got):
        if m is None:
            continue
        mean, var = m.mean.to(torch.float64), m.var.to(torch.float64)
        m2 = var * (m.n - 1) if m.n > 1 else torch.zeros((), dtype=torch.float64, device=mean.device)
        zero = torch.zeros((), dtype=torch.float64, device=mean.device)
        parts.append((a, torch.stack([m.n * mean, m2 + m.n * mean * mean,
                                      zero if m.n_sat is None else m.n_sat.to(torch.float64),
                                      zero if m.div_sum is None else m.div_sum.to(torch.float64)])))
        head[a, :4] = torch.tensor([1.0, m.n, m.n_samples, m.n_units], dtype=torch.float64)
        has[a] = torch.tensor([m.n_sat is not None, m.div_sum is not None, m.active is not None], dtype=torch.float64)
    if parts:
        idx = [a for a, _ in parts]
        head[idx, 4:] = torch.stack([p for _, p in parts]).cpu()
    buf = torch.cat([head.reshape(-1), has.reshape(-1)]).to(device)
    dist.all_reduce(buf)
    buf = buf.cpu()
    head, has = buf[: head.numel()].reshape(head.shape), buf[head.numel():].reshape(has.shape)
    # masks: sizes from the reduced head (n_units / ranks present), so every rank agrees
    sizes = [round(float(head[a, 3] / head[a, 0])) if head[a, 0] > 0 and has[a, 2] > 0 else 0 for a in range(len(got))]
    masks = torch.zeros(sum(sizes), dtype=torch.float64)
    pos = 0
    for a, m in enumerate(got):
        if sizes[a] and m is not None and m.active is not None and m.active.numel() == sizes[a]:
            masks[pos:pos + sizes[a]] = m.active.to(torch.float64).cpu()
        pos += sizes[a]
    if len(masks):
        masks = masks.to(device)
        dist.all_reduce(masks)
        masks = masks.cpu()
    out: list[_Moments | None] = []
    pos = 0
    for a in range(len(got)):
        present, n, n_samples, n_units, s1, s2, n_sat, div_sum = head[a].tolist()
        if present == 0:
            out.append(None)
            pos += sizes[a]
            continue
        mean = s1 / n
        var = (s2 - n * mean * mean) / (n - 1) if n > 1 else 0.0
        out.append(_Moments(int(n), int(n_samples), round(n_units / present), torch.tensor(mean), torch.tensor(max(var, 0.0)),
                            torch.tensor(n_sat) if has[a, 0] > 0 else None,
                            torch.tensor(div_sum) if has[a, 1] > 0 else None,
                            masks[pos:pos + sizes[a]] > 0 if sizes[a] else None))
        pos += sizes[a]
    return out


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

    ``across_ranks``: the statistics are of one training whose batch the torch.distributed ranks
    share (the monitor under DDP): each measured step combines the ranks' counts and sums
    (``combine_across_ranks``; every rank must measure the same steps). Off for probes, which
    ranks run whole and apart.

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

    def __init__(self, every: int = 10, window: int = 4, across_ranks: bool = False):
        self.schedule, self.window, self.across_ranks = Every(every), window, across_ranks
        self._stats: dict[str, _Moments] = {}
        self._raw: list[tuple] = []  # (step, first measurement?, stacked scalars, layout): see after_step
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
                self._stats[name] = self._measure(kind, out.detach().float())

        return hook

    def _on_site(self, name: str, _module, _kind: str, out: torch.Tensor) -> None:
        kind = self._sites.get(name)  # None: a site the discovery pass did not see (no column)
        if kind is not None and name not in self._stats:
            with torch.no_grad():
                self._stats[name] = self._measure(kind, out.detach().float())

    def _start_watch(self, module, _args):
        if module.training and not self._watched:  # evaluations (eval mode) are not measured
            self._watch.start()

    def _stop_watch(self, *_):
        if self._watch.active:
            self._watch.stop()
            self._watched = True

    def _measure(self, kind: str, x: torch.Tensor) -> _Moments:
        """Sufficient statistics of one output, as few torch calls as possible (3-6: on small
        models each call's overhead is the cost): combinable across ranks, derived in ``finish``."""
        u = _units(x)
        var, mean = torch.var_mean(x) if x.numel() > 1 else (torch.zeros((), device=x.device), x.reshape(-1)[0])
        m = _Moments(x.numel(), u.shape[0], u.shape[1], mean, var)
        if self._first and kind != "softmax" and u.shape[1] > 1:  # symmetry: a property of the init
            # two-pass variance across units: 2-8x faster than u.std(dim=1) here
            m.div_sum = ((u - u.mean(dim=1, keepdim=True)).pow(2).sum(dim=1) / (u.shape[1] - 1)).sqrt().sum()
        elif self._first and kind != "softmax":
            m.div_sum = torch.zeros((), device=x.device)
        if kind == "relu":
            m.active = (u > 0).any(dim=0)
        elif kind == "sigmoid":
            m.n_sat = ((x < SIGMOID_SAT) | (x > 1 - SIGMOID_SAT)).sum()
        elif kind == "tanh":
            m.n_sat = (x.abs() > TANH_SAT).sum()
        return m

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
        """Close a measured step: (under torch.distributed) combine the ranks' statistics, move
        the ReLU windows on, keep one row of raw numbers per activation (derived in ``finish``)."""
        if not self._handles:
            return
        self.detach()
        names = [n for n, _, _ in self.modules]
        got = [self._stats.get(n) for n in names]
        from optdoctor import distributed

        if self.across_ranks and distributed.active():  # the monitor: every rank measures the same steps
            got = combine_across_ranks(got)
        # every number of the step in two stacks (floats, counts), not one torch call per number;
        # moved to the CPU when the trace is made
        groups: dict[torch.dtype, list[torch.Tensor]] = {}
        layout: list[tuple | None] = []
        for name, m in zip(names, got):
            if m is None:
                layout.append(None)
                continue
            n_active = None
            if m.active is not None:
                window = self._active[name]
                if window and window[-1].shape != m.active.shape:
                    window.clear()
                window.append(m.active)
                ever = window[0]
                for w in list(window)[1:]:
                    ever = ever | w
                n_active = ever.sum()
            row = []
            for v in (m.var, m.n_sat, m.div_sum, n_active):
                if v is None:
                    row.append(None)
                else:
                    group = groups.setdefault(v.dtype, [])
                    row.append((v.dtype, len(group)))
                    group.append(v)
            layout.append((m.n, m.n_samples, m.n_units, row))
        stacked = {dtype: torch.stack(vs) for dtype, vs in groups.items()}
        self._raw.append((step, self._first, stacked, layout))
        self._stats.clear()
        self._first = False

    def finish(self, trace) -> None:
        """act.* from the raw rows (not consumed: a monitor asks for its trace more than once)."""
        if not self._raw:
            return
        kinds = [k for _, _, k in self.modules]
        steps, out = [], np.full((len(self._raw), len(self.modules), 4), np.nan)
        for t, (step, first, stacked, layout) in enumerate(self._raw):
            steps.append(step)
            values = {dtype: v.double().cpu().numpy() for dtype, v in stacked.items()}
            for a, (entry, kind) in enumerate(zip(layout, kinds)):
                if entry is None:
                    continue
                n, n_samples, n_units, (var, n_sat, div_sum, n_active) = entry

                def get(ref, values=values):
                    return float(values[ref[0]][ref[1]])

                scale = math.sqrt(max(get(var), 0.0)) if n > 1 else 0.0
                out[t, a, 2] = scale
                if n_active is not None:
                    out[t, a, 0] = 1.0 - get(n_active) / n_units
                if n_sat is not None:
                    out[t, a, 1] = get(n_sat) / n
                if div_sum is not None and first and kind != "softmax" and scale > 1e-12:
                    out[t, a, 3] = get(div_sum) / n_samples / scale
        steps = np.array(steps, dtype=np.int64)
        for j, key in enumerate(KEYS):
            trace.series[key] = (steps, out[:, :, j])

    def detach(self) -> None:
        if getattr(self, "_watch", None) is not None:
            self._watch.stop()
        for h in self._handles:
            h.remove()
        self._handles = []
