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
