"""Regression targets far from unit scale (OD205): the targets' statistics against a hand
computation, probe.standardize_targets in the reader, the chance-relative comparison, and the
differential end to end: a target in other units is named, a large target that trains is not,
and a diverging rate on unit-scale targets stays the learning rate's."""

from __future__ import annotations

import json
import math
import textwrap

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from optdoctor.cli import app
from optdoctor.diagnose import followups_wanted
from optdoctor.engine.rules import load_rules
from optdoctor.probes.batches import Reader
from optdoctor.probes.setup import target_stats
from optdoctor.symptoms import extract
from optdoctor.trace import ProbeSet, Trace

runner = CliRunner()
PACK = load_rules()


def test_target_stats_equal_a_hand_computation():
    torch.manual_seed(0)
    y = torch.randn(200, 3) * torch.tensor([1.0, 100.0, 0.01]) + torch.tensor([0.0, 500.0, 0.0])
    rows = y.double().tolist()
    want_rms = max((sum(r[j] ** 2 for r in rows) / len(rows)) ** 0.5 for j in range(3))
    means = [sum(r[j] for r in rows) / len(rows) for j in range(3)]
    stds = [(sum((r[j] - means[j]) ** 2 for r in rows) / (len(rows) - 1)) ** 0.5 for j in range(3)]
    got = target_stats(y, "mse")
    assert got["target_scale"] == pytest.approx(want_rms, rel=1e-9)
    assert got["target_mean_over_std"] == pytest.approx(max(abs(m) / s for m, s in zip(means, stds)), rel=1e-9)
    assert target_stats(y[:, 1], "my.py:loss")["target_scale"] == pytest.approx(want_rms, rel=1e-9)  # (N,) targets
    assert target_stats(torch.randint(0, 5, (100,)), "cross_entropy") == {}  # class ids have no scale
    assert target_stats(torch.rand(100, 1), "bce_with_logits") == {}  # nor probabilities
    assert target_stats(torch.tensor([3.0]), "mse") == {}


