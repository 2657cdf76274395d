"""``probe.reinit`` (probes/reinit.py) against the formulas it promises, the benchmark plain loop's
independent re-implementation, and the rules' ``or_patch`` (the init remedies for factories that
take no ``init`` argument)."""

from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from optdoctor.cli import app
from optdoctor.probes.reinit import SCHEMES, reinit


class Net(nn.Module):
    """Every kind of layer the setting knows, and two it must leave alone."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(400, 300)
        self.conv = nn.Conv2d(8, 16, 3)
        self.bn = nn.BatchNorm1d(300)
        self.ln = nn.LayerNorm(300)
        self.gru = nn.GRU(12, 32)
        self.emb = nn.Embedding(50, 8)
        self.scale = nn.Parameter(torch.full((3,), 7.0))


def _spoil(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(-3.0)


def _std(t: torch.Tensor) -> float:
    """Root mean square of the elements (the draws have mean 0), in float64 by hand."""
    v = t.detach().double().flatten().tolist()
    return math.sqrt(sum(x * x for x in v) / len(v))


@pytest.mark.parametrize("scheme,expected", [
    ("kaiming_normal", lambda fan_in, fan_out: math.sqrt(2.0 / fan_in)),
    ("xavier_normal", lambda fan_in, fan_out: math.sqrt(2.0 / (fan_in + fan_out))),
    ("orthogonal", None),
])
def test_weights_follow_the_scheme_biases_zero_norms_reset_the_rest_untouched(scheme, expected):
    torch.manual_seed(0)
    model = Net()
    _spoil(model)
    emb_before = model.emb.weight.detach().clone()
    assert reinit(model, scheme) == 5  # fc, conv, bn, ln, gru
    fc, conv = model.fc.weight, model.conv.weight
    if expected is not None:
        assert _std(fc) == pytest.approx(expected(400, 300), rel=0.02)
        assert _std(conv) == pytest.approx(expected(8 * 9, 16 * 9), rel=0.05)
    else:  # rows orthonormal (300 x 400: W W^T = I)
        assert torch.allclose(fc @ fc.T, torch.eye(300), atol=1e-4)
    assert torch.count_nonzero(model.fc.bias) == 0 and torch.count_nonzero(model.conv.bias) == 0
    for norm in (model.bn, model.ln):
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
    for gate in model.gru.weight_hh_l0.split(32):  # each gate's recurrent block orthogonal
        assert torch.allclose(gate @ gate.T, torch.eye(32), atol=1e-4)
    assert all(torch.count_nonzero(b) == 0 for b in (model.gru.bias_ih_l0, model.gru.bias_hh_l0))
    assert torch.equal(model.emb.weight, emb_before) and torch.all(model.scale == -3.0)


def test_default_is_each_layers_own_reset_and_the_same_seed_gives_the_same_weights():
    torch.manual_seed(3)
    a = Net()
    _spoil(a)
    torch.manual_seed(5)
    reinit(a, "default")
    torch.manual_seed(5)
    b = Net()
    _spoil(b)
    torch.manual_seed(5)
    for m in (b.fc, b.conv, b.bn, b.ln, b.gru):
        m.reset_parameters()
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


def test_unknown_scheme_and_nothing_to_reinitialise():
    with pytest.raises(ValueError, match="unknown init scheme"):
        reinit(Net(), "he")
    assert reinit(nn.Sequential(nn.ReLU()), "kaiming_normal") == 0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_benchmark_plain_loop_reinitialises_as_optdoctor_does(scheme):
    """Two implementations written from one description (remedy_check's plain loop may not call
    optdoctor): the same draws in the same order give the same weights."""
    from benchmarks.faults.verify import _reinit

    models = []
    for impl in (reinit, _reinit):
        torch.manual_seed(0)
        m = Net()
        _spoil(m)
        torch.manual_seed(1)
        impl(m, scheme)
        models.append(m)
    for (n, p), (_, q) in zip(models[0].named_parameters(), models[1].named_parameters()):
        assert torch.equal(p, q), n


def test_probe_reinit_in_a_config_and_a_bad_value(tmp_path):
    runner = CliRunner()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {factory: optdoctor.models:mlp}\ndata: {factory: optdoctor.data:blobs}\n"
                   "optimizer: {name: sgd, lr: 0.1}\nprobe: {steps: 5, reinit: he_normal}\n")
    r = runner.invoke(app, ["diagnose", str(cfg)])
    assert r.exit_code == 2 and "probe.reinit" in r.output and "c.yaml:4" in r.output


def test_setup_builds_the_reinitialised_model(tmp_path):
    from optdoctor.config import load_config
    from optdoctor.probes.setup import prepare

    (tmp_path / "m.py").write_text(textwrap.dedent("""\
        import torch
        def net():
            m = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
            with torch.no_grad():
                for p in m.parameters():
                    p.fill_(0.0)
            return m
        """))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {factory: m.py:net}\ndata: {factory: optdoctor.data:blobs}\n"
                   "optimizer: {name: sgd, lr: 0.1}\nprobe: {reinit: kaiming_normal}\n")
    setup = prepare(load_config(cfg))
    m1, m2 = setup.build_model(0), setup.build_model(0)
    w = m1[0].weight
    assert _std(w) == pytest.approx(math.sqrt(2 / 20), rel=0.1)
    assert torch.equal(w, m2[0].weight)  # seeded
    assert not torch.equal(w, setup.build_model(1)[0].weight)


def test_rules_or_patch_is_validated(tmp_path):
    from optdoctor.engine.rules import RuleError, load_rule_file, shipped_rules_dir

    text = (shipped_rules_dir() / "OD302-init-scale.yaml").read_text()
    rule = load_rule_file(shipped_rules_dir() / "OD302-init-scale.yaml")
    assert rule.remedies[0].or_patch == {"probe.reinit": "kaiming_normal"}
    bad = tmp_path / "OD302-init-scale.yaml"
    bad.write_text(text.replace('    patch: {model.args.init: kaiming_normal, "model.args.weight_scale?": 1.0}\n', "", 1))
    with pytest.raises(RuleError, match="or_patch"):  # an or_patch needs the patch it stands in for
        load_rule_file(bad)


def _verify_user_net(tmp_path) -> list[dict]:
    """``diagnose --verify`` of the net ``m.py:net`` in ``tmp_path`` on blobs (SGD + momentum): its findings."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {factory: m.py:net}\ndata: {factory: optdoctor.data:blobs}\n"
                   "optimizer: {name: sgd, lr: 0.05, args: {momentum: 0.9}}\nprobe: {steps: 150}\n")
    r = CliRunner().invoke(app, ["diagnose", str(cfg), "--verify", "--format", "json"])
    assert r.exit_code in (0, 1), r.output
    return json.loads(r.stdout)["findings"]


