"""Train/validation symptoms of the baseline probe (checkpoint evaluations, eval mode)."""

from __future__ import annotations

import numpy as np

from optdoctor.trace import ProbeSet
from optdoctor.symptoms.registry import produces


@produces(
    ("val.final", "validation loss at the last checkpoint", "loss"),
    ("val.min", "lowest validation loss over the checkpoints", "loss"),
    ("val.min_at", "step of the lowest validation loss, as a fraction of the probe", "fraction"),
    ("val.rise", "validation loss at the end minus its minimum, relative to the chance loss (or to the lowest validation loss)", "fraction"),
    ("gap.val_train", "validation loss minus train loss at the end, relative to the chance loss (or to the lowest validation loss)", "fraction"),
    ("gap.train_drop_after_val_min", "train loss decrease after the validation minimum, relative to the chance loss", "fraction"),
    ("acc.val_final", "validation accuracy at the end", "fraction"),
    ("acc.train_final", "train accuracy (eval mode) at the end", "fraction"),
)
def generalization(p: ProbeSet) -> dict:
    t = p.baseline
    if not (t.has("loss.val") and t.has("loss.train_eval")):
        return {}
    vs, v = t.steps("loss.val"), t.values("loss.val")
    tr = t.values("loss.train_eval")
    ok = np.isfinite(v) & np.isfinite(tr)
    if ok.sum() < 3:
        return {}
    vs, v, tr = vs[ok], v[ok], tr[ok]
    chance = t.meta.get("chance_loss")
    scale = chance if chance and chance > 0 else max(float(v.min()), 1e-12)
    i_min = int(np.argmin(v))
    steps = t.meta.get("steps") or int(vs[-1]) or 1
    out = {
        "val.final": float(v[-1]),
        "val.min": float(v[i_min]),
        "val.min_at": float(vs[i_min] / steps),
        "val.rise": float((v[-1] - v[i_min]) / scale),
        "gap.val_train": float((v[-1] - tr[-1]) / scale),
        "gap.train_drop_after_val_min": float((tr[i_min] - tr[-1]) / scale),
    }
    if t.has("acc.val"):
        out["acc.val_final"] = float(t.values("acc.val")[-1])
    if t.has("acc.train"):
        out["acc.train_final"] = float(t.values("acc.train")[-1])
    return out
