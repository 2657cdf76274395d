"""The probe runner (optdoctor/probes/runner.py, setup.py) on tiny configs written to tmp_path.

Every config is the BASE below (a 2-hidden-layer MLP on 128 blobs, 30 steps, no curvature, no
variants) with a few keys changed; user code lives in a ``user.py`` beside the config, as a
person's would. Models that misbehave at their k-th *training* forward (NaN, Ctrl-C, an
exception) count calls only in training mode: checkpoint evaluations run in eval mode.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from optdoctor.config import load_config
from optdoctor.diagnose import is_plateau
from optdoctor.errors import ProbeError
from optdoctor.probes.runner import PERTURB_EPS, ProbeInterrupted, ProbeSpec, run_probe, run_probes
from optdoctor.probes.setup import prepare

F = nn.functional

BASE = {
    "seed": 0,
    "model": {"factory": "optdoctor.models:mlp", "args": {"depth": 2, "width": 16}},
    "data": {"factory": "optdoctor.data:blobs", "args": {"n_train": 128, "n_val": 64, "n_features": 8}, "batch_size": 32},
    "loss": "cross_entropy",
    "optimizer": {"name": "sgd", "lr": 0.05},
    "probe": {"steps": 30, "hessian": {"enabled": False}, "variants": {"lr_factors": []}},
}

USER = '''
import torch
from torch import nn

TRAIN_CALLS = [0]  # training forwards over every model this module built (variants included)
SEEN = []  # (model id, fingerprint of the batch) per training forward


class Tripwire(nn.Module):
    """An MLP whose forward misbehaves at its k-th training call (k counted per model, or
    over all models with shared=True)."""

    def __init__(self, in_dim, out_dim, at=-1, mode="", shared=False, dropout=0.0):
        super().__init__()
        self.inp, self.act, self.out = nn.Linear(in_dim, 16), nn.ReLU(), nn.Linear(16, out_dim)
        self.drop = nn.Dropout(dropout)
        self.at, self.mode, self.shared, self.calls = at, mode, shared, 0

    def forward(self, x):
        if self.training:
            k = TRAIN_CALLS[0] if self.shared else self.calls
            self.calls += 1
            TRAIN_CALLS[0] += 1
            SEEN.append((id(self), hash(x.numpy().tobytes())))
            if k == self.at and self.mode == "interrupt":
                raise KeyboardInterrupt
            if k == self.at and self.mode == "error":
                raise ValueError("my model does not like this batch")  # LINE_OF_ERROR
            if k == self.at and self.mode == "nan":
                return self.out(self.drop(self.act(self.inp(x)))) * float("nan")
        return self.out(self.drop(self.act(self.inp(x))))


class OutOfOrder(nn.Module):
    """Registered head-first (sizes all differ, so columns can be told apart), one frozen layer."""

    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.head = nn.Linear(12, out_dim)
        self.frozen = nn.Linear(12, 12)
        self.hidden = nn.Linear(10, 12)
        self.inp = nn.Linear(in_dim, 10)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        x = torch.relu(self.inp(x))
        x = torch.tanh(self.hidden(x))
        return self.head(self.frozen(x))


def named(in_dim=8, out_dim=4, what="linear"):
    """A factory with an argument called ``what`` (a perfectly ordinary name)."""
    return nn.Linear(in_dim, out_dim)


class SpareHead(nn.Module):
    """A tanh MLP that also owns a layer it never calls (an auxiliary head switched off)."""

    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_dim, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, out_dim))
        self.aux_head = nn.Linear(16, out_dim)

    def forward(self, x):
        return self.body(x)


def spare_head(in_dim=8, out_dim=4):
    return SpareHead(in_dim, out_dim)


def tripwire(in_dim=8, out_dim=4, **kw):
    return Tripwire(in_dim, out_dim, **kw)


def out_of_order(in_dim=8, out_dim=4):
    return OutOfOrder(in_dim, out_dim)


def _blobs(imbalance=False):
    g = torch.Generator().manual_seed(0)
    counts = [70, 20, 10] if imbalance else [32, 32, 32, 32]
    y = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    y = y[torch.randperm(len(y), generator=g)]
    x = torch.randn(len(y), 8, generator=g) + 2.0 * torch.nn.functional.one_hot(y, 8).float()
    return x, y


def tensors(imbalance=False):
    x, y = _blobs(imbalance)
    return (x, y), (x[:32], y[:32])


class Pairs(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])  # a plain int label, as most datasets return


def dataset(imbalance=False):
    (x, y), (xv, yv) = tensors(imbalance)
    return Pairs(x, y), Pairs(xv, yv)


def regression():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    signs = torch.tensor([1.0, -1.0]).repeat(32)
    y = torch.stack([signs, 3.0 + 2.0 * signs.roll(1)], dim=1)  # per-output variances 1 and 4
    return (x, y), None
'''


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        merge = isinstance(v, dict) and isinstance(out.get(k), dict) and k != "args"  # a factory's args are replaced
        out[k] = _merge(out[k], v) if merge else v
    return out


def write(tmp_path, name="probe", **over):
    """A config = BASE with ``over`` merged in (nested dicts merge), user.py beside it."""
    (tmp_path / "user.py").write_text(USER)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(_merge(BASE, over), sort_keys=False))
    return load_config(path)


def setup_for(tmp_path, **over):
    return prepare(write(tmp_path, **over))


def sub(tmp_path, name):
    (tmp_path / name).mkdir()
    return tmp_path / name


def names(probes) -> list[str]:
    """The probes run, less the LR range test (it runs whenever probe.lr_range is on)."""
    return sorted(n for n in probes.traces if n != "lr_range")


def user_module(setup):
    return setup.model_factory.__globals__  # the module user.py became


def trip(at, mode, **kw):
    return {"model": {"factory": "user.py:tripwire", "args": {"at": at, "mode": mode, **kw}}}


# --------------------------------------------------------------------------- one probe


def test_baseline_trace_shapes_and_meta(tmp_path):
    setup = setup_for(tmp_path, probe={"val_every": 10})
    trace, state = run_probe(setup, ProbeSpec(steps=30, seed=0))
    assert trace.status == "completed" and trace.stopped_at is None
    assert trace.values("loss.train").shape == (30,) and trace.values("lr").shape == (30,)
    assert trace.values("grad.norm").shape == (30, 3) and trace.values("update.ratio").shape == (15, 3)  # every other step
    assert trace.values("act.dead_frac").shape == (10, 2)  # every = max(1, 30 // 10) = 3 steps
    assert trace.steps("loss.val").tolist() == [0, 10, 20, 30]
    assert trace.meta["layers"] == ["0", "2", "4"] and trace.meta["act_layers"] == ["1", "3"]
    assert trace.meta["act_kinds"] == ["relu", "relu"] and trace.meta["n_classes"] == 4
    assert trace.meta["lr"] == 0.05 and trace.meta["steps"] == 30
    assert sorted(state) == sorted(setup.build_model(0).state_dict())
    assert trace.values("loss.train")[-5:].mean() < trace.values("loss.train")[:5].mean()  # it trains


def test_forward_order_and_frozen_layers_in_the_trace(tmp_path):
    setup = setup_for(tmp_path, model={"factory": "user.py:out_of_order", "args": {}})
    trace, _ = run_probe(setup, ProbeSpec(steps=3))
    assert trace.meta["layers"] == ["inp", "hidden", "head"]  # forward order; the frozen layer is no column
    model = setup.build_model(0)  # the same init the probe started from
    mods = dict(model.named_modules())
    expected = [mods[n].weight.detach().double().norm().item() for n in ["inp", "hidden", "head"]]
    np.testing.assert_allclose(trace.values("weight.norm")[0], expected, rtol=1e-5)
    # the functional torch.relu and torch.tanh are both seen, named by the module calling them
    assert trace.meta["act_layers"] == ["relu#1", "tanh#1"] and trace.meta["act_kinds"] == ["relu", "tanh"]
    assert trace.has("act.scale")


def test_an_unused_layer_does_not_hide_the_gradient_depth_symptoms(tmp_path):
    from optdoctor.trace import ProbeSet
    from optdoctor.symptoms import extract

    setup = setup_for(tmp_path, model={"factory": "user.py:spare_head", "args": {}})
    trace, _ = run_probe(setup, ProbeSpec(steps=10))
    assert trace.meta["layers"] == ["body.0", "body.2", "body.4", "aux_head"]
    s = extract(ProbeSet({"baseline": trace}))
    assert "grad.depth_ratio" in s and "grad.layer_factor" in s


def test_huge_lr_diverges_cleanly(tmp_path):
    setup = setup_for(tmp_path, optimizer={"lr": 1e6})
    trace, _ = run_probe(setup, ProbeSpec(steps=30))  # no exception
    assert trace.status == "diverged"
    k = trace.stopped_at
    assert 0 < k < 29
    loss = trace.values("loss.train")
    assert len(loss) == k + 1 and trace.steps("loss.train")[-1] == k
    assert not math.isfinite(loss[-1]) or loss[-1] > 1e4 * loss[0]
    assert trace.values("grad.norm").shape == (k, 3)  # the diverged step is not back-propagated
    assert np.isfinite(loss[:k]).all()


def test_user_model_returning_nan_stops_at_that_step(tmp_path):
    setup = setup_for(tmp_path, **trip(7, "nan"))
    trace, _ = run_probe(setup, ProbeSpec(steps=30))
    assert (trace.status, trace.stopped_at) == ("diverged", 7)
    loss = trace.values("loss.train")
    assert len(loss) == 8 and math.isnan(loss[-1]) and np.isfinite(loss[:7]).all()
    assert trace.steps("update.ratio").tolist() == [0, 2, 4, 6]  # every other step, up to the divergence
    assert np.isfinite(trace.values("grad.norm")).all()  # nothing NaN reached the weights


def test_ctrl_c_carries_the_baseline_trace(tmp_path):
    setup = setup_for(tmp_path, **trip(5, "interrupt"))
    with pytest.raises(ProbeInterrupted) as info:
        run_probe(setup, ProbeSpec(steps=30))
    trace = info.value.probes.baseline
    assert (trace.status, trace.stopped_at) == ("interrupted", 5)
    assert trace.steps("loss.train").tolist() == [0, 1, 2, 3, 4]
    assert trace.values("grad.norm").shape == (5, 2) and trace.meta["layers"] == ["inp", "out"]


def test_ctrl_c_in_a_variant_keeps_every_trace_so_far(tmp_path):
    # 30 baseline steps, then the lr_x0.1 variant is interrupted at its 4th step
    setup = setup_for(tmp_path, probe={"variants": {"lr_factors": [0.1, 10.0]}}, **trip(34, "interrupt", shared=True))
    with pytest.raises(ProbeInterrupted) as info:
        run_probes(setup)
    probes = info.value.probes
    assert names(probes) == ["baseline", "lr_x0.1"]
    assert probes.baseline.status == "completed" and len(probes.baseline.values("loss.train")) == 30
    variant = probes.traces["lr_x0.1"]
    assert (variant.status, variant.stopped_at, len(variant.values("loss.train"))) == ("interrupted", 4, 4)
    assert probes.data_stats == probes.baseline.meta["data_stats"]


def test_user_code_raising_is_a_probe_error_showing_the_users_line(tmp_path):
    setup = setup_for(tmp_path, **trip(3, "error"))
    with pytest.raises(ProbeError) as info:
        run_probe(setup, ProbeSpec(steps=30))
    err = info.value
    assert err.exit_code == 3
    assert "ValueError" in err.message and "my model does not like this batch" in err.message
    assert "user.py:tripwire" in err.message  # which of the user's callables
    line = next(i for i, text in enumerate(USER.splitlines(), 1) if "LINE_OF_ERROR" in text)
    assert "user.py" in err.detail and f"line {line}" in err.detail
    assert "optdoctor" + "/probes" not in err.detail.replace("\\", "/")  # the user's frames only


def test_a_factory_argument_named_what_reaches_the_factory(tmp_path):
    setup = setup_for(tmp_path, model={"factory": "user.py:named", "args": {"what": "linear"}})
    trace, _ = run_probe(setup, ProbeSpec(steps=2))
    assert trace.meta["layers"] == ["model"]


def test_dataset_works_like_tensors(tmp_path):
    a = setup_for(sub(tmp_path, "a"), data={"factory": "user.py:tensors", "args": {}})
    b = setup_for(sub(tmp_path, "b"), data={"factory": "user.py:dataset", "args": {}})
    (xa, ya), = a.eval_batches()
    (xb, yb), = b.eval_batches()
    assert torch.equal(xa.args[0], xb.args[0]) and torch.equal(ya, yb)
    assert yb.dtype == torch.int64 and (a.chance_loss, a.n_classes) == (b.chance_loss, b.n_classes)
    ta, _ = run_probe(a, ProbeSpec(steps=10))
    tb, _ = run_probe(b, ProbeSpec(steps=10))
    np.testing.assert_array_equal(ta.values("loss.train"), tb.values("loss.train"))
    np.testing.assert_array_equal(ta.values("loss.val"), tb.values("loss.val"))


# --------------------------------------------------------------------------- chance loss


def test_cross_entropy_chance_is_the_entropy_of_the_class_prior(tmp_path):
    setup = setup_for(tmp_path, data={"factory": "user.py:tensors", "args": {"imbalance": True}})
    prior = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    assert setup.n_classes == 3
    assert setup.chance_loss == pytest.approx(-(prior * prior.log()).sum().item(), rel=1e-12)
    # the same number, from its meaning: the loss of always predicting the class prior
    y = setup.train.everything()[-1]
    best_constant = F.cross_entropy(prior.log().expand(len(y), 3), y).item()
    assert setup.chance_loss == pytest.approx(best_constant, rel=1e-9)
    assert setup.chance_loss < math.log(3)  # not log(K) on imbalanced labels
    trace, _ = run_probe(setup, ProbeSpec(steps=2))
    assert trace.meta["chance_loss"] == setup.chance_loss


def test_mse_chance_is_the_mean_per_output_variance(tmp_path):
    setup = setup_for(tmp_path, loss="mse", data={"factory": "user.py:regression", "args": {}})
    assert setup.chance_loss == pytest.approx((1.0 + 4.0) / 2, rel=1e-12)
    y = setup.train.everything()[-1]
    assert setup.chance_loss == pytest.approx(F.mse_loss(y.mean(0).expand_as(y), y).item(), rel=1e-6)
    assert setup.n_classes is None and setup.val is None
    trace, _ = run_probe(setup, ProbeSpec(steps=5))  # no validation set: no loss.val, no crash
    assert not trace.has("loss.val") and trace.has("loss.train_eval")


# --------------------------------------------------------------------------- determinism


def _series(trace):
    return {k: v for k, (_, v) in trace.series.items()}


def _assert_same_series(a, b):
    sa, sb = _series(a), _series(b)
    assert sorted(sa) == sorted(sb)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def test_same_spec_twice_gives_identical_series(tmp_path):
    setup = setup_for(tmp_path, model={"args": {"depth": 2, "width": 16, "dropout": 0.2}})
    spec = ProbeSpec(steps=20, seed=3)
    a, _ = run_probe(setup, spec)
    b, _ = run_probe(setup, spec)
    _assert_same_series(a, b)


def test_a_probe_does_not_change_the_next_one(tmp_path):
    """Dropout draws from the global RNG during training: a probe in between (another seed, more
    steps) or user code consuming the global RNG must not change the next probe's numbers."""
    setup = setup_for(tmp_path, model={"args": {"depth": 2, "width": 16, "dropout": 0.2}})
    first, _ = run_probe(setup, ProbeSpec(steps=20, seed=0))
    run_probe(setup, ProbeSpec(name="other", steps=37, seed=5, lr_factor=10.0))
    torch.rand(1000)
    again, _ = run_probe(setup, ProbeSpec(steps=20, seed=0))
    _assert_same_series(first, again)
    other_seed, _ = run_probe(setup, ProbeSpec(steps=20, seed=1))
    assert not np.array_equal(first.values("loss.train"), other_seed.values("loss.train"))


