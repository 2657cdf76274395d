"""The built-in model and data zoo (optdoctor.models, optdoctor.data)."""

from __future__ import annotations

import inspect
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optdoctor import data, models
from optdoctor.data import DATASETS
from optdoctor.models import ACTIVATIONS, MODELS

ACTIVATION_TYPES = tuple(ACTIVATIONS.values())

# ---------------------------------------------------------------- data


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_shapes_and_dtypes(name):
    (x, y), (xv, yv) = DATASETS[name](n_train=40, n_val=24)
    assert (len(x), len(y), len(xv), len(yv)) == (40, 40, 24, 24)
    assert x.shape[1:] == xv.shape[1:] and y.shape[1:] == yv.shape[1:]
    assert x.dtype == (torch.int64 if name == "sequence" else torch.float32)
    if y.dtype == torch.float32:  # regression: (N, out), never (N,) (mse would broadcast)
        assert y.ndim == 2
    else:
        assert y.dtype == torch.int64 and y.ndim == 1 and y.min() >= 0
    assert torch.isfinite(x.float()).all() and torch.isfinite(y.float()).all()


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_is_deterministic_per_seed(name):
    make = DATASETS[name]
    a, b, c = make(seed=3), make(seed=3), make(seed=4)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a[0][0], c[0][0])


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_train_and_val_sizes_do_not_change_each_other(name):
    train, val = DATASETS[name](n_train=32, n_val=16)
    train_more_val, val_more_train = DATASETS[name](n_train=32, n_val=50)[0], DATASETS[name](n_train=100, n_val=16)[1]
    assert all(torch.equal(a, b) for a, b in [*zip(train, train_more_val), *zip(val, val_more_train)])


def test_data_does_not_touch_the_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for make in DATASETS.values():
        make()
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("make", [data.blobs, data.teacher, data.linear_regression])
def test_feature_scales_spread_the_per_feature_std(make):
    (x, _), (xv, _) = make(feature_scales=1e3)
    for xs in (x, xv):
        std = xs.std(dim=0)
        assert 1e3 / 3 < (std.max() / std.min()).item() < 3e3
    (x1, _), _ = make()
    (x2, _), _ = make(feature_scales=[2.0] * x1.shape[1])
    assert torch.allclose(x2, 2 * x1)


@pytest.mark.parametrize("condition", [1.0, 100.0, 1e4])
def test_linear_regression_condition_is_exact_on_train(condition):
    (x, _), (xv, _) = data.linear_regression(condition=condition)
    eig = torch.linalg.eigvalsh((x.T @ x / len(x)).double())
    assert eig.max().item() == pytest.approx(1.0, rel=1e-3)
    assert (eig.max() / eig.min()).item() == pytest.approx(condition, rel=1e-2)
    eig_val = torch.linalg.eigvalsh((xv.T @ xv / len(xv)).double())
    # Same distribution, not whitened: sampling noise of 256 points in 20-D alone spreads
    # the eigenvalues by ~(1 +- sqrt(20/256))^2 (Marchenko-Pastur), a factor ~3.
    assert condition / 5 < (eig_val.max() / eig_val.min()).item() < 5 * condition


def test_linear_regression_targets_are_linear():
    (x, y), _ = data.linear_regression(noise=0.0, condition=50.0)
    w = torch.linalg.lstsq(x.double(), y.double()).solution
    assert torch.allclose(x.double() @ w, y.double(), atol=1e-4)


def test_blobs_label_noise_flips_that_fraction_of_train_only():
    (_, clean), (_, val_clean) = data.blobs()
    (_, noisy), (_, val_noisy) = data.blobs(label_noise=0.25)
    assert (clean != noisy).float().mean().item() == pytest.approx(0.25, abs=1 / 512)
    assert torch.equal(val_clean, val_noisy)


