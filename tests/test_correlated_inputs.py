"""Correlated inputs (OD206): the features' correlation condition number against numpy, the
reader's ZCA whitening against its definition, the whitened probe's gain, the rule's gate, and
the differential end to end: inputs mixed from a few factors are named and whitening them is
verified, collinear inputs whose signal lies along the large directions are not, and inputs that
cannot be whitened are a config error at the key."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from optdoctor.cli import app
from optdoctor.diagnose import followups_wanted
from optdoctor.engine.rules import load_rules
from optdoctor.probes.batches import WHITEN_MAX_DIM, Reader
from optdoctor.probes.instruments.data_stats import data_stats
from optdoctor.symptoms import extract
from optdoctor.trace import ProbeSet, Trace

runner = CliRunner()
PACK = load_rules()


def _pairs(n: int, rho: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z, e = torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g)
    s, t = math.sqrt((1 + rho) / 2), math.sqrt((1 - rho) / 2)
    return torch.cat([s * z + t * e, s * z - t * e, torch.randn(n, 2, generator=g) * 5.0 + 3.0], 1).double()


def test_feature_condition_is_numpys_condition_number_of_the_correlation_matrix():
    X = _pairs(400, 0.99)
    want = np.linalg.cond(np.corrcoef(X.numpy().T))  # 2-norm condition of a symmetric PD matrix
    assert data_stats(X)["feature_condition"] == pytest.approx(want, rel=1e-6)
    assert 100 < want < 1000  # 1 + rho over 1 - rho, about 199
    const = torch.cat([X, torch.full((400, 1), 7.0, dtype=torch.float64)], 1)  # a constant feature is left out
    assert data_stats(const)["feature_condition"] == pytest.approx(want, rel=1e-6)
    assert "feature_condition" not in data_stats(X[:15])  # 15 samples of 8 features: too few to say
    dup = torch.cat([X, X[:, :1]], 1)  # an exact duplicate: singular, capped
    assert data_stats(dup)["feature_condition"] == pytest.approx(1e12, rel=1e-6)
    scaled = X * torch.tensor([1.0, 10, 100, 1, 1, 1, 1e3, 1], dtype=torch.float64)
    assert data_stats(scaled)["feature_condition"] == pytest.approx(want, rel=1e-6)  # scale-free


def test_whitening_in_the_reader_decorrelates_to_unit_variance_and_keeps_the_layout():
    X = _pairs(512, 0.999).float()
    reader = Reader()
    assert reader.fit_whiten([(X[:256], torch.zeros(256)), (X[256:], torch.zeros(256))])
    out = reader((X, torch.zeros(512)))[0].args[0]
    assert out.shape == X.shape and out.dtype == X.dtype
    np.testing.assert_allclose(np.cov(out.double().numpy().T), np.eye(8), atol=2e-3)
    np.testing.assert_allclose(out.double().mean(0).numpy(), 0.0, atol=2e-4)
    # ZCA: the symmetric inverse square root of the covariance, by numpy
    Xd = X.double().numpy()
    lam, Q = np.linalg.eigh(np.cov(Xd.T))
    ref = (Xd - Xd.mean(0)) @ (Q / np.sqrt(lam)) @ Q.T
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=1e-3, atol=1e-3)
    images = X.reshape(512, 2, 2, 2)  # (N, C, H, W): flattened to whiten, shaped back
    r2 = Reader(inputs="pixels", target="label")
    assert r2.fit_whiten([{"pixels": images, "label": torch.zeros(512)}])
    got = r2({"pixels": images, "label": torch.zeros(512)})[0].kwargs["pixels"]
    assert got.shape == images.shape
    np.testing.assert_allclose(got.reshape(512, -1).double().numpy(), ref, rtol=1e-3, atol=1e-3)


def test_whitening_declines_what_it_cannot_do():
    assert not Reader().fit_whiten([(torch.randn(30, 20), torch.zeros(30))])  # fewer than 2 D items
    wide = WHITEN_MAX_DIM + 1
    assert not Reader().fit_whiten([(torch.randn(2 * wide, wide), torch.zeros(2 * wide))])
    assert not Reader().fit_whiten([(torch.randint(0, 9, (64, 4)), torch.zeros(64))])  # token ids
    flat = torch.cat([torch.randn(64, 2), torch.zeros(64, 1)], 1)  # a direction without variance maps to 0
    r = Reader()
    assert r.fit_whiten([(flat, torch.zeros(64))])
    assert torch.isfinite(r((flat, torch.zeros(64)))[0].args[0]).all()


def _trace(name: str, kind: str, losses, status: str = "completed") -> Trace:
    v = np.asarray(losses, dtype=float)
    return Trace(name, {"kind": kind, "steps": len(v)}, {"loss.train": (np.arange(len(v)), v)}, [], status, None)


def test_whiten_gain_is_relative_to_the_baselines_final_loss():
    def ending(a, b):
        return np.concatenate([np.linspace(a, b, 45), np.full(5, b)])

    base, white = _trace("baseline", "baseline", ending(1.0, 0.6)), _trace("whitened", "whitened", ending(1.0, 0.15))
    assert extract(ProbeSet({"baseline": base, "whitened": white}))["data.whiten_gain"] == pytest.approx(0.75, rel=1e-9)
    bad = _trace("whitened", "whitened", [1.0, math.inf], status="diverged")
    assert extract(ProbeSet({"baseline": base, "whitened": bad}))["data.whiten_gain"] == -1.0
    assert "data.whiten_gain" not in extract(ProbeSet({"baseline": base}))


def test_the_correlated_inputs_rule_gates_its_probe():
    s = {"data.feature_condition": 2.0e4, "loss.progress": 0.2, "loss.diverged": 0.0}
    assert [r.id for r in PACK if "whitened" in r.opens] == ["OD206"]
    assert followups_wanted(PACK, s, which="whitened")
    # and the per-feature standardised rerun beside it: what whitening adds beyond it is the decorrelation
    assert followups_wanted(PACK, s, which="standardized")
    assert not followups_wanted(PACK, {**s, "loss.progress": 0.9}, which="whitened")  # it trains
    assert not followups_wanted(PACK, {**s, "data.feature_condition": 30.0}, which="whitened")
    assert not followups_wanted(PACK, {"loss.progress": 0.2, "loss.diverged": 0.0}, which="whitened")  # not measured


MIXDATA = Path(__file__).parent / "fixtures" / "mixdata.py"


def _config(tmp_path, name, args, model="optdoctor.models:mlp", model_args="{depth: 0, in_dim: 8, out_dim: 1}",
            extra=""):
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        name: {name}
        model:
          factory: {model}
          args: {model_args}
        data:
          factory: {MIXDATA}:mixed
          args: {args}
          batch_size: 64
        loss: mse
        optimizer: {{name: sgd, lr: 0.1}}
        probe:
          steps: 120
          threads: 1
        """) + extra)
    return cfg


