"""Rule packs: YAML files, one rule each, validated at load time.

A rule names one cause and says when it holds, in the safe expression language of
``engine/expr.py``, over symptom names (``symptoms/``) and its own named ``params``:

    id: OD101
    name: vanishing-gradients
    cause: vanishing_gradients
    severity: error
    confidence: 0.85
    when: grad.depth_ratio < params.ratio_max and loss.progress < params.progress_max
    optional: [hess.lambda_min_rel]      # symptoms that may be missing: read as nan
    params:
      ratio_max: {default: 1.0e-3, doc: "first/last layer gradient ratio below which ..."}
    for: 2                               # must hold at the last 2 checkpoints
    gate: loss.late_rel_drop < params.flat_max   # the plateau follow-up probes this rule reads
                                         # (plateau.*) run only when this holds on the baseline;
                                         # a missing symptom reads as nan (the gate stays shut)
    opens: [plateau]                     # which follow-up probes the gate opens (FOLLOWUPS;
                                         # default plateau: continued, perturbed, reseed_*)
    verify: val.final                    # what --verify compares before/after a remedy
                                         # (default loss.final)
    ruled_out_by: [dead_relu]            # a firing rule of this cause (or id) explains the symptoms
    blame: model.args.act                # config key at fault (CI annotations land there)
    summary: "gradients shrink {grad.layer_factor:.2g}x per layer ..."
    evidence: [grad.depth_ratio, grad.layer_factor]
    remedies: ["...", {text: "...", patch: {...}, or_patch: {...}}]   # or_patch: optional, see Remedy
    references: ["..."]
    docs: {what: ..., why: ..., detection: ..., false_positives: ..., remedies: ...}
    tests:                               # beside the rule (semgrep/Prometheus style)
      fires: [{symptoms...}]
      near_miss: [{symptoms...}]
      neighbour: [{cause: bad_init, symptoms: {...}}]

No torch here: ``optdoctor rules ...`` must stay fast and safe on untrusted files.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from optdoctor.engine.expr import Expr, ExprError, compile_expr
from optdoctor.errors import Problem, RuleError, did_you_mean, sort_problems
from optdoctor.findings import CAUSES, SEVERITIES
from optdoctor.symptoms import SYMPTOMS
from optdoctor.yamlio import PositionedTree, compose, read_text

ID_RE = re.compile(r"^OD[0-9]{3}$")
NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
TEMPLATE_RE = re.compile(r"\{([A-Za-z_][\w.]*)(?::([^{}]*))?\}")
DOC_SECTIONS = ("what", "why", "detection", "false_positives", "remedies")
CONFIG_ROOTS = ("name", "seed", "model", "data", "loss", "optimizer", "schedule", "probe")
TOP_KEYS = ("id", "name", "cause", "severity", "confidence", "when", "optional", "params", "for",
            "ruled_out_by", "blame", "summary", "evidence", "remedies", "references", "docs", "tests",
            "gate", "opens", "verify")
REQUIRED = ("id", "name", "cause", "severity", "confidence", "when", "summary", "remedies", "docs")
DEFAULT_VERIFY = "loss.final"  # what --verify compares unless a rule says otherwise
# Follow-up probes a rule's gate can open: "plateau" (continued, perturbed, reseed_1..3: is the
# plateau a saddle or a bad basin?), "standardized" (the baseline on standardised inputs: does
# the inputs' scale spread matter?), "whitened" (the baseline on whitened inputs: do the inputs'
# correlations matter?), "target_standardized" (the baseline on standardised regression targets:
# does the targets' scale matter?).
FOLLOWUPS = ("plateau", "standardized", "whitened", "target_standardized")
FAMILIES = {"1": "gradients", "2": "curvature and conditioning", "3": "initialisation and activations",
            "4": "learning rate", "5": "generalisation", "9": "probe health"}


@dataclass
class Param:
    name: str
    default: float
    doc: str = ""


@dataclass
class Remedy:
    text: str
    patch: dict[str, Any] | None = None  # machine-applicable config patch (see the remedies issue)
    # the same remedy for a config ``patch`` cannot express (a user's factory without that
    # argument): tried instead when ``patch`` is not applicable
    or_patch: dict[str, Any] | None = None


@dataclass
class Rule:
    id: str
    name: str
    cause: str
    severity: str
    confidence: float
    when: Expr
    summary: str
    params: dict[str, Param] = field(default_factory=dict)
    optional: tuple[str, ...] = ()
    for_: int = 1
    ruled_out_by: tuple[str, ...] = ()  # causes or rule ids whose firing explains this rule's symptoms
    blame: str | None = None
    evidence: tuple[str, ...] = ()
    remedies: list[Remedy] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    docs: dict[str, str] = field(default_factory=dict)
    tests: dict[str, list] = field(default_factory=dict)
    file: str = ""
    line: int = 1
    gate: Expr | None = None  # when the follow-up probes its condition reads should run
    verify: str = DEFAULT_VERIFY
    opens: tuple[str, ...] = ("plateau",)  # which follow-up probes the gate opens  # the symptom --verify compares before and after a remedy

    @property
    def family(self) -> str:
        return FAMILIES.get(self.id[2], "other")

    def param_env(self, overrides: dict[str, float] | None = None) -> dict[str, float]:
        env = {f"params.{k}": p.default for k, p in self.params.items()}
        for k, v in (overrides or {}).items():
            env[f"params.{k}"] = float(v)
        return env

    def symptom_names(self) -> list[str]:
        return sorted(n for n in self.when.names if not n.startswith("params."))

    def gate_open(self, symptoms: dict[str, float], overrides: dict[str, float] | None = None) -> bool:
        """Whether this rule wants the follow-up probes, judged on the baseline's symptoms
        (a missing symptom reads as nan, so the gate stays shut); False without a gate."""
        if self.gate is None:
            return False
        env = {n: math.nan for n in self.gate.names}
        env.update(symptoms)
        env.update(self.param_env(overrides))
        return bool(self.gate.evaluate(env))


def shipped_rules_dir() -> Path:
    """rules/ shipped inside the wheel (as optdoctor/_rules), or the source tree's rules/."""
    packaged = resources.files("optdoctor") / "_rules"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "rules"


