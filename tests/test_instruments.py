"""The instruments (optdoctor/probes/instruments/) against slow, obviously correct twins: plain
Python loops over ``.tolist()`` in float64, no code shared with the package.

Models are data (BackPACK style): each case builds a tiny model and names, by hand, its
parametrised layers and activation modules in *forward* order, which is what every per-layer
column must follow. The instruments ride on a plain training loop by hooks alone (a forward
pre-hook on the model, step pre/post hooks on the optimizer), without the runner: they must
work on any training loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

from optdoctor.probes.instruments import (
    SIGMOID_SAT,
    TANH_SAT,
    Activations,
    Context,
    DataStats,
    GradCosine,
    GradHistogram,
    GradNorms,
    InstrumentSet,
    LayerScales,
    PositionGrads,
    Series,
    UpdateRatios,
    activation_kind,
    discover,
    parametrised_layers,
)
from optdoctor.probes.instruments.base import At, Every
from optdoctor.probes.recorder import Recorder
from optdoctor.trace import ProbeSet, Trace

F = nn.functional

# --------------------------------------------------------------------------- tiny models


def _seeded(seed: int):
    def wrap(fn):
        def build():
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                return fn()

        return build

    return wrap


def _kill(layer: nn.Module, n: int) -> None:
    """Make the first ``n`` output units of ``layer`` never active after a ReLU."""
    with torch.no_grad():
        layer.bias[:n] = -1e3


def _widen(layer: nn.Module, factor: float) -> None:
    """Scale a layer's weights so that some sigmoid/tanh outputs land in the flat tails."""
    with torch.no_grad():
        layer.weight.mul_(factor)


def _mlp(act: type[nn.Module]) -> Callable[[], nn.Module]:
    @_seeded(0)
    def build():
        net = nn.Sequential(nn.Linear(6, 8), act(), nn.Linear(8, 8), act(), nn.Linear(8, 3))
        if act is nn.ReLU:
            _kill(net[0], 2)
        else:
            _widen(net[0], 4.0)
        return net

    return build


