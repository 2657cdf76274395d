"""Fuzzing the readers of input files (hypothesis): random text, and the shipped sample configs
and rules mutated where YAML is fragile (anchors, brackets, tags, indentation, huge numbers).

Loading either succeeds or raises the project's own error (ConfigError, RuleError, UsageError:
exit 2), never another exception; the command line on such a file exits 0, 1 or 2 and prints
no traceback. Deterministic (derandomize) and bounded, so CI is stable and fast.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from optdoctor.cli import app
from optdoctor.config import load_config
from optdoctor.engine.rules import load_rule_file
from optdoctor.errors import ConfigError, RuleError, UsageError
from optdoctor.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "sample_runs").glob("*.yaml") if p.name != "manifest.yaml")
RULES = sorted((ROOT / "rules").glob("*.yaml"))
TEXTS = {p: p.read_text() for p in CONFIGS + RULES}

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
CLI_FUZZ = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Where YAML (and a YAML reader) breaks: structure, anchors and aliases, merge keys, tags,
# quotes, tabs, documents, numbers Python refuses, control and odd unicode characters.
TOKENS = ["&a ", "*a", "&b [*a, *a, *a]", "<<: *a", "<<: ", "[", "]", "{", "}", ": ", ", ", "- ", "? ",
          "!!int ", "!!float ", "!!binary ", "!!timestamp ", "!!python/object:os.system ", "!foo ", "!!set ",
          "\t", "'", '"', "\n", "  ", "    ", "#", "|", ">", "---\n", "...\n", "~", "null", "yes", "1e400",
          "-.inf", ".nan", "0x1F", "0o17", "1_000", "9" * 5000, "2001-02-30", "\x00", "\x85", "\ufeff", "\u2028",
          "é", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "@", "`", "%"]

# Whole values, put where a key's value was.
VALUES = ["*a", "&a {x: 1}", "[*a, *a]", "{<<: *a}", "[[[[[[]]]]]]", "!!int x", "!!binary '%%'", "!foo 1",
          "!!python/name:os.system", "1e400", ".nan", "9" * 5000, "-" + "9" * 5000, "2001-02-30", "2001-02-03 25:00:00",
          "0b102", "0x", "~", "''", "|\n  a\n b", "[1, 2", "{a: 1", "\"\\x\"", "@x", "`x`", "? a", "-", ": x"]

text_strategy = st.text(alphabet=st.sampled_from(list("abz019 :-[]{},&*!|>'\"#\n\t.%@`~?<=") + ["é", "\x00"]), max_size=200)


@st.composite
def mutated(draw, files: list[Path]):
    """One of ``files`` with up to 5 edits: insert a token, replace a value, delete or duplicate
    a span, swap two lines, or re-indent a line."""
    text = TEXTS[draw(st.sampled_from(files))]
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(["insert", "value", "value", "delete", "duplicate", "swap", "indent"]))
        i = draw(st.integers(0, max(0, len(text))))
        if op == "insert":
            text = text[:i] + draw(st.sampled_from(TOKENS)) + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 40)):]
        elif op == "duplicate":
            text = text[:i] + text[i:i + draw(st.integers(1, 80))] * draw(st.integers(2, 4)) + text[i:]
        else:
            lines = text.split("\n")
            a, b = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if op == "value":
                keyed = [k for k, line in enumerate(lines) if ": " in line and not line.lstrip().startswith("#")]
                if keyed:
                    k = draw(st.sampled_from(keyed))
                    lines[k] = lines[k].split(": ", 1)[0] + ": " + draw(st.sampled_from(VALUES))
            elif op == "swap":
                lines[a], lines[b] = lines[b], lines[a]
            else:
                lines[a] = " " * draw(st.integers(1, 5)) + lines[a]
            text = "\n".join(lines)
    return text


_counter = itertools.count()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def write(folder: Path, text: str, name: str = "case") -> Path:
    path = folder / f"{name}-{next(_counter)}.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


def loads_or_reports(loader, error, path: Path) -> bool:
    """True when it loaded; the project's error is a fine answer too; anything else fails."""
    try:
        loader(path)
    except error as e:
        assert e.problems and all(str(p) for p in e.problems)
        return False
    return True


@FUZZ
@given(text=text_strategy)
def test_random_text_config_and_rule(folder, text):
    path = write(folder, text)
    loads_or_reports(load_config, ConfigError, path)
    loads_or_reports(load_rule_file, RuleError, path)


@FUZZ
@given(text=mutated(CONFIGS))
def test_mutated_sample_configs(folder, text):
    loads_or_reports(load_config, ConfigError, write(folder, text))


@FUZZ
@given(text=mutated(RULES))
def test_mutated_shipped_rules(folder, text):
    loads_or_reports(load_rule_file, RuleError, write(folder, text))


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(text=st.lists(st.sampled_from(list("abz019 =[]{},.\"'#\n\t-_") + ["[params.OD101]\n", "select", "ignore", "severity", "1e400"]),
                     max_size=60).map("".join))
def test_random_settings_toml(folder, text):
    path = folder / f"t{next(_counter)}" / "optdoctor.toml"
    path.parent.mkdir()
    path.write_text(text)
    try:
        load_settings(path)
    except UsageError as e:
        assert e.problems


runner = CliRunner()


@CLI_FUZZ
@given(text=mutated(RULES))
def test_rules_validate_command_on_mutated_rules(folder, text):
    pack = folder / f"pack{next(_counter)}"
    pack.mkdir()
    (pack / "rule.yaml").write_text(text)
    r = runner.invoke(app, ["rules", "validate", str(pack)])
    assert r.exit_code in (0, 2), r.output
    assert "Traceback" not in r.output


@CLI_FUZZ
@given(text=mutated(CONFIGS))
def test_diagnose_command_on_invalid_configs(folder, text):
    path = write(folder, text)
    assume(not loads_or_reports(load_config, ConfigError, path))  # only configs that fail validation: no probing
    r = runner.invoke(app, ["diagnose", str(path), "--format", "json"])
    assert r.exit_code in (0, 1, 2), r.output
    assert r.exit_code == 2 and r.stdout == "" and "Traceback" not in r.output
