"""Remedies that prove themselves (``--verify``): each patched remedy of the top findings is
tried in a probe of its own (same seed, same budget) and judged by the symptom its rule names
(``verify:``, default ``loss.final``). ``reverify`` judges them again from saved probes
(``optdoctor replay``)."""

from __future__ import annotations

import math
from typing import Callable

from optdoctor.diagnose.model import Diagnosis
from optdoctor.engine.evaluate import holds
from optdoctor.engine.rules import Rule
from optdoctor.findings import Finding
from optdoctor.symptoms import extract
from optdoctor.trace import ProbeSet

# A remedy "helped" when the compared number fell by at least this fraction and the rule no
# longer fires on the verification probe (or cannot be evaluated there).
VERIFY_MIN_GAIN = 0.1
CONFIRM_BONUS = 0.1  # confidence added when a tried remedy fixed it
REFUTE_PENALTY = 0.2  # confidence removed when every applicable remedy failed


def gain(before: float, after: float, reference: float | None) -> float:
    """Relative improvement of the compared loss. A diverged baseline (inf) is compared through
    ``reference`` (the lower of its initial and chance loss): stopping the divergence only counts
    when the remedy also trains."""
    if not math.isfinite(after):
        return -1.0 if math.isfinite(before) else 0.0
    if not math.isfinite(before):
        if reference is None or not math.isfinite(reference) or reference == 0:
            return 0.0
        before = reference
    return (before - after) / abs(before) if before else 0.0


def verify_findings(diag: Diagnosis, rules: list[Rule], base_setup, progress: Callable[[str, int, int], None] | None = None,
                    budget=None) -> None:
    """For the top findings, re-run the baseline probe (same seed and budget) with each patched
    remedy applied, record what it changed, rank the remedies by that, and move the finding's
    confidence: up when a remedy fixed it, down when none of the applicable ones helped."""
    from optdoctor.errors import OptdoctorError
    from optdoctor.probes.runner import ProbeSpec, run_probe
    from optdoctor.probes.setup import derive
    from optdoctor.remedies import NotApplicable, Verification, apply_patch

    loaded = diag.loaded
    vcfg = loaded.config.probe.verify
    by_id = {r.id: r for r in rules}
    factories = {"model": base_setup.model_factory, "data": base_setup.data_factory}
    todo = [f for f in diag.findings if f.severity in ("warning", "error")][: vcfg.max_findings]
    for f in todo:
        rule = by_id[f.rule]
        metric = rule.verify
        before = diag.symptoms.get(metric)
        reference = _reference(diag.symptoms)
        results = []
        for i, remedy in enumerate([r for r in rule.remedies if r.patch][: vcfg.max_remedies]):
            v = Verification(remedy=f.remedies[rule.remedies.index(remedy)], patch=dict(remedy.patch), metric=metric, before=before)
            try:
                patched = apply_patch(loaded, remedy.patch, factories)
                setup = derive(base_setup, patched, remedy.patch)
                name = f"verify_{rule.id}_{i + 1}"
                spec = ProbeSpec(name=name, kind="verify", steps=patched.config.probe.steps, seed=patched.config.seed)
                if budget is not None and not budget.admit_specs(name, [spec]):
                    v.applicable, v.reason = False, "not tried: the time budget ran out"
                    results.append(v)
                    continue
                if budget is not None:
                    budget.begin_spec(spec)
                trace, _ = run_probe(setup, spec, progress, stop=budget.stop if budget is not None else None)
                if budget is not None:
                    budget.end(trace)
            except NotApplicable as e:
                v.applicable, v.reason = False, str(e)
                results.append(v)
                continue
            except (OptdoctorError, ValueError, TypeError) as e:
                v.applicable, v.reason = False, f"the patched probe could not run: {e}"
                results.append(v)
                continue
            trace.meta["verifies"] = {"rule": rule.id, "remedy": v.remedy}
            v.probe = name
            diag.probes.traces[name] = trace
            judge(v, f, rule, diag.symptoms, _after(trace, diag.probes), reference)
            results.append(v)
        if results:
            conclude(f, results)
    diag.findings.sort(key=Finding.sort_key)


def attempts(diag: Diagnosis) -> dict[str, list[dict]]:
    """What was tried per rule, without what was measured: saved beside the traces."""
    keep = ("remedy", "patch", "applicable", "reason", "probe")
    return {f.rule: [{k: v[k] for k in keep} for v in f.verification] for f in diag.findings if f.verification}


def reverify(diag: Diagnosis, rules: list[Rule], tried: dict[str, list[dict]]) -> None:
    """``verify_findings`` again, from saved verification probes (``attempts``) instead of new
    ones: the same judgement, for the findings that fire now."""
    from optdoctor.remedies import Verification

    by_id = {r.id: r for r in rules}
    for f in diag.findings:
        if f.rule not in tried or f.rule not in by_id:
            continue
        rule = by_id[f.rule]
        results = []
        for a in tried[f.rule]:
            v = Verification(remedy=a["remedy"], patch=dict(a["patch"]), applicable=a["applicable"], reason=a["reason"],
                             metric=rule.verify, before=diag.symptoms.get(rule.verify), probe=a.get("probe"))
            trace = diag.probes.traces.get(v.probe) if v.probe else None
            if v.applicable and trace is None:
                v.applicable, v.reason = False, "its verification probe was not saved"
            if v.applicable:
                judge(v, f, rule, diag.symptoms, _after(trace, diag.probes), _reference(diag.symptoms))
            results.append(v)
        if results:
            conclude(f, results)
    diag.findings.sort(key=Finding.sort_key)


def _after(trace, probes: ProbeSet) -> dict[str, float]:
    return extract(ProbeSet({"baseline": trace}, dict(trace.meta.get("data_stats", probes.data_stats))))


def _reference(symptoms: dict[str, float]) -> float | None:
    refs = [symptoms[k] for k in ("loss.initial", "loss.chance") if k in symptoms]
    return min(refs) if refs else None


def judge(v, f: Finding, rule: Rule, before: dict[str, float], after: dict[str, float], reference: float | None) -> None:
    """What one tried remedy changed: the compared symptom, whether the rule still fires, and
    the finding's evidence before -> after."""
    v.after = after.get(v.metric)
    if v.before is not None and v.after is not None:
        v.gain = gain(v.before, v.after, reference)
    v.still_fires = holds(rule, after)
    better = v.gain is not None and v.gain >= VERIFY_MIN_GAIN
    v.helped = better and v.still_fires is not True
    v.improved = better and v.still_fires is True
    v.symptoms = {n: [before[n], after[n]] for n in f.evidence if n in after and n in before}


def conclude(f: Finding, results: list) -> None:
    """Rank the tried remedies (best first) and move the finding's confidence."""
    results.sort(key=lambda v: (not v.applicable, -(v.gain if v.gain is not None else -9e9)))
    f.verification = [v.as_dict() for v in results]
    tried = [v for v in results if v.applicable]
    if any(v.helped for v in tried):
        f.confirmed = True
        f.confidence = round(min(0.99, f.confidence + CONFIRM_BONUS), 3)
    elif tried and not any(v.improved for v in tried):
        f.confirmed = False
        f.confidence = round(max(0.05, f.confidence - REFUTE_PENALTY), 3)
