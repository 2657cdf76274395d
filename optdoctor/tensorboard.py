"""TensorBoard logs of a diagnosis: one run per probe, written from the Traces after probing.

    write_diagnosis(diag, "tb/")      # every probe + the findings, config and layout
    write_probe(trace, "tb/")         # one probe -> tb/<probe>/events.out.tfevents.*

Writing happens after the probes ran, from the Trace (plain numpy), so it costs the training
nothing per step and works on a diverged or interrupted probe, or a trace loaded from disk
(``optdoctor replay``). Like every stage below the Trace it does not import torch.

Writer: tensorboard's own ``EventFileWriter`` and protos, all values of one step packed into
one Event. Measured on an 8-probe, 200-step diagnosis, 78k values, on a loaded 2-core machine
(``benchmarks/tensorboard_write.py --compare``): ``write_diagnosis`` 0.6-0.7 s; one
``SummaryWriter.add_scalar`` per value 5.1-6.9 s; one tensorboard Event per value 3.5-5.0 s.
Most of the time goes to the record checksum (CRC32C in pure Python, ~0.17 us per byte), so
fewer, larger records win. ``torch.utils.tensorboard`` would also import torch (1.3-2.4 s
cold), which replaying a saved trace otherwise never pays; these imports take ~0.5 s.

Tags (``section/name``; per-layer columns by the layer's module name, in forward order):

    loss/train  loss/train_eval  loss/val  accuracy/train  accuracy/val  lr
    grad_norm/<layer>  grad_norm/global  grad_norm_log10/<layer>
    update_ratio/<layer>  update_ratio_log10/<layer>  weight_norm/<layer>
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
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from optdoctor.trace import Trace

# series name -> tag section. 1-D series become the tag itself; 2-D ones one tag per column,
# named by meta["layers"] (parametrised layers) or meta["act_layers"] (activation modules).
SCALAR_TAGS: dict[str, str] = {
    "loss.train": "loss/train",
    "loss.train_eval": "loss/train_eval",
    "loss.val": "loss/val",
    "acc.train": "accuracy/train",
    "acc.val": "accuracy/val",
    "lr": "lr",
    "grad.global_norm": "grad_norm/global",
    "grad.norm": "grad_norm",
    "update.ratio": "update_ratio",
    "weight.norm": "weight_norm",
    "act.dead_frac": "activation/dead_frac",
    "act.sat_frac": "activation/saturated_frac",
    "act.scale": "activation/scale",
    "act.unit_diversity": "activation/unit_diversity",
}
# Per-layer families that span orders of magnitude (vanishing gradients: 1e-7 at the input,
# 0.3 at the output) are also written as log10, since a custom-scalars chart has no
# log-axis setting of its own: on a linear axis only the top layer's curve would be visible.
LOG10_TAGS: dict[str, str] = {"grad.norm": "grad_norm_log10", "update.ratio": "update_ratio_log10"}
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

# Symptoms written to the baseline run (``symptom/<name>``) and shown as hparams metrics,
# besides every symptom a finding cites as evidence. One or two per cause family.
KEY_SYMPTOMS = (
    "loss.final", "loss.rel_drop", "loss.progress", "loss.spike",
    "grad.depth_ratio", "grad.layer_factor", "grad.global_growth",
    "update.ratio", "update.ratio_max",
    "act.dead_frac.max", "act.saturated_frac.max", "act.scale_ratio.init",
    "hess.lambda_max", "hess.lambda_min_rel", "hess.stability", "hess.effective_condition",
    "gap.val_train", "val.rise", "lr.up_gain", "lr.down_gain", "plateau.escape", "plateau.reseed_gain",
)
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
# Trace/diagnosis status -> hparams session status (its enum has no "aborted": an interrupted
# probe's outcome is unknown).
_STATUS = {"completed": "STATUS_SUCCESS", "diverged": "STATUS_FAILURE", "interrupted": "STATUS_UNKNOWN"}


# --- pure part: Trace -> {tag: (steps, values)} ---------------------------------------------
def _finite(x: float) -> bool:
    return math.isfinite(x) and abs(x) <= _FLOAT32_MAX


def _step(row: dict) -> int | None:
    """A Hessian measurement's step, or None when it has no usable one."""
    step = row.get("step", 0)
    return int(step) if isinstance(step, (int, float)) and math.isfinite(step) else None


