"""Remedies that prove themselves (``--verify``): each patched remedy of the top findings is
tried in a probe of its own (same seed, same budget) and judged by the symptom its rule names
(``verify:``, default ``loss.final``); a fix is then tried on more seeds and trained once more
for ``probe.verify.longer`` x the probe's steps, and stays a fix only if it holds on each; the
best fix and the best other one that changes a different part of the config are then tried
together as one more remedy (``probe.verify.combine``). ``reverify`` judges them again from saved probes (``optdoctor replay``)."""

from __future__ import annotations

import json
import math
import statistics
import time
from typing import Callable

from optdoctor.diagnose.model import Diagnosis
from optdoctor.engine.evaluate import holds
from optdoctor.engine.rules import Rule
from optdoctor.findings import Finding, first_clause
from optdoctor.symptoms import extract
from optdoctor.trace import ProbeSet

# A remedy "helped" when the compared number fell by at least this fraction, the rule no
# longer fires on the verification probe (or cannot be evaluated there), and the remedied run
# ended below its reference loss (the lower of the initial and the chance loss): a run that
# still sits above what predicting the prior gives has not been fixed, however much it fell.
VERIFY_MIN_GAIN = 0.1
CONFIRM_BONUS = 0.1  # confidence added when a tried remedy fixed it
REFUTE_PENALTY = 0.2  # confidence removed when every applicable remedy failed
# The recommendation: among the fixes that held on every seed tried, the cheapest per step
# whose loss is within this factor of the best loss reached (a fix 3x slower per step must buy
# more than a slightly lower loss).
RECOMMEND_LOSS_SLACK = 2.0
STOPS = (":", ";", " (", ". ", ",")  # where a remedy's name ends in the recommendation's reason


# A run's compared loss is also that of the model as it is evaluated: for a model with running
# statistics (BatchNorm), the training-mode loss times how much worse the same weights do on the
# same fixed batch in eval mode (loss.eval_mode_ratio), where that is clearly worse. BatchNorm
# added in front of unnormalised inputs trains well in training mode while its running statistics
# lag the weights: on the fault benchmark's dev split at a8920ca, BatchNorm alone was the remedy
# the plain loop (which scores in eval mode) refuted most often, 13 of the 30 cases where it was
# judged fixed against 65 of 283 for the others.
EVAL_SCALED = ("loss.final", "loss.final_over_chance")


def in_eval_mode(symptoms: dict[str, float], metric: str) -> bool:
    """Whether ``metric`` (a positive, finite training loss) is clearly worse in eval mode: by more
    than the fraction a remedy must gain to count (``VERIFY_MIN_GAIN``), so that a small
    difference between the two modes changes nothing."""
    value, ratio = symptoms.get(metric), symptoms.get("loss.eval_mode_ratio")
    if metric not in EVAL_SCALED or value is None or ratio is None or not (math.isfinite(value) and value > 0):
        return False
    return ratio > 1 + VERIFY_MIN_GAIN  # NaN is not


def compared(symptoms: dict[str, float], metric: str) -> float | None:
    """The value of ``metric`` a remedy is judged by: the rule's ``verify:`` symptom, scaled to
    eval mode where that is clearly worse (``in_eval_mode``)."""
    value = symptoms.get(metric)
    return value * symptoms["loss.eval_mode_ratio"] if in_eval_mode(symptoms, metric) else value


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


def trains(after: float | None, reference: float | None) -> bool:
    """Whether the remedied run's compared loss ended below the reference loss (True when
    either is unknown: the gain and the rule then decide alone)."""
    if after is None or reference is None or not math.isfinite(reference):
        return True
    return math.isfinite(after) and after < reference


def _rerank(diag: Diagnosis) -> None:
    """Order the findings again after their confidences moved, keeping the order the evidence gave
    where severity and the new confidence tie: two findings confirmed to the same 0.99 stay in the
    order their own confidences (then onsets) put them in, not in rule-id order. The list is still
    in the evidence's order here (verification changes confidences, not the list), and the sort is
    stable, so severity and confidence are the whole key."""
    diag.findings.sort(key=lambda f: f.sort_key()[:2])


