"""The diagnosis step between the probes and the reporters: the report model computed once
(probe table, layer profile), the plateau gate from the rules, multi-seed voting, and replay
going through the same rule selection as diagnose."""

from __future__ import annotations

import ast
import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from optdoctor.cli import Format, app
from optdoctor.diagnose import Diagnosis, followups_wanted, summarize
from optdoctor.diagnose.seeds import seed_sets, vote
from optdoctor.engine.evaluate import Selection
from optdoctor.engine.rules import load_rules
from optdoctor.findings import Finding, RuleOutcome
from optdoctor.report import REPORTERS
from optdoctor.trace import ProbeSet, Trace

runner = CliRunner()
PACK = load_rules()
FOLLOWUPS = {"continued", "perturbed", "reseed_1", "reseed_2", "reseed_3"}
# full batch at a negligible rate: an exactly flat loss, far from done (a plateau); OD404 fires
FLAT = textwrap.dedent("""\
    name: flat
    model:
      factory: optdoctor.models:mlp
      args: {depth: 2, width: 16}
    data:
      factory: optdoctor.data:blobs
      args: {n_train: 128, n_val: 64}
      batch_size: 128
    optimizer:
      name: sgd
      lr: 1.0e-9
    probe:
      steps: 20
      hessian: {enabled: false}
    """)


def trace(name: str, kind: str, loss, *, status="completed", stopped_at=None, **meta) -> Trace:
    loss = np.asarray(loss, dtype=float)
    return Trace(name, meta={"kind": kind, "lr": 0.1, "steps": len(loss), "seed": 0, **meta},
                 series={"loss.train": (np.arange(len(loss)), loss)}, status=status, stopped_at=stopped_at)


# --- the report model ------------------------------------------------------------------------
def test_summary_rows_use_the_smoothed_final_loss_and_the_layer_profile_a_hand_loop_gives():
    loss = np.linspace(2.0, 1.0, 20)
    loss[-1] = 5.0  # a last-step spike: the final loss is the mean of the last 10%, not this
    base = trace("baseline", "baseline", loss, layers=["0", "2"], layer_types=["Linear", "Linear"])
    G = np.array([[1e-4, 1e-1], [4e-4, 4e-1]] + [[1.0, 1.0]] * 18)
    base.series["grad.norm"] = (np.arange(20), G)
    rng = trace("lr_range", "lr_range", [3.0, 2.0], lr_min=1e-7, lr_max=10.0)
    div = trace("lr_x10", "lr_variant", [2.0, np.inf], status="diverged", stopped_at=1)
    s = summarize(ProbeSet({"lr_x10": div, "baseline": base, "lr_range": rng}))
    assert [p.name for p in s.probes] == ["baseline", "lr_range", "lr_x10"]
    b = s.baseline()
    assert b.kind == "baseline" and b.loss_initial == 2.0 and b.loss_final == pytest.approx((loss[-2] + 5.0) / 2)
    assert s.probes[1].lr_range == (1e-7, 10.0)
    assert s.probes[2].loss_final == math.inf and s.probes[2].stopped_at == 1
    # first 10% of 20 steps = 2 steps; geometric mean per layer
    assert [(g.name, g.type) for g in s.layer_profile] == [("0", "Linear"), ("2", "Linear")]
    assert [g.grad_norm for g in s.layer_profile] == pytest.approx([2e-4, 2e-1])
    assert s.loss_curve == pytest.approx(list(loss))


def test_reporters_read_the_diagnosis_only():
    """No reporter imports the symptom producers or the Trace (the TensorBoard writer, which
    writes Traces, is the exception: tags.py and writing.py)."""
    folder = Path(__file__).resolve().parents[1] / "optdoctor" / "report"
    files = [p for p in folder.rglob("*.py") if p.name not in ("tags.py", "writing.py") and p.parent.name != "tensorboard"]
    files.append(folder / "tensorboard" / "markdown.py")
    for p in files:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("optdoctor.symptoms", "optdoctor.diagnose")), p
                if node.module == "optdoctor.trace":
                    assert p.name == "markdown.py" and [a.name for a in node.names] == ["Trace"], p  # probe_markdown's type


def test_format_choices_are_the_registered_reporters():
    assert sorted(m.value for m in Format) == sorted(REPORTERS)
    r = runner.invoke(app, ["diagnose", "x.yaml", "--format", "nope"])
    assert r.exit_code == 2 and all(name in r.output for name in REPORTERS)


# --- multi-seed voting -----------------------------------------------------------------------
def finding(rule: str, **evidence) -> Finding:
    return Finding(rule, rule.lower(), "lr_too_low", "warning", 0.8, "s", dict(evidence))


