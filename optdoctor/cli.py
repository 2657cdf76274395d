"""Command line. Parses flags, calls plain modules, maps OptdoctorError to exit codes
(CONTRACT.md section 3). Nothing here imports torch: the heavy modules are imported inside the
commands that need them, so ``optdoctor --help`` and ``optdoctor rules ...`` stay fast.

Every command runs inside ``_Guarded.invoke``: an OptdoctorError that escapes a command exits
with its code, and any other exception is a bug in optdoctor (exit 4, never 1: CI must tell a
crash from findings)."""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
import traceback
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional

import typer
from typer.core import TyperGroup

from optdoctor.errors import OptdoctorError, ProbeError, UsageError
from optdoctor.report import REPORTERS

try:  # recent typer vendors click: its bad-usage errors are typer._click's, not click's
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

INTERNAL_ERROR = 4
REPORT_REQUEST = "this is a bug in optdoctor; please report it with the traceback above"


class _Guarded(TyperGroup):
    """The one place where exceptions become exit codes, for every command and subcommand."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, ClickException, KeyboardInterrupt, SystemExit):  # click's own exits
            raise
        except OptdoctorError as e:
            _fail(e)
        except Exception:
            _internal_error()


def _internal_error() -> None:
    traceback.print_exc(file=sys.stderr)
    from optdoctor import __version__

    _err(f"optdoctor: internal error (optdoctor {__version__}, Python {platform.python_version()}): {REPORT_REQUEST}")
    raise typer.Exit(INTERNAL_ERROR)


app = typer.Typer(
    name="optdoctor",
    cls=_Guarded,
    help="Tells you why your PyTorch training fails and what to change.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
rules_app = typer.Typer(help="List, explain, validate and test rules.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")


Format = Enum("Format", {name: name for name in sorted(REPORTERS)}, type=str)  # --format: every registered reporter


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
        _err(f"optdoctor: the probe could not run: {e.message}" + (f"; try {e.hint}" if e.hint else ""))
        if e.detail:
            _err(e.detail)
    else:
        _err(f"optdoctor: {e}")
    raise typer.Exit(e.exit_code)


def _color() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


class _ProgressLine:
    """``probing baseline   120/200  ETA 8.0 s  (all: ~21 s)`` on stderr: the probe's ETA from its
    own pace; the whole plan's when a time budget planned it (``total``, set by run_diagnosis)."""

    def __init__(self, clock=None):
        import time

        self.clock = clock or time.perf_counter
        self.total = None  # () -> seconds the plan still needs, or None
        self.last = ""
        self._probe: tuple[str, float] | None = None  # (name, time of its first step)

    def __call__(self, probe: str, step: int, steps: int) -> None:
        now = self.clock()
        if self._probe is None or self._probe[0] != probe or step <= 1:
            self._probe = (probe, now)
        if step % max(1, steps // 20) and step != steps:
            return
        line = f"\r  probing {probe:<10} {step:>5}/{steps}"
        if step > 1:
            eta = (now - self._probe[1]) / (step - 1) * (steps - step)
            line += f"  ETA {_seconds(eta)}"
        total = self.total() if self.total is not None else None
        if total is not None:
            line += f"  (all: ~{_seconds(total)})"
        if line != self.last:
            sys.stderr.write(line.ljust(len(self.last)))
            sys.stderr.flush()
            self.last = line

    def done(self) -> None:
        if self.last:
            sys.stderr.write("\r" + " " * len(self.last) + "\r")
            sys.stderr.flush()


def _seconds(x: float) -> str:
    if x < 10:
        return f"{x:.1f} s"
    return f"{x:.0f} s" if x < 100 else f"{int(x // 60)} min {x % 60:02.0f} s"


def _progress():
    """A progress line on stderr, only when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None, lambda: None
    line = _ProgressLine()
    return line, line.done


# Rule selection options shared by `diagnose` and `replay` (one definition: settings.resolve_rules
# reads them the same way for both).
FAIL_ON = typer.Option(None, "--fail-on", help="exit 1 when a finding is at or above this severity [default: error, or the settings file's]")
SELECT = typer.Option([], "--select", help="only these rule ids, id prefixes (OD1) or names; replaces the settings file's selection")
EXTEND_SELECT = typer.Option([], "--extend-select", help="add these to the selection")
IGNORE = typer.Option([], "--ignore", help="skip these rule ids, id prefixes or names")
PARAM = typer.Option([], "--param", metavar="ID.PARAM=VALUE", help="override a rule parameter, e.g. OD101.ratio_max=1e-3")
RULES = typer.Option([], "--rules", help="rule files or folders to use instead of the shipped pack")


@app.command()
def diagnose(
    config: Path = typer.Argument(..., help="probe config (YAML); it imports your model/data code"),
    format: Format = typer.Option(Format("text"), "--format", "-f", help="report format on stdout (or in a plain --output FILE)"),
    output: List[str] = typer.Option([], "--output", "-o", metavar="[FORMAT=]FILE",
                                     help="write a report to FILE (--format's format) or FORMAT=FILE; repeat for several formats from one run"),
    fail_on: Optional[FailOn] = FAIL_ON,
    select: List[str] = SELECT,
    extend_select: List[str] = EXTEND_SELECT,
    ignore: List[str] = IGNORE,
    param: List[str] = PARAM,
    rules: List[Path] = RULES,
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="override probe.steps"),
    seed: Optional[int] = typer.Option(None, "--seed", help="override seed"),
    check: bool = typer.Option(False, "--check", help="CI preset: one CPU thread, no progress output, probes capped at --max-steps; stable report bytes"),
    max_steps: int = typer.Option(200, "--max-steps", min=1, help="with --check: cap on every probe's steps"),
    budget: Optional[str] = typer.Option(None, "--budget", metavar="DURATION",
                                         help="time budget for the whole run, e.g. 30s, 2m, 1m30s, 90 (seconds); overrides probe.budget. "
                                              "Probes are sized from a timed calibration, so results depend on the machine's speed; "
                                              "with --check the step cap applies first and a config's probe.budget is ignored"),
    verify: bool = typer.Option(False, "--verify", help="try the patched remedies of the top findings in extra probes and report what each changed"),
    tensorboard: Optional[Path] = typer.Option(None, "--tensorboard", help="write TensorBoard logs (one run per probe) under this folder"),
    save_trace: Optional[Path] = typer.Option(None, "--save-trace", help="save the probes' traces in this folder (re-diagnose with `optdoctor replay`)"),
) -> None:
    """Run short probe trainings of CONFIG and diagnose what goes wrong."""
    from optdoctor.config import load_config
    from optdoctor.probes.budget import process_start
    from optdoctor.settings import resolve_rules

    started = process_start()  # the budget counts from the process's start (interpreter and imports included)
    verify_started = time.perf_counter()  # --verify's time limit is relative to the diagnosis from here (torch import included)
    try:
        seconds = _parse_budget_option(budget)
        outputs = _parse_outputs(output, format.value)
        loaded = load_config(config)
        chosen = resolve_rules(loaded.base_dir, cli_rules=rules, cli_select=select, cli_extend_select=extend_select,
                               cli_ignore=ignore, cli_params=param, cli_fail_on=fail_on.value if fail_on else None)
        loaded = _override(loaded, steps=steps, seed=seed, check=check, max_steps=max_steps, verify=verify, budget=seconds)
        from optdoctor.diagnose import run_diagnosis

        timer = None
        if loaded.config.probe.budget is not None:  # counted from the process's start (imports included)
            from optdoctor.probes.budget import Budget

            timer = Budget(loaded.config.probe.budget, start=started, clock=time.perf_counter)
        _QUICK_EXIT["on"] = timer is not None
        progress, done = (None, lambda: None) if check else _progress()
        try:
            diag = run_diagnosis(loaded, chosen.selection, rules=chosen.rules, progress=progress, budget=timer,
                                 started=verify_started)
        finally:
            done()
    except OptdoctorError as e:
        _fail(e)
    except KeyboardInterrupt:
        _err("optdoctor: interrupted before anything was measured")
        raise typer.Exit(130)
    diag.extra["rules"] = chosen.rules
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 alone prints and writes; same exit code
        from optdoctor.report import exit_code

        raise typer.Exit(exit_code(diag.findings, chosen.fail_on))
    try:
        if save_trace:
            from optdoctor.diagnose import save_traces

            save_traces(diag, save_trace)
        code = _emit(diag, outputs, chosen.fail_on, tensorboard or _config_tensorboard(loaded))
    except OSError as e:  # a full disk, a read-only folder: the user's to fix, not a bug
        _err(f"optdoctor: cannot write {e.filename or 'the output'}: {e.strerror or e}")
        raise typer.Exit(2)
    if diag.status == "interrupted":
        _err("optdoctor: interrupted; the report covers what was measured so far")
        raise typer.Exit(130)
    raise typer.Exit(code)


def _config_tensorboard(loaded) -> Path | None:
    tb = loaded.config.probe.tensorboard
    return Path(loaded.base_dir) / tb if tb else None


def _parse_budget_option(text: str | None) -> float | None:
    if text is None:
        return None
    from optdoctor.probes.budget import parse_budget

    try:
        return parse_budget(text)
    except ValueError as e:
        raise UsageError(f"--budget {text}: {e}") from None


def _override(loaded, *, steps: int | None, seed: int | None, check: bool, max_steps: int, verify: bool = False,
              budget: float | None = None):
    """Command-line overrides of the config (a copy: the file stays the source of truth)."""
    if steps is None and seed is None and not check and not verify and budget is None:
        return loaded
    cfg = loaded.config.model_copy(deep=True)
    if budget is not None:
        cfg.probe.budget = budget
    elif check:  # the CI preset's reports must not depend on the machine's speed
        cfg.probe.budget = None
    if verify:
        cfg.probe.verify.enabled = True
    if steps is not None:
        cfg.probe.steps = steps
    if seed is not None:
        cfg.seed = seed
    if check:  # deterministic and bounded: one thread, capped steps
        cfg.probe.threads = 1
        cfg.probe.steps = min(cfg.probe.steps, max_steps)
        if cfg.probe.variants.steps:
            cfg.probe.variants.steps = min(cfg.probe.variants.steps, max_steps)
    return loaded.model_copy(update={"config": cfg})


def _parse_outputs(specs: list[str], default_format: str) -> list[tuple[str, Path | None]]:
    """[(format, file or None for stdout)]: stdout carries --format unless a plain --output FILE
    takes it."""
    formats = set(REPORTERS)
    outs: list[tuple[str, Path | None]] = []
    plain = False
    for spec in specs:
        fmt, sep, file = spec.partition("=")
        if sep and fmt in formats:
            outs.append((fmt, Path(file)))
        elif sep and "/" not in fmt and "." not in fmt:
            raise UsageError(f"--output {spec}: unknown format {fmt!r}; use one of {', '.join(sorted(formats))}")
        else:
            outs.append((default_format, Path(spec)))
            plain = True
    if not plain:
        outs.insert(0, (default_format, None))
    return outs


def _emit(diag, outputs: list[tuple[str, Path | None]], fail_on: str, tensorboard: Path | None = None) -> int:
    """Every output of a diagnosis: the reports (stdout or files) and the TensorBoard logs."""
    from optdoctor.report import exit_code

    if tensorboard is not None:
        from optdoctor.report.tensorboard import write_diagnosis

        write_diagnosis(diag, tensorboard)
        _err(f"optdoctor: TensorBoard logs in {tensorboard} (open with: tensorboard --logdir {tensorboard})")
    for fmt, path in outputs:
        if fmt == "text":
            tty = path is None and sys.stdout.isatty()
            width = max(60, min(shutil.get_terminal_size().columns, 120)) if tty else 100
            text = REPORTERS["text"](diag, fail_on, color=_color() and path is None, width=width)
        else:
            text = REPORTERS[fmt](diag, fail_on)
        if path is None:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    return exit_code(diag.findings, fail_on)


@app.command()
def replay(
    traces: Path = typer.Argument(..., help="folder written by `diagnose --save-trace`"),
    format: Format = typer.Option(Format("text"), "--format", "-f"),
    fail_on: Optional[FailOn] = FAIL_ON,
    select: List[str] = SELECT,
    extend_select: List[str] = EXTEND_SELECT,
    ignore: List[str] = IGNORE,
    param: List[str] = PARAM,
    rules: List[Path] = RULES,
) -> None:
    """Re-diagnose saved traces without probing again (e.g. after editing rules), with the
    settings file of the config they came from and the same flags as `diagnose`."""
    from optdoctor.diagnose import replay_diagnosis, saved_config
    from optdoctor.settings import resolve_rules

    try:
        if not (traces / "baseline.npz").exists():
            raise UsageError(f"{traces}: no baseline.npz here; expected a folder written by `optdoctor diagnose --save-trace`")
        loaded = saved_config(traces)
        start = loaded.base_dir if loaded is not None and Path(loaded.base_dir).is_dir() else traces
        chosen = resolve_rules(start, cli_rules=rules, cli_select=select, cli_extend_select=extend_select,
                               cli_ignore=ignore, cli_params=param, cli_fail_on=fail_on.value if fail_on else None)
        diag = replay_diagnosis(traces, chosen.rules, chosen.selection, loaded)
    except OptdoctorError as e:
        _fail(e)
    diag.extra["rules"] = chosen.rules
    raise typer.Exit(_emit(diag, [(format.value, None)], chosen.fail_on))


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
            from optdoctor.errors import did_you_mean

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


# Set by a diagnosis under a time budget: the process then ends with os._exit once its output is
# flushed, skipping Python's teardown of torch's modules (1-2.3 s here, measured; a budget counts
# the whole process).
_QUICK_EXIT = {"on": False}


def main() -> None:
    try:
        app()
    except SystemExit as e:
        if not _QUICK_EXIT["on"]:
            raise
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
