"""The shipped rule pack, the rule-file validator, and evaluation semantics."""

from __future__ import annotations

import math
import textwrap

import pytest

from optdoctor.engine.evaluate import Selection, evaluate, holds
from optdoctor.engine.rules import load_rule_file, load_rules
from optdoctor.engine.testing import run_rule_tests
from optdoctor.errors import RuleError
from optdoctor.findings import CAUSES

PACK = load_rules()


def test_every_cause_has_a_rule():
    assert {r.cause for r in PACK} == set(CAUSES)


@pytest.mark.parametrize("rule", PACK, ids=lambda r: r.id)
def test_rule_has_tests_beside_it(rule):
    for kind in ("fires", "near_miss", "neighbour"):
        assert rule.tests.get(kind), f"{rule.id} has no {kind} case"
    for section in ("what", "why", "detection", "false_positives"):
        assert rule.docs.get(section)
    assert rule.remedies and rule.references


CASES = run_rule_tests(PACK)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.rule}-{c.kind}-{c.index}")
def test_rule_case(case):
    assert case.ok, case.message


def test_rule_tests_can_fail(tmp_path):
    """The fixture runner is not vacuous: a wrong expectation is reported."""
    f = tmp_path / "OD999-x.yaml"
    f.write_text(RULE.replace("fires:\n    - {loss.rel_drop: 0.01}", "fires:\n    - {loss.rel_drop: 0.9}"))
    results = run_rule_tests([load_rule_file(f)])
    assert [r.ok for r in results if r.kind == "fires"] == [False]


RULE = textwrap.dedent("""\
    id: OD999
    name: test-rule
    cause: lr_too_low
    severity: warning
    confidence: 0.5
    when: loss.rel_drop < params.drop_max
    params:
      drop_max: {default: 0.1, doc: "x"}
    summary: "dropped {loss.rel_drop:.2f}"
    remedies: ["raise it"]
    docs: {what: a, why: b, detection: c, false_positives: d}
    tests:
      fires:
        - {loss.rel_drop: 0.01}
      near_miss:
        - {loss.rel_drop: 0.2}
      neighbour: []
    """)


