"""Activation symptoms of the baseline probe: dead ReLUs, saturated sigmoid/tanh units,
signal scale across depth, symmetric (identical) units."""

from __future__ import annotations

import numpy as np

from optdoctor.trace import ProbeSet
from optdoctor.symptoms._util import finite
from optdoctor.symptoms.registry import produces


# rows that differ by less than this fraction of the largest weight are the same unit
IDENTICAL_ROWS = 1e-6
# activations that carry no signal through depth: a softmax outputs probabilities (attention
# weights ~1/L); its scale and spread across keys say nothing about the init's signal scale
NOT_SIGNAL = ("softmax",)


def _nanmax(x: np.ndarray) -> float | None:
    x = finite(x)
    return float(x.max()) if len(x) else None


@produces(
    ("weight.init_gain", "median over the hidden Linear/Conv layers (the head left out) and recurrent hidden-to-hidden matrices of rms(W) * sqrt(fan_in) at step 0; every standard init gives ~0.6-1.4", "ratio"),
)
def init_gain(p: ProbeSet) -> dict:
    """How far the weights start from a variance-preserving scale. A head is often initialised
    small on purpose (zero-init classifiers), so it is left out. Needs a trend to compound: two
    hidden layers, or one recurrent matrix (which the state crosses once per position)."""
    t = p.baseline
    if not t.has("weight.init_gain"):
        return {}
    g = t.values("weight.init_gain")[0]
    g = g[np.isfinite(g)][:-1]
    r = np.zeros(0)
    if t.has("weight.recurrent_gain"):
        r = t.values("weight.recurrent_gain")[0]
        r = r[np.isfinite(r)]
    if len(g) + len(r) < 2 and not len(r):
        return {}
    return {"weight.init_gain": float(np.median(np.concatenate([g, r])))}


@produces(
    ("model.affine", "1 if the model at step 0 is an affine function of its input (a linear or deep linear net: g(a) = f(a x) - f(0) odd and linear in a for a = +-A, 2A at A = 1e2 ... 1e11, on a float64 copy, to 1e-10), 0 if not; absent where untested (inputs that are not one float tensor)", "flag"),
)
def affine(p: ProbeSet) -> dict:
    """Tells a deep linear net started near zero (the saddle at the origin, Saxe et al. 2014)
    from a nonlinear net started with tiny weights (a bad init): their weights look alike
    (probes.affine)."""
    a = p.baseline.meta.get("affine")
    return {} if a is None else {"model.affine": float(a)}


# Losses convex in the model's output: with a deep linear network every local minimum of these is
# global (Kawaguchi 2016 for the squared loss; Laurent & von Brecht 2018 for any convex
# differentiable loss). "model" (the model's own loss) and a user's loss function are unknown.
CONVEX_LOSSES = ("mse", "cross_entropy", "bce_with_logits", "nll")


@produces(
    ("model.deep_linear", "1 if the model is a deep linear network under a loss convex in its output: affine in its input at step 0 (model.affine), every trainable parameter a weight or bias of an nn.Linear layer, and a built-in mse / cross_entropy / bce_with_logits / nll loss; every local minimum of such a loss is global (Kawaguchi 2016; Laurent & von Brecht 2018). 0 if tested and not; absent where untested (in the monitor: known when loss_fn is torch's own MSE, cross-entropy, BCE-with-logits or NLL, functional or module)", "flag"),
)
def deep_linear(p: ProbeSet) -> dict:
    meta = p.baseline.meta
    a, share, loss = meta.get("affine"), meta.get("linear_share"), meta.get("loss")
    if a is None or share is None or not isinstance(loss, str):
        return {}
    return {"model.deep_linear": float(a >= 1 and share >= 1 and loss in CONVEX_LOSSES)}


@produces(
    ("act.layers", "number of activation layers seen (modules and functional calls such as F.relu; softmax not counted)", "count"),
    ("act.dead_frac.max", "largest fraction of a ReLU layer's units never active on recent batches, at the end", "fraction"),
    ("act.dead_frac.mean", "mean over ReLU layers of the never-active fraction, at the end", "fraction"),
    ("act.dead_frac.init", "largest never-active fraction of a ReLU layer at step 0", "fraction"),
    ("act.dead_onset", "first measured step at which some ReLU layer had more than half its units dead, as a fraction of the steps (absent if never)", "fraction"),
    ("act.saturated_frac.max", "largest fraction of a sigmoid/tanh layer's outputs in the flat tails, at the end", "fraction"),
    ("act.saturated_frac.init", "largest saturated fraction of a sigmoid/tanh layer at step 0", "fraction"),
    ("act.scale_ratio.init", "output std of the last activation layer / of the first, at step 0 (signal collapse << 1, explosion >> 1)", "ratio"),
    ("act.scale.init_min", "smallest output std of any activation layer at step 0", "value"),
    ("act.unit_diversity.init", "smallest spread across a layer's units relative to its std at step 0 (~0: all units identical, symmetric init)", "ratio"),
    ("act.nonrelu_frac", "fraction of activation layers that are not ReLU-like", "fraction"),
    ("weight.identical_rows_frac", "fraction of weight layers whose units (rows) all have the same incoming weights at step 0 (constant or zero init)", "fraction"),
)
def activation_stats(p: ProbeSet) -> dict:
    t = p.baseline
    out = {}
    if t.has("weight.row_spread"):
        spread = finite(t.values("weight.row_spread")[0])
        if len(spread):
            out["weight.identical_rows_frac"] = float(np.mean(spread < IDENTICAL_ROWS))
    if not t.has("act.scale"):
        return out
    all_kinds = t.meta.get("act_kinds", [])
    signal = np.array([k not in NOT_SIGNAL for k in all_kinds], dtype=bool)  # depth symptoms: these columns
    kinds = [k for k in all_kinds if k not in NOT_SIGNAL]
    steps = t.steps("act.scale")
    out["act.layers"] = float(len(kinds))
    if kinds:
        out["act.nonrelu_frac"] = float(np.mean([k != "relu" for k in kinds]))
    dead = t.values("act.dead_frac")
    if np.isfinite(dead).any():
        out["act.dead_frac.max"] = _nanmax(dead[-1])
        out["act.dead_frac.init"] = _nanmax(dead[0])
        last = finite(dead[-1])
        out["act.dead_frac.mean"] = float(last.mean()) if len(last) else None
        over = np.where(np.nan_to_num(dead, nan=0.0).max(axis=1) > 0.5)[0]
        if len(over):
            out["act.dead_onset"] = float(steps[over[0]] / max(1, t.meta.get("steps", steps[-1] or 1)))
    sat = t.values("act.sat_frac")
    if np.isfinite(sat).any():
        out["act.saturated_frac.max"] = _nanmax(sat[-1])
        out["act.saturated_frac.init"] = _nanmax(sat[0])
    scale0 = t.values("act.scale")[0]
    if len(signal) == len(scale0):  # (a trace without act_kinds: every column)
        scale0 = scale0[signal]
    if len(scale0) >= 2 and np.all(np.isfinite(scale0)):
        out["act.scale_ratio.init"] = float(scale0[-1] / max(scale0[0], 1e-30))
        out["act.scale.init_min"] = float(scale0.min())
    div0 = t.values("act.unit_diversity")[0]
    div0 = finite(div0[signal] if len(signal) == len(div0) else div0)
    if len(div0):
        out["act.unit_diversity.init"] = float(div0.min())
    return out
