"""Remedies that need more than a config value (issue 13): optimisers beyond torch.optim
(``package.module:Class``, closure-based L-BFGS), in-loop remedies (perturbed gradient descent,
a negative-curvature step, early stopping), ``$symptom`` placeholders in patches, and how
--verify measures cost, robustness and time."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import yaml
from torch import nn

from optdoctor.config import load_config
from optdoctor.errors import ConfigError
from optdoctor.probes.batches import call_model
from optdoctor.probes.runner import ProbeSpec, batches, run_probe
from optdoctor.probes.setup import prepare
from optdoctor.remedies import NotApplicable, Verification, apply_patch

HAS_PYTORCH_OPTIMIZER = importlib.util.find_spec("pytorch_optimizer") is not None

BASE = {
    "seed": 0,
    "model": {"factory": "optdoctor.models:mlp", "args": {"depth": 1, "width": 8}},
    "data": {"factory": "optdoctor.data:linear_regression", "args": {"n_features": 6}, "batch_size": 32},
    "loss": "mse",
    "optimizer": {"name": "sgd", "lr": 0.01},
    "probe": {"steps": 12, "hessian": {"enabled": False}, "variants": {"lr_factors": []}, "lr_range": False},
}


def config(tmp_path, **over):
    cfg = yaml.safe_load(yaml.safe_dump(BASE))
    for key, value in over.items():
        node = cfg
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path)


def probe(loaded, steps=None):
    setup = prepare(loaded)
    return run_probe(setup, ProbeSpec(steps=steps or loaded.config.probe.steps, seed=loaded.config.seed))


# --- closure-based optimisers ----------------------------------------------------------------

def test_lbfgs_runs_with_a_closure_and_the_instruments_record_one_row_per_step(tmp_path, monkeypatch):
    loaded = config(tmp_path, optimizer={"name": "lbfgs", "lr": 1.0, "args": {"max_iter": 4, "line_search_fn": "strong_wolfe"}})
    calls = []
    # the class's own step: once any LBFGS was built (an earlier test), torch has wrapped it with
    # its hook machinery, and wrapping that again would run the step hooks twice per step
    step = torch.optim.LBFGS.step
    original = step.__wrapped__ if getattr(step, "hooked", False) else step  # (unhooked: no_grad's own wrapper, keep it)

    def counting(self, closure):
        n = [0]

        def counted():
            n[0] += 1
            return closure()

        out = original(self, counted)
        calls.append(n[0])
        return out

    monkeypatch.setattr(torch.optim.LBFGS, "step", counting)
    trace, _ = probe(loaded)
    steps = loaded.config.probe.steps
    assert len(calls) == steps and max(calls) > 1  # the line search re-evaluated the loss
    assert trace.values("grad.norm").shape[0] == steps  # gradients measured once per step
    assert trace.values("loss.train").shape == (steps,)
    assert trace.status == "completed" and trace.meta["step_seconds"] > 0
    loss = trace.values("loss.train")
    assert loss[-1] < 0.5 * loss[0]


def test_the_measured_gradient_is_the_first_evaluation_before_the_line_search(tmp_path):
    """The step pre-hook sees the gradient of the loop's own forward pass: the update ratio spans
    the whole step (every closure evaluation), the gradient norm is the first one's."""
    loaded = config(tmp_path, optimizer={"name": "lbfgs", "lr": 1.0, "args": {"max_iter": 3}}, probe__steps=1)
    setup = prepare(loaded)
    model = setup.build_model(0)
    X, y = next(batches(setup, 0))  # the probe's first batch
    loss = setup.criterion(call_model(model, X), y)
    g = torch.autograd.grad(loss, list(model.parameters()))
    trace, _ = run_probe(setup, ProbeSpec(steps=1, seed=0))
    weights = [float(g[0].norm()), float(g[2].norm())]  # grad.norm: each layer's weight gradient
    assert trace.values("grad.norm")[0].tolist() == pytest.approx(weights, rel=1e-5)


