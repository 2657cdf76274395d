"""Which modules get a column, and in which order: fixed once, before any instrument attaches.

Registration order (``named_modules``) is not forward order: real models often define the head
before the body. ``discover`` runs one forward pass (eval mode, no gradient, the global RNG
restored afterwards, so the training that follows is the one it would have been) and orders
parametrised layers and activation modules by their first call. Every per-layer series then
uses that one order.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Activation modules by the failure they can show. ReLU units die (output exactly 0 for every
# input); sigmoid/tanh-like units saturate (derivative ~0). Other activations only get scale.
RELU_LIKE = (nn.ReLU, nn.ReLU6)
SATURATING = {nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "sigmoid", nn.Tanh: "tanh", nn.Hardtanh: "tanh", nn.Softsign: "tanh"}
OTHER_ACTS = (nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Softplus)

# Saturation thresholds on the output: sigmoid' = s(1-s) < 0.01 (1/25 of its maximum 0.25)
# and tanh' = 1 - t^2 < 0.02 (1/50 of its maximum 1) mark a unit that passes almost no gradient.
SIGMOID_SAT = (1 - math.sqrt(1 - 4 * 0.01)) / 2  # 0.010102: s < it or s > 1 - it  <=>  s(1-s) < 0.01
TANH_SAT = 0.99  # |t| > 0.99  <=>  1 - t^2 < 0.0199

INPUT_SUFFIX = ":input"  # an activation measured on a layer's input (a functional activation)

Layers = list[tuple[str, nn.Module]]
Acts = list[tuple[str, nn.Module, str]]


def activation_kind(module: nn.Module) -> str | None:
    if isinstance(module, RELU_LIKE):
        return "relu"
    for cls, kind in SATURATING.items():
        if isinstance(module, cls):
            return kind
    if isinstance(module, OTHER_ACTS):
        return "other"
    return None


def parametrised_layers(model: nn.Module) -> Layers:
    """Modules that own a trainable weight matrix/kernel (Linear, Conv, Embedding, ...), in
    registration order."""
    out = []
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(w, nn.Parameter) and w.requires_grad and w.dim() >= 2:
            out.append((name or "model", m))
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
    called keep registration order, after the called ones) and, when the model has no
    activation modules, infers activations written as functions in ``forward``
    (``F.relu(self.fc1(x))``, see ``infer_functional_activations``). Without inputs, or when
    that pass raises (the training step will report the user's error), registration order.
    The model's mode, its gradients' absence and the global RNG are left as they were."""
    layers, acts = parametrised_layers(model), activation_modules(model)
    if inputs is None or not (layers or acts):
        return layers, acts
    order: list[str] = []
    calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []  # (layer, its input, its output), call order
    infer = not acts and bool(layers)
    layer_names = {n for n, _ in layers}

    def make(name):
        def hook(_m, inp, out):
            if name not in order:
                order.append(name)
            if infer and name in layer_names and inp and isinstance(inp[0], torch.Tensor) and isinstance(out, torch.Tensor):
                calls.append((name, inp[0].detach(), out.detach()))

        return hook

    handles = [m.register_forward_hook(make(n)) for n, m in layers + [(n, m) for n, m, _ in acts]]
    was = model.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.eval()
            _call(model, inputs)
    except Exception:  # noqa: BLE001 - the user's forward raising is reported by the training step
        order.clear()
        calls.clear()
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    rank = {n: i for i, n in enumerate(order)}
    last = len(rank)
    layers = sorted(layers, key=lambda t: rank.get(t[0], last))  # stable: uncalled keep registration order
    acts = sorted(acts, key=lambda t: rank.get(t[0], last))
    if infer:
        acts = infer_functional_activations(layers, calls)
    return layers, acts


def infer_functional_activations(layers: Layers, calls) -> Acts:
    """Pairs each layer's output z with the next called layer's input a: where a == relu(z),
    tanh(z) or sigmoid(z) elementwise, the next layer's input is measured as that activation.
    Returns entries ("<next layer>:input", next layer, kind)."""
    by_name = dict(layers)
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