class OutOfOrder(nn.Module):
    """Layers registered head-first, called input-first: registration order is not forward order."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.act2 = nn.Tanh()
        self.hidden = nn.Linear(8, 8)
        self.act1 = nn.ReLU()
        self.inp = nn.Linear(6, 8)
        _kill(self.inp, 3)
        _widen(self.hidden, 6.0)

    def forward(self, x):
        return self.head(self.act2(self.hidden(self.act1(self.inp(x)))))


@_seeded(1)
def _out_of_order():
    return OutOfOrder()


@_seeded(2)
def _frozen():
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    net[2].requires_grad_(False)  # a frozen layer: no gradient, no update, not a column
    _kill(net[0], 1)
    return net


@_seeded(3)
def _conv():
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.Tanh(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3),
    )  # fmt: skip
    _kill(net[0], 1)
    _widen(net[2], 4.0)
    return net


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[], nn.Module]
    x_shape: tuple[int, ...]  # one sample
    layers: tuple[str, ...]  # parametrised, trainable layers in forward order
    acts: tuple[tuple[str, str], ...]  # (activation module, kind) in forward order


CASES = [
    Case("mlp-relu", _mlp(nn.ReLU), (6,), ("0", "2", "4"), (("1", "relu"), ("3", "relu"))),
    Case("mlp-tanh", _mlp(nn.Tanh), (6,), ("0", "2", "4"), (("1", "tanh"), ("3", "tanh"))),
    Case("mlp-sigmoid", _mlp(nn.Sigmoid), (6,), ("0", "2", "4"), (("1", "sigmoid"), ("3", "sigmoid"))),
    Case("out-of-order", _out_of_order, (6,), ("inp", "hidden", "head"), (("act1", "relu"), ("act2", "tanh"))),
    Case("frozen-layer", _frozen, (6,), ("0", "4"), (("1", "relu"), ("3", "relu"))),
    Case("conv", _conv, (1, 6, 6), ("0", "2", "6"), (("1", "relu"), ("3", "tanh"))),
]
cases = pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])


def batches(case: Case, n: int, size: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, *case.x_shape, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def forward_ordered(model: nn.Module, x: torch.Tensor):
    """Parametrised layers and activation modules in forward order, as a probe fixes them."""
    return discover(model, x)


def attach(model, insts, optimizer=None, x=None, layers=None, acts=None) -> InstrumentSet:
    if layers is None:
        layers, acts = discover(model, x)
    return InstrumentSet(insts).attach(Context(model, optimizer, Recorder(), layers, acts or []))


def train(model, insts, data, optimizer, hook=None):
    """A plain training loop; the instruments see it through their hooks only. ``hook(step,
    phase)`` lets a test take its own reference measurements around the optimizer step."""
    iset = attach(model, insts, optimizer, data[0][0])
    for step, (x, y) in enumerate(data):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if hook:
            hook(step, "before_step")
        optimizer.step()
        if hook:
            hook(step, "after_step")
    iset.detach()
    return finish(iset)


def finish(iset):
    """What the runner does after a probe: the recorder hands over, each instrument derives."""
    trace = Trace("t")
    iset.finish(trace)
    return trace


# --------------------------------------------------------------------------- slow twins


def ref_norm(t: torch.Tensor) -> float:
    return math.sqrt(sum(v * v for v in t.detach().double().flatten().tolist()))


def ref_std(values: list[float]) -> float:
    """Unbiased sample standard deviation (as torch.std)."""
    n = len(values)
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def ref_units(out: torch.Tensor) -> list[list[float]]:
    """Rows = samples, columns = units: channels of an image (every position a sample), features
    of a sequence (every position a sample)."""
    o = out.detach().double()
    if o.dim() == 3:
        n, length, d = o.shape
        return [[o[i, a, j].item() for j in range(d)] for i in range(n) for a in range(length)]
    if o.dim() == 4:
        n, c, h, w = o.shape
        return [[o[i, j, a, b].item() for j in range(c)] for i in range(n) for a in range(h) for b in range(w)]
    return o.reshape(o.shape[0], -1).tolist()


def ref_dead_frac(window: list[torch.Tensor]) -> float:
    """Fraction of units whose output was 0 on every sample of every batch in the window."""
    rows = [r for out in window for r in ref_units(out)]
    n_units = len(rows[0])
    dead = 0
    for j in range(n_units):
        if all(r[j] == 0 for r in rows):
            dead += 1
    return dead / n_units


def ref_sat_frac(out: torch.Tensor, kind: str) -> float:
    vals = out.detach().double().flatten().tolist()
    if kind == "sigmoid":
        sat = [v < SIGMOID_SAT or v > 1 - SIGMOID_SAT for v in vals]
    else:
        sat = [abs(v) > TANH_SAT for v in vals]
    return sum(sat) / len(vals)


def ref_diversity(out: torch.Tensor) -> float:
    rows = ref_units(out)
    spread = sum(ref_std(r) for r in rows) / len(rows)
    return spread / ref_std(out.detach().double().flatten().tolist())


# --------------------------------------------------------------------------- layer order


@cases
def test_layer_order_is_forward_order(case):
    model = case.build()
    x, _ = batches(case, 1)[0]
    layers, acts = forward_ordered(model, x)
    assert tuple(n for n, _ in layers) == case.layers
    assert tuple((n, k) for n, _, k in acts) == case.acts


def test_layer_order_appends_uncalled_modules_in_registration_order():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.spare_b = nn.Linear(4, 4)
            self.out = nn.Linear(4, 2)
            self.spare_a = nn.Linear(4, 4)
            self.inp = nn.Linear(3, 4)

        def forward(self, x):
            return self.out(self.inp(x))

    net = Net()
    layers, _ = discover(net, torch.randn(2, 3))
    assert [n for n, _ in layers] == ["inp", "out", "spare_b", "spare_a"]
    assert not net.inp._forward_hooks  # the discovery pass leaves no hook behind
    assert [n for n, _ in discover(net)[0]] == ["spare_b", "out", "spare_a", "inp"]  # no input: registration order


def test_parametrised_layers_and_activation_kinds():
    net = nn.Sequential(
        nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU6(), nn.Hardtanh(),
        nn.Hardsigmoid(), nn.Softsign(), nn.GELU(), nn.Identity(), nn.Linear(4, 4, bias=False),
    )  # fmt: skip
    net[10].weight.requires_grad_(False)
    assert [n for n, _ in parametrised_layers(net)] == ["0", "2"]  # 1-d norms' weights and frozen ones are not layers
    kinds = [activation_kind(m) for m in net]
    assert kinds == [None, None, None, None, "relu", "tanh", "sigmoid", "tanh", "other", None, None]


# --------------------------------------------------------------------------- gradient norms


@cases
def test_grad_norms_equal_hand_loop(case):
    model = case.build()
    data = batches(case, 3)
    layers, _ = forward_ordered(model, data[0][0])
    expected_layer, expected_global = [], []

    def hook(step, phase):
        if phase != "before_step":
            return
        mods = dict(model.named_modules())
        expected_layer.append([ref_norm(mods[n].weight.grad) for n in case.layers])
        expected_global.append(math.sqrt(sum(ref_norm(p.grad) ** 2 for p in model.parameters() if p.grad is not None)))

    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    trace = train(model, [GradNorms()], data, opt, hook)
    steps, per_layer = trace.series["grad.norm"]
    assert steps.tolist() == [0, 1, 2]
    assert per_layer.shape == (3, len(case.layers))
    np.testing.assert_allclose(per_layer, expected_layer, rtol=1e-5)
    np.testing.assert_allclose(trace.values("grad.global_norm"), expected_global, rtol=1e-5)
    assert trace.values("grad.global_norm").shape == (3,)


def test_grad_norms_frozen_parameters_are_not_in_the_global_norm():
    model = CASES[4].build()
    assert not model[2].weight.requires_grad
    x, y = batches(CASES[4], 1)[0]
    inst = GradNorms()
    iset = attach(model, [inst], layers=parametrised_layers(model))
    F.cross_entropy(model(x), y).backward()
    inst.after_backward(0)
    trainable = [model[0].weight, model[0].bias, model[4].weight, model[4].bias]
    got = finish(iset).values("grad.global_norm")[0]
    assert got == pytest.approx(math.sqrt(sum(ref_norm(p.grad) ** 2 for p in trainable)), rel=1e-6)


def test_grad_norms_layer_without_gradient_is_nan_not_a_crash():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)
            self.unused = nn.Linear(2, 2)  # owned, trainable, never called (an auxiliary head)

        def forward(self, x):
            return self.b(self.a(x))

    net = Net()
    inst = GradNorms()
    iset = attach(net, [inst], layers=parametrised_layers(net))
    net(torch.randn(5, 3)).sum().backward()
    inst.after_backward(0)
    norms = finish(iset).values("grad.norm")[0].tolist()
    assert math.isnan(norms[2]) and norms[0] > 0 and norms[1] > 0  # no gradient at all: NaN, not 0


def test_grad_norms_schedule():
    case = CASES[0]
    model = case.build()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trace = train(model, [GradNorms(every=2)], batches(case, 5), opt)
    assert trace.steps("grad.norm").tolist() == [0, 2, 4]
    assert trace.steps("grad.global_norm").tolist() == [0, 2, 4]


# --------------------------------------------------------------------------- update ratios

OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "sgd-momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
}


@cases
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_update_ratios_equal_hand_computed(case, opt_name):
    model = case.build()
    data = batches(case, 3)
    layers, _ = forward_ordered(model, data[0][0])
    mods = dict(model.named_modules())
    before: list[torch.Tensor] = []
    expected_ratio, expected_norm, expected_first_order = [], [], []

    def hook(step, phase):
        if phase == "before_step":
            before[:] = [mods[n].weight.detach().clone() for n in case.layers]
        else:
            after = [mods[n].weight.detach() for n in case.layers]
            expected_ratio.append([ref_norm(a - b) / ref_norm(b) for a, b in zip(after, before)])
            expected_norm.append([ref_norm(b) for b in before])
            # hand loop: sum over layers and elements of g * (W_before - W_after), in float64
            grads = [mods[n].weight.grad.detach().double().flatten().tolist() for n in case.layers]
            expected_first_order.append(sum(gi * (bi - ai) for g, a, b in zip(grads, after, before)
                                            for gi, ai, bi in zip(g, a.double().flatten().tolist(), b.double().flatten().tolist())))

    opt = OPTIMIZERS[opt_name]([p for p in model.parameters() if p.requires_grad])
    trace = train(model, [UpdateRatios(every=1)], data, opt, hook)
    assert trace.values("update.ratio").shape == (3, len(case.layers))
    np.testing.assert_allclose(trace.values("update.ratio"), expected_ratio, rtol=1e-4)
    np.testing.assert_allclose(trace.values("weight.norm"), expected_norm, rtol=1e-5)
    assert trace.steps("update.ratio").tolist() == [0, 1, 2]
    np.testing.assert_allclose(trace.values("update.first_order"), expected_first_order, rtol=1e-4, atol=1e-10)
    if opt_name == "sgd" and all(isinstance(mods[n], nn.Linear) for n in case.layers):
        assert np.all(trace.values("update.first_order") > 0)  # plain SGD: lr |g|^2 > 0


class _MixedLayers(nn.Module):
    """A float64 middle layer (the one-flat-buffer path needs one dtype) and a layer that gets no
    gradient on every other call (the first-order sum covers the layers that have one)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.unused = nn.Linear(5, 6), nn.Linear(6, 6).double(), nn.Linear(6, 3), nn.Linear(5, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h = self.c(torch.tanh(self.b(torch.tanh(self.a(x)).double())).float())
        return h + self.unused(x) if self.calls % 2 else h


@pytest.mark.parametrize("mixed", [False, True])
def test_update_first_order_equals_hand_loop_on_mixed_dtypes_and_missing_gradients(mixed):
    """Both ways of summing g . (W_before - W_after): one flat buffer (every layer one dtype, every
    gradient there) and per-layer dots (anything else) against a float64 hand loop."""
    torch.manual_seed(0)
    model = _MixedLayers() if mixed else nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(4)]
    before, expected = {}, []

    def hook(step, phase):
        layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if phase == "before_step":
            before.clear()
            before.update({id(m): m.weight.detach().double().clone() for m in layers})
        else:
            expected.append(sum(float((m.weight.grad.double() * (before[id(m)] - m.weight.detach().double())).sum())
                                for m in layers if m.weight.grad is not None))

    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trace = train(model, [UpdateRatios(every=1)], data, opt, hook)
    np.testing.assert_allclose(trace.values("update.first_order"), expected, rtol=1e-5)
    assert np.all(np.isfinite(trace.values("update.ratio")))


def test_update_ratio_of_a_frozen_step_is_zero_and_weights_are_untouched():
    case = CASES[0]
    model = case.build()
    w0 = [m.weight.detach().clone() for _, m in parametrised_layers(model)]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    trace = train(model, [UpdateRatios()], batches(case, 2), opt)
    assert np.all(trace.values("update.ratio") == 0.0)
    assert all(torch.equal(a, m.weight) for a, (_, m) in zip(w0, parametrised_layers(model)))  # the instrument changes nothing


# --------------------------------------------------------------------------- activations