def test_a_time_budget_calibrates_and_stops_a_closure_optimizer(tmp_path):
    """probe.budget's calibration steps the optimiser as a probe does: L-BFGS gets its closure."""
    from optdoctor.diagnose import run_diagnosis
    from optdoctor.probes.budget import calibrate

    loaded = config(tmp_path, optimizer={"name": "lbfgs", "lr": 1.0, "args": {"max_iter": 3}})
    assert calibrate(prepare(loaded)).step > 0
    diag = run_diagnosis(apply_patch(loaded, {"probe.budget": 5}))
    assert diag.status == "completed" and diag.probes.baseline.has("loss.train")


# --- optimisers named "package.module:Class" ------------------------------------------------

def test_an_optimizer_class_from_a_module_path(tmp_path):
    (tmp_path / "opt.py").write_text("import torch\nclass MySGD(torch.optim.SGD):\n    pass\n")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        loaded = config(tmp_path, optimizer={"name": "opt:MySGD", "lr": 0.01})
        trace, _ = probe(loaded)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("opt", None)
    assert trace.status == "completed" and trace.meta["optimizer"] == "opt:mysgd"


def test_a_missing_optimizer_package_is_a_config_error_that_says_what_to_install(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytorch_optimizer" else real(name, *a))
    loaded = config(tmp_path, optimizer={"name": "pytorch_optimizer:Shampoo", "lr": 0.1})
    with pytest.raises(ConfigError, match=r"optimizer.name.*pip install 'optdoctor\[optimizers\]'"):
        prepare(loaded)
    loaded = config(tmp_path, optimizer={"name": "no_such_optim_pkg:Shampoo", "lr": 0.1})
    with pytest.raises(ConfigError, match=r"optimizer.name.*cannot import module 'no_such_optim_pkg'"):
        prepare(loaded)


def test_a_non_optimizer_is_rejected(tmp_path):
    loaded = config(tmp_path, optimizer={"name": "math:sqrt", "lr": 0.1})
    with pytest.raises(ConfigError, match="not an optimizer class"):
        prepare(loaded)


@pytest.mark.skipif(not HAS_PYTORCH_OPTIMIZER, reason="pytorch-optimizer (optdoctor[optimizers]) not installed")
def test_shampoo_from_pytorch_optimizer_runs(tmp_path):
    loaded = config(tmp_path, optimizer={"name": "pytorch_optimizer:Shampoo", "lr": 0.1})
    trace, _ = probe(loaded)
    assert trace.status == "completed" and trace.values("grad.norm").shape[0] == loaded.config.probe.steps


def test_verify_reports_an_absent_optimizer_package_as_not_applicable(tmp_path, monkeypatch):
    """Without the extra, a Shampoo remedy is 'not applicable: pip install ...', never a crash."""
    from optdoctor.config import resolve
    from optdoctor.diagnose import verify

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytorch_optimizer" else real(name, *a))
    assert resolve.optimizer_available("pytorch_optimizer:Shampoo") == "pip install 'optdoctor[optimizers]'"
    loaded = config(tmp_path)
    setup = prepare(loaded)

    class Diag:
        pass

    diag = Diag()
    diag.loaded, diag.symptoms = loaded, {}
    with pytest.raises(NotApplicable, match=r"pip install 'optdoctor\[optimizers\]'"):
        verify._run({"optimizer.name": "pytorch_optimizer:Shampoo", "optimizer.lr": 1.0}, 0, "v", diag, setup, None,
                    verify._Budget(None, None))


@pytest.mark.parametrize("optimizer, cycles", [("adagrad", False), ("sgd", True), ("adam", True)])
def test_a_one_cycle_remedy_runs_for_an_optimizer_without_momentum(tmp_path, optimizer, cycles):
    """OneCycleLR cycles the momentum by default, and torch refuses an optimizer without one
    (Adagrad): the remedy then cycles the rate alone instead of failing to run."""
    from optdoctor.diagnose import verify

    loaded = config(tmp_path, optimizer={"name": optimizer, "lr": 0.01})
    setup = prepare(loaded)

    class Diag:
        pass

    diag = Diag()
    diag.loaded, diag.symptoms = loaded, {}
    patch = {"schedule": {"name": "OneCycleLR", "args": {"max_lr": "$lr", "total_steps": "$steps"}}}
    trace = verify._run(patch, 0, "v", diag, setup, None, verify._Budget(None, None))
    assert trace.status == "completed"
    patched = apply_patch(loaded, patch)
    assert verify._cycles_absent_momentum(prepare(patched), patch) is not cycles


# --- in-loop remedies -------------------------------------------------------------------------

class Saddle(nn.Module):
    """f(x, y) = x^2 - y^2 + y^4 / 4: a strict saddle at the origin, minima at y = +-sqrt(2)."""

    def __init__(self, x=0.3, y=1e-4):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([x, y]))

    def forward(self, inputs):
        x, y = self.w[0], self.w[1]
        return (x**2 - y**2 + y**4 / 4).expand(len(inputs))


