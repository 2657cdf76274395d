"""Remedies as config patches (every patch kind, built-in and user factories) and the ranking
of verified remedies."""

from __future__ import annotations

import copy
import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from optdoctor.cli import app
from optdoctor.config import load_config
from optdoctor.remedies import NotApplicable, apply_patch

SAMPLES = Path(__file__).resolve().parents[1] / "sample_runs"
runner = CliRunner()


@pytest.fixture
def loaded():
    return load_config(SAMPLES / "vanishing-gradients.yaml")


def mlp_factories():
    from optdoctor import data, models

    return {"model": models.mlp, "data": data.blobs}


PATCHES = [  # (id, patch, check on the patched config)
    ("multiply-lr", {"optimizer.lr": "x0.1"}, lambda c: c.optimizer.lr == pytest.approx(0.01)),
    ("multiply-star", {"optimizer.lr": "*10"}, lambda c: c.optimizer.lr == pytest.approx(1.0)),
    ("set-model-arg", {"model.args.act": "relu", "model.args.init": "kaiming_normal"},
     lambda c: c.model.args["act"] == "relu" and c.model.args["init"] == "kaiming_normal" and c.model.args["depth"] == 10),
    ("switch-optimizer-drops-args", {"optimizer.name": "adam", "optimizer.lr": 1e-3},
     lambda c: c.optimizer.name == "adam" and c.optimizer.args == {}),
    ("optimizer-arg", {"optimizer.args.weight_decay": 0.05}, lambda c: c.optimizer.args == {"weight_decay": 0.05}),
    ("clip", {"probe.clip_grad_norm": 1.0}, lambda c: c.probe.clip_grad_norm == 1.0),
    ("standardize", {"probe.standardize_inputs": True}, lambda c: c.probe.standardize_inputs is True),
    ("schedule-with-placeholders", {"schedule": {"name": "OneCycleLR", "args": {"max_lr": "$lr", "total_steps": "$steps"}}},
     lambda c: c.schedule.name == "OneCycleLR" and c.schedule.args == {"max_lr": 0.1, "total_steps": 200}),
    ("integer-stays-integer", {"data.args.n_train": "x4"}, lambda c: c.data.args["n_train"] == 2048),
]


@pytest.mark.parametrize("case", PATCHES, ids=lambda c: c[0])
def test_patch_kinds_on_builtin_factories(loaded, case):
    _, patch, check = case
    if "data.args.n_train" in patch:
        loaded = loaded.model_copy(update={"config": loaded.config.model_copy(update={"data": loaded.config.data.model_copy(update={"args": {"n_train": 512}})})})
    new = apply_patch(loaded, patch, mlp_factories())
    assert check(new.config)
    assert loaded.config.optimizer.lr == 0.1  # the original is untouched
    assert new.path == loaded.path and new.positions == loaded.positions


def test_patch_of_an_argument_a_user_factory_lacks_stays_text():
    loaded = load_config(SAMPLES / "local-minimum.yaml")
    from optdoctor.config.factories import resolve_callable

    factory = resolve_callable(loaded.config.model.factory, loaded.base_dir, "model.factory", loaded)
    with pytest.raises(NotApplicable, match=r"waves.py:frequency_model .*local-minimum.yaml:\d+\) takes no argument 'width'"):
        apply_patch(loaded, {"model.args.width": "x4"}, {"model": factory})


def test_patch_of_a_user_factory_that_takes_the_argument(tmp_path):
    (tmp_path / "m.py").write_text(textwrap.dedent("""\
        import torch
        def net(act="sigmoid", **kw):
            return torch.nn.Sequential(torch.nn.Linear(20, 4))
        """))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {factory: m.py:net}\ndata: {factory: optdoctor.data:blobs}\noptimizer: {name: sgd, lr: 0.1}\n")
    loaded = load_config(cfg)
    from optdoctor.config.factories import resolve_callable

    factory = resolve_callable("m.py:net", loaded.base_dir, "model.factory", loaded)
    assert apply_patch(loaded, {"model.args.act": "relu"}, {"model": factory}).config.model.args == {"act": "relu"}


def test_multiplying_a_string_is_not_applicable(loaded):
    with pytest.raises(NotApplicable, match="not a number"):
        apply_patch(loaded, {"model.args.act": "x2"}, mlp_factories())


