"""[tool.optdoctor] settings: discovery, validation with located errors, precedence, overrides."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from optdoctor.engine.evaluate import Selection, evaluate
from optdoctor.engine.rules import load_rules, shipped_rules_dir
from optdoctor.errors import UsageError
from optdoctor.settings import (
    Settings,
    discover_settings,
    find_settings,
    load_settings,
    locate,
    merge_selection,
    parse_param_override,
    resolve_fail_on,
    rule_paths,
    validate_against,
)

DOCS = "docs: {what: w, why: w, detection: w, false_positives: w}\n"
RULES = {
    "od101.yaml": "id: OD101\nname: vanishing-gradients\ncause: vanishing_gradients\nseverity: error\nconfidence: 0.8\n"
                  "when: grad.depth_ratio < params.ratio_max\nparams: {ratio_max: {default: 1.0e-3}}\n"
                  "summary: s\nremedies: [r]\n" + DOCS,
    "od102.yaml": "id: OD102\nname: exploding-gradients\ncause: exploding_gradients\nseverity: error\nconfidence: 0.8\n"
                  "when: grad.global_growth > params.growth_min\nparams: {growth_min: {default: 100}}\n"
                  "summary: s\nremedies: [r]\n" + DOCS,
    "od401.yaml": "id: OD401\nname: lr-too-high\ncause: lr_too_high\nseverity: warning\nconfidence: 0.8\n"
                  "when: loss.diverged > 0.5\nsummary: s\nremedies: [r]\n" + DOCS,
}


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rules")
    for name, text in RULES.items():
        (folder / name).write_text(text)
    return load_rules([folder])


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems(excinfo) -> list[str]:
    return [str(p) for p in excinfo.value.problems]


# --- discovery -------------------------------------------------------------------------------
def test_discovery_walks_up_and_skips_pyprojects_without_the_table(tmp_path):
    top = write(tmp_path / "repo" / "pyproject.toml", """
        [project]
        name = "x"
        [tool.optdoctor]
        select = ["OD1"]
    """)
    write(tmp_path / "repo" / "sub" / "pyproject.toml", "[project]\nname = 'inner'\n[tool.ruff]\nline-length = 100\n")
    configs = tmp_path / "repo" / "sub" / "configs" / "deep"
    configs.mkdir(parents=True)
    cfg = write(configs / "mlp.yaml", "name: x\n")
    assert find_settings(configs) == top.resolve()
    assert find_settings(cfg) == top.resolve()  # a file: start from its folder
    assert discover_settings(configs).select == ["OD1"]


def test_closest_folder_wins_and_optdoctor_toml_beats_pyproject_in_one_folder(tmp_path):
    write(tmp_path / "pyproject.toml", "[tool.optdoctor]\nselect = ['OD4']\n")
    near = write(tmp_path / "a" / "pyproject.toml", "[tool.optdoctor]\nselect = ['OD1']\n")
    own = write(tmp_path / "a" / "optdoctor.toml", "select = ['OD102']\n")
    assert find_settings(tmp_path / "a") == own.resolve()
    s = discover_settings(tmp_path / "a")
    assert s.select == ["OD102"] and s.prefix == ""
    own.unlink()
    assert find_settings(tmp_path / "a") == near.resolve()
    assert find_settings(tmp_path) == (tmp_path / "pyproject.toml").resolve()


def test_no_settings_file_means_defaults(tmp_path):
    found = find_settings(tmp_path)
    if found is not None:  # a settings file above the temp folder on this machine
        assert tmp_path.resolve() not in found.parents
    else:
        assert discover_settings(tmp_path) == Settings()


def test_full_file_is_read(tmp_path):
    write(tmp_path / "ci" / "rules" / "extra.yaml", RULES["od401.yaml"].replace("OD401", "OD901"))
    path = write(tmp_path / "pyproject.toml", """
        [tool.optdoctor]
        select = ["OD1", "OD4"]
        extend-select = ["OD9"]
        ignore = ["OD102"]
        fail-on = "warning"
        rules = ["ci/rules"]

        [tool.optdoctor.severity]
        OD101 = "warning"

        [tool.optdoctor.params.OD101]
        ratio_max = 1e-4
        [tool.optdoctor.params]
        OD102 = { growth_min = 50 }
    """)
    s = load_settings(path)
    assert s.select == ["OD1", "OD4"] and s.extend_select == ["OD9"] and s.ignore == ["OD102"]
    assert s.fail_on == "warning" and s.severity == {"OD101": "warning"}
    assert s.params == {"OD101": {"ratio_max": 1e-4}, "OD102": {"growth_min": 50.0}}
    assert [Path(p).resolve() for p in s.rules] == [(tmp_path / "ci" / "rules").resolve()]  # relative to the file
    assert rule_paths(s) == [str(shipped_rules_dir()), *s.rules]  # extra: added to the shipped pack
    assert rule_paths(s, ["mine"]) == ["mine"]  # --rules replaces
    assert rule_paths(Settings()) is None


# --- validation ------------------------------------------------------------------------------
def test_bad_severity_is_located(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "pyproject.toml", """
        [project]
        name = "x"

        [tool.optdoctor.severity]
        OD102 = "error"
        OD101 = "fatal"
    """)
    with pytest.raises(UsageError) as e:
        load_settings("pyproject.toml")
    assert e.value.exit_code == 2
    assert problems(e) == ["pyproject.toml:6:1: tool.optdoctor.severity.OD101: must be one of info, warning, error, got 'fatal'"]


def test_every_problem_at_once_with_suggestions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "pyproject.toml", """
        [tool.optdoctor]
        fail_on = "warning"
        select = "OD1"
        severity = { OD101 = "warn" }
        rules = ["missing-folder"]

        [tool.optdoctor.params.OD101]
        ratio_max = "small"
    """)
    with pytest.raises(UsageError) as e:
        load_settings("pyproject.toml")
    assert problems(e) == [
        "pyproject.toml:2:1: tool.optdoctor.fail_on: unknown key 'fail_on'; did you mean 'fail-on'?",
        "pyproject.toml:3:1: tool.optdoctor.select: must be a list of non-empty strings (rule id prefixes such as \"OD1\" or rule names)",
        "pyproject.toml:4:14: tool.optdoctor.severity.OD101: must be one of info, warning, error, got 'warn'; did you mean 'warning'?",
        "pyproject.toml:5:10: tool.optdoctor.rules: no such rule file or folder: 'missing-folder' (relative to pyproject.toml)",
        "pyproject.toml:8:1: tool.optdoctor.params.OD101.ratio_max: must be a number, got 'small'",
    ]


@pytest.mark.parametrize("text,expected", [
    ("fail-on = 'sometimes'\n", "optdoctor.toml:1:1: fail-on: must be one of error, warning, info, never, got 'sometimes'"),
    ("select = []\n", "optdoctor.toml:1:1: select: an empty select would run no rule; leave select out to run every rule"),
    ("[tool.optdoctor]\nselect = ['OD1']\n",
     "optdoctor.toml:1:2: tool: unknown key 'tool'; use the keys at the top level of optdoctor.toml (no [tool.optdoctor] table there)"),
    ("select = ['OD1',, ]\n", "optdoctor.toml:1:17: invalid TOML: Invalid value"),
    ("select = ['OD1'\n", "optdoctor.toml: invalid TOML: Unclosed array (at end of document)"),
    ("[params]\nOD101 = { ratio_max = true }\n", "optdoctor.toml:2:11: params.OD101.ratio_max: must be a number, got True"),
    ("[params]\nOD101 = { ratio_max = nan }\n", "optdoctor.toml:2:11: params.OD101.ratio_max: must be a number, got nan"),
])
def test_optdoctor_toml_problems(tmp_path, monkeypatch, text, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "optdoctor.toml").write_text(text)
    with pytest.raises(UsageError) as e:
        load_settings("optdoctor.toml")
    assert problems(e) == [expected]


def test_broken_pyproject_that_is_not_ours_is_passed_by(tmp_path):
    write(tmp_path / "pyproject.toml", "[project\nname = 'x'\n")
    assert find_settings(tmp_path) in (None,) or tmp_path.resolve() not in find_settings(tmp_path).parents
    write(tmp_path / "pyproject.toml", "[tool.optdoctor\nselect = ['x']\n")
    assert find_settings(tmp_path) == (tmp_path / "pyproject.toml").resolve()
    with pytest.raises(UsageError):
        discover_settings(tmp_path)


def test_locate():
    text = 'a = 1\n[tool.optdoctor]\nselect = [\n  "OD1",\n  "XX",\n]\nseverity = { OD101 = "x", "OD102" = "y" }\n'
    assert locate(text, ["tool", "optdoctor"]) == (2, 2)
    assert locate(text, ["tool", "optdoctor", "select"]) == (3, 1)
    assert locate(text, ["tool", "optdoctor", "select"], item="XX") == (5, 3)
    assert locate(text, ["tool", "optdoctor", "severity", "OD102"]) == (7, 27)
    assert locate(text, ["tool", "optdoctor", "nothing"]) == (2, 2)  # the closest ancestor
    assert locate(text, ["elsewhere"]) is None


# --- --param -------------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("OD101.ratio_max=1e-3", ("OD101", "ratio_max", 1e-3)),
    (" OD101.ratio_max = 2 ", ("OD101", "ratio_max", 2.0)),
    ("OD101.ratio_max=inf", ("OD101", "ratio_max", float("inf"))),
])
def test_parse_param_override(text, expected):
    assert parse_param_override(text) == expected


@pytest.mark.parametrize("text,message", [
    ("OD101.ratio_max", "--param: 'OD101.ratio_max': expected RULE.PARAM=NUMBER, e.g. OD101.ratio_max=1e-3"),
    ("ratio_max=1", "--param: 'ratio_max=1': expected RULE.PARAM=NUMBER, e.g. OD101.ratio_max=1e-3"),
    ("OD101.=1", "--param: 'OD101.=1': expected RULE.PARAM=NUMBER, e.g. OD101.ratio_max=1e-3"),
    ("od101.ratio_max=1", "--param: 'od101.ratio_max=1': rule ids are upper case; did you mean 'OD101.ratio_max=1'?"),
    ("OD 101.ratio_max=1", "--param: 'OD 101.ratio_max=1': 'OD 101' is not a rule id (like OD101)"),
    ("OD101.RatioMax=1", "--param: 'OD101.RatioMax=1': param names are lower_snake_case, got 'RatioMax'"),
    ("OD101.ratio_max=small", "--param: 'OD101.ratio_max=small': 'small' is not a number (expected RULE.PARAM=NUMBER, e.g. OD101.ratio_max=1e-3)"),
    ("OD101.ratio_max=nan", "--param: 'OD101.ratio_max=nan': nan is not a threshold: every comparison with it is false"),
])
def test_bad_param_override_forms(text, message):
    with pytest.raises(UsageError) as e:
        parse_param_override(text)
    assert e.value.exit_code == 2
    assert problems(e) == [message]


# --- precedence ------------------------------------------------------------------------------
FILE = Settings(file="pyproject.toml", select=["OD1"], extend_select=["OD401"], ignore=["OD102"],
                severity={"OD101": "warning", "OD102": "info"},
                params={"OD101": {"ratio_max": 1e-4}, "OD102": {"growth_min": 50.0}}, fail_on="warning")


def test_defaults_when_nothing_is_set():
    assert merge_selection(None) == Selection()
    assert merge_selection(Settings()) == Selection()
    assert resolve_fail_on(None, None) == "error"


def test_file_beats_rule_defaults():
    sel = merge_selection(FILE)
    assert sel.select == ["OD1", "OD401"] and sel.ignore == ["OD102"]
    assert sel.severity == {"OD101": "warning", "OD102": "info"}
    assert sel.params == {"OD101": {"ratio_max": 1e-4}, "OD102": {"growth_min": 50.0}}
    assert resolve_fail_on(FILE, None) == "warning"


def test_command_line_beats_file():
    sel = merge_selection(FILE, ["OD102"], ["OD101"], ["OD101.ratio_max=1e-2", "OD102.growth_min=7"],
                          cli_extend_select=["OD4"])
    # --select starts over (ruff's layers): the file's select, extend-select and ignore are dropped
    assert sel.select == ["OD102", "OD4"] and sel.ignore == ["OD101"]
    assert sel.severity == {"OD101": "warning", "OD102": "info"}  # the file's: no flag overrides it
    assert sel.params == {"OD101": {"ratio_max": 1e-2}, "OD102": {"growth_min": 7.0}}
    assert resolve_fail_on(FILE, "never") == "never"


def test_cli_ignore_and_extend_select_add_to_the_file():
    sel = merge_selection(FILE, cli_ignore=["OD401"], cli_extend_select=["OD9"])
    assert sel.select == ["OD1", "OD401", "OD9"] and sel.ignore == ["OD102", "OD401"]
    # extending "every rule" is still every rule
    assert merge_selection(Settings(extend_select=["OD4"]), cli_extend_select=["OD9"]).select == []


def test_precedence_end_to_end(rules):
    """The merged Selection drives the real engine: which rules run, severity, thresholds."""
    symptoms = {"grad.depth_ratio": 5e-4, "grad.global_growth": 80.0, "loss.diverged": 1.0}

    def run(sel):
        findings, outcomes = evaluate(rules, [(10, symptoms)], sel)
        return {f.rule: f.severity for f in findings}, [o.rule for o in outcomes]

    # rule defaults: ratio 5e-4 < 1e-3 fires OD101; growth 80 < 100 keeps OD102 silent
    assert run(merge_selection(None)) == ({"OD101": "error", "OD401": "warning"}, ["OD101", "OD102", "OD401"])
    # file: OD101's threshold lowered to 1e-4 (silent), OD102 ignored, only OD1 + OD401 run
    assert run(merge_selection(FILE)) == ({"OD401": "warning"}, ["OD101", "OD401"])
    # command line: threshold back up, severity override, --select starts over (OD102 back in)
    sel = merge_selection(FILE, ["OD10"], (), ["OD101.ratio_max=1e-3", "OD102.growth_min=60"])
    assert run(sel) == ({"OD101": "warning", "OD102": "info"}, ["OD101", "OD102"])


# --- against the loaded rules -------------------------------------------------------------------
def test_validate_against_accepts_what_exists(rules, tmp_path):
    s = load_settings(write(tmp_path / "optdoctor.toml", """
        select = ["OD1", "lr-too-high"]
        ignore = ["OD102"]
        [severity]
        OD401 = "error"
        [params.OD101]
        ratio_max = 1e-4
    """))
    validate_against(rules, s, cli_select=["OD"], cli_params=["OD102.growth_min=3"])


def test_validate_against_unknown_ids_and_params(rules, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "pyproject.toml", """
        [tool.optdoctor]
        select = ["OD1", "OD7"]
        ignore = ["od102"]

        [tool.optdoctor.severity]
        vanishing-gradients = "warning"
        0D101 = "info"

        [tool.optdoctor.params.OD101]
        ratio_mx = 1e-4
        [tool.optdoctor.params.OD401]
        anything = 1
    """)
    s = load_settings("pyproject.toml")
    with pytest.raises(UsageError) as e:
        validate_against(rules, s, cli_select=["vanishing-gradient", "OD19"], cli_ignore=["OD2"],
                         cli_params=["OD11.ratio_max=1", "OD102.growth=2"])
    assert e.value.exit_code == 2
    assert problems(e) == [
        "pyproject.toml:2:18: tool.optdoctor.select: no rule id starts with 'OD7' and no rule is named so "
        "(rule families here: OD1, OD4)",
        "pyproject.toml:3:11: tool.optdoctor.ignore: no rule id starts with 'od102' and no rule is named so "
        "(rule families here: OD1, OD4); did you mean 'OD102'?",
        "pyproject.toml:6:1: tool.optdoctor.severity.vanishing-gradients: 'vanishing-gradients' is a rule name; "
        "use its id; did you mean 'OD101'?",
        "pyproject.toml:7:1: tool.optdoctor.severity.0D101: no rule '0D101'; did you mean 'OD101'?",
        "pyproject.toml:10:1: tool.optdoctor.params.OD101.ratio_mx: OD101 has no param 'ratio_mx' (it has ratio_max); "
        "did you mean 'ratio_max'?",
        "pyproject.toml:12:1: tool.optdoctor.params.OD401.anything: OD401 has no params",
        "--select: no rule id starts with 'vanishing-gradient' and no rule is named so (rule families here: OD1, OD4); "
        "did you mean 'vanishing-gradients'?",
        "--select: no rule id starts with 'OD19' and no rule is named so (rule families here: OD1, OD4); did you mean 'OD10'?",
        "--ignore: no rule id starts with 'OD2' and no rule is named so (rule families here: OD1, OD4)",
        "--param OD11.ratio_max: no rule 'OD11'; did you mean 'OD101'?",
        "--param OD102.growth: OD102 has no param 'growth' (it has growth_min); did you mean 'growth_min'?",
    ]


def test_params_of_an_unknown_rule_are_located_at_its_table(rules, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "optdoctor.toml").write_text("[params.OD111]\nratio_max = 1\n[params]\nOD999 = {a = 1}\n")
    with pytest.raises(UsageError) as e:
        validate_against(rules, load_settings("optdoctor.toml"))
    assert problems(e) == ["optdoctor.toml:1:2: params.OD111: no rule 'OD111'; did you mean 'OD101'?",
                           "optdoctor.toml:4:1: params.OD999: no rule 'OD999'"]
