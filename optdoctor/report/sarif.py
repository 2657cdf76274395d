"""``--format sarif``: SARIF 2.1.0 that GitHub code scanning accepts.

One run per diagnosed config. ``tool.driver.rules`` carries every loaded rule (stable id, name,
descriptions, help rendered from the rule file's docs, default level, params); each finding
becomes a result at the line of its blamed config key, with a *relative* URI under
``%SRCROOT%`` (the repository root: run optdoctor from there) and a fingerprint that does not
move when a measured number does. Results are emitted for every finding, also those below
``--fail-on``: code scanning shows them all and lets people filter by level.

Category: ``run.automationDetails.id`` is ``optdoctor/<config path>/``, so that one SARIF file
per config can be uploaded from one job (upload-sarif keeps an ``automationDetails`` it finds
and only fills in a missing one) and re-analysing a config closes its fixed alerts.

Deterministic bytes: keys sorted, lists in a fixed order (rules by id, results as the findings
are ranked), floats rounded to 6 significant digits, no timestamps, no absolute paths.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import PurePath
from urllib.parse import quote

from optdoctor import __version__
from optdoctor.findings import Finding
from optdoctor.report.base import fails, reporter
from optdoctor.report.numbers import fmt, round6

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
LEVEL = {"error": "error", "warning": "warning", "info": "note"}
SRCROOT = "%SRCROOT%"
FINGERPRINT_KEY = "optdoctor/v1"  # bump the suffix if the fingerprint's inputs ever change


# --- helpers shared with the other CI reporters -------------------------------------------
def report_path(path: str) -> str:
    """A path as reports show it: relative (an absolute one is made relative to the working
    directory, which in CI is the repository root) and with forward slashes."""
    p = PurePath(path)
    if p.is_absolute():
        try:
            p = PurePath(os.path.relpath(p))
        except ValueError:  # another drive on Windows: the name is all we can say
            p = PurePath(p.name)
    return p.as_posix()


def evidence_text(f: Finding) -> str:
    # the rule's own order: the evidence it names first, then the condition's inputs
    return ", ".join(f"{k}={fmt(v, exact=True)}" for k, v in f.evidence.items())


def fingerprint(rule_id: str, config_path: str, blame: str | None) -> str:
    """Stable across runs: no measured number goes in, only what names the problem."""
    key = "\0".join((rule_id, report_path(config_path), blame or ""))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


# --- rule descriptors ---------------------------------------------------------------------
def _squash(text: str) -> str:
    return " ".join(str(text).split())


def _first_sentence(text: str) -> str:
    text = _squash(text)
    for i, ch in enumerate(text):
        if ch in ".!?" and (i + 1 == len(text) or text[i + 1] == " "):
            return text[: i + 1]
    return text


def _precision(confidence: float) -> str:
    # GitHub code scanning's rule property; ranks alerts among equals
    return "very-high" if confidence >= 0.9 else "high" if confidence >= 0.75 else "medium" if confidence >= 0.5 else "low"


def help_markdown(rule) -> str:
    """The rule's docs as Markdown, from the same source and sections as `rules explain`."""
    from optdoctor.engine.docs import SECTIONS

    out = [f"**{rule.id} {rule.name}** (cause: `{rule.cause}`, severity: {rule.severity}, family: {rule.family})\n"]
    for key, title in SECTIONS:
        if key == "remedies":
            out.append(f"## {title}\n")
            out += [f"{i}. {_squash(r.text)}" for i, r in enumerate(rule.remedies, 1)]
            out.append("")
            if rule.docs.get("remedies"):
                out.append(rule.docs["remedies"].strip() + "\n")
        elif rule.docs.get(key):
            out.append(f"## {title}\n\n{rule.docs[key].strip()}\n")
    out.append(f"## Condition\n\n```\n{rule.when.source}\n```\n")
    if rule.for_ > 1:
        out.append(f"Must hold at the last {rule.for_} checkpoints.\n")
    if rule.params:
        out.append("## Parameters\n\nOverride in `[tool.optdoctor.params]` or with `--param`.\n")
        out.append("| param | default | meaning |\n| --- | --- | --- |")
        out += [f"| `{p.name}` | {p.default:g} | {_squash(p.doc).replace('|', '&#124;')} |" for p in rule.params.values()]
        out.append("")
    if rule.blame:
        out.append(f"## Blamed config key\n\n`{rule.blame}`\n")
    if rule.references:
        out.append("## References\n\n" + "\n".join(f"- {r}" for r in rule.references) + "\n")
    return "\n".join(out).rstrip() + "\n"


def rule_descriptor(rule) -> dict:
    from optdoctor.engine.docs import explain

    what = rule.docs.get("what") or rule.name.replace("-", " ")
    return {
        "id": rule.id,
        "name": rule.name,
        "shortDescription": {"text": _first_sentence(what)},
        "fullDescription": {"text": _squash(what)},
        "help": {"text": explain(rule), "markdown": help_markdown(rule)},
        "defaultConfiguration": {
            "level": LEVEL[rule.severity],
            **({"parameters": {k: p.default for k, p in rule.params.items()}} if rule.params else {}),
        },
        "properties": {
            "cause": rule.cause, "family": rule.family, "confidence": rule.confidence,
            "tags": ["optdoctor", rule.cause], "precision": _precision(rule.confidence),
            **({"blame": rule.blame} if rule.blame else {}),
        },
    }


