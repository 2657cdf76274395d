"""When the plateau follow-up probes run (continued, perturbed, reseed_*).

They cost four probes and only the rules whose condition reads their symptoms (``plateau.*``:
OD202 saddle point, OD203 local minimum) need them, so those rules say when in a ``gate:``
expression over the baseline's symptoms, with their own (possibly overridden) params: the
follow-ups run when the gate of any selected rule opens. ``--param OD202.flat_max=0.05`` thus
also widens when they run, and ``--ignore OD202 --ignore OD203`` skips them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

from optdoctor.engine.evaluate import Selection
from optdoctor.engine.rules import Rule, load_rules
from optdoctor.symptoms import extract
from optdoctor.trace import ProbeSet


def followups_wanted(rules: list[Rule], symptoms: dict[str, float], selection: Selection | None = None) -> bool:
    """Whether any selected rule's gate opens on these (baseline) symptoms."""
    selection = selection or Selection()
    return any(r.gate_open(symptoms, selection.params.get(r.id)) for r in rules if r.gate is not None and selection.wants(r))


def plateau_gate(rules: list[Rule], selection: Selection | None = None) -> Callable[[ProbeSet], bool]:
    """The runner's ``followups`` hook: ProbeSet (the baseline so far) -> run the follow-ups?"""

    def gate(probes: ProbeSet) -> bool:
        return followups_wanted(rules, extract(ProbeSet({"baseline": probes.baseline}, probes.data_stats)), selection)

    return gate


@lru_cache(maxsize=1)
def _shipped() -> tuple[Rule, ...]:
    return tuple(load_rules())


def is_plateau(probes: ProbeSet) -> bool:
    """The gate of the shipped rules at their default params."""
    return plateau_gate(list(_shipped()))(probes)
