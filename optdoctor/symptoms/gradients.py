"""Per-layer gradient symptoms of the baseline probe.

Why ratios across depth and not absolute thresholds: healthy networks have small absolute
gradients too. What marks vanishing (exploding) gradients is the backward signal shrinking
(growing) by a roughly constant factor per layer on its way to the input (Glorot & Bengio 2010;
Hochreiter 1991). For a homogeneous (ReLU/linear) net with a badly scaled init, the per-layer
weight-gradient norms stay level (the shrinking backward signal meets a growing forward one),
so such nets show up in activation-scale and loss symptoms instead.
"""

from __future__ import annotations

import numpy as np

from optdoctor.trace import ProbeSet
from optdoctor.symptoms._util import finite, geomean, head_tail
from optdoctor.symptoms.registry import produces

EARLY = 0.1  # the first 10% of steps: the gradients the init and architecture produce


@produces(
    ("grad.layers", "number of parametrised layers (Linear/Conv/Embedding) seen by the gradient probe", "count"),
    ("grad.depth_ratio", "gradient norm of the first layer / of the last layer, geometric mean over the first 10% of steps", "ratio"),
    ("grad.layer_factor", "geometric-mean factor by which the gradient norm changes from one layer to the one before it (<1: shrinks toward the input)", "ratio"),
    ("grad.monotone_frac", "fraction of adjacent layer pairs whose gradient norm changes in the same direction as the overall first/last ratio", "fraction"),
    ("grad.nonfinite", "1 if any gradient norm was NaN/Inf", "flag"),
    ("grad.global_growth", "largest global gradient norm / the first one", "ratio"),
    ("grad.step_gain", "first-order loss decrease of the steps taken, g . (W_before - W_after), / loss, over the last 10% of steps: the relative decrease a step can buy (lr |g|^2 / loss for plain SGD)", "fraction"),
    ("grad.step_gain_init", "the same over the first 10% of steps", "fraction"),
)
def gradient_depth(p: ProbeSet) -> dict:
    t = p.baseline
    out = {}
    if t.has("grad.global_norm"):
        g = t.values("grad.global_norm")
        out["grad.nonfinite"] = float(not np.all(np.isfinite(g)))
        gf = finite(g)
        if len(gf) and gf[0] > 0:
            out["grad.global_growth"] = float(gf.max() / gf[0])
        gain = _step_gain(t, g)
        if gain is not None:
            out["grad.step_gain_init"], out["grad.step_gain"] = head_tail(gain)
    if not t.has("grad.norm"):
        return out
    G = t.values("grad.norm")  # (T, L), columns in forward order
    k = max(1, int(round(len(G) * EARLY)))
    # a layer that never got a gradient (NaN throughout: a module never called) is not part of
    # the backward path; dropping it keeps one unused head from hiding the others
    G = G[:, ~np.all(np.isnan(G[:k]), axis=0)]
    L = G.shape[1]
    out["grad.layers"] = float(L)
    if L < 2:
        return out
    early = G[:k]
    ok = np.all(np.isfinite(early), axis=1) & np.all(early > 0, axis=1)
    early = early[ok]
    if len(early) == 0:
        return out
    first_last = geomean(early[:, 0] / early[:, -1])
    out["grad.depth_ratio"] = first_last
    per_layer = np.exp(np.log(early).mean(axis=0))  # (L,) geometric mean per layer
    factors = per_layer[:-1] / per_layer[1:]  # layer i / layer i+1
    out["grad.layer_factor"] = geomean(factors)
    direction = np.sign(np.log(first_last)) if first_last != 1 else 0.0
    out["grad.monotone_frac"] = float(np.mean(np.sign(np.log(factors)) == direction)) if direction else 0.0
    return out