def test_multiplying_an_argument_left_unset_says_which(loaded):
    # a factory whose n_train defaults to None ("all the data"): "x4" has nothing to scale
    def data(*, n_train=None, n_val=256, seed=0):
        raise AssertionError("not called")

    with pytest.raises(NotApplicable, match=r"data.args.n_train is not set .* nothing to multiply by 4"):
        apply_patch(loaded, {"data.args.n_train": "x4"}, {**mlp_factories(), "data": data})


def test_invalid_patched_config_is_not_applicable(loaded):
    with pytest.raises(NotApplicable, match="invalid"):
        apply_patch(loaded, {"optimizer.lr": -1.0}, mlp_factories())


def test_an_optimizer_argument_the_optimizer_lacks_is_not_applicable(loaded):
    """Momentum for Adam: not applicable, saying why, rather than a patched probe that fails."""
    adam = loaded.model_copy(update={"config": loaded.config.model_copy(
        update={"optimizer": loaded.config.optimizer.model_copy(update={"name": "adam", "args": {}})})})
    with pytest.raises(NotApplicable, match="adam takes no argument 'momentum'.*betas"):
        apply_patch(adam, {"optimizer.args.momentum": 0.9}, mlp_factories())
    assert apply_patch(adam, {"optimizer.args.weight_decay": 0.01}, mlp_factories()).config.optimizer.args == \
        {"weight_decay": 0.01}
    sgd = apply_patch(loaded, {"optimizer.args.momentum": 0.9}, mlp_factories())  # the sample's SGD takes it
    assert sgd.config.optimizer.args["momentum"] == 0.9
    swap = apply_patch(adam, {"optimizer.name": "sgd", "optimizer.args.momentum": 0.9}, mlp_factories())
    assert swap.config.optimizer.name == "sgd"  # a patch that also names the optimizer is checked as a whole


def test_every_shipped_patch_applies_to_a_builtin_config(loaded):
    """The rule pack's patches are well-formed: each applies to a built-in MLP config."""
    from optdoctor.engine.rules import load_rules

    n = 0
    scheduled = with_schedule(loaded, {"name": "ExponentialLR", "args": {"gamma": 1.05}})
    for rule in load_rules():
        for r in rule.remedies:
            if r.patch:
                # a schedule to drop for "schedule: null"; a suggestion below the rate for lr_too_high
                apply_patch(scheduled if "schedule" in r.patch and r.patch["schedule"] is None else loaded, r.patch,
                            mlp_factories(), symptoms={"lr.range_suggested": 0.01, "lr.range_best": 0.3})
                n += 1
    assert n >= 15


def verify(name):
    r = runner.invoke(app, ["diagnose", str(SAMPLES / name), "--verify", "--format", "json"])
    return json.loads(r.stdout)["findings"]


@pytest.mark.slow
def test_verify_confirms_and_ranks_remedies():
    f = verify("vanishing-gradients.yaml")[0]
    assert f["cause"] == "vanishing_gradients" and f["confirmed"] is True and f["confidence"] > 0.9
    gains = [v["gain"] for v in f["verification"] if v["applicable"]]
    assert gains == sorted(gains, reverse=True)
    best = f["verification"][0]
    assert best["helped"] and best["after"] < 0.5 * best["before"] and best["still_fires"] is False
    assert best["symptoms"]["grad.depth_ratio"][1] > 100 * best["symptoms"]["grad.depth_ratio"][0]
    assert any(not v["helped"] for v in f["verification"])  # and it says which did not help


@pytest.mark.slow
def test_verify_says_when_the_obvious_remedy_does_not_fix_it():
    f = verify("overfitting.yaml")[0]
    assert f["cause"] == "overfitting" and f["confirmed"] is not True
    assert not any(v["helped"] for v in f["verification"])
    # each tried one says why it is no fix: the finding still holds, or (early stopping) the rule
    # went quiet but the validation loss ended above the initial/chance loss. (This asserted
    # "still holds" for all: true only when --verify's time limit skipped early stopping, i.e.
    # when an earlier test in the process had imported torch; alone it failed.)
    assert all(v["still_fires"] or v["improved"] for v in f["verification"] if v["applicable"])


