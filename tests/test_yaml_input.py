"""YAML input read with limits (optdoctor/yamlio.py): a hostile config or rule pack fails fast
with exit 2 and a located message, and never hangs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optdoctor.config import load_config
from optdoctor.engine.rules import load_rule_file
from optdoctor.errors import ConfigError, RuleError
from optdoctor.yamlio import MAX_ALIASES, MAX_BYTES, MAX_DEPTH, MAX_NODES

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_runs" / "healthy-adam-mlp.yaml"


def billion_laughs(levels: int = 9) -> str:
    """9 aliases of 9 aliases of ...: 387 million strings from 600 bytes."""
    lines = ['lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"lol{i}: &lol{i} [" + ", ".join([f"*lol{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def config_with(extra: str) -> str:
    return SAMPLE.read_text() + extra


def load_problems(loader, error, path: Path) -> list[str]:
    with pytest.raises(error) as info:
        loader(path)
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize("loader,error", [(load_config, ConfigError), (load_rule_file, RuleError)], ids=["config", "rule"])
@pytest.mark.parametrize("text,where,message", [
    (billion_laughs(), ":5:", f"YAML too complex: more than {MAX_NODES:,} values once its aliases are expanded"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", f":1:{3 + MAX_DEPTH}:", f"YAML too complex: nested more than {MAX_DEPTH} levels deep"),
    ("a: &x 1\nb: [" + ", ".join(["*x"] * (MAX_ALIASES + 1)) + "]\n", ":2:", f"YAML too complex: more than {MAX_ALIASES} aliases"),
], ids=["billion-laughs", "deep", "aliases"])
def test_hostile_yaml_fails_fast_and_located(loader, error, text, where, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("hostile.yaml").write_text(text)
    t0 = time.perf_counter()
    problems = load_problems(loader, error, Path("hostile.yaml"))
    assert time.perf_counter() - t0 < 2.0  # ~0.4 s alone (PyYAML's scanner looks 1024 characters ahead)
    assert len(problems) == 1 and problems[0].startswith("hostile.yaml" + where) and message in problems[0], problems


@pytest.mark.parametrize("text", [
    "a: [" + ("[" * 60 + "]" * 60 + ", ") * 2000 + "]",  # as deep as allowed, again and again
    "a: [" + "1, " * (MAX_BYTES // 3 - 10) + "]",  # as long a list as the size allows
], ids=["nested", "flat"])
def test_the_slowest_files_within_the_limits_still_fail_fast(text, tmp_path):
    """PyYAML is pure Python (~50 us a value): the limits are what bounds the time."""
    path = tmp_path / "slow.yaml"
    path.write_text(text)
    t0 = time.perf_counter()
    problems = load_problems(load_config, ConfigError, path)
    assert time.perf_counter() - t0 < 2.0 and f"more than {MAX_NODES:,} values" in problems[0]


def test_limits_leave_room_for_real_files(tmp_path):
    """Exactly MAX_ALIASES aliases and a merge key load; the limits bite only beyond them."""
    path = tmp_path / "cfg.yaml"
    path.write_text(config_with("\nx-anchors: &x 1\n") .replace("name: healthy-adam-mlp", "name: ok") + "x: [" + ", ".join(["*x"] * MAX_ALIASES) + "]\n")
    problems = load_problems(load_config, ConfigError, path)
    assert all("too complex" not in p for p in problems) and any("unknown key 'x'" in p for p in problems)


def test_too_large_file(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(config_with("# " + "x" * MAX_BYTES + "\n"))
    assert load_problems(load_config, ConfigError, path) == [f"{path}: larger than 256 KiB: optdoctor reads config files of at most 256 KiB"]


@pytest.mark.parametrize("value,message", [
    ("1" * 5000, "invalid YAML value '1111111111111111111111111111111111111...'"),
    ("2001-02-30", "invalid YAML value '2001-02-30': day is out of range for month"),
])
def test_scalars_python_refuses_are_config_errors(value, message, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(SAMPLE.read_text().replace("name: healthy-adam-mlp", f"name: {value}"))
    problems = load_problems(load_config, ConfigError, path)
    assert any(p.startswith(f"{path}:") and "name: " + message in p for p in problems), problems


@pytest.mark.parametrize("command", ["diagnose", "rules validate"])
def test_bomb_exit_2_within_2_seconds(command, tmp_path):
    """The observed hang: the billion laughs in a config or a rule pack, end to end."""
    if command == "diagnose":
        target = tmp_path / "bomb.yaml"
        target.write_text(config_with(billion_laughs().replace("lol0:", "x0:")))
    else:
        target = tmp_path / "pack"
        target.mkdir()
        (target / "OD999-bomb.yaml").write_text(billion_laughs())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    seconds = []
    for _ in range(2):  # the better of two: a busy CI machine should not fail this, a hang would
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "optdoctor", *command.split(), str(target)],
                             capture_output=True, text=True, timeout=30, env=env)
        seconds.append(time.perf_counter() - t0)
        if seconds[-1] < 2.0:
            break
    assert out.returncode == 2, out.stderr
    assert "YAML too complex" in out.stderr and "Traceback" not in out.stderr
    assert min(seconds) < 2.0, f"{command} took {seconds} s"