@cases
@pytest.mark.parametrize("window", [1, 3])
def test_activation_stats_equal_hand_loops(case, window):
    model = case.build()
    data = batches(case, 5)
    _, acts = forward_ordered(model, data[0][0])
    outs: dict[str, list[torch.Tensor]] = {n: [] for n, _, _ in acts}
    def keep(module, _inp, out, name):  # training passes only: the layer-order discovery pass runs in eval mode
        if module.training:
            outs[name].append(out.detach().clone())

    handles = [m.register_forward_hook(lambda _m, _i, o, n=n: keep(_m, _i, o, n)) for n, m, _ in acts]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    trace = train(model, [Activations(every=1, window=window)], data, opt)
    for h in handles:
        h.remove()

    assert trace.values("act.scale").shape == (5, len(acts))
    for col, (name, _, kind) in enumerate(acts):
        for step in range(5):
            out = outs[name][step]
            got = {k: trace.values(f"act.{k}")[step, col] for k in ("dead_frac", "sat_frac", "scale", "unit_diversity")}
            if kind == "relu":
                assert got["dead_frac"] == pytest.approx(ref_dead_frac(outs[name][max(0, step - window + 1): step + 1]))
            else:
                assert math.isnan(got["dead_frac"])
            if kind in ("sigmoid", "tanh"):
                assert got["sat_frac"] == pytest.approx(ref_sat_frac(out, kind))
            else:
                assert math.isnan(got["sat_frac"])
            assert got["scale"] == pytest.approx(ref_std(out.double().flatten().tolist()), rel=1e-5)
            if step == 0:  # symmetry is a property of the init: measured at the first measured step
                assert got["unit_diversity"] == pytest.approx(ref_diversity(out), rel=1e-4)
            else:
                assert math.isnan(got["unit_diversity"])


def test_killed_units_are_counted_dead():
    case = CASES[0]  # the first ReLU layer has 2 of 8 units behind a -1e3 bias
    model = case.build()
    _, acts = forward_ordered(model, batches(case, 1)[0][0])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    trace = train(model, [Activations(every=1)], batches(case, 4), opt)
    assert np.all(trace.values("act.dead_frac")[:, 0] >= 2 / 8)


def _drive_acts(model, inputs, inst, acts):
    """Training-mode forward passes, each closed and the next one armed as an optimizer step's
    post-hook would do (attaching armed the first)."""
    iset = attach(model, [inst], layers=[], acts=acts)
    for step, x in enumerate(inputs):
        model(x)
        inst.after_step(step)
        inst.before_forward(step + 1)
    iset.detach()
    return finish(iset)


def test_dead_window_a_unit_active_in_a_recent_batch_is_not_dead():
    """unit 0 = relu(x0) fires only in batch 0, unit 1 = relu(x1) always: with a window of 3
    measured batches unit 0 counts as dead from the 4th batch on, not before."""
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(2))
        lin.bias.zero_()
    model = nn.Sequential(lin, nn.ReLU())
    fires = torch.tensor([[-1.0, 1.0], [-2.0, 1.0], [0.5, 2.0]])  # unit 0 active on one sample only
    quiet = torch.tensor([[-1.0, 1.0], [-2.0, 1.0], [-0.5, 2.0]])
    inst = Activations(every=1, window=3)
    trace = _drive_acts(model, [fires, quiet, quiet, quiet, quiet, fires, quiet], inst, [("1", model[1], "relu")])
    assert trace.values("act.dead_frac")[:, 0].tolist() == [0.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0]


def test_dead_window_counts_measured_batches_only():
    lin = nn.Linear(1, 1)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.zero_()
    model = nn.Sequential(lin, nn.ReLU())
    on, off = torch.ones(4, 1), -torch.ones(4, 1)
    inst = Activations(every=2, window=2)
    # measured: step 0 (on), 2 (off), 4 (off), 6 (off); steps 1, 3, 5 are not seen
    trace = _drive_acts(model, [on, on, off, on, off, on, off], inst, [("1", model[1], "relu")])
    assert trace.steps("act.dead_frac").tolist() == [0, 2, 4, 6]
    assert trace.values("act.dead_frac")[:, 0].tolist() == [0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "act, kind, pre, n_sat",
    [
        # sigmoid(+-6) = 0.9975 / 0.0025 lie in the tails; sigmoid(+-3) = 0.953 / 0.047 do not
        (nn.Sigmoid, "sigmoid", [-6.0, -3.0, 0.0, 3.0, 6.0, 8.0], 3),
        # tanh(+-3) = +-0.995 lie in the tails; tanh(+-2) = +-0.964 do not
        (nn.Tanh, "tanh", [-3.0, -2.0, 0.0, 2.0, 3.0, 10.0], 3),
        (nn.Hardtanh, "tanh", [-3.0, -0.5, 0.0, 0.5, 3.0, 1.0], 3),
    ],
    ids=["sigmoid", "tanh", "hardtanh"],
)
def test_saturation_thresholds(act, kind, pre, n_sat):
    model = nn.Sequential(act())
    assert activation_kind(model[0]) == kind
    x = torch.tensor(pre).reshape(2, 3)
    trace = _drive_acts(model, [x], Activations(every=1), [("0", model[0], kind)])
    assert trace.values("act.sat_frac")[0, 0] == pytest.approx(n_sat / len(pre))


def test_documented_thresholds_mean_a_tiny_derivative():
    """The thresholds stand for sigmoid' < 0.01 and tanh' < 0.02 (to 1%)."""
    assert SIGMOID_SAT * (1 - SIGMOID_SAT) == pytest.approx(0.01, rel=0.01)
    assert 1 - TANH_SAT**2 == pytest.approx(0.02, rel=0.01)


def test_unit_diversity_constant_init_is_zero_random_init_about_one():
    torch.manual_seed(0)
    x = torch.randn(64, 6)
    const = nn.Sequential(nn.Linear(6, 16), nn.Tanh())
    nn.init.constant_(const[0].weight, 0.1)
    nn.init.zeros_(const[0].bias)
    rand = nn.Sequential(nn.Linear(6, 16), nn.Tanh())
    got = {}
    for name, model in (("const", const), ("rand", rand)):
        trace = _drive_acts(model, [x], Activations(every=1), [("1", model[1], "tanh")])
        got[name] = trace.values("act.unit_diversity")[0, 0]
    assert got["const"] == pytest.approx(0.0, abs=1e-6)
    assert 0.7 < got["rand"] < 1.3


def test_other_activations_get_scale_only_and_dead_layers_no_diversity():
    model = nn.Sequential(nn.GELU(), nn.ReLU())
    x = torch.randn(8, 4)
    inst = Activations(every=1)
    trace = _drive_acts(model, [x, -x.abs() - 1], inst, [("0", model[0], "other"), ("1", model[1], "relu")])
    gelu, relu = 0, 1
    assert math.isnan(trace.values("act.dead_frac")[0, gelu]) and math.isnan(trace.values("act.sat_frac")[0, gelu])
    assert trace.values("act.scale")[0, gelu] == pytest.approx(ref_std(F.gelu(x).flatten().tolist()), rel=1e-5)
    # second batch: relu(gelu(-|x|-1)) is all zeros -- dead units (window still holds batch 0),
    # zero scale; and an all-zero first batch has unit diversity undefined (NaN), not 0
    assert trace.values("act.scale")[1, relu] == 0.0
    inst = Activations(every=1)
    trace = _drive_acts(model, [-x.abs() - 1], inst, [("1", model[1], "relu")])
    assert math.isnan(trace.values("act.unit_diversity")[0, 0])


def test_activations_not_armed_outside_scheduled_steps_and_unseen_modules_are_nan():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.ReLU(), nn.Tanh()

        def forward(self, x, use_b=False):
            return self.b(x) if use_b else self.a(x)

    model = Branchy()
    inst = Activations(every=3)
    iset = attach(model, [inst], layers=[], acts=[("a", model.a, "relu"), ("b", model.b, "tanh")])
    for step in range(4):
        if step:
            inst.before_forward(step)  # what the optimizer's post-hook does after each step
        model(torch.randn(4, 2))
        model(torch.randn(4, 2))  # a second training forward in the step (accumulation): first call counts
        model.eval()
        model(torch.randn(4, 2), use_b=True)  # an evaluation (eval mode) must not be recorded...
        model.train()
        assert not model.b._forward_hooks or step % 3 == 0
        inst.after_step(step)
        assert not model.a._forward_hooks  # hooks live for a measured step only
    iset.detach()
    assert not model.a._forward_hooks and not model.b._forward_hooks  # detach removes every hook
    model(torch.randn(4, 2), use_b=True)  # ... nor a forward after detaching
    trace = finish(iset)
    assert trace.steps("act.scale").tolist() == [0, 3]
    assert np.all(np.isnan(trace.values("act.scale")[:, 1]))  # b never ran on a measured step
    assert np.all(np.isfinite(trace.values("act.scale")[:, 0]))


