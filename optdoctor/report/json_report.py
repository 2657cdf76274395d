"""``--format json``: CONTRACT.md section 2, plus symptoms, probes and every rule's outcome."""

from __future__ import annotations

import json

from optdoctor import __version__
from optdoctor.report.base import reporter
from optdoctor.report.numbers import round6


def finding_dict(f) -> dict:
    d = {
        "cause": f.cause, "severity": f.severity, "rule": f.rule, "name": f.name,
        "confidence": f.confidence, "summary": f.summary, "evidence": dict(sorted(f.evidence.items())),
        "remedies": f.remedies, "blame": f.blame, "onset_step": f.onset, "references": f.references,
    }
    if f.location:
        d["location"] = f.location
    if f.seeds:
        d["seeds"] = f.seeds
    if f.verification:
        d["confirmed"] = f.confirmed
        d["verification"] = f.verification
    return d


def probe_dict(p) -> dict:
    return {"lr": p.lr, "steps": p.steps, "seed": p.seed, "status": p.status, "stopped_at": p.stopped_at,
            "loss_initial": p.loss_initial, "loss_final": p.loss_final}


def as_dict(diag) -> dict:
    out = {
        "findings": [finding_dict(f) for f in diag.findings],
        "config": {"name": diag.name, "path": diag.config_path},
        "status": diag.status,
        "optdoctor": __version__,
        "symptoms": dict(sorted(diag.symptoms.items())),
        "probes": {p.name: probe_dict(p) for p in diag.summary.probes},
        "rules": [{"rule": o.rule, "name": o.name, "cause": o.cause, "status": o.status, **({"reason": o.reason} if o.reason else {})}
                  for o in diag.outcomes],
    }
    if "budget" in diag.extra:  # only with a time budget: without one the bytes are unchanged
        out["budget"] = diag.extra["budget"]
    return round6(out)


@reporter("json")
def render_json(diag, fail_on: str = "error") -> str:
    return json.dumps(as_dict(diag), indent=2, sort_keys=False, allow_nan=False) + "\n"