def verify_findings(diag: Diagnosis, rules: list[Rule], base_setup, progress: Callable[[str, int, int], None] | None = None,
                    budget=None, started: float | None = None) -> None:
    """For the top findings, re-run the baseline probe (same seed and budget) with each patched
    remedy applied, record what it changed and what it cost per step, try the ones that fixed it
    on more seeds and longer, try the two best that go together as one more, rank the remedies, recommend one, and move the finding's confidence: up when a
    remedy fixed it, down when none of the applicable ones helped.

    ``started``: when the plain diagnosis began (``time.perf_counter()``): with
    ``probe.verify.time_factor`` it bounds the time --verify may add; remedies (then extra seeds)
    that would not fit are reported as skipped for time. ``budget``: the diagnosis' time budget
    (probes/budget.py ``Budget``), if any: a probe it has no time for is not tried, and one
    running is stopped at its hard limit."""
    from optdoctor.remedies import Verification

    loaded = diag.loaded
    vcfg = loaded.config.probe.verify
    by_id = {r.id: r for r in rules}
    clock = _Budget(vcfg.time_factor, started)
    base_step = diag.probes.baseline.meta.get("step_seconds") if "baseline" in diag.probes.traces else None
    todo = [f for f in diag.findings if f.severity in ("warning", "error")][: vcfg.max_findings]
    plans = []
    for f in todo:
        rule = by_id[f.rule]
        before = compared(diag.symptoms, rule.verify)
        results = []
        for i, remedy in enumerate([r for r in rule.remedies if r.patch][: vcfg.max_remedies]):
            v = Verification(remedy=f.remedies[rule.remedies.index(remedy)], patch=dict(remedy.patch), metric=rule.verify, before=before)
            results.append(v)
            if not clock.fits():
                v.applicable, v.reason = False, clock.reason()
                continue
            t = time.perf_counter()
            _try(v, f, rule, f"verify_{rule.id}_{i + 1}", loaded.config.seed, diag, base_setup, progress, clock, base_step,
                 budget, remedy.or_patch)
            if v.probe:
                clock.spent(time.perf_counter() - t)
        plans.append((f, rule, results))
    checked: set[int] = set()
    for f, rule, v in robustness_order(plans, checked):  # once every remedy had its first try
        checked.add(id(v))
        _hold(v, f, rule, diag, base_setup, progress, clock, vcfg, budget)
    if vcfg.combine:
        for f, rule, results in plans:
            pair = combination(results)
            if pair is not None:
                results.append(_try_combined(pair, f, rule, diag, base_setup, progress, clock, base_step, budget, vcfg))
    for f, rule, results in plans:
        if results:
            conclude(f, results)
    _rerank(diag)


# The parts of a config a patch key belongs to (a key outside them is a part of its own). Two
# fixes that change the same part are not tried together: a rate was measured for its own
# optimizer and schedule, whitening already standardises, one init or in-loop intervention
# replaces another. A swapped model (model.factory) takes no arguments written for the old one.
_PARTS = (("optimizer", ("optimizer", "schedule")),
          ("init", ("probe.reinit", "model.args.init", "model.args.weight_scale", "model.args.bias_init")),
          ("inputs", ("probe.standardize_inputs", "probe.whiten_inputs")),
          ("interventions", ("probe.perturb_gd", "probe.negative_curvature_step")))


def _parts(patch: dict) -> set[str]:
    keys = [k.rstrip("?") for k in patch]
    return {next((part for part, prefixes in _PARTS if any(k == p or k.startswith(p + ".") for p in prefixes)), k) for k in keys}


def combinable(a: dict, b: dict) -> bool:
    """Whether two remedies' patches change different parts of the config (``_PARTS``), so that
    applying both is the two remedies at once rather than one overwriting the other."""
    def swaps_model(p: dict, other: dict) -> bool:
        return "model.factory" in p and any(k.startswith("model.") for k in other)

    return not (_parts(a) & _parts(b)) and not swaps_model(a, b) and not swaps_model(b, a)