def test_shared_activation_module_used_at_two_widths():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 3), nn.Linear(3, 2)
            self.act = nn.ReLU()  # one module, two call sites: a very common way to write a model

        def forward(self, x):
            return self.c(self.act(self.b(self.act(self.a(x)))))

    model = Shared()
    inst = Activations(every=1)
    trace = _drive_acts(model, [torch.randn(5, 4) for _ in range(3)], inst, [("act", model.act, "relu")])
    assert trace.values("act.dead_frac").shape == (3, 1)
    assert np.all(np.isfinite(trace.values("act.dead_frac")))


# --------------------------------------------------------------------------- recorder and trace


def test_recorder_shapes():
    rec = Recorder()
    rec.declare([Series("loss.train"), Series("grad.norm", "layer"), Series("update.ratio", "layer")])
    for step in range(4):
        rec.log("loss.train", step, 1.0 / (step + 1))  # float -> (T,)
        rec.log("grad.global_norm", step, torch.tensor(2.0 * step))  # 0-d tensor -> (T,)
        rec.log("grad.norm", step, torch.tensor([1.0, 2.0, 3.0]))  # per layer -> (T, L)
        rec.log("update.ratio", step, torch.tensor([0.5]))  # one layer stays (T, 1)
        rec.log("custom", step, torch.tensor([7.0]))  # a one-element non-layer series -> (T,)
        if step % 2 == 0:
            rec.log("loss.val", step, 3.0)
    assert rec.last("loss.train") == 0.25 and rec.last("nothing") is None
    trace = rec.finish(Trace("baseline"))
    shapes = {k: (s.shape, v.shape) for k, (s, v) in trace.series.items()}
    assert shapes == {
        "loss.train": ((4,), (4,)), "grad.global_norm": ((4,), (4,)), "grad.norm": ((4,), (4, 3)),
        "update.ratio": ((4,), (4, 1)), "custom": ((4,), (4,)), "loss.val": ((2,), (2,)),
    }  # fmt: skip
    assert all(s.dtype == np.int64 and v.dtype == np.float64 for s, v in trace.series.values())
    assert trace.steps("loss.val").tolist() == [0, 2]
    assert trace.values("grad.global_norm").tolist() == [0.0, 2.0, 4.0, 6.0]
    assert rec.finish(Trace("again")).series == {}  # finish hands the rows over once


def _full_trace() -> Trace:
    steps = np.arange(10)
    return Trace(
        "lr_x0.1",
        meta={"lr": 0.01, "layers": ["0", "2"], "optimizer_args": {"momentum": 0.9}, "chance_loss": None},
        series={
            "loss.train": (steps, np.linspace(2.0, 1.0, 10)),
            "grad.norm": (steps, np.arange(20.0).reshape(10, 2)),
            "loss.val": (np.array([0, 5, 9]), np.array([2.0, np.nan, np.inf])),
        },
        hessian=[{"step": 0.0, "lambda_max": 3.0}, {"step": 9.0, "lambda_max": 5.0}],
        status="diverged",
        stopped_at=7,
    )


def _assert_same(a: Trace, b: Trace) -> None:
    assert (a.probe, a.meta, a.hessian, a.status, a.stopped_at) == (b.probe, b.meta, b.hessian, b.status, b.stopped_at)
    assert sorted(a.series) == sorted(b.series)
    for k in a.series:
        for x, y in zip(a.series[k], b.series[k]):
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x, y)


def test_trace_save_load_roundtrip(tmp_path):
    t = _full_trace()
    t.save(tmp_path / "t.npz")
    _assert_same(Trace.load(tmp_path / "t.npz"), t)


def test_probeset_save_load_roundtrip(tmp_path):
    base = _full_trace()
    base.probe, base.status, base.stopped_at = "baseline", "completed", None
    ps = ProbeSet({"baseline": base, "lr_x0.1": _full_trace()}, {"feature_scale_spread": 3.5})
    ps.save(tmp_path / "run")
    back = ProbeSet.load(tmp_path / "run")
    assert sorted(back.traces) == ["baseline", "lr_x0.1"] and back.data_stats == ps.data_stats
    for name in ps.traces:
        _assert_same(back.traces[name], ps.traces[name])


def test_trace_save_load_same_path_without_npz_suffix(tmp_path):
    t = _full_trace()
    t.save(tmp_path / "baseline.trace")
    _assert_same(Trace.load(tmp_path / "baseline.trace"), t)


def test_truncated():
    t = _full_trace()
    early = t.truncated(4)
    assert early.values("loss.train").tolist() == t.values("loss.train")[:5].tolist()
    assert early.values("grad.norm").shape == (5, 2)
    assert early.steps("loss.val").tolist() == [0]
    assert early.hessian == [{"step": 0.0, "lambda_max": 3.0}]
    assert (early.status, early.stopped_at) == ("completed", None)  # it had not diverged yet at step 4
    at_stop = t.truncated(7)
    assert (at_stop.status, at_stop.stopped_at) == ("diverged", 7)
    assert t.truncated(100).values("loss.val").shape == (3,)
    early.meta["lr"] = 1.0
    assert t.meta["lr"] == 0.01  # a copy, not a view of the original's meta
    ps = ProbeSet({"baseline": t}, {"x": 1.0}).truncated(4)
    assert ps.baseline.values("loss.train").shape == (5,) and ps.data_stats == {"x": 1.0}


def test_grad_histogram_equals_numpy_on_the_sampled_elements():
    case = CASES[0]
    model = case.build()
    data = batches(case, 2)
    layers, _ = forward_ordered(model, data[0][0])
    inst = GradHistogram(every=1, sample=10, seed=3)
    captured = []

    def hook(step, phase):
        if phase == "before_step":
            captured.append([m.weight.grad.detach().clone() for _, m in layers])

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trace = train(model, [inst], data, opt, hook)
    counts = trace.values("grad.hist")
    edges = np.asarray(trace.meta["grad.hist_edges"])
    assert counts.shape == (2, len(layers), len(edges) - 1)
    for t in range(2):
        for j, g in enumerate(captured[t]):
            sample = g.reshape(-1)[inst._index[j]].abs().double().numpy()
            logs = np.clip(np.log10(np.maximum(sample, 1e-30)), edges[0], edges[-1] - 1e-6)
            want, _ = np.histogram(logs, bins=edges)
            np.testing.assert_array_equal(counts[t, j], want)
            assert counts[t, j].sum() == min(10, g.numel())


# --------------------------------------------------------------------------- functional activations
# Activations written as calls in forward (F.relu, x.softmax(-1), torch.tanh): found by the
# discovery pass wherever they are called, named "<calling module>:<fn>#<k>", measured on the
# training pass; the references recompute them by hand from the captured pre-activations.


def hand(z: torch.Tensor, f: Callable[[float], float]) -> torch.Tensor:
    """``f`` applied element by element in float64 (a plain loop), shaped like ``z``."""
    return torch.tensor([f(v) for v in z.detach().double().flatten().tolist()], dtype=torch.float64).reshape(z.shape)


def hand_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.tensor([p + q for p, q in zip(a.double().flatten().tolist(), b.double().flatten().tolist())],
                        dtype=torch.float64).reshape(a.shape)


