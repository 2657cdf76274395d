"""Project settings: ``[tool.optdoctor]`` in pyproject.toml, or a top-level optdoctor.toml.

    [tool.optdoctor]                      # in optdoctor.toml: the same keys, at the top level
    select = ["OD1", "OD4"]               # rule id prefixes or rule names; default: every rule
    extend-select = ["OD503"]             # added to select
    ignore = ["OD203"]                    # never run these
    fail-on = "warning"                   # error | warning | info | never (default: error)
    rules = ["ci/rules"]                  # extra rule files/folders, relative to this file,
                                          # loaded together with the shipped pack
    [tool.optdoctor.severity]
    OD101 = "warning"                     # rule id -> info | warning | error
    [tool.optdoctor.params.OD101]
    ratio_max = 1e-4                      # rule id -> param -> number

Discovery (like ruff): from the config's folder upwards, the first folder holding an
``optdoctor.toml``, or a ``pyproject.toml`` with a ``[tool.optdoctor]`` table, gives the
settings; in one folder optdoctor.toml wins over pyproject.toml. Only that one file is read
(no merging of several levels). A pyproject.toml without the table is passed by.

Precedence: command line beats file beats rule defaults. Rule selection follows ruff's layers:

- ``--select`` on the command line starts over: it replaces the file's ``select``,
  ``extend-select`` *and* ``ignore`` (``--select OD203`` shows OD203 even if the file ignores
  it). Without ``--select`` the file's selection stands.
- ``--extend-select`` and ``--ignore`` add to whatever selection stands.
- An ignore always wins over a select within the merged selection (``select = ["OD1"]``,
  ``ignore = ["OD101"]`` runs OD1xx but OD101).
- ``severity``: the file's beats the rule file's default (there is no command-line flag).
- ``params``: per rule and param, the command line's value beats the file's, which beats the
  rule file's default.
- ``fail-on``: ``--fail-on`` if given, else the file's, else ``error``.
- ``rules``: ``--rules`` replaces the rule pack (shipped and file's); else the file's paths
  are added to the shipped pack.

No torch here (``optdoctor rules ...`` stays fast).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from optdoctor.engine.evaluate import Selection
from optdoctor.errors import Problem, UsageError, did_you_mean
from optdoctor.findings import SEVERITIES

KEYS = ("select", "extend-select", "ignore", "severity", "params", "fail-on", "rules")
FAIL_ON = ("error", "warning", "info", "never")
ParamOverride = tuple[str, str, float]

_RULE_ID = re.compile(r"^OD[0-9]{3}$")
_PARAM = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass
class Settings:
    """One settings file, validated. ``file`` is None when none was found (all defaults)."""

    file: str | None = None  # as shown in messages: relative to the working directory
    select: list[str] | None = None  # None: not set (every rule)
    extend_select: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    severity: dict[str, str] = field(default_factory=dict)
    params: dict[str, dict[str, float]] = field(default_factory=dict)
    fail_on: str | None = None
    rules: list[str] = field(default_factory=list)  # paths, already resolved against the file's folder
    prefix: str = ""  # "tool.optdoctor." in a pyproject.toml
    text: str = field(default="", repr=False)

    def problem(self, key: str, message: str, suggestion: str | None = None, item: str | None = None) -> Problem:
        """A problem at ``key`` (dotted, below the optdoctor table), located in the file."""
        parts = (self.prefix + key).split(".") if key else self.prefix.rstrip(".").split(".")
        line, col = locate(self.text, [p for p in parts if p], item) or (None, None)
        return Problem(message, key=self.prefix + key, file=self.file, line=line, col=col, suggestion=suggestion)


# --- discovery ---------------------------------------------------------------------------
def _shown(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def _has_table(pyproject: Path) -> bool:
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return False
    except (tomllib.TOMLDecodeError, RecursionError):
        # someone else's broken pyproject is not our business, unless it meant to configure us
        return "optdoctor" in pyproject.read_text(encoding="utf-8", errors="replace")
    return isinstance(data.get("tool"), dict) and "optdoctor" in data["tool"]


def find_settings(start: str | Path) -> Path | None:
    """The settings file that applies to ``start`` (a folder, or a file: its folder)."""
    here = Path(start).resolve()
    if not here.is_dir():
        here = here.parent
    for folder in (here, *here.parents):
        own = folder / "optdoctor.toml"
        if own.is_file():
            return own
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and _has_table(pyproject):
            return pyproject
    return None


def discover_settings(start: str | Path) -> Settings:
    found = find_settings(start)
    return load_settings(found) if found else Settings()


# --- loading and validation --------------------------------------------------------------
def load_settings(path: str | Path) -> Settings:
    """Read and validate one settings file; every problem at once, located (UsageError, exit 2)."""
    path = Path(path)
    shown = _shown(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError([Problem(f"cannot read the settings file: {getattr(e, 'strerror', None) or e}", file=shown)]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e)) or "invalid TOML"
        raise UsageError([Problem(f"invalid TOML: {msg}", file=shown, line=int(m.group(1)) if m else None,
                                  col=int(m.group(2)) if m else None)]) from None
    except RecursionError:  # tomllib recurses per nested array or inline table
        raise UsageError([Problem("invalid TOML: nested too deeply", file=shown)]) from None
    s = Settings(file=shown, text=text)
    if path.name == "pyproject.toml":
        s.prefix = "tool.optdoctor."
        table = (data.get("tool") or {}).get("optdoctor", {})
    else:
        table = data
    problems: list[Problem] = []
    if not isinstance(table, dict):
        raise UsageError([s.problem("", "must be a table of settings")])
    for k, v in table.items():
        if k not in KEYS:
            hint = did_you_mean(k, KEYS)
            if k == "tool" and not s.prefix:
                hint = "use the keys at the top level of optdoctor.toml (no [tool.optdoctor] table there)"
            problems.append(s.problem(k, f"unknown key {k!r}", hint))
            continue
        _read_key(s, k, v, path.parent, problems)
    if problems:
        raise UsageError(sorted(problems, key=lambda p: (p.line or 0, p.col or 0)))
    return s


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)


def _read_key(s: Settings, k: str, v: Any, folder: Path, problems: list[Problem]) -> None:
    if k in ("select", "extend-select", "ignore", "rules"):
        if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
            problems.append(s.problem(k, "must be a list of non-empty strings" +
                                      (" (rule id prefixes such as \"OD1\" or rule names)" if k != "rules" else " (paths)")))
            return
        if k == "select" and not v:
            problems.append(s.problem(k, "an empty select would run no rule; leave select out to run every rule"))
            return
        if k == "rules":
            for item in v:
                p = (folder / item)
                if not p.exists():
                    problems.append(s.problem(k, f"no such rule file or folder: {item!r} (relative to {s.file})", item=item))
                s.rules.append(str(p))
        else:
            setattr(s, k.replace("-", "_"), [x.strip() for x in v])
    elif k == "fail-on":
        if v not in FAIL_ON:
            problems.append(s.problem(k, f"must be one of {', '.join(FAIL_ON)}, got {v!r}", did_you_mean(str(v), FAIL_ON)))
        else:
            s.fail_on = v
    elif k == "severity":
        if not isinstance(v, dict):
            problems.append(s.problem(k, "must be a table: rule id = \"info\" | \"warning\" | \"error\""))
            return
        for rid, sev in v.items():
            if sev not in SEVERITIES:
                problems.append(s.problem(f"severity.{rid}", f"must be one of {', '.join(SEVERITIES)}, got {sev!r}",
                                          did_you_mean(str(sev), SEVERITIES)))
            else:
                s.severity[rid] = sev
    elif k == "params":
        if not isinstance(v, dict):
            problems.append(s.problem(k, "must be a table: [params.OD101] param = number"))
            return
        for rid, table in v.items():
            if not isinstance(table, dict):
                problems.append(s.problem(f"params.{rid}", "must be a table of param = number"))
                continue
            for name, x in table.items():
                num = _number(x)
                if num is None:
                    problems.append(s.problem(f"params.{rid}.{name}", f"must be a number, got {x!r}"))
                else:
                    s.params.setdefault(rid, {})[name] = num


# --- locating a key in TOML text (tomllib gives no positions: a plain search is enough) ----
_KEY_PART = r'(?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')'
_HEADER = re.compile(rf"^\s*\[\[?\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*\]\]?")
_ASSIGN = re.compile(rf"^\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=")


def _parts(dotted: str) -> list[str]:
    return [p.strip("\"'") for p in re.findall(_KEY_PART, dotted)]


def _common(a: list[str], b: list[str]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def locate(text: str, path: list[str], item: str | None = None) -> tuple[int, int] | None:
    """(line, col) of the deepest part of the dotted key ``path`` defined in ``text``: a table
    header, a (dotted) key, or a key inside an inline table on that line; with ``item``, the
    first quoted occurrence of that string from the key's line on (a list element)."""
    lines = text.splitlines()
    best: tuple[int, int, int] | None = None  # (depth, line, col)
    table: list[str] = []

    def consider(depth: int, line: int, col: int) -> None:
        nonlocal best
        if best is None or depth > best[0]:
            best = (depth, line, col)

    for i, raw in enumerate(lines, 1):
        m = _HEADER.match(raw)
        if m:
            table = _parts(m.group(1))
            n = _common(table, path)
            if n == min(len(table), len(path)):  # this table, an ancestor, or a table inside it
                consider(n, i, m.start(1) + 1)
            continue
        m = _ASSIGN.match(raw)
        if not m:
            continue
        full = table + _parts(m.group(1))
        n = _common(full, path)
        if n < min(len(full), len(path)):
            continue
        consider(n, i, m.start(1) + 1)
        if n < len(full):
            continue
        rest, after = path[len(full):], raw[m.end():]
        depth, offset = len(full), m.end()
        for part in rest:  # inline tables: key = { part = ... }
            k = re.search(rf'(?:^|[{{,\s])("{re.escape(part)}"|\'{re.escape(part)}\'|{re.escape(part)})\s*=', after)
            if not k:
                break
            depth += 1
            consider(depth, i, offset + k.start(1) + 1)
            offset += k.end()
            after = after[k.end():]
    if best is None:
        return None
    if item is not None:
        for j in range(best[1] - 1, len(lines)):
            for q in ('"', "'"):
                c = lines[j].find(f"{q}{item}{q}")
                if c >= 0:
                    return j + 1, c + 1
    return best[1], best[2]


