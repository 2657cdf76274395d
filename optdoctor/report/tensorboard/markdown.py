"""The diagnosis and each probe as markdown (TensorBoard's text plugin renders it).

``diagnosis_markdown`` reads the Diagnosis only (its probe table: ``diag.summary.probes``, the
same rows and final-loss definition as the text report); ``probe_markdown`` describes one run
from its Trace's own header, next to that run's curves.
"""

from __future__ import annotations

from typing import Any

from optdoctor.report.numbers import fmt
from optdoctor.report.tensorboard.tags import EVIDENCE_CHARTS
from optdoctor.trace import Trace


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
        lines.append(f"| {_md(k)} | {_md(fmt(v) if v is not None else v)} |")
    return "\n".join(lines)


def diagnosis_markdown(diag) -> str:
    """The findings (cause, severity, summary, evidence, remedies) and the probes, as markdown."""
    n = len(diag.findings)
    lines = [f"# {_md(diag.name)}: {n} finding{'s' if n != 1 else ''}", "",
             f"status **{diag.status}** · {len(diag.summary.probes)} probes · {diag.seconds:.1f} s · config `{diag.config_path}`", ""]
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
                lines.append(f"| `{_md(k)}` | {fmt(v)} | {EVIDENCE_CHARTS.get(k.split('.')[0], '')} |")
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
    for p in diag.summary.probes:
        span = f"{fmt(p.loss_initial)} → {fmt(p.loss_final)}" if p.loss_initial is not None else ""
        lr = fmt(p.lr)
        if p.lr_range is not None:  # the LR range test sweeps the rate: its loss is no final loss
            lr, span = f"{fmt(p.lr_range[0])}→{fmt(p.lr_range[1])}", "see lr.range_* symptoms"
        stop = f" @ {p.stopped_at}" if p.stopped_at is not None else ""
        lines.append(f"| {_md(p.name)} | {lr} | {fmt(p.steps)} | {p.status}{stop} | {span} |")
    return "\n".join(lines) + "\n"
