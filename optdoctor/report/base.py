"""One interface, one list of findings, many formats (ruff's emitters).

Every reporter is ``render(diagnosis, fail_on) -> str``; registered in REPORTERS by name.
Reports carry no timestamps or absolute paths, and floats are rounded to 6 significant digits,
so that the same config + seed + machine gives byte-identical output.
"""

from __future__ import annotations

import math
from typing import Any, Callable

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


def round6(x: Any) -> Any:
    """6 significant digits; non-finite floats become the strings "nan", "inf", "-inf"
    (JSON has no literal for them)."""
    if isinstance(x, bool) or x is None:
        return x
    if isinstance(x, int):
        return x
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return float(f"{x:.6g}")
    if isinstance(x, dict):
        return {k: round6(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [round6(v) for v in x]
    return x


def fails(severity: str, fail_on: str) -> bool:
    return fail_on != "never" and SEVERITY_RANK[severity] >= SEVERITY_RANK[fail_on]


def exit_code(findings, fail_on: str) -> int:
    return 1 if any(fails(f.severity, fail_on) for f in findings) else 0
