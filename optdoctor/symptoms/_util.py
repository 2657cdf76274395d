"""Small numeric helpers shared by the symptom producers (numpy only)."""

from __future__ import annotations

import numpy as np

from optdoctor.trace import Trace


def finite(x: np.ndarray) -> np.ndarray:
    return x[np.isfinite(x)]


def head_tail(v: np.ndarray, frac: float = 0.1) -> tuple[float, float]:
    """Mean of the first and of the last ``frac`` of a series (at least one point each):
    mini-batch losses are noisy, single points are not evidence."""
    v = finite(v)
    if len(v) == 0:
        return float("nan"), float("nan")
    k = max(1, int(round(len(v) * frac)))
    return float(v[:k].mean()), float(v[-k:].mean())


def smooth(v: np.ndarray, k: int) -> np.ndarray:
    """Trailing moving average of width k (shorter at the start)."""
    if len(v) == 0 or k <= 1:
        return v.astype(float)
    c = np.cumsum(np.insert(v.astype(float), 0, 0.0))
    out = np.empty(len(v))
    for i in range(len(v)):
        lo = max(0, i + 1 - k)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def final_loss(t: Trace) -> float:
    """Train loss at the end of a probe: the mean of its last 10% of steps; +inf if it diverged."""
    if t.status == "diverged":
        return float("inf")
    if not t.has("loss.train"):
        return float("nan")
    return head_tail(t.values("loss.train"))[1]


def safe_div(a: float, b: float) -> float:
    if b == 0 or not np.isfinite(b):
        return float("nan") if a == 0 or not np.isfinite(a) else float("inf") * np.sign(a) * (np.sign(b) or 1)
    return a / b


def geomean(x: np.ndarray) -> float:
    x = finite(x)
    x = x[x > 0]
    return float(np.exp(np.log(x).mean())) if len(x) else float("nan")