def test_multiplying_the_lr_scales_the_rates_a_schedule_sets_itself(loaded):
    """CyclicLR overrides the optimizer's rate with base_lr/max_lr: "x0.1" must scale those too,
    or the remedy probe runs at the same peak; a patch that sets the schedule itself wins."""
    sched = {"name": "CyclicLR", "args": {"base_lr": 0.001, "max_lr": 10.0, "step_size_up": 40, "cycle_momentum": False}}
    cfg = loaded.config.model_copy(update={"schedule": loaded.config.schedule.model_validate(sched)
                                           if loaded.config.schedule else None})
    if cfg.schedule is None:
        from optdoctor.config.schema import ProbeConfig

        cfg = ProbeConfig.model_validate({**loaded.config.model_dump(), "schedule": sched})
    with_sched = loaded.model_copy(update={"config": cfg})
    new = apply_patch(with_sched, {"optimizer.lr": "x0.1"}, mlp_factories())
    assert new.config.schedule.args == {"base_lr": pytest.approx(1e-4), "max_lr": pytest.approx(1.0), "step_size_up": 40,
                                        "cycle_momentum": False}
    assert new.config.optimizer.lr == pytest.approx(0.01)
    own = apply_patch(with_sched, {"optimizer.lr": "x0.1", "schedule": None}, mlp_factories())
    assert own.config.schedule is None
    assert apply_patch(with_sched, {"optimizer.lr": 0.05}, mlp_factories()).config.schedule.args["max_lr"] == 10.0


def test_a_remedy_that_ends_above_the_chance_loss_did_not_fix_the_run():
    """A 12% drop from 110 to 97 with the rule silent is not a fix when predicting the class
    prior gives 1.1: 'helped' needs the remedied run below its reference loss too."""
    from optdoctor.diagnose.verify import judge
    from optdoctor.engine.rules import load_rules
    from optdoctor.remedies import Verification

    rule = next(r for r in load_rules() if r.id == "OD201")
    f = type("F", (), {"evidence": []})()
    for after, reference, helped in [(97.0, 1.1, False), (0.4, 1.1, True), (0.4, None, True)]:
        v = Verification(remedy="r", patch={}, before=110.0)
        judge(v, f, rule, {}, {"loss.final": after}, reference)
        assert v.helped is helped and v.improved is (not helped)


def test_a_remedy_is_judged_by_the_model_as_it_is_evaluated_where_that_is_clearly_worse():
    """The compared loss is scaled by loss.eval_mode_ratio (eval over training mode, the same
    weights and batch) where that exceeds 1 + VERIFY_MIN_GAIN: BatchNorm whose running statistics
    lag reaches 0.06 in training mode but 1.0 as evaluated, which is no fix of a run at 1.1 with a
    chance loss of 1.1; a ratio just above 1, below 1 (dropout), NaN or absent changes nothing; an
    infinite one (eval mode not finite) is no fix."""
    from math import inf, nan

    from optdoctor.diagnose.verify import VERIFY_MIN_GAIN, compared, in_eval_mode, judge
    from optdoctor.engine.rules import load_rules
    from optdoctor.remedies import Verification

    rule = next(r for r in load_rules() if r.id == "OD201")
    f = type("F", (), {"evidence": []})()
    for ratio, helped, shown, train_mode in [
        (1.0 / 0.06, False, 1.0, 0.06),
        (3.0, True, 0.18, 0.06),
        (1 + VERIFY_MIN_GAIN / 2, True, 0.06, None),
        (0.2, True, 0.06, None),
        (nan, True, 0.06, None),
        (inf, False, inf, 0.06),
        (None, True, 0.06, None),
    ]:
        after = {"loss.final": 0.06} if ratio is None else {"loss.final": 0.06, "loss.eval_mode_ratio": ratio}
        v = Verification(remedy="r", patch={}, before=1.1)
        judge(v, f, rule, {}, after, 1.1)
        assert (v.helped, v.after, v.after_train_mode) == (helped, pytest.approx(shown), train_mode), after
    over = {"loss.final_over_chance": 0.05, "loss.eval_mode_ratio": 18.0}
    assert compared(over, "loss.final_over_chance") == pytest.approx(0.9) and in_eval_mode(over, "loss.final_over_chance")
    assert compared({"val.final": 0.3, "loss.eval_mode_ratio": 5.0}, "val.final") == 0.3  # already eval mode
    assert compared({"loss.final": -2.0, "loss.eval_mode_ratio": 5.0}, "loss.final") == -2.0  # not a positive loss