def _step_gain(t, g: np.ndarray) -> np.ndarray | None:
    """Per measured step, the first-order decrease of the step the optimizer took relative to
    the loss. Read from "update.first_order" (any optimizer: momentum and Adam do not step along
    lr * g); traces without it fall back to plain SGD's lr |g|^2."""
    if not t.has("loss.train"):
        return None
    loss_steps, loss = t.steps("loss.train"), t.values("loss.train")
    if t.has("update.first_order"):
        steps, fo = t.steps("update.first_order"), t.values("update.first_order")
        at = {int(s): float(v) for s, v in zip(loss_steps, loss)}
        pairs = [(f, at[int(s)]) for s, f in zip(steps, fo) if int(s) in at]
        if not pairs:
            return None
        fo, lv = np.array(pairs).T
        return fo / np.maximum(np.abs(lv), 1e-12)
    if not len(finite(g)):
        return None
    lr = float(t.meta.get("lr", 0.0))
    n = min(len(loss), len(g))
    return lr * g[:n] ** 2 / np.maximum(np.abs(loss[:n]), 1e-12)


@produces(
    ("layer.scale_ratio.init", "output std of the last hidden parametrised layer / of the first, at step 0 (the forward signal growing >> 1 or collapsing << 1 through depth; the head is left out)", "ratio"),
    ("layer.scale_factor.init", "geometric-mean factor by which the output std changes from one hidden layer to the next at step 0", "ratio"),
)
def layer_scales(p: ProbeSet) -> dict:
    t = p.baseline
    if not t.has("layer.out_scale"):
        return {}
    row = t.values("layer.out_scale")[0]
    hidden = row[:-1]  # the head maps to the targets' scale, not the signal's
    hidden = hidden[np.isfinite(hidden) & (hidden > 0)]
    if len(hidden) < 2:
        return {}
    ratio = float(hidden[-1] / hidden[0])
    return {"layer.scale_ratio.init": ratio, "layer.scale_factor.init": float(ratio ** (1.0 / (len(hidden) - 1)))}


TIME_EARLY = 3  # measurements of the per-position gradient that count as "at the start"


@produces(
    ("grad.time_ratio", "loss-gradient norm at a sequence input's first position / at its last, geometric mean over the first measurements (>>1: exploding through time, <<1: vanishing through time)", "ratio"),
    ("grad.time_steps", "length of the sequence whose positions the gradient was measured at", "count"),
    ("grad.time_factor", "per-position factor of grad.time_ratio: its (time_steps - 1)-th root (default-initialised GRU/LSTM ~0.5-0.7, a vanilla tanh RNN ~0.5)", "ratio"),
)
def gradient_time(p: ProbeSet) -> dict:
    """Depth in time (Pascanu, Mikolov & Bengio 2013): a recurrent layer is one layer, but its
    backward signal crosses the recurrent matrix once per position; per-layer ratios miss it."""
    t = p.baseline
    if not t.has("grad.position"):
        return {}
    G = t.values("grad.position")  # (M, P): measurements x positions
    if G.ndim != 2 or G.shape[1] < 2:
        return {}
    early = G[:TIME_EARLY]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = geomean(early[:, 0] / early[:, -1])
    out = {"grad.time_steps": float(G.shape[1])}
    if np.isfinite(ratio):
        out["grad.time_ratio"] = ratio
        if ratio > 0:
            out["grad.time_factor"] = float(ratio ** (1.0 / (G.shape[1] - 1)))
    return out


@produces(
    ("update.ratio", "median over layers and steps of |dW| / |W| per optimizer step (~1e-3 is healthy)", "ratio"),
    ("update.ratio_max", "largest per-layer median of |dW| / |W|", "ratio"),
)
def update_ratio(p: ProbeSet) -> dict:
    t = p.baseline
    if not t.has("update.ratio"):
        return {}
    U = t.values("update.ratio")
    U = U[np.all(np.isfinite(U), axis=1)]
    if len(U) == 0:
        return {}
    per_layer = np.median(U, axis=0)
    return {"update.ratio": float(np.median(U)), "update.ratio_max": float(per_layer.max())}
