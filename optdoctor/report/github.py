"""``--format github``: GitHub Actions workflow commands, one annotation per finding.

    ::error file=configs/mlp.yaml,line=7,col=9,title=OD101 vanishing-gradients::gradients shrink ...

Levels: error -> ``error``, warning -> ``warning``, info -> ``notice`` (every finding, also
those below ``--fail-on``: the exit code is what gates). Escaping as the Actions toolkit does
it: in the message ``%``, ``\\r``, ``\\n``; in property values also ``:`` and ``,``. A finding
without a location gets no ``file`` property (an annotation on the run, not on a line).
"""

from __future__ import annotations

from optdoctor.findings import Finding
from optdoctor.report.base import reporter
from optdoctor.report.sarif import evidence_text, report_path

COMMAND = {"error": "error", "warning": "warning", "info": "notice"}


def escape_data(s: str) -> str:
    return str(s).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(s: str) -> str:
    return escape_data(s).replace(":", "%3A").replace(",", "%2C")


def message(f: Finding) -> str:
    lines = [f.summary.strip()]
    if f.evidence:
        lines.append(f"evidence: {evidence_text(f)}")
    if f.blame:
        lines.append(f"config key: {f.blame}")
    lines += [f"remedy {i}: {r}" for i, r in enumerate(f.remedies, 1)]
    return "\n".join(lines)


def annotation(f: Finding) -> str:
    props = []
    if f.location and f.location.get("file"):
        props.append(("file", report_path(str(f.location["file"]))))
        for k in ("line", "col"):
            if f.location.get(k):
                props.append((k, str(f.location[k])))
    props.append(("title", f"{f.rule} {f.name}"))
    joined = ",".join(f"{k}={escape_property(v)}" for k, v in props)
    return f"::{COMMAND[f.severity]} {joined}::{escape_data(message(f))}"


@reporter("github")
def render_github(diag, fail_on: str = "error") -> str:
    return "".join(annotation(f) + "\n" for f in diag.findings)