@pytest.mark.parametrize(
    "task, rule",
    [
        ("parity", lambda x: x.sum(1) % 2),
        ("copy_first", lambda x: x[:, 0]),
        ("majority", lambda x: torch.stack([torch.bincount(r, minlength=16) for r in x]).argmax(1)),
    ],
)
def test_sequence_labels_follow_the_task(task, rule):
    (x, y), (xv, yv) = data.sequence(task=task)
    assert torch.equal(y, rule(x)) and torch.equal(yv, rule(xv))
    assert x.min() >= 0 and x.max() < 16


def test_teacher_classification_and_memorize_labels():
    (_, y), _ = data.teacher(task="classification", out_dim=3)
    assert set(y.tolist()) == {0, 1, 2}
    (x, y), (xv, yv) = data.memorize()
    assert (len(x), len(xv)) == (64, 256) and set(y.tolist()) <= {0, 1, 2, 3}


# ---------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: models.mlp(in_dim=2, out_dim=2, act="rleu"), "act must be one of relu, leaky_relu, tanh.*got 'rleu'; did you mean 'relu'"),
        (lambda: models.mlp(in_dim=2, out_dim=2, init="orthogonl"), "init must be one of default.*did you mean 'orthogonal'"),
        (lambda: data.sequence(task="partiy"), "task must be one of parity, majority, copy_first; got 'partiy'; did you mean 'parity'"),
        (lambda: data.teacher(task="clasification"), "did you mean 'classification'"),
        (lambda: models.mlp(out_dim=2), "in_dim is required .*probe runner fills it in"),
        (lambda: models.cnn(in_channels=1), "out_dim is required"),
        (lambda: models.transformer(out_dim=2), "vocab_size is required"),
        (lambda: models.mlp(in_dim=2, out_dim=2, depth=2.5), "depth must be an integer; got 2.5"),
        (lambda: models.mlp(in_dim=2, out_dim=2, batchnorm="yes"), "batchnorm must be true or false"),
        (lambda: models.cnn(in_channels=1, out_dim=2, image_size=3), r"image_size\[0\] must be >= 4"),
        (lambda: models.transformer(vocab_size=4, out_dim=2, d_model=30, n_heads=4), "multiple of n_heads"),
        (lambda: data.blobs(n_classes=1), "n_classes must be >= 2; got 1"),
        (lambda: data.blobs(label_noise=1.5), "label_noise must be <= 1.0"),
        (lambda: data.blobs(feature_scales=[1.0, 2.0]), "one entry per feature"),
        (lambda: data.blobs(feature_scales=-1), "feature_scales must be > 0"),
        (lambda: data.linear_regression(condition=0.5), "condition must be >= 1.0"),
        (lambda: data.blobs(seed=True), "seed must be an integer"),
    ],
)
def test_bad_arguments_say_what_is_allowed(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_choices_are_case_insensitive():
    assert isinstance(models.mlp(in_dim=2, out_dim=2, act="ReLU")[1], nn.ReLU)


def test_transformer_rejects_sequences_longer_than_max_len():
    net = models.transformer(vocab_size=4, out_dim=2, max_len=8)
    with pytest.raises(ValueError, match="exceeds the transformer's max_len=8"):
        net(torch.zeros(2, 9, dtype=torch.long))


# ---------------------------------------------------------------- models

# (factory, its size arguments, a matching data set): test cases as data.
CASES = {
    "mlp": (dict(in_dim=20, out_dim=4), data.blobs),
    "resmlp": (dict(in_dim=20, out_dim=1), data.teacher),
    "linear_net": (dict(in_dim=20, out_dim=1), data.linear_regression),
    "cnn": (dict(in_channels=1, out_dim=4, image_size=8), data.bars),
    "transformer": (dict(vocab_size=16, out_dim=2), data.sequence),
}


def test_every_factory_follows_the_size_convention():
    assert set(CASES) == set(MODELS)
    for name, make in [*MODELS.items(), *DATASETS.items()]:
        params = inspect.signature(make).parameters.values()
        assert all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in params), name
    for name, make in MODELS.items():
        params = inspect.signature(make).parameters
        size_args = [a for a in ("in_dim", "in_channels", "vocab_size") if a in params]
        assert len(size_args) == 1 and "out_dim" in params, name
        assert params[size_args[0]].default is None and params["out_dim"].default is None
        assert params["seed"].default is None


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_output_shape_and_double_backward(name):
    sizes, make_data = CASES[name]
    (x, y), _ = make_data(n_train=16, n_val=8)
    net = MODELS[name](**sizes, seed=0)
    out = net(x)
    assert out.shape == (16, sizes["out_dim"])
    # Hessian-vector product by double backward, as the curvature instrument computes it.
    params = [p for p in net.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.square().mean(), params, create_graph=True)
    hvp = torch.autograd.grad(sum(g.sum() for g in grads), params, allow_unused=True)
    assert any(h is not None and h.abs().sum() > 0 for h in hvp)


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_init_is_deterministic(name):
    sizes, _ = CASES[name]
    state = lambda net: torch.cat([t.flatten().float() for t in net.state_dict().values()])  # noqa: E731
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b, c = (MODELS[name](**sizes, seed=s) for s in (7, 7, 8))
    assert torch.equal(torch.random.get_rng_state(), before)  # seed= leaves the caller's RNG alone
    assert torch.equal(state(a), state(b)) and not torch.equal(state(a), state(c))
    torch.manual_seed(5)
    d = MODELS[name](**sizes)
    torch.manual_seed(5)
    assert torch.equal(state(d), state(MODELS[name](**sizes)))  # the runner's way: global seed


