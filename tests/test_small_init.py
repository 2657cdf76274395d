"""Small initialisations on both sides of the saddle / bad-init boundary: the affine test
(probes.affine) against nets whose form is known, and the differential end to end: a deep linear
net started near zero is the saddle of the origin (OD207, OD302 ruled out), a nonlinear net
started with tiny weights is a bad init (OD302 first), and a deep linear net at a standard init
that trains is no finding."""

from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from optdoctor.cli import app
from optdoctor.engine.evaluate import evaluate
from optdoctor.engine.rules import load_rules
from optdoctor.probes.affine import affine_in_input, first_items
from optdoctor.probes.batches import Call

runner = CliRunner()
PACK = load_rules()


def _tiny(net: nn.Module, std: float) -> nn.Module:
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(m.weight, std=std)
    return net


class _FunctionalRelu(nn.Module):
    """ReLU written as a call in forward: no activation module to see."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(torch.nn.functional.relu(self.a(x)))


class _Residual(nn.Module):
    """x + W2 relu(W1 x), between a linear stem and head."""

    def __init__(self):
        super().__init__()
        self.stem, self.fc1, self.fc2, self.head = nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 2)

    def forward(self, x):
        h = self.stem(x)
        return self.head(h + self.fc2(torch.relu(self.fc1(h))))


class _Keyword(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 2)

    def forward(self, *, pixels):
        return {"logits": self.a(pixels)}


@pytest.mark.parametrize("build, want", [
    (lambda: nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 2)), 1.0),
    # tiny weights under default-sized biases: f(x) - f(0) ~ 1e-9 of f(0), lost in float32
    (lambda: _tiny(nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 2)), 1e-4), 1.0),
    (lambda: nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)), 1.0),  # eval-mode BN is affine
    (lambda: nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 2)), 1.0),  # so is eval-mode dropout
    (lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)), 0.0),
    (lambda: _FunctionalRelu(), 0.0),
    (lambda: _tiny(nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(6, 6), nn.ReLU())], nn.Linear(6, 2)), 1e-3), 0.0),
    (lambda: _tiny(nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1)), 1e-5), 0.0),  # tanh near 0, seen at large a
    (lambda: nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 2)), 0.0),
    (lambda: nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 2)), 0.0),  # scale-invariant: not affine
    (lambda: _tiny(_Residual(), 1e-4), 0.0),  # a ReLU branch of tiny weights beside a skip connection
    (lambda: nn.Sequential(nn.Unflatten(1, (1, 2, 3)), nn.Conv2d(1, 4, 1), nn.MaxPool2d((2, 1)), nn.Flatten(), nn.Linear(12, 2)),
     0.0),  # max-pooling is positively homogeneous, not odd
    (lambda: nn.Sequential(nn.Linear(6, 256), *[nn.Linear(256, 256) for _ in range(8)], nn.Linear(256, 2)), 1.0),  # rounding
])
def test_the_affine_test_knows_linear_nets_from_nonlinear_ones(build, want):
    torch.manual_seed(0)
    assert affine_in_input(build(), torch.randn(16, 6)) == want


def test_the_affine_test_leaves_the_model_and_the_rng_as_they_were_and_skips_what_it_cannot_scale():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(16, 6)
    rng = torch.get_rng_state()
    assert affine_in_input(net, x) == 1.0
    assert net.training and next(net.parameters()).dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN running stats too
    assert torch.equal(rng, torch.get_rng_state())
    assert math.isnan(affine_in_input(nn.Embedding(10, 4), torch.randint(0, 10, (4, 5))))  # token ids
    two = Call((torch.randn(4, 6), torch.randn(4, 6)), {})
    assert math.isnan(affine_in_input(nn.Bilinear(6, 6, 2), two))  # two inputs: untested
    assert affine_in_input(_Keyword(), Call((), {"pixels": torch.randn(4, 6)})) == 1.0
    # what the monitor keeps from its first training forward: the first items of the one float input
    kept = first_items({"pixels": torch.randn(40, 6)})
    assert kept.kwargs["pixels"].shape == (16, 6) and affine_in_input(_Keyword(), kept) == 1.0
    assert first_items((torch.randn(4, 6), torch.randn(4, 6))) is None and first_items(torch.randint(0, 3, (4, 5))) is None


def _fired(symptoms: dict) -> list[str]:
    findings, _ = evaluate(PACK, [(100, symptoms)])
    return [f.rule for f in findings]


STALLED = {"loss.diverged": 0.0, "loss.rel_drop": 0.01, "loss.late_rel_drop": 0.001, "weight.init_gain": 1e-3,
           "act.layers": 6.0, "act.scale_ratio.init": 1e-9}


def test_tiny_weights_are_a_saddle_in_a_linear_net_and_a_bad_init_in_a_nonlinear_one():
    assert _fired({**STALLED, "act.layers": 0.0, "act.scale_ratio.init": math.nan, "model.affine": 1.0}) == ["OD207"]
    nonlinear = _fired({**STALLED, "model.affine": 0.0})
    assert nonlinear[0] == "OD302" and "OD207" not in nonlinear
    # where the plateau test also shows a saddle in the nonlinear net, the init still ranks first
    both = _fired({**STALLED, "model.affine": 0.0, "plateau.escape": 0.8})
    assert both[:2] == ["OD302", "OD202"]
    assert _fired({**STALLED, "model.affine": 1.0, "weight.init_gain": 0.6, "act.layers": 0.0}) == []  # standard init


def _config(tmp_path, model: str, optimizer: str = "{name: sgd, lr: 0.1}", steps: int = 150):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        name: small-init
        model: {model}
        data:
          factory: optdoctor.data:linear_regression
          args: {{n_features: 16}}
          batch_size: 64
        loss: mse
        optimizer: {optimizer}
        probe:
          steps: {steps}
          threads: 1
        """))
    return cfg


