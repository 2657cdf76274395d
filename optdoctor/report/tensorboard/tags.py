"""TensorBoard tags of a probe: Trace -> {tag: (steps, values)}, histograms, the layout.

Tags (``section/name``; per-layer columns by the layer's module name, in forward order):

    loss/train  loss/train_eval  loss/val  accuracy/train  accuracy/val  lr
    grad_norm/<layer>  grad_norm/global  grad_norm_log10/<layer>
    update_ratio/<layer>  update_ratio_log10/<layer>  weight_norm/<layer>  grad_cosine/<layer>
    activation/{dead_frac,saturated_frac,scale,unit_diversity}/<layer>
    hessian/{lambda_max,lambda_min,lambda_min_rel,trace,negative_mass,effective_condition,...}
    hessian/top_k/<i>  (i = 1 is lambda_max)
    symptom/<name>     (baseline only: the key symptoms and every one a finding cites)
    histograms: grad_norm_dist/log10_across_layers, grad_dist/<layer> (if recorded),
                hessian/density (if the SLQ nodes/weights or the density grid were kept)
    text: diagnosis (baseline only), probe (every run)

Non-finite values (a diverged probe's loss, NaN for a layer an activation statistic does not
apply to, a value beyond float32) are left out rather than written: several TensorBoard
plugins choke on NaN and an inf flattens every chart's axis.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any

import numpy as np

from optdoctor.trace import Trace

# Each series' tag comes from its declaration, carried by the trace (``meta["series"]``: the
# instrument that recorded it says its tag, its columns and whether it is also written as log10,
# since a custom-scalars chart has no log-axis setting: quantities spanning decades across layers
# would show only the top layer's curve). An undeclared series is written as ``other/<name>``.
# Hessian measurement keys (one dict per measurement in Trace.hessian) -> tag.
HESSIAN_TAGS: dict[str, str] = {
    "lambda_max": "hessian/lambda_max",
    "lambda_min": "hessian/lambda_min",
    "lambda_min_rel": "hessian/lambda_min_rel",
    "trace": "hessian/trace",
    "trace_stderr": "hessian/trace_stderr",
    "trace_per_param": "hessian/trace_per_param",
    "condition_spread": "hessian/condition_spread",
    "negative_mass": "hessian/negative_mass",
    "near_null_mass": "hessian/near_null_mass",
    "effective_condition": "hessian/effective_condition",
    "loss": "hessian/batch_loss",
    "hvps": "hessian/solver/hvps",
    "lanczos_iters": "hessian/solver/lanczos_iters",
    "converged": "hessian/solver/converged",
}
HESSIAN_SKIP = {"step", "n_params", "finite", "density"}
_TOP_K = re.compile(r"^(?:lambda_(\d+)|top_(\d+))$")  # lambda_2.. (1-based), top_0.. (0-based)

# Where in TensorBoard a symptom's numbers can be checked, by symptom family.
EVIDENCE_CHARTS = {
    "loss": "loss/train", "val": "loss/val vs loss/train_eval", "gap": "loss/val vs loss/train_eval",
    "acc": "accuracy/*", "grad": "custom scalars: log10 gradient norm per layer",
    "update": "custom scalars: log10 update ratio per layer",
    "act": "activation/*", "hess": "hessian/*", "lr": "runs lr_x*: loss/train",
    "plateau": "runs continued, perturbed, reseed_*: loss/train", "data": "(input data, not logged)",
}
# Custom-scalars layout: (category, [(chart title, tag regex)]). Python ``re.match`` on tags
# (the plugin's server side). Charts whose regex matches no written tag are left out.
LAYOUT = (
    ("gradients (per layer, input to output)", (
        ("log10 gradient norm per layer", r"grad_norm_log10/"),
        ("gradient norm per layer", r"grad_norm/(?!global$)"),
        ("log10 update ratio |dW|/|W| per layer", r"update_ratio_log10/"),
        ("update ratio |dW|/|W| per layer", r"update_ratio/"),
        ("cosine of successive gradients per layer (-1: zig-zag)", r"grad_cosine/"),
    )),
    ("activations (per layer)", (
        ("dead fraction per layer", r"activation/dead_frac/"),
        ("saturated fraction per layer", r"activation/saturated_frac/"),
        ("activation scale per layer", r"activation/scale/"),
    )),
    ("loss", (
        ("loss", r"loss/"),
        ("accuracy", r"accuracy/"),
    )),
    ("curvature", (
        ("hessian top-k eigenvalues", r"hessian/top_k/"),
        ("hessian lambda_min", r"hessian/lambda_min$"),
    )),
)
HIST_CHECKPOINTS = 50  # histograms of per-layer gradient norms: at most this many steps
HIST_DECADE_BINS = 4  # bins per decade of log10 gradient norm
DENSITY_BINS = 64
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def finite_value(x: float) -> bool:
    """Writable as a TensorBoard scalar: finite, and finite in float32 too."""
    return math.isfinite(x) and abs(x) <= _FLOAT32_MAX


def _step(row: dict) -> int | None:
    """A Hessian measurement's step, or None when it has no usable one."""
    step = row.get("step", 0)
    return int(step) if isinstance(step, (int, float)) and math.isfinite(step) else None


