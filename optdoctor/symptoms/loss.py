"""Loss-curve symptoms of the baseline probe."""

from __future__ import annotations

import numpy as np

from optdoctor.trace import ProbeSet
from optdoctor.symptoms._util import finite, head_tail, safe_div, smooth
from optdoctor.symptoms.registry import produces


@produces(
    ("loss.initial", "train loss of the first step", "loss"),
    ("loss.final", "mean train loss over the last 10% of steps (inf if the probe diverged)", "loss"),
    ("loss.chance", "loss of the best constant predictor (class-prior entropy for classification, var(y) for mse)", "loss"),
    ("loss.rel_drop", "(initial - final) / initial: how much of the starting loss the probe removed; -inf if it diverged", "fraction"),
    ("loss.progress", "(chance - final) / chance: how much better than predicting a constant the model ends", "fraction"),
    ("loss.init_over_chance", "initial loss / chance loss; ~1 for a sane init, >>1 for overconfident or badly scaled outputs", "ratio"),
    ("loss.final_over_chance", "final loss / chance loss: the end point in units of predicting a constant, comparable between runs whose targets are scaled differently (inf if the probe diverged)", "ratio"),
    ("loss.late_rel_drop", "drop of the smoothed loss over the second half of the probe, relative to the initial loss", "fraction"),
    ("loss.late_rel_drop_lo", "lower bound of the second half's drop that the noisy curve supports: the least-squares line's drop over the second half minus two standard errors of it, relative to the initial loss (a clean curve: ~loss.late_rel_drop; mini-batch noise around a level: <= 0)", "fraction"),
    ("loss.spike", "largest rise of the loss above its running minimum, relative to the initial loss", "fraction"),
    ("loss.diverged", "1 if the loss became non-finite or exploded (probe stopped), else 0", "flag"),
    ("loss.diverged_at", "step at which the probe diverged, as a fraction of its steps (1 if it did not)", "fraction"),
)
def loss_curve(p: ProbeSet) -> dict:
    t = p.baseline
    if not t.has("loss.train"):
        return {}
    raw = t.values("loss.train")
    v = finite(raw)
    out = {"loss.diverged": float(t.status == "diverged")}
    steps = t.meta.get("steps") or len(raw)
    out["loss.diverged_at"] = (t.stopped_at / steps) if t.status == "diverged" and t.stopped_at is not None else 1.0
    if len(v) == 0:
        return out
    initial = float(v[0])
    start, end = head_tail(v)
    final = float("inf") if t.status == "diverged" else end
    out.update({"loss.initial": initial, "loss.final": final})
    denom = abs(initial) if initial != 0 else 1.0
    out["loss.rel_drop"] = (initial - final) / denom if np.isfinite(final) else float("-inf")
    chance = t.meta.get("chance_loss")
    if chance is not None and chance > 0:
        out["loss.chance"] = chance
        out["loss.progress"] = (chance - final) / chance if np.isfinite(final) else float("-inf")
        out["loss.init_over_chance"] = initial / chance
        out["loss.final_over_chance"] = final / chance
    s = smooth(v, max(1, len(v) // 20))
    if len(s) >= 4:
        mid = len(s) // 2
        out["loss.late_rel_drop"] = (s[mid] - s[-1]) / denom
    lo = _late_drop_lower_bound(v)
    if lo is not None:
        out["loss.late_rel_drop_lo"] = lo / denom
    runmin = np.minimum.accumulate(v)
    out["loss.spike"] = float(safe_div(float((v - runmin).max()), denom))
    return out


@produces(
    ("loss.eval_mode_ratio", "for a model with running statistics (BatchNorm): eval-mode over training-mode loss of the same weights on the same fixed training batch, summed over the checkpoints of the probe's last tenth; above 1 where the model does worse as it is evaluated (running statistics lagging the weights; dropout in the same model lowers it); inf if eval mode is not finite while training mode is; absent for other models", "ratio"),
)
def eval_mode_ratio(p: ProbeSet) -> dict:
    """How much worse the end of the run is as the model will be used. The two modes are compared
    on the same weights and batch, so mini-batch noise and the loss's reduction (a sum grows with
    the batch) cancel; ``compared`` in diagnose/verify.py judges remedies by it."""
    t = p.baseline
    if not (t.has("loss.train_trainmode") and t.has("loss.train_eval")):
        return {}
    ev = dict(zip(t.steps("loss.train_eval").tolist(), t.values("loss.train_eval").tolist()))
    pairs = [(ev[s], tm) for s, tm in zip(t.steps("loss.train_trainmode").tolist(), t.values("loss.train_trainmode").tolist())
             if s in ev]
    if not pairs:
        return {}
    e, m = np.array(pairs, dtype=float).T
    if not np.isfinite(m).all() or m.sum() <= 0:
        return {}
    return {"loss.eval_mode_ratio": float(e.sum() / m.sum()) if np.isfinite(e).all() else float("inf")}


def _late_drop_lower_bound(v: np.ndarray) -> float | None:
    """Drop of the least-squares line through the second half of ``v`` over that half, minus two
    standard errors of it (ordinary least squares: se(slope) = sqrt(RSS / (n - 2) / Sxx)). A
    second half of fewer than 8 points gives None."""
    h = np.asarray(v[len(v) // 2:], dtype=np.float64)
    n = len(h)
    if n < 8:
        return None
    x = np.arange(n, dtype=np.float64)
    xc = x - x.mean()
    sxx = float(xc @ xc)
    slope = float(xc @ (h - h.mean())) / sxx
    resid = h - h.mean() - slope * xc
    se = float(np.sqrt(float(resid @ resid) / (n - 2) / sxx))
    return (-slope - 2.0 * se) * (n - 1)
