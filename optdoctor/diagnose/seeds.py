"""Multi-seed voting (``probe.seeds: N > 1``): the whole probe set again per extra seed; a
finding is kept when it fires in a majority of seeds, with the spread of its evidence."""

from __future__ import annotations

import dataclasses

from optdoctor.findings import Finding, RuleOutcome
from optdoctor.trace import ProbeSet

# one seed's diagnosis: (findings, outcomes, symptoms)
SeedResult = tuple[list[Finding], list[RuleOutcome], dict[str, float]]


def vote(per_seed: list[SeedResult], outcomes: list[RuleOutcome]) -> tuple[list[Finding], list[RuleOutcome]]:
    """Pure: the first seed's findings (and ``outcomes``) kept or demoted by majority over
    ``per_seed`` (the first seed first); each kept finding carries ``seeds``:
    {"fired": k, "of": n, "spread": {symptom: [min, max]}}."""
    n = len(per_seed)
    fired: dict[str, list[Finding]] = {}
    for fs, _, _ in per_seed:
        for f in fs:
            fired.setdefault(f.rule, []).append(f)
    kept = []
    for fs in fired.values():
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


def across_seeds(setup, probes, first: SeedResult, evaluate_set, followups, progress=None,
                 budget=None) -> tuple[list[Finding], list[RuleOutcome]]:
    """Probe seeds seed+1, seed+2, ... (``evaluate_set``: ProbeSet -> SeedResult) and vote.
    The other seeds' traces join ``probes`` as "s<i>_<probe>", kind "seed" (``seed_of``: what
    the probe is within its own seed's set; ``seed_index``: i), e.g. for TensorBoard and replay."""
    from optdoctor.probes.runner import run_probes

    loaded = setup.loaded
    per_seed = [first]
    n = loaded.config.probe.seeds
    for i in range(1, n):
        cfg = loaded.config.model_copy(deep=True)
        cfg.seed = loaded.config.seed + i
        seed_setup = dataclasses.replace(setup, loaded=loaded.model_copy(update={"config": cfg}))
        if budget is not None and not budget.admit(f"seeds {cfg.seed}..{loaded.config.seed + n - 1} (whole probe sets)",
                                                   budget.plan.estimate * budget.speed):
            break  # the majority is taken over the seeds that ran
        extra = run_probes(seed_setup, progress, followups=followups, budget=budget)
        per_seed.append(evaluate_set(extra))
        for name, t in extra.traces.items():
            t.meta["seed_of"] = t.kind
            t.meta["kind"] = "seed"
            t.meta["seed_index"] = i
            probes.traces[f"s{i}_{name}"] = t
    return vote(per_seed, first[1])


def seed_sets(probes: ProbeSet) -> list[ProbeSet]:
    """The other seeds' probe sets inside ``probes`` (its kind "seed" traces, as
    ``across_seeds`` left them), each with its probes' own kinds back, by seed index."""
    groups: dict[int, dict] = {}
    for t in probes.of_kind("seed"):
        if "seed_index" in t.meta and "seed_of" in t.meta:
            own = dataclasses.replace(t, meta={**t.meta, "kind": t.meta["seed_of"]})
            groups.setdefault(int(t.meta["seed_index"]), {})[t.probe] = own
    out = []
    for i in sorted(groups):
        base = next((t for t in groups[i].values() if t.kind == "baseline"), None)
        stats = base.meta.get("data_stats", probes.data_stats) if base is not None else probes.data_stats
        out.append(ProbeSet(groups[i], dict(stats)))
    return out