def test_mlp_layers_are_hookable():
    net = models.mlp(in_dim=20, out_dim=4, depth=5, act="tanh", batchnorm=True, dropout=0.1)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    acts = [m for m in net.modules() if isinstance(m, ACTIVATION_TYPES)]
    assert len(linears) == 6 and len(acts) == 5
    assert all(type(a) is nn.Tanh for a in acts) and len({id(a) for a in acts}) == 5
    seen = []
    for m in linears + acts:
        m.register_forward_hook(lambda mod, inp, out: seen.append(mod))
    net(torch.randn(8, 20))
    assert len(seen) == 11 and len({id(m) for m in seen}) == 11


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_every_activation_builds(act):
    net = models.mlp(in_dim=3, out_dim=2, depth=2, act=act)
    assert [type(m) for m in net if isinstance(m, ACTIVATION_TYPES)] == [ACTIVATIONS[act]] * 2


def test_linear_net_is_linear_with_tiny_weights():
    net = models.linear_net(in_dim=20, out_dim=1, depth=4, width=16, scale=1e-3, seed=0)
    assert all(type(m) is nn.Linear and m.bias is None for m in net)
    assert len(net) == 5
    assert all(1e-4 < m.weight.std().item() < 2e-3 for m in net)
    x = torch.randn(7, 20)
    assert torch.allclose(net(2 * x), 2 * net(x), rtol=1e-4, atol=1e-30)  # homogeneous: no nonlinearity
    assert net(x).abs().max().item() < 1e-8  # five factors of ~1e-3 * sqrt(16)


def test_resmlp_and_cnn_structure():
    net = models.resmlp(in_dim=4, out_dim=2, depth=3, norm=False)
    assert sum(isinstance(m, nn.Linear) for m in net.modules()) == 2 + 2 * 3
    assert not any(isinstance(m, nn.LayerNorm) for m in net.modules())
    net = models.cnn(in_channels=3, out_dim=5, channels=[4, 4, 4], batchnorm=False, act="elu")
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == 3
    assert sum(isinstance(m, nn.ELU) for m in net.modules()) == 3
    assert net(torch.randn(2, 3, 9, 12)).shape == (2, 5)


# ---------------------------------------------------------------- init options