def test_curvature_measurement_does_not_change_the_training(tmp_path):
    hess = {"enabled": True, "at": [0.0, 0.5, 1.0], "k": 2, "max_iter": 8, "batch_size": 64, "trace": False, "density": False}
    setup = setup_for(tmp_path, model={"args": {"depth": 2, "width": 16, "dropout": 0.2}}, probe={"steps": 20, "hessian": hess})
    with_h, _ = run_probe(setup, ProbeSpec(steps=20, hessian_steps=[0, 10, 20]))
    without, _ = run_probe(setup, ProbeSpec(steps=20))
    assert [h["step"] for h in with_h.hessian] == [0.0, 10.0, 20.0] and without.hessian == []
    assert all(math.isfinite(h["lambda_max"]) for h in with_h.hessian)
    np.testing.assert_array_equal(with_h.values("loss.train"), without.values("loss.train"))


def test_perturbed_probe_and_its_control_see_the_same_batches(tmp_path):
    setup = setup_for(tmp_path, **trip(-1, ""))
    seen = user_module(setup)["SEEN"]
    base, state = run_probe(setup, ProbeSpec(steps=10, seed=0))
    seen.clear()
    cont, _ = run_probe(setup, ProbeSpec(name="continued", steps=10, seed=1, full=False, start_state=state))
    cont_batches = [f for _, f in seen]
    seen.clear()
    pert, _ = run_probe(setup, ProbeSpec(name="perturbed", steps=10, seed=1, full=False, start_state=state,
                                         perturb=PERTURB_EPS))
    pert_batches = [f for _, f in seen]
    assert len(cont_batches) == 10 and cont_batches == pert_batches
    assert not np.array_equal(cont.values("loss.train"), pert.values("loss.train"))  # the kick did something
    assert cont.values("loss.train")[0] == pytest.approx(base.values("loss.train")[-1], rel=0.5)  # from the plateau
    assert pert.meta["perturb"] == PERTURB_EPS and cont.meta["continued"] and pert.meta["continued"]