def _column_names(trace: Trace, name: str, width: int) -> list[str]:
    key = "act_layers" if name.startswith("act.") else "layers"
    names = list(trace.meta.get(key) or [])
    return names if len(names) == width else [str(i) for i in range(width)]


def scalar_points(trace: Trace) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar tag of a probe's run with its (steps, values), finite values only.

    Series missing from ``SCALAR_TAGS`` are written too, as ``other/<name>``, so that nothing
    a probe measured is lost from the logs."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def put(tag: str, steps: np.ndarray, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            keep = np.isfinite(values) & (np.abs(values) <= _FLOAT32_MAX)
        if keep.any():
            out[tag] = (np.asarray(steps, dtype=np.int64)[keep], values[keep])

    for name, (steps, values) in sorted(trace.series.items()):
        if len(steps) == 0 or values.ndim > 2:
            continue
        section = SCALAR_TAGS.get(name, "other/" + name.replace(".", "/"))
        if values.ndim == 1:
            put(section, steps, values)
            continue
        for j, col in enumerate(_column_names(trace, name, values.shape[1])):
            put(f"{section}/{col}", steps, values[:, j])
            if name in LOG10_TAGS:
                with np.errstate(divide="ignore", invalid="ignore"):
                    put(f"{LOG10_TAGS[name]}/{col}", steps, np.log10(values[:, j]))

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


def _grad_norm_histograms(trace: Trace) -> list[tuple[int, str, Any]]:
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


def _grad_element_histograms(trace: Trace) -> list[tuple[int, str, Any]]:
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
    for j, col in enumerate(_column_names(trace, "grad.hist", counts.shape[1])):
        for i, step in enumerate(steps):
            c = np.nan_to_num(counts[i, j], nan=0.0, posinf=0.0, neginf=0.0)
            if c.sum() > 0:
                out.append((int(step), f"grad_dist/{col}", _histogram(None, edges, c)))
    return out


def _density_histograms(trace: Trace) -> list[tuple[int, str, Any]]:
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


# --- markdown ----------------------------------------------------------------------------
def _fmt(x: Any) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.4g}"
    return str(x)


def _md(text: Any) -> str:
    """Escape what would break a markdown table cell."""
    return str(text).replace("|", r"\|").replace("\n", " ")


def probe_markdown(trace: Trace) -> str:
    stop = f" at step {trace.stopped_at}" if trace.stopped_at is not None else ""
    lines = [f"**probe `{trace.probe}`**: {trace.status}{stop}", "", "| meta | value |", "|---|---|"]
    for k in sorted(trace.meta):
        v = trace.meta[k]
        if isinstance(v, (list, dict)) and len(v) > 12:
            v = f"{type(v).__name__} of {len(v)}"
        lines.append(f"| {_md(k)} | {_md(_fmt(v))} |")
    return "\n".join(lines)


def diagnosis_markdown(diag) -> str:
    """The findings (cause, severity, summary, evidence, remedies) and the probes, as markdown."""
    n = len(diag.findings)
    lines = [f"# {_md(diag.name)}: {n} finding{'s' if n != 1 else ''}", "",
             f"status **{diag.status}** · {len(diag.probes.traces)} probes · {diag.seconds:.1f} s · config `{diag.config_path}`", ""]
    if not diag.findings:
        lines += ["No problem found: the probes trained as a healthy setup does.", ""]
    for f in diag.findings:
        lines += [f"## {f.rule} {f.name} · {f.severity} · cause `{f.cause}` · confidence {f.confidence:.2f}", "",
                  _md(f.summary), ""]
        where = []
        if f.onset is not None:
            where.append(f"onset: step {f.onset}")
        if f.blame:
            loc = f.location or {}
            at = f" ({loc.get('file')}:{loc.get('line')}:{loc.get('col')})" if loc else ""
            where.append(f"blame: `{f.blame}`{at}")
        if where:
            lines += [" · ".join(where), ""]
        if f.evidence:
            lines += ["| evidence | value | check it in |", "|---|---|---|"]
            for k, v in f.evidence.items():
                lines.append(f"| `{_md(k)}` | {_fmt(v)} | {EVIDENCE_CHARTS.get(k.split('.')[0], '')} |")
            lines.append("")
        if f.remedies:
            lines += ["Remedies:", ""] + [f"{i}. {_md(r)}" for i, r in enumerate(f.remedies, 1)] + [""]
        if f.references:
            lines += ["References: " + "; ".join(f.references), ""]
    not_eval = [o for o in diag.outcomes if o.status == "not_evaluated"]
    if diag.outcomes:
        fired = sum(o.status == "fired" for o in diag.outcomes)
        lines += [f"{len(diag.outcomes)} rules: {fired} fired, {len(not_eval)} not evaluated", ""]
        for o in not_eval:
            lines.append(f"- {o.rule} {o.name}: not evaluated ({_md(o.reason)})")
        lines.append("")
    lines += ["## Probes", "", "| run | lr | steps | status | loss start → end |", "|---|---|---|---|---|"]
    for name, t in diag.probes.traces.items():
        loss = t.values("loss.train") if t.has("loss.train") else np.zeros(0)
        span = f"{_fmt(loss[0])} → {_fmt(loss[-1])}" if len(loss) else ""
        lines.append(f"| {name} | {_fmt(t.meta.get('lr'))} | {_fmt(t.meta.get('steps'))} | {t.status} | {span} |")
    return "\n".join(lines) + "\n"