def combination(results: list):
    """The two fixes of one finding to try together (``probe.verify.combine``): the one that reached
    the lowest loss and the best other one that changes a different part of the config
    (``combinable``); None when there are no two such fixes. A fix here has held on every seed
    and in the longer run, as far as they were tried."""
    pool = sorted((v for v in results if v.helped and v.after is not None and not v.combines), key=lambda v: v.after)
    if len(pool) < 2:
        return None
    first = pool[0]
    second = next((v for v in pool[1:] if combinable(first.patch, v.patch)), None)
    return None if second is None else (first, second)


def _try_combined(pair, f: Finding, rule: Rule, diag: Diagnosis, base_setup, progress, clock: "_Budget", base_step, budget,
                  vcfg):
    """The two fixes of ``combination`` as one more remedy: tried, and if it fixes the run, checked
    on more seeds and trained longer like any other (time allowing)."""
    from optdoctor.remedies import Verification

    a, b = pair
    names = [first_clause(x.remedy, 60, STOPS) for x in (a, b)]
    v = Verification(remedy=f"{names[0]} + {names[1][:1].lower()}{names[1][1:]}, together", patch={**a.patch, **b.patch},
                     metric=rule.verify, before=compared(diag.symptoms, rule.verify), combines=[a.remedy, b.remedy])
    if not clock.fits():
        v.applicable, v.reason = False, clock.reason()
        return v
    t = time.perf_counter()
    _try(v, f, rule, f"verify_{rule.id}_combined", diag.loaded.config.seed, diag, base_setup, progress, clock, base_step, budget)
    if v.probe:
        clock.spent(time.perf_counter() - t)
    _hold(v, f, rule, diag, base_setup, progress, clock, vcfg, budget)
    return v


def _hold(v, f: Finding, rule: Rule, diag: Diagnosis, base_setup, progress, clock: "_Budget", vcfg, budget) -> None:
    """A fix's checks: on ``probe.verify.seeds`` more seeds, then trained ``probe.verify.longer`` x
    longer; it stays a fix only if it holds on each that ran."""
    if v.helped and vcfg.seeds:
        _seeds(v, f, rule, diag, base_setup, progress, clock, vcfg.seeds, budget)
        hold_on_seeds(v)
    if v.helped and vcfg.longer and vcfg.longer > 1:
        _longer(v, f, rule, diag, base_setup, progress, clock, vcfg.longer, budget)
        hold_longer(v)


def robustness_order(plans: list, checked: set[int]):
    """The fixes to try on more seeds and train longer, in the order time should go to them:
    first, finding by finding, the one that would be recommended now, and the next such pick
    while a pick fails a check (so that under --verify's time limit the remedy a user is told to
    apply is the one most likely to have been checked); then every other fix. A generator: each
    pick is made after the previous one's checks (the caller adds what it checked to ``checked``)."""
    for f, rule, results in plans:
        while True:
            pick, _ = recommend([v for v in results if v.helped and id(v) not in checked])
            if pick is None:
                break
            yield f, rule, pick
            if pick.helped:  # it held (or time ran out): this finding's pick is settled
                break
    for f, rule, results in plans:
        for v in results:
            if v.helped and id(v) not in checked:
                yield f, rule, v


class _Budget:
    """The time --verify may still spend: (time_factor - 1) x the plain diagnosis' time. A probe
    is started only when the median of the tries so far (probe, setup and judgement) still fits."""

    def __init__(self, factor: float | None, started: float | None):
        self.t0 = time.perf_counter()
        self.limit = math.inf if factor is None or started is None else (factor - 1) * (self.t0 - started)
        self.factor = factor
        self.durations: list[float] = []

    def spent(self, seconds: float) -> None:
        self.durations.append(seconds)

    def fits(self, n: int = 1) -> bool:
        estimate = statistics.median(self.durations) if self.durations else 0.0
        return time.perf_counter() - self.t0 + n * estimate <= self.limit

    def reason(self) -> str:
        return (f"skipped for time: --verify's limit, {self.factor - 1:.0%} of the plain diagnosis' time ({self.limit:.1f} s), "
                "was reached; probe.verify.time_factor: null lifts it")


class _OutOfBudget(Exception):
    """The diagnosis' time budget (``probe.budget``) has no time left for this probe."""