def rule_files(paths: list[str | Path] | None = None) -> list[Path]:
    paths = paths or [shipped_rules_dir()]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.suffix in (".yaml", ".yml"))
        else:
            files.append(p)
    return files


def load_rules(paths: list[str | Path] | None = None) -> list[Rule]:
    """Load and validate rule files (default: the shipped pack). Raises RuleError listing every
    problem of every file; duplicate ids across files are an error."""
    rules: list[Rule] = []
    problems: list[Problem] = []
    for f in rule_files(paths):
        try:
            rules.append(load_rule_file(f))
        except RuleError as e:
            problems += e.problems
    seen: dict[str, Rule] = {}
    for r in rules:
        if r.id in seen:
            problems.append(Problem(f"duplicate rule id {r.id} (also in {seen[r.id].file})", key="id", file=r.file, line=r.line, col=1))
        seen[r.id] = r
    if problems:
        raise RuleError(problems)
    return sorted(rules, key=lambda r: r.id)


def _shown(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def load_rule_file(path: str | Path) -> Rule:
    path = Path(path)
    shown = _shown(path)
    root = compose(read_text(path, shown, "rule file", RuleError), shown, RuleError)
    if root is None or not isinstance(root, yaml.MappingNode):
        raise RuleError([Problem("a rule file must be a mapping (id:, name:, cause:, when:, ...)", file=shown, line=1, col=1)])
    tree = PositionedTree(shown)
    data = tree.build(root)
    v = _Validator(shown, tree.positions, root)
    v.problems += tree.problems
    rule = v.rule(data)
    if v.problems:
        raise RuleError(sort_problems(v.problems))
    return rule


class _Validator:
    def __init__(self, shown: str, positions: dict[str, tuple[int, int]], root):
        self.shown, self.positions = shown, positions
        self.problems: list[Problem] = []
        self.value_pos: dict[str, tuple[int, int]] = {}
        for key_node, value_node in root.value:  # where each top-level value starts
            if isinstance(key_node, yaml.ScalarNode):
                self.value_pos[key_node.value] = (value_node.start_mark.line + 1, value_node.start_mark.column + 1,
                                                  getattr(value_node, "style", None))

    def add(self, key: str, message: str, suggestion: str | None = None, at: tuple[int, int] | None = None) -> None:
        k = key
        while at is None and k:
            at = self.positions.get(k)
            k = k.rpartition(".")[0]
        line, col = at or (1, 1)
        self.problems.append(Problem(message, key=key, file=self.shown, line=line, col=col, suggestion=suggestion))

    def value_at(self, key: str) -> tuple[int, int] | None:
        """Where a top-level key's value starts: a bad value is reported there, not at its key."""
        v = self.value_pos.get(key)
        return (v[0], v[1]) if v else None

    def rule(self, d: dict) -> Rule | None:
        for k in d:
            if k not in TOP_KEYS:
                self.add(k, f"unknown key {k!r}", did_you_mean(k, TOP_KEYS))
        for k in REQUIRED:
            if k not in d:
                self.add("", f"missing required key {k!r}", at=(1, 1))
        rid = str(d.get("id", ""))
        if "id" in d and not ID_RE.match(rid):
            self.add("id", f"rule id must look like OD123 (family digit, then two digits), got {rid!r}", at=self.value_at("id"))
        name = str(d.get("name", ""))
        if "name" in d and not NAME_RE.match(name):
            self.add("name", f"rule name must be kebab-case, got {name!r}", at=self.value_at("name"))
        cause = d.get("cause")
        if "cause" in d and cause not in CAUSES:
            self.add("cause", f"unknown cause {cause!r}", did_you_mean(str(cause), CAUSES), at=self.value_at("cause"))
        sev = d.get("severity")
        if "severity" in d and sev not in SEVERITIES:
            self.add("severity", f"severity must be one of {', '.join(SEVERITIES)}, got {sev!r}", did_you_mean(str(sev), SEVERITIES), at=self.value_at("severity"))
        conf = d.get("confidence")
        if "confidence" in d and not (isinstance(conf, (int, float)) and not isinstance(conf, bool) and 0 <= conf <= 1):
            self.add("confidence", f"confidence must be a number in [0, 1], got {conf!r}", at=self.value_at("confidence"))
        params = self.params(d.get("params") or {})
        known = set(SYMPTOMS) | {f"params.{p}" for p in params}
        optional = self.names_list(d, "optional", set(SYMPTOMS))
        when = self.expr(d.get("when"), known) if "when" in d else None
        if when is not None and not when.is_bool:
            self.add("when", "the condition must be a comparison or a boolean combination, not a bare number")
        gate = self.expr(d.get("gate"), known, key="gate") if d.get("gate") is not None else None
        if gate is not None and not gate.is_bool:
            self.add("gate", "the gate must be a comparison or a boolean combination, not a bare number")
        used = (when.names if when is not None else set()) | (gate.names if gate is not None else set())
        unused = [p for p in params if when is not None and f"params.{p}" not in used]
        for p in unused:
            self.add(f"params.{p}", f"param {p!r} is not used by the condition" + (" or the gate" if gate is not None else ""))
        opens = d.get("opens", ["plateau"])
        if not isinstance(opens, list) or not opens or any(o not in FOLLOWUPS for o in opens):
            self.add("opens", f"opens lists the follow-up probes the gate opens, of {', '.join(FOLLOWUPS)}; got {opens!r}",
                     did_you_mean(str(opens[0]) if isinstance(opens, list) and opens else str(opens), FOLLOWUPS),
                     at=self.value_at("opens"))
            opens = ["plateau"]
        verify = d.get("verify", DEFAULT_VERIFY)
        if not isinstance(verify, str) or verify not in SYMPTOMS:
            self.add("verify", f"verify names the symptom --verify compares (default {DEFAULT_VERIFY}); unknown symptom {verify!r}",
                     did_you_mean(str(verify), SYMPTOMS), at=self.value_at("verify"))
            verify = DEFAULT_VERIFY
        for_ = d.get("for", 1)
        if not (isinstance(for_, int) and not isinstance(for_, bool) and for_ >= 1):
            self.add("for", f"'for' must be a positive number of checkpoints, got {for_!r}")
            for_ = 1
        ruled_out_by = d.get("ruled_out_by") or []
        if not isinstance(ruled_out_by, list):
            self.add("ruled_out_by", "ruled_out_by must be a list of causes or rule ids")
            ruled_out_by = []
        for i, c in enumerate(ruled_out_by):
            if c not in CAUSES and not ID_RE.match(str(c)):
                self.add(f"ruled_out_by.{i}", f"{c!r} is neither a cause nor a rule id", did_you_mean(str(c), CAUSES))
        blame = d.get("blame")
        if blame is not None and (not isinstance(blame, str) or blame.split(".")[0] not in CONFIG_ROOTS):
            self.add("blame", f"blame must be a config key path starting with one of {', '.join(CONFIG_ROOTS)}, got {blame!r}",
                     did_you_mean(str(blame).split(".")[0], CONFIG_ROOTS), at=self.value_at("blame"))
        summary = d.get("summary", "")
        if not isinstance(summary, str):
            self.add("summary", "summary must be a string")
            summary = ""
        self.template(summary, known)
        evidence = self.names_list(d, "evidence", set(SYMPTOMS))
        remedies = self.remedies(d.get("remedies") or [])
        for r in remedies:
            self.template(r.text, known, key="remedies")
        docs = d.get("docs") or {}
        if not isinstance(docs, dict):
            self.add("docs", "docs must be a mapping of sections")
            docs = {}
        for k in docs:
            if k not in DOC_SECTIONS and k != "references":
                self.add(f"docs.{k}", f"unknown docs section {k!r}", did_you_mean(k, DOC_SECTIONS))
        for k in DOC_SECTIONS[:4]:
            if "docs" in d and not docs.get(k):
                self.add("docs", f"docs needs a {k!r} section")
        refs = d.get("references") or []
        tests = self.tests(d.get("tests") or {})
        if self.problems or when is None:
            return None
        line = self.positions.get("id", (1, 1))[0]
        return Rule(rid, name, cause, sev, float(conf), when, summary, params, tuple(optional), for_,
                    tuple(str(c) for c in ruled_out_by), blame,
                    tuple(evidence), remedies, [str(r) for r in refs], {k: str(v) for k, v in docs.items()},
                    tests, self.shown, line, gate, verify, tuple(opens))

    def params(self, raw: Any) -> dict[str, Param]:
        if not isinstance(raw, dict):
            self.add("params", "params must be a mapping name: {default: number, doc: text}")
            return {}
        out = {}
        for k, v in raw.items():
            doc = ""
            if isinstance(v, dict):
                extra = set(v) - {"default", "doc"}
                if extra:
                    self.add(f"params.{k}", f"unknown keys {sorted(extra)} (a param has default: and doc:)")
                doc, v = str(v.get("doc", "")), v.get("default")
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                self.add(f"params.{k}", f"param {k!r} needs a numeric default, got {v!r}")
                continue
            if not re.match(r"^[a-z][a-z0-9_]*$", str(k)):
                self.add(f"params.{k}", f"param names are lower_snake_case, got {k!r}")
                continue
            out[k] = Param(k, float(v), doc)
        return out

    def expr(self, source: Any, known: set[str], key: str = "when") -> Expr | None:
        if not isinstance(source, str):
            self.add(key, f"the {'condition' if key == 'when' else key} must be a string expression, got {source!r}")
            return None
        line, col, style = self.value_pos[key]
        src = " ".join(source.split()) if style in (">", "|") else source
        try:
            return compile_expr(src, known)
        except ExprError as e:
            if style in (None, "", "'", '"'):
                quote = 1 if style in ("'", '"') else 0
                p = e.to_problem(self.shown, key, (line, col + quote))
            else:  # folded block: locate the first occurrence of the offending text
                p = Problem(e.message, key=key, file=self.shown, line=line, col=col, suggestion=e.suggestion)
            self.problems.append(p)
            return None

    def template(self, text: str, known: set[str], key: str = "summary") -> None:
        for m in TEMPLATE_RE.finditer(text):
            name, spec = m.group(1), m.group(2)
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                self.add(key, f"unknown name {name!r} in the {key} template", close[0] if close else None)
            elif spec:
                try:
                    format(1.0, spec)
                except ValueError:
                    self.add(key, f"bad format spec {spec!r} for {name!r}")

    def names_list(self, d: dict, key: str, known: set[str]) -> list[str]:
        raw = d.get(key) or []
        if not isinstance(raw, list):
            self.add(key, f"{key} must be a list of symptom names")
            return []
        out = []
        for i, n in enumerate(raw):
            if n not in known:
                self.add(f"{key}.{i}", f"unknown symptom {n!r}", did_you_mean(str(n), known))
            else:
                out.append(n)
        return out

    def remedies(self, raw: Any) -> list[Remedy]:
        if not isinstance(raw, list) or not raw:
            self.add("remedies", "remedies must be a non-empty list")
            return []
        out = []
        for i, r in enumerate(raw):
            if isinstance(r, str):
                out.append(Remedy(r))
            elif isinstance(r, dict) and isinstance(r.get("text"), str) and set(r) <= {"text", "patch", "or_patch"}:
                patch, alt = r.get("patch"), r.get("or_patch")
                if patch is not None and not isinstance(patch, dict):
                    self.add(f"remedies.{i}.patch", "a patch is a mapping of config key path -> value")
                    patch = None
                if alt is not None and (not isinstance(alt, dict) or patch is None):
                    self.add(f"remedies.{i}.or_patch", "or_patch is a mapping of config key path -> value, "
                                                       "tried when the remedy's patch is not applicable (it needs a patch)")
                    alt = None
                out.append(Remedy(r["text"], patch, alt))
            else:
                self.add(f"remedies.{i}", "a remedy is a string or {text: ..., patch: {...}, or_patch: {...}}")
        return out

    def tests(self, raw: Any) -> dict[str, list]:
        if not isinstance(raw, dict):
            self.add("tests", "tests must be a mapping with fires:, near_miss:, neighbour:")
            return {}
        for k in raw:
            if k not in ("fires", "near_miss", "neighbour"):
                self.add(f"tests.{k}", f"unknown test kind {k!r}", did_you_mean(k, ("fires", "near_miss", "neighbour")))
        for kind in ("fires", "near_miss", "neighbour"):
            cases = raw.get(kind) or []
            if not isinstance(cases, list):
                self.add(f"tests.{kind}", f"tests.{kind} must be a list of cases")
                continue
            for i, case in enumerate(cases):
                sym = case.get("symptoms") if isinstance(case, dict) and "symptoms" in case else case
                if not isinstance(sym, dict):
                    self.add(f"tests.{kind}.{i}", "a test case is a mapping of symptom -> value (or {symptoms: ..., cause: ...})")
                    continue
                for n in sym:
                    if n not in SYMPTOMS:
                        self.add(f"tests.{kind}.{i}", f"unknown symptom {n!r} in a test case", did_you_mean(str(n), SYMPTOMS))
                if kind == "neighbour" and isinstance(case, dict) and case.get("cause") not in CAUSES:
                    self.add(f"tests.{kind}.{i}", "a neighbour case names the cause it belongs to (cause: ...)")
        return {k: list(raw.get(k) or []) for k in ("fires", "near_miss", "neighbour")}