def saddle_loss(out, _targets):
    return out.mean()


def test_negative_curvature_step_leaves_a_two_weight_saddle():
    from optdoctor.probes.interventions import negative_curvature_step

    model = Saddle()
    batch = (torch.zeros(4, 1), torch.zeros(4))
    before = float(saddle_loss(model(batch[0]), None).detach())
    out = negative_curvature_step(model, saddle_loss, batch, radius=0.05, doublings=8)
    after = float(saddle_loss(model(batch[0]), None).detach())
    assert out["lambda_min"] == pytest.approx(-2.0, rel=1e-3) and out["lambda_max"] == pytest.approx(2.0, rel=1e-3)
    assert out["outcome"] == "stepped" and out["loss_before"] == pytest.approx(before)
    assert after == pytest.approx(out["loss_after"]) and after < before - 0.4  # the way down: -1 at |y| = sqrt(2)
    assert abs(float(model.w[1].detach())) > 0.5 and float(model.w[0].detach()) == pytest.approx(0.3, abs=1e-4)  # moved along y only


def test_negative_curvature_step_does_nothing_at_a_minimum():
    from optdoctor.probes.interventions import negative_curvature_step

    model = nn.Linear(3, 1)
    batch = (torch.randn(16, 3), torch.randn(16, 1))
    w = [p.detach().clone() for p in model.parameters()]
    out = negative_curvature_step(model, nn.functional.mse_loss, batch)
    assert out["outcome"] == "no negative curvature" and out["eta"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(w, model.parameters()))


def test_ball_kick_has_the_radius_and_is_seeded():
    from optdoctor.probes.interventions import ball_kick

    a, b = [torch.zeros(50), torch.zeros(5, 10)], [torch.zeros(50), torch.zeros(5, 10)]
    ra = ball_kick(a, 0.5, torch.Generator().manual_seed(1))
    rb = ball_kick(b, 0.5, torch.Generator().manual_seed(1))
    norm = math.sqrt(sum(float(t.pow(2).sum()) for t in a))
    assert ra == rb and norm == pytest.approx(ra, rel=1e-5) and 0.45 < ra <= 0.5  # d = 100: r u^(1/d) is near r
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_perturbed_gd_kicks_only_when_the_gradient_is_small(tmp_path):
    loaded = config(tmp_path, probe__perturb_gd={"threshold": 1e6, "radius": 0.1, "interval": 5})
    trace, _ = probe(loaded)
    assert [k["step"] for k in trace.meta["perturb_gd"]] == [1, 6, 11]  # every `interval` steps at most
    loaded = config(tmp_path, probe__perturb_gd={"threshold": 1e-12, "radius": 0.1})
    trace, _ = probe(loaded)
    assert trace.meta["perturb_gd"] == []