def longer_config(loaded, factor: float):
    """The config trained ``factor`` x longer: probe.steps scaled, and so a schedule's length that
    spans the probe (``total_steps`` or ``T_max`` equal to probe.steps: OneCycleLR would refuse to
    step past it); a ``$steps`` placeholder in a remedy's patch then stands for the longer run."""
    cfg = loaded.config
    steps = max(cfg.probe.steps + 1, int(round(cfg.probe.steps * factor)))
    update = {"probe": cfg.probe.model_copy(update={"steps": steps})}
    if cfg.schedule is not None:
        args = {k: steps if k in ("total_steps", "T_max") and v == cfg.probe.steps and not isinstance(v, bool) else v
                for k, v in cfg.schedule.args.items()}
        update["schedule"] = cfg.schedule.model_copy(update={"args": args})
    return loaded.model_copy(update={"config": cfg.model_copy(update=update)})


def _run(patch: dict, seed: int, name: str, diag: Diagnosis, base_setup, progress, clock: _Budget, budget=None,
         cause: str | None = None, longer: float | None = None):
    """The verification probe of one patch on one seed: its trace (NotApplicable when the patch
    cannot be applied or needs a package that is absent; _OutOfBudget when the time budget
    cannot fit it). ``cause``: the rule's (apply_patch: an lr_too_high remedy must lower the rate).
    ``longer``: train this multiple of probe.steps (``longer_config``)."""
    from optdoctor.config.resolve import optimizer_available
    from optdoctor.probes.runner import ProbeSpec, run_probe
    from optdoctor.probes.setup import derive
    from optdoctor.remedies import NotApplicable, apply_patch

    loaded = diag.loaded if not longer else longer_config(diag.loaded, longer)
    factories = {"model": base_setup.model_factory, "data": base_setup.data_factory}
    patched = apply_patch(loaded, patch, factories, diag.symptoms, cause)
    missing = optimizer_available(patched.config.optimizer.name)
    if missing:
        raise NotApplicable(f"optimizer {patched.config.optimizer.name} is not installed: {missing}")
    setup = derive(base_setup, patched, patch)
    if _cycles_absent_momentum(setup, patch):  # e.g. a one-cycle remedy for Adagrad: cycle the rate alone
        sched = patched.config.schedule.model_copy(update={"args": {**patched.config.schedule.args, "cycle_momentum": False}})
        patched = patched.model_copy(update={"config": patched.config.model_copy(update={"schedule": sched})})
        setup = derive(base_setup, patched, patch)
    spec = ProbeSpec(name=name, kind="verify", steps=patched.config.probe.steps, seed=seed)
    if budget is None:
        trace, _ = run_probe(setup, spec, progress)
        return trace
    if not budget.admit_specs(name, [spec]):
        raise _OutOfBudget(name)
    trace = None
    budget.begin_spec(spec)
    try:
        trace, _ = run_probe(setup, spec, progress, stop=budget.stop)
    finally:
        budget.end(trace)
    return trace


# schedules that also cycle the momentum (or Adam's beta1) unless told cycle_momentum=False
MOMENTUM_CYCLING = ("OneCycleLR", "CyclicLR")


def _cycles_absent_momentum(setup, patch: dict) -> bool:
    """A remedy's schedule would cycle a momentum its optimizer does not have (torch refuses:
    "optimizer must support momentum or beta1"). Only for a schedule the patch sets; a schedule
    of the user's own config is run as written."""
    import inspect

    sched = setup.cfg.schedule
    if not any(k == "schedule" or k.startswith("schedule.") for k in patch) or sched is None:
        return False
    if sched.name not in MOMENTUM_CYCLING or "cycle_momentum" in sched.args:
        return False
    try:
        params = inspect.signature(setup.optimizer_cls).parameters
    except (TypeError, ValueError):
        return False
    return "momentum" not in params and "betas" not in params