def flatten_config(obj: Any, prefix: str = "") -> dict[str, bool | int | float | str]:
    """``{"optimizer": {"lr": 0.1}}`` -> ``{"optimizer.lr": 0.1}``; scalars, str and bool
    only (lists, None and non-finite numbers are left out: hparams cannot show them)."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump()
    out: dict[str, bool | int | float | str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten_config(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (bool, str)) or (isinstance(obj, (int, float)) and math.isfinite(obj)):
        out[prefix] = obj
    return out


# --- protos ---------------------------------------------------------------------------------
def _string_tensor(data: bytes):
    from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2

    return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[data],
                                  tensor_shape=tensor_shape_pb2.TensorShapeProto())


def _text_value(tag: str, markdown: str):
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.text import metadata

    return Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(tag, ""),
                         tensor=_string_tensor(markdown.encode()))


def _layout_value(tags: Iterable[str]):
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    tags = sorted(tags)
    categories = []
    for title, charts in LAYOUT:
        kept = [layout_pb2.Chart(title=t, multiline=layout_pb2.MultilineChartContent(tag=[rx]))
                for t, rx in charts if any(re.match(rx, tag) for tag in tags)]
        if kept:
            categories.append(layout_pb2.Category(title=title, chart=kept))
    layout = layout_pb2.Layout(category=categories)
    return Summary.Value(tag=metadata.CONFIG_SUMMARY_TAG, metadata=metadata.create_summary_metadata(),
                         tensor=_string_tensor(layout.SerializeToString()))


def _hparams_values(hparams: dict[str, Any], metrics: Iterable[str], status: str):
    """The hparams plugin's experiment, session-start and session-end summaries (built from the
    protos: ``tensorboard.plugins.hparams.summary`` imports tensorflow)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    def value(tag: str, data) -> Summary.Value:
        data.version = 0
        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="hparams",
                                                                      content=data.SerializeToString()))
        return Summary.Value(tag=tag, metadata=meta)

    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    infos = []
    for k, v in hparams.items():
        if isinstance(v, bool):
            start.hparams[k].bool_value, kind = v, "DATA_TYPE_BOOL"
        elif isinstance(v, (int, float)):
            start.hparams[k].number_value, kind = float(v), "DATA_TYPE_FLOAT64"
        else:
            start.hparams[k].string_value, kind = str(v), "DATA_TYPE_STRING"
        infos.append(api_pb2.HParamInfo(name=k, type=api_pb2.DataType.Value(kind)))
    experiment = api_pb2.Experiment(hparam_infos=infos, time_created_secs=time.time(),
                                    metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=m)) for m in metrics])
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value(_STATUS.get(status, "STATUS_UNKNOWN")),
                                         end_time_secs=time.time())
    return [value("_hparams_/experiment", plugin_data_pb2.HParamsPluginData(experiment=experiment)),
            value("_hparams_/session_start_info", plugin_data_pb2.HParamsPluginData(session_start_info=start)),
            value("_hparams_/session_end_info", plugin_data_pb2.HParamsPluginData(session_end_info=end))]