def test_vote_keeps_a_majority_and_shows_the_spread():
    outcomes = [RuleOutcome("OD404", "od404", "lr_too_low", "fired"), RuleOutcome("OD101", "od101", "vanishing_gradients", "passed")]
    per_seed = [([finding("OD404", x=1.0)], outcomes, {"x": 1.0}),
                ([finding("OD404", x=3.0), finding("OD101")], [], {"x": 3.0}),
                ([], [], {"x": 2.0})]
    kept, outs = vote(per_seed, outcomes)
    assert [f.rule for f in kept] == ["OD404"] and kept[0].seeds == {"fired": 2, "of": 3, "spread": {"x": [1.0, 3.0]}}
    assert outs[1].status == "passed" and "1 of 3" in outs[1].reason


def test_seed_sets_regroup_the_other_seeds_by_kind_not_by_name():
    t0 = trace("baseline", "baseline", [1.0])
    s1 = trace("baseline", "seed", [2.0], seed_of="baseline", seed_index=1)
    s1v = trace("lr_x10", "seed", [3.0], seed_of="lr_variant", seed_index=1, lr_factor=10.0)
    s2 = trace("baseline", "seed", [4.0], seed_of="baseline", seed_index=2)
    sets = seed_sets(ProbeSet({"baseline": t0, "zz_1": s1, "s1_lr_x10": s1v, "other": s2}, {"a": 1.0}))
    assert [sorted(p.traces) for p in sets] == [["baseline", "lr_x10"], ["baseline"]]
    assert sets[0].baseline.values("loss.train")[0] == 2.0 and sets[0].one("lr_variant") is not None
    assert sets[1].data_stats == {"a": 1.0} and s1.kind == "seed"  # the saved traces are left as they were


def test_the_plateau_rules_gate_the_followup_probes_with_their_own_params():
    creeping = {"loss.late_rel_drop": 0.03, "loss.progress": 0.1, "loss.rel_drop": 0.05, "loss.diverged": 0.0}
    assert {r.id for r in PACK if r.gate is not None and "plateau" in r.opens} == {"OD202", "OD203"}
    assert not followups_wanted(PACK, creeping)  # 3% late drop: not flat at the default 2%
    assert followups_wanted(PACK, creeping, Selection(params={"OD202": {"flat_max": 0.05}}))
    assert followups_wanted(PACK, creeping, Selection(params={"OD203": {"flat_max": 0.05}}))
    stuck = {**creeping, "loss.late_rel_drop": 0.001}
    assert followups_wanted(PACK, stuck)
    assert not followups_wanted(PACK, stuck, Selection(ignore=["OD202", "OD203"]))  # nobody reads them
    assert not followups_wanted(PACK, stuck, Selection(params={"OD202": {"flat_max": 0.0}, "OD203": {"flat_max": 0.0}}))
    assert not followups_wanted(PACK, {**stuck, "loss.diverged": 1.0})
    assert not followups_wanted(PACK, {**stuck, "loss.progress": 0.9})  # nearly done: no plateau worth probing
    no_chance = {k: v for k, v in stuck.items() if k != "loss.progress"}
    assert followups_wanted(PACK, no_chance) and not followups_wanted(PACK, {**no_chance, "loss.rel_drop": 0.8})


def test_the_input_scale_rule_gates_the_standardised_probe():
    spread = {"data.feature_scale_spread": 1000.0, "loss.progress": 0.1, "loss.diverged": 0.0, "loss.late_rel_drop": 0.5}
    assert [r.id for r in PACK if "standardized" in r.opens] == ["OD204", "OD206"]  # OD206: beside its whitened rerun
    assert followups_wanted(PACK, spread, which="standardized")
    assert not followups_wanted(PACK, spread)  # not a plateau: the saddle/minimum probes stay off
    assert followups_wanted(PACK, {**spread, "loss.progress": float("nan"), "loss.diverged": 1.0}, which="standardized")
    assert not followups_wanted(PACK, {**spread, "data.feature_scale_spread": 20.0}, which="standardized")
    assert not followups_wanted(PACK, {**spread, "loss.progress": 0.9}, which="standardized")  # trains fine
    assert not followups_wanted(PACK, spread, Selection(ignore=["OD204"]), which="standardized")


# --- the plateau gate and replay, end to end -----------------------------------------------
@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flat")
    cfg = folder / "flat.yaml"
    cfg.write_text(FLAT)
    r = runner.invoke(app, ["diagnose", str(cfg), "--check", "--format", "json", "--save-trace", str(folder / "tr")])
    assert r.exit_code == 0, r.output
    return cfg, folder / "tr", json.loads(r.stdout)