BIG = dict(in_dim=256, out_dim=256, depth=2, width=256)  # large layers: tight std estimates


def _weights(net):
    return [m.weight for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def test_constant_and_zeros_init():
    for w in _weights(models.mlp(in_dim=5, out_dim=3, init="constant", weight_scale=0.3)):
        assert torch.all(w == 0.3)
    for w in _weights(models.mlp(in_dim=5, out_dim=3, init="zeros", weight_scale=7.0)):
        assert torch.all(w == 0)


def test_normal_and_uniform_init_use_weight_scale():
    for w in _weights(models.mlp(**BIG, init="normal", weight_scale=0.05)):
        assert w.std().item() == pytest.approx(0.05, rel=0.02)
    for w in _weights(models.mlp(**BIG, init="uniform", weight_scale=0.5)):
        assert w.abs().max().item() <= 0.5 and w.std().item() == pytest.approx(0.5 / math.sqrt(3), rel=0.02)


@pytest.mark.parametrize("init", ["default", "kaiming_normal", "xavier_uniform", "orthogonal"])
def test_weight_scale_multiplies_the_init(init):
    base = _weights(models.mlp(**BIG, init=init, seed=0))
    scaled = _weights(models.mlp(**BIG, init=init, weight_scale=10.0, seed=0))
    for w, w10 in zip(base, scaled):
        assert torch.allclose(w10, 10 * w)


@pytest.mark.parametrize(
    "init, act, std",
    [
        ("default", "relu", 1 / math.sqrt(3 * 256)),  # U(+-1/sqrt(fan_in))
        ("kaiming_normal", "relu", math.sqrt(2 / 256)),  # He et al. 2015
        ("kaiming_uniform", "tanh", 5 / 3 / math.sqrt(256)),  # tanh gain 5/3
        ("xavier_normal", "relu", math.sqrt(2 / (256 + 256))),  # Glorot & Bengio 2010
        ("xavier_uniform", "relu", math.sqrt(2 / (256 + 256))),
    ],
)
def test_init_std_matches_its_paper(init, act, std):
    for w in _weights(models.mlp(**BIG, init=init, act=act)):
        assert w.std().item() == pytest.approx(std, rel=0.03)


def test_orthogonal_init_gives_orthogonal_square_weights():
    for w in _weights(models.mlp(**BIG, init="orthogonal", weight_scale=2.0)):
        assert torch.allclose(w @ w.T, 4 * torch.eye(256), atol=1e-4)


def test_bias_init_sets_hidden_biases_and_leaves_output_at_zero():
    net = models.mlp(in_dim=5, out_dim=3, depth=3, bias_init=-2.0, init="kaiming_normal")
    *hidden, out = [m for m in net if isinstance(m, nn.Linear)]
    assert all(torch.all(m.bias == -2.0) for m in hidden) and torch.all(out.bias == 0)
    # A large negative bias with small inputs kills the ReLUs: the classic dead-ReLU setup.
    h = net[:2](torch.randn(64, 5) * 0.1)
    assert (h == 0).all()


def test_apply_init_reaches_conv_layers():
    net = models.cnn(in_channels=2, out_dim=3, init="constant")
    assert all(torch.all(w == 1.0) for w in _weights(net))


# ---------------------------------------------------------------- end to end


def test_mlp_learns_blobs():
    (x, y), _ = data.blobs()
    net = models.mlp(in_dim=20, out_dim=4, seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        start = F.cross_entropy(net(x), y).item()
    assert start == pytest.approx(math.log(4), rel=0.2)  # a healthy init starts near log K
    for _ in range(100):
        idx = torch.randint(len(x), (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    with torch.no_grad():
        end = F.cross_entropy(net(x), y).item()
    assert end < 0.5 * start


def test_data_imports_alone():
    code = "import sys, optdoctor.data; assert 'optdoctor.models' not in sys.modules; optdoctor.data.blobs()"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
