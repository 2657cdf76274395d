"""What the rule engine produces and every reporter renders. Plain data, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("info", "warning", "error")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}

# CONTRACT.md section 2: more may be added, none renamed.
CAUSES = (
    "vanishing_gradients",
    "exploding_gradients",
    "ill_conditioning",
    "bad_init",
    "lr_too_high",
    "lr_too_low",
    "overfitting",
    "saddle_point",
    "local_minimum",
    "dead_relu",
)


@dataclass
class Finding:
    rule: str  # stable id, e.g. "OD101"
    name: str  # kebab-case, e.g. "vanishing-gradients"
    cause: str  # one of CAUSES
    severity: str  # one of SEVERITIES
    confidence: float  # 0..1
    summary: str
    evidence: dict[str, float] = field(default_factory=dict)
    remedies: list[str] = field(default_factory=list)
    blame: str | None = None  # config key path at fault, e.g. "optimizer.lr"
    onset: int | None = None  # probe step at which the symptom first showed, if known
    references: list[str] = field(default_factory=list)
    location: dict[str, Any] | None = None  # {"file":..., "line":..., "col":...} of the blamed key
    verification: list[dict[str, Any]] = field(default_factory=list)  # remedies tried (--verify), best first
    confirmed: bool | None = None  # a tried remedy fixed it (True), none helped (False), not tried (None)
    seeds: dict[str, Any] | None = None  # with probe.seeds > 1: {"fired": k, "of": n, "spread": {symptom: [min, max]}}

    def sort_key(self) -> tuple:
        # most important first: severity, then confidence, then the earliest onset (root cause)
        onset = self.onset if self.onset is not None else 1 << 30
        return (-SEVERITY_RANK[self.severity], -self.confidence, onset, self.rule)


@dataclass
class RuleOutcome:
    """Every rule evaluated, for JUnit and `--explain`: fired, silent, or not evaluated."""

    rule: str
    name: str
    cause: str
    status: str  # "fired" | "passed" | "not_evaluated" | "ruled_out" (fired, but another firing rule explains it)
    reason: str = ""  # for not_evaluated: which symptoms were missing


def first_clause(text: str, limit: int = 70, stops: tuple[str, ...] = (":", ";", " (", ". ")) -> str:
    """A remedy's short name for reports: its text up to the first of ``stops`` (tried in that
    order) that lies within ``limit`` characters and outside parentheses; else the text, cut to
    ``limit`` with an ellipsis."""
    for stop in stops:
        depth, i = 0, 0
        while i < min(len(text), limit):
            if text.startswith(stop, i) and depth == 0 and i > 0:
                return text[:i]
            depth += (text[i] == "(") - (text[i] == ")")
            i += 1
    text = text.rstrip(".")
    return text if len(text) <= limit else text[:limit - 3] + "..."
