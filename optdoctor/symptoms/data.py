"""Symptoms of the training inputs themselves."""

from __future__ import annotations

from optdoctor.trace import ProbeSet
from optdoctor.symptoms.registry import produces


@produces(
    ("data.feature_scale_spread", "largest / smallest per-feature standard deviation of the training inputs", "ratio"),
    ("data.feature_mean_over_std", "largest |mean| / std of an input feature (uncentred inputs)", "ratio"),
    ("data.feature_condition", "condition number of the input features' correlation matrix (collinear inputs: the curvature ratio left after standardising; at most 512 features, capped at 1e12)", "ratio"),
)
def data_stats(p: ProbeSet) -> dict:
    s = p.data_stats
    return {f"data.{k}": s[k] for k in ("feature_scale_spread", "feature_mean_over_std", "feature_condition") if k in s}


@produces(
    ("data.target_scale", "largest root mean square of a regression target's output (offset included); a network's outputs start near unit scale", "ratio"),
    ("data.target_mean_over_std", "largest |mean| / std of a regression target's output (a target far off zero)", "ratio"),
)
def target_stats(p: ProbeSet) -> dict:
    s = p.data_stats
    return {f"data.{k}": s[k] for k in ("target_scale", "target_mean_over_std") if k in s}
