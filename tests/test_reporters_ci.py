"""CI reporters (SARIF, JUnit, GitHub annotations) on hand-made diagnoses: no probing, no torch.

The SARIF log is validated against the official OASIS 2.1.0 schema vendored in tests/data
(see tests/data/SOURCES.md); needs the ``jsonschema`` test dependency.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from optdoctor.diagnose import Diagnosis
from optdoctor.engine.evaluate import evaluate
from optdoctor.engine.rules import load_rules
from optdoctor.findings import Finding, RuleOutcome
from optdoctor.trace import ProbeSet, Trace
from optdoctor.report import github, junit, sarif
from optdoctor.report.base import REPORTERS

SCHEMA = Path(__file__).parent / "data" / "sarif-schema-2.1.0.json"

DOCS = """\
docs:
  what: {what}
  why: Something in the setup makes it so.
  detection: A symptom crosses a named threshold.
  false_positives: Rarely, on tiny models.
"""

RULES = {
    "od101.yaml": """\
id: OD101
name: vanishing-gradients
cause: vanishing_gradients
severity: error
confidence: 0.85
when: grad.depth_ratio < params.ratio_max and loss.progress < params.progress_max
params:
  ratio_max: {default: 1.0e-3, doc: "first/last layer gradient ratio below which gradients vanish"}
  progress_max: {default: 0.3, doc: "how far the loss got"}
blame: model.args.act
summary: "gradients shrink {grad.layer_factor:.2g}x per layer"
evidence: [grad.depth_ratio, grad.layer_factor]
remedies: ["Use ReLU instead of sigmoid.", "Add residual connections."]
references: ["Glorot & Bengio 2010"]
""" + DOCS.format(what="Gradients shrink geometrically toward the input. The first layers barely learn."),
    "od402.yaml": """\
id: OD402
name: lr-too-low
cause: lr_too_low
severity: warning
confidence: 0.7
when: update.ratio < params.ratio_min
params:
  ratio_min: {default: 1.0e-4, doc: "update/weight ratio below which the LR is too low"}
blame: optimizer.lr
summary: "updates are {update.ratio:.2g} of the weights"
evidence: [update.ratio]
remedies: ["Raise the learning rate 10x."]
""" + DOCS.format(what="The learning rate is too low to make progress."),
    "od503.yaml": """\
id: OD503
name: overfitting
cause: overfitting
severity: info
confidence: 0.6
when: gap.val_train > params.gap_min
params:
  gap_min: {default: 0.1, doc: "validation minus training loss"}
summary: "validation loss is {gap.val_train:.2g} above training loss"
evidence: [gap.val_train]
remedies: ["Add weight decay."]
""" + DOCS.format(what="Validation loss rises while training loss falls."),
    "od201.yaml": """\
id: OD201
name: ill-conditioning
cause: ill_conditioning
severity: error
confidence: 0.8
when: hess.effective_condition > params.cond_max
params:
  cond_max: {default: 1.0e4, doc: "effective condition number"}
blame: data.args
summary: "condition number {hess.effective_condition:.3g}"
remedies: ["Standardise the input features."]
""" + DOCS.format(what="The loss surface is much steeper in some directions than others."),
    "od301.yaml": """\
id: OD301
name: bad-init
cause: bad_init
severity: error
confidence: 0.9
when: loss.init_over_chance > params.ratio_max
params:
  ratio_max: {default: 3.0, doc: "initial loss over the chance loss"}
