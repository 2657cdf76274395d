"""Whether a model, as it starts, is an affine function of its input (a linear or deep linear
net), tested on one batch.

A deep linear net started near zero sits at the saddle of the origin (Saxe et al. 2014); a
nonlinear net started with tiny weights is badly initialised. The weights alone cannot tell the
two apart, a model's *function* can: f is affine iff

    f(a x) - f(0) = a (f(x) - f(0))      for every scalar a.

Tested along the batch's own direction at large multiples A in {1e2, 1e5, 1e8, 1e11}: g(a) = f(a x) -
f(0) must be odd (g(-A) = -g(A): a ReLU is not), double with a (g(2A) = 2 g(A): a curve, a
saturating tanh/sigmoid/GELU or a normalisation layer's scale invariance is not) and grow 1000x
from one A to the next. Large multiples, because a net with tiny weights and default-sized
biases is *locally* affine (every unit's state is set by its bias): only inputs large enough to
overcome the biases show its nonlinearity, and only they lift f(a x) - f(0) above the rounding
of f(0). Run on a float64 copy of the model, in eval mode, without gradients. An output that the
input barely moves even at 1e11 tells nothing (NaN). Only a model with one floating-point input
tensor is tested (token ids cannot be scaled): the others get NaN, as do models with more than
``MAX_PARAMS`` parameters (the copy would double their memory) and models
whose forward cannot run on the copy."""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Any

import torch
from torch import nn

MAX_PARAMS = 10_000_000
SCALES = (1e2, 1e5, 1e8, 1e11)
# float64 leaves an affine map a residue of ~4e-15 of its output (8 Linear layers of 1024, measured);
# a nonlinearity shows far above 1e-10, also one damped by tiny weights behind a skip connection
# (a residual net with branches at std 1e-4: ~1e-8)
RTOL = 1e-10
ROUNDING = 1e-12  # of f(0)'s magnitude: float64's 1e-16, with room for a deep net's accumulation


def _one_float_input(inputs: Any) -> tuple[str | None, torch.Tensor] | None:
    """(the keyword it is passed by, or None for positional; the tensor) when the call takes one
    tensor (a bare tensor, or a ``probes.batches.Call`` of one argument); else None."""
    if isinstance(inputs, torch.Tensor):
        return None, inputs
    args, kwargs = getattr(inputs, "args", None), getattr(inputs, "kwargs", None)
    if args is None or kwargs is None or len(args) + len(kwargs) != 1:
        return None
    key, x = (None, args[0]) if args else next(iter(kwargs.items()))
    return (key, x) if isinstance(x, torch.Tensor) else None


def first_items(inputs: Any, k: int = 16) -> Any:
    """A detached copy of the first ``k`` items of a call's one floating-point input, in a form
    ``affine_in_input`` takes (the monitor keeps it from the first training forward and tests at
    ``diagnose``, off the training loop); None when there is nothing to test. ``inputs``: a
    tensor, a tuple of positional inputs, a dict of keyword inputs or a ``Call``."""
    from optdoctor.probes.batches import Call

    if isinstance(inputs, dict):
        inputs = Call((), dict(inputs))
    elif isinstance(inputs, tuple):
        inputs = Call(inputs, {})
    found = _one_float_input(inputs)
    if found is None or not found[1].is_floating_point() or found[1].dim() == 0:
        return None
    key, x = found
    x = x[:k].detach().clone()
    return x if key is None else Call((), {key: x})


def _output(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = out.get("logits", next(iter(out.values()), None) if out else None)
        return out if isinstance(out, torch.Tensor) else None
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return getattr(out, "logits", None) if isinstance(getattr(out, "logits", None), torch.Tensor) else None


def affine_in_input(model: nn.Module, inputs: Any) -> float:
    """1.0 if ``model`` is affine in its (single, floating-point) input on this batch, 0.0 if
    not, NaN if it cannot be tested. The model, its mode and the global RNG are left as they
    were."""
    found = _one_float_input(inputs)
    if found is None:
        return math.nan
    key, x = found
    if not x.is_floating_point() or x.numel() == 0:
        return math.nan
    if sum(p.numel() for p in model.parameters()) > MAX_PARAMS:
        return math.nan

    def call(m, t):
        return m(t) if key is None else m(**{key: t})

    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad(), _no_autocast(x.device.type):
            m = copy.deepcopy(model).double().eval()
            return _verdict(lambda a: _output(call(m, a * x.detach().double())))
    except Exception:  # noqa: BLE001 - a forward that cannot run in float64 on a copy: untested
        return math.nan


def _no_autocast(device_type: str):
    """Inside a user's ``autocast`` region (the monitor's hook runs in their forward) a float64
    copy would still compute in half precision."""
    try:
        return torch.autocast(device_type, enabled=False)
    except RuntimeError:  # a device type autocast does not know: nothing to switch off
        return contextlib.nullcontext()


def _verdict(f) -> float:
    """The checks, scale by scale; the first that fails decides (a nonlinear net usually fails at
    the first scale, after four forward passes)."""
    f0 = f(0.0)
    if f0 is None or not f0.is_floating_point():
        return math.nan
    noise = ROUNDING * float(f0.abs().max())  # what f(0)'s own rounding leaves in a difference
    g, prev = {}, None
    for A in SCALES:
        for a in (A, -A, 2 * A):
            out = f(a)
            if out is None or not out.is_floating_point() or out.shape != f0.shape:
                return math.nan
            if not torch.isfinite(out).all():
                return 0.0  # an affine map of finite inputs is finite
            g[a] = out - f0
        tol = RTOL * float(g[A].abs().max()) + noise
        if float((g[-A] + g[A]).abs().max()) > 2 * tol or float((g[2 * A] - 2 * g[A]).abs().max()) > 3 * tol:
            return 0.0
        if prev is not None and float((g[A] - (A / prev) * g[prev]).abs().max()) > tol + (A / prev) * noise:
            return 0.0
        prev = A
    if not torch.isfinite(f0).all() or float(g[SCALES[-1]].abs().max()) <= 100 * noise:
        return math.nan  # the input barely moves the output even at the largest scale: nothing to tell
    return 1.0


def linear_share(model: nn.Module) -> float:
    """Share of the trainable parameter elements that are the weights and biases of ``nn.Linear``
    layers (1.0: the model's parameters are those of a stack of Linear layers; a parameter used
    any other way, convolutions, normalisation, embeddings or a module's own ``nn.Parameter``,
    lowers it). With ``affine_in_input`` == 1 this tells a deep linear network from an affine
    model reached through another parameterisation (y = (t^3 - 3t) x is affine in x, its loss in
    t is not convex)."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in params)
    if total == 0:
        return float("nan")
    linear = {id(p) for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False)}
    return sum(p.numel() for p in params if id(p) in linear) / total