# --- command line ------------------------------------------------------------------------
def parse_param_override(s: str) -> ParamOverride:
    """``OD101.ratio_max=1e-3`` -> ("OD101", "ratio_max", 0.001); UsageError for a bad form."""
    form = "expected RULE.PARAM=NUMBER, e.g. OD101.ratio_max=1e-3"

    def bad(message: str, suggestion: str | None = None) -> UsageError:
        return UsageError([Problem(f"{s!r}: {message}", key="--param", suggestion=suggestion)])

    if "=" not in s:
        raise bad(form)
    target, _, value = (x.strip() for x in s.partition("="))
    rid, dot, param = target.partition(".")
    if not dot or not rid or not param:
        raise bad(form)
    if not _RULE_ID.match(rid) and _RULE_ID.match(rid.upper()):
        raise bad("rule ids are upper case", f"{rid.upper()}.{param}={value}")
    if not re.match(r"^[A-Za-z][A-Za-z0-9_-]*$", rid):
        raise bad(f"{rid!r} is not a rule id (like OD101)")
    if not _PARAM.match(param):
        raise bad(f"param names are lower_snake_case, got {param!r}")
    try:
        num = float(value)
    except ValueError:
        raise bad(f"{value!r} is not a number ({form})") from None
    if math.isnan(num):
        raise bad("nan is not a threshold: every comparison with it is false")
    return rid, param, num