def _try(v, f: Finding, rule: Rule, name: str, seed: int, diag: Diagnosis, base_setup, progress, clock: _Budget,
         base_step: float | None, budget=None, or_patch: dict | None = None) -> None:
    """One remedy's first probe; ``or_patch``: the same remedy in a form the config can take when
    ``v.patch`` is not applicable, or when the patched probe could not run (a factory that takes
    ``init`` but not that scheme); ``v.patch`` then records the one that ran."""
    from optdoctor.errors import OptdoctorError
    from optdoctor.remedies import NotApplicable

    try:
        try:
            trace = _run(v.patch, seed, name, diag, base_setup, progress, clock, budget, rule.cause)
        except NotApplicable as first:
            if or_patch is None:
                raise
            v.patch, v.note = dict(or_patch), f"instead of {json.dumps(v.patch)} ({first})"
            trace = _run(v.patch, seed, name, diag, base_setup, progress, clock, budget, rule.cause)
        except (OptdoctorError, ValueError, TypeError) as first:
            if or_patch is None:
                raise
            v.patch, v.note = dict(or_patch), f"instead of {json.dumps(v.patch)} (which could not run: {first})"
            trace = _run(v.patch, seed, name, diag, base_setup, progress, clock, budget, rule.cause)
    except _OutOfBudget:
        v.applicable, v.reason = False, "not tried: the time budget ran out"
        return
    except NotApplicable as e:
        v.applicable, v.reason = False, str(e)
        return
    except (OptdoctorError, ValueError, TypeError) as e:
        v.applicable, v.reason = False, f"the patched probe could not run: {e}"
        return
    trace.meta["verifies"] = {"rule": rule.id, "remedy": v.remedy}
    v.probe = name
    diag.probes.traces[name] = trace
    judge(v, f, rule, diag.symptoms, _after(trace, diag.probes), _reference(diag.symptoms, rule.verify))
    step = trace.meta.get("step_seconds")
    if step and base_step:
        v.cost = step / base_step
    v.interventions = {k: trace.meta[k] for k in ("negative_curvature", "perturb_gd") if trace.meta.get(k)}


def _seeds(v, f: Finding, rule: Rule, diag: Diagnosis, base_setup, progress, clock: _Budget, n: int, budget=None) -> None:
    """The remedy again on ``n`` more seeds (time allowing): on how many it still fixes the run,
    judged against the baseline as on the first seed."""
    from optdoctor.errors import OptdoctorError
    from optdoctor.remedies import NotApplicable

    if not clock.fits(n):
        v.seeds_note = "not tried on more seeds (time)"
        return
    fixed, losses = 0, []
    for k in range(1, n + 1):
        t = time.perf_counter()
        try:
            trace = _run(v.patch, diag.loaded.config.seed + k, f"{v.probe}_s{k}", diag, base_setup, progress, clock, budget,
                         rule.cause)
        except _OutOfBudget:
            v.seeds_note = "not tried on more seeds (time budget)"
            return
        except (NotApplicable, OptdoctorError, ValueError, TypeError):
            continue
        after = _after(trace, diag.probes)
        fixed += fixes(v, rule, after, _reference(diag.symptoms, rule.verify))
        losses.append(compared(after, v.metric))
        clock.spent(time.perf_counter() - t)
    v.seeds = {"fixed": fixed, "of": n, "after": losses}


def fixes(v, rule: Rule, after: dict[str, float], reference: float | None) -> bool:
    """Whether a run of remedy ``v`` (its symptoms ``after``) fixes the baseline by the first
    try's measure: the compared loss fell clearly, the rule no longer fires, and the run ended
    below the reference loss."""
    after_value = compared(after, v.metric)
    g = gain(v.before, math.nan if after_value is None else after_value, reference) if v.before is not None else None
    return bool(g is not None and g >= VERIFY_MIN_GAIN and holds(rule, after) is not True
                and trains(after_value, reference))


