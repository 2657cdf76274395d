"""The fault benchmark's --verify mode (benchmarks/faults/remedy_check.py): how a remedy's patch
becomes a plain-loop config, how the cases are counted, and (slow) an end-to-end run on three
cases of the fast subset."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("sklearn")
sys.path.insert(0, str(ROOT))

from benchmarks.faults import remedy_check, run

CFG = {
    "name": "c", "seed": 0,
    "model": {"factory": "../factories.py:mlp", "args": {"in_dim": 13, "out_dim": 3, "width": 32}},
    "data": {"factory": "../factories.py:table", "args": {"name": "wine"}, "batch_size": 32},
    "loss": "cross_entropy",
    "optimizer": {"name": "sgd", "lr": 0.5, "args": {"momentum": 0.9}},
    "schedule": {"name": "CyclicLR", "args": {"base_lr": 0.1, "max_lr": 2.0, "step_size_up": 10}},
    "probe": {"steps": 150},
}


def test_a_rate_multiple_scales_the_schedules_absolute_rates_too():
    out = remedy_check.plain_config(CFG, {"optimizer.lr": "x0.1"}, {}, 300)
    assert out["optimizer"]["lr"] == pytest.approx(0.05)
    assert out["schedule"]["args"] == {"base_lr": pytest.approx(0.01), "max_lr": pytest.approx(0.2), "step_size_up": 10}
    assert CFG["optimizer"]["lr"] == 0.5  # the case's config is left alone


def test_placeholders_stand_for_the_rate_the_plain_loops_steps_and_measured_symptoms():
    patch = {"schedule": {"name": "OneCycleLR", "args": {"max_lr": "$lr.range_best/3", "total_steps": "$steps"}}}
    out = remedy_check.plain_config(CFG, patch, {"lr.range_best": 0.9}, 300)
    assert out["schedule"] == {"name": "OneCycleLR", "args": {"max_lr": pytest.approx(0.3), "total_steps": 300}}
    with pytest.raises(remedy_check.NotCheckable, match="lr.range_best"):
        remedy_check.plain_config(CFG, patch, {}, 300)


def test_a_new_optimizer_drops_the_old_ones_arguments_unless_the_patch_sets_them():
    assert remedy_check.plain_config(CFG, {"optimizer.name": "adam", "optimizer.lr": 1e-3}, {}, 300)["optimizer"] == \
        {"name": "adam", "lr": 1e-3, "args": {}}
    lbfgs = {"optimizer.name": "lbfgs", "optimizer.args": {"max_iter": 4}}
    assert remedy_check.plain_config(CFG, lbfgs, {}, 300)["optimizer"]["args"] == {"max_iter": 4}


def test_model_arguments_multiply_the_factorys_default_and_must_be_taken():
    assert remedy_check.plain_config(CFG, {"model.args.depth": "x2"}, {}, 300)["model"]["args"]["depth"] == 4  # default 2
    assert remedy_check.plain_config(CFG, {"model.args.init": "kaiming_normal"}, {}, 300)["model"]["args"]["init"] == \
        "kaiming_normal"
    with pytest.raises(remedy_check.NotCheckable, match="weight_scale"):
        remedy_check.plain_config(CFG, {"model.args.init": "xavier_normal", "model.args.weight_scale": 1.0}, {}, 300)


@pytest.mark.parametrize("patch", [{"model.factory": "optdoctor.models:resmlp"}, {"probe.lr_range": False}])
def test_optdoctors_own_models_and_other_probe_settings_are_not_checkable(patch):
    with pytest.raises(remedy_check.NotCheckable):
        remedy_check.plain_config(CFG, patch, {}, 300)
    assert remedy_check.plain_config(CFG, {"probe.clip_grad_norm": 1.0}, {}, 300)["probe"]["clip_grad_norm"] == 1.0


@pytest.mark.parametrize("patch", [{"probe.perturb_gd": {"threshold": 1e-3, "radius": 1.0}},
                                   {"probe.negative_curvature_step": {"at": [0.25]}}])
def test_in_loop_interventions_are_checkable(patch):
    out = remedy_check.plain_config(CFG, patch, {}, 300)
    key = next(iter(patch)).split(".")[1]
    assert out["probe"][key] == patch[f"probe.{key}"]


def _dense_hessian(model, loss_fn, X, y):
    """The reference: the Hessian in the flat parameter vector, column by column from torch.func."""
    from torch.func import functional_call, hessian

    names = [n for n, p in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()

    def f(flat):
        out, i = {}, 0
        for n, sh in zip(names, shapes):
            k = int(np.prod(sh)) if len(sh) else 1
            out[n] = flat[i:i + k].reshape(sh)
            i += k
        return loss_fn(functional_call(model, out, (X,)), y)

    return hessian(f)(flat0)


@pytest.mark.parametrize("width", [3, 12])  # 3*4+4+4+1 = 21 parameters (dense path), 12: 73 (ARPACK)
def test_plain_loops_lambda_min_and_eigenvector_match_a_dense_hessian(width):
    from benchmarks.faults import verify as plain

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.Tanh(), torch.nn.Linear(width, 1)).double()
    X, y = torch.randn(32, 4, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)
    loss_fn = torch.nn.functional.mse_loss
    lam, v = plain._min_eigvec(model, loss_fn, X, y)
    evals, evecs = torch.linalg.eigh(_dense_hessian(model, loss_fn, X, y))
    assert lam == pytest.approx(float(evals[0]), rel=1e-3, abs=1e-6)
    assert abs(float(v.double() @ evecs[:, 0])) == pytest.approx(1.0, abs=1e-3)


def test_plain_loops_kick_is_uniform_in_the_ball():
    """The kick's length is radius * U^(1/d): never beyond the radius, and P(|kick| <= radius/2) = 2^-d
    (here d = 2: a quarter), its direction isotropic (mean near 0)."""
    from benchmarks.faults import verify as plain

    gen = torch.Generator().manual_seed(0)
    kicks = []
    for _ in range(4000):
        w = [torch.zeros(1), torch.zeros(1)]
        plain._ball_kick(w, 2.0, gen)
        kicks.append(torch.cat(w))
    k = torch.stack(kicks)
    norms = k.norm(dim=1)
    assert float(norms.max()) <= 2.0
    assert float((norms <= 1.0).float().mean()) == pytest.approx(0.25, abs=0.03)
    assert float(k.mean(0).abs().max()) < 0.06


def test_plain_loops_curvature_step_leaves_the_saddle_downhill():
    """y = w2 w1 x from w = (0, 0) under the mean squared error: a strict saddle (the Hessian
    [[0, -2c], [-2c, 0]], c = mean(x y), lambda_min = -2|c| along (1, sign(c))/sqrt 2). The step goes along it and lowers the loss; at a
    minimum there is no step."""
    from benchmarks.faults import verify as plain

    x = torch.randn(256, 1, generator=torch.Generator().manual_seed(1))
    y = 2.0 * x
    model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = torch.nn.functional.mse_loss
    before = float(loss_fn(model(x), y).detach())
    rec = plain._curvature_step(model, loss_fn, x, y, opt, {"radius": 0.05, "doublings": 8})
    c = float((x * y).mean())
    assert rec["lambda_min"] == pytest.approx(-2 * abs(c), rel=1e-3) and rec["eta"] > 0
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert float(w.norm()) == pytest.approx(rec["eta"], rel=1e-4)
    assert float(w[0] * w[1]) > 0  # the product's sign is the target slope's: downhill
    assert float(loss_fn(model(x), y).detach()) < before
    with torch.no_grad():  # at the global minimum w1 w2 = 2 the Hessian is positive semi-definite
        model[0].weight.fill_(2.0 ** 0.5)
        model[1].weight.fill_(2.0 ** 0.5)
    assert plain._curvature_step(model, loss_fn, x, y, opt, {})["eta"] == 0.0


def _report(*verifications, severity="error"):
    return {"symptoms": {}, "findings": [{"cause": "lr_too_high", "severity": severity, "rule": "OD401",
                                          "verification": list(verifications)}]}


def _v(patch, helped, probe="verify_OD401_1"):
    return {"remedy": "r", "patch": patch, "applicable": probe is not None, "probe": probe, "helped": helped,
            "after": 0.1, "before": 1.0, "cost": 1.2}


def test_accounting_counts_plain_loop_verdicts_and_keeps_the_uncheckable_apart(monkeypatch):
    verdicts = {'{"optimizer.lr": "x0.1"}': True, '{"probe.clip_grad_norm": 1.0}': False}
    monkeypatch.setattr(remedy_check, "check", lambda case, patch, symptoms: {"checkable": True,
                        "trains_well": verdicts[json.dumps(patch, sort_keys=True)], "seeds": []}
                        if "model.factory" not in patch else {"checkable": False, "why": "optdoctor's model"})
    case = {"cause": "lr_too_high"}
    both = _report(_v({"optimizer.lr": "x0.1"}, True), _v({"probe.clip_grad_norm": 1.0}, True),
                   _v({"optimizer.lr": "x0.1"}, True), _v({"model.args.batchnorm": True}, False),
                   _v({"model.args.bias_init": 0.0}, False, probe=None))
    rec = remedy_check.account(case, both)
    assert rec["tried_any"] and rec["judged_fixed"] and rec["confirmed"]
    assert [c["patch"] for c in rec["plain"]] == [{"optimizer.lr": "x0.1"}, {"probe.clip_grad_norm": 1.0}]  # each once
    assert rec["false_fixed"] == [{"probe.clip_grad_norm": 1.0}] and rec["not_checkable"] == []
    assert sum(r["ran"] for r in rec["remedies"]) == 4

    false_only = remedy_check.account(case, _report(_v({"probe.clip_grad_norm": 1.0}, True)))
    assert false_only["judged_fixed"] and not false_only["confirmed"] and false_only["false_fixed"]
    kick = remedy_check.account(case, _report(_v({"model.factory": "optdoctor.models:resmlp"}, True)))
    assert kick["judged_fixed"] and not kick["confirmed"] and not kick["false_fixed"] and kick["not_checkable"]
    nothing = remedy_check.account(case, _report(_v({"optimizer.lr": "x0.1"}, False)))
    assert nothing["tried_any"] and not nothing["judged_fixed"] and not nothing["confirmed"] and nothing["plain"] == []
    crashed = remedy_check.account(case, None)  # the diagnosis itself failed
    assert not crashed["tried_any"] and not crashed["judged_fixed"]


def test_the_recommended_remedys_plain_loop_verdict_is_counted(monkeypatch):
    monkeypatch.setattr(remedy_check, "check", lambda case, patch, symptoms: {
        "checkable": "model.factory" not in patch, "trains_well": patch.get("optimizer.lr") == "x0.1", "seeds": []})
    picked = {**_v({"optimizer.lr": "x0.1"}, True), "recommended": True}
    refuted = {**_v({"probe.clip_grad_norm": 1.0}, True), "recommended": True}
    other = _v({"optimizer.lr": "x0.1"}, True)
    mine = {**_v({"model.factory": "optdoctor.models:resmlp"}, True), "recommended": True}
    recs = [{"verify": remedy_check.account({"cause": "lr_too_high"}, _report(*vs))} for vs in
            ([picked, refuted], [other], [mine])]
    line = remedy_check.recommended_line(recs)
    assert "3; plain loop: confirmed 1/3 = 0.33, refuted 1, not checkable 1" in line


def test_combinations_are_counted_apart_and_the_cases_only_they_fix_are_named(monkeypatch):
    good = ('{"optimizer.lr": "x0.1", "probe.standardize_inputs": true}', '{"optimizer.lr": "x0.1"}')
    monkeypatch.setattr(remedy_check, "check", lambda case, patch, symptoms: {
        "checkable": True, "trains_well": json.dumps(patch, sort_keys=True) in good, "seeds": []})
    lr, std = _v({"optimizer.lr": "x0.1"}, True), _v({"probe.standardize_inputs": True}, True)
    both = {**_v({"optimizer.lr": "x0.1", "probe.standardize_inputs": True}, True), "combines": ["r", "r"]}
    clip, mom = _v({"probe.clip_grad_norm": 1.0}, True), _v({"optimizer.args.momentum": 0.9}, True)
    bad_both = {**_v({"probe.clip_grad_norm": 1.0, "optimizer.args.momentum": 0.9}, True), "combines": ["r", "r"]}
    recs = [{"id": i, "verify": remedy_check.account({"cause": "lr_too_high"}, _report(*vs))} for i, vs in
            (("a", [std, both]), ("b", [lr, std, both]), ("c", [clip, mom, bad_both]))]
    line = remedy_check.combinations_line(recs)
    # a: only the combination trains well; b: the single lr fix does too; c: the combination is refuted
    assert line == ("Combinations (two fixes tried together): ran 3, judged fixed 3; plain loop: confirmed 2, "
                    "refuted 1; cases confirmed only through a combination: 1 (a)")


@pytest.mark.parametrize("remedy_q, fix_q, strict, as_fix", [
    ((0.811, 0.799, 0.816), (0.811, 0.800, 0.815), False, True),   # the fix itself just above good: matched
    ((0.811, 0.785, 0.816), (0.811, 0.800, 0.815), False, False),  # more than FIX_TOL below the fix's seed
    ((0.95, 0.799, 0.95), (0.95, 0.95, 0.95), False, False),       # the fix well above good: good is the bar
    ((0.85, 0.85, 0.85), (0.95, 0.95, 0.95), True, True),          # confirmed is also as well as the fix
])
def test_as_well_as_the_fix_relaxes_good_only_where_the_fix_itself_sat_at_it(monkeypatch, remedy_q, fix_q, strict, as_fix):
    from benchmarks.faults import verify as plain

    q = dict(zip(plain.SEEDS, remedy_q))
    monkeypatch.setattr(plain, "train", lambda cfg, seed, steps: {"diverged": False, "q_val": q[seed], "val_final": 0.1,
                                                                   "val_min": 0.1, "l_ref": 1.0})
    case = {"cause": "ill_conditioning", "good": 0.8, "config": CFG, "fix_runs": [{"q_val": x} for x in fix_q]}
    out = remedy_check.check(case, {"optimizer.lr": "x0.1"}, {})
    assert (out["trains_well"], out["as_fix"]) == (strict, as_fix)
    rec = remedy_check._verdicts({"plain": [{"patch": {}, **out}]})
    assert (rec["confirmed"], rec["confirmed_as_fix"]) == (strict, as_fix)


def test_a_healthy_case_that_verify_left_alone_tried_nothing_and_one_it_probed_did():
    healthy = {"cause": "healthy"}
    assert not remedy_check.account(healthy, {"findings": [{"cause": "overfitting", "severity": "info"}]})["tried_any"]
    probed = remedy_check.account(healthy, _report(_v({"optimizer.lr": "x0.1"}, False), severity="warning"))
    assert probed["tried_any"] and probed["plain"] == []  # no plain-loop check for healthy cases
    rows = [{"id": "healthy/a", "cause": "healthy", "findings": [], "seconds": 1.0, "verify": probed},
            {"id": "healthy/b", "cause": "healthy", "findings": [], "seconds": 1.0,
             "verify": remedy_check.account(healthy, {"findings": []})}]
    printed = remedy_check.tables(rows, run.CAUSES, "dev")
    assert "Healthy cases where --verify tried nothing: 1/2 = 0.50" in printed and "healthy/a (OD401)" in printed


@pytest.mark.slow
def test_verify_mode_on_three_fast_cases(tmp_path, capsys):
    """A lowered rate fixes SGD at lr 8 and standardisation fixes raw wine features (optdoctor's
    verdict and the plain loop's); --verify tries nothing on a healthy MLP."""
    ids = ["lr_too_high/sgd-huge-lr/mlp/wine", "ill_conditioning/raw-features/linear/wine", "healthy/mlp-relu/mlp-sgd/wine"]
    out = tmp_path / "verify.json"
    argv = ["--split", "all", "--subset", "fast", "--verify", "--quiet", "--out", str(out)]
    assert run.main(argv + [a for i in ids for a in ("--filter", i)]) == 0
    printed = capsys.readouterr().out
    by_id = {r["id"]: r for r in json.loads(out.read_text())["results"]}
    assert set(by_id) == set(ids)
    high, ill, healthy = (by_id[i]["verify"] for i in ids)
    for rec, patch in ((high, {"optimizer.lr": "x0.1"}), (ill, {"probe.standardize_inputs": True})):
        assert rec["judged_fixed"] and rec["confirmed"]
        (check,) = [c for c in rec["plain"] if c["patch"] == patch]
        assert check["checkable"] and check["trains_well"] and len(check["seeds"]) == 3
        (tried,) = {json.dumps(r) for r in [{k: x[k] for k in ("fixed", "ran")} for x in rec["remedies"]
                                            if x["patch"] == patch]}
        assert json.loads(tried) == {"fixed": True, "ran": True}
    assert all(x["cost_per_step"] and x["after"] is not None for x in high["remedies"] if x["ran"])
    assert not healthy["tried_any"] and healthy["remedies"] == [] and healthy["plain"] == []
    assert "Healthy cases where --verify tried nothing: 1/1 = 1.00" in printed
    assert "| **all faults** | 2 | 2/2 = 1.00 | 2/2 = 1.00 | 2/2 = 1.00 |" in printed


@pytest.mark.slow
def test_batchnorm_on_offset_inputs_is_judged_in_eval_mode(tmp_path):
    """iris with every feature offset by 50 (dev): BatchNorm alone reaches the same training-mode
    loss as BatchNorm with standardised inputs, but its running statistics lag the weights, and in
    eval mode it is clearly worse. The plain loop, which scores in eval mode, refuted it on all
    three seeds at a8920ca (q_val 0.62-0.73; VERIFY.md), where it had been the recommended fix."""
    case_id = "ill_conditioning/offset-features/mlp/iris"
    out = tmp_path / "verify.json"
    assert run.main(["--split", "dev", "--filter", case_id, "--verify", "--no-plain-check", "--quiet",
                     "--out", str(out)]) == 0
    (rec,) = json.loads(out.read_text())["results"]
    remedies = rec["verify"]["remedies"]
    (bn,) = [r for r in remedies if r["patch"] == {"model.args.batchnorm": True}]
    assert bn["ran"] and bn["after_train_mode"] is not None and bn["after"] > 2 * bn["after_train_mode"]
    (std,) = [r for r in remedies if r["patch"] == {"probe.standardize_inputs": True}]
    assert std["fixed"] and std["after_train_mode"] is None  # no BatchNorm: the two modes agree
    (pick,) = [r for r in remedies if r["recommended"]]
    assert pick["patch"] != {"model.args.batchnorm": True}


def test_optional_patch_keys_apply_only_where_the_benchmark_factory_takes_them():
    out = remedy_check.plain_config(CFG, {"model.args.init": "kaiming_normal", "model.args.weight_scale?": 1.0}, {}, 300)
    assert out["model"]["args"]["init"] == "kaiming_normal" and "weight_scale" not in out["model"]["args"]
    with pytest.raises(remedy_check.NotCheckable, match="weight_scale"):
        remedy_check.plain_config(CFG, {"model.args.weight_scale": 1.0}, {}, 300)


def test_plain_loop_early_stopping_ends_with_the_best_checkpoint():
    """probe.early_stopping in the plain loop: it stops after `patience` validations without a new
    minimum and, with restore_best, its last row is the best checkpoint's (no rise left)."""
    from benchmarks.faults import verify as plain

    cfg = remedy_check.plain_config({**CFG, "schedule": None, "optimizer": {"name": "sgd", "lr": 0.3, "args": {"momentum": 0.9}}},
                                    {"probe.early_stopping": {"patience": 1}}, {}, 600)
    assert cfg["probe"]["early_stopping"] == {"patience": 1}
    stopped = plain.train(cfg, 0, 600)
    free = plain.train({**cfg, "probe": {"steps": 150}}, 0, 600)
    assert stopped["steps"] < 600 and free["steps"] == 600
    assert stopped["val_final"] == stopped["val_min"] and stopped["val_min"] >= free["val_min"]
    kept = plain.train({**cfg, "probe": {"steps": 150, "early_stopping": {"patience": 1, "restore_best": False}}}, 0, 600)
    assert kept["steps"] == stopped["steps"] and kept["val_final"] > kept["val_min"]


def test_reinit_is_checkable_and_reaches_the_plain_loop():
    out = remedy_check.plain_config(CFG, {"probe.reinit": "xavier_normal"}, {}, 300)
    assert out["probe"]["reinit"] == "xavier_normal"


def test_plain_loop_standardizes_targets_by_the_train_statistics():
    """probe.standardize_targets in the plain loop: the fault's targets (x100 + 500) become the
    fix's (unit scale), so the plain run of the remedy equals training on the fix's data up to
    the standardisation's rounding."""
    from benchmarks.faults import verify as plain

    cfg = {"data": {"factory": "../factories.py:teacher", "args": {"target_scale": 100.0, "target_offset": 500.0},
                    "batch_size": 64},
           "model": {"factory": "../factories.py:mlp", "args": {"in_dim": 10, "out_dim": 1}},
           "loss": "mse", "optimizer": {"name": "adam", "lr": 0.001}, "schedule": None, "probe": {"steps": 60}}
    out = remedy_check.plain_config(cfg, {"probe.standardize_targets": True}, {}, 120)
    assert out["probe"]["standardize_targets"] is True
    fixed = plain.train(out, 0, 120)
    raw = plain.train(cfg, 0, 120)
    unit = plain.train({**cfg, "data": {**cfg["data"], "args": {}}}, 0, 120)
    assert fixed["l_ref"] == pytest.approx(1.0, rel=0.02) and raw["l_ref"] > 1e3  # the loss's units moved
    assert fixed["q_val"] == pytest.approx(unit["q_val"], abs=0.02) and fixed["q_val"] > raw["q_val"] + 0.3


def test_plain_loop_whitens_inputs_by_the_train_statistics():
    """probe.whiten_inputs in the plain loop: inputs mixed from a few factors (the fault) become
    uncorrelated unit-variance features, which train as well as the factory's own PCA-whitened
    fix (ZCA and PCA whitening differ by a rotation, to which a linear first layer is blind up to
    its init), and far better than the fault."""
    from benchmarks.faults import verify as plain

    cfg = {"data": {"factory": "../factories.py:teacher", "args": {"mix": 5.0}, "batch_size": 64},
           "model": {"factory": "../factories.py:mlp", "args": {"in_dim": 10, "out_dim": 1}},
           "loss": "mse", "optimizer": {"name": "adam", "lr": 0.001}, "schedule": None, "probe": {"steps": 150}}
    out = remedy_check.plain_config(cfg, {"probe.whiten_inputs": True}, {}, 300)
    assert out["probe"]["whiten_inputs"] is True
    fixed, raw = plain.train(out, 0, 300), plain.train(cfg, 0, 300)
    own = plain.train({**cfg, "data": {**cfg["data"], "args": {"mix": 5.0, "whiten": True}}}, 0, 300)
    assert fixed["q_val"] == pytest.approx(own["q_val"], abs=0.05) and fixed["q_val"] > raw["q_val"] + 0.3
    Xtr, Xva = plain._whitened(torch.randn(300, 4) @ torch.randn(4, 4), torch.randn(50, 4))
    np.testing.assert_allclose(np.cov(Xtr.double().numpy().T), np.eye(4), atol=1e-4)


def test_the_range_tests_suggestion_sets_the_rate_and_scales_the_schedules_own_rates():
    patch = {"optimizer.lr": "$lr.range_suggested"}
    out = remedy_check.plain_config(CFG, patch, {"lr.range_suggested": 0.05}, 300)
    assert out["optimizer"]["lr"] == pytest.approx(0.05)
    assert out["schedule"]["args"] == {"base_lr": pytest.approx(0.01), "max_lr": pytest.approx(0.2), "step_size_up": 10}
    with pytest.raises(remedy_check.NotCheckable, match="lr.range_suggested"):
        remedy_check.plain_config(CFG, patch, {}, 300)  # no range test: the patch cannot be resolved
    # a literal rate leaves the schedule's rates alone; a patch that sets the schedule keeps its own
    assert remedy_check.plain_config(CFG, {"optimizer.lr": 0.05}, {}, 300)["schedule"]["args"]["max_lr"] == 2.0
    own = remedy_check.plain_config(CFG, {**patch, "schedule": None}, {"lr.range_suggested": 0.05}, 300)
    assert own["schedule"] is None and own["optimizer"]["lr"] == pytest.approx(0.05)
    assert CFG["schedule"]["args"]["max_lr"] == 2.0 and CFG["optimizer"]["lr"] == 0.5


def test_schedule_null_drops_the_schedule_and_needs_one():
    out = remedy_check.plain_config(CFG, {"schedule": None}, {}, 300)
    assert out["schedule"] is None and out["optimizer"]["lr"] == 0.5
    assert CFG["schedule"]["name"] == "CyclicLR"
    with pytest.raises(remedy_check.NotCheckable, match="no schedule"):
        remedy_check.plain_config({**CFG, "schedule": None}, {"schedule": None}, {}, 300)


def test_the_plain_loop_runs_a_dropped_schedule_at_the_constant_base_rate():
    """verify.train with schedule: null steps at optimizer.lr throughout (no scheduler built)."""
    import torch

    from benchmarks.faults import verify as plain

    seen = []
    real = torch.optim.SGD.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real(self, *a, **k)

    cfg = remedy_check.plain_config(CFG, {"schedule": None}, {}, 4)
    torch.optim.SGD.step = spy
    try:
        plain.train(cfg, 0, 4)
    finally:
        torch.optim.SGD.step = real
    assert seen and set(seen) == {0.5}


@pytest.mark.parametrize("patch, symptoms", [
    ({"optimizer.lr": "$lr.range_suggested"}, {"lr.range_suggested": 0.05}),
    ({"optimizer.lr": "x0.1"}, {}),
    ({"optimizer.lr": "$lr.range_best*0.3"}, {"lr.range_best": 0.4}),
    ({"optimizer.lr": 0.05}, {}),
    ({"schedule": None}, {}),
])
def test_the_plain_loop_and_optdoctor_resolve_rate_and_schedule_patches_alike(tmp_path, patch, symptoms):
    """Written independently (remedy_check re-implements the patch language from its docs): the
    two must agree on the rate and the schedule a patch gives."""
    from optdoctor.config import load_config
    from optdoctor.remedies import apply_patch

    (tmp_path / "c.json").write_text(json.dumps({k: v for k, v in CFG.items() if k not in ("model", "data")}
                                                | {"model": {"factory": "optdoctor.models:mlp"},
                                                   "data": {"factory": "optdoctor.data:blobs", "batch_size": 32}}))
    loaded = load_config(tmp_path / "c.json")
    ours = apply_patch(loaded, patch, None, symptoms).config
    plain_cfg = remedy_check.plain_config(CFG, patch, symptoms, 300)
    assert ours.optimizer.lr == pytest.approx(plain_cfg["optimizer"]["lr"])
    if plain_cfg["schedule"] is None:
        assert ours.schedule is None
    else:
        assert ours.schedule.name == plain_cfg["schedule"]["name"]
        assert ours.schedule.args == pytest.approx(plain_cfg["schedule"]["args"])


@pytest.mark.parametrize("shape", [(64, 5), (64, 4, 5), (64, 1, 4, 4)])
def test_plain_loop_standardizes_inputs_as_optdoctor_does(shape):
    """The ground-truth loop's probe.standardize_inputs (written from the schema's words) and
    optdoctor's Reader give the same inputs: each element of the non-batch dimensions its own
    feature, constant ones only centred."""
    from benchmarks.faults import verify as plain
    from optdoctor.probes.batches import Reader

    g = torch.Generator().manual_seed(1)
    X = torch.randn(shape, generator=g) * torch.logspace(-2, 2, int(np.prod(shape[1:]))).reshape(1, *shape[1:])
    X.reshape(len(X), -1)[:, 0] = 4.0
    ours = Reader(None, None)
    ours.fit_standardize([(X, torch.zeros(len(X)))])
    theirs, _ = plain._standardized(X, X[:3])
    assert torch.allclose(ours((X, torch.zeros(len(X))))[0].args[0], theirs, atol=1e-5)