# --- writing --------------------------------------------------------------------------------
class _Run:
    """One run folder: collects Summary.Values by step, writes one Event per step on close.
    Earlier event files in that folder (a previous diagnosis) are replaced, not appended to:
    TensorBoard would draw both as one zig-zagging curve."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.by_step: dict[int, list] = defaultdict(list)

    def add(self, step: int, value) -> None:
        self.by_step[int(step)].append(value)

    def scalars(self, points: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        for tag, (steps, values) in points.items():
            for s, v in zip(steps.tolist(), values.tolist()):
                self.by_step[s].append(Summary.Value(tag=tag, simple_value=v))

    def write(self) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("events.out.tfevents.*"):
            old.unlink()
        writer = EventFileWriter(str(self.folder), max_queue_size=1024)
        try:
            now = time.time()
            for step in sorted(self.by_step):
                writer.add_event(Event(wall_time=now, step=step, summary=Summary(value=self.by_step[step])))
        finally:
            writer.close()  # flushes; also on KeyboardInterrupt while writing


def _safe_name(name: str) -> str:
    name = re.sub(r"[\\/]+", "_", name).strip()
    return name if name not in ("", ".", "..") else "run"


def _write_run(trace: Trace, folder: Path, extra: list[tuple[int, Any]] = ()) -> set[str]:
    """Write one probe (plus ``extra`` (step, Summary.Value) pairs) to ``folder``; returns
    the scalar tags written."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    run = _Run(folder)
    points = scalar_points(trace)
    run.scalars(points)
    for step, tag, hist in _grad_norm_histograms(trace) + _grad_element_histograms(trace) + _density_histograms(trace):
        run.add(step, Summary.Value(tag=tag, histo=hist))
    run.add(0, _text_value("probe", probe_markdown(trace)))
    for step, value in extra:
        run.add(step, value)
    run.write()
    return set(points)


def write_probe(trace: Trace, logdir: str | Path, *, run_name: str | None = None) -> Path:
    """Write one probe's trace as the TensorBoard run ``logdir/<run_name or probe>``; returns
    that folder. A diverged or interrupted trace is written as measured, its non-finite
    values left out."""
    folder = Path(logdir) / _safe_name(run_name or trace.probe)
    _write_run(trace, folder)
    return folder


def diagnosis_metrics(diag) -> dict[str, float]:
    """Key symptoms and every symptom a finding cites, finite only -> ``symptom/<name>``."""
    names = list(KEY_SYMPTOMS)
    for f in diag.findings:
        names += [k for k in f.evidence if k not in names]
    out = {}
    for k in names:
        v = diag.symptoms.get(k)
        if isinstance(v, (int, float)) and _finite(float(v)):
            out[f"symptom/{k}"] = float(v)
    return out


def _diagnosis_values(diag, base: Trace, tags: set[str]) -> list[tuple[int, Any]]:
    """The baseline run's extras: symptoms as scalars at its last step, the markdown
    diagnosis, the config as hparams (those symptoms as metrics), the custom-scalars layout."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    last = max((int(s[-1]) for s, _ in base.series.values() if len(s)), default=0)
    metrics = diagnosis_metrics(diag)
    out: list[tuple[int, Any]] = [(last, Summary.Value(tag=t, simple_value=v)) for t, v in metrics.items()]
    out.append((0, _text_value("diagnosis", diagnosis_markdown(diag))))
    config = diag.loaded.config if diag.loaded is not None else {"meta": base.meta}
    status = "interrupted" if diag.status == "interrupted" else base.status
    out += [(0, v) for v in _hparams_values(flatten_config(config), metrics, status)]
    out.append((0, _layout_value(tags | set(metrics))))
    return out


def write_diagnosis(diag, logdir: str | Path) -> Path:
    """Every probe of ``diag`` as its own run under ``logdir`` (``write_probe``); the baseline
    run also gets the diagnosis as markdown text, the config as hparams with the key symptoms
    as metrics, and the custom-scalars layout. Returns ``logdir``.

    Each run's writer is closed (flushed) whatever happens; a run that fails to write does not
    stop the others, and the first error is raised after all were tried."""
    logdir = Path(logdir)
    traces = diag.probes.traces
    base_name = "baseline" if "baseline" in traces else next(iter(traces), None)
    tags: set[str] = set()
    error: BaseException | None = None
    for name, trace in traces.items():
        if name == base_name:
            continue
        try:
            tags |= _write_run(trace, logdir / _safe_name(name))
        except Exception as e:  # noqa: BLE001 - re-raised below, after the other runs
            error = error or e
    if base_name is not None:  # last: its layout lists the charts that have data in any run
        base = traces[base_name]
        tags |= set(scalar_points(base))
        _write_run(base, logdir / _safe_name(base_name), _diagnosis_values(diag, base, tags))
    if error is not None:
        raise error
    return logdir