blame: model.args
summary: "initial loss is {loss.init_over_chance:.2g}x chance"
remedies: ["Use the default initialisation."]
""" + DOCS.format(what="The initial weights put the model far from a sensible start."),
}

SYMPTOMS = {  # OD101, OD402 and OD503 fire, OD301 passes, OD201 is not evaluated (no Hessian)
    "grad.depth_ratio": 2.5e-6, "grad.layer_factor": 0.31234567, "loss.progress": 0.02,
    "update.ratio": 3.0e-6, "gap.val_train": 0.4, "loss.init_over_chance": 1.01,
}
LINES = {"model.args.act": (7, 9), "optimizer.lr": (12, 7)}


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rules")
    for name, text in RULES.items():
        (folder / name).write_text(text)
    return load_rules([folder])


def make_diag(rules, symptoms=SYMPTOMS, config_path="configs/deep-mlp.yaml") -> Diagnosis:
    """What run_diagnosis returns, without probing: the real engine on a synthetic snapshot."""
    findings, outcomes = evaluate(rules, [(50, dict(symptoms)), (100, dict(symptoms))])
    for f in findings:
        if f.blame in LINES:
            line, col = LINES[f.blame]
            f.location = {"file": config_path, "line": line, "col": col}
    trace = Trace("baseline", {"lr": 0.1, "steps": 100, "seed": 0},
                  {"loss.train": (np.arange(3), np.array([2.3, 2.29, 2.28]))})
    return Diagnosis("deep-mlp", config_path, findings, outcomes, dict(symptoms), ProbeSet({"baseline": trace}))


@pytest.fixture
def diag(rules):
    return make_diag(rules)


def test_registered():
    for name in ("sarif", "junit", "github"):
        assert name in REPORTERS
    assert REPORTERS["sarif"] is sarif.render_sarif


def test_fixture_shape(diag):
    assert [f.rule for f in diag.findings] == ["OD101", "OD402", "OD503"]
    assert {o.rule: o.status for o in diag.outcomes} == {
        "OD101": "fired", "OD201": "not_evaluated", "OD301": "passed", "OD402": "fired", "OD503": "fired"}


# --- SARIF ---------------------------------------------------------------------------------
def validate_sarif(log: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft4Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft4Validator(schema).iter_errors(log), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])


@pytest.mark.parametrize("with_rules", [True, False])
def test_sarif_is_valid_against_the_official_schema(diag, rules, with_rules):
    log = json.loads(sarif.render_sarif(diag, "error", rules if with_rules else None))
    validate_sarif(log)


def test_sarif_schema_catches_a_broken_log(diag, rules):
    # the validator is not vacuous: a result without a message and a bad level are rejected
    jsonschema = pytest.importorskip("jsonschema")
    log = json.loads(sarif.render_sarif(diag, "error", rules))
    del log["runs"][0]["results"][0]["message"]
    log["runs"][0]["results"][1]["level"] = "fatal"
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert len(list(jsonschema.Draft4Validator(schema).iter_errors(log))) == 2


def test_sarif_rules_and_results(diag, rules):
    log = json.loads(sarif.render_sarif(diag, "error", rules))
    assert log["version"] == "2.1.0"
    run = log["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "optdoctor"
    ids = [r["id"] for r in driver["rules"]]
    assert ids == ["OD101", "OD201", "OD301", "OD402", "OD503"]
    od101 = driver["rules"][0]
    assert od101["name"] == "vanishing-gradients"
    assert od101["shortDescription"]["text"] == "Gradients shrink geometrically toward the input."
    assert od101["fullDescription"]["text"].endswith("The first layers barely learn.")
    assert od101["help"]["text"].startswith("OD101 vanishing-gradients")  # `rules explain`, verbatim
    assert "## Known false positives" in od101["help"]["markdown"]
    assert "| `ratio_max` | 0.001 |" in od101["help"]["markdown"]
    assert od101["defaultConfiguration"] == {"level": "error", "parameters": {"progress_max": 0.3, "ratio_max": 0.001}}
    assert od101["properties"]["cause"] == "vanishing_gradients"
    assert od101["properties"]["family"] == "gradients"
    assert [r["defaultConfiguration"]["level"] for r in driver["rules"]] == ["error", "error", "error", "warning", "note"]

    results = run["results"]
    # every finding, also those below --fail-on (code scanning shows them all)
    assert [(r["ruleId"], r["level"]) for r in results] == [("OD101", "error"), ("OD402", "warning"), ("OD503", "note")]
    for r in results:
        assert driver["rules"][r["ruleIndex"]]["id"] == r["ruleId"]
    first = results[0]
    assert first["message"]["text"] == ("gradients shrink 0.31x per layer. Evidence: grad.depth_ratio=2.5e-06, "
                                        "grad.layer_factor=0.312346, loss.progress=0.02. Config key: model.args.act.")
    loc = first["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"] == {"uri": "configs/deep-mlp.yaml", "uriBaseId": "%SRCROOT%"}
    assert loc["region"] == {"startLine": 7, "startColumn": 9}
    props = first["properties"]
    assert props["cause"] == "vanishing_gradients" and props["confidence"] == 0.85
    assert props["evidence"] == {"grad.depth_ratio": 2.5e-06, "grad.layer_factor": 0.312346, "loss.progress": 0.02}
    assert props["failsCheck"] is True and results[2]["properties"]["failsCheck"] is False
    # a finding without a blamed key points at the config file's first line
    assert results[2]["locations"][0]["physicalLocation"]["region"] == {"startLine": 1, "startColumn": 1}
    assert run["automationDetails"]["id"] == "optdoctor/configs/deep-mlp.yaml/"
    notes = run["invocations"][0]["toolExecutionNotifications"]
    assert [n["associatedRule"]["id"] for n in notes] == ["OD201"]
    assert "hess.effective_condition" in notes[0]["message"]["text"]


def test_sarif_fingerprints_ignore_the_numbers(rules):
    a = json.loads(sarif.render_sarif(make_diag(rules), "error", rules))
    moved = dict(SYMPTOMS, **{"grad.depth_ratio": 7.0e-5, "grad.layer_factor": 0.5})
    b = json.loads(sarif.render_sarif(make_diag(rules, moved), "error", rules))
    fa = [r["partialFingerprints"] for r in a["runs"][0]["results"]]
    fb = [r["partialFingerprints"] for r in b["runs"][0]["results"]]
    assert fa == fb
    assert len({json.dumps(f) for f in fa}) == 3  # one per finding
    other = json.loads(sarif.render_sarif(make_diag(rules, config_path="configs/other.yaml"), "error", rules))
    assert other["runs"][0]["results"][0]["partialFingerprints"] != fa[0]


def test_sarif_paths_are_relative_and_encoded(rules, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    absolute = str(tmp_path / "configs" / "deep mlp.yaml")
    out = sarif.render_sarif(make_diag(rules, config_path=absolute), "error", rules)
    assert str(tmp_path) not in out
    log = json.loads(out)
    uri = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri == "configs/deep%20mlp.yaml"
    validate_sarif(log)


def test_sarif_without_rules_falls_back_to_the_diagnosis(diag):
    log = json.loads(sarif.render_sarif(diag))
    rules = log["runs"][0]["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == ["OD101", "OD201", "OD301", "OD402", "OD503"]
    assert "optdoctor rules explain OD101" in rules[0]["help"]["text"]


def test_sarif_nonfinite_evidence(rules):
    d = make_diag(rules, dict(SYMPTOMS, **{"grad.layer_factor": float("nan")}))
    log = json.loads(sarif.render_sarif(d, "error", rules))  # strict JSON: no NaN literal
    assert log["runs"][0]["results"][0]["properties"]["evidence"]["grad.layer_factor"] == "nan"
    validate_sarif(log)


# --- JUnit ---------------------------------------------------------------------------------
def parse_junit(text: str) -> ET.Element:
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n')
    return ET.fromstring(text.encode("utf-8"))


def test_junit_parses_back(diag):
    root = parse_junit(junit.render_junit(diag, "error"))
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    suite = suites[0]
    for el in (root, suite):
        assert (el.get("tests"), el.get("failures"), el.get("errors"), el.get("skipped")) == ("5", "1", "0", "1")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["OD101 vanishing-gradients", "OD201 ill-conditioning", "OD301 bad-init",
                                              "OD402 lr-too-low", "OD503 overfitting"]
    assert {c.get("classname") for c in cases} == {"optdoctor.deep-mlp"}
    by = {c.get("name").split()[0]: c for c in cases}
    failure = by["OD101"].find("failure")
    assert failure.get("message") == "gradients shrink 0.31x per layer"
    assert failure.get("type") == "error"
    assert "grad.depth_ratio = 2.5e-06" in failure.text and "1. Use ReLU instead of sigmoid." in failure.text
    assert by["OD101"].get("line") == "7" and by["OD101"].get("file") == "configs/deep-mlp.yaml"
    assert by["OD201"].find("skipped").get("message") == "missing symptoms: hess.effective_condition"
    assert list(by["OD301"]) == []  # passed, nothing to say
    for rid in ("OD402", "OD503"):  # fired below --fail-on error: passing, noted
        assert by[rid].find("failure") is None
        assert "below --fail-on error" in by[rid].find("system-out").text
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props == {"config": "configs/deep-mlp.yaml", "status": "completed", "fail-on": "error"}


@pytest.mark.parametrize("fail_on,failures", [("never", 0), ("error", 1), ("warning", 2), ("info", 3)])
def test_junit_failures_follow_fail_on(diag, fail_on, failures):
    root = parse_junit(junit.render_junit(diag, fail_on))
    assert root.get("failures") == str(failures)
    assert len(root.findall(".//failure")) == failures


def test_junit_escapes_what_xml_cannot_carry(rules):
    d = make_diag(rules)
    d.findings[0].summary = 'a < b & "c" \x00 \x1b[31m ]]> done'
    d.name = "odd&<name>"
    text = junit.render_junit(d)
    root = parse_junit(text)
    case = root.find("testsuite/testcase")
    assert case.get("classname") == "optdoctor.odd&<name>"
    assert case.find("failure").get("message") == 'a < b & "c" \ufffd \ufffd[31m ]]> done'


# --- GitHub annotations ----------------------------------------------------------------------
def test_github_levels_and_locations(diag):
    lines = github.render_github(diag).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("::error file=configs/deep-mlp.yaml,line=7,col=9,title=OD101 vanishing-gradients::")
    assert lines[1].startswith("::warning file=configs/deep-mlp.yaml,line=12,col=7,title=OD402 lr-too-low::")
    assert lines[2].startswith("::notice title=OD503 overfitting::")  # no location: no file property
    assert lines[0].split("::", 2)[2] == ("gradients shrink 0.31x per layer%0Aevidence: grad.depth_ratio=2.5e-06, "
                                          "grad.layer_factor=0.312346, loss.progress=0.02%0Aconfig key: model.args.act"
                                          "%0Aremedy 1: Use ReLU instead of sigmoid.%0Aremedy 2: Add residual connections.")


def test_github_escaping():
    f = Finding("OD402", "lr-too-low", "lr_too_low", "warning", 0.7, "100% off: a, b\r\nnext line",
                location={"file": "cfg/a:b,c%.yaml", "line": 3, "col": 1})
    line = github.annotation(f)
    assert line == "::warning file=cfg/a%3Ab%2Cc%25.yaml,line=3,col=1,title=OD402 lr-too-low::100%25 off: a, b%0D%0Anext line"
    assert "\n" not in line and "\r" not in line
    assert github.escape_property("x:y,z%\n") == "x%3Ay%2Cz%25%0A"
    assert github.escape_data("x:y,z%\r") == "x:y,z%25%0D"  # ':' and ',' stay in the message


def test_github_no_findings(rules):
    d = make_diag(rules, dict(SYMPTOMS, **{"grad.depth_ratio": 1.0, "update.ratio": 1e-2, "gap.val_train": 0.0}))
    assert d.findings == []
    assert github.render_github(d) == ""
    root = parse_junit(junit.render_junit(d))
    assert root.get("failures") == "0" and root.get("tests") == "5"
    validate_sarif(json.loads(sarif.render_sarif(d, "error", rules)))


# --- determinism ----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["sarif", "junit", "github", "json"])
def test_byte_identical(rules, fmt):
    kwargs = {"rules": rules} if fmt == "sarif" else {}
    a = REPORTERS[fmt](make_diag(rules), "error", **kwargs)
    b = REPORTERS[fmt](make_diag(rules), "error", **kwargs)
    assert a.encode() == b.encode()


def test_sarif_has_no_timestamps_or_absolute_paths(diag, rules):
    out = sarif.render_sarif(diag, "error", rules)
    assert "Utc" not in out and "time" not in out.lower()
    assert str(Path.cwd()) not in out and "/tmp/" not in out


def test_no_torch_import():
    code = textwrap.dedent("""
        import sys
        import optdoctor.settings, optdoctor.report.sarif, optdoctor.report.junit, optdoctor.report.github
        assert "torch" not in sys.modules, "torch imported"
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


