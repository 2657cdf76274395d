"""Activations written as function calls (``F.relu(self.bn(self.conv(x)))``, ``x.softmax(-1)``),
seen wherever they are called and named by the module that called them.

A ``torch.overrides.TorchFunctionMode`` is entered for one forward pass: every torch function
called in that pass goes through ``FunctionalActivations.__torch_function__``; the activation
functions of ``FUNCTIONS`` are reported with the innermost module running at the call (a stack
kept by forward pre-/post-hooks on every submodule, for that pass only). A call site is named

    "<module path>:<function>#<k>"      e.g. "layer1.0:relu#2" (the root module: "relu#1")

where ``k`` counts that function's calls inside that module during the pass (from 1), so a name
is the same on every pass that takes the same path through ``forward`` (every step, every probe).
Inside an activation *module* (``nn.ReLU`` calls ``F.relu``) nothing is reported: the module is
measured as a module, once. A function called by another torch function (``F.relu6`` calling
``hardtanh``, ``F.multi_head_attention_forward``'s inner softmax) is not seen: the mode is off
inside a call it intercepts; so is a fused kernel (``F.scaled_dot_product_attention``).

Cost: while the mode is on, every torch call in the forward pass pays a Python dispatch
(ResNet-20, 115 calls: +1.6 ms CPU on a 4 ms pass, ``benchmarks/functional_acts.py``); it is on
only for the measured passes (``Activations``' schedule, ~10 per probe) and for the layer-order
discovery pass.

Known gaps: names come from the (eval-mode) discovery pass, so a call made only in training
mode (``if self.training: x = F.relu(x)``) has no column, and one made *before* another call of
the same function in the same module shifts that module's counts (its columns then measure a
neighbouring call of the same function); a custom activation module is not an activation module
(``x * torch.sigmoid(x)`` is measured as its sigmoid gate); a module run in another thread
(``nn.DataParallel`` replicas) or compiled code (TorchScript) is not seen. When ``Activations``
starts the mode from the root's forward pre-hook, instruments after it in the set run their own
``before_forward`` under it: none calls an activation function there.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

F = nn.functional
T = torch.Tensor


class Fn(NamedTuple):
    name: str  # the canonical name in a site's name: "relu" for F.relu, torch.relu, Tensor.relu_ ...
    kind: str  # as ``layers.activation_kind``: "relu", "sigmoid", "tanh", "softmax" or "other"


def _table() -> dict[Callable, Fn]:
    """Every spelling of an activation -> what it is. Kinds follow the module table in
    ``layers``: leaky/parametric ReLUs are "other" (a negative slope keeps a gradient, the unit
    cannot die); hardtanh/softsign saturate like tanh, hardsigmoid like sigmoid; softmax is its
    own kind (probabilities along a dim: scale only, kept out of the depth symptoms)."""
    spellings = {
        ("relu", "relu"): [F.relu, F.relu_, torch.relu, torch.relu_, T.relu, T.relu_],
        ("relu6", "relu"): [F.relu6],
        ("sigmoid", "sigmoid"): [torch.sigmoid, torch.sigmoid_, T.sigmoid, T.sigmoid_, torch.special.expit],
        ("hardsigmoid", "sigmoid"): [F.hardsigmoid],
        ("tanh", "tanh"): [torch.tanh, torch.tanh_, T.tanh, T.tanh_],
        ("hardtanh", "tanh"): [F.hardtanh, F.hardtanh_],
        ("softsign", "tanh"): [F.softsign],
        ("softmax", "softmax"): [F.softmax, torch.softmax, T.softmax],
        ("leaky_relu", "other"): [F.leaky_relu, F.leaky_relu_],
        ("prelu", "other"): [F.prelu],
        ("rrelu", "other"): [F.rrelu, F.rrelu_],
        ("elu", "other"): [F.elu, F.elu_],
        ("celu", "other"): [F.celu, F.celu_],
        ("selu", "other"): [F.selu, F.selu_],
        ("gelu", "other"): [F.gelu],
        ("silu", "other"): [F.silu],
        ("mish", "other"): [F.mish],
        ("hardswish", "other"): [F.hardswish],
        ("softplus", "other"): [F.softplus],
    }
    table: dict[Callable, Fn] = {}
    for (name, kind), fns in spellings.items():
        for fn in fns:
            if fn in table and table[fn] != (name, kind):  # an alias of two entries: refuse, do not overwrite
                raise ValueError(f"{fn!r} is both {table[fn]} and {(name, kind)}")
            table[fn] = Fn(name, kind)
    return table


FUNCTIONS: dict[Callable, Fn] = _table()
SEP = ":"  # module path : function # call count -- a module's own name cannot look like that


def site_name(path: str, fn: str, k: int) -> str:
    return f"{path}{SEP}{fn}#{k}" if path else f"{fn}#{k}"


def is_site(name: str) -> bool:
    """Whether an activation column is a functional call site (not an activation module)."""
    return "#" in name.rsplit(SEP, 1)[-1]


OnCall = Callable[[str, nn.Module, str, torch.Tensor], None]  # (site name, calling module, kind, output)


class FunctionalActivations(TorchFunctionMode):
    """Reports activation function calls during a forward pass of ``model``.

    ``start()`` before the pass (it may be called from the root module's forward pre-hook: the
    root is the bottom of the module stack, never hooked), ``stop()`` after it; or ``with``.
    ``on_call(name, module, kind, output)`` runs with the mode off (its torch calls are not
    intercepted) and gradients still on: it should measure under ``torch.no_grad()``.
    ``skip``: modules whose calls are not reported (activation modules, measured as modules)."""

    def __init__(self, model: nn.Module, on_call: OnCall, skip: set[nn.Module] | frozenset = frozenset()):
        super().__init__()
        self.model, self.on_call, self.skip = model, on_call, skip
        self.paths = {m: n for n, m in model.named_modules()}  # a shared module: its first path
        self._stack: list[nn.Module] = []
        self._counts: dict[tuple[str, str], int] = {}
        self._handles: list = []
        self.active = False

    def _push(self, module, _args):
        self._stack.append(module)

    def _pop(self, _module, _args, _out):
        self._stack.pop()

    def start(self) -> None:
        if self.active:
            return
        self._stack, self._counts = [self.model], {}
        for m in self.paths:
            if m is not self.model:
                self._handles += [m.register_forward_pre_hook(self._push),
                                  m.register_forward_hook(self._pop, always_call=True)]
        self.active = True
        super().__enter__()

    def stop(self) -> None:
        if not self.active:
            return
        self.active = False
        super().__exit__(None, None, None)
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        try:
            fn = FUNCTIONS.get(func)
        except TypeError:  # an unhashable callable: not one of ours
            fn = None
        if fn is not None and isinstance(out, torch.Tensor) and self._stack:
            owner = self._stack[-1]
            if owner not in self.skip:
                path = self.paths.get(owner, "")
                key = (path, fn.name)
                k = self._counts[key] = self._counts.get(key, 0) + 1
                self.on_call(site_name(path, fn.name, k), owner, fn.kind, out)
        return out