def test_in_loop_remedies_are_off_by_default(tmp_path):
    loaded = config(tmp_path)
    p = loaded.config.probe
    assert p.perturb_gd is None and p.negative_curvature_step is None and p.early_stopping is None
    trace, _ = probe(loaded)
    assert not {"perturb_gd", "negative_curvature", "early_stopping"} & set(trace.meta)


def test_negative_curvature_step_in_a_probe_records_the_escape(tmp_path):
    loaded = config(tmp_path, model={"factory": "optdoctor.models:linear_net", "args": {"depth": 2, "width": 8, "scale": 3e-3}},
                    optimizer={"name": "sgd", "lr": 0.1}, probe__steps=20, probe__negative_curvature_step={"at": [0.5]})
    trace, _ = probe(loaded)
    (rec,) = trace.meta["negative_curvature"]
    assert rec["step"] == 10 and rec["lambda_min"] < 0 and rec["outcome"] == "stepped"
    assert rec["loss_after"] < 0.9 * rec["loss_before"]
    loss = trace.values("loss.train")
    assert loss[-1] < 0.9 * loss[9]


def test_clip_grad_norm_runs_in_a_probe_and_bounds_the_step(tmp_path, monkeypatch):
    """probe.clip_grad_norm (a remedy's patch) clips before every optimizer step; the step hook
    must not hand clip_grad_norm_'s norm back to torch as new step arguments."""
    norms = []
    original = torch.optim.SGD.step

    def seen(self, *a, **k):
        norms.append(float(torch.cat([p.grad.flatten() for g in self.param_groups for p in g["params"]]).norm()))
        return original(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", seen)
    loaded = config(tmp_path, optimizer={"name": "sgd", "lr": 0.01}, probe__clip_grad_norm=1e-3)
    trace, _ = probe(loaded)
    assert trace.status == "completed" and len(norms) == loaded.config.probe.steps
    assert max(norms) <= 1e-3 * (1 + 1e-4)  # the optimizer saw the clipped gradient
    assert trace.values("grad.norm").max() > 1e-2  # the instruments saw the unclipped one


def test_early_stopping_keeps_the_best_validation_checkpoint(tmp_path):
    loaded = load_config(__import__("pathlib").Path(__file__).resolve().parents[1] / "sample_runs" / "overfitting.yaml")
    loaded = apply_patch(loaded, {"probe.early_stopping": {"patience": 2}, "probe.hessian.enabled": False, "probe.steps": 120})
    trace, state = probe(loaded)
    es = trace.meta["early_stopping"]
    val = trace.values("loss.val")
    assert es["restored"] and es["stopped_at"] < 120 and trace.stopped_at == es["stopped_at"]
    assert val[-1] == pytest.approx(es["best_val"], rel=1e-5) and val[-1] <= val.min() + 1e-9  # ends at the minimum
    # the weights returned are the best checkpoint's: evaluating them gives the best validation loss
    setup = prepare(loaded)
    model = setup.build_model(0)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():  # on the validation sample the evaluation instrument measures
        parts = [(float(setup.criterion(call_model(model, X), y)), len(y)) for X, y in setup.eval_batches("val")]
    assert sum(v * n for v, n in parts) / sum(n for _, n in parts) == pytest.approx(es["best_val"], rel=1e-4)


# --- patches ----------------------------------------------------------------------------------

def test_symptom_placeholders_in_patches(tmp_path):
    loaded = config(tmp_path)
    patch = {"schedule": {"name": "OneCycleLR", "args": {"max_lr": "$lr.range_best/3", "total_steps": "$steps", "pct_start": 0.05}},
             "probe.negative_curvature_step": {"at": [0.25]}}
    new = apply_patch(loaded, patch, symptoms={"lr.range_best": 0.3})
    assert new.config.schedule.args == {"max_lr": pytest.approx(0.1), "total_steps": 12, "pct_start": 0.05}
    assert new.config.probe.negative_curvature_step.at == [0.25]
    assert apply_patch(loaded, {"schedule": {"name": "CosineAnnealingWarmRestarts", "args": {"T_0": "$steps/4"}}}).config.schedule.args == {"T_0": 3}
    with pytest.raises(NotApplicable, match="lr.range_suggested"):
        apply_patch(loaded, {"optimizer.lr": "$lr.range_suggested"})


# --- ranking, recommendation, time ------------------------------------------------------------

def V(name, after, cost=1.0, helped=True, seeds=None):
    return Verification(remedy=name, patch={}, before=10.0, after=after, gain=(10 - after) / 10, helped=helped, cost=cost, seeds=seeds)


def test_recommend_the_cheapest_fix_near_the_best_loss():
    from optdoctor.diagnose.verify import recommend

    pick, why = recommend([V("lbfgs", 0.5, cost=10.0), V("standardise", 0.8, cost=1.0), V("momentum", 5.0, helped=False)])
    assert pick.remedy == "standardise" and "lbfgs reached 0.5 but costs 10x per step" in why
    pick, _ = recommend([V("lbfgs", 0.1, cost=10.0), V("standardise", 0.8, cost=1.0)])
    assert pick.remedy == "lbfgs"  # 8x better loss is worth the cost
    assert recommend([V("x", 5.0, helped=False)]) == (None, "")


def test_a_combination_is_recommended_only_when_no_single_fix_comes_near_it():
    """Two changes where one does as well is worse advice: a single fix within the loss slack of
    the combination goes first, even when the combination is cheaper per step; a combination far
    better than every single fix is recommended."""
    from optdoctor.diagnose.verify import recommend

    def combo(after, cost=1.0):
        v = V("bn + standardise, together", after, cost=cost)
        v.combines = ["bn", "standardise"]
        return v

    pick, why = recommend([combo(0.0591775, cost=0.9), V("bn", 0.0591802, cost=1.0), V("standardise", 0.5)])
    assert pick.remedy == "bn" and "bn + standardise reached 0.0592 but costs" not in why and "bn + standardise reached 0.0592" in why
    pick, _ = recommend([combo(0.01), V("bn", 0.05), V("standardise", 0.5)])
    assert pick.remedy == "bn + standardise, together"  # 5x lower than the best single fix
    pick, _ = recommend([combo(0.01), V("bn", 0.019, cost=1.5)])
    assert pick.remedy == "bn"  # within 2x: the single change, although it costs more per step


def test_a_fix_that_fails_on_an_extra_seed_is_no_fix():
    """hold_on_seeds: fixed on the first seed but not on every extra one -> "better" (improved),
    not fixed, and never recommended; a fix on every seed, or one not tried on more seeds, stays."""
    from optdoctor.diagnose.verify import hold_on_seeds, recommend

    a, b, c = V("a", 0.1, seeds={"fixed": 1, "of": 2}), V("b", 0.5, seeds={"fixed": 2, "of": 2}), V("c", 0.3)
    for v in (a, b, c):
        hold_on_seeds(v)
    assert (a.helped, a.improved) == (False, True) and "1/2 more seeds only" in a.seeds_note
    assert b.helped and not b.improved and c.helped and not c.seeds_note
    pick, why = recommend([a, b])
    assert pick.remedy == "b" and "2/2" in why
    lone = V("a", 0.1, seeds={"fixed": 0, "of": 2})
    hold_on_seeds(lone)
    assert recommend([lone]) == (None, "")  # was recommended for want of a robust fix before


def test_the_longer_run_scales_the_steps_and_a_schedule_that_spans_the_probe(tmp_path):
    from optdoctor.diagnose.verify import longer_config

    one = config(tmp_path, schedule={"name": "OneCycleLR", "args": {"max_lr": 0.1, "total_steps": 12}})
    long = longer_config(one, 2.0)
    assert long.config.probe.steps == 24 and long.config.schedule.args == {"max_lr": 0.1, "total_steps": 24}
    assert one.config.probe.steps == 12  # the diagnosis' own config is untouched
    step = config(tmp_path, schedule={"name": "StepLR", "args": {"step_size": 12, "gamma": 0.5}})
    assert longer_config(step, 2.0).config.schedule.args == {"step_size": 12, "gamma": 0.5}  # a period, not the run's length
    cos = config(tmp_path, schedule={"name": "CosineAnnealingLR", "args": {"T_max": 12}})
    assert longer_config(cos, 1.5).config.schedule.args == {"T_max": 18}
    # a remedy's $steps then stands for the longer run
    assert apply_patch(longer_config(config(tmp_path), 2.0),
                       {"schedule": {"name": "OneCycleLR", "args": {"max_lr": "$lr", "total_steps": "$steps"}}}
                       ).config.schedule.args["total_steps"] == 24


def test_a_fix_that_breaks_down_when_trained_longer_is_no_fix():
    """hold_longer: fixed in the probe (and on every seed) but not when trained longer ->
    "better", never recommended; one that held, or that time left untried, stays a fix."""
    from optdoctor.diagnose.verify import hold_longer, recommend

    broke, held, untried = V("broke", 0.1), V("held", 0.5), V("untried", 0.3)
    broke.longer = {"steps": 24, "after": math.inf, "fixed": False}
    held.longer = {"steps": 24, "after": 0.2, "fixed": True}
    untried.longer = {"steps": 24, "reason": "not trained longer (time)"}
    for v in (broke, held, untried):
        hold_longer(v)
    assert (broke.helped, broke.improved) == (False, True)
    assert held.helped and untried.helped and not held.improved
    assert recommend([broke, held])[0].remedy == "held"


def test_time_for_robustness_checks_goes_first_to_each_findings_recommendation():
    """robustness_order: finding by finding, the fix that would be recommended (the next one
    while a pick fails its checks), then the other fixes; each pick is made after the previous
    one was checked. Under --verify's time limit the remedy a user is told to apply is then the
    one most likely to have been tried on more seeds and trained longer."""
    from optdoctor.diagnose.verify import hold_longer, robustness_order

    a, b, c, x = V("a", 0.1), V("b", 0.15, cost=2.0), V("c", 5.0), V("x", 1.0, helped=False)
    d, e = V("d", 0.3), V("e", 0.2, cost=3.0)
    breaks = {"a"}
    order, checked = [], set()
    for f, rule, v in robustness_order([("f1", "r1", [a, b, c, x]), ("f2", "r2", [d, e])], checked):
        checked.add(id(v))
        order.append((f, v.remedy))
        v.longer = {"steps": 24, "fixed": v.remedy not in breaks}
        hold_longer(v)
    # a (cheapest near the best loss) first; it breaks down, so b, the next pick; then f2's pick d
    # (e is within 2x of d's loss but 3x the cost), then the rest; x never fixed the run
    assert order == [("f1", "a"), ("f1", "b"), ("f2", "d"), ("f1", "c"), ("f2", "e")]
    assert not a.helped and b.helped and c.helped


def test_budget_skips_what_does_not_fit():
    from optdoctor.diagnose.verify import _Budget
    import time

    assert _Budget(None, time.perf_counter() - 100).fits(1000)
    b = _Budget(1.5, time.perf_counter() - 1.0)  # 0.5 s left
    assert b.fits()
    b.spent(0.4)
    assert b.fits(1) and not b.fits(2)
    assert "skipped for time" in b.reason() and "time_factor: null lifts it" in b.reason()


def test_verification_probes_count_against_a_time_budget(tmp_path):
    """With probe.budget, a verification probe starts only when the budget admits it and stops
    at its hard limit (besides --verify's own time_factor limit)."""
    from types import SimpleNamespace

    from optdoctor.diagnose.verify import _Budget, _OutOfBudget, _run

    class Fake:
        def __init__(self, room: bool, stop_after: int):
            self.room, self.stop_after, self.checks, self.calls = room, stop_after, 0, []

        def admit_specs(self, what, specs):
            self.calls.append(("admit", what))
            return self.room

        def begin_spec(self, spec):
            self.calls.append(("begin", spec.name))

        def end(self, trace=None):
            self.calls.append(("end", trace.status))

        def stop(self):
            self.checks += 1
            return self.checks > self.stop_after

    loaded = config(tmp_path)
    diag, setup = SimpleNamespace(loaded=loaded, symptoms={}), prepare(loaded)
    full = Fake(room=False, stop_after=0)
    with pytest.raises(_OutOfBudget):
        _run({"optimizer.lr": 0.02}, 0, "verify_X_1", diag, setup, None, _Budget(None, None), full)
    assert full.calls == [("admit", "verify_X_1")]
    room = Fake(room=True, stop_after=4)
    trace = _run({"optimizer.lr": 0.02}, 0, "verify_X_1", diag, setup, None, _Budget(None, None), room)
    assert room.calls == [("admit", "verify_X_1"), ("begin", "verify_X_1"), ("end", "stopped")]
    assert trace.meta["steps"] == 5 and trace.meta["planned_steps"] == 12


# --- the rule pack ----------------------------------------------------------------------------

OPTIMIZER_SIDE = ("optimizer", "schedule", "probe.perturb_gd", "probe.negative_curvature_step", "probe.clip_grad_norm",
                  "probe.early_stopping")
MODEL_DATA_SIDE = ("model", "data", "probe.standardize_inputs")


def test_every_cause_has_a_patched_remedy_on_the_optimizer_side_and_one_on_the_model_or_data_side():
    from collections import defaultdict

    from optdoctor.engine.rules import load_rules

    sides = defaultdict(set)
    for rule in load_rules():
        for r in rule.remedies:
            for key in r.patch or {}:
                sides[rule.cause] |= {"optimizer"} if key.startswith(OPTIMIZER_SIDE) else set()
                sides[rule.cause] |= {"model/data"} if key.startswith(MODEL_DATA_SIDE) else set()
    assert {c: s for c, s in sides.items() if s != {"optimizer", "model/data"}} == {}


def test_the_ill_conditioning_and_saddle_rules_name_the_issue_13_remedies():
    from optdoctor.engine.rules import load_rules

    rules = {r.id: r for r in load_rules()}
    od201 = [r.patch for r in rules["OD201"].remedies if r.patch]
    names = {p.get("optimizer.name") for p in od201}
    assert {"adam", "lbfgs", "pytorch_optimizer:Shampoo"} <= names
    assert {"probe.standardize_inputs": True} in od201 and {"optimizer.args.momentum": 0.9} in od201
    od202 = {k for r in rules["OD202"].remedies if r.patch for k in r.patch}
    assert {"probe.negative_curvature_step", "probe.perturb_gd"} <= od202
    assert any("Jin et al. 2017" in ref for ref in rules["OD202"].references)


def test_swapping_a_builtin_model_for_its_residual_twin_keeps_the_arguments_it_takes(tmp_path):
    loaded = config(tmp_path, model={"factory": "optdoctor.models:mlp", "args": {"depth": 3, "width": 8, "act": "tanh", "batchnorm": True}})
    new = apply_patch(loaded, {"model.factory": "optdoctor.models:resmlp"})
    assert new.config.model.factory == "optdoctor.models:resmlp"
    assert new.config.model.args == {"depth": 3, "width": 8, "act": "tanh"}  # resmlp has no batchnorm (it has norm)
    trace, _ = probe(new)
    assert trace.status == "completed"
    (tmp_path / "m.py").write_text("import torch\ndef net(in_dim=6, out_dim=1):\n    return torch.nn.Linear(in_dim, out_dim)\n")
    own = config(tmp_path, model={"factory": "m.py:net"})
    with pytest.raises(NotApplicable, match="your own model"):
        apply_patch(own, {"model.factory": "optdoctor.models:resmlp"})