def test_hand_made_outcome_without_finding_and_finding_without_outcome():
    # a Diagnosis assembled elsewhere: a finding whose rule has no outcome still gets a testcase
    f = Finding("OD101", "vanishing-gradients", "vanishing_gradients", "error", 0.9, "s", {"grad.depth_ratio": 1e-7})
    d = Diagnosis("x", "x.yaml", [f], [RuleOutcome("OD301", "bad-init", "bad_init", "passed")], {},
                  ProbeSet({"baseline": Trace("baseline")}))
    root = parse_junit(junit.render_junit(d))
    assert [c.get("name") for c in root.iter("testcase")] == ["OD301 bad-init", "OD101 vanishing-gradients"]
    assert root.get("failures") == "1"
    validate_sarif(json.loads(sarif.render_sarif(d)))


def test_text_report_prints_brackets_in_remedies_as_written(diag):
    """Remedy texts are data, not rich markup: "pip install 'optdoctor[optimizers]'" must survive."""
    f = diag.findings[0]
    f.remedies = ["pip install 'optdoctor[optimizers]' then use [bold]Shampoo[/bold]"] + list(f.remedies)
    out = REPORTERS["text"](diag)
    assert "optdoctor[optimizers]" in out and "[bold]Shampoo[/bold]" in out