def _column_names(trace: Trace, key: str | None, width: int) -> list[str]:
    """Column names of a 2-D series: the metadata list its declaration names, else the one of
    the right width (layers before activations), else indices."""
    for k in ([key] if key else ["layers", "act_layers"]):
        names = list(trace.meta.get(k) or [])
        if len(names) == width:
            return names
    return [str(i) for i in range(width)]


def scalar_points(trace: Trace) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar tag of a probe's run with its (steps, values), finite values only.

    Tags follow the series' declarations (``meta["series"]``); undeclared series are written
    too, as ``other/<name>``, so that nothing a probe measured is lost from the logs."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def put(tag: str, steps: np.ndarray, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            keep = np.isfinite(values) & (np.abs(values) <= _FLOAT32_MAX)
        if keep.any():
            out[tag] = (np.asarray(steps, dtype=np.int64)[keep], values[keep])

    declared = trace.meta.get("series") or {}
    for name, (steps, values) in sorted(trace.series.items()):
        if len(steps) == 0 or values.ndim > 2:
            continue
        decl = declared.get(name) or {}
        section = decl.get("tag") or "other/" + name.replace(".", "/")
        if values.ndim == 1:
            put(section, steps, values)
            continue
        log10 = decl.get("log10")
        for j, col in enumerate(_column_names(trace, decl.get("columns"), values.shape[1])):
            put(f"{section}/{col}", steps, values[:, j])
            if log10:
                with np.errstate(divide="ignore", invalid="ignore"):
                    put(f"{log10}/{col}", steps, np.log10(values[:, j]))

    by_key: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in trace.hessian:
        step = _step(row)
        if step is None:
            continue
        zero_based = any(k.startswith("top_") for k in row)  # then top_0 is lambda_max already
        for key, value in row.items():
            if key in HESSIAN_SKIP or not isinstance(value, (int, float)):
                continue
            m = _TOP_K.match(key)
            if m:
                tag = f"hessian/top_k/{int(m.group(1)) if m.group(1) else int(m.group(2)) + 1}"
            else:
                tag = HESSIAN_TAGS.get(key, f"hessian/{key}")
            by_key[tag].append((step, float(value)))
            if key == "lambda_max" and not zero_based:
                by_key["hessian/top_k/1"].append((step, float(value)))
    for tag, pts in by_key.items():
        put(tag, np.array([s for s, _ in pts]), np.array([v for _, v in pts]))
    return out


def _histogram(values: np.ndarray | None, edges: np.ndarray, counts: np.ndarray | None = None):
    """A HistogramProto over fixed ``edges`` (B+1,), from samples or from given ``counts`` (B,)."""
    from tensorboard.compat.proto.summary_pb2 import HistogramProto

    if counts is None:
        counts, _ = np.histogram(values, bins=edges)
        num, s, s2 = float(len(values)), float(values.sum()), float((values ** 2).sum())
        lo, hi = float(values.min()), float(values.max())
    else:  # weighted nodes: moments from the bin centres
        centres = 0.5 * (edges[:-1] + edges[1:])
        num, s, s2 = float(counts.sum()), float(counts @ centres), float(counts @ centres ** 2)
        nz = np.nonzero(counts > 0)[0]
        lo, hi = float(edges[nz[0]]), float(edges[nz[-1] + 1])
    return HistogramProto(min=lo, max=hi, num=num, sum=s, sum_squares=s2,
                          bucket_limit=[float(e) for e in edges[1:]], bucket=[float(c) for c in counts])