HAND = {
    "relu": lambda v: max(v, 0.0),
    "tanh": math.tanh,
    "sigmoid": lambda v: 1.0 / (1.0 + math.exp(-v)) if v > -700 else 0.0,  # exp(700) is near float64's top
    "gelu": lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))),  # F.gelu's exact form
}


def assert_act_stats(trace, name: str, kind: str, outs: list[torch.Tensor], window: int) -> None:
    """The instrument's column ``name`` against the hand references ``outs`` (one per step)."""
    col = trace.meta["act_layers"].index(name)
    assert trace.meta["act_kinds"][col] == kind
    for step, out in enumerate(outs):
        got = {k: trace.values(f"act.{k}")[step, col] for k in ("dead_frac", "sat_frac", "scale", "unit_diversity")}
        if kind == "relu":
            assert got["dead_frac"] == pytest.approx(ref_dead_frac(outs[max(0, step - window + 1): step + 1])), (name, step)
        else:
            assert math.isnan(got["dead_frac"])
        if kind in ("sigmoid", "tanh"):
            assert got["sat_frac"] == pytest.approx(ref_sat_frac(out, kind)), (name, step)
        else:
            assert math.isnan(got["sat_frac"])
        assert got["scale"] == pytest.approx(ref_std(out.double().flatten().tolist()), rel=1e-5), (name, step)
        if step == 0 and kind != "softmax":
            assert got["unit_diversity"] == pytest.approx(ref_diversity(out), rel=1e-4), (name, step)
        else:
            assert math.isnan(got["unit_diversity"])


def capture(modules: dict[str, nn.Module], what: str = "out") -> tuple[dict[str, list[torch.Tensor]], list]:
    """Each module's output (or input) on every training-mode call (the discovery pass is eval)."""
    got: dict[str, list[torch.Tensor]] = {n: [] for n in modules}

    def keep(name):
        def hook(m, inp, out=None):
            if m.training:
                got[name].append((out if what == "out" else inp[0]).detach().clone())

        return hook

    register = (lambda m, h: m.register_forward_hook(h)) if what == "out" else (lambda m, h: m.register_forward_pre_hook(h))
    return got, [register(m, keep(n)) for n, m in modules.items()]


def xy(n: int, x_shape: tuple[int, ...], size: int = 8, seed: int = 0, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, *x_shape, generator=g), torch.randint(0, classes, (size,), generator=g)) for _ in range(n)]


class Functional(nn.Module):
    """Activations written as functions in the root's forward: no module to hook."""

    def __init__(self, act, pool=False):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8 if not pool else 4, 3)
        self.act, self.pool = act, pool

    def forward(self, x):
        x = self.act(self.a(x))
        x = self.act(self.b(x))
        if self.pool:  # something between the activation and the next layer: still seen
            x = F.max_pool1d(x.unsqueeze(1), 2).squeeze(1)
        return self.c(x)


SPELLINGS = [  # (the call, its name in a site, its kind)
    (F.relu, "relu", "relu"), (torch.relu, "relu", "relu"), (lambda x: x.relu(), "relu", "relu"),
    (lambda x: F.relu(x, inplace=True), "relu", "relu"), (F.relu6, "relu6", "relu"),
    (torch.tanh, "tanh", "tanh"), (lambda x: x.tanh(), "tanh", "tanh"), (F.hardtanh, "hardtanh", "tanh"),
    (torch.sigmoid, "sigmoid", "sigmoid"), (lambda x: x.sigmoid(), "sigmoid", "sigmoid"),
    (F.gelu, "gelu", "other"), (F.silu, "silu", "other"), (F.leaky_relu, "leaky_relu", "other"), (F.elu, "elu", "other"),
    (lambda x: x.softmax(-1), "softmax", "softmax"), (lambda x: F.softmax(x, dim=-1), "softmax", "softmax"),
]


@pytest.mark.parametrize("act,fn,kind", SPELLINGS, ids=[f"{i}-{fn}" for i, (_, fn, _) in enumerate(SPELLINGS)])
def test_functional_activations_are_found_in_call_order(act, fn, kind):
    torch.manual_seed(0)
    model = Functional(act, pool=True)
    model.train()
    x = torch.randn(16, 6)
    rng = torch.get_rng_state()
    layers, acts = discover(model, x)
    assert [n for n, _ in layers] == ["a", "b", "c"]
    assert [(n, m, k) for n, m, k in acts] == [(f"{fn}#1", model, kind), (f"{fn}#2", model, kind)]  # the root calls both
    assert model.training and torch.equal(torch.get_rng_state(), rng)  # the model and the RNG are as they were
    assert not torch._C._is_torch_function_mode_enabled() and not model.a._forward_pre_hooks


@pytest.mark.parametrize("act,kind", [(F.relu, "relu"), (torch.tanh, "tanh"), (torch.sigmoid, "sigmoid"), (F.gelu, "other")],
                         ids=["relu", "tanh", "sigmoid", "gelu"])
def test_functional_activation_stats_equal_hand_loops(act, kind):
    torch.manual_seed(0)
    model = Functional(act)
    with torch.no_grad():
        model.a.bias[:3] = -1e3  # 3 of 8 units of the first activation never active (relu)
        model.b.weight.mul_(5.0)  # some sigmoid/tanh outputs in the tails
    pre, handles = capture({f"{act.__name__}#1": model.a, f"{act.__name__}#2": model.b})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trace = train(model, [Activations(every=1, window=2)], xy(4, (6,)), opt)
    for h in handles:
        h.remove()
    f = HAND["gelu" if act is F.gelu else kind]
    assert trace.meta["act_layers"] == list(pre)
    for name, zs in pre.items():
        assert_act_stats(trace, name, kind, [hand(z, f) for z in zs], window=2)
    if kind == "relu":
        assert np.all(trace.values("act.dead_frac")[:, 0] >= 3 / 8)


class _Basic(nn.Module):
    """The ResNet basic block (He et al. 2016) as torchvision writes it: activations are F.relu
    calls in forward, one of them after the residual sum."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.short = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class _ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(_Basic(4, 4), _Basic(4, 8, stride=2))
        self.fc = nn.Linear(8, 3)

    def forward(self, x):  # (N, 1, H, W)
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(self.layer1(x).mean(dim=(2, 3)))


RESNET_SITES = ["relu#1", "layer1.0:relu#1", "layer1.0:relu#2", "layer1.1:relu#1", "layer1.1:relu#2"]


def test_resnet_functional_relus_equal_hand_loops():
    torch.manual_seed(0)
    model = _ResNet()
    with torch.no_grad():
        model.layer1[0].bn1.bias[:2] = -1e3  # 2 of the block's 4 channels never active after its first relu
    layers, acts = discover(model, torch.randn(4, 1, 6, 6))
    assert [(n, k) for n, _, k in acts] == [(n, "relu") for n in RESNET_SITES]
    assert [m for _, m, _ in acts] == [model, model.layer1[0], model.layer1[0], model.layer1[1], model.layer1[1]]
    b0, b1 = model.layer1
    pre, handles = capture({"stem": model.bn, "0.bn1": b0.bn1, "0.bn2": b0.bn2, "0.short": b0.short,
                            "1.bn1": b1.bn1, "1.bn2": b1.bn2, "1.short": b1.short})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    window = 2
    trace = train(model, [Activations(every=1, window=window)], xy(4, (1, 6, 6)), opt)
    for h in handles:
        h.remove()
    relu = HAND["relu"]
    refs = {
        "relu#1": [hand(z, relu) for z in pre["stem"]],
        **{f"layer1.{i}:relu#1": [hand(z, relu) for z in pre[f"{i}.bn1"]] for i in (0, 1)},
        **{f"layer1.{i}:relu#2": [hand(hand_add(z, s), relu) for z, s in zip(pre[f"{i}.bn2"], pre[f"{i}.short"])] for i in (0, 1)},
    }
    assert trace.meta["act_layers"] == RESNET_SITES
    for name in RESNET_SITES:
        assert len(refs[name]) == 4
        assert_act_stats(trace, name, "relu", refs[name], window)
    assert np.all(trace.values("act.dead_frac")[:, 1] >= 2 / 4)


class _TransformerBlock(nn.Module):
    """Pre-norm block (GPT-2 / nanoGPT): LayerNorm, attention with its softmax written out,
    LayerNorm, MLP with F.gelu."""

    def __init__(self, d: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):  # (N, L, D)
        n, length, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(n, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)).softmax(dim=-1)  # (N, H, L, L)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(n, length, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.block, self.head = nn.Linear(5, 8), _TransformerBlock(), nn.Linear(8, 3)

    def forward(self, x):  # (N, L, 5)
        return self.head(self.block(self.inp(x)).mean(dim=1))


def hand_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(dh)) over keys, from the qkv projection (N, L, 3D), in plain loops."""
    n, length, three_d = qkv.shape
    d = three_d // 3
    dh = d // heads
    a = qkv.double().tolist()
    out = []
    for b in range(n):
        per_head = []
        for h in range(heads):
            rows = []
            for i in range(length):
                s = [sum(a[b][i][h * dh + t] * a[b][j][d + h * dh + t] for t in range(dh)) / math.sqrt(dh) for j in range(length)]
                m = max(s)
                e = [math.exp(v - m) for v in s]
                rows.append([v / sum(e) for v in e])
            per_head.append(rows)
        out.append(per_head)
    return torch.tensor(out, dtype=torch.float64)