def _diagnose(cfg, *extra):
    r = runner.invoke(app, ["diagnose", str(cfg), "--format", "json", *extra])
    assert r.exit_code in (0, 1), r.output
    return json.loads(r.stdout)


def test_inputs_mixed_from_few_factors_are_named_and_whitening_them_is_verified(tmp_path):
    report = _diagnose(_config(tmp_path, "mixed", "{decades: 4.0}"), "--verify")
    first = report["findings"][0]
    assert first["rule"] == "OD206" and first["cause"] == "ill_conditioning", report["findings"]
    assert "whitened" in report["probes"] and "standardized" in report["probes"]
    assert report["symptoms"]["data.feature_scale_spread"] < 2  # every feature has unit variance
    assert abs(report["symptoms"]["data.standardize_gain"]) < 0.1  # so standardising them changes little
    tried = {json.dumps(v["patch"], sort_keys=True): v for v in first["verification"]}
    assert tried['{"probe.whiten_inputs": true}']["helped"]


def test_collinear_inputs_whose_signal_lies_along_the_large_directions_are_no_finding(tmp_path):
    report = _diagnose(_config(tmp_path, "along", "{decades: 4.0, signal: top}"))
    assert report["symptoms"]["data.feature_condition"] > 100 and report["symptoms"]["loss.progress"] > 0.5
    assert all(f["rule"] != "OD206" for f in report["findings"])
    assert "whitened" not in report["probes"]  # the gate stayed shut: no probe spent


def test_whitening_what_cannot_be_whitened_is_a_config_error_at_the_key(tmp_path):
    cfg = _config(tmp_path, "tokens", "{tokens: true}", model="optdoctor.models:mlp",
                  extra="  whiten_inputs: true\n")
    r = runner.invoke(app, ["diagnose", str(cfg), "--format", "json"])
    assert r.exit_code == 2, r.output
    assert "probe.whiten_inputs" in r.output and "Traceback" not in r.output
