"""The in-loop Monitor (CONTRACT.md section 4): same instruments, same Trace, same findings."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import optdoctor
from optdoctor import data, models

torch.set_num_threads(1)
F = nn.functional


def chance(y: torch.Tensor) -> float:
    p = torch.bincount(y).double() / len(y)
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def train(model, opt, monitor, steps=200, batch=64, seed=0, validate_every=20, split=None, amp=False, clip=None,
          accumulate=1):
    """The samples' loop: a seeded permutation of blobs, reshuffled per epoch, last partial batch dropped."""
    (X, y), (Xv, yv) = split or data.blobs()
    g = torch.Generator().manual_seed(seed)
    perm, pos = torch.randperm(len(X), generator=g), 0
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if amp else None
    for step in range(steps):
        opt.zero_grad()
        for _ in range(accumulate):
            if pos + batch > len(X):
                perm, pos = torch.randperm(len(X), generator=g), 0
            idx = perm[pos:pos + batch]
            pos += batch
            xb, yb = X[idx], y[idx]
            loss = F.cross_entropy(model(xb), yb) / accumulate
            (scaler.scale(loss) if amp else loss).backward()
        if amp:
            scaler.unscale_(opt)
        if clip:
            monitor.grads_ready()
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        if amp:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        monitor.step(loss, batch=(xb, yb))
        if validate_every and step % validate_every == validate_every - 1:
            with torch.no_grad():
                model.eval()
                out = model(Xv)
                model.train()
            monitor.validate(F.cross_entropy(out, yv), (out.argmax(1) == yv).float().mean())


def sample(name):
    torch.manual_seed(0)
    if name == "vanishing-gradients":  # sample_runs/vanishing-gradients.yaml
        model = models.mlp(in_dim=20, out_dim=4, depth=10, width=64, act="sigmoid")
        return model, torch.optim.SGD(model.parameters(), lr=0.1)
    if name == "lr-too-high":  # sample_runs/lr-too-high.yaml
        model = models.mlp(in_dim=20, out_dim=4, depth=3, width=64, act="relu", init="kaiming_normal")
        return model, torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    model = models.mlp(in_dim=20, out_dim=4, depth=3, width=64, act="relu", init="kaiming_normal")
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def monitored(name, follow_up=False, **kw):
    model, opt = sample(name)
    y = data.blobs()[0][1]
    with optdoctor.Monitor(model, opt, loss_fn=F.cross_entropy, chance_loss=chance(y), **kw) as mon:
        train(model, opt, mon)
        mon.diagnose(follow_up=follow_up)
    return mon


def test_import_optdoctor_does_not_import_torch():
    code = "import sys, optdoctor; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_vanishing_gradients_same_cause_as_diagnose():
    mon = monitored("vanishing-gradients")
    d = mon.diagnosis
    assert d.findings and d.findings[0].cause == "vanishing_gradients"
    assert d.probes.baseline.kind == "monitor"
    # the text report and the CONTRACT §2 JSON both render it
    assert "vanishing_gradients" in mon.report("text")
    js = json.loads(mon.report("json"))
    assert js["findings"][0]["cause"] == "vanishing_gradients"


@pytest.mark.slow
def test_lr_too_high_needs_follow_up_and_then_matches_diagnose():
    mon = monitored("lr-too-high")
    d = mon.diagnosis
    assert d.probes.baseline.status == "diverged"
    assert not [f for f in d.findings if f.severity in ("warning", "error")]
    od401 = next(o for o in d.outcomes if o.rule == "OD401")
    assert od401.status == "not_evaluated" and "follow_up=True" in od401.reason
    mon = monitored("lr-too-high", follow_up=True)
    assert mon.diagnosis.findings[0].cause == "lr_too_high"
    assert mon.diagnosis.findings[0].rule == "OD401"  # as `optdoctor diagnose sample_runs/lr-too-high.yaml`
    # the curvature measured at diagnose (the last healthy state) decides the edge-of-stability rule
    od403 = next(o for o in mon.diagnosis.outcomes if o.rule == "OD403")
    assert od403.status == "fired" and mon.diagnosis.symptoms["hess.stability"] > 2
    assert [f.rule for f in mon.diagnosis.findings] == ["OD401", "OD403"]  # as the probe diagnosis, rule for rule


@pytest.mark.slow
def test_healthy_run_has_no_warning():
    mon = monitored("healthy", follow_up=True)
    assert not [f for f in mon.diagnosis.findings if f.severity in ("warning", "error")], mon.report("text")


