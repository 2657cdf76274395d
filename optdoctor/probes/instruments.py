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

from collections import deque

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
SIGMOID_SAT = 0.0102  # s < 0.0102 or s > 0.9898  <=>  s(1-s) < 0.01
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


class GradNorms(Instrument):
    """L2 norm of each layer's weight gradient ("grad.norm", per layer) and of the whole
    gradient ("grad.global_norm"), read after backward and before the optimizer step."""

    def __init__(self, layers: list[tuple[str, nn.Module]], every: int = 1):
        self.layers, self.every = layers, every

    def after_backward(self, step: int) -> None:
        if not self.due(step):
            return
        all_grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(all_grads))) if all_grads else torch.zeros(())
        self.recorder.log("grad.global_norm", step, total)
        if not self.layers:
            return
        grads = [m.weight.grad if m.weight.grad is not None else torch.zeros_like(m.weight) for _, m in self.layers]
        self.recorder.log("grad.norm", step, torch.stack(torch._foreach_norm(grads)))


class UpdateRatios(Instrument):
    """||W_after - W_before|| / ||W_before|| per layer ("update.ratio") and ||W|| ("weight.norm").
    Karpathy's rule of thumb: ~1e-3 is healthy; >>1e-2 is a too-high LR, <<1e-5 a too-low one."""

    def __init__(self, layers: list[tuple[str, nn.Module]], every: int = 1):
        self.layers, self.every = layers, every
        self._before: list[torch.Tensor] | None = None

    def after_backward(self, step: int) -> None:
        if self.due(step) and self.layers:
            self._before = [m.weight.detach().clone() for _, m in self.layers]

    def after_step(self, step: int) -> None:
        if self._before is None:
            return
        weights = [m.weight.detach() for _, m in self.layers]
        before_norm = torch.stack(torch._foreach_norm(self._before))
        torch._foreach_sub_(self._before, weights)
        delta_norm = torch.stack(torch._foreach_norm(self._before))
        self.recorder.log("update.ratio", step, delta_norm / before_norm.clamp_min(1e-30))
        self.recorder.log("weight.norm", step, before_norm)
        self._before = None


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
    """Statistics of each activation module's output on scheduled steps:

    - ``act.dead_frac``: fraction of ReLU units that were never active on any input of the
      last ``window`` measured batches (NaN for non-ReLU layers);
    - ``act.sat_frac``: fraction of sigmoid/tanh outputs in the flat, gradient-killing tails
      (NaN for other layers);
    - ``act.scale``: standard deviation of the output;
    - ``act.unit_diversity``: mean over samples of the spread across units, relative to the
      output's std. ~0 means all units compute the same function (symmetric init).
    """

    def __init__(self, modules: list[tuple[str, nn.Module, str]], every: int = 5, window: int = 4):
        self.modules, self.every, self.window = modules, every, window
        self._armed = False
        self._stats: dict[str, torch.Tensor] = {}
        self._active: dict[str, deque] = {n: deque(maxlen=window) for n, _, _ in modules}
        self._handles = []
        self.order: list[str] = [n for n, _, _ in modules]

    def attach(self, model, recorder, optimizer=None):
        super().attach(model, recorder, optimizer)
        self._handles = [m.register_forward_hook(self._make_hook(n, kind)) for n, m, kind in self.modules]

    def _make_hook(self, name: str, kind: str):
        nan = torch.tensor(float("nan"))

        def hook(_m, _inp, out):
            if not self._armed or not isinstance(out, torch.Tensor):
                return
            with torch.no_grad():
                x = out.detach().float()
                u = _units(x)
                scale = x.std() if x.numel() > 1 else torch.zeros((), device=x.device)
                spread = u.std(dim=1).mean() if u.shape[1] > 1 else torch.zeros((), device=x.device)
                # all-zero output (a dead layer) has no unit spread to speak of: nan, not "identical"
                diversity = spread / scale if scale > 1e-12 else torch.full((), float("nan"), device=x.device)
                dead = sat = nan.to(x.device)
                if kind == "relu":
                    self._active[name].append((u > 0).any(dim=0))
                    ever = torch.stack(list(self._active[name])).any(dim=0)
                    dead = 1.0 - ever.float().mean()
                elif kind == "sigmoid":
                    sat = ((x < SIGMOID_SAT) | (x > 1 - SIGMOID_SAT)).float().mean()
                elif kind == "tanh":
                    sat = (x.abs() > TANH_SAT).float().mean()
                self._stats[name] = torch.stack([dead, sat, scale, diversity])

        return hook

    def before_forward(self, step: int) -> None:
        self._armed = self.due(step)

    def after_step(self, step: int) -> None:
        if not self._armed:
            return
        self._armed = False
        nan4 = torch.full((4,), float("nan"))
        rows = torch.stack([self._stats.get(n, nan4).cpu() for n in self.order])  # (A, 4)
        for j, key in enumerate(("act.dead_frac", "act.sat_frac", "act.scale", "act.unit_diversity")):
            self.recorder.log(key, step, rows[:, j])
        self._stats.clear()

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