def test_an_optional_patch_key_applies_only_where_the_factory_takes_it(tmp_path):
    """"model.args.weight_scale?": set for a built-in model that takes it; skipped (the rest of
    the patch applied) for a user's factory without it; a plain key still makes it text."""
    from optdoctor.config.schema import ProbeConfig

    patch = {"model.args.init": "kaiming_normal", "model.args.weight_scale?": 1.0}
    builtin = load_config(SAMPLES / "vanishing-gradients.yaml")
    new = apply_patch(builtin, patch, mlp_factories())
    assert new.config.model.args["init"] == "kaiming_normal" and new.config.model.args["weight_scale"] == 1.0

    def user_mlp(in_dim=4, out_dim=2, init="default"):
        return None

    factories = {"model": user_mlp, "data": mlp_factories()["data"]}
    cfg = ProbeConfig.model_validate({**builtin.config.model_dump(), "model": {"factory": "user.py:mlp", "args": {"init": "zero"}}})
    user = builtin.model_copy(update={"config": cfg})
    new = apply_patch(user, patch, factories)
    assert new.config.model.args == {"init": "kaiming_normal"}
    with pytest.raises(NotApplicable, match="weight_scale"):
        apply_patch(user, {"model.args.init": "kaiming_normal", "model.args.weight_scale": 1.0}, factories)


# ------------------------------------------------------------------ the LR range test's rate, dropping a schedule


def with_schedule(loaded, sched: dict):
    from optdoctor.config.schema import ProbeConfig

    return loaded.model_copy(update={"config": ProbeConfig.model_validate({**loaded.config.model_dump(), "schedule": sched})})


CYCLIC = {"name": "CyclicLR", "args": {"base_lr": 0.001, "max_lr": 10.0, "step_size_up": 40, "cycle_momentum": False}}
SUGGESTED = {"optimizer.lr": "$lr.range_suggested"}


def test_the_range_test_suggestion_sets_the_rate_to_the_measured_value(loaded):
    new = apply_patch(loaded, SUGGESTED, mlp_factories(), {"lr.range_suggested": 0.02, "lr.range_best": 0.05}, "lr_too_high")
    assert new.config.optimizer.lr == pytest.approx(0.02) and new.config.schedule is None
    assert loaded.config.optimizer.lr == 0.1


@pytest.mark.parametrize("symptoms", [{}, {"lr.range_best": 0.05}, {"lr.range_suggested": float("nan")}])
def test_without_a_range_test_the_suggestion_is_not_applicable_and_says_why(loaded, symptoms):
    """probe.lr_range: false (or a range test that found nothing): a clear reason, no crash."""
    with pytest.raises(NotApplicable, match=r"not applicable: it needs lr.range_suggested.*probe.lr_range"):
        apply_patch(loaded, SUGGESTED, mlp_factories(), symptoms, "lr_too_high")


@pytest.mark.parametrize("suggested", [0.1, 0.5])
def test_a_rate_not_below_the_configured_one_is_no_remedy_for_a_rate_too_high(loaded, suggested):
    with pytest.raises(NotApplicable, match=r"not applicable: .* not below the configured rate 0.1"):
        apply_patch(loaded, SUGGESTED, mlp_factories(), {"lr.range_suggested": suggested}, "lr_too_high")
    # the mirror for a rate too low; and a rule of another cause sets the rate as asked
    assert apply_patch(loaded, SUGGESTED, mlp_factories(), {"lr.range_suggested": 0.5}, "lr_too_low").config.optimizer.lr == 0.5
    with pytest.raises(NotApplicable, match=r"not above the configured rate 0.1"):
        apply_patch(loaded, SUGGESTED, mlp_factories(), {"lr.range_suggested": 0.01}, "lr_too_low")
    assert apply_patch(loaded, SUGGESTED, mlp_factories(), {"lr.range_suggested": suggested}).config.optimizer.lr == suggested
    assert apply_patch(loaded, {"optimizer.lr": "x0.1"}, mlp_factories(), {}, "lr_too_high").config.optimizer.lr == \
        pytest.approx(0.01)