def hand_norms(model):
    return [m.weight.grad.norm().item() for m in model if isinstance(m, nn.Linear)]


def test_per_layer_norms_equal_a_hand_loop_and_schedule():
    """grad.norm rows equal norms computed by hand at the same steps, every `every` steps."""
    torch.manual_seed(1)
    model = models.mlp(in_dim=20, out_dim=4, depth=3, width=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    (X, y), _ = data.blobs()
    mon = optdoctor.Monitor(model, opt, every=3)
    expected = {}
    for step in range(10):
        loss = F.cross_entropy(model(X[:32]), y[:32])
        opt.zero_grad()
        loss.backward()
        if step % 3 == 0:
            expected[step] = hand_norms(model)
        opt.step()
        mon.step(loss)
    t = mon.trace()
    mon.close()
    assert list(t.steps("grad.norm")) == [0, 3, 6, 9]
    np.testing.assert_allclose(t.values("grad.norm"), np.array([expected[s] for s in (0, 3, 6, 9)]), rtol=1e-5)
    assert len(t.values("loss.train")) == 10 and len(t.values("lr")) == 10


def test_every_series_is_measured_at_its_scheduled_steps():
    """The monitor skips the steps where nothing is due without asking each instrument: what it
    measures must still be exactly the schedule (cosines: a detail step and the one after it)."""
    torch.manual_seed(1)
    model = models.mlp(in_dim=20, out_dim=4, depth=3, width=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    (X, y), _ = data.blobs()
    with optdoctor.Monitor(model, opt, every=3, detail_every=4, checkpoint_every=5) as mon:
        for step in range(14):
            loss = F.cross_entropy(model(X[:32]), y[:32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss)
        t = mon.trace()
    assert t.steps("grad.norm").tolist() == t.steps("update.ratio").tolist() == [0, 3, 6, 9, 12]
    assert t.steps("act.dead_frac").tolist() == t.steps("grad.hist").tolist() == [0, 4, 8, 12]
    assert t.steps("grad.cosine").tolist() == [1, 5, 9, 13]
    assert t.steps("loss.train").tolist() == t.steps("lr").tolist() == list(range(14))


def test_optimizer_hooks_only_on_steps_that_use_them():
    """torch calls every optimizer hook on every step: the monitor's are on for the steps whose
    gradients, update or forward it measures (and the one after a detail step: cosines), only."""
    torch.manual_seed(1)
    model = models.mlp(in_dim=20, out_dim=4, depth=2, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    (X, y), _ = data.blobs()
    hooked = []
    with optdoctor.Monitor(model, opt, every=5, detail_every=10) as mon:
        for step in range(21):
            hooked.append(len(opt._optimizer_step_pre_hooks) + len(opt._optimizer_step_post_hooks))
            loss = F.cross_entropy(model(X[:16]), y[:16])
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss)
    assert [s for s, n in enumerate(hooked) if n] == [0, 1, 5, 10, 11, 15, 20]
    assert set(hooked) == {0, 2}
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks  # closed: none left


def test_clipping_records_pre_clip_norms_and_amp_unscaled():
    torch.manual_seed(2)
    model = models.mlp(in_dim=20, out_dim=4, depth=2, width=16)
    ref = models.mlp(in_dim=20, out_dim=4, depth=2, width=16)
    ref.load_state_dict(model.state_dict())
    (X, y), _ = data.blobs()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = optdoctor.Monitor(model, opt, every=1)
    loss = F.cross_entropy(model(X[:64]), y[:64])
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    mon.grads_ready()
    nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
    scaler.step(opt)
    scaler.update()
    mon.step(loss)
    F.cross_entropy(ref(X[:64]), y[:64]).backward()
    got = mon.trace().values("grad.norm")[0]
    mon.close()
    np.testing.assert_allclose(got, hand_norms(ref), rtol=1e-5)  # unscaled, unclipped
    assert np.linalg.norm(got) > 1e-2


def test_gradient_accumulation_and_close_detaches():
    torch.manual_seed(3)
    model = models.mlp(in_dim=20, out_dim=4, depth=2, width=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    (X, y), _ = data.blobs()
    mon = optdoctor.Monitor(model, opt, every=1)
    opt.zero_grad()
    for k in range(4):  # 4 micro-batches, one optimizer step: measured once, on the summed gradient
        (F.cross_entropy(model(X[16 * k:16 * k + 16]), y[16 * k:16 * k + 16]) / 4).backward()
    summed = hand_norms(model)
    opt.step()
    mon.step(1.0)
    t = mon.trace()
    np.testing.assert_allclose(t.values("grad.norm")[0], summed, rtol=1e-5)
    mon.close()
    assert not model._forward_pre_hooks and all(not m._forward_hooks for m in model.modules())
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def test_tensorboard_written_as_it_goes(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, opt = sample("healthy")
    mon = optdoctor.Monitor(model, opt, tensorboard=tmp_path, checkpoint_every=50)
    train(model, opt, mon, steps=100, validate_every=0)
    acc = EventAccumulator(str(tmp_path / "monitor"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("loss/train")]
    assert steps == list(range(100))  # before close(): a long job can be watched live
    assert any(t.startswith("grad_norm/") for t in acc.Tags()["scalars"])
    mon.close()


def test_follow_up_copies_do_not_touch_the_run():
    model, opt = sample("healthy")
    mon = optdoctor.Monitor(model, opt, loss_fn=F.cross_entropy)
    train(model, opt, mon, steps=30, validate_every=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_steps = len(mon.trace().steps("loss.train"))
    mon.diagnose(follow_up=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert len(mon.trace().steps("loss.train")) == n_steps  # the copies' steps are not the run's
    assert {"followup_lr_x0.1", "followup_lr_x10"} <= set(mon.diagnosis.probes.traces)
    mon.close()


def test_follow_up_without_batches_says_what_it_needs():
    model, opt = sample("healthy")
    mon = optdoctor.Monitor(model, opt)
    train(model, opt, mon, steps=5, validate_every=0)
    with pytest.raises(ValueError, match="loss_fn"):
        mon.diagnose(follow_up=True)
    mon.close()


def test_root_forward_never_called_orders_layers_by_first_call():
    """A LightningModule-like root whose training step calls a submodule: the layers are
    ordered by their first call in the first step, and measured from there on."""
    torch.manual_seed(4)
    root = nn.ModuleDict({"head": nn.Linear(16, 4), "body": nn.Sequential(nn.Linear(20, 16), nn.ReLU())})
    opt = torch.optim.SGD(root.parameters(), lr=0.05)
    (X, y), _ = data.blobs()
    mon = optdoctor.Monitor(root, opt, every=1)
    for step in range(3):
        loss = F.cross_entropy(root["head"](root["body"](X[:32])), y[:32])
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(loss)
    t = mon.trace()
    mon.close()
    assert t.meta["layers"] == ["body.0", "head"]  # forward order, not registration order
    assert t.values("grad.norm").shape == (3, 2)


# --------------------------------------------------------------------------- curvature in the monitor
def tiny(seed=0, dropout=0.0, bn=False):
    torch.manual_seed(seed)
    mods = [nn.Linear(3, 5)] + ([nn.BatchNorm1d(5)] if bn else []) + [nn.Tanh()]
    mods += ([nn.Dropout(dropout)] if dropout else []) + [nn.Linear(5, 3)]
    return nn.Sequential(*mods)


def dense_hessian_eigs(model, batch):
    """The obviously correct twin: the full Hessian of the batch loss by autograd, in float64."""
    import copy

    m = copy.deepcopy(model).double().eval()
    names = [n for n, _ in m.named_parameters()]
    shapes = [p.shape for _, p in m.named_parameters()]
    X, y = batch

    def loss_of(flat):
        ps, i = {}, 0
        for n, s in zip(names, shapes):
            k = int(np.prod(s))
            ps[n] = flat[i:i + k].reshape(s)
            i += k
        return F.cross_entropy(torch.func.functional_call(m, ps, (X.double(),)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    H = torch.autograd.functional.hessian(loss_of, flat)
    return torch.linalg.eigvalsh(H).numpy(), float(torch.trace(H))


def tiny_run(model, opt, steps, mon=None, at=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    X, y = torch.randn(64, 3, generator=g), torch.randint(0, 3, (64,), generator=g)
    for s in range(steps):
        xb, yb = X[(s * 16) % 64:][:16], y[(s * 16) % 64:][:16]
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        if mon is not None and at is not None and s == at:  # mid-step: gradients exist, not yet applied
            mon.measure_curvature()
            mon.diagnose()
        opt.step()
        if mon is not None:
            mon.step(loss, batch=(xb, yb))
    return (xb, yb)


def test_monitor_curvature_equals_dense_hessian():
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    mon = optdoctor.Monitor(model, opt, loss_fn=F.cross_entropy, hessian={"trace_max_hvps": 400})
    last = tiny_run(model, opt, 7, mon)
    diag = mon.diagnose()
    eigs, trace = dense_hessian_eigs(model, last)
    rows = diag.probes.baseline.hessian
    assert [r["step"] for r in rows] == [7.0]
    assert rows[0]["lambda_max"] == pytest.approx(eigs[-1], rel=1e-5)
    assert rows[0]["lambda_min"] == pytest.approx(eigs[0], rel=1e-4, abs=1e-6 * eigs[-1])
    assert rows[0]["trace"] == pytest.approx(trace, rel=0.1)  # Hutchinson: a standard error, not exact
    sym = diag.symptoms
    assert sym["hess.lambda_max"] == pytest.approx(eigs[-1], rel=1e-5)
    assert sym["hess.stability"] == pytest.approx(0.3 * eigs[-1] / (2 * (1 + 0.9)), rel=1e-5)
    assert sym["hess.lambda_min_rel"] == pytest.approx(eigs[0] / eigs[-1], rel=1e-4, abs=1e-6)
    # rules that read curvature are evaluated, not "not evaluated" for want of hess.*
    for o in diag.outcomes:
        if o.status == "not_evaluated":
            assert "hess." not in o.reason, (o.rule, o.reason)
    assert mon.measure_curvature() is rows[0] or mon.measure_curvature()["step"] == 7.0  # once per step
    mon.close()


def test_monitor_curvature_does_not_perturb_training():
    """Measuring (mid-step, with gradients on the parameters, dropout and batch norm in the model)
    leaves weights, gradients, buffers, modes and the RNG exactly as without it."""
    finals = []
    for measure in (False, True):
        model = tiny(dropout=0.2, bn=True)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        mon = optdoctor.Monitor(model, opt, loss_fn=F.cross_entropy)
        torch.manual_seed(123)
        tiny_run(model, opt, 6, mon, at=4 if measure else None)
        finals.append(({k: v.clone() for k, v in model.state_dict().items()},
                       [p.grad.clone() for p in model.parameters()], torch.get_rng_state(), model.training))
        if measure:
            assert len(mon.trace().hessian) == 1 and mon.trace().hessian[0]["step"] == 4.0
            assert "precond_lambda_max" in mon.trace().hessian[0]  # Adam's preconditioned sharpness too
        mon.close()
    (sa, ga, ra, ta), (sb, gb, rb, tb) = finals
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(torch.equal(a, b) for a, b in zip(ga, gb))
    assert torch.equal(ra, rb) and ta and tb


def test_monitor_curvature_after_divergence_is_the_last_healthy_state():
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = optdoctor.Monitor(model, opt, loss_fn=F.cross_entropy, checkpoint_every=2)
    last = tiny_run(model, opt, 4, mon)  # a checkpoint after 4 steps keeps this state
    healthy = {k: v.clone() for k, v in model.state_dict().items()}
    eigs, _ = dense_hessian_eigs(model, last)
    for step in (4, 5):  # step 4 trains on; step 5's loss is NaN: the run diverged there
        if step == 5:
            with torch.no_grad():
                model[0].weight.fill_(float("nan"))
        loss = F.cross_entropy(model(last[0]), last[1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(loss, batch=last)
    diag = mon.diagnose()
    assert mon.status == "diverged"
    rows = diag.probes.baseline.hessian
    assert len(rows) == 1 and rows[0]["step"] == 4.0 and np.isfinite(rows[0]["lambda_max"])
    assert rows[0]["lambda_max"] == pytest.approx(eigs[-1], rel=1e-5)  # measured on the kept state, not the NaN one
    assert all(torch.equal(v, healthy[k]) for k, v in mon._healthy[1].items())
    mon.close()


def test_no_curvature_without_what_it_needs():
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for mon in (optdoctor.Monitor(model, opt), optdoctor.Monitor(model, opt, loss_fn=F.cross_entropy, curvature=False)):
        tiny_run(model, opt, 3, mon)  # no loss_fn: batches are kept but cannot be scored
        diag = mon.diagnose()
        assert diag.probes.baseline.hessian == []
        od403 = next(o for o in diag.outcomes if o.rule == "OD403")
        assert od403.status == "not_evaluated" and "hess.stability" in od403.reason
        mon.close()


# --------------------------------------------------------------------------- follow-ups the gates ask for
def stuck(model_factory=None, steps=40, scale=None):
    """A run that does not learn (a learning rate of 1e-6): the plateau rules' gates open."""
    torch.manual_seed(0)
    model = model_factory() if model_factory else models.mlp(in_dim=20, out_dim=4, depth=2, width=16)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    (X, y), _ = data.blobs()
    if scale is not None:
        X = X * scale
    mon = optdoctor.Monitor(model, opt, loss_fn=F.cross_entropy, chance_loss=chance(y), follow_up_steps=20,
                            model_factory=model_factory, hessian={"enabled": True, "trace": False, "density": False})
    for s in range(steps):
        xb, yb = X[(s * 32) % 480:][:32], y[(s * 32) % 480:][:32]
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(loss, batch=(xb, yb))
    return model, mon


def factory():
    return models.mlp(in_dim=20, out_dim=4, depth=2, width=16)


@pytest.mark.parametrize("how", ["model_factory", "reset_parameters"])
def test_follow_up_runs_the_reseeds_a_plateau_asks_for(how):
    model, mon = stuck(factory if how == "model_factory" else None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    diag = mon.diagnose(follow_up=True)
    # nothing of the run was touched: weights, RNG
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    traces = diag.probes.traces
    assert {"followup_perturbed", "followup_reseed_1", "followup_reseed_2", "followup_reseed_3"} <= set(traces)
    assert all(traces[f"followup_reseed_{i}"].kind == "reseed" for i in (1, 2, 3))
    # each fresh start is the model as built with seed i (the factory, or torch's default init)
    first_X, first_y = mon._kept[0]
    for i in (1, 2, 3):
        if how == "model_factory":
            torch.manual_seed(i)
            ref = factory()
        else:  # a copy of the run's model, each module reset in order, from seed i
            ref = factory()
            torch.manual_seed(i)
            for m in ref.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        with torch.no_grad():
            want = float(F.cross_entropy(ref(first_X), first_y))
        assert traces[f"followup_reseed_{i}"].values("loss.train")[0] == pytest.approx(want, rel=1e-6)
    assert "plateau.reseed_gain" in diag.symptoms and "plateau.escape" in diag.symptoms
    od203 = next(o for o in diag.outcomes if o.rule == "OD203")
    assert od203.status != "not_evaluated", od203.reason
    mon.close()


def test_follow_up_without_a_way_to_reinitialise_says_why():
    class Scale(nn.Module):  # a parameter no reset_parameters() covers
        def __init__(self):
            super().__init__()
            self.g = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return x * self.g

    def with_scale():
        return nn.Sequential(factory(), Scale())

    torch.manual_seed(0)
    _, mon = stuck(None)
    mon.model.add_module("scale", Scale())  # not in the factory: the plain copy path must refuse
    diag = mon.diagnose(follow_up=True)
    assert not any(n.startswith("followup_reseed") for n in diag.probes.traces)
    assert "reset_parameters" in mon.follow_up_skipped["reseed"] and "model_factory" in mon.follow_up_skipped["reseed"]
    od203 = next(o for o in diag.outcomes if o.rule == "OD203")
    assert od203.status in ("passed", "not_evaluated")  # never a finding made from a missing probe
    mon.close()


def test_follow_up_off_a_plateau_runs_no_reseeds():
    mon = monitored("healthy", follow_up=True)
    assert not any("reseed" in n or "perturbed" in n or "standardized" in n for n in mon.diagnosis.probes.traces)


def test_follow_up_runs_the_standardized_pair_unscaled_inputs_ask_for():
    scale = torch.ones(20)
    scale[0] = 1000.0  # one feature 1000x the others: the input-scale rule's gate opens
    _, mon = stuck(factory, scale=scale)
    diag = mon.diagnose(follow_up=True)
    traces = diag.probes.traces
    assert {"followup_standardized", "followup_standardized_raw"} <= set(traces)
    assert diag.probes.data_stats["feature_scale_spread"] > 30
    raw, std = (traces[n].values("loss.train") for n in ("followup_standardized_raw", "followup_standardized"))
    # same seed, same init: the standardised run's first loss is the fresh model on standardised inputs
    X, y = mon._kept[0]
    flat = torch.cat([b[0] for b in mon._kept]).double()
    Xs = ((X.double() - flat.mean(0)) / flat.std(0)).float()
    torch.manual_seed(0)
    ref = factory().requires_grad_(False)
    assert std[0] == pytest.approx(float(F.cross_entropy(ref(Xs), y)), rel=1e-5)
    assert raw[0] == pytest.approx(float(F.cross_entropy(ref(X), y)), rel=1e-5)
    gain = diag.symptoms["data.standardize_gain"]
    k = max(1, len(raw) // 10)  # final loss: the mean of the last 10% of steps (symptoms._util.final_loss)
    assert gain == pytest.approx((raw[-k:].mean() - std[-k:].mean()) / abs(raw[-k:].mean()), rel=1e-6)
    od204 = next(o for o in diag.outcomes if o.rule == "OD204")
    assert od204.status != "not_evaluated", od204.reason
    mon.close()


def test_batches_are_copied_only_until_the_buffer_is_full_then_every_keep_every_steps(monkeypatch):
    """A batch is copied on the first keep_batches steps and then on every keep_every-th step; the
    buffer holds the most recent copies, and the run's own tensors are never kept."""
    import optdoctor.monitor as monitor_module

    copies = []
    real = monitor_module._detached
    def copy(b):
        if isinstance(b, tuple):  # the batch itself (its tensors are copied by the same function)
            copies.append(int(b[0][0, 0]))
        return real(b)

    monkeypatch.setattr(monitor_module, "_detached", copy)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = optdoctor.Monitor(model, opt, every=5, keep_batches=3)
    for step in range(21):
        x = torch.full((4, 3), float(step))
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(loss, batch=(x, torch.zeros(4)))
    assert copies == [0, 1, 2, 5, 10, 15, 20]
    assert [int(X[0, 0]) for X, _ in mon._kept] == [10, 15, 20]
    assert all(X.data_ptr() != x.data_ptr() for X, _ in mon._kept)
    mon.close()
    with pytest.raises(ValueError, match="keep_every"):
        optdoctor.Monitor(model, opt, keep_every=0)


def test_rules_that_need_a_rerun_on_transformed_inputs_say_diagnose_decides_them():
    """OD206 reads the whitened rerun, which only `optdoctor diagnose` runs (it owns the data):
    in the monitor it is "not evaluated", and the reason says what would decide it, not that
    follow_up would."""
    torch.manual_seed(0)
    z = torch.randn(256, 4)
    x = torch.cat([z, z + 0.01 * torch.randn(256, 4)], 1)  # near-duplicate features
    y = z[:, :1] - z[:, 1:2]
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with optdoctor.Monitor(model, opt, loss_fn=nn.functional.mse_loss, every=1) as mon:
        for i in range(0, 256, 32):
            loss = nn.functional.mse_loss(model(x[i:i + 32]), y[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss, batch=(x[i:i + 32], y[i:i + 32]))
        for follow_up in (False, True):
            od206 = next(o for o in mon.diagnose(follow_up=follow_up).outcomes if o.rule == "OD206")
            assert od206.status == "not_evaluated" and "data.whiten_gain" in od206.reason
            assert "optdoctor diagnose" in od206.reason and "follow_up=True" not in od206.reason


def test_loss_name_knows_torchs_own_convex_losses_only():
    from optdoctor.monitor import _loss_name

    assert _loss_name(F.mse_loss) == "mse" and _loss_name(nn.MSELoss(reduction="sum")) == "mse"
    assert _loss_name(F.cross_entropy) == "cross_entropy" and _loss_name(nn.CrossEntropyLoss()) == "cross_entropy"
    assert _loss_name(nn.BCEWithLogitsLoss()) == "bce_with_logits" and _loss_name(F.nll_loss) == "nll"
    assert _loss_name(lambda o, y: ((o - y) ** 4).mean()) is None and _loss_name(None) is None


def test_monitored_linear_regression_at_its_noise_floor_is_no_local_minimum():
    # the in-loop twin of test_small_init's noisy regression: the monitor knows the loss from
    # loss_fn and the model's parameters, so model.deep_linear rules OD203 out here too
    torch.manual_seed(0)
    X = torch.randn(2048, 20)
    y = X @ (torch.randn(20, 1) / 20 ** 0.5) + 2.0 * torch.randn(2048, 1)
    model = nn.Linear(20, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    chance = float(y.var())  # the best constant's loss: with it the positive-definite path is open
    with optdoctor.Monitor(model, opt, loss_fn=F.mse_loss, checkpoint_every=50, chance_loss=chance) as mon:
        for step in range(300):
            i = (step * 64) % 2048
            xb, yb = X[i:i + 64], y[i:i + 64]
            loss = F.mse_loss(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss, batch=(xb, yb))
        diag = mon.diagnose(follow_up=True)
    assert diag.symptoms["model.deep_linear"] == 1.0 and diag.symptoms["loss.progress"] < 0.5
    assert [f.rule for f in diag.findings if f.severity in ("warning", "error")] == []