def _minimal_descriptor(rule_id: str, name: str, cause: str) -> dict:
    """When the reporter was not handed the loaded rules: what the diagnosis itself knows."""
    from optdoctor.engine.rules import FAMILIES

    family = FAMILIES.get(rule_id[2:3], "other")
    text = f"{name.replace('-', ' ')} (cause: {cause})"
    return {
        "id": rule_id, "name": name,
        "shortDescription": {"text": text}, "fullDescription": {"text": text},
        "help": {"text": f"Run `optdoctor rules explain {rule_id}` for this rule's documentation."},
        "properties": {"cause": cause, "family": family, "tags": ["optdoctor", cause]},
    }


def descriptors(diag, rules) -> list[dict]:
    out = {r.id: rule_descriptor(r) for r in rules or ()}
    for o in diag.outcomes:
        out.setdefault(o.rule, _minimal_descriptor(o.rule, o.name, o.cause))
    for f in diag.findings:
        out.setdefault(f.rule, _minimal_descriptor(f.rule, f.name, f.cause))
    return [out[k] for k in sorted(out)]


# --- results ------------------------------------------------------------------------------
def _message(f: Finding) -> str:
    text = f.summary.strip()
    if text and text[-1] not in ".!?":
        text += "."
    if f.evidence:
        text += f" Evidence: {evidence_text(f)}."
    if f.blame:
        text += f" Config key: {f.blame}."
    return text


def _location(f: Finding, config_path: str) -> dict:
    """At the blamed key; a finding without one points at the config file's first line (code
    scanning wants a location for every result)."""
    loc = f.location or {}
    path = report_path(str(loc.get("file") or config_path))
    region = {"startLine": int(loc.get("line") or 1), "startColumn": int(loc.get("col") or 1)}
    return {"physicalLocation": {"artifactLocation": {"uri": quote(path, safe="/"), "uriBaseId": SRCROOT},
                                 "region": region}}


def result(f: Finding, index: int, config_path: str, fail_on: str) -> dict:
    props = {
        "cause": f.cause, "severity": f.severity, "confidence": f.confidence,
        "evidence": dict(f.evidence), "remedies": list(f.remedies),
        "failsCheck": fails(f.severity, fail_on),
    }
    if f.blame:
        props["blame"] = f.blame
    if f.onset is not None:
        props["onsetStep"] = f.onset
    return {
        "ruleId": f.rule,
        "ruleIndex": index,
        "level": LEVEL[f.severity],
        "kind": "fail",
        "message": {"text": _message(f)},
        "locations": [_location(f, config_path)],
        "partialFingerprints": {FINGERPRINT_KEY: fingerprint(f.rule, config_path, f.blame)},
        "properties": props,
    }


def sarif_log(diag, fail_on: str = "error", rules=None) -> dict:
    if rules is None:
        rules = diag.extra.get("rules") if getattr(diag, "extra", None) else None
    rule_list = descriptors(diag, rules)
    index = {d["id"]: i for i, d in enumerate(rule_list)}
    path = report_path(diag.config_path)
    notes = [{"level": "note", "message": {"text": f"{o.rule} {o.name} not evaluated: {o.reason or 'inputs missing'}"},
              "associatedRule": {"id": o.rule, "index": index[o.rule]}}
             for o in diag.outcomes if o.status == "not_evaluated"]
    run = {
        "tool": {"driver": {"name": "optdoctor", "version": __version__, "semanticVersion": __version__,
                            "rules": rule_list}},
        "automationDetails": {"id": f"optdoctor/{path}/"},
        "columnKind": "unicodeCodePoints",
        "artifacts": [{"location": {"uri": quote(path, safe="/"), "uriBaseId": SRCROOT}, "roles": ["analysisTarget"]}],
        "invocations": [{"executionSuccessful": diag.status == "completed",
                         **({"toolExecutionNotifications": notes} if notes else {})}],
        "results": [result(f, index[f.rule], diag.config_path, fail_on) for f in diag.findings],
        "properties": {
            "config": diag.name, "status": diag.status, "failOn": fail_on,
            "rules": {s: sum(o.status == s for o in diag.outcomes) for s in ("fired", "passed", "not_evaluated")},
        },
    }
    return round6({"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]})


@reporter("sarif")
def render_sarif(diag, fail_on: str = "error", rules=None) -> str:
    """``rules``: the loaded Rule objects, for ``tool.driver.rules`` (their docs become the help
    text). Without them, ``diag.extra["rules"]`` is used if present, else minimal descriptors
    built from the diagnosis' own outcomes."""
    return json.dumps(sarif_log(diag, fail_on, rules), indent=2, sort_keys=True, allow_nan=False) + "\n"
