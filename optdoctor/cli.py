"""Command line. Parses flags, calls plain modules, maps OptdoctorError to exit codes
(CONTRACT.md section 3). Nothing here imports torch: the heavy modules are imported inside the
commands that need them, so ``optdoctor --help`` and ``optdoctor rules ...`` stay fast."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from optdoctor.errors import OptdoctorError, ProbeError, UsageError

app = typer.Typer(
    name="optdoctor",
    help="Tells you why your PyTorch training fails and what to change.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
rules_app = typer.Typer(help="List, explain, validate and test rules.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")


class Format(str, Enum):
    text = "text"
    json = "json"


class FailOn(str, Enum):
    error = "error"
    warning = "warning"
    info = "info"
    never = "never"


def _err(msg: str) -> None:
    sys.stderr.write(msg.rstrip("\n") + "\n")


def _fail(e: OptdoctorError) -> None:
    if isinstance(e, UsageError):
        for p in e.problems:
            _err(str(p))
        n = len(e.problems)
        _err(f"optdoctor: {n} problem{'s' * (n != 1)}; nothing was probed")
    elif isinstance(e, ProbeError):
        _err(f"optdoctor: the probe could not run: {e.message}")
        if e.detail:
            _err(e.detail)
    else:
        _err(f"optdoctor: {e}")
    raise typer.Exit(e.exit_code)


def _color() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def _progress():
    """A progress line on stderr, only when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None, lambda: None
    state = {"last": ""}

    def progress(probe: str, step: int, steps: int) -> None:
        if step % max(1, steps // 20) and step != steps:
            return
        line = f"\r  probing {probe:<10} {step:>5}/{steps}"
        if line != state["last"]:
            sys.stderr.write(line)
            sys.stderr.flush()
            state["last"] = line

    def done() -> None:
        if state["last"]:
            sys.stderr.write("\r" + " " * len(state["last"]) + "\r")
            sys.stderr.flush()

    return progress, done


@app.command()
def diagnose(
    config: Path = typer.Argument(..., help="probe config (YAML); it imports your model/data code"),
    format: Format = typer.Option(Format.text, "--format", "-f", help="report format on stdout"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write the report to this file instead of stdout"),
    fail_on: FailOn = typer.Option(FailOn.error, "--fail-on", help="exit 1 when a finding is at or above this severity"),
    select: List[str] = typer.Option([], "--select", help="only these rule ids or id prefixes (OD1, OD203)"),
    ignore: List[str] = typer.Option([], "--ignore", help="skip these rule ids or id prefixes"),
    rules: List[Path] = typer.Option([], "--rules", help="rule files or folders to use instead of the shipped pack"),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="override probe.steps"),
    seed: Optional[int] = typer.Option(None, "--seed", help="override seed"),
    save_trace: Optional[Path] = typer.Option(None, "--save-trace", help="save the probes' traces in this folder (re-diagnose with `optdoctor replay`)"),
) -> None:
    """Run short probe trainings of CONFIG and diagnose what goes wrong."""
    from optdoctor.config import load_config
    from optdoctor.engine.evaluate import Selection

    try:
        loaded = load_config(config)
        overrides = {}
        if steps is not None:
            overrides["steps"] = steps
        if overrides or seed is not None:
            cfg = loaded.config.model_copy(deep=True)
            if steps is not None:
                cfg.probe.steps = steps
            if seed is not None:
                cfg.seed = seed
            loaded = loaded.model_copy(update={"config": cfg})
        from optdoctor.diagnose import run_diagnosis

        progress, done = _progress()
        try:
            diag = run_diagnosis(loaded, Selection(select=select, ignore=ignore), [str(r) for r in rules] or None, progress)
        finally:
            done()
    except OptdoctorError as e:
        _fail(e)
    except KeyboardInterrupt:
        _err("optdoctor: interrupted before anything was measured")
        raise typer.Exit(130)
    if save_trace:
        diag.probes.save(save_trace)
    code = _emit(diag, format.value, output, fail_on.value)
    if diag.status == "interrupted":
        _err("optdoctor: interrupted; the report covers what was measured so far")
        raise typer.Exit(130)
    raise typer.Exit(code)


def _emit(diag, fmt: str, output: Path | None, fail_on: str) -> int:
    from optdoctor.report import REPORTERS, exit_code

    if fmt == "text":
        text = REPORTERS["text"](diag, fail_on, color=_color() and output is None)
    else:
        text = REPORTERS[fmt](diag, fail_on)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    return exit_code(diag.findings, fail_on)


@app.command()
def replay(
    traces: Path = typer.Argument(..., help="folder written by `diagnose --save-trace`"),
    format: Format = typer.Option(Format.text, "--format", "-f"),
    fail_on: FailOn = typer.Option(FailOn.error, "--fail-on"),
    select: List[str] = typer.Option([], "--select"),
    ignore: List[str] = typer.Option([], "--ignore"),
    rules: List[Path] = typer.Option([], "--rules"),
) -> None:
    """Re-diagnose saved traces without probing again (e.g. after editing rules)."""
    from optdoctor.diagnose import Diagnosis, evaluate_probes
    from optdoctor.engine.evaluate import Selection
    from optdoctor.engine.rules import load_rules
    from optdoctor.probes.trace import ProbeSet

    try:
        if not (traces / "baseline.npz").exists():
            raise UsageError(f"{traces}: no baseline.npz here; expected a folder written by `optdoctor diagnose --save-trace`")
        probes = ProbeSet.load(traces)
        rule_list = load_rules([str(r) for r in rules] or None)
        findings, outcomes, symptoms = evaluate_probes(probes, rule_list, Selection(select=select, ignore=ignore))
    except OptdoctorError as e:
        _fail(e)
    diag = Diagnosis(traces.name, str(traces), findings, outcomes, symptoms, probes)
    raise typer.Exit(_emit(diag, format.value, None, fail_on.value))


@app.command()
def schema() -> None:
    """Print the config's JSON Schema (for editor completion)."""
    import json

    from optdoctor.config.schema import ProbeConfig

    s = ProbeConfig.model_json_schema()
    s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    s["title"] = "optdoctor probe config"
    sys.stdout.write(json.dumps(s, indent=2) + "\n")


@app.command()
def symptoms() -> None:
    """List every symptom the rules can use, with its meaning."""
    from optdoctor.symptoms import SYMPTOMS

    for name in sorted(SYMPTOMS):
        d = SYMPTOMS[name]
        sys.stdout.write(f"{name:<32} {d.meaning}{f' [{d.unit}]' if d.unit else ''}\n")


@rules_app.command("list")
def rules_list(rules: List[Path] = typer.Option([], "--rules", help="rule files or folders (default: shipped)")) -> None:
    """List the rules: id, name, cause, severity."""
    from optdoctor.engine.rules import load_rules

    try:
        for r in load_rules([str(p) for p in rules] or None):
            sys.stdout.write(f"{r.id}  {r.name:<28} {r.cause:<20} {r.severity}\n")
    except OptdoctorError as e:
        _fail(e)


@rules_app.command("explain")
def rules_explain(rule_id: str = typer.Argument(..., help="rule id (OD101) or name"),
                  rules: List[Path] = typer.Option([], "--rules")) -> None:
    """Render a rule's documentation."""
    from optdoctor.engine.docs import explain
    from optdoctor.engine.rules import load_rules

    try:
        pack = load_rules([str(p) for p in rules] or None)
        match = [r for r in pack if r.id == rule_id.upper() or r.name == rule_id]
        if not match:
            from optdoctor.config.loader import did_you_mean

            hint = did_you_mean(rule_id.upper(), [r.id for r in pack]) or did_you_mean(rule_id, [r.name for r in pack])
            raise UsageError(f"no rule {rule_id!r}" + (f"; did you mean {hint!r}?" if hint else "; see `optdoctor rules list`"))
        sys.stdout.write(explain(match[0]))
    except OptdoctorError as e:
        _fail(e)


@rules_app.command("validate")
def rules_validate(files: List[Path] = typer.Argument(None, help="rule files or folders (default: the shipped pack)")) -> None:
    """Check rule files: schema, expressions, symptom names (safe on untrusted files)."""
    from optdoctor.engine.rules import load_rules

    try:
        pack = load_rules([str(f) for f in files] if files else None)
    except OptdoctorError as e:
        _fail(e)
    sys.stdout.write(f"{len(pack)} rule{'s' * (len(pack) != 1)} valid\n")


@rules_app.command("test")
def rules_test(files: List[Path] = typer.Argument(None, help="rule files or folders (default: the shipped pack)")) -> None:
    """Run every rule's own test cases (fires / near_miss / neighbour)."""
    from optdoctor.engine.rules import load_rules
    from optdoctor.engine.testing import run_rule_tests

    try:
        pack = load_rules([str(f) for f in files] if files else None)
    except OptdoctorError as e:
        _fail(e)
    results = run_rule_tests(pack)
    failed = [r for r in results if not r.ok]
    for r in failed:
        _err(f"FAIL {r.rule} {r.kind}[{r.index}]: {r.message}")
    sys.stdout.write(f"{len(results) - len(failed)} passed, {len(failed)} failed\n")
    raise typer.Exit(1 if failed else 0)


def main() -> None:
    app()
