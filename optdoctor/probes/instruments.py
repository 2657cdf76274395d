"""Per-step instruments, attached to any model by hooks.

An instrument measures one family of quantities and logs them into a Recorder; *when* it
measures is the ``every`` schedule (Cockpit's separation of quantity and schedule). They need
only the model (and the optimizer for update ratios), never the probe runner, so the same
instruments can watch a user's own training loop:

    inst = [GradNorms(), UpdateRatios(), Activations()]
    for i in inst: i.attach(model, recorder)
    ... loss.backward(); [i.after_backward(step) for i in inst]
    ... optimizer.step(); [i.after_step(step) for i in inst]

Per-layer quantities are logged as 1-d tensors with one column per layer, in forward order
(``LayerOrder``).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import torch
from torch import nn

from optdoctor.probes.recorder import Recorder

# Activation modules by the failure they can show. ReLU units die (output exactly 0 for every
# input); sigmoid/tanh-like units saturate (derivative ~0). Other activations only get scale.
RELU_LIKE = (nn.ReLU, nn.ReLU6)
SATURATING = {nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "sigmoid", nn.Tanh: "tanh", nn.Hardtanh: "tanh", nn.Softsign: "tanh"}
OTHER_ACTS = (nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Softplus)

# Saturation thresholds on the output: sigmoid' = s(1-s) < 0.01 (1/25 of its maximum 0.25)
# and tanh' = 1 - t^2 < 0.02 (1/50 of its maximum 1) mark a unit that passes almost no gradient.
SIGMOID_SAT = (1 - math.sqrt(1 - 4 * 0.01)) / 2  # 0.010102: s < it or s > 1 - it  <=>  s(1-s) < 0.01
TANH_SAT = 0.99  # |t| > 0.99  <=>  1 - t^2 < 0.0199


def activation_kind(module: nn.Module) -> str | None:
    if isinstance(module, RELU_LIKE):
        return "relu"
    for cls, kind in SATURATING.items():
        if isinstance(module, cls):
            return kind
    if isinstance(module, OTHER_ACTS):
        return "other"
    return None


def parametrised_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own a trainable weight matrix/kernel (Linear, Conv, Embedding, ...)."""
    out = []
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(w, nn.Parameter) and w.requires_grad and w.dim() >= 2:
            out.append((name or "model", m))
    return out