def test_a_measured_rate_scales_the_rates_a_schedule_sets_itself(loaded):
    """CyclicLR/OneCycleLR set the rate themselves: the suggestion scales their absolute rates by
    suggested/configured (as "x0.1" does), or the remedy probe would run at the same peak."""
    cyclic = with_schedule(loaded, CYCLIC)
    new = apply_patch(cyclic, SUGGESTED, mlp_factories(), {"lr.range_suggested": 0.02}, "lr_too_high")
    assert new.config.optimizer.lr == pytest.approx(0.02)
    assert new.config.schedule.args == {"base_lr": pytest.approx(2e-4), "max_lr": pytest.approx(2.0), "step_size_up": 40,
                                        "cycle_momentum": False}
    one = with_schedule(loaded, {"name": "OneCycleLR", "args": {"max_lr": 1.0, "total_steps": 200}})
    assert apply_patch(one, {"optimizer.lr": "$lr.range_best*0.5"}, mlp_factories(), {"lr.range_best": 0.04},
                       "lr_too_high").config.schedule.args == {"max_lr": pytest.approx(0.2), "total_steps": 200}
    assert apply_patch(cyclic, {"optimizer.lr": "$lr"}, mlp_factories()).config.schedule.args == CYCLIC["args"]
    # a patch that sets the schedule too keeps its own; a literal rate leaves the schedule alone
    own = apply_patch(cyclic, {**SUGGESTED, "schedule": None}, mlp_factories(), {"lr.range_suggested": 0.02}, "lr_too_high")
    assert own.config.schedule is None and own.config.optimizer.lr == pytest.approx(0.02)
    assert apply_patch(cyclic, {"optimizer.lr": 0.02}, mlp_factories(), {}, "lr_too_high").config.schedule.args["max_lr"] == 10.0


def test_a_measured_rate_under_a_schedule_that_peaked_above_the_configured_rate_sets_that_peak(loaded):
    """CyclicLR from base_lr 0.001 to max_lr 10 with optimizer.lr 0.1: the run peaked at 10, 100x the
    configured rate. The LR range test's suggestion (an absolute rate to train at) becomes the peak:
    every rate scaled by 0.02/10, not by 0.02/0.1 (which would leave the peak 2.0, 100x the
    suggestion, and for a rate too high is no remedy at all where the suggestion lies above the
    configured floor). A hand computation, not the code's own formula."""
    cyclic = with_schedule(loaded, CYCLIC)
    peaked = {"lr.range_suggested": 0.02, "lr.peak_over_config": 100.0}
    new = apply_patch(cyclic, SUGGESTED, mlp_factories(), peaked, "lr_too_high")
    assert new.config.schedule.args["max_lr"] == pytest.approx(0.02)
    assert new.config.schedule.args["base_lr"] == pytest.approx(0.001 * 0.002)
    assert new.config.optimizer.lr == pytest.approx(0.1 * 0.002)
    # a suggestion above the configured floor but below the peak lowers the rate: applicable
    above_floor = apply_patch(cyclic, SUGGESTED, mlp_factories(), {**peaked, "lr.range_suggested": 0.5}, "lr_too_high")
    assert above_floor.config.schedule.args["max_lr"] == pytest.approx(0.5)
    # and one above the peak does not: the reason names the peak
    with pytest.raises(NotApplicable, match=r"not below the rate the schedule peaked at 10"):
        apply_patch(cyclic, SUGGESTED, mlp_factories(), {**peaked, "lr.range_suggested": 20.0}, "lr_too_high")
    # relative rates keep scaling from the configured one; so does a measured rate when the schedule
    # never rose above it, or when the patch sets the schedule itself
    assert apply_patch(cyclic, {"optimizer.lr": "x0.1"}, mlp_factories(), peaked, "lr_too_high").config.schedule.args[
        "max_lr"] == pytest.approx(1.0)
    flat = apply_patch(cyclic, SUGGESTED, mlp_factories(), {**peaked, "lr.peak_over_config": 1.0}, "lr_too_high")
    assert flat.config.schedule.args["max_lr"] == pytest.approx(2.0)
    own = apply_patch(cyclic, {**SUGGESTED, "schedule": None}, mlp_factories(), peaked, "lr_too_high")
    assert own.config.schedule is None and own.config.optimizer.lr == pytest.approx(0.02)
    # a schedule that grows the rate by a factor has no peak of its own to set (it outgrows any base
    # rate in a longer run): compared with the configured rate, as before; dropping it is the remedy
    growing = with_schedule(loaded, {"name": "ExponentialLR", "args": {"gamma": 1.05}})
    with pytest.raises(NotApplicable, match=r"not below the configured rate 0.1"):
        apply_patch(growing, SUGGESTED, mlp_factories(), {**peaked, "lr.range_suggested": 0.5}, "lr_too_high")
    assert apply_patch(growing, SUGGESTED, mlp_factories(), peaked, "lr_too_high").config.optimizer.lr == pytest.approx(0.02)


