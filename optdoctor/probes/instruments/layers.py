"""Which modules get a column, and in which order: fixed once, before any instrument attaches.

Registration order (``named_modules``) is not forward order: real models often define the head
before the body. ``discover`` runs one forward pass (eval mode, no gradient, the global RNG
restored afterwards, so the training that follows is the one it would have been) and orders
parametrised layers and activations by their first call; activations are modules (``nn.ReLU``)
and function calls (``F.relu`` in a block's ``forward``, found by ``functional``). Every
per-layer series then uses that one order.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from optdoctor.probes.instruments.functional import FunctionalActivations

# Activation modules by the failure they can show. ReLU units die (output exactly 0 for every
# input); sigmoid/tanh-like units saturate (derivative ~0). Softmax outputs are probabilities,
# not a signal through depth: scale only, and kept out of the depth symptoms. Other activations
# (leaky ReLUs too: a negative slope keeps a gradient) only get scale. The same kinds for the
# functions (``functional.FUNCTIONS``).
RELU_LIKE = (nn.ReLU, nn.ReLU6)
SATURATING = {nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "sigmoid", nn.Tanh: "tanh", nn.Hardtanh: "tanh", nn.Softsign: "tanh"}
SOFTMAX = (nn.Softmax,)
OTHER_ACTS = (nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Softplus)

# Saturation thresholds on the output: sigmoid' = s(1-s) < 0.01 (1/25 of its maximum 0.25)
# and tanh' = 1 - t^2 < 0.02 (1/50 of its maximum 1) mark a unit that passes almost no gradient.
SIGMOID_SAT = (1 - math.sqrt(1 - 4 * 0.01)) / 2  # 0.010102: s < it or s > 1 - it  <=>  s(1-s) < 0.01
TANH_SAT = 0.99  # |t| > 0.99  <=>  1 - t^2 < 0.0199

Layers = list[tuple[str, nn.Module]]
Acts = list[tuple[str, nn.Module, str]]


def activation_kind(module: nn.Module) -> str | None:
    if isinstance(module, RELU_LIKE):
        return "relu"
    for cls, kind in SATURATING.items():
        if isinstance(module, cls):
            return kind
    if isinstance(module, SOFTMAX):
        return "softmax"
    if isinstance(module, OTHER_ACTS):
        return "other"
    return None


class ParamView:
    """A trainable matrix that a module owns directly without calling it ``weight`` (an RNN's
    ``weight_hh_l0``, attention's ``in_proj_weight``, a raw ``nn.Parameter`` of a custom module):
    measured as a layer of its own, through ``.weight`` like any layer; ``owner`` is the module
    whose call orders it."""

    __slots__ = ("owner", "param_name", "weight")

    def __init__(self, owner: nn.Module, param_name: str, weight: nn.Parameter):
        self.owner, self.param_name, self.weight = owner, param_name, weight

    def __repr__(self) -> str:
        return f"ParamView({type(self.owner).__name__}.{self.param_name}, {tuple(self.weight.shape)})"


def owner_of(layer) -> nn.Module:
    return layer.owner if isinstance(layer, ParamView) else layer


def layer_type(layer) -> str:
    return type(owner_of(layer)).__name__


def parametrised_layers(model: nn.Module) -> Layers:
    """Trainable weight matrices/kernels, in registration order: modules with a ``weight`` of
    two or more dimensions (Linear, Conv, Embedding, ...), and each matrix a module owns under
    another name (``ParamView``: recurrent and attention weights, custom parameters). A module
    whose ``weight`` is a vector (a norm layer) is not a layer."""
    out = []
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(w, nn.Parameter):
            if w.requires_grad and w.dim() >= 2:
                out.append((name or "model", m))
            continue
        for pname, p in m.named_parameters(recurse=False):
            if p.requires_grad and p.dim() >= 2:
                out.append((f"{name}.{pname}" if name else pname, ParamView(m, pname, p)))
    return out


def activation_modules(model: nn.Module) -> Acts:
    return [(n, m, k) for n, m in model.named_modules() if (k := activation_kind(m))]


def _call(model: nn.Module, inputs) -> None:
    if hasattr(inputs, "args") and hasattr(inputs, "kwargs"):  # probes.batches.Call: bound to this model
        model(*inputs.args, **inputs.kwargs)
    elif isinstance(inputs, dict):
        model(**inputs)
    elif isinstance(inputs, tuple):
        model(*inputs)
    else:
        model(inputs)


def discover(model: nn.Module, inputs=None) -> tuple[Layers, Acts]:
    """Parametrised layers and activations of ``model`` in forward order.

    With ``inputs`` (one batch), one forward pass orders them by first call (modules never
    called keep registration order, after the called ones) and finds the activations written as
    function calls anywhere in ``forward`` (``F.relu(self.bn(x) + x)`` in a residual block,
    ``scores.softmax(-1)`` in attention): entries ``("<module path>:<fn>#<k>", calling module,
    kind)`` (``functional.FunctionalActivations``), merged with the activation modules in call
    order. The pass runs in eval mode, so a call made only in training mode (``if
    self.training: x = F.relu(x)``) has no column: it is not measured. Without inputs, or when
    that pass raises (the training step will report the user's error), registration order and
    no functional activations. The model's mode, its gradients' absence and the global RNG are
    left as they were."""
    layers, acts = parametrised_layers(model), activation_modules(model)
    if inputs is None:
        return layers, acts
    order: dict[str, int] = {}  # name -> rank of its first call
    sites: Acts = []

    def on_site(name, module, kind, _out):
        if name not in order:
            order[name] = len(order)
            sites.append((name, module, kind))

    owners: dict[int, tuple[nn.Module, list[str]]] = {}  # one hook per module, for all its entries
    for n, m in layers + [(n, m) for n, m, _ in acts]:
        owners.setdefault(id(owner_of(m)), (owner_of(m), []))[1].append(n)

    def make_all(names):
        def hook(_m, _inp, _out):
            for n in names:
                order.setdefault(n, len(order))

        return hook

    handles = [m.register_forward_hook(make_all(names)) for m, names in owners.values()]
    watch = FunctionalActivations(model, on_site, skip={m for _, m, _ in acts})
    was = model.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.eval()
            with watch:
                _call(model, inputs)
    except Exception:  # noqa: BLE001 - the user's forward raising is reported by the training step
        order.clear()
        sites.clear()
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    last = len(order)
    layers = sorted(layers, key=lambda t: order.get(t[0], last))  # stable: uncalled keep registration order
    acts = sorted(acts + sites, key=lambda t: order.get(t[0], last))
    return layers, acts