# --------------------------------------------------------------------------- the probe set


def test_run_probes_runs_the_lr_variants(tmp_path):
    setup = setup_for(tmp_path, probe={"variants": {"lr_factors": [0.1, 10.0], "steps": 12}})
    probes = run_probes(setup)
    assert names(probes) == ["baseline", "lr_x0.1", "lr_x10"]
    for name, factor in (("lr_x0.1", 0.1), ("lr_x10", 10.0)):
        t = probes.traces[name]
        assert t.meta["lr"] == pytest.approx(0.05 * factor) and t.meta["lr_factor"] == factor
        assert len(t.values("loss.train")) == 12
        assert t.has("act.dead_frac") and not t.hessian  # variants: activations (OD406's counterfactual), no curvature
        assert t.values("loss.train")[0] == probes.baseline.values("loss.train")[0]  # same init, same first batch
    assert len(probes.baseline.values("loss.train")) == 30
    assert probes.data_stats == probes.baseline.meta["data_stats"] and "feature_scale_spread" in probes.data_stats
    assert "data_stats" not in probes.traces["lr_x10"].meta  # measured once, in the baseline


PLATEAU = {"optimizer": {"lr": 1e-9}, "data": {"batch_size": 128}, "probe": {"steps": 20}}  # full batch: exactly flat
FOLLOWUPS = ["continued", "perturbed", "reseed_1", "reseed_2", "reseed_3"]