def test_the_plain_loop_reads_a_measured_rate_under_a_peaking_schedule_as_optdoctor_does(loaded):
    """The benchmark's plain loop implements the patch language from its documentation, not by
    calling apply_patch: both must give the same rates for the CyclicLR case above."""
    from benchmarks.faults.remedy_check import plain_config

    case = {"model": {"factory": "benchmarks.faults.factories:mlp", "args": {}},
            "data": {"factory": "benchmarks.faults.factories:teacher", "args": {}},
            "optimizer": {"name": "sgd", "lr": 0.1, "args": {}}, "schedule": copy.deepcopy(CYCLIC), "probe": {"steps": 60}}
    peaked = {"lr.range_suggested": 0.02, "lr.peak_over_config": 100.0}
    plain = plain_config(case, SUGGESTED, peaked, 120)
    ours = apply_patch(with_schedule(loaded, CYCLIC), SUGGESTED, mlp_factories(), peaked, "lr_too_high").config
    assert plain["optimizer"]["lr"] == pytest.approx(ours.optimizer.lr)
    for a in ("base_lr", "max_lr"):
        assert plain["schedule"]["args"][a] == pytest.approx(ours.schedule.args[a])
    growth = {"name": "ExponentialLR", "args": {"gamma": 1.05}}
    plain = plain_config({**case, "schedule": growth}, SUGGESTED, peaked, 120)
    ours = apply_patch(with_schedule(loaded, growth), SUGGESTED, mlp_factories(), peaked, "lr_too_high").config
    assert plain["optimizer"]["lr"] == pytest.approx(ours.optimizer.lr) == pytest.approx(0.02)


def test_a_rate_too_low_tries_the_range_test_suggestion_as_the_rate():
    """A rate 1000x too low is not fixed by 10x: OD404 also sets the rate to the LR range test's
    suggestion (applicable only above the configured rate: see the direction test above)."""
    from optdoctor.engine.rules import load_rules

    od404 = next(r for r in load_rules() if r.id == "OD404")
    patches = [r.patch for r in od404.remedies if r.patch]
    assert SUGGESTED in patches and {"optimizer.lr": "x10"} in patches and len(patches) <= 6


def test_dropping_the_schedule_needs_one_and_for_a_rate_too_high_one_that_raised_it(loaded):
    growing = with_schedule(loaded, {"name": "ExponentialLR", "args": {"gamma": 1.05}})
    for symptoms in ({"lr.peak_over_config": 1500.0}, {}):  # measured rise, or not measured
        new = apply_patch(growing, {"schedule": None}, mlp_factories(), symptoms, "lr_too_high")
        assert new.config.schedule is None and new.config.optimizer.lr == 0.1
    assert growing.config.schedule is not None  # the original is untouched
    with pytest.raises(NotApplicable, match="not applicable: no schedule is configured"):
        apply_patch(loaded, {"schedule": None}, mlp_factories(), {"lr.peak_over_config": 1.0}, "lr_too_high")
    decaying = with_schedule(loaded, {"name": "CosineAnnealingLR", "args": {"T_max": 200}})
    with pytest.raises(NotApplicable, match=r"CosineAnnealingLR\) never raised the rate above the configured 0.1"):
        apply_patch(decaying, {"schedule": None}, mlp_factories(), {"lr.peak_over_config": 1.0}, "lr_too_high")
    # a rule of another cause may drop a decaying schedule (a rate decayed too fast)
    assert apply_patch(decaying, {"schedule": None}, mlp_factories(), {"lr.peak_over_config": 1.0}, "lr_too_low").config.schedule is None


def test_every_rate_too_high_rule_tries_the_range_suggestion_and_dropping_a_rising_schedule():
    from optdoctor.engine.rules import load_rules

    rules = [r for r in load_rules() if r.cause == "lr_too_high"]
    assert len(rules) >= 5
    for rule in rules:
        patches = [r.patch for r in rule.remedies if r.patch]
        assert SUGGESTED in patches and {"schedule": None} in patches, rule.id
        assert len(patches) <= 6, rule.id  # probe.verify.max_remedies' default: all of them are tried


