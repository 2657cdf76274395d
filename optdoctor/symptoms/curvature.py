"""Curvature symptoms from the Hessian spectra measured during the baseline probe.

The condition number lambda_max / lambda_min of an indefinite, nearly singular Hessian means
nothing (DESIGN.md), so we report the ratios that do: lambda_min relative to lambda_max,
the negative spectral mass, an effective condition number that ignores the near-null space,
and lr * lambda_max against the stability limit of the optimiser.
"""

from __future__ import annotations

import numpy as np

from optdoctor.trace import ProbeSet
from optdoctor.symptoms.registry import produces

# Gradient descent on a quadratic with curvature lam is stable iff lr*lam < 2; heavy-ball
# momentum beta moves the limit to 2(1+beta) (Polyak 1964; Cohen et al. 2021, "edge of stability"),
# Nesterov momentum to 2(1+beta)/(1+2beta).
SGD_LIKE = ("sgd",)
# lambda_min must exceed this fraction of lambda_max for lambda_max/lambda_min to be read as a
# condition number (below it, Lanczos' estimate of a near-zero eigenvalue is noise)
PD_FLOOR = 1e-9


def stability_limit(optimizer: str, args: dict) -> float | None:
    if optimizer.lower() not in SGD_LIKE:
        return None  # Adam-type: the preconditioned sharpness is the right analogue (not measured yet)
    beta = float(args.get("momentum", 0.0) or 0.0)
    damp = float(args.get("dampening", 0.0) or 0.0)
    if damp:
        return None
    if args.get("nesterov"):  # Nesterov momentum on a quadratic diverges above 2(1+b)/(1+2b)
        return 2.0 * (1.0 + beta) / (1.0 + 2.0 * beta)
    return 2.0 * (1.0 + beta)


def _get(row: dict, key: str) -> float | None:
    v = row.get(key)
    return float(v) if v is not None else None


@produces(
    ("hess.lambda_max", "largest Hessian eigenvalue at the last measurement", "curvature"),
    ("hess.lambda_min", "smallest Hessian eigenvalue at the last measurement", "curvature"),
    ("hess.lambda_min_rel", "lambda_min / |lambda_max| at the last measurement (< 0: a descent direction of negative curvature)", "ratio"),
    ("hess.lambda_min_rel.init", "lambda_min / |lambda_max| before training", "ratio"),
    ("hess.negative_mass", "fraction of the spectral density below zero (SLQ), last measurement", "fraction"),
    ("hess.effective_condition", "lambda_max over the typical non-null eigenvalue magnitude (SLQ), largest over the measurements", "ratio"),
    ("hess.condition_spread", "lambda_max / (trace / n): how far the top eigenvalue stands above the average one, largest over the measurements", "ratio"),
    ("hess.lr_sharpness", "lr * lambda_max, largest over the measurements", "ratio"),
    ("hess.lr_sharpness.init", "lr * lambda_max before training", "ratio"),
    ("hess.stability", "lr * lambda_max / the optimiser's stability limit (2(1+momentum) for SGD; for Adam-type, lr * lambda_max(P^-1 H) / ((2+2 beta1)/(1-beta1))); > 1: steep directions diverge", "ratio"),
    ("hess.condition_pd", "lambda_max / lambda_min when the Hessian is positive definite at the last measurement (absent when it is indefinite: then the ratio means nothing)", "ratio"),
)
def curvature(p: ProbeSet) -> dict:
    t = p.baseline
    rows = [r for r in t.hessian if r.get("lambda_max") is not None and np.isfinite(r.get("lambda_max", np.nan))]
    if not rows:
        return {}
    first, last = rows[0], rows[-1]
    lr = float(t.meta.get("lr", 0.0))
    out = {
        "hess.lambda_max": _get(last, "lambda_max"),
        "hess.lambda_min": _get(last, "lambda_min"),
        "hess.lambda_min_rel": _get(last, "lambda_min_rel"),
        "hess.lambda_min_rel.init": _get(first, "lambda_min_rel"),
        "hess.negative_mass": _get(last, "negative_mass"),
    }
    for key, src in (("hess.effective_condition", "effective_condition"), ("hess.condition_spread", "condition_spread")):
        vals = [r[src] for r in rows if r.get(src) is not None and np.isfinite(r[src])]
        if vals:
            out[key] = float(max(vals))
    sharp = [r.get("lr", lr) * r["lambda_max"] for r in rows]  # a row may carry its own rate (the monitor's, under a schedule)
    out["hess.lr_sharpness"] = float(max(sharp))
    out["hess.lr_sharpness.init"] = float(sharp[0])
    limit = stability_limit(t.meta.get("optimizer", ""), t.meta.get("optimizer_args", {}))
    if limit:
        out["hess.stability"] = float(max(sharp)) / limit
    else:  # Adam-type: lr * lambda_max(P^-1 H) against (2 + 2 beta1)/(1 - beta1) (Cohen et al. 2022)
        pre = [r.get("lr", lr) * r["precond_lambda_max"] / r["precond_limit_factor"] for r in rows if r.get("precond_lambda_max") is not None]
        if pre:
            out["hess.stability"] = float(max(pre))
    lmin, lmax = out["hess.lambda_min"], out["hess.lambda_max"]
    if lmin is not None and lmax and lmax > 0 and lmin > PD_FLOOR * lmax:
        out["hess.condition_pd"] = lmax / lmin
    return out