def test_standardize_targets_in_the_reader_leaves_inputs_and_class_ids_alone():
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randn(64, 2) * 100 + 500
    reader = Reader()
    assert reader.fit_standardize_targets([(x[:32], y[:32]), (x[32:], y[32:])])
    xin, yt = reader((x, y))
    assert torch.equal(xin.args[0], x)
    np.testing.assert_allclose(yt.mean(0).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(yt.std(0).numpy(), 1.0, rtol=1e-5)
    ref = (y.double() - y.double().mean(0)) / y.double().std(0)  # by hand, in float64
    np.testing.assert_allclose(yt.double().numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
    ids = Reader()
    assert not ids.fit_standardize_targets([(x, torch.randint(0, 3, (64,)))])
    assert ids((x, torch.tensor([2, 0])))[1].tolist() == [2, 0]


def _trace(name: str, kind: str, losses, chance: float, status: str = "completed") -> Trace:
    v = np.asarray(losses, dtype=float)
    return Trace(name, {"kind": kind, "steps": len(v), "chance_loss": chance},
                 {"loss.train": (np.arange(len(v)), v)}, [], status, None)


def test_target_standardize_gain_reads_each_run_against_its_own_chance_loss():
    def ending(a, b):  # the final loss is the mean of the last 10% of steps: a flat tail at b
        return np.concatenate([np.linspace(a, b, 45), np.full(5, b)])

    base = _trace("baseline", "baseline", ending(2.6e5, 2.0e5), chance=1.0e4)  # 20x chance left
    std = _trace("target_standardized", "target_standardized", ending(0.9, 0.2), chance=1.0)  # 0.2x
    s = extract(ProbeSet({"baseline": base, "target_standardized": std}))
    rb, rs = 2.0e5 / 1.0e4, 0.2 / 1.0
    assert s["data.target_standardize_gain"] == pytest.approx((rb - rs) / rb, rel=1e-9)
    assert s["loss.final_over_chance"] == pytest.approx(rb, rel=1e-9)
    worse = _trace("target_standardized", "target_standardized", [1.0, math.inf], chance=1.0, status="diverged")
    assert extract(ProbeSet({"baseline": base, "target_standardized": worse}))["data.target_standardize_gain"] == -1.0
    gone = _trace("baseline", "baseline", [2.6e5, math.inf], chance=1.0e4, status="diverged")
    assert extract(ProbeSet({"baseline": gone, "target_standardized": std}))["data.target_standardize_gain"] == 1.0
    assert "data.target_standardize_gain" not in extract(ProbeSet({"baseline": base}))


def test_the_target_scale_rule_gates_its_probe():
    big = {"data.target_scale": 509.0, "data.target_mean_over_std": 5.0, "loss.progress": -18.0, "loss.diverged": 0.0}
    assert [r.id for r in PACK if "target_standardized" in r.opens] == ["OD205"]
    assert followups_wanted(PACK, big, which="target_standardized")
    assert followups_wanted(PACK, {**big, "data.target_scale": 0.01, "data.target_mean_over_std": 1.0}, which="target_standardized")
    assert not followups_wanted(PACK, {**big, "loss.progress": 0.9}, which="target_standardized")  # it trains
    assert not followups_wanted(PACK, {**big, "data.target_scale": 7.5, "data.target_mean_over_std": 0.03},
                                which="target_standardized")


DATA = textwrap.dedent("""\
    import torch

    def regression(scale=100.0, offset=500.0, n=512):
        g = torch.Generator().manual_seed(0)
        X = torch.randn(n + 256, 8, generator=g)
        w = torch.randn(8, 1, generator=g) / 8 ** 0.5
        y = torch.tanh(X @ w * 2) * scale + offset
        return (X[:n], y[:n]), (X[n:], y[n:])
    """)


def _config(tmp_path, name, args, optimizer):
    (tmp_path / "regdata.py").write_text(DATA)
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        name: {name}
        model:
          factory: optdoctor.models:mlp
          args: {{depth: 2, width: 32}}
        data:
          factory: regdata.py:regression
          args: {args}
          batch_size: 64
        loss: mse
        optimizer: {optimizer}
        probe:
          steps: 120
          threads: 1
        """))
    return cfg


def _diagnose(cfg, *extra):
    r = runner.invoke(app, ["diagnose", str(cfg), "--format", "json", *extra])
    assert r.exit_code in (0, 1), r.output
    return json.loads(r.stdout)


def test_targets_in_other_units_are_named_and_standardising_them_is_verified(tmp_path):
    report = _diagnose(_config(tmp_path, "offset", "{scale: 100.0, offset: 500.0}", "{name: adam, lr: 0.001}"), "--verify")
    first = report["findings"][0]
    assert first["rule"] == "OD205" and first["cause"] == "ill_conditioning", report["findings"]
    assert "target_standardized" in report["probes"]
    tried = {json.dumps(v["patch"], sort_keys=True): v for v in first["verification"]}
    std = tried['{"probe.standardize_targets": true}']
    assert std["helped"] and std["metric"] == "loss.final_over_chance"
    assert std["after"] < 1.0  # ended below predicting the mean, in the standardised run's own units


def test_large_targets_that_train_are_no_finding(tmp_path):
    # targets of rms ~80 (above the gate's 10) under RMSprop at a rate that suits them: it trains
    report = _diagnose(_config(tmp_path, "fine", "{scale: 100.0, offset: 0.0}", "{name: rmsprop, lr: 0.1}"))
    assert report["symptoms"]["data.target_scale"] > 10 and report["symptoms"]["loss.progress"] > 0.5
    assert all(f["rule"] != "OD205" for f in report["findings"])
    assert "target_standardized" not in report["probes"]  # the gate stayed shut: no probe spent


def test_a_diverging_rate_on_unit_scale_targets_stays_the_learning_rates(tmp_path):
    report = _diagnose(_config(tmp_path, "unit", "{scale: 1.0, offset: 0.0}", "{name: sgd, lr: 5.0}"))
    assert report["findings"] and report["findings"][0]["cause"] == "lr_too_high", report["findings"]
    assert "target_standardized" not in report["probes"]