def test_plateau_runs_the_followups(tmp_path):
    setup = setup_for(tmp_path, **PLATEAU)
    probes = run_probes(setup, followups=is_plateau)
    assert names(probes) == sorted(["baseline", *FOLLOWUPS])
    assert probes.traces["perturbed"].meta["perturb"] == PERTURB_EPS
    assert [probes.traces[f"reseed_{i}"].meta["seed"] for i in (1, 2, 3)] == [1, 2, 3]
    assert all(probes.traces[n].status == "completed" for n in FOLLOWUPS)


def test_no_followups_off_a_plateau_or_when_switched_off(tmp_path):
    healthy = run_probes(setup_for(sub(tmp_path, "h"), optimizer={"name": "adam", "lr": 0.01}), followups=is_plateau)
    assert names(healthy) == ["baseline"]
    switched_off = _merge(PLATEAU, {"probe": {"variants": {"perturb": False}}})
    off = run_probes(setup_for(sub(tmp_path, "o"), **switched_off), followups=is_plateau)
    assert names(off) == ["baseline"]
    no_hook = run_probes(setup_for(sub(tmp_path, "n"), **PLATEAU))
    assert names(no_hook) == ["baseline"]


def test_diverged_baseline_does_not_stop_the_variants(tmp_path):
    setup = setup_for(tmp_path, optimizer={"lr": 1e6}, probe={"variants": {"lr_factors": [1e-7]}})
    probes = run_probes(setup, followups=is_plateau)
    assert probes.baseline.status == "diverged"
    assert probes.traces["lr_x1e-07"].status == "completed"
    assert "continued" not in probes.traces  # a divergence is no plateau


