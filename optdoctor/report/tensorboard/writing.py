"""Writing TensorBoard runs: protos and event files, one run per probe (see the package doc)."""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from optdoctor.report.tensorboard.markdown import diagnosis_markdown, probe_markdown
from optdoctor.report.tensorboard.tags import (
    LAYOUT,
    density_histograms,
    finite_value,
    grad_element_histograms,
    grad_norm_histograms,
    scalar_points,
)
from optdoctor.trace import Trace

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
# Trace/diagnosis status -> hparams session status (its enum has no "aborted": an interrupted
# probe's outcome is unknown).
_STATUS = {"completed": "STATUS_SUCCESS", "diverged": "STATUS_FAILURE", "interrupted": "STATUS_UNKNOWN"}


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
    for step, tag, hist in grad_norm_histograms(trace) + grad_element_histograms(trace) + density_histograms(trace):
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
        if isinstance(v, (int, float)) and finite_value(float(v)):
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
