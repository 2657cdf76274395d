"""Differential symptoms: what the variant probes (other learning rates, a perturbed restart
from the plateau, another seed) achieved compared with the baseline."""

from __future__ import annotations

import numpy as np

from optdoctor.trace import ProbeSet
from optdoctor.symptoms._util import final_loss
from optdoctor.symptoms.registry import produces


def _lr_variant(p: ProbeSet, up: bool):
    cands = [(t.meta.get("lr_factor", 1.0), t) for t in p.of_kind("lr_variant")]
    cands = [c for c in cands if (c[0] > 1) == up and c[0] != 1]
    if not cands:
        return None
    return (max if up else min)(cands, key=lambda c: c[0])[1]


def _gain(base_final: float, other_final: float, scale: float) -> float:
    """Loss the variant removed beyond the baseline, relative to the initial loss; a diverged
    variant counts as -1 (worse than doing nothing), a diverged baseline as +1 against a
    variant that stayed finite."""
    if not np.isfinite(other_final):
        return -1.0
    if not np.isfinite(base_final):
        return 1.0
    return (base_final - other_final) / scale


@produces(
    ("lr.up_factor", "learning-rate multiple of the largest-LR variant probe", "ratio"),
    ("lr.up_gain", "loss the largest-LR variant removed beyond the baseline, relative to the initial loss (-1 if it diverged)", "fraction"),
    ("lr.up_diverged", "1 if the largest-LR variant diverged", "flag"),
    ("lr.down_factor", "learning-rate multiple of the smallest-LR variant probe", "ratio"),
    ("lr.down_gain", "loss the smallest-LR variant removed beyond the baseline, relative to the initial loss (-1 if it diverged)", "fraction"),
    ("lr.down_diverged", "1 if the smallest-LR variant diverged", "flag"),
    ("lr.down_rel_drop", "(initial - final) / initial of the smallest-LR variant", "fraction"),
    ("lr.down_dead_frac", "largest never-active fraction of a ReLU layer at the end of the smallest-LR variant", "fraction"),
)
def lr_variants(p: ProbeSet) -> dict:
    base = p.baseline
    if not base.has("loss.train"):
        return {}
    init = float(base.values("loss.train")[0])
    scale = abs(init) if np.isfinite(init) and init != 0 else 1.0
    bf = final_loss(base)
    out = {}
    for up, key in ((True, "up"), (False, "down")):
        t = _lr_variant(p, up)
        if t is None:
            continue
        of = final_loss(t)
        out[f"lr.{key}_factor"] = float(t.meta["lr_factor"])
        out[f"lr.{key}_gain"] = _gain(bf, of, scale)
        out[f"lr.{key}_diverged"] = float(t.status == "diverged")
        if not up:
            out["lr.down_rel_drop"] = (init - of) / scale if np.isfinite(of) else float("-inf")
            if t.has("act.dead_frac"):
                last = t.values("act.dead_frac")[-1]
                if np.isfinite(last).any():
                    out["lr.down_dead_frac"] = float(np.nanmax(last))
    return out


@produces(
    ("data.standardize_gain", "share of the baseline's final loss that the same probe on standardised inputs removed ((baseline - standardised) / baseline; 1 if only the baseline diverged, -1 if the standardised one did): does the inputs' scale spread matter?", "fraction"),
)
def standardized(p: ProbeSet) -> dict:
    """Relative to the baseline's final loss, not its initial one: unscaled inputs often start
    at a huge loss, next to which any end point looks alike."""
    return _rerun_gain(p, "standardized", "data.standardize_gain")


@produces(
    ("data.whiten_gain", "share of the baseline's final loss that the same probe on whitened inputs (decorrelated, unit variance: probe.whiten_inputs) removed ((baseline - whitened) / baseline; 1 if only the baseline diverged, -1 if the whitened one did): do the inputs' correlations matter?", "fraction"),
)
def whitened(p: ProbeSet) -> dict:
    return _rerun_gain(p, "whitened", "data.whiten_gain")


def _rerun_gain(p: ProbeSet, kind: str, key: str) -> dict:
    """(baseline - rerun) / baseline of the final losses of the baseline and its rerun ``kind``."""
    t = p.one(kind)
    if t is None or not p.baseline.has("loss.train"):
        return {}
    base, other = final_loss(p.baseline), final_loss(t)
    if not np.isfinite(other):
        return {key: -1.0}
    if not np.isfinite(base):
        return {key: 1.0}
    return {key: (base - other) / abs(base) if base else 0.0}


@produces(
    ("data.target_standardize_gain", "share of the baseline's remaining loss, both relative to their own chance loss (the loss of predicting the targets' mean), that the same probe on standardised targets removed ((base - std) / base of final / chance; 1 if only the baseline diverged, -1 if the standardised one did): does the targets' scale matter?", "fraction"),
)
def target_standardized(p: ProbeSet) -> dict:
    """Standardising the targets changes the loss's units, so each run's final loss is read
    against its own chance loss (var(y) for the mean squared error): the share of the way to
    chance that is left, compared between the two."""
    t = p.one("target_standardized")
    if t is None or not p.baseline.has("loss.train"):
        return {}
    base, std = final_loss(p.baseline), final_loss(t)
    if not np.isfinite(std):
        return {"data.target_standardize_gain": -1.0}
    if not np.isfinite(base):
        return {"data.target_standardize_gain": 1.0}
    c_base, c_std = p.baseline.meta.get("chance_loss"), t.meta.get("chance_loss")
    if not c_base or not c_std or not (np.isfinite(c_base) and np.isfinite(c_std)):
        return {}
    rb, rs = base / c_base, std / c_std
    return {"data.target_standardize_gain": (rb - rs) / abs(rb) if rb else 0.0}


