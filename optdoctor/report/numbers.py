"""How every report writes a number: one place.

    fmt(1.0826e-08)              '1.08e-08'   for people (text, markdown): 3 significant digits,
    fmt(0.0194)                  '0.0194'     plain between 1e-3 and 1e4, scientific outside
    fmt(1.0826e-08, exact=True)  '1.0826e-08' for tools (SARIF, JUnit, GitHub): what the JSON carries
    round6({"x": 1/3})           {'x': 0.333333}  the structured formats' rounding

Reports carry floats to 6 significant digits at most, so that the same config + seed + machine
gives byte-identical output; non-finite numbers are the words nan, inf and -inf; integers
(counts, steps) are written whole.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

SHORT = 3  # significant digits where people read (text, markdown)
EXACT = 6  # ... where tools read (JSON, SARIF, JUnit, GitHub annotations)


def round6(x: Any) -> Any:
    """6 significant digits, recursively through dicts and lists; non-finite floats become the
    strings "nan", "inf", "-inf" (JSON has no literal for them)."""
    if isinstance(x, bool) or x is None:
        return x
    if isinstance(x, int):
        return x
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return float(f"{x:.{EXACT}g}")
    if isinstance(x, dict):
        return {k: round6(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [round6(v) for v in x]
    return x


def fmt(v: Any, exact: bool = False) -> str:
    """A number as text: short for people, or ``exact`` (6 significant digits) for tools.
    None is "?"; anything that is not a number is ``str(v)``."""
    if v is None:
        return "?"
    if isinstance(v, bool) or not isinstance(v, Real):
        return str(v)
    if isinstance(v, Integral):
        return str(int(v))
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if exact:
        return f"{round6(v):.{EXACT}g}"
    if v == 0:
        return "0"
    return f"{v:.{SHORT}g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.{SHORT - 1}e}"