def test_a_model_without_double_backward_still_probes(tmp_path):
    """Curvature the model cannot give is noted, not a crash (the probe and the other rules go on)."""
    (tmp_path / "once.py").write_text(
        "import torch\n"
        "class Once(torch.autograd.Function):\n"
        "    @staticmethod\n"
        "    def forward(ctx, x):\n"
        "        ctx.save_for_backward(x)\n"
        "        return x.clamp_min(0)\n"
        "    @staticmethod\n"
        "    def backward(ctx, g):  # like ops with no double-backward formula\n"
        "        if torch.is_grad_enabled():\n"
        "            raise RuntimeError('double backward is not implemented for Once')\n"
        "        (x,) = ctx.saved_tensors\n"
        "        return g * (x > 0)\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.a, self.b = torch.nn.Linear(20, 16), torch.nn.Linear(16, 4)\n"
        "    def forward(self, x):\n"
        "        return self.b(Once.apply(self.a(x)))\n"
        "def net():\n"
        "    return Net()\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {factory: once.py:net}\ndata: {factory: optdoctor.data:blobs, args: {n_train: 128}}\n"
                   "optimizer: {name: sgd, lr: 0.1}\nprobe: {steps: 20}\n")
    setup = prepare(load_config(cfg))
    trace, _ = run_probe(setup, ProbeSpec(steps=20, hessian_steps=[0, 20]))
    assert trace.status == "completed" and trace.hessian == []
    assert len(trace.meta["hessian_errors"]) == 2