def _overrides(cli_params: Iterable[str | ParamOverride]) -> list[ParamOverride]:
    return [parse_param_override(p) if isinstance(p, str) else tuple(p) for p in cli_params]


def _dedupe(xs: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(xs))


def merge_selection(settings: Settings | None = None, cli_select: Sequence[str] = (), cli_ignore: Sequence[str] = (),
                    cli_params: Sequence[str | ParamOverride] = (), *, cli_extend_select: Sequence[str] = ()) -> Selection:
    """Command line > file > rule defaults, as the module docstring says. An empty
    ``Selection.select`` means every rule."""
    s = settings or Settings()
    if cli_select:
        select, ignore = list(cli_select) + list(cli_extend_select), list(cli_ignore)
    else:
        select = (s.select + s.extend_select + list(cli_extend_select)) if s.select else []  # extending "all" is "all"
        ignore = s.ignore + list(cli_ignore)
    severity = dict(s.severity)
    params = {rid: dict(p) for rid, p in s.params.items()}
    for rid, name, value in _overrides(cli_params):
        params.setdefault(rid, {})[name] = value
    return Selection(select=_dedupe(select), ignore=_dedupe(ignore), severity=severity, params=params)


def resolve_fail_on(settings: Settings | None, cli_fail_on: str | None) -> str:
    """``--fail-on`` if given (the CLI must default it to None to tell), else the file's, else error."""
    return cli_fail_on or (settings.fail_on if settings else None) or "error"


def rule_paths(settings: Settings | None, cli_rules: Sequence[str | Path] = ()) -> list[str] | None:
    """What to hand to ``load_rules``: None means the shipped pack alone."""
    if cli_rules:
        return [str(p) for p in cli_rules]
    if settings and settings.rules:
        from optdoctor.engine.rules import shipped_rules_dir

        return [str(shipped_rules_dir()), *settings.rules]
    return None


