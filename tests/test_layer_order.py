"""Every per-layer series follows one layer order, fixed before anything attaches: a network
whose modules are registered head-first must be diagnosed exactly as the same network
registered in forward order (issue: columns attributed to the wrong layers hid OD101)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from optdoctor.cli import app

FIXTURES = Path(__file__).parent / "fixtures" / "order"
# per-layer and loss symptoms must agree to rounding; curvature and the perturbation probe draw
# random vectors in parameter order, which registration changes, so they only agree roughly
EXACT = ("grad.", "update.", "act.", "loss.", "weight.", "val.", "gap.", "lr.")


def diagnose(name: str) -> dict:
    result = CliRunner().invoke(app, ["diagnose", str(FIXTURES / name), "--check", "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


@pytest.mark.slow
def test_reverse_registered_model_gets_the_same_diagnosis():
    fwd, rev = diagnose("forward.yaml"), diagnose("reverse.yaml")
    assert [f["rule"] for f in fwd["findings"]] == [f["rule"] for f in rev["findings"]] == ["OD101"]
    assert fwd["findings"][0]["evidence"] == pytest.approx(rev["findings"][0]["evidence"], rel=1e-4)
    assert rev["symptoms"]["grad.depth_ratio"] < 1e-6  # the input layer's gradient, not the head's
    for name, value in fwd["symptoms"].items():
        if name.startswith(EXACT) and isinstance(value, float):
            assert rev["symptoms"][name] == pytest.approx(value, rel=1e-4, abs=1e-12), name
        elif name.startswith("hess.lambda_max"):
            assert rev["symptoms"][name] == pytest.approx(value, rel=1e-3), name