def test_transformer_block_softmax_and_gelu_equal_hand_loops():
    torch.manual_seed(0)
    model = _Encoder()
    _, acts = discover(model, torch.randn(2, 5, 5))
    assert [(n, m, k) for n, m, k in acts] == [("block:softmax#1", model.block, "softmax"), ("block:gelu#1", model.block, "other")]
    pre, handles = capture({"qkv": model.block.qkv, "fc1": model.block.fc1})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    trace = train(model, [Activations(every=1, window=2)], xy(3, (5, 5), size=4), opt)
    for h in handles:
        h.remove()
    assert_act_stats(trace, "block:softmax#1", "softmax", [hand_attention(z, 2) for z in pre["qkv"]], window=2)
    assert_act_stats(trace, "block:gelu#1", "other", [hand(z, HAND["gelu"]) for z in pre["fc1"]], window=2)


def test_an_activation_module_is_measured_once_not_again_as_the_function_it_calls():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.act, self.fc2, self.out = nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 3)
            self.attn = nn.Softmax(dim=-1)  # calls F.softmax inside

        def forward(self, x):
            x = self.act(self.fc1(x))  # nn.ReLU -> F.relu inside: the module's column only
            x = torch.tanh(self.fc2(x))
            return self.out(x * self.attn(x))

    model = Mixed()
    _, acts = discover(model, torch.randn(4, 6))
    assert [(n, k) for n, _, k in acts] == [("act", "relu"), ("tanh#1", "tanh"), ("attn", "softmax")]
    trace = train(model, [Activations(every=1)], xy(2, (6,)), torch.optim.SGD(model.parameters(), lr=0.1))
    assert np.all(np.isfinite(trace.values("act.scale")))


def test_functional_sites_named_by_the_innermost_module_and_counted_per_module():
    class Inner(nn.Module):
        def forward(self, x):
            return torch.sigmoid(x) * F.relu(x)

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.inner = nn.Linear(4, 4), Inner()
            self.shared = Inner()  # called twice: its calls counted on through the pass

        def forward(self, x):
            x = F.relu(self.fc(x))
            x = self.inner(x)
            x = self.shared(self.shared(x))
            return F.relu(x)

    _, acts = discover(Outer(), torch.randn(3, 4))
    assert [n for n, _, _ in acts] == ["relu#1", "inner:sigmoid#1", "inner:relu#1", "shared:sigmoid#1", "shared:relu#1",
                                       "shared:sigmoid#2", "shared:relu#2", "relu#2"]


def test_training_only_calls_have_no_column_and_a_raising_forward_finds_none():
    class TrainOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            x = F.relu(self.fc(x))
            if self.training:  # discovery runs in eval mode: not seen, not measured
                x = torch.tanh(x)
            return x.sum(dim=1)

    model = TrainOnly()
    _, acts = discover(model, torch.randn(3, 4))
    assert [n for n, _, _ in acts] == ["relu#1"]
    iset = attach(model, [inst := Activations(every=1)], layers=[], acts=acts)
    model(torch.randn(3, 4))
    inst.after_step(0)
    iset.detach()
    assert finish(iset).values("act.scale").shape == (1, 1)

    class Raising(nn.Module):
        def forward(self, x):
            F.relu(x)
            raise RuntimeError("user bug")

    assert discover(Raising(), torch.randn(2, 2)) == ([], [])
    assert not torch._C._is_torch_function_mode_enabled()


def test_the_mode_is_on_for_the_first_training_forward_of_a_measured_step_only():
    model = Functional(F.relu)
    _, acts = discover(model, torch.randn(4, 6))
    inst = Activations(every=2)
    iset = attach(model, [inst], layers=[], acts=acts)
    seen = []
    for step in range(4):
        if step:
            inst.before_forward(step)  # what the optimizer's post-hook does after each step
        assert not torch._C._is_torch_function_mode_enabled()  # armed, not on: nothing else is intercepted
        out = model(torch.randn(4, 6))
        seen.append(torch._C._is_torch_function_mode_enabled())  # off again once forward returned
        model(torch.randn(4, 6))  # a second forward in the step: not measured, no mode
        assert not model.a._forward_pre_hooks  # the module stack's hooks live for one pass
        out.sum().backward()
        inst.after_step(step)
    assert seen == [False] * 4

    inst.before_forward(4)
    with pytest.raises(RuntimeError):
        model(torch.randn(4, 7))  # the user's forward raises mid-pass: the mode and the hooks still go
    assert not torch._C._is_torch_function_mode_enabled() and not model.a._forward_pre_hooks
    inst.after_step(4)
    iset.detach()
    assert not model._forward_hooks and not model._forward_pre_hooks
    trace = finish(iset)
    assert trace.steps("act.scale").tolist() == [0, 2, 4]
    assert np.all(np.isnan(trace.values("act.scale")[2]))  # step 4's forward raised before any activation


# --------------------------------------------------------------------------- gradient cosine


def ref_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    x, y = a.detach().double().flatten().tolist(), b.detach().double().flatten().tolist()
    return sum(p * q for p, q in zip(x, y)) / math.sqrt(sum(p * p for p in x) * sum(q * q for q in y))


@cases
def test_grad_cosine_equals_hand_loop(case):
    model = case.build()
    data = batches(case, 6)
    layers, _ = forward_ordered(model, data[0][0])
    grads: list[list[torch.Tensor]] = []

    def hook(step, phase):
        if phase == "before_step":
            grads.append([m.weight.grad.detach().clone() for _, m in layers])

    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    trace = train(model, [GradCosine(every=2)], data, opt, hook)
    assert trace.steps("grad.cosine").tolist() == [1, 3, 5]  # pairs (0, 1), (2, 3), (4, 5)
    want = [[ref_cos(grads[s - 1][j], grads[s][j]) for j in range(len(layers))] for s in (1, 3, 5)]
    np.testing.assert_allclose(trace.values("grad.cosine"), want, rtol=1e-5, atol=1e-7)


