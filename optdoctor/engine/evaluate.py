"""Evaluate rules over symptom snapshots -> ranked Findings (pure; no torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from optdoctor.engine.expr import MissingName
from optdoctor.engine.rules import TEMPLATE_RE, Rule
from optdoctor.findings import Finding, RuleOutcome

Snapshot = tuple[int, dict[str, float]]  # (probe step, symptoms as measured up to that step)


@dataclass
class Selection:
    """Which rules run and how they are tuned (command line beats file beats rule defaults;
    the caller merges them in that order)."""

    select: list[str] = field(default_factory=list)  # id prefixes ("OD1", "OD203"); empty: all
    ignore: list[str] = field(default_factory=list)
    severity: dict[str, str] = field(default_factory=dict)  # rule id -> severity
    params: dict[str, dict[str, float]] = field(default_factory=dict)  # rule id -> {param: value}

    def wants(self, rule: Rule) -> bool:
        def match(prefixes):
            return any(rule.id.startswith(p) or rule.name == p for p in prefixes)

        if self.select and not match(self.select):
            return False
        return not match(self.ignore)


def render(template: str, env: dict[str, float]) -> str:
    def sub(m):
        name, spec = m.group(1), m.group(2) or ".3g"
        v = env.get(name)
        if v is None:
            return "n/a"
        try:
            return format(v, spec)
        except (ValueError, TypeError):
            return str(v)

    return TEMPLATE_RE.sub(sub, template)


def holds(rule: Rule, symptoms: dict[str, float], params: dict[str, float] | None = None) -> bool | None:
    """True/False, or None when a symptom the condition needs is missing."""
    env = {n: math.nan for n in rule.optional}
    env.update(symptoms)
    env.update(rule.param_env(params))
    try:
        return bool(rule.when.evaluate(env))
    except MissingName:
        return None


def evaluate(rules: list[Rule], snapshots: list[Snapshot], selection: Selection | None = None) -> tuple[list[Finding], list[RuleOutcome]]:
    """Each selected rule is evaluated at every snapshot; it fires when its condition holds at
    the last ``for`` snapshots (Prometheus' ``for:``). Its onset is the first step of that
    unbroken run, so that the earliest root cause ranks first among equals."""
    selection = selection or Selection()
    findings, outcomes = [], []
    final_step, final = snapshots[-1]
    for rule in rules:
        if not selection.wants(rule):
            continue
        params = selection.params.get(rule.id)
        truth = [holds(rule, sym, params) for _, sym in snapshots]
        if truth[-1] is None:
            missing = sorted(n for n in rule.symptom_names() if n not in final and n not in rule.optional)
            outcomes.append(RuleOutcome(rule.id, rule.name, rule.cause, "not_evaluated",
                                        "missing symptoms: " + ", ".join(missing)))
            continue
        run = 0
        for t in reversed(truth):
            if t is not True:
                break
            run += 1
        if run < rule.for_:
            outcomes.append(RuleOutcome(rule.id, rule.name, rule.cause, "passed"))
            continue
        onset = snapshots[len(snapshots) - run][0]
        env = dict(final)
        env.update(rule.param_env(params))
        names = list(rule.evidence) + [n for n in rule.symptom_names() if n not in rule.evidence]
        evidence = {n: final[n] for n in names if n in final}
        findings.append(Finding(
            rule=rule.id, name=rule.name, cause=rule.cause,
            severity=selection.severity.get(rule.id, rule.severity), confidence=rule.confidence,
            summary=render(rule.summary, env), evidence=evidence,
            remedies=[render(r.text, env) for r in rule.remedies], blame=rule.blame, onset=onset,
            references=list(rule.references),
        ))
        outcomes.append(RuleOutcome(rule.id, rule.name, rule.cause, "fired"))
    findings, outcomes = _rule_out(rules, findings, outcomes)
    findings.sort(key=Finding.sort_key)
    return findings, outcomes


def _rule_out(rules: list[Rule], findings: list[Finding], outcomes: list[RuleOutcome]):
    """Differential diagnosis: drop a finding whose symptoms another firing rule explains
    (its ``ruled_out_by`` names that rule's cause or id). Decided on the set that fired, so the
    order of rules does not matter."""
    by_id = {r.id: r for r in rules}
    fired = {(f.rule, f.cause) for f in findings}
    dropped: dict[str, str] = {}
    for f in findings:
        blockers = set(by_id[f.rule].ruled_out_by)
        hits = sorted(rid for rid, cause in fired if rid != f.rule and (rid in blockers or cause in blockers))
        if hits:
            dropped[f.rule] = "explained by " + ", ".join(hits)
    kept = [f for f in findings if f.rule not in dropped]
    outs = [RuleOutcome(o.rule, o.name, o.cause, "ruled_out", dropped[o.rule]) if o.rule in dropped else o for o in outcomes]
    return kept, outs
