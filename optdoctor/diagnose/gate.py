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


def followups_wanted(rules: list[Rule], symptoms: dict[str, float], selection: Selection | None = None,
                     which: str = "plateau") -> bool:
    """Whether any selected rule whose gate opens the ``which`` follow-ups opens it on these
    (baseline) symptoms."""
    selection = selection or Selection()
    return any(r.gate_open(symptoms, selection.params.get(r.id)) for r in rules
               if r.gate is not None and which in r.opens and selection.wants(r))


def plateau_gate(rules: list[Rule], selection: Selection | None = None) -> Callable[..., bool]:
    """The runner's ``followups`` hook: (ProbeSet so far, which follow-ups) -> run them?"""

    def gate(probes: ProbeSet, which: str = "plateau") -> bool:
        # what ran before any follow-up: the baseline (or a monitored run), LR variants, range test
        later = ("continued", "perturbed", "reseed", "standardized", "whitened", "target_standardized", "verify", "seed")
        base = ProbeSet({n: t for n, t in probes.traces.items() if t.kind not in later}, probes.data_stats)
        return followups_wanted(rules, extract(base), selection, which)

    return gate


@lru_cache(maxsize=1)
def _shipped() -> tuple[Rule, ...]:
    return tuple(load_rules())


def is_plateau(probes: ProbeSet, which: str = "plateau") -> bool:
    """The gates of the shipped rules at their default params (``which`` follow-ups)."""
    return plateau_gate(list(_shipped()))(probes, which)