class LayerOrder:
    """Forward order of modules, taken from the first forward pass (registration order is
    not forward order for models that define layers out of order)."""

    def __init__(self, modules: list[tuple[str, nn.Module]]):
        self.names: list[str] = []
        self._by_name = dict(modules)
        self._handles = [m.register_forward_hook(self._make_hook(n)) for n, m in modules]

    def _make_hook(self, name):
        def hook(_m, _i, _o):
            if name not in self.names:
                self.names.append(name)

        return hook

    def done(self) -> list[str]:
        """Stop watching; modules never called are appended in registration order."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.names += [n for n in self._by_name if n not in self.names]
        return self.names


class Instrument:
    every: int = 1

    def attach(self, model: nn.Module, recorder: Recorder, optimizer=None) -> None:
        self.model, self.recorder, self.optimizer = model, recorder, optimizer

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def before_forward(self, step: int) -> None: ...

    def after_backward(self, step: int) -> None: ...

    def after_step(self, step: int) -> None: ...

    def detach(self) -> None: ...

    def finish(self, trace) -> None:
        """Derive the logged series from what was recorded (runs once, after the probe)."""


def weight_row_spread(layers: list[tuple[str, nn.Module]]) -> torch.Tensor:
    """Per layer, max |W_i - mean_i W_i| / max |W| over the output units i (rows): 0 when every
    unit has the same incoming weights, as a constant or zero init gives (then the units can
    only ever compute the same function); ~1 for a random init."""
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


class GradNorms(Instrument):
    """L2 norm of each layer's weight gradient ("grad.norm", per layer; NaN for a layer that got
    no gradient at all, e.g. a module never called) and of the whole gradient
    ("grad.global_norm"), read after backward and before the optimizer step.

    Per step it runs two torch calls (one ``_foreach_norm`` over all gradients, one stack): on
    small models torch's per-call overhead is what costs (benchmarks/overhead.py). The per-layer
    columns and the global norm are derived once, in ``finish``.
    """

    RAW = "grad._param_norms"

    def __init__(self, layers: list[tuple[str, nn.Module]], every: int = 1):
        self.layers, self.every = layers, every

    def attach(self, model, recorder, optimizer=None):
        super().attach(model, recorder, optimizer)
        self.params = [p for p in model.parameters() if p.requires_grad]
        index = {id(p): i for i, p in enumerate(self.params)}
        self.columns = [index.get(id(m.weight), -1) for _, m in self.layers]

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
        else:
            norms = torch.stack(torch._foreach_norm(grads))
        self.recorder.log(self.RAW, step, norms)

    def finish(self, trace) -> None:
        if self.RAW not in trace.series:
            return
        steps, raw = trace.series.pop(self.RAW)
        raw = raw.reshape(len(steps), -1)
        trace.series["grad.global_norm"] = (steps, np.sqrt(np.nansum(raw**2, axis=1)))
        if self.layers:
            cols = np.array(self.columns)
            per_layer = np.where(cols >= 0, raw[:, np.maximum(cols, 0)], np.nan)
            trace.series["grad.norm"] = (steps, per_layer)


class UpdateRatios(Instrument):
    """||W_after - W_before|| / ||W_before|| per layer ("update.ratio") and ||W|| ("weight.norm").
    Karpathy's rule of thumb: ~1e-3 is healthy; >>1e-2 is a too-high LR, <<1e-5 a too-low one.
    Measured every other step by default (the symptoms use medians over steps); the ratio is
    taken once, in ``finish``."""

    def __init__(self, layers: list[tuple[str, nn.Module]], every: int = 2):
        self.layers, self.every = layers, every
        self._buf: list[torch.Tensor] | None = None
        self._armed = False

    def after_backward(self, step: int) -> None:
        self._armed = self.due(step) and bool(self.layers)
        if not self._armed:
            return
        weights = [m.weight.detach() for _, m in self.layers]
        if self._buf is None:
            self._buf = [torch.empty_like(w) for w in weights]
        torch._foreach_copy_(self._buf, weights)

    def after_step(self, step: int) -> None:
        if not self._armed:
            return
        self._armed = False
        before_norm = torch.stack(torch._foreach_norm(self._buf))
        torch._foreach_sub_(self._buf, [m.weight.detach() for _, m in self.layers])
        self.recorder.log("weight.norm", step, before_norm)
        self.recorder.log("update._delta_norm", step, torch.stack(torch._foreach_norm(self._buf)))

    def finish(self, trace) -> None:
        if "update._delta_norm" not in trace.series:
            return
        steps, delta = trace.series.pop("update._delta_norm")
        _, before = trace.series["weight.norm"]
        trace.series["update.ratio"] = (steps, delta / np.maximum(before, 1e-30))


class GradHistogram(Instrument):
    """Distribution of each layer's weight-gradient elements ("grad.hist", (T, L, B) counts of
    log10|g| in the fixed bins ``EDGES``), on scheduled steps, for TensorBoard's histograms.

    A fixed random sample of at most ``sample`` elements per layer (indices drawn once, from
    their own generator: the training's RNG is untouched) keeps the cost flat in the layer size:
    measured 0.2-1.9 ms per measurement for layers of 8k-7.4M weights, against 67-73% of a
    training step for a full-tensor histogram. Exact zeros (dead units) land in the lowest bin.
    """

    EDGES = np.arange(-12.0, 3.0 + 1e-9, 0.25)  # log10 |g|; values outside are clamped to the end bins

    def __init__(self, layers: list[tuple[str, nn.Module]], every: int = 10, sample: int = 4096, seed: int = 0):
        self.layers, self.every, self.sample, self.seed = layers, every, sample, seed

    def attach(self, model, recorder, optimizer=None):
        super().attach(model, recorder, optimizer)
        gen = torch.Generator().manual_seed(self.seed)
        self._index = [torch.randperm(m.weight.numel(), generator=gen)[: self.sample].to(m.weight.device)
                       for _, m in self.layers]

    def after_backward(self, step: int) -> None:
        if not self.due(step) or not self.layers:
            return
        lo, hi, bins = float(self.EDGES[0]), float(self.EDGES[-1]), len(self.EDGES) - 1
        rows = []
        for (_, m), idx in zip(self.layers, self._index):
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
        trace.series["grad.hist"] = (steps, flat.reshape(len(steps), len(self.layers), -1))
        trace.meta["grad.hist_edges"] = [float(e) for e in self.EDGES]


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


INPUT_SUFFIX = ":input"  # an Activations entry measured on a layer's input (inferred activation)


def infer_functional_activations(model: nn.Module, layers: list[tuple[str, nn.Module]], inputs) -> list[tuple[str, nn.Module, str]]:
    """Activations applied in ``forward`` as functions (``F.relu(self.fc1(x))``) have no module to
    hook. One forward pass in eval mode without gradients (no RNG drawn, no BatchNorm statistics
    updated) pairs each layer's output z with the next layer's input a; where a == relu(z),
    tanh(z) or sigmoid(z) elementwise, the next layer's input is measured as that activation.
    Returns Activations entries ("<next layer>:input", next layer, kind)."""
    calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []  # (layer, its input, its output) in call order

    def make(name):
        def hook(_m, inp, out):
            if inp and isinstance(inp[0], torch.Tensor) and isinstance(out, torch.Tensor):
                calls.append((name, inp[0].detach(), out.detach()))

        return hook

    by_name = dict(layers)
    handles = [m.register_forward_hook(make(n)) for n, m in layers]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*inputs) if isinstance(inputs, tuple) else model(inputs)
    except Exception:  # a model that cannot run this way simply gets no inferred activations
        calls.clear()
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    found, seen = [], set()
    for (_, _, z), (name, a, _) in zip(calls, calls[1:]):
        if name in seen or a.shape != z.shape or not z.is_floating_point():
            continue
        seen.add(name)
        if (z < 0).any() and torch.equal(a, z.clamp_min(0)):
            kind = "relu"
        elif torch.allclose(a, torch.tanh(z), rtol=1e-5, atol=1e-6):
            kind = "tanh"
        elif torch.allclose(a, torch.sigmoid(z), rtol=1e-5, atol=1e-6):
            kind = "sigmoid"
        else:
            continue
        found.append((name + INPUT_SUFFIX, by_name[name], kind))
    return found


class Activations(Instrument):
    """Statistics of each activation module's output on scheduled steps:

    - ``act.dead_frac``: fraction of ReLU units that were never active on any input of the
      last ``window`` measured batches (NaN for non-ReLU layers);
    - ``act.sat_frac``: fraction of sigmoid/tanh outputs in the flat, gradient-killing tails
      (NaN for other layers);
    - ``act.scale``: standard deviation of the output;
    - ``act.unit_diversity``: mean over samples of the spread across units, relative to the
      output's std. ~0 means all units compute the same function (symmetric init); NaN for an
      all-zero (dead) output, and after the first measured step (symmetry is set by the init).

    Hooks are registered only for the measured steps (idle hooks cost 5-22 ms per probe). A
    module called several times in one forward (one ``nn.ReLU()`` reused for several layers) is
    measured at its first call; its window restarts when the number of units changes.
    """

    def __init__(self, modules: list[tuple[str, nn.Module, str]], every: int = 10, window: int = 4):
        self.modules, self.every, self.window = modules, every, window
        self._stats: dict[str, torch.Tensor] = {}
        self._active: dict[str, deque] = {n: deque(maxlen=window) for n, _, _ in modules}
        self._handles: list = []
        self._first = True
        self.order: list[str] = [n for n, _, _ in modules]

    def _make_hook(self, name: str, kind: str):
        def hook(_m, _inp, out):
            if name in self._stats or not isinstance(out, torch.Tensor):
                return
            with torch.no_grad():
                self._stats[name] = self._measure(name, kind, out.detach().float())

        return hook

    def _make_input_hook(self, name: str, kind: str):
        def pre_hook(_m, inp):  # the input of the layer after a functional activation
            if name in self._stats or not inp or not isinstance(inp[0], torch.Tensor):
                return
            with torch.no_grad():
                self._stats[name] = self._measure(name, kind, inp[0].detach().float())

        return pre_hook

    def _register(self, name: str, module: nn.Module, kind: str):
        if name.endswith(INPUT_SUFFIX):
            return module.register_forward_pre_hook(self._make_input_hook(name, kind))
        return module.register_forward_hook(self._make_hook(name, kind))

    def _measure(self, name: str, kind: str, x: torch.Tensor) -> torch.Tensor:
        u = _units(x)
        nan = torch.full((), float("nan"), device=x.device)
        scale = x.std() if x.numel() > 1 else torch.zeros((), device=x.device)
        diversity = nan
        if self._first:  # symmetry is a property of the init: measured at the first measured step only
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
        if self.due(step) and not self._handles:
            self._stats.clear()
            self._handles = [self._register(n, m, kind) for n, m, kind in self.modules]

    def after_step(self, step: int) -> None:
        if not self._handles:
            return
        self.detach()
        nan4 = torch.full((4,), float("nan"))
        rows = torch.stack([self._stats.get(n, nan4).cpu() for n in self.order])  # (A, 4)
        for j, key in enumerate(("act.dead_frac", "act.sat_frac", "act.scale", "act.unit_diversity")):
            self.recorder.log(key, step, rows[:, j])
        self._stats.clear()
        self._first = False

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