def test_grad_cosine_sees_a_zigzag():
    """Gradient descent on f(w) = 5 w^2 with lr 0.3 overshoots: w -> -2w, the gradient flips."""
    model = nn.Linear(1, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    iset = attach(model, [GradCosine(every=1)], opt, layers=parametrised_layers(model))
    for _ in range(4):
        opt.zero_grad()
        (5 * model.weight.pow(2).sum()).backward()
        opt.step()
    iset.detach()
    assert finish(iset).values("grad.cosine")[:, 0] == pytest.approx([-1.0, -1.0, -1.0])


# --------------------------------------------------------------------------- input statistics


def test_data_stats_equal_hand_loop_on_the_first_samples_seen():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2))
    scales = torch.tensor([1.0, 30.0, 0.5])
    xs = [torch.randn(8, 3) * scales + 2.0 for _ in range(5)]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    inst = DataStats(cap=20)  # 2.5 batches of 8: the third batch is cut at 4 samples
    iset = attach(model, [inst], opt, layers=parametrised_layers(model))
    for x in xs:
        model.eval()
        model(x * 1e6)  # an evaluation pass: not what the model trains on
        model.train()
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    assert not model._forward_pre_hooks  # the hook left once the cap was reached
    iset.detach()
    got = finish(iset).meta["data_stats"]
    rows = [r for x in xs for r in x.double().tolist()][:20]
    cols = list(zip(*rows))
    stds = [ref_std(list(c)) for c in cols]
    means = [sum(c) / len(c) for c in cols]
    assert got["feature_scale_spread"] == pytest.approx(max(stds) / min(stds), rel=1e-9)
    assert got["feature_mean_over_std"] == pytest.approx(max(abs(m) / s for m, s in zip(means, stds)), rel=1e-9)
    corr = np.corrcoef(np.array(rows).T)  # the correlation matrix's condition number, by numpy
    assert got["feature_condition"] == pytest.approx(np.linalg.cond(corr), rel=1e-6)
    assert sorted(got) == ["feature_condition", "feature_mean_over_std", "feature_scale_spread"]


def test_data_stats_say_nothing_for_token_ids():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    iset = attach(model, [DataStats()], opt, layers=parametrised_layers(model))
    model(torch.randint(0, 10, (8, 3))).sum().backward()
    opt.step()
    iset.detach()
    assert finish(iset).meta["data_stats"] == {}


# --------------------------------------------------------------------------- gradient per position


class _Recurrent(nn.Module):
    def __init__(self, kind, batch_first=True, embed=False):
        super().__init__()
        self.embed = nn.Embedding(7, 4) if embed else None
        self.rnn = kind(4, 6, batch_first=batch_first)
        self.head = nn.Linear(6, 3)
        self.batch_first = batch_first

    def forward(self, x):
        if self.embed is not None:
            x = self.embed(x)
        out = self.rnn(x)[0]
        return self.head(out[:, -1] if self.batch_first else out[-1])


def _position_norms_by_hand(model, x, y):
    """Per-position gradient norms of the sequence entering the recurrent layer, by autograd on
    an explicit leaf and plain loops."""
    seq = model.embed(x) if model.embed is not None else x
    seq = seq.detach().double().requires_grad_(True)
    m = model.double()
    out = m.rnn(seq)[0]
    loss = F.cross_entropy(m.head(out[:, -1] if m.batch_first else out[-1]), y)
    (g,) = torch.autograd.grad(loss, seq)
    model.float()
    T = g.shape[1] if model.batch_first else g.shape[0]
    norms = []
    for t in range(T):
        gt = g[:, t] if model.batch_first else g[t]
        norms.append(math.sqrt(sum(v * v for v in gt.flatten().tolist())))
    return norms


@pytest.mark.parametrize("kind,batch_first,embed", [(nn.RNN, True, False), (nn.GRU, False, False), (nn.LSTM, True, True)],
                         ids=["rnn", "gru-time-first", "lstm-embedded"])
def test_position_grads_equal_hand_loop(kind, batch_first, embed):
    torch.manual_seed(0)
    model = _Recurrent(kind, batch_first, embed)
    x = torch.randint(0, 7, (5, 8)) if embed else torch.randn(5, 8, 4)
    if not embed and not batch_first:
        x = x.transpose(0, 1).contiguous()
    y = torch.randint(0, 3, (5,))
    want = _position_norms_by_hand(model, x, y)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    iset = attach(model, [PositionGrads(every=1)], opt, x)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    iset.detach()
    got = finish(iset).values("grad.position")
    assert got.shape == (1, 8)
    np.testing.assert_allclose(got[0], want, rtol=1e-4)
    if embed:
        assert model.embed.weight.grad is not None and model.embed.weight.grad.abs().sum() > 0  # the flow upstream is intact


def test_position_grads_stay_silent_without_a_sequence():
    model = nn.Sequential(nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    iset = attach(model, [PositionGrads(every=1)], opt, torch.randn(2, 4))
    F.cross_entropy(model(torch.randn(2, 4)), torch.tensor([0, 1])).backward()
    opt.step()
    iset.detach()
    assert not finish(iset).has("grad.position")


# --------------------------------------------------------------------------- output scale per layer


def test_layer_scales_equal_hand_loop_and_skip_non_tensor_outputs():
    torch.manual_seed(0)
    model = _Recurrent(nn.GRU, True, False)  # GRU -> (output, hidden): no scale; its weights are ParamViews
    deep = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3))
    for net, x in ((deep, torch.randn(9, 4)), (model, torch.randn(5, 7, 4))):
        outs = {}

        def keep(mod, o, n):
            if mod.training and n not in outs:  # the first training pass (discovery runs in eval mode)
                outs[n] = o

        handles = [m.register_forward_hook(lambda mod, i, o, n=n: keep(mod, o, n)) for n, m in net.named_modules()]
        opt = torch.optim.SGD(net.parameters(), lr=0.0)
        iset = attach(net, [LayerScales()], opt, x)
        out = net(x)
        F.cross_entropy(out, torch.zeros(len(out), dtype=torch.long)).backward()
        opt.step()
        net(x)  # a later step: not measured (the first step only)
        for h in handles:
            h.remove()
        iset.detach()
        trace = finish(iset)
        got = trace.values("layer.out_scale")
        assert got.shape == (1, len(trace.meta["layers"])) and trace.steps("layer.out_scale").tolist() == [0]
        for j, name in enumerate(trace.meta["layers"]):
            o = outs.get(name)
            if isinstance(o, torch.Tensor):
                assert got[0, j] == pytest.approx(ref_std(o.detach().double().flatten().tolist()), rel=1e-5)
            else:
                assert math.isnan(got[0, j])