def _longer(v, f: Finding, rule: Rule, diag: Diagnosis, base_setup, progress, clock: _Budget, factor: float,
            budget=None) -> None:
    """The remedy once more on the first seed, trained ``factor`` x the probe's steps, judged
    against the baseline as the first try was (``fixes``): a fix that breaks down when trained
    longer (a rate that still diverges later, a regulariser whose run overfits later) is none.
    Its trace is kept (``<probe>_long``), so that a replay judges it again."""
    from optdoctor.errors import OptdoctorError
    from optdoctor.remedies import NotApplicable

    steps = longer_config(diag.loaded, factor).config.probe.steps
    if not clock.fits(factor):
        v.longer = {"steps": steps, "reason": "not trained longer (time)"}
        return
    name = f"{v.probe}_long"
    try:
        trace = _run(v.patch, diag.loaded.config.seed, name, diag, base_setup, progress, clock, budget, rule.cause, longer=factor)
    except _OutOfBudget:
        v.longer = {"steps": steps, "reason": "not trained longer (time budget)"}
        return
    except (NotApplicable, OptdoctorError, ValueError, TypeError) as e:
        v.longer = {"steps": steps, "reason": f"could not be trained longer: {e}"}
        return
    trace.meta["verifies"] = {"rule": rule.id, "remedy": v.remedy, "longer": factor}
    diag.probes.traces[name] = trace
    judge_longer(v, rule, diag.symptoms, _after(trace, diag.probes), steps, name)


def judge_longer(v, rule: Rule, before: dict[str, float], after: dict[str, float], steps: int, probe: str) -> None:
    """Record the longer run's outcome on ``v`` (``fixes`` against the baseline's symptoms
    ``before``); ``hold_longer`` acts on it."""
    v.longer = {"steps": steps, "probe": probe, "after": compared(after, v.metric),
                "fixed": fixes(v, rule, after, _reference(before, rule.verify)),
                "still_fires": holds(rule, after)}


def hold_longer(v) -> None:
    """A fix must still fix the run when trained longer (``probe.verify.longer``): one that does
    not is demoted to "better" (``improved``), never recommended."""
    if v.helped and v.longer and v.longer.get("fixed") is False:
        v.helped, v.improved = False, True


def hold_on_seeds(v) -> None:
    """A fix must hold on every seed it was tried on: one that fixed the run on the first seed but
    not on an extra one is demoted to "better" (``improved``), with the count in ``seeds_note``.
    On the fault benchmark's dev split at 8678603, every one of the 13 remedies judged fixed on
    the first seed but not on both extra seeds failed the benchmark's plain-loop check (3 seeds,
    twice the steps), and no remedy the plain loop confirmed was among them (VERIFY.md)."""
    if v.helped and v.seeds and v.seeds.get("of") and v.seeds["fixed"] < v.seeds["of"]:
        v.helped, v.improved = False, True
        v.seeds_note = f"fixed on the first seed, but on {v.seeds['fixed']}/{v.seeds['of']} more seeds only"


def attempts(diag: Diagnosis) -> dict[str, list[dict]]:
    """What was tried per rule, without what was measured: saved beside the traces."""
    keep = ("remedy", "patch", "applicable", "reason", "note", "probe", "seeds", "seeds_note", "longer", "combines")  # extra seeds' probes are not saved: their outcome is
    return {f.rule: [{k: v.get(k) for k in keep} for v in f.verification] for f in diag.findings if f.verification}


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
                             metric=rule.verify, before=compared(diag.symptoms, rule.verify), probe=a.get("probe"),
                             seeds=a.get("seeds"), seeds_note=a.get("seeds_note") or "", note=a.get("note") or "",
                             longer=a.get("longer"), combines=list(a.get("combines") or []))
            trace = diag.probes.traces.get(v.probe) if v.probe else None
            if v.applicable and trace is None:
                v.applicable, v.reason = False, "its verification probe was not saved"
            if v.applicable:
                judge(v, f, rule, diag.symptoms, _after(trace, diag.probes), _reference(diag.symptoms, rule.verify))
                hold_on_seeds(v)
                long_trace = diag.probes.traces.get((v.longer or {}).get("probe") or "")
                if v.helped and long_trace is not None:
                    judge_longer(v, rule, diag.symptoms, _after(long_trace, diag.probes), v.longer["steps"], v.longer["probe"])
                hold_longer(v)
                base_step = diag.probes.baseline.meta.get("step_seconds") if "baseline" in diag.probes.traces else None
                if trace.meta.get("step_seconds") and base_step:
                    v.cost = trace.meta["step_seconds"] / base_step
                v.interventions = {k: trace.meta[k] for k in ("negative_curvature", "perturb_gd") if trace.meta.get(k)}
            results.append(v)
        if results:
            conclude(f, results)
    _rerank(diag)


