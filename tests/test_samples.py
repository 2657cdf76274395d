"""Every sample run gives what its manifest says, through the CLI, and reproducibly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from optdoctor.cli import app

pytestmark = pytest.mark.slow  # every test here runs whole diagnoses through the CLI

SAMPLES = Path(__file__).resolve().parents[1] / "sample_runs"
MANIFEST = yaml.safe_load((SAMPLES / "manifest.yaml").read_text())
runner = CliRunner()


def diagnose(name: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["diagnose", str(SAMPLES / name), "--format", "json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.stdout)


def test_manifest_covers_every_sample_and_cause():
    configs = {p.name for p in SAMPLES.glob("*.yaml") if p.name != "manifest.yaml"}
    assert configs == set(MANIFEST)
    from optdoctor.findings import CAUSES

    shown = {c for m in MANIFEST.values() for c in m.get("expect", [])}
    assert shown == set(CAUSES)
    assert sum(bool(m.get("healthy")) for m in MANIFEST.values()) >= 2


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_sample(name):
    want = MANIFEST[name]
    code, report = diagnose(name)
    serious = [f for f in report["findings"] if f["severity"] in ("warning", "error")]
    causes = {f["cause"] for f in serious}
    if want.get("healthy"):
        assert not serious, [f["summary"] for f in serious]
        assert code == 0
        return
    assert set(want["expect"]) <= causes, (causes, [f["summary"] for f in serious])
    assert report["findings"][0]["cause"] == want["top"], [f["rule"] for f in report["findings"]]
    for f in report["findings"]:  # a finding cites the evidence it rests on
        assert f["evidence"] and f["remedies"] and f["summary"]
    assert code == (1 if any(f["severity"] == "error" for f in report["findings"]) else 0)


def test_same_seed_same_bytes():
    a = runner.invoke(app, ["diagnose", str(SAMPLES / "lr-too-low.yaml"), "--format", "json"])
    b = runner.invoke(app, ["diagnose", str(SAMPLES / "lr-too-low.yaml"), "--format", "json"])
    assert a.stdout == b.stdout
