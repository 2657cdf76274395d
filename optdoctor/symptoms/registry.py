"""The vocabulary of the rules: every symptom is declared once, with its meaning and unit,
by the producer function that computes it. Producers are pure functions ProbeSet -> dict.

A symptom a producer cannot compute (no sigmoid layer, no validation set, no Hessian) is
left out of the result, never set to a made-up value: rules that need it are then reported
as "not evaluated" (STYLE.md principle 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from optdoctor.trace import ProbeSet


@dataclass(frozen=True)
class SymptomDef:
    name: str
    meaning: str
    unit: str = ""
    family: str = ""


@dataclass(frozen=True)
class Producer:
    fn: Callable[[ProbeSet], dict[str, float]]
    names: tuple[str, ...]


SYMPTOMS: dict[str, SymptomDef] = {}
PRODUCERS: list[Producer] = []


def produces(*defs: tuple[str, str] | tuple[str, str, str]):
    """Declare the symptoms a producer computes: ``@produces(("loss.initial", "meaning", "unit"), ...)``.
    Refuses a name declared twice (registries refuse silent overwrites)."""

    def deco(fn):
        names = []
        for d in defs:
            name, meaning, unit = (d + ("",))[:3]
            if name in SYMPTOMS:
                raise ValueError(f"symptom {name!r} is declared twice")
            SYMPTOMS[name] = SymptomDef(name, meaning, unit, name.split(".")[0])
            names.append(name)
        PRODUCERS.append(Producer(fn, tuple(names)))
        return fn

    return deco


def extract(probes: ProbeSet) -> dict[str, float]:
    """All symptoms that can be computed from these probes."""
    out: dict[str, float] = {}
    for p in PRODUCERS:
        got = p.fn(probes)
        extra = set(got) - set(p.names)
        if extra:
            raise ValueError(f"{p.fn.__name__} produced undeclared symptoms {sorted(extra)}")
        out.update({k: float(v) for k, v in got.items() if v is not None})
    return out
