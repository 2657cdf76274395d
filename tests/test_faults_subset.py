"""The fault benchmark's fast subset runs end to end (benchmarks/faults/).

Only that the runner works and its results are well-formed, and that every subset case carries
its verification record: no accuracy thresholds here (the rules are calibrated against the
benchmark, not against this test).
"""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("sklearn")
sys.path.insert(0, str(ROOT))

from benchmarks.faults import run  # noqa: E402

CAUSES = set(run.CAUSES)


def test_fast_subset_cases_are_verified():
    cases = run.load_cases("all", subset="fast")
    assert len(cases) >= 8
    assert {c["cause"] for c in cases} >= {"healthy", "lr_too_high", "lr_too_low"}
    for c in cases:
        assert c["kept"] and not c["dropped_because"]
        assert len(c["runs"]) == 3 and all(r["q_val"] is not None or r["diverged"] for r in c["runs"])
        if c["cause"] == "healthy":
            assert c["fix"] is None
        else:
            assert c["cause"] in CAUSES and c["fix"] and len(c["fix_runs"]) == 3
        assert (run.CASES / (c["config"]["name"] + ".yaml")).is_file()


@pytest.mark.slow
def test_fast_subset_runs(tmp_path, capsys):
    out = tmp_path / "results.json"
    assert run.main(["--split", "all", "--subset", "fast", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "Confusion matrix" in printed and "False alarms on healthy cases" in printed
    raw = json.loads(out.read_text())
    ids = {c["id"] for c in run.load_cases("all", subset="fast")}
    assert {r["id"] for r in raw["results"]} == ids
    for r in raw["results"]:
        assert "error" not in r, r  # every subset case could be diagnosed
        assert r["exit_code"] in (0, 1) and r["status"] == "completed"
        assert r["seconds"] > 0
        for f in r["findings"]:
            assert f["cause"] in CAUSES and f["severity"] in {"info", "warning", "error"}