def test_data_statistics_describe_the_inputs_the_model_trains_on(tmp_path):
    """With probe.standardize_inputs (the ill-conditioning remedy) the spread symptom must see
    the standardised inputs, or verifying that remedy could never show it fixed."""
    cfg = tmp_path / "c.yaml"
    body = ("model: {factory: optdoctor.models:mlp, args: {depth: 0}}\n"
            "data: {factory: optdoctor.data:blobs, args: {feature_scales: 1000.0}}\n"
            "optimizer: {name: sgd, lr: 0.1}\n")
    def spread() -> float:
        trace, _ = run_probe(prepare(load_config(cfg)), ProbeSpec(steps=3))
        return trace.meta["data_stats"]["feature_scale_spread"]

    cfg.write_text(body)
    assert spread() > 100
    cfg.write_text(body + "probe: {standardize_inputs: true}\n")
    assert spread() == pytest.approx(1.0, rel=0.2)  # a 192-sample subset of standardised features


@pytest.mark.parametrize("schedule, key", [
    ({"name": "CyclicLR", "args": {"base_lr": 0.001, "max_lr": 1.0, "step_size_up": 5, "cycle_momentum": False}}, "max_lr"),
    ({"name": "OneCycleLR", "args": {"max_lr": 0.5, "total_steps": 40}}, "max_lr"),
])
def test_lr_variant_scales_a_schedule_that_sets_the_rate_itself(tmp_path, schedule, key):
    """A 0.1x variant under CyclicLR/OneCycleLR must run at 0.1x the baseline's rates at every
    step: the schedule's absolute rates (max_lr, base_lr, ...) are scaled with the optimizer's."""
    from optdoctor.config.schedule import scaled_schedule_args

    setup = setup_for(tmp_path, schedule=schedule)
    base, _ = run_probe(setup, ProbeSpec(steps=20, seed=0))
    low, _ = run_probe(setup, ProbeSpec(steps=20, seed=0, lr_factor=0.1, kind="lr_variant", full=False))
    np.testing.assert_allclose(low.values("lr"), 0.1 * base.values("lr"), rtol=1e-6)
    assert base.values("lr").max() > 10 * base.values("lr").min()  # the schedule did move the rate
    args = scaled_schedule_args({**schedule["args"], "cycle_momentum": True}, 0.1)
    assert args[key] == pytest.approx(0.1 * schedule["args"][key]) and args["cycle_momentum"] is True
    assert scaled_schedule_args(schedule["args"], 1.0) == schedule["args"]