def _diagnose(cfg):
    r = runner.invoke(app, ["diagnose", str(cfg), "--format", "json"])
    assert r.exit_code in (0, 1), r.output
    return json.loads(r.stdout)


def test_a_deep_linear_net_near_zero_is_the_saddle_at_the_origin(tmp_path):
    report = _diagnose(_config(tmp_path, "{factory: optdoctor.models:linear_net, args: {depth: 3, width: 16, scale: 1.0e-3}}"))
    assert report["symptoms"]["model.affine"] == 1.0
    first = report["findings"][0]
    assert first["cause"] == "saddle_point", report["findings"]
    assert all(f["rule"] != "OD302" for f in report["findings"])
    assert report["findings"][[f["rule"] for f in report["findings"]].index("OD207")]["evidence"]["model.affine"] == 1.0


def test_a_tanh_net_from_tiny_weights_is_a_bad_init(tmp_path):
    report = _diagnose(_config(tmp_path, "{factory: optdoctor.models:mlp, args: {depth: 4, width: 32, act: tanh, "
                                         "init: normal, weight_scale: 1.0e-3}}"))
    assert report["symptoms"]["model.affine"] == 0.0
    assert report["findings"][0]["cause"] == "bad_init", report["findings"]
    assert all(f["rule"] != "OD207" for f in report["findings"])


def test_a_deep_linear_net_at_a_standard_init_is_no_finding(tmp_path):
    report = _diagnose(_config(tmp_path, "{factory: optdoctor.models:linear_net, args: {depth: 3, width: 16, scale: 0.25}}",
                               steps=150))
    assert report["symptoms"]["model.affine"] == 1.0
    assert [f for f in report["findings"] if f["severity"] in ("warning", "error")] == [], report["findings"]


def test_the_monitor_runs_the_affine_test_on_the_first_training_batch():
    """In the user's loop the same differential: a deep linear net from tiny weights, trained by
    SGD on blobs, is the saddle at the origin; the same net with a ReLU between its layers is
    not affine."""
    import torch.nn.functional as F

    import optdoctor
    from optdoctor import data, models

    (X, y), _ = data.blobs()
    for act, want in (("identity", 1.0), ("relu", 0.0)):
        torch.manual_seed(0)
        if act == "identity":
            model = models.linear_net(in_dim=X.shape[1], out_dim=int(y.max()) + 1, depth=3, width=16, scale=1e-3)
        else:
            model = models.mlp(in_dim=X.shape[1], out_dim=int(y.max()) + 1, depth=3, width=16, init="normal",
                               weight_scale=1e-3)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        with optdoctor.Monitor(model, opt) as mon:
            for i in range(60):
                xb, yb = X[i % 8 * 64:(i % 8 + 1) * 64], y[i % 8 * 64:(i % 8 + 1) * 64]
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                mon.step(loss)
            diag = mon.diagnose()
        assert diag.symptoms["model.affine"] == want
        assert ("OD207" in [f.rule for f in diag.findings]) == (want == 1.0), diag.findings


def test_linear_share_counts_the_parameters_of_linear_layers_only():
    from optdoctor.probes.affine import linear_share

    assert linear_share(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))) == 1.0
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    assert linear_share(conv) == pytest.approx((2 * 16 * 3 + 3) / (2 * 9 + 2 + 2 * 16 * 3 + 3))
    normed = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    assert linear_share(normed) == pytest.approx((40 + 18) / (40 + 16 + 18))

    class Slope(nn.Module):  # affine in x, through a cubic of its own parameter
        def __init__(self):
            super().__init__()
            self.t = nn.Parameter(torch.tensor(1.5))

        def forward(self, x):
            return (self.t ** 3 - 3 * self.t) * x

    assert linear_share(Slope()) == 0.0
    frozen = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    frozen[0].weight.requires_grad_(False)
    assert linear_share(frozen) == 1.0  # trainable parameters only
    assert math.isnan(linear_share(nn.ReLU()))


def test_a_linear_regression_at_its_noise_floor_is_no_local_minimum(tmp_path):
    # y = X w* + noise of std 2: the fit ends at the noise floor, far from zero loss, with a
    # positive-definite Hessian and fresh seeds no better: what OD203's second path reads, but a
    # linear model under the squared loss has no local minimum other than the global one
    cfg = tmp_path / "c.yaml"
    cfg.write_text(textwrap.dedent("""\
        name: noisy-regression
        model: {factory: optdoctor.models:mlp, args: {depth: 0}}
        data: {factory: optdoctor.data:linear_regression, args: {noise: 2.0, n_train: 2048}, batch_size: 64}
        loss: mse
        optimizer: {name: sgd, lr: 0.05}
        probe: {threads: 1}
        """))
    report = _diagnose(cfg)
    assert report["symptoms"]["model.deep_linear"] == 1.0
    assert report["symptoms"]["loss.progress"] < 0.5  # far from zero loss: the floor is the noise
    assert [f for f in report["findings"] if f["severity"] in ("warning", "error")] == [], report["findings"]
