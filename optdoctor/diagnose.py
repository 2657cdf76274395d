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
from optdoctor.probes.trace import ProbeSet
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
                  progress: Callable[[str, int, int], None] | None = None, rules: list[Rule] | None = None) -> Diagnosis:
    """Probe, extract, evaluate. On Ctrl-C, diagnoses what was measured so far (status
    "interrupted") instead of losing it."""
    from optdoctor.probes.runner import ProbeInterrupted, run_probes
    from optdoctor.probes.setup import prepare

    if rules is None:
        rules = load_rules(rule_paths)  # before probing: a broken rule pack fails fast (exit 2)
    t0 = time.perf_counter()
    setup = prepare(loaded)
    status = "completed"
    try:
        probes = run_probes(setup, progress, followups=is_plateau)
    except ProbeInterrupted as e:
        probes, status = e.probes, "interrupted"
        if "baseline" not in probes.traces or not probes.baseline.has("loss.train"):
            raise KeyboardInterrupt from None
    findings, outcomes, symptoms = evaluate_probes(probes, rules, selection, loaded)
    return Diagnosis(loaded.name, loaded.path, findings, outcomes, symptoms, probes, status,
                     time.perf_counter() - t0, loaded)
