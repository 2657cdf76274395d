"""The time budget (optdoctor/probes/budget.py): parsing, planning from measured costs, and
enforcement -- on a fake clock that only a "slow" model advances, so that every number here is
deterministic (no timed asserts; the real timings are in benchmarks/budget.py and one slow
end-to-end test at the bottom)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from optdoctor.cli import _ProgressLine, app
from optdoctor.config import load_config
from optdoctor.config.schema import ProbeConfig
from optdoctor.errors import ConfigError
from optdoctor.probes.budget import HARD_FACTOR, LAST_RESORT_STEPS, MIN_STEPS, Budget, Costs, make_plan, parse_budget

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]

# --- parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("2m", 120), ("1m30s", 90), ("90", 90), (90, 90), (2.5, 2.5),
                                           ("1h", 3600), ("1h 2m 3s", 3723), (" 45S ", 45), ("0.5m", 30)])
def test_budget_parses(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "30x", "1s30m", "2m2m", "-5", "0", "0s", True, None, "30 s 5", [30], "nan", "inf"])
def test_a_bad_budget_is_refused(text):
    with pytest.raises(ValueError):
        parse_budget(text)


BASE = {
    "seed": 0,
    "model": {"factory": "user.py:slow", "args": {}},
    "data": {"factory": "optdoctor.data:blobs", "args": {"n_train": 128, "n_val": 64, "n_features": 8}, "batch_size": 32},
    "loss": "cross_entropy",
    "optimizer": {"name": "sgd", "lr": 0.05},
    "probe": {"steps": 200, "hessian": {"enabled": False}},
}

# A model whose training forward costs ``cost`` seconds of a fake clock (after ``after`` training
# forwards it costs ``later`` instead: an estimate that turns out wrong). Nothing else advances it.
USER = '''
from torch import nn

CLOCK = [0.0]
CALLS = [0]
SLOW = {"cost": 0.1, "after": 10**9, "later": 0.1}


class Slow(nn.Module):
    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 16), nn.ReLU(), nn.Linear(16, out_dim))

    def forward(self, x):
        if self.training:
            CALLS[0] += 1
            CLOCK[0] += SLOW["cost"] if CALLS[0] <= SLOW["after"] else SLOW["later"]
        return self.net(x)


def slow(in_dim=8, out_dim=4):
    return Slow(in_dim, out_dim)
'''


def write(tmp_path, **probe):
    cfg = yaml.safe_load(yaml.safe_dump(BASE))
    cfg["probe"].update(probe)
    (tmp_path / "user.py").write_text(USER)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def diagnose(tmp_path, seconds, **probe):
    """A diagnosis on the fake clock; returns (diagnosis, fake seconds at the end)."""
    from optdoctor.diagnose import run_diagnosis
    from optdoctor.probes import setup as setup_mod

    slow = probe.pop("_slow", {})
    loaded = load_config(write(tmp_path, **probe))
    user: dict = {}
    real_prepare = setup_mod.prepare

    def prepare(*a, **kw):  # reach the user module's globals once its factory is resolved
        s = real_prepare(*a, **kw)
        user.update(g=s.model_factory.__globals__)
        user["g"]["CLOCK"][0], user["g"]["CALLS"][0] = 0.0, 0
        user["g"]["SLOW"].update(slow)
        return s

    def clock():
        return user["g"]["CLOCK"][0] if user else 0.0

    setup_mod.prepare = prepare
    try:
        diag = run_diagnosis(loaded, budget=Budget(seconds, start=0.0, clock=clock))
    finally:
        setup_mod.prepare = real_prepare
    return diag, clock()


# --- planning (pure: synthetic costs) -----------------------------------------------------


def cfg(**probe):
    d = yaml.safe_load(yaml.safe_dump(BASE))
    d["probe"].update(probe)
    return ProbeConfig.model_validate(d)


COSTS = Costs(overhead=0.0, step=0.1, eval_sample=0.0, n_train=128, n_val=64)


def test_a_plan_that_fits_cuts_nothing():
    plan = make_plan(cfg(), COSTS, 1000.0)
    assert plan.keys == {} and plan.cut == []
    # baseline 20 s + two variants 40 s + range test 10 s + follow-ups 5 x 20 s
    assert plan.estimate == pytest.approx(170.0)


def test_follow_ups_go_before_the_steps_are_reduced():
    plan = make_plan(cfg(), COSTS, 100.0)
    assert plan.keys == {"probe.variants.perturb": False}
    assert any(c.startswith("follow-up probes") and "~100 s" in c for c in plan.cut)


def test_steps_shrink_proportionally_to_fit():
    plan = make_plan(cfg(), COSTS, 35.0)
    steps = plan.keys["probe.steps"]
    assert MIN_STEPS <= steps < 200
    assert plan.estimate <= 35.0
    assert any(c == f"steps: 200 -> {steps} per probe" for c in plan.cut)


def test_below_the_floor_probes_are_dropped_in_priority_order():
    # at the floor (40 steps) the three probes take 4 + 8 + 4 s: the range test and the variants go
    plan = make_plan(cfg(), COSTS, 5.0)
    assert plan.keys["probe.lr_range"] is False and plan.keys["probe.variants.lr_factors"] == []
    assert [c.split(":")[0] for c in plan.cut[1:]] == ["steps", "LR range test", "LR variants (lr_x0.1, lr_x10)",
                                                      "follow-up probes (continued, perturbed, reseed_1..3; they run only on a plateau)"]
    # what dropping them freed goes back into the baseline's steps
    assert plan.keys["probe.steps"] == 50 and plan.estimate == pytest.approx(5.0)
    # below the floor only as a last resort, and never below LAST_RESORT_STEPS
    short = make_plan(cfg(), COSTS, 2.0)
    assert short.keys["probe.steps"] == 20 and "below the 40-step floor" in short.cut[-2]
    assert make_plan(cfg(), COSTS, 0.1).keys["probe.steps"] == LAST_RESORT_STEPS


def test_the_hessian_batch_shrinks_before_curvature_is_dropped():
    costs = Costs(overhead=0.0, step=0.01, eval_sample=0.0, n_train=128, n_val=64,
                  hvp=0.1, hvp_graph=0.1, hvp_batch=32, hessian_batch=128)
    on = {"enabled": True, "at": [0.0, 1.0]}
    roomy = make_plan(cfg(hessian=on, lr_range=False, variants={"lr_factors": [], "perturb": False}), costs, 1000.0)
    assert roomy.keys == {}
    tight = make_plan(cfg(hessian=on, lr_range=False, variants={"lr_factors": [], "perturb": False}), costs, 12.0)
    assert tight.keys.get("probe.hessian.batch_size", 128) < 128 and tight.keys.get("probe.hessian.enabled", True)
    tiny = make_plan(cfg(hessian=on, lr_range=False, variants={"lr_factors": [], "perturb": False}), costs, 1.0)
    assert tiny.keys["probe.hessian.enabled"] is False
    assert any(c.startswith("curvature") for c in tiny.cut)


def test_evaluations_are_thinned_when_they_dominate():
    costs = Costs(overhead=0.0, step=0.01, eval_sample=0.001, n_train=1024, n_val=1024)
    plan = make_plan(cfg(variants={"lr_factors": [], "perturb": False}, lr_range=False), costs, 20.0)
    assert plan.keys.get("probe.val_every") == 20 and plan.keys.get("probe.eval_samples") == 256
    assert "probe.steps" not in plan.keys


# --- enforcement (fake clock) -------------------------------------------------------------


def test_a_budget_run_is_planned_and_says_what_it_cut(tmp_path):
    diag, end = diagnose(tmp_path, 12.0)
    b = diag.extra["budget"]
    assert b["seconds"] == 12.0 and b["cut"]
    assert end <= 12.0  # the plan fits (estimates are exact on this clock, up to the instrument factor)
    base = diag.probes.baseline
    assert base.status == "completed" and MIN_STEPS <= base.meta["steps"] < 200
    assert set(b["probes"]) == set(diag.probes.traces)
    assert diag.findings is not None


def test_a_probe_slower_than_calibrated_is_stopped_at_the_hard_limit(tmp_path):
    # calibration sees 0.1 s per step, then every step takes 1 s: the plan is 10x off
    diag, end = diagnose(tmp_path, 12.0, _slow={"after": 6, "later": 1.0})
    base = diag.probes.baseline
    assert base.status == "stopped" and base.meta["planned_steps"] > base.meta["steps"] == base.stopped_at
    assert end <= HARD_FACTOR * 12.0
    assert any(c.startswith("baseline: stopped at step") for c in diag.extra["budget"]["cut"])
    assert list(diag.probes.traces) == ["baseline"]  # nothing else fit
    assert diag.symptoms.get("loss.initial") is not None  # the rules saw a shorter probe


def test_optional_probes_are_skipped_when_the_time_is_gone(tmp_path):
    # right after calibration the model slows down 3x: the baseline completes late, variants are cut
    diag, end = diagnose(tmp_path, 60.0, _slow={"after": 6, "later": 0.3})
    cut = diag.extra["budget"]["cut"]
    assert end <= HARD_FACTOR * 60.0
    skipped = [c for c in cut if "left" in c]
    assert skipped and all(name.split(":")[0] not in diag.probes.traces for name in skipped)


def test_extra_seeds_come_last_and_only_if_a_whole_set_fits(tmp_path):
    diag, end = diagnose(tmp_path, 20.0, seeds=3)
    assert end <= 20.0
    assert any(c.startswith("seeds 1..2 (whole probe sets)") for c in diag.extra["budget"]["cut"])
    assert not any(name.startswith("s1_") for name in diag.probes.traces)


def test_without_a_budget_nothing_changes(tmp_path):
    from optdoctor.diagnose import run_diagnosis

    loaded = load_config(write(tmp_path, steps=20, lr_range=False, variants={"lr_factors": []}))
    assert loaded.config.probe.budget is None
    diag = run_diagnosis(loaded)
    assert "budget" not in diag.extra
    from optdoctor.report.json_report import as_dict

    assert "budget" not in as_dict(diag)


# --- config and command line --------------------------------------------------------------


def test_a_bad_budget_in_a_config_is_located(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(textwrap.dedent("""\
        model: {factory: "optdoctor.models:mlp"}
        data: {factory: "optdoctor.data:blobs"}
        optimizer: {name: sgd, lr: 0.1}
        probe:
          budget: 30x
        """))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value.problems[0]).startswith(f"{p}:5:3: probe.budget: '30x' is not a duration")
    r = runner.invoke(app, ["diagnose", str(p)])
    assert r.exit_code == 2 and "probe.budget" in r.stderr and r.stdout == ""


def test_a_bad_budget_option_is_a_usage_error(tmp_path):
    p = write(tmp_path, steps=5)
    r = runner.invoke(app, ["diagnose", str(p), "--budget", "soon"])
    assert r.exit_code == 2 and "--budget soon" in r.stderr and r.stdout == ""


def test_check_ignores_a_config_budget_but_not_the_option(tmp_path):
    p = write(tmp_path, steps=20, lr_range=False, variants={"lr_factors": []}, budget="1h")
    r = runner.invoke(app, ["diagnose", str(p), "--check", "--format", "json"])
    assert r.exit_code in (0, 1), r.stderr
    assert "budget" not in json.loads(r.stdout)
    r = runner.invoke(app, ["diagnose", str(p), "--check", "--budget", "1h", "--format", "json"])
    assert r.exit_code in (0, 1), r.stderr
    b = json.loads(r.stdout)["budget"]
    assert b["seconds"] == 3600 and b["cut"] == []


def test_progress_line_shows_the_probe_eta_and_the_plans(monkeypatch, capsys):
    t = [0.0]
    line = _ProgressLine(clock=lambda: t[0])
    line.total = lambda: 42.0
    for step in range(1, 21):
        t[0] += 0.5
        line("baseline", step, 40)
    err = capsys.readouterr().err
    assert "probing baseline      20/40  ETA 10 s  (all: ~42 s)" in err


# --- end to end (real time, generous bounds) ------------------------------------------------


@pytest.mark.slow
def test_resnet_fixture_within_its_budget():
    cfg_path = ROOT / "tests" / "fixtures" / "budget" / "resnet.yaml"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "optdoctor", "diagnose", str(cfg_path), "--budget", "15s", "--format", "json"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    wall = time.perf_counter() - t0
    assert r.returncode in (0, 1), r.stderr
    out = json.loads(r.stdout)
    assert out["budget"]["seconds"] == 15 and out["budget"]["cut"]
    assert "baseline" in out["probes"]
    assert wall < 15 * HARD_FACTOR + 5  # the limit, plus slack for a loaded machine