def write(tmp_path, text, name="OD999-test.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def problems(path):
    with pytest.raises(RuleError) as e:
        load_rule_file(path)
    return [str(p) for p in e.value.problems]


def test_valid_rule_loads(tmp_path):
    r = load_rule_file(write(tmp_path, RULE))
    assert r.id == "OD999" and r.params["drop_max"].default == 0.1


BAD = [
    ("unknown-symptom", ("when: loss.rel_drop < params.drop_max", "when: loss.rel_dorp < params.drop_max"),
     ":6:7: when: unknown name 'loss.rel_dorp'", "loss.rel_drop"),
    ("unknown-key", ("severity: warning", "severty: warning"), ":4:1: severty: unknown key 'severty'", "severity"),
    ("bad-cause", ("cause: lr_too_low", "cause: lr_to_low"), ":3:8: cause: unknown cause 'lr_to_low'", "lr_too_low"),
    ("bad-id", ("id: OD999", "id: X1"), ":1:5: id: rule id must look like OD123", None),
    ("escape-attempt", ("when: loss.rel_drop < params.drop_max", "when: ().__class__.__bases__"), ":6:", None),
    ("bad-summary-name", ('summary: "dropped {loss.rel_drop:.2f}"', 'summary: "dropped {loss.rel_drp}"'),
     "summary: unknown name 'loss.rel_drp'", "loss.rel_drop"),
    ("unused-param", ("when: loss.rel_drop < params.drop_max", "when: loss.rel_drop < 0.1"), "param 'drop_max' is not used", None),
    ("bare-number", ("when: loss.rel_drop < params.drop_max", "when: loss.rel_drop + params.drop_max"), "must be a comparison", None),
]


@pytest.mark.parametrize("case", BAD, ids=lambda c: c[0])
def test_bad_rule_is_located(tmp_path, case):
    _, (old, new), fragment, suggestion = case
    assert old in RULE
    msgs = problems(write(tmp_path, RULE.replace(old, new)))
    assert any(fragment in m for m in msgs), msgs
    if suggestion:
        assert any(f"did you mean '{suggestion}'" in m for m in msgs), msgs


def test_duplicate_ids_across_files(tmp_path):
    write(tmp_path, RULE, "a.yaml")
    write(tmp_path, RULE, "b.yaml")
    with pytest.raises(RuleError, match="duplicate rule id OD999"):
        load_rules([tmp_path])


def test_yaml_syntax_error_is_located(tmp_path):
    msgs = problems(write(tmp_path, "id: OD999\nname: [unclosed\n"))
    assert any(":3:" in m or ":2:" in m for m in msgs), msgs


def test_validating_does_not_import_torch(tmp_path):
    import subprocess
    import sys

    code = "import sys; from optdoctor.engine.rules import load_rules; load_rules(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- evaluation semantics ---------------------------------------------------------------

def rule(tmp_path, **changes):
    text = RULE
    for k, v in changes.items():
        text = text.replace(f"{k}:", f"{v}\n{k}:", 1) if k == "params" else text
    return load_rule_file(write(tmp_path, text))


def test_persistence_and_onset(tmp_path):
    r = load_rule_file(write(tmp_path, RULE.replace("params:", "for: 2\nparams:")))
    snaps = [(10, {"loss.rel_drop": 0.5}), (20, {"loss.rel_drop": 0.05}), (30, {"loss.rel_drop": 0.05})]
    findings, outcomes = evaluate([r], snaps)
    assert [f.onset for f in findings] == [20]
    findings, _ = evaluate([r], snaps[:2])  # held only at the last snapshot: not yet
    assert findings == []


def test_missing_symptom_is_not_evaluated(tmp_path):
    r = load_rule_file(write(tmp_path, RULE))
    findings, outcomes = evaluate([r], [(0, {"loss.initial": 1.0})])
    assert findings == [] and outcomes[0].status == "not_evaluated" and "loss.rel_drop" in outcomes[0].reason


def test_optional_symptom_reads_as_nan(tmp_path):
    text = RULE.replace("when: loss.rel_drop < params.drop_max",
                        "when: loss.rel_drop < params.drop_max and not (plateau.escape > 0.5)\noptional: [plateau.escape]")
    r = load_rule_file(write(tmp_path, text))
    assert holds(r, {"loss.rel_drop": 0.0}) is True
    assert holds(r, {"loss.rel_drop": 0.0, "plateau.escape": 0.9}) is False


def test_param_override_and_selection(tmp_path):
    r = load_rule_file(write(tmp_path, RULE))
    snaps = [(0, {"loss.rel_drop": 0.05})]
    assert len(evaluate([r], snaps)[0]) == 1
    assert evaluate([r], snaps, Selection(params={"OD999": {"drop_max": 0.01}}))[0] == []
    assert evaluate([r], snaps, Selection(ignore=["OD9"]))[0] == []
    assert evaluate([r], snaps, Selection(select=["OD1"]))[0] == []
    assert evaluate([r], snaps, Selection(select=["OD99"]))[0] != []
    f = evaluate([r], snaps, Selection(severity={"OD999": "error"}))[0][0]
    assert f.severity == "error" and f.summary == "dropped 0.05" and f.evidence == {"loss.rel_drop": 0.05}


def test_ruled_out_by_another_cause(tmp_path):
    a = load_rule_file(write(tmp_path, RULE))
    b = load_rule_file(write(tmp_path, RULE.replace("OD999", "OD998").replace("cause: lr_too_low", "cause: saddle_point")
                             .replace("params:", "ruled_out_by: [lr_too_low]\nparams:"), "b.yaml"))
    findings, outcomes = evaluate([a, b], [(0, {"loss.rel_drop": 0.0})])
    assert [f.rule for f in findings] == ["OD999"]
    assert {o.rule: o.status for o in outcomes} == {"OD999": "fired", "OD998": "ruled_out"}


def test_ranking_severity_confidence_onset():
    from optdoctor.findings import Finding

    fs = [Finding("OD3", "c", "bad_init", "warning", 0.9, ""), Finding("OD1", "a", "bad_init", "error", 0.5, "", onset=50),
          Finding("OD2", "b", "bad_init", "error", 0.5, "", onset=10), Finding("OD4", "d", "bad_init", "error", 0.8, "", onset=90)]
    assert [f.rule for f in sorted(fs, key=lambda f: f.sort_key())] == ["OD4", "OD2", "OD1", "OD3"]


def test_nan_symptom_never_fires(tmp_path):
    r = load_rule_file(write(tmp_path, RULE))
    assert holds(r, {"loss.rel_drop": math.nan}) is False


# --- verify: and gate: ----------------------------------------------------------------------
def test_verify_names_the_symptom_that_judges_a_remedy(tmp_path):
    assert load_rule_file(write(tmp_path, RULE)).verify == "loss.final"  # the default
    assert {r.id: r.verify for r in PACK}["OD501"] == "val.final"  # overfitting: judged on validation
    assert load_rule_file(write(tmp_path, RULE + "verify: val.final\n")).verify == "val.final"
    msgs = problems(write(tmp_path, RULE + "verify: val.fnal\n"))
    assert any(":18:9: verify:" in m and "unknown symptom 'val.fnal'" in m and "did you mean 'val.final'" in m for m in msgs), msgs


def test_a_gate_is_checked_like_a_condition_and_may_use_its_own_params(tmp_path):
    gated = RULE.replace('params:\n', 'gate: loss.late_rel_drop < params.flat_max\nparams:\n  flat_max: {default: 0.02, doc: "y"}\n')
    r = load_rule_file(write(tmp_path, gated))
    assert r.gate_open({"loss.late_rel_drop": 0.01}) and not r.gate_open({"loss.late_rel_drop": 0.03})
    assert r.gate_open({"loss.late_rel_drop": 0.03}, {"flat_max": 0.05})  # overridden like the condition's
    assert not r.gate_open({})  # a missing symptom keeps the gate shut
    assert load_rule_file(write(tmp_path, RULE)).gate is None
    msgs = problems(write(tmp_path, gated.replace("gate: loss.late_rel_drop", "gate: loss.late_rel_drp")))
    assert any(":7:7: gate: unknown name 'loss.late_rel_drp'" in m for m in msgs), msgs
    msgs = problems(write(tmp_path, gated.replace("gate: loss.late_rel_drop < params.flat_max", "gate: loss.late_rel_drop < 0.02")))
    assert any("param 'flat_max' is not used by the condition or the gate" in m for m in msgs), msgs