def test_the_followups_run_on_a_plateau_and_the_rules_params_move_the_gate(flat):
    cfg, _, report = flat
    assert FOLLOWUPS <= set(report["probes"])
    r = runner.invoke(app, ["diagnose", str(cfg), "--check", "--format", "json",
                            "--param", "OD202.flat_max=-1", "--param", "OD203.flat_max=-1"])
    assert r.exit_code == 0, r.output
    assert not FOLLOWUPS & set(json.loads(r.stdout)["probes"])


def test_replay_gives_the_diagnosis_diagnose_gave(flat):
    _, traces, report = flat
    r = runner.invoke(app, ["replay", str(traces), "--format", "json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == report
    f = report["findings"][0]
    assert f["rule"] == "OD404" and f["location"]["line"] == 11  # optimizer.lr, located in the config


def test_replay_honours_the_settings_file_and_the_flags(flat):
    cfg, traces, _ = flat
    settings = cfg.parent / "optdoctor.toml"
    settings.write_text('[severity]\nOD404 = "error"\n')
    try:
        r = runner.invoke(app, ["replay", str(traces), "--format", "json"])
        assert r.exit_code == 1, r.output  # the file's severity: an error now
        assert json.loads(r.stdout)["findings"][0]["severity"] == "error"
        r = runner.invoke(app, ["replay", str(traces), "--format", "json", "--param", "OD404.drop_max=-1"])
        assert r.exit_code == 0 and not json.loads(r.stdout)["findings"]
        r = runner.invoke(app, ["replay", str(traces), "--format", "json", "--select", "OD1"])
        assert r.exit_code == 0 and {o["rule"][:3] for o in json.loads(r.stdout)["rules"]} == {"OD1"}
        r = runner.invoke(app, ["replay", str(traces), "--param", "OD404.drop_mx=1"])
        assert r.exit_code == 2 and "drop_max" in r.stderr
    finally:
        settings.unlink()


def test_replay_of_traces_saved_without_their_config(flat, tmp_path):
    _, traces, report = flat
    for p in traces.iterdir():
        if p.suffix in (".npz", ".json") and p.name != "config.json":
            (tmp_path / p.name).write_bytes(p.read_bytes())
    r = runner.invoke(app, ["replay", str(tmp_path), "--format", "json"])
    d = json.loads(r.stdout)
    assert d["config"]["name"] == tmp_path.name and d["symptoms"] == report["symptoms"]
    assert "location" not in d["findings"][0]


def test_replay_votes_across_seeds_as_diagnose_did(tmp_path):
    cfg = tmp_path / "flat.yaml"
    cfg.write_text(FLAT.replace("steps: 20", "steps: 10\n  seeds: 2"))
    r = runner.invoke(app, ["diagnose", str(cfg), "--check", "--format", "json", "--save-trace", str(tmp_path / "tr")])
    report = json.loads(r.stdout)
    assert report["findings"] and all(f["seeds"]["of"] == 2 for f in report["findings"])
    assert any(k.startswith("s1_") for k in report["probes"])
    replayed = runner.invoke(app, ["replay", str(tmp_path / "tr"), "--format", "json"])
    assert json.loads(replayed.stdout) == report


def test_replay_says_what_is_wrong_with_a_damaged_saved_config(flat, tmp_path):
    _, traces, _ = flat
    for p in traces.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / "config.json").write_text("{}")
    r = runner.invoke(app, ["replay", str(tmp_path)])
    assert r.exit_code == 2 and "config.json: not a config saved by" in r.stderr


def test_a_diagnosis_built_by_hand_renders_in_every_format():
    probes = ProbeSet({"baseline": trace("baseline", "baseline", [2.0, 1.0])})
    diag = Diagnosis("x", "x.yaml", [finding("OD404", x=1.0)], [], {"x": 1.0}, probes, summary=summarize(probes))
    for name, render in REPORTERS.items():
        assert render(diag, "error"), name


def test_verify_compares_the_symptom_the_rule_names(flat, tmp_path):
    from optdoctor.engine.rules import shipped_rules_dir

    cfg, _, _ = flat
    for p in shipped_rules_dir().glob("*.yaml"):
        text = p.read_text()
        if p.name.startswith("OD404"):
            text = text.replace("\nparams:", "\nverify: loss.rel_drop\nparams:", 1)
        (tmp_path / p.name).write_text(text)
    r = runner.invoke(app, ["diagnose", str(cfg), "--check", "--verify", "--format", "json", "--rules", str(tmp_path),
                            "--param", "OD202.flat_max=-1", "--param", "OD203.flat_max=-1"])
    (f,) = [f for f in json.loads(r.stdout)["findings"] if f["rule"] == "OD404"]
    tried = [v for v in f["verification"] if v["applicable"]]
    assert tried and {v["metric"] for v in f["verification"]} == {"loss.rel_drop"}
    assert tried[0]["before"] == pytest.approx(json.loads(r.stdout)["symptoms"]["loss.rel_drop"], rel=1e-5)


def test_replay_judges_the_tried_remedies_again_from_their_saved_probes(flat, tmp_path):
    cfg, _, _ = flat
    r = runner.invoke(app, ["diagnose", str(cfg), "--check", "--verify", "--format", "json", "--save-trace", str(tmp_path / "tr"),
                            "--param", "OD202.flat_max=-1", "--param", "OD203.flat_max=-1"])
    report = json.loads(r.stdout)
    (f,) = report["findings"]
    assert f["verification"] and all(v["probe"] in report["probes"] for v in f["verification"] if v["applicable"])
    replayed = runner.invoke(app, ["replay", str(tmp_path / "tr"), "--format", "json",
                                   "--param", "OD202.flat_max=-1", "--param", "OD203.flat_max=-1"])
    assert json.loads(replayed.stdout) == report


GROWING = """\
seed: 0
model: {factory: "optdoctor.models:mlp", args: {depth: 1, width: 16}}
data: {factory: "optdoctor.data:linear_regression", args: {n_features: 6}, batch_size: 32}
loss: mse
optimizer: {name: sgd, lr: 0.01}
schedule: {name: ExponentialLR, args: {gamma: 1.05}}
probe: {steps: 100, verify: {time_factor: null%s}}
"""


def test_verify_trains_each_fix_longer_and_a_lower_rate_under_a_growing_schedule_is_none(tmp_path):
    """The rate grows 5% a step and the run diverges at step 93. A 10x lower rate survives the
    probe's 100 steps (and its extra seeds) but diverges when trained 200: with probe.verify.longer
    (default 2) it is only "better"; dropping the schedule or a warm-up still fixes the run at 200
    steps and one of them is recommended. Without the longer run (null) the lower rate would count
    as a fix. A replay of the saved probes gives the same report."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GROWING % "")
    r = runner.invoke(app, ["diagnose", str(cfg), "--verify", "--format", "json", "--save-trace", str(tmp_path / "tr")])
    report = json.loads(r.stdout)
    (f,) = [f for f in report["findings"] if f["rule"] == "OD401"]
    by = {json.dumps(v["patch"], sort_keys=True): v for v in f["verification"]}
    lower = by['{"optimizer.lr": "x0.1"}']
    assert lower["seeds"]["fixed"] == lower["seeds"]["of"] == 2  # a fix on every seed of the probe's length
    assert lower["longer"]["steps"] == 200 and lower["longer"]["fixed"] is False and math.isinf(float(lower["longer"]["after"]))
    assert (lower["helped"], lower["improved"], lower["recommended"]) == (False, True, False)
    drop = by['{"schedule": null}']
    assert drop["helped"] and drop["longer"]["fixed"] is True and drop["longer"]["probe"] in report["probes"]
    (pick,) = [v for v in f["verification"] if v["recommended"]]
    assert pick["longer"]["fixed"] is True
    replayed = runner.invoke(app, ["replay", str(tmp_path / "tr"), "--format", "json"])
    assert json.loads(replayed.stdout) == report
    text = runner.invoke(app, ["replay", str(tmp_path / "tr")]).stdout
    assert "not a fix when trained 200 steps" in text and "still fixed when trained 200 steps" in text

    cfg.write_text(GROWING % ", longer: null")
    off = json.loads(runner.invoke(app, ["diagnose", str(cfg), "--verify", "--format", "json"]).stdout)
    (f,) = [f for f in off["findings"] if f["rule"] == "OD401"]
    lower = next(v for v in f["verification"] if v["patch"] == {"optimizer.lr": "x0.1"})
    assert lower["helped"] and lower["longer"] is None


def test_saving_traces_replaces_an_earlier_runs_tried_remedies(tmp_path):
    from optdoctor.diagnose import save_traces

    probes = ProbeSet({"baseline": trace("baseline", "baseline", [2.0, 1.0])})
    f = finding("OD404", x=1.0)
    f.verification = [{"remedy": "r", "patch": {"optimizer.lr": "x10"}, "applicable": False, "reason": "no", "probe": None}]
    save_traces(Diagnosis("x", "x.yaml", [f], [], {}, probes), tmp_path)
    assert json.loads((tmp_path / "verification.json").read_text())["OD404"][0]["reason"] == "no"
    save_traces(Diagnosis("x", "x.yaml", [finding("OD404")], [], {}, probes), tmp_path)
    assert not (tmp_path / "verification.json").exists() and (tmp_path / "baseline.npz").exists()