@pytest.mark.slow
def test_verify_tries_the_or_patch_on_a_factory_without_an_init_argument(tmp_path):
    """A user's ReLU net whose biases start at -3 (dead at step 0) and that takes no argument:
    the dead-ReLU rule's init remedy is not applicable as ``model.args.bias_init`` and runs as
    ``probe.reinit`` instead, and fixes the run."""
    (tmp_path / "m.py").write_text(textwrap.dedent("""\
        import torch
        def net():
            m = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                    torch.nn.Linear(64, 4))
            with torch.no_grad():
                m[0].bias.fill_(-3.0)
                m[2].bias.fill_(-3.0)
            return m
        """))
    findings = _verify_user_net(tmp_path)
    dead = next(f for f in findings if f["cause"] == "dead_relu")
    tried = [v for v in dead["verification"] if v["patch"] == {"probe.reinit": "kaiming_normal"}]
    assert len(tried) == 1 and "model.args.bias_init" in tried[0]["note"] and tried[0]["applicable"]
    assert tried[0]["helped"]


@pytest.mark.slow
def test_verify_tries_the_or_patch_when_the_factory_rejects_the_scheme(tmp_path):
    """A user's factory that takes ``init`` but knows only its own schemes: the init remedy's
    ``model.args.init: kaiming_normal`` makes the factory raise, and the remedy runs as
    ``probe.reinit`` instead (the note says why), and fixes the run."""
    (tmp_path / "m.py").write_text(textwrap.dedent("""\
        import torch
        def net(init="tiny"):
            if init not in ("tiny", "default"):
                raise ValueError(f"unknown init {init!r}")
            m = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                    torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
            if init == "tiny":
                with torch.no_grad():
                    for layer in m:
                        if isinstance(layer, torch.nn.Linear):
                            layer.weight.uniform_(-1e-3, 1e-3)
                            layer.bias.zero_()
            return m
        """))
    findings = _verify_user_net(tmp_path)
    init = next(f for f in findings if f["cause"] == "bad_init")
    tried = [v for v in init["verification"] if v["patch"].get("probe.reinit")]
    assert tried and "could not run" in tried[0]["note"] and "unknown init" in tried[0]["note"], init["verification"]
    assert any(v["helped"] for v in tried)


@pytest.mark.slow
def test_verify_keeps_pytorchs_defaults_where_the_users_code_spoiled_the_init(tmp_path):
    """A user's ReLU net whose own init code draws every weight from U(-1e-3, 1e-3): the bad-init
    rules' "keep PyTorch's default initialisation" remedy (``probe.reinit: default``, any model)
    resets each layer with its ``reset_parameters`` and fixes the run. Its evidence shows the
    default's scale: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) has rms * sqrt(fan_in) = 1/sqrt(3)."""
    (tmp_path / "m.py").write_text(textwrap.dedent("""\
        import torch
        def net():
            m = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                    torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
            for layer in m:
                if isinstance(layer, torch.nn.Linear):
                    torch.nn.init.uniform_(layer.weight, -1e-3, 1e-3)
                    torch.nn.init.zeros_(layer.bias)
            return m
        """))
    findings = _verify_user_net(tmp_path)
    init = next(f for f in findings if f["cause"] == "bad_init")
    (default,) = [v for v in init["verification"] if v["patch"] == {"probe.reinit": "default"}]
    assert default["applicable"] and default["helped"], default
    before, after = default["symptoms"]["weight.init_gain"]
    assert before < 0.01 and after == pytest.approx(1 / math.sqrt(3), rel=0.1)