@produces(
    ("plateau.escape", "loss removed by a small random kick at the plateau beyond going on unkicked on the same batches, relative to the plateau loss (a saddle lets the kicked run escape, a minimum pulls it back)", "fraction"),
    ("plateau.reseed_gain", "loss the best of a few freshly seeded probes reached below the baseline's, relative to the baseline's final loss", "fraction"),
)
def plateau_tests(p: ProbeSet) -> dict:
    out = {}
    base_final = final_loss(p.baseline)
    if not np.isfinite(base_final) or base_final <= 0:
        return out
    cont_t, pert_t = p.one("continued"), p.one("perturbed")
    if cont_t is not None and pert_t is not None:
        cont, pert = final_loss(cont_t), final_loss(pert_t)
        if np.isfinite(cont) and np.isfinite(pert):
            out["plateau.escape"] = (cont - pert) / base_final
        elif np.isfinite(cont) != np.isfinite(pert):  # one of them diverged
            out["plateau.escape"] = 1.0 if np.isfinite(pert) else -1.0
    reseeds = [final_loss(t) for t in p.of_kind("reseed")]
    reseeds = [r for r in reseeds if np.isfinite(r)]
    if reseeds:
        out["plateau.reseed_gain"] = (base_final - min(reseeds)) / base_final
    return out


@produces(
    ("lr.range_suggested", "LR range test: the learning rate where the smoothed loss fell fastest (torch-lr-finder's suggestion)", "lr"),
    ("lr.range_best", "LR range test: the learning rate at the lowest smoothed loss (beyond it the loss rises)", "lr"),
    ("lr.config_over_suggested", "configured learning rate / the range test's suggested one", "ratio"),
    ("lr.config_over_best", "configured learning rate / the range test's lowest-loss one (>1: past the usable range)", "ratio"),
    ("lr.effective_over_best", "median learning rate the baseline actually stepped with (after its schedule) / the range test's lowest-loss one", "ratio"),
    ("lr.range_drop", "LR range test: how far its smoothed loss fell below its start, relative to the start (a flat sweep locates no usable rate)", "fraction"),
)
def lr_range(p: ProbeSet) -> dict:
    """Smith (2017) / torch-lr-finder: exponentially smoothed loss against log(lr), skipping the
    first 10% and last 5% of points as torch-lr-finder does."""
    t = p.one("lr_range")
    if t is None or not (t.has("lr") and t.has("loss.train")):
        return {}
    lr, loss = t.values("lr"), t.values("loss.train")
    n = min(len(lr), len(loss))
    lr, loss = lr[:n], loss[:n]
    ok = np.isfinite(loss)
    lr, loss = lr[ok], loss[ok]
    if len(loss) < 10:
        return {}
    smooth = np.empty_like(loss)
    avg = 0.0
    for i, v in enumerate(loss):  # bias-corrected EMA, weight 0.05 on the newest point
        avg = 0.95 * avg + 0.05 * v
        smooth[i] = avg / (1 - 0.95 ** (i + 1))
    lo, hi = len(loss) // 10, len(loss) - max(1, len(loss) // 20)
    seg_lr, seg = np.log10(lr[lo:hi]), smooth[lo:hi]
    if len(seg) < 3:
        return {}
    slope = np.gradient(seg, seg_lr)
    suggested = float(10 ** seg_lr[int(np.argmin(slope))])
    best = float(10 ** seg_lr[int(np.argmin(seg))])
    cfg_lr = float(t.meta.get("lr", float("nan")))
    out = {"lr.range_suggested": suggested, "lr.range_best": best,
           "lr.config_over_suggested": cfg_lr / suggested, "lr.config_over_best": cfg_lr / best}
    start = float(smooth[lo])
    if np.isfinite(start) and start != 0:
        out["lr.range_drop"] = float((start - seg.min()) / abs(start))
    base = p.traces.get("baseline")
    if base is not None and base.has("lr"):  # a schedule may decay the rate far below the configured one
        used = base.values("lr")
        used = used[np.isfinite(used)]
        if len(used):
            out["lr.effective_over_best"] = float(np.median(used)) / best
    return out


@produces(
    ("lr.peak_over_config", "highest learning rate the baseline stepped with (after its schedule) / the configured one (>1: the schedule raises the rate above it)", "ratio"),
)
def lr_peak(p: ProbeSet) -> dict:
    """How far a schedule raised the rate above the configured one: whether dropping the schedule
    (a constant rate at the configured base) would lower the rate the run steps with. 1 without
    a schedule, or under one that only warms up to the configured rate or decays from it."""
    base = p.traces.get("baseline")
    if base is None or not base.has("lr"):
        return {}
    cfg_lr = float(base.meta.get("lr", float("nan")))
    used = base.values("lr")
    used = used[np.isfinite(used)]
    if not len(used) or not np.isfinite(cfg_lr) or cfg_lr <= 0:
        return {}
    return {"lr.peak_over_config": float(np.max(used)) / cfg_lr}