# --- validation against the loaded rules ---------------------------------------------------
def validate_against(rules, settings: Settings | None = None, *, cli_select: Sequence[str] = (),
                     cli_ignore: Sequence[str] = (), cli_extend_select: Sequence[str] = (),
                     cli_params: Sequence[str | ParamOverride] = ()) -> None:
    """Every rule id, selector and param named in the file or on the command line must exist in
    the loaded pack; UsageError (exit 2) listing all that do not, with did-you-mean hints. The
    file is checked whole, also parts the command line overrides (a typo is a typo)."""
    by_id = {r.id: r for r in rules}
    names = {r.name: r.id for r in rules}
    families = sorted({r.id[:3] for r in rules})
    problems: list[Problem] = []

    def selector_problem(p: str) -> tuple[str, str | None] | None:
        if any(rid.startswith(p) for rid in by_id) or p in names:
            return None
        if p.upper() != p and any(rid.startswith(p.upper()) for rid in by_id):
            hint = p.upper()
        elif len(p) > 3:  # a prefix as long as p, or a name (a missing family gets the list below)
            hint = did_you_mean(p, sorted({rid[: len(p)] for rid in by_id} | set(names)))
        else:
            hint = None
        fam = f" (rule families here: {', '.join(families)})" if families else ""
        return f"no rule id starts with {p!r} and no rule is named so{fam}", hint

    def rule_problem(rid: str) -> tuple[str, str | None] | None:
        if rid in by_id:
            return None
        if rid in names:
            return f"{rid!r} is a rule name; use its id", names[rid]
        return f"no rule {rid!r}", did_you_mean(rid, by_id) or did_you_mean(rid.upper(), by_id)

    def param_problem(rid: str, param: str) -> tuple[str, str | None] | None:
        bad = rule_problem(rid)
        if bad:
            return bad
        known = by_id[rid].params
        if param in known:
            return None
        if not known:
            return f"{rid} has no params", None
        return f"{rid} has no param {param!r} (it has {', '.join(sorted(known))})", did_you_mean(param, known)

    # the file
    if settings is not None and settings.file:
        for key in ("select", "extend-select", "ignore"):
            for p in getattr(settings, key.replace("-", "_")) or []:
                bad = selector_problem(p)
                if bad:
                    problems.append(settings.problem(key, bad[0], bad[1], item=p))
        for rid in settings.severity:
            bad = rule_problem(rid)
            if bad:
                problems.append(settings.problem(f"severity.{rid}", *bad))
        for rid, table in settings.params.items():
            for param in table:
                bad = param_problem(rid, param)
                if bad:
                    key = f"params.{rid}" if rule_problem(rid) else f"params.{rid}.{param}"
                    problems.append(settings.problem(key, *bad))
        problems.sort(key=lambda p: (p.line or 0, p.col or 0))
    # the command line
    for flag, values in (("--select", cli_select), ("--extend-select", cli_extend_select), ("--ignore", cli_ignore)):
        for p in values:
            bad = selector_problem(p)
            if bad:
                problems.append(Problem(bad[0], key=flag, suggestion=bad[1]))
    for rid, param, _ in _overrides(cli_params):
        bad = param_problem(rid, param)
        if bad:
            problems.append(Problem(bad[0], key=f"--param {rid}.{param}", suggestion=bad[1]))
    if problems:
        raise UsageError(list(dict.fromkeys(problems)))


# --- the one place a command turns settings + flags into the rules it evaluates ------------
@dataclass
class ResolvedRules:
    rules: list  # [engine.rules.Rule], loaded and validated
    selection: Selection
    fail_on: str
    settings: Settings


def resolve_rules(start: str | Path, *, cli_rules: Sequence[str | Path] = (), cli_select: Sequence[str] = (),
                  cli_extend_select: Sequence[str] = (), cli_ignore: Sequence[str] = (),
                  cli_params: Sequence[str | ParamOverride] = (), cli_fail_on: str | None = None) -> ResolvedRules:
    """The settings file that applies to ``start`` (the config's folder) merged with the
    command line, as the module docstring says: which rule pack, which rules, their params and
    severities, and ``--fail-on``. ``diagnose`` and ``replay`` both go through here.
    UsageError/RuleError (exit 2) for anything that names no rule or param."""
    from optdoctor.engine.rules import load_rules

    settings = discover_settings(start)
    rules = load_rules(rule_paths(settings, cli_rules))
    validate_against(rules, settings, cli_select=cli_select, cli_ignore=cli_ignore,
                     cli_extend_select=cli_extend_select, cli_params=cli_params)
    selection = merge_selection(settings, cli_select, cli_ignore, cli_params, cli_extend_select=cli_extend_select)
    return ResolvedRules(rules, selection, resolve_fail_on(settings, cli_fail_on), settings)
