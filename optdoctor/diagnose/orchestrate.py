"""The whole path of ``optdoctor diagnose``: config -> probes -> symptoms -> rules -> Diagnosis,
and of ``optdoctor replay``: saved probes -> symptoms -> rules -> the same Diagnosis.

Imports torch (through probes/) only when ``run_diagnosis`` is called.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from optdoctor.config.schema import LoadedConfig
from optdoctor.diagnose.gate import plateau_gate
from optdoctor.diagnose.model import Diagnosis
from optdoctor.diagnose.summary import summarize
from optdoctor.engine.evaluate import Selection, evaluate
from optdoctor.engine.rules import Rule, load_rules
from optdoctor.findings import Finding, RuleOutcome
from optdoctor.symptoms import extract
from optdoctor.trace import ProbeSet

CONFIG_FILE = "config.json"  # beside saved traces: the config as diagnosed (replay's name, locations, settings)
VERIFY_FILE = "verification.json"  # ... and the remedies --verify tried (which probe tried which)


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
    """Findings, every rule's outcome and the final symptoms; with ``loaded``, each finding's
    blamed key located in the config file."""
    snaps = snapshots(probes)
    findings, outcomes = evaluate(rules, snaps, selection)
    if loaded is not None:
        for f in findings:
            if f.blame:
                pos = loaded.line_of(f.blame)
                f.location = {"file": loaded.path, "line": pos[0] if pos else 1, "col": pos[1] if pos else 1}
    return findings, outcomes, snaps[-1][1]


def run_diagnosis(loaded: LoadedConfig, selection: Selection | None = None, *, rules: list[Rule] | None = None,
                  progress: Callable[[str, int, int], None] | None = None, budget=None,
                  started: float | None = None) -> Diagnosis:
    """Probe, extract, evaluate (then vote across seeds and verify remedies, as configured).
    On Ctrl-C, diagnoses what was measured so far (status "interrupted") instead of losing it.
    ``rules``: default the shipped pack; the command loads them before (a broken rule pack
    fails fast, exit 2, before anything is probed). ``started``: when the command began
    (``time.perf_counter()``), for --verify's time limit; default: when this call began.

    With ``probe.budget`` (or a ``budget``: probes/budget.py ``Budget``, e.g. counting from the
    process's start), the probes are planned from a timed calibration to fit it and stopped at
    its hard limit; what was cut is in ``extra["budget"]``."""
    from optdoctor.diagnose.seeds import across_seeds
    from optdoctor.diagnose.verify import verify_findings
    from optdoctor.probes.parallel import choose
    from optdoctor.probes.runner import ProbeInterrupted, run_probes

    run_probes = choose(run_probes)  # under torchrun: whole probes split across ranks
    from optdoctor.probes.setup import prepare

    rules = load_rules() if rules is None else rules
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
    followups = plateau_gate(rules, selection)
    status = "completed"
    try:
        probes = run_probes(setup, progress, followups=followups, budget=budget)
    except ProbeInterrupted as e:
        probes, status = e.probes, "interrupted"
        if "baseline" not in probes.traces or not probes.baseline.has("loss.train"):
            raise KeyboardInterrupt from None
    findings, outcomes, symptoms = evaluate_probes(probes, rules, selection, loaded)
    if status == "completed" and loaded.config.probe.seeds > 1:
        try:
            findings, outcomes = across_seeds(setup, probes, (findings, outcomes, symptoms),
                                              lambda extra: evaluate_probes(extra, rules, selection, loaded), followups, progress,
                                              budget)
        except ProbeInterrupted:
            status = "interrupted"  # keep the first seed's diagnosis
    diag = Diagnosis(loaded.name, loaded.path, findings, outcomes, symptoms, probes, status, 0.0, loaded)
    if status == "completed" and loaded.config.probe.verify.enabled:
        try:
            verify_findings(diag, rules, setup, progress, budget, started=min(t0, started or t0))
        except (ProbeInterrupted, KeyboardInterrupt):  # keep the diagnosis and what was verified
            diag.status = "interrupted"
    diag.summary = summarize(diag.probes, diag.findings)
    diag.seconds = time.perf_counter() - t0
    if budget is not None:
        diag.extra["budget"] = budget.summary()
    return diag


def save_traces(diag: Diagnosis, folder: str | Path) -> None:
    """The probes' traces, the config as diagnosed and the remedies tried, for ``replay``."""
    from optdoctor.diagnose.verify import attempts

    diag.probes.save(folder)
    if diag.loaded is not None:
        (Path(folder) / CONFIG_FILE).write_text(diag.loaded.model_dump_json(indent=1), encoding="utf-8")
    tried = attempts(diag)
    if tried:
        (Path(folder) / VERIFY_FILE).write_text(json.dumps(tried, indent=1, sort_keys=True), encoding="utf-8")
    else:  # not a previous run's
        (Path(folder) / VERIFY_FILE).unlink(missing_ok=True)


def saved_config(folder: str | Path) -> LoadedConfig | None:
    """The config saved beside the traces; None for a folder saved without one."""
    from optdoctor.errors import UsageError

    f = Path(folder) / CONFIG_FILE
    if not f.exists():
        return None
    try:
        return LoadedConfig.model_validate_json(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        raise UsageError(f"{f}: not a config saved by `optdoctor diagnose --save-trace` ({str(e).splitlines()[0]})") from None


def replay_diagnosis(folder: str | Path, rules: list[Rule], selection: Selection | None = None,
                     loaded: LoadedConfig | None = None) -> Diagnosis:
    """The Diagnosis of saved traces, without probing: the same steps as ``run_diagnosis``
    after its probes ran (multi-seed voting; remedies judged again from their saved probes)."""
    from optdoctor.diagnose.seeds import seed_sets, vote
    from optdoctor.diagnose.verify import reverify

    probes = ProbeSet.load(folder)
    findings, outcomes, symptoms = evaluate_probes(probes, rules, selection, loaded)
    others = seed_sets(probes)
    if others and (loaded is None or len(others) == loaded.config.probe.seeds - 1):
        per_seed = [(findings, outcomes, symptoms)] + [evaluate_probes(p, rules, selection, loaded) for p in others]
        findings, outcomes = vote(per_seed, outcomes)
    name, path = (loaded.name, loaded.path) if loaded is not None else (Path(folder).name, str(folder))
    diag = Diagnosis(name, path, findings, outcomes, symptoms, probes, loaded=loaded)
    tried = Path(folder) / VERIFY_FILE
    if tried.exists():
        reverify(diag, rules, json.loads(tried.read_text(encoding="utf-8")))
    diag.summary = summarize(probes, diag.findings)
    return diag
