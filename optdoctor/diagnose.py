"""The whole path of ``optdoctor diagnose``: config -> probes -> symptoms -> rules -> Diagnosis.

Imports torch (through probes/) only when ``run_diagnosis`` is called.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from optdoctor.config.schema import LoadedConfig
from optdoctor.engine.evaluate import Selection, evaluate
from optdoctor.engine.rules import Rule, load_rules
from optdoctor.findings import Finding, RuleOutcome
from optdoctor.trace import ProbeSet
from optdoctor.symptoms import extract

# When the baseline sits on a plateau, the saddle/minimum follow-up probes run. A plateau: the
# smoothed loss fell by less than PLATEAU_LATE_DROP of its initial value over the second half
# of the probe, while the model is still far from done (less than PLATEAU_PROGRESS of the way
# from the chance loss to zero, or less than that relative drop when no chance loss is known).
PLATEAU_LATE_DROP = 0.02
PLATEAU_PROGRESS = 0.5


@dataclass
class Diagnosis:
    name: str
    config_path: str
    findings: list[Finding]
    outcomes: list[RuleOutcome]
    symptoms: dict[str, float]
    probes: ProbeSet
    status: str = "completed"  # completed | interrupted
    seconds: float = 0.0
    loaded: LoadedConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def is_plateau(probes: ProbeSet) -> bool:
    s = extract(ProbeSet({"baseline": probes.baseline}, probes.data_stats))
    if s.get("loss.diverged", 0.0) or "loss.late_rel_drop" not in s:
        return False
    far = s["loss.progress"] < PLATEAU_PROGRESS if "loss.progress" in s else s.get("loss.rel_drop", 1.0) < PLATEAU_PROGRESS
    return s["loss.late_rel_drop"] < PLATEAU_LATE_DROP and far


def checkpoint_steps(probes: ProbeSet) -> list[int]:
    t = probes.baseline
    if t.has("loss.train_eval"):
        steps = [int(s) for s in t.steps("loss.train_eval")]
    else:
        steps = []
    last = int(t.steps("loss.train")[-1]) + 1 if t.has("loss.train") else 0
    if t.status == "diverged" and t.stopped_at is not None:
        last = t.stopped_at
    steps = [s for s in steps if 0 < s <= last]
    if not steps or steps[-1] != last:
        steps.append(last)
    return steps


def snapshots(probes: ProbeSet) -> list[tuple[int, dict[str, float]]]:
    """Symptoms as they stood at each checkpoint, the last one being the whole probe."""
    steps = checkpoint_steps(probes)
    out = [(s, extract(probes.truncated(s))) for s in steps[:-1]]
    out.append((steps[-1], extract(probes)))
    return out


def evaluate_probes(probes: ProbeSet, rules: list[Rule], selection: Selection | None = None,
                    loaded: LoadedConfig | None = None) -> tuple[list[Finding], list[RuleOutcome], dict[str, float]]:
    snaps = snapshots(probes)
    findings, outcomes = evaluate(rules, snaps, selection)
    if loaded is not None:
        for f in findings:
            if f.blame:
                pos = loaded.line_of(f.blame)
                f.location = {"file": loaded.path, "line": pos[0] if pos else 1, "col": pos[1] if pos else 1}
    return findings, outcomes, snaps[-1][1]


def run_diagnosis(loaded: LoadedConfig, selection: Selection | None = None, rule_paths: list[str] | None = None,
                  progress: Callable[[str, int, int], None] | None = None, rules: list[Rule] | None = None,
                  budget=None) -> Diagnosis:
    """Probe, extract, evaluate. On Ctrl-C, diagnoses what was measured so far (status
    "interrupted") instead of losing it.

    With ``probe.budget`` (or a ``budget``: probes/budget.py ``Budget``, e.g. counting from the
    process's start), the probes are planned from a timed calibration to fit it and stopped at
    its hard limit; what was cut is in ``extra["budget"]``."""
    from optdoctor.probes.runner import ProbeInterrupted, run_probes
    from optdoctor.probes.setup import prepare

    if rules is None:
        rules = load_rules(rule_paths)  # before probing: a broken rule pack fails fast (exit 2)
    t0 = time.perf_counter()
    setup = prepare(loaded)
    if budget is None and loaded.config.probe.budget is not None:
        from optdoctor.probes.budget import Budget

        budget = Budget(loaded.config.probe.budget)
    if budget is not None:
        setup = budget.prepare(setup)  # calibrate, plan: the setup's config now runs the plan
        loaded = setup.loaded
        if hasattr(progress, "total"):
            progress.total = budget.eta
    status = "completed"
    try:
        probes = run_probes(setup, progress, followups=is_plateau, budget=budget)
    except ProbeInterrupted as e:
        probes, status = e.probes, "interrupted"
        if "baseline" not in probes.traces or not probes.baseline.has("loss.train"):
            raise KeyboardInterrupt from None
    findings, outcomes, symptoms = evaluate_probes(probes, rules, selection, loaded)
    if status == "completed" and loaded.config.probe.seeds > 1:
        try:
            findings, outcomes = _across_seeds(setup, probes, findings, outcomes, symptoms, rules, selection, progress, budget)
        except ProbeInterrupted:
            status = "interrupted"  # keep the first seed's diagnosis
    diag = Diagnosis(loaded.name, loaded.path, findings, outcomes, symptoms, probes, status, 0.0, loaded)
    if status == "completed" and loaded.config.probe.verify.enabled:
        try:
            verify_findings(diag, rules, setup, progress, budget)
        except (ProbeInterrupted, KeyboardInterrupt):  # keep the diagnosis and what was verified
            diag.status = "interrupted"
    diag.seconds = time.perf_counter() - t0
    if budget is not None:
        diag.extra["budget"] = budget.summary()
    return diag


# --- remedies that prove themselves (--verify) ----------------------------------------------

# A remedy "helped" when the compared loss fell by at least this fraction and the rule no longer
# fires on the verification probe (or cannot be evaluated there).
VERIFY_MIN_GAIN = 0.1
CONFIRM_BONUS = 0.1  # confidence added when a tried remedy fixed it
REFUTE_PENALTY = 0.2  # confidence removed when every applicable remedy failed


def _gain(before: float, after: float, reference: float | None) -> float:
    """Relative improvement of the compared loss. A diverged baseline (inf) is compared through
    ``reference`` (the lower of its initial and chance loss): stopping the divergence only counts
    when the remedy also trains."""
    import math

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
    from optdoctor.engine.evaluate import holds
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
        metric = "val.final" if f.cause == "overfitting" else "loss.final"
        before = diag.symptoms.get(metric)
        refs = [diag.symptoms[k] for k in ("loss.initial", "loss.chance") if k in diag.symptoms]
        reference = min(refs) if refs else None
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
            diag.probes.traces[name] = trace
            after_sym = extract(ProbeSet({"baseline": trace}, trace.meta.get("data_stats", {})))
            v.after = after_sym.get(metric)
            if before is not None and v.after is not None:
                v.gain = _gain(before, v.after, reference)
            v.still_fires = holds(rule, after_sym)
            better = v.gain is not None and v.gain >= VERIFY_MIN_GAIN
            v.helped = better and v.still_fires is not True
            v.improved = better and v.still_fires is True
            v.symptoms = {n: [diag.symptoms[n], after_sym[n]] for n in f.evidence if n in after_sym and n in diag.symptoms}
            results.append(v)
        if not results:
            continue
        results.sort(key=lambda v: (not v.applicable, -(v.gain if v.gain is not None else -9e9)))
        f.verification = [v.as_dict() for v in results]
        tried = [v for v in results if v.applicable]
        if any(v.helped for v in tried):
            f.confirmed = True
            f.confidence = round(min(0.99, f.confidence + CONFIRM_BONUS), 3)
        elif tried and not any(v.improved for v in tried):
            f.confirmed = False
            f.confidence = round(max(0.05, f.confidence - REFUTE_PENALTY), 3)
    diag.findings.sort(key=Finding.sort_key)


def _across_seeds(setup, probes: ProbeSet, findings, outcomes, symptoms, rules, selection, progress, budget=None):
    """probe.seeds > 1: the whole probe set again with seeds seed+1, seed+2, ...; a finding is
    kept when it fires in a majority of seeds, with the spread of its evidence across them.
    The other seeds' traces join the ProbeSet as "s<i>_<probe>" (e.g. for TensorBoard)."""
    import dataclasses

    from optdoctor.probes.runner import run_probes

    loaded = setup.loaded
    n = loaded.config.probe.seeds
    per_seed = [(findings, outcomes, symptoms)]
    for i in range(1, n):
        cfg = loaded.config.model_copy(deep=True)
        cfg.seed = loaded.config.seed + i
        seed_setup = dataclasses.replace(setup, loaded=loaded.model_copy(update={"config": cfg}))
        if budget is not None and not budget.admit(f"seeds {cfg.seed}..{loaded.config.seed + n - 1} (whole probe sets)",
                                                   budget.plan.estimate * budget.speed):
            n = len(per_seed)  # the majority is taken over the seeds that ran
            break
        extra = run_probes(seed_setup, progress, followups=is_plateau, budget=budget)
        per_seed.append(evaluate_probes(extra, rules, selection, loaded))
        for name, t in extra.traces.items():
            t.meta["seed_of"] = t.kind  # what this probe is within its own seed's set
            t.meta["kind"] = "seed"
            probes.traces[f"s{i}_{name}"] = t
    fired: dict[str, list[Finding]] = {}
    for fs, _, _ in per_seed:
        for f in fs:
            fired.setdefault(f.rule, []).append(f)
    kept = []
    for rule_id, fs in fired.items():
        f = fs[0]
        spread = {}
        for name in f.evidence:
            vals = [s[name] for _, _, s in per_seed if name in s]
            if vals:
                spread[name] = [min(vals), max(vals)]
        f.seeds = {"fired": len(fs), "of": n, "spread": spread}
        if len(fs) * 2 > n:
            kept.append(f)
    out = []
    for o in outcomes:
        k = len(fired.get(o.rule, []))
        if o.rule in fired and k * 2 <= n:
            o = RuleOutcome(o.rule, o.name, o.cause, "passed", f"fired in {k} of {n} seeds (no majority)")
        elif o.rule in fired and o.status != "fired":
            o = RuleOutcome(o.rule, o.name, o.cause, "fired", f"fired in {k} of {n} seeds")
        out.append(o)
    kept.sort(key=Finding.sort_key)
    return kept, out
