"""``--format json``: CONTRACT.md section 2, plus symptoms, probes and every rule's outcome."""

from __future__ import annotations

import json

from optdoctor import __version__
from optdoctor.report.base import reporter, round6


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


def probe_summary(probes) -> dict:
    from optdoctor.symptoms._util import final_loss

    out = {}
    for name, t in sorted(probes.traces.items()):
        loss = t.values("loss.train") if t.has("loss.train") else []
        out[name] = {
            "lr": t.meta.get("lr"), "steps": t.meta.get("steps"), "seed": t.meta.get("seed"),
            "status": t.status, "stopped_at": t.stopped_at,
            "loss_initial": float(loss[0]) if len(loss) else None, "loss_final": final_loss(t),
        }
    return out


def as_dict(diag) -> dict:
    out = {
        "findings": [finding_dict(f) for f in diag.findings],
        "config": {"name": diag.name, "path": diag.config_path},
        "status": diag.status,
        "optdoctor": __version__,
        "symptoms": dict(sorted(diag.symptoms.items())),
        "probes": probe_summary(diag.probes),
        "rules": [{"rule": o.rule, "name": o.name, "cause": o.cause, "status": o.status, **({"reason": o.reason} if o.reason else {})}
                  for o in diag.outcomes],
    }
    if "budget" in diag.extra:  # only with a time budget: without one the bytes are unchanged
        out["budget"] = diag.extra["budget"]
    return round6(out)


@reporter("json")
def render_json(diag, fail_on: str = "error") -> str:
    return json.dumps(as_dict(diag), indent=2, sort_keys=False, allow_nan=False) + "\n"
