"""One interface, one list of findings, many formats (ruff's emitters).

Every reporter is ``render(diagnosis, fail_on) -> str``; registered in REPORTERS by name.
A reporter reads the Diagnosis and nothing else (not the Traces, not the symptom producers):
whatever it shows is computed upstream (``optdoctor.diagnose.summary``). Reports carry no
timestamps or absolute paths, and write numbers through ``report.numbers``, so that the same
config + seed + machine gives byte-identical output.
"""

from __future__ import annotations

from typing import Callable

from optdoctor.findings import SEVERITY_RANK

Reporter = Callable[..., str]
REPORTERS: dict[str, Reporter] = {}


def reporter(name: str):
    def deco(fn):
        if name in REPORTERS:
            raise ValueError(f"reporter {name!r} registered twice")
        REPORTERS[name] = fn
        return fn

    return deco


def fails(severity: str, fail_on: str) -> bool:
    return fail_on != "never" and SEVERITY_RANK[severity] >= SEVERITY_RANK[fail_on]


def exit_code(findings, fail_on: str) -> int:
    return 1 if any(fails(f.severity, fail_on) for f in findings) else 0