def grad_norm_histograms(trace: Trace) -> list[tuple[int, str, Any]]:
    """Across-layer histogram of log10 per-layer gradient norm, at up to HIST_CHECKPOINTS steps.

    The probes record one norm per layer, not the gradients' elements, so this shows how the
    layers' norms spread (a vanishing-gradient net spans many decades); per-element
    distributions need the ``grad.hist`` instrument (``grad_dist/<layer>``, below)."""
    if not trace.has("grad.norm"):
        return []
    steps, norms = trace.series["grad.norm"]
    if norms.ndim != 2:
        return []
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(norms)
    ok = np.isfinite(logs)
    if not ok.any():
        return []
    lo, hi = math.floor(logs[ok].min()), math.ceil(logs[ok].max())
    edges = np.linspace(lo, max(hi, lo + 1), int(max(hi, lo + 1) - lo) * HIST_DECADE_BINS + 1)
    rows = np.unique(np.linspace(0, len(steps) - 1, min(HIST_CHECKPOINTS, len(steps))).round().astype(int))
    out = []
    for i in rows:
        v = logs[i][ok[i]]
        if len(v):
            out.append((int(steps[i]), "grad_norm_dist/log10_across_layers", _histogram(v, edges)))
    return out


def grad_element_histograms(trace: Trace) -> list[tuple[int, str, Any]]:
    """``grad_dist/<layer>`` from a ``grad.hist`` series: (T, L, B) counts of log10|g| per bin,
    bin edges ``meta["grad.hist_edges"]`` (B+1,), recorded by the probes' GradHistogram."""
    edges = trace.meta.get("grad.hist_edges")
    if not trace.has("grad.hist") or edges is None:
        return []
    steps, counts = trace.series["grad.hist"]
    edges = np.asarray(edges, dtype=np.float64)
    if counts.ndim != 3 or counts.shape[2] != len(edges) - 1:
        return []
    out = []
    for j, col in enumerate(_column_names(trace, "layers", counts.shape[1])):
        for i, step in enumerate(steps):
            c = np.nan_to_num(counts[i, j], nan=0.0, posinf=0.0, neginf=0.0)
            if c.sum() > 0:
                out.append((int(step), f"grad_dist/{col}", _histogram(None, edges, c)))
    return out


def density_histograms(trace: Trace) -> list[tuple[int, str, Any]]:
    """``hessian/density`` from a measurement's ``density``: {"nodes", "weights"} (SLQ Ritz
    values and quadrature weights) or {"grid", "values"} (the broadened curve). Counts are
    scaled to eigenvalues (weights x n_params) when the parameter count is known."""
    out = []
    n = trace.meta.get("n_params") or 1
    for row in trace.hessian:
        d, step = row.get("density"), _step(row)
        if not isinstance(d, dict) or step is None:
            continue
        if "nodes" in d and "weights" in d:
            x, w = np.asarray(d["nodes"], float), np.asarray(d["weights"], float)
        elif "grid" in d and "values" in d:
            x = np.asarray(d["grid"], float)
            w = np.asarray(d["values"], float) * np.gradient(x) if len(x) > 1 else np.zeros(0)
        else:
            continue
        keep = np.isfinite(x) & np.isfinite(w) & (w > 0)
        x, w = x[keep], w[keep]
        if not len(x):
            continue
        lo, hi = float(x.min()), float(x.max())
        if hi <= lo:
            hi = lo + max(abs(lo), 1.0) * 1e-6
        edges = np.linspace(lo, hi, DENSITY_BINS + 1)
        counts, _ = np.histogram(x, bins=edges, weights=w * n / w.sum())
        out.append((step, "hessian/density", _histogram(None, edges, counts)))
    return out