def test_verify_reports_a_remedy_it_cannot_apply_as_not_tried_with_the_reason(loaded):
    """No range test (probe.lr_range: false), no schedule: the two remedies are recorded as not
    applicable, with their reasons, and nothing is probed."""
    from types import SimpleNamespace

    from optdoctor.diagnose.verify import _Budget, _try
    from optdoctor.engine.rules import load_rules
    from optdoctor.remedies import Verification

    rule = next(r for r in load_rules() if r.id == "OD401")
    diag = SimpleNamespace(loaded=loaded, symptoms={"loss.diverged": 1.0}, probes=SimpleNamespace(traces={}))
    setup = SimpleNamespace(model_factory=mlp_factories()["model"], data_factory=mlp_factories()["data"])
    reasons = {}
    for patch in (SUGGESTED, {"schedule": None}):
        v = Verification(remedy="r", patch=patch)
        _try(v, None, rule, "verify_OD401_x", 0, diag, setup, None, _Budget(None, None), None)
        assert v.applicable is False and v.probe is None and not diag.probes.traces
        reasons[json.dumps(patch)] = v.reason
    assert "lr.range_suggested" in reasons[json.dumps(SUGGESTED)] and "probe.lr_range" in reasons[json.dumps(SUGGESTED)]
    assert "no schedule is configured" in reasons['{"schedule": null}']


def _finding(rule: str, cause: str, confidence: float, severity: str = "error", onset: int | None = 0):
    from optdoctor.findings import Finding

    return Finding(rule=rule, name=rule.lower(), cause=cause, severity=severity, confidence=confidence, summary="",
                   onset=onset)


def test_findings_confirmed_to_the_same_confidence_keep_the_evidence_order():
    # a constant init (OD301, 0.95) and the vanishing gradients it causes (OD101, 0.9): both
    # confirmed by --verify to 0.99; the root cause stays first (rule-id order would put OD101 first)
    from types import SimpleNamespace

    from optdoctor.diagnose.verify import _rerank

    init, vanish = _finding("OD301", "bad_init", 0.95), _finding("OD101", "vanishing_gradients", 0.9)
    diag = SimpleNamespace(findings=[init, vanish])
    init.confidence = vanish.confidence = 0.99
    _rerank(diag)
    assert [f.rule for f in diag.findings] == ["OD301", "OD101"]
    # where the confidences part, they decide: a confirmed finding overtakes a refuted one
    a, b = _finding("OD302", "bad_init", 0.8), _finding("OD401", "lr_too_high", 0.7)
    diag = SimpleNamespace(findings=[a, b])
    a.confidence, b.confidence = 0.6, 0.9
    _rerank(diag)
    assert [f.rule for f in diag.findings] == ["OD401", "OD302"]
    # and severity still comes first
    warn, err = _finding("OD203", "local_minimum", 0.99, severity="warning"), _finding("OD404", "lr_too_low", 0.5)
    diag = SimpleNamespace(findings=[warn, err])
    _rerank(diag)
    assert [f.rule for f in diag.findings] == ["OD404", "OD203"]


def test_a_remedys_short_name_ends_at_its_first_clause_outside_parentheses():
    from optdoctor.findings import first_clause

    # the ';' inside the parentheses does not end the name; the ' (' before them does
    assert first_clause("Re-initialise with a variance-preserving init (Xavier/Glorot; Kaiming for ReLU nets): more") \
        == "Re-initialise with a variance-preserving init"
    assert first_clause("Use an adaptive optimiser (Adam): its steps") == "Use an adaptive optimiser (Adam)"
    assert first_clause("Lower the rate.") == "Lower the rate"
    assert first_clause("x" * 80) == "x" * 67 + "..."
    assert first_clause("If units died, lower the rate", 60, (":", ",")) == "If units died"


# --- two fixes together (probe.verify.combine) ----------------------------------------------


@pytest.mark.parametrize("a, b, ok", [
    ({"probe.standardize_inputs": True}, {"optimizer.name": "adam", "optimizer.lr": 0.01}, True),  # data + optimizer
    ({"model.args.batchnorm": True}, {"model.args.dropout": 0.2}, True),  # two different model arguments
    ({"probe.reinit": "orthogonal"}, {"optimizer.lr": "x3"}, True),
    ({"optimizer.lr": "x0.1"}, {"schedule": None}, False),  # a rate is measured for its schedule
    ({"optimizer.name": "adam", "optimizer.lr": 1e-3}, {"optimizer.lr": "$lr.range_suggested"}, False),
    ({"probe.reinit": "default"}, {"model.args.init": "xavier_normal", "model.args.weight_scale?": 1.0}, False),  # two inits
    ({"probe.whiten_inputs": True}, {"probe.standardize_inputs": True}, False),  # whitening standardises
    ({"probe.perturb_gd": {"threshold": 1e-3, "radius": 1.0}}, {"probe.negative_curvature_step": {"at": [0.25]}}, False),
    ({"model.factory": "optdoctor.models:resmlp"}, {"model.args.batchnorm": True}, False),  # arguments of the old model
    ({"model.args.act": "relu", "model.args.init": "kaiming_normal"}, {"model.args.act": "leaky_relu"}, False),
])
def test_two_fixes_are_combined_only_where_they_change_different_parts_of_the_config(a, b, ok):
    from optdoctor.diagnose.verify import combinable

    assert combinable(a, b) is ok and combinable(b, a) is ok


