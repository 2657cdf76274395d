"""Symptoms of the training inputs themselves."""

from __future__ import annotations

from optdoctor.trace import ProbeSet
from optdoctor.symptoms.registry import produces


@produces(
    ("data.feature_scale_spread", "largest / smallest per-feature standard deviation of the training inputs", "ratio"),
    ("data.feature_mean_over_std", "largest |mean| / std of an input feature (uncentred inputs)", "ratio"),
)
def data_stats(p: ProbeSet) -> dict:
    s = p.data_stats
    out = {}
    if "feature_scale_spread" in s:
        out["data.feature_scale_spread"] = s["feature_scale_spread"]
    if "feature_mean_over_std" in s:
        out["data.feature_mean_over_std"] = s["feature_mean_over_std"]
    return out


@produces(
    ("data.target_scale", "largest root mean square of a regression target's output (offset included); a network's outputs start near unit scale", "ratio"),
    ("data.target_mean_over_std", "largest |mean| / std of a regression target's output (a target far off zero)", "ratio"),
)
def target_stats(p: ProbeSet) -> dict:
    s = p.data_stats
    out = {}
    if "target_scale" in s:
        out["data.target_scale"] = s["target_scale"]
    if "target_mean_over_std" in s:
        out["data.target_mean_over_std"] = s["target_mean_over_std"]
    return out