def _after(trace, probes: ProbeSet) -> dict[str, float]:
    return extract(ProbeSet({"baseline": trace}, dict(trace.meta.get("data_stats", probes.data_stats))))


def _reference(symptoms: dict[str, float], metric: str = "loss.final") -> float | None:
    """The loss a remedied run must end below, in the compared metric's units: the lower of the
    initial and the chance loss (for ``loss.final_over_chance``, the initial loss over chance
    and 1)."""
    if metric == "loss.final_over_chance":
        refs = [symptoms["loss.init_over_chance"]] if "loss.init_over_chance" in symptoms else []
        return min(refs + [1.0])
    refs = [symptoms[k] for k in ("loss.initial", "loss.chance") if k in symptoms]
    return min(refs) if refs else None


def judge(v, f: Finding, rule: Rule, before: dict[str, float], after: dict[str, float], reference: float | None) -> None:
    """What one tried remedy changed: the compared symptom, whether the rule still fires, and
    the finding's evidence before -> after."""
    v.after = compared(after, v.metric)
    v.after_train_mode = after.get(v.metric) if in_eval_mode(after, v.metric) else None
    if v.before is not None and v.after is not None:
        v.gain = gain(v.before, v.after, reference)
    v.still_fires = holds(rule, after)
    better = v.gain is not None and v.gain >= VERIFY_MIN_GAIN
    trained = trains(v.after, reference)
    v.helped = better and v.still_fires is not True and trained
    v.improved = better and (v.still_fires is True or not trained)
    v.symptoms = {n: [before[n], after[n]] for n in f.evidence if n in after and n in before}


def recommend(results: list) -> tuple[object | None, str]:
    """The remedy to use, and why: among those that fixed the run (on every extra seed tried:
    ``hold_on_seeds``), the cheapest per step whose loss is within ``RECOMMEND_LOSS_SLACK`` of the
    best loss reached, a single change before a combination of two (which is picked only when no
    single fix comes that near). Returns (None, "") when none fixed it."""
    pool = [v for v in results if v.helped and v.after is not None]
    if not pool:
        return None, ""
    best = min(v.after for v in pool)
    near = [v for v in pool if v.after <= RECOMMEND_LOSS_SLACK * best or v.after - best < 1e-12]
    # one change before two: a combination is recommended only when no single fix comes near its loss
    near = [v for v in near if not v.combines] or near
    pick = min(near, key=lambda v: (v.cost or 1.0, v.after))
    why = f"loss {pick.after:.3g}"
    if pick.cost:
        why += f" at {pick.cost:.2g}x the baseline's time per step"
    if pick.seeds:
        why += f", fixed on {pick.seeds['fixed']}/{pick.seeds['of']} more seeds"
    others = [v for v in pool if v is not pick]
    lower = [v for v in others if v.after < pick.after]
    if lower:
        o = min(lower, key=lambda v: v.after)
        why += (f"; {first_clause(o.remedy, 60, STOPS)} reached {o.after:.3g} but costs {o.cost or 1:.2g}x per step"
                if (o.cost or 1) > (pick.cost or 1) else f"; {first_clause(o.remedy, 60, STOPS)} reached {o.after:.3g}")
    return pick, why


def conclude(f: Finding, results: list) -> None:
    """Rank the tried remedies (best first), recommend one, and move the finding's confidence."""
    results.sort(key=lambda v: (not v.applicable, -(v.gain if v.gain is not None else -9e9)))
    pick, why = recommend(results)
    if pick is not None:
        pick.recommended, pick.why = True, why
    f.verification = [v.as_dict() for v in results]
    tried = [v for v in results if v.applicable]
    if any(v.helped for v in tried):
        f.confirmed = True
        f.confidence = round(min(0.99, f.confidence + CONFIRM_BONUS), 3)
    elif tried and not any(v.improved for v in tried):
        f.confirmed = False
        f.confidence = round(max(0.05, f.confidence - REFUTE_PENALTY), 3)