def test_the_combination_is_the_best_fix_and_the_best_other_one_it_can_go_with():
    from optdoctor.diagnose.verify import combination
    from optdoctor.remedies import Verification

    def fix(patch, after, helped=True):
        return Verification(remedy=str(patch), patch=patch, after=after, helped=helped)

    adam = fix({"optimizer.name": "adam", "optimizer.lr": 0.01}, 0.2)
    lower = fix({"optimizer.lr": "x0.1"}, 0.3)  # the second best, but the optimizer's part again
    std = fix({"probe.standardize_inputs": True}, 0.5)
    failed = fix({"model.args.batchnorm": True}, 0.01, helped=False)  # lowest loss, but no fix
    assert combination([std, lower, failed, adam]) == (adam, std)
    assert combination([adam, lower]) is None  # both change the optimizer
    assert combination([adam]) is None
    done = fix({**adam.patch, **std.patch}, 0.1)
    done.combines = [adam.remedy, std.remedy]
    assert combination([adam, std, done]) == (adam, std)  # a combination is never a part of another


@pytest.mark.slow
def test_verify_tries_the_two_best_fixes_together_and_replay_judges_it_again(tmp_path):
    """On the vanishing-gradient sample several remedies fix the run; the best one (ReLU with
    Kaiming init) and the best one that changes another part of the config are tried as one more
    remedy, whose probe runs with both patches applied."""
    cfg = tmp_path / "vg.yaml"
    text = (SAMPLES / "vanishing-gradients.yaml").read_text()
    cfg.write_text(text + "probe:\n  verify: {time_factor: null, seeds: 0, longer: null}\n")
    r = runner.invoke(app, ["diagnose", str(cfg), "--verify", "--format", "json", "--save-trace", str(tmp_path / "tr")])
    f = json.loads(r.stdout)["findings"][0]
    assert f["rule"] == "OD101", r.output
    tried = f["verification"]
    parts = [v for v in tried if v["helped"] and not v["combines"]]
    both = [v for v in tried if v["combines"]]
    assert len(both) == 1 and len(parts) >= 2
    from optdoctor.diagnose.verify import combinable

    best, *rest = sorted(parts, key=lambda v: v["after"])
    other = next(v for v in rest if combinable(best["patch"], v["patch"]))  # not the residual MLP: a model swap
    (c,) = both
    assert c["combines"] == [best["remedy"], other["remedy"]] and c["patch"] == {**best["patch"], **other["patch"]}
    assert c["applicable"] and c["probe"] == "verify_OD101_combined" and c["after"] is not None
    assert c["after"] not in (best["after"], other["after"])  # its own probe, with both applied
    text_out = runner.invoke(app, ["replay", str(tmp_path / "tr")]).stdout
    assert "together" in text_out and "(alone:" in text_out  # and what each part reached alone
    again = json.loads(runner.invoke(app, ["replay", str(tmp_path / "tr"), "--format", "json"]).stdout)["findings"][0]
    (c2,) = [v for v in again["verification"] if v["combines"]]
    assert (c2["after"], c2["helped"], c2["patch"]) == (c["after"], c["helped"], c["patch"])


@pytest.mark.slow
def test_combine_false_tries_no_combination(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text((SAMPLES / "vanishing-gradients.yaml").read_text()
                 + "probe:\n  verify: {time_factor: null, seeds: 0, longer: null, combine: false}\n")
    f = json.loads(runner.invoke(app, ["diagnose", str(p), "--verify", "--format", "json"]).stdout)["findings"][0]
    assert sum(v["helped"] for v in f["verification"]) >= 2 and not any(v["combines"] for v in f["verification"])
