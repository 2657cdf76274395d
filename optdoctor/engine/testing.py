"""Each rule's own test cases, run by `optdoctor rules test` and by the test suite.

- ``fires``: the condition holds on these symptoms;
- ``near_miss``: it is evaluated and does NOT hold (close to firing, must stay silent);
- ``neighbour``: symptoms of a neighbouring cause: this rule stays silent (or is ruled out by
  that cause, see ``ruled_out_by``), and some rule of the named cause in the same pack fires
  (the differential diagnosis works both ways).
"""

from __future__ import annotations

from dataclasses import dataclass

from optdoctor.engine.evaluate import holds
from optdoctor.engine.rules import Rule


@dataclass
class CaseResult:
    rule: str
    kind: str
    index: int
    ok: bool
    message: str = ""


def _symptoms(case) -> dict[str, float]:
    sym = case.get("symptoms", case) if isinstance(case, dict) else {}
    return {k: float(v) for k, v in sym.items()}


def run_rule_tests(rules: list[Rule]) -> list[CaseResult]:
    out = []
    for rule in rules:
        for kind in ("fires", "near_miss", "neighbour"):
            for i, case in enumerate(rule.tests.get(kind, [])):
                sym = _symptoms(case)
                got = holds(rule, sym)
                if kind == "fires":
                    ok, msg = got is True, f"expected to fire, got {_word(got)}"
                elif kind == "near_miss":
                    ok, msg = got is False, f"expected to stay silent (evaluated), got {_word(got)}"
                else:
                    cause = case.get("cause")
                    owners = [r for r in rules if r.cause == cause]
                    fired_by = [r.id for r in owners if holds(r, sym) is True]
                    explained = cause in rule.ruled_out_by or any(i in rule.ruled_out_by for i in fired_by)
                    ok = (got is not True or explained) and bool(fired_by)
                    msg = (f"fired on a {cause} case" if got is True
                           else f"no {cause} rule in the pack fires on it ({', '.join(r.id for r in owners) or 'none'})")
                out.append(CaseResult(rule.id, kind, i, ok, "" if ok else msg))
    return out


def _word(v) -> str:
    return {True: "fired", False: "silent", None: "not evaluated (missing symptoms)"}[v]