def test_weight_init_gain_equals_hand_computation_and_knows_standard_inits():
    """rms(W) * sqrt(fan_in), by hand, per layer; NaN for embeddings and recurrent matrices."""
    from optdoctor.probes.instruments import parametrised_layers
    from optdoctor.probes.instruments.weight_symmetry import weight_init_gain

    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(20, 8)
            self.rnn = nn.GRU(8, 8, batch_first=True)
            self.conv = nn.Conv1d(8, 16, 3)
            self.fc = nn.Linear(16, 4)

    net = Net()
    layers = parametrised_layers(net)
    got = weight_init_gain(layers).numpy()
    want = []
    for _, m in layers:
        if isinstance(m, (nn.Linear, nn.Conv1d)):
            w = m.weight.detach().double().flatten().tolist()
            rms = (sum(v * v for v in w) / len(w)) ** 0.5
            fan_in = m.weight[0].numel()  # in_channels * kernel for the conv
            want.append(rms * fan_in ** 0.5)
        else:
            want.append(float("nan"))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.isnan(got[0]) and np.isfinite(got[-1])
    big = nn.Linear(512, 512)  # the standard inits, on a layer large enough to read them off
    for init, gain in [(lambda w: None, 1 / 3 ** 0.5), (lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"), 2 ** 0.5),
                       (lambda w: nn.init.xavier_normal_(w), 1.0), (lambda w: nn.init.uniform_(w, -1e-3, 1e-3), 1e-3 / 3 ** 0.5 * 512 ** 0.5),
                       (lambda w: nn.init.normal_(w, -0.1, 0.05), (0.1 ** 2 + 0.05 ** 2) ** 0.5 * 512 ** 0.5)]:  # a shifted init at full size
        init(big.weight)
        assert float(weight_init_gain([("x", big)])[0]) == pytest.approx(gain, rel=0.05)


def test_weight_recurrent_gain_equals_hand_computation_on_rnn_gru_lstm():
    """rms(W_hh) * sqrt(hidden), by hand, for every recurrent kind and depth; NaN for the
    input-to-hidden matrices and for every other layer; PyTorch's default reads 1/sqrt(3)."""
    from optdoctor.probes.instruments import parametrised_layers
    from optdoctor.probes.instruments.weight_symmetry import weight_recurrent_gain

    torch.manual_seed(0)
    for cls, kw in [(nn.RNN, {}), (nn.GRU, {"num_layers": 2}), (nn.LSTM, {}), (nn.LSTM, {"proj_size": 16})]:
        net = nn.Sequential(cls(8, 256, batch_first=True, **kw), nn.Linear(256, 3))
        layers = parametrised_layers(net)
        got = weight_recurrent_gain(layers).numpy()
        assert len(got) == len(layers)
        for (name, m), g in zip(layers, got):
            if ".weight_hh" in name:
                w = m.weight.detach().double()
                rms = (sum(v * v for v in w.flatten().tolist()) / w.numel()) ** 0.5
                assert g == pytest.approx(rms * w.shape[1] ** 0.5, rel=1e-5)
                if "proj_size" not in kw:  # U(-1/sqrt(H), 1/sqrt(H)) over H inputs
                    assert g == pytest.approx(1 / 3 ** 0.5, rel=0.05)
            else:
                assert np.isnan(g), name
    gru = nn.GRU(4, 64)
    for name, p in gru.named_parameters():
        if name.startswith("weight"):
            nn.init.uniform_(p, -1e-3, 1e-3)
    (g,) = [v for v in weight_recurrent_gain(parametrised_layers(gru)).tolist() if v == v]
    assert g == pytest.approx(1e-3 / 3 ** 0.5 * 64 ** 0.5, rel=0.05)


# --------------------------------------------------------------------------- schedules: next due step
@pytest.mark.parametrize("schedule", [Every(1), Every(7), Every(20), At([0]), At([3, 50, 51]), At([])],
                         ids=["every1", "every7", "every20", "at0", "at3-50-51", "never"])
def test_schedule_next_is_the_first_due_step(schedule):
    """``next`` (what a driver skips ahead by) against asking ``due`` step by step."""
    from optdoctor.probes.instruments.base import NEVER, Schedule

    for step in range(120):
        want = next((s for s in range(step, 200) if schedule.due(s)), None)
        got = schedule.next(step)
        assert got == (want if want is not None else NEVER) or (want is None and got >= 200)
        assert Schedule.next(schedule, step) == (want if want is not None else step + 1000)  # the fallback scan


def test_instrument_with_its_own_due_is_asked_step_by_step():
    from optdoctor.probes.instruments.base import Instrument

    class Odd(Instrument):
        def due(self, step):
            return step % 2 == 1

    assert [Odd().next_due(s) for s in range(5)] == [1, 1, 3, 3, 5]


# --------------------------------------------------------------------------- evaluation modes


def test_train_mode_loss_equals_a_hand_forward_and_changes_nothing():
    """loss.train_trainmode (checkpoints of the last tenth only) is the training-mode loss of the
    same weights on the same fixed batch, as a hand forward pass on a copy computes it; the
    BatchNorm running statistics and the random state (dropout) are as they were, so the probe
    goes on unchanged; loss.train_eval beside it is the eval-mode loss."""
    import copy

    from optdoctor.probes.instruments.evaluation import Evaluation

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3))
    X, y = torch.randn(32, 4) * 3 + 5, torch.randint(0, 3, (32,))
    ev = Evaluation(at=[0, 10, 91, 95, 100], forward=lambda m, x: m(x), loss_fn=F.cross_entropy, train=(X, y))
    iset = attach(model, [ev], x=X)
    twin = copy.deepcopy(model)
    stats = [b.clone() for b in model.buffers()]
    for step in (0, 10, 91, 95, 100):
        torch.manual_seed(1234 + step)  # the hand pass draws the same dropout masks
        with torch.no_grad():
            want = float(F.cross_entropy(copy.deepcopy(twin).train()(X), y))
        torch.manual_seed(1234 + step)
        rng = torch.get_rng_state()
        ev.at_state(step)
        assert torch.equal(torch.get_rng_state(), rng)
        assert all(torch.equal(a, b) for a, b in zip(model.buffers(), stats))
        rows = dict(iset.ctx.recorder.rows("loss.train_trainmode"))
        if step > 90:
            assert rows[step] == pytest.approx(want, rel=1e-6)
        else:
            assert step not in rows
    with torch.no_grad():
        assert dict(iset.ctx.recorder.rows("loss.train_eval"))[100] == pytest.approx(
            float(F.cross_entropy(twin.eval()(X), y)), rel=1e-6)
    assert model.training


def test_no_training_mode_pass_without_running_statistics():
    """A model without BatchNorm (dropout only) is never called in training mode by the
    evaluation: a model may count its training calls."""
    from optdoctor.probes.instruments.evaluation import Evaluation

    calls = []
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 3))
    model.register_forward_pre_hook(lambda m, a: calls.append(m.training))
    X, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    ev = Evaluation(at=[0, 95, 100], forward=lambda m, x: m(x), loss_fn=F.cross_entropy, train=(X, y))
    iset = attach(model, [ev], x=X)
    calls.clear()
    for step in (0, 95, 100):
        ev.at_state(step)
    assert calls and not any(calls)
    assert iset.ctx.recorder.rows("loss.train_trainmode") == []
    assert {s for s, _ in iset.ctx.recorder.rows("loss.train_eval")} == {0, 95, 100}


def test_a_training_mode_pass_that_cannot_run_is_nan_and_changes_nothing():
    """BatchNorm cannot normalise a chunk of one sample in training mode: the pass records NaN
    (loss.eval_mode_ratio is then absent) instead of failing the probe, and puts the mode and the
    running statistics back."""
    from optdoctor.probes.instruments.evaluation import Evaluation

    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    X, y = torch.randn(1, 4), torch.randint(0, 3, (1,))
    ev = Evaluation(at=[0, 100], forward=lambda m, x: m(x), loss_fn=F.cross_entropy, train=[(X, y)])
    iset = attach(model, [ev], x=torch.randn(8, 4))
    stats = [b.clone() for b in model.buffers()]
    ev.at_state(100)
    assert math.isnan(dict(iset.ctx.recorder.rows("loss.train_trainmode"))[100])
    assert model.training and all(torch.equal(a, b) for a, b in zip(model.buffers(), stats))
    assert dict(iset.ctx.recorder.rows("loss.train_eval"))[100] > 0  # eval mode still measured


def test_the_training_mode_pass_is_not_data_the_model_trains_on():
    """DataStats watches training-mode forwards until its cap: the evaluation's training-mode pass
    on the fixed batch (inputs scaled x1e6 here) must not reach it."""
    from optdoctor.probes.instruments.evaluation import Evaluation

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    xs = [torch.randn(8, 3) * torch.tensor([1.0, 30.0, 0.5]) for _ in range(3)]
    Xf, yf = torch.randn(16, 3) * 1e6, torch.randint(0, 2, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = DataStats(cap=1000)
    ev = Evaluation(at=[0, 3], forward=lambda m, x: m(x), loss_fn=F.cross_entropy, train=(Xf, yf))
    iset = attach(model, [stats, ev], opt, layers=parametrised_layers(model))
    for step, x in enumerate(xs, 1):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
        ev.at_state(step)
    assert dict(iset.ctx.recorder.rows("loss.train_trainmode"))  # the pass ran (step 3)
    iset.detach()
    got = finish(iset).meta["data_stats"]
    rows = [r for x in xs for r in x.double().tolist()]
    stds = [ref_std(list(c)) for c in zip(*rows)]
    assert got["feature_scale_spread"] == pytest.approx(max(stds) / min(stds), rel=1e-9)
