"""Symptom producers (optdoctor/symptoms/*.py) on hand-built traces with known numbers.

No torch and no training here: symptoms are pure functions of plain arrays (DESIGN.md), so
every expected value below is worked out by hand from the series it is computed from.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from optdoctor.trace import ProbeSet, Trace
from optdoctor.symptoms import PRODUCERS, SYMPTOMS, extract
from optdoctor.symptoms import registry
from optdoctor.symptoms.curvature import stability_limit

nan, inf = math.nan, math.inf


def trace(series: dict, probe: str = "baseline", steps: int | None = None, status: str = "completed",
          stopped_at: int | None = None, hessian: list | None = None, **meta) -> Trace:
    """``series[name]`` is an array of values (steps 0..T-1) or a (steps, values) pair."""
    out = {}
    for name, v in series.items():
        if isinstance(v, tuple):
            s, vals = v
        else:
            vals = v
            s = np.arange(len(vals))
        out[name] = (np.asarray(s, dtype=np.int64), np.asarray(vals, dtype=np.float64))
    if steps is None and "loss.train" in out:
        steps = len(out["loss.train"][0])
    return Trace(probe, {"steps": steps, **meta}, out, hessian or [], status, stopped_at)


def probes(*traces: Trace, data_stats: dict | None = None) -> ProbeSet:
    return ProbeSet({t.probe: t for t in traces}, data_stats or {})


def only(symptoms: dict, family: str) -> dict:
    return {k: v for k, v in symptoms.items() if k.split(".")[0] == family}


def flat(value: float, n: int = 100) -> np.ndarray:
    return np.full(n, value)


# --------------------------------------------------------------------------- loss


def test_loss_curve_linear_descent():
    v = np.linspace(2.0, 1.0, 100)  # v[i] = 2 - i/99
    s = extract(probes(trace({"loss.train": v}, chance_loss=1.5)))
    final = 2.0 - np.mean(np.arange(90, 100)) / 99  # mean of the last 10%
    assert s["loss.initial"] == 2.0
    assert s["loss.final"] == pytest.approx(final)
    assert s["loss.rel_drop"] == pytest.approx((2.0 - final) / 2.0)
    assert s["loss.chance"] == 1.5
    assert s["loss.progress"] == pytest.approx((1.5 - final) / 1.5)
    assert s["loss.init_over_chance"] == pytest.approx(2.0 / 1.5)
    assert s["loss.spike"] == 0.0  # never above its running minimum
    # trailing mean of width 100 // 20 = 5 at i = 50 and i = 99: 2 - 48/99 and 2 - 97/99
    assert s["loss.late_rel_drop"] == pytest.approx((49 / 99) / 2.0)
    assert (s["loss.diverged"], s["loss.diverged_at"]) == (0.0, 1.0)


def _late_drop_lo_by_hand(v) -> float:
    """Ordinary least squares over the second half, written out term by term."""
    h = [float(x) for x in v[len(v) // 2:]]
    n = len(h)
    xbar = (n - 1) / 2
    ybar = sum(h) / n
    sxx = sum((i - xbar) ** 2 for i in range(n))
    slope = sum((i - xbar) * (h[i] - ybar) for i in range(n)) / sxx
    rss = sum((h[i] - (ybar + slope * (i - xbar))) ** 2 for i in range(n))
    se = math.sqrt(rss / (n - 2) / sxx)
    return (-slope - 2 * se) * (n - 1) / abs(float(v[0]))


def test_eval_mode_ratio_compares_the_two_modes_on_the_same_checkpoints_by_hand():
    """loss.eval_mode_ratio: sum of the eval-mode losses over sum of the training-mode ones, at the
    checkpoints that have both (the last tenth); a non-finite eval-mode loss makes it inf; no
    training-mode rows, no symptom."""
    steps = np.array([0, 7, 14, 126, 133, 140, 147, 150])
    ev = np.array([5.0, 4.0, 3.0, 0.5, 0.8, 0.2, 0.1, 0.3])
    tm_steps, tm = np.array([140, 147, 150]), np.array([0.05, 0.05, 0.1])
    base = {"loss.train": np.linspace(1.0, 0.05, 150)}
    s = extract(probes(trace({**base, "loss.train_eval": (steps, ev), "loss.train_trainmode": (tm_steps, tm)},
                             chance_loss=2.0)))
    ratio = (0.2 + 0.1 + 0.3) / (0.05 + 0.05 + 0.1)
    assert s["loss.eval_mode_ratio"] == pytest.approx(ratio)
    bad = ev.copy()
    bad[-2] = nan
    got = extract(probes(trace({**base, "loss.train_eval": (steps, bad), "loss.train_trainmode": (tm_steps, tm)})))
    assert got["loss.eval_mode_ratio"] == inf
    same = extract(probes(trace({**base, "loss.train_eval": (tm_steps, tm), "loss.train_trainmode": (tm_steps, tm)})))
    assert same["loss.eval_mode_ratio"] == 1.0
    assert "loss.eval_mode_ratio" not in extract(probes(trace({**base, "loss.train_eval": (steps, ev)})))


def test_late_drop_lower_bound_is_the_least_squares_drop_less_two_standard_errors():
    rng = np.random.default_rng(0)
    clean = np.linspace(2.0, 1.0, 100)
    s = extract(probes(trace({"loss.train": clean})))
    # a straight line: no residual, the bound is the line's drop over the half (49 of 99 steps)
    assert s["loss.late_rel_drop_lo"] == pytest.approx((49 / 99) / 2.0)
    for series in (clean + rng.normal(0, 0.05, 100), np.exp(-np.arange(150) / 30) + rng.normal(0, 0.1, 150),
                   1.0 + rng.normal(0, 0.2, 40)):
        s = extract(probes(trace({"loss.train": series})))
        assert s["loss.late_rel_drop_lo"] == pytest.approx(_late_drop_lo_by_hand(series), rel=1e-9)


def test_noise_around_a_level_is_no_late_drop_however_the_smoothed_ends_fall():
    # mini-batch noise around a constant: the trailing means at mid and end may differ by chance,
    # the least-squares bound does not read that as progress
    rng = np.random.default_rng(3)
    v = 0.5 + rng.normal(0, 0.05, 150)
    v[0] = 1.0
    s = extract(probes(trace({"loss.train": v})))
    assert s["loss.late_rel_drop_lo"] < 0.0
    # too short a second half for a standard error: absent, not guessed
    assert "loss.late_rel_drop_lo" not in extract(probes(trace({"loss.train": np.linspace(2, 1, 14)})))


def test_loss_spike_is_relative_to_the_initial_loss():
    v = flat(2.0)
    v[30:] = 1.0
    v[40] = 3.0  # 2.0 above the running minimum 1.0
    s = extract(probes(trace({"loss.train": v})))
    assert s["loss.spike"] == pytest.approx(2.0 / 2.0)
    assert s["loss.final"] == 1.0 and s["loss.rel_drop"] == 0.5


def test_diverged_loss():
    v = np.concatenate([np.linspace(1.0, 2.0, 50), [inf]])  # stopped at step 50 of 100
    s = extract(probes(trace({"loss.train": v}, steps=100, status="diverged", stopped_at=50, chance_loss=1.0)))
    assert s["loss.diverged"] == 1.0 and s["loss.diverged_at"] == 0.5
    assert s["loss.initial"] == 1.0
    assert s["loss.final"] == inf and s["loss.rel_drop"] == -inf and s["loss.progress"] == -inf


def test_loss_without_chance_or_series():
    s = extract(probes(trace({"loss.train": flat(1.0)})))
    assert not {"loss.chance", "loss.progress", "loss.init_over_chance"} & set(s)
    assert only(extract(probes(trace({}))), "loss") == {}


# --------------------------------------------------------------------------- gradients

GEOMETRIC = [1e-4, 1e-3, 1e-2, 1e-1]  # forward order: input layer first


@pytest.mark.parametrize(
    "norms, ratio, factor, monotone",
    [
        (GEOMETRIC, 1e-3, 0.1, 1.0),  # vanishing toward the input
        (GEOMETRIC[::-1], 1e3, 10.0, 1.0),  # exploding toward the input
        ([1.0, 10.0, 1.0, 0.1], 10.0, 10 ** (1 / 3), 2 / 3),  # factors 0.1, 10, 10: one pair against the trend
        ([1.0, 1.0, 1.0], 1.0, 1.0, 0.0),  # level: no direction
    ],
    ids=["vanishing", "exploding", "zigzag", "level"],
)
def test_gradient_depth(norms, ratio, factor, monotone):
    G = np.tile(norms, (50, 1))
    G[5:] = 1.0  # only the first 10% of steps count (the gradients init and architecture give)
    s = extract(probes(trace({"grad.norm": G})))
    assert s["grad.layers"] == len(norms)
    assert s["grad.depth_ratio"] == pytest.approx(ratio)
    assert s["grad.layer_factor"] == pytest.approx(factor)
    assert s["grad.monotone_frac"] == pytest.approx(monotone)


def test_gradient_depth_geometric_mean_over_noisy_steps():
    G = np.array([[1e-4, 1e-3, 1e-2, 1e-1], [4e-4, 4e-3, 4e-2, 4e-1]] + [[1.0] * 4] * 18)  # k = 2 early rows
    s = extract(probes(trace({"grad.norm": G})))
    assert s["grad.depth_ratio"] == pytest.approx(1e-3) and s["grad.layer_factor"] == pytest.approx(0.1)


def test_gradient_depth_skips_nonfinite_and_zero_rows_and_needs_two_layers():
    G = np.tile(GEOMETRIC, (20, 1))
    G[0, 1] = nan
    s = extract(probes(trace({"grad.norm": G})))
    assert s["grad.depth_ratio"] == pytest.approx(1e-3)  # row 0 left out, row 1 is enough
    one = extract(probes(trace({"grad.norm": np.ones((20, 1))})))
    assert one["grad.layers"] == 1 and "grad.depth_ratio" not in one
    zero = extract(probes(trace({"grad.norm": np.zeros((20, 3))})))
    assert "grad.depth_ratio" not in zero and "grad.layer_factor" not in zero  # absent, not NaN


def test_global_gradient_norm_symptoms():
    g = np.array([1.0, 2.0, 4.0, 3.0] + [2.0] * 16)
    loss = np.full(20, 4.0)
    s = extract(probes(trace({"grad.global_norm": g, "loss.train": loss}, lr=0.1)))
    assert s["grad.global_growth"] == 4.0 and s["grad.nonfinite"] == 0.0
    # lr |g|^2 / loss: first 2 steps (1, 2) -> 0.1 * (1 + 4) / 2 / 4; last 2 steps -> 0.1 * 4 / 4
    assert s["grad.step_gain_init"] == pytest.approx(0.1 * 2.5 / 4)
    assert s["grad.step_gain"] == pytest.approx(0.1)
    g[5] = inf
    assert extract(probes(trace({"grad.global_norm": g, "loss.train": loss}, lr=0.1)))["grad.nonfinite"] == 1.0


def test_update_ratio_median():
    U = np.array([[1e-3, 1e-2], [2e-3, 3e-2], [3e-3, 2e-2], [nan, 1.0]])  # the NaN row is dropped
    s = extract(probes(trace({"update.ratio": U})))
    assert s["update.ratio"] == pytest.approx(np.median([1e-3, 2e-3, 3e-3, 1e-2, 3e-2, 2e-2]))
    assert s["update.ratio_max"] == pytest.approx(2e-2)  # per-layer medians 2e-3 and 2e-2


# --------------------------------------------------------------------------- activations

ACT_STEPS = np.array([0, 10, 20, 30])
DEAD = [[0.1, 0.2, nan], [0.3, 0.6, nan], [0.5, 0.7, nan], [0.4, 0.8, nan]]
SAT = [[nan, nan, 0.3], [nan, nan, 0.5], [nan, nan, 0.6], [nan, nan, 0.9]]
SCALE = [[1.0, 0.5, 0.01], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
DIVERSITY = [[0.9, 0.02, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]


def act_trace(kinds=("relu", "relu", "tanh"), dead=DEAD, sat=SAT, scale=SCALE, diversity=DIVERSITY):
    series = {"act.dead_frac": dead, "act.sat_frac": sat, "act.scale": scale, "act.unit_diversity": diversity}
    return trace({k: (ACT_STEPS, np.asarray(v)) for k, v in series.items()}, steps=40, act_kinds=list(kinds))


def test_activation_symptoms():
    s = only(extract(probes(act_trace())), "act")
    assert s == pytest.approx({
        "act.layers": 3.0,
        "act.nonrelu_frac": 1 / 3,
        "act.dead_frac.max": 0.8,  # at the end
        "act.dead_frac.mean": 0.6,  # (0.4 + 0.8) / 2
        "act.dead_frac.init": 0.2,
        "act.dead_onset": 10 / 40,  # the first row with a layer above one half
        "act.saturated_frac.max": 0.9,
        "act.saturated_frac.init": 0.3,
        "act.scale_ratio.init": 0.01,  # last / first layer at step 0
        "act.scale.init_min": 0.01,
        "act.unit_diversity.init": 0.02,
    })


def test_softmax_columns_are_kept_out_of_the_depth_symptoms():
    """Attention probabilities (~1/L, near-uniform across keys at init) are no signal scale:
    a softmax first or last must not make a scale collapse, nor look like identical units."""
    rows = lambda a, b: [[a, 1.0, b, 1.0]] + [[1.0] * 4] * 3  # noqa: E731
    t = act_trace(kinds=("softmax", "relu", "softmax", "tanh"), dead=[[nan, 0.1, nan, nan]] * 4,
                  sat=[[nan, nan, nan, 0.2]] * 4, scale=rows(1e-3, 1e-3), diversity=rows(1e-4, 1e-4))
    s = only(extract(probes(t)), "act")
    assert s["act.layers"] == 2.0 and s["act.nonrelu_frac"] == 0.5
    assert s["act.scale_ratio.init"] == 1.0 and s["act.scale.init_min"] == 1.0
    assert s["act.unit_diversity.init"] == 1.0


def test_activation_symptoms_absent_without_their_layers():
    all_nan = np.full((4, 3), nan)
    s = extract(probes(act_trace(kinds=("tanh",) * 3, dead=all_nan)))
    assert not any(k.startswith("act.dead") for k in s) and s["act.nonrelu_frac"] == 1.0
    s = extract(probes(act_trace(kinds=("relu",) * 3, sat=all_nan, dead=np.zeros((4, 3)))))
    assert not any(k.startswith("act.saturated") for k in s) and "act.dead_onset" not in s  # never above 1/2
    assert only(extract(probes(trace({"loss.train": flat(1.0)}))), "act") == {}


# --------------------------------------------------------------------------- LR variants


def lr_trace(factor: float, final: float, status: str = "completed", dead: float | None = None) -> Trace:
    v = np.linspace(2.0, final, 100)
    v[-10:] = final
    series = {"loss.train": v}
    if dead is not None:  # one ReLU layer's never-active fraction, at two measured steps
        series["act.dead_frac"] = (np.array([0, 99]), np.array([[0.0], [dead]]))
    return trace(series, probe=f"lr_x{factor:g}", status=status, lr_factor=factor)


def test_lr_variants():
    base = trace({"loss.train": flat(2.0)})
    s = only(extract(probes(base, lr_trace(0.1, 1.9), lr_trace(3.0, 1.5), lr_trace(10.0, 1.0))), "lr")
    assert s == pytest.approx({
        "lr.up_factor": 10.0, "lr.up_gain": (2.0 - 1.0) / 2.0, "lr.up_diverged": 0.0,  # the largest factor
        "lr.down_factor": 0.1, "lr.down_gain": (2.0 - 1.9) / 2.0, "lr.down_diverged": 0.0,
        "lr.down_rel_drop": (2.0 - 1.9) / 2.0,
    })  # fmt: skip


def test_lr_variant_diverged_and_baseline_diverged():
    base = trace({"loss.train": flat(2.0)})
    s = extract(probes(base, lr_trace(0.1, 1.0), lr_trace(10.0, 1.0, status="diverged")))
    assert (s["lr.up_gain"], s["lr.up_diverged"]) == (-1.0, 1.0)  # worse than doing nothing
    bad = trace({"loss.train": np.append(flat(2.0, 10), inf)}, steps=100, status="diverged", stopped_at=10)
    s = extract(probes(bad, lr_trace(0.1, 1.5)))
    assert s["lr.down_gain"] == 1.0 and "lr.up_gain" not in s  # no up-variant: absent
    assert only(extract(probes(base)), "lr") == {}


def test_lr_peak_over_config_says_whether_a_schedule_raised_the_rate():
    growing = trace({"loss.train": flat(2.0, 40), "lr": 0.1 * 1.05 ** np.arange(40)}, lr=0.1)
    assert extract(probes(growing))["lr.peak_over_config"] == pytest.approx(1.05 ** 39)
    warmup = trace({"loss.train": flat(2.0, 40), "lr": np.minimum(0.1, np.linspace(0.001, 0.2, 40))}, lr=0.1)
    assert extract(probes(warmup))["lr.peak_over_config"] == pytest.approx(1.0)
    decay = trace({"loss.train": flat(2.0, 40), "lr": np.append(0.1 * 0.9 ** np.arange(39), nan)}, lr=0.1)
    assert extract(probes(decay))["lr.peak_over_config"] == pytest.approx(1.0)  # non-finite rates skipped
    assert "lr.peak_over_config" not in extract(probes(trace({"loss.train": flat(2.0, 40)}, lr=0.1)))  # no rates logged
    assert "lr.peak_over_config" not in extract(probes(trace({"loss.train": flat(2.0, 40), "lr": flat(0.1, 40)})))  # no meta lr


# --------------------------------------------------------------------------- plateau follow-ups


def final_at(name: str, final: float, status: str = "completed") -> Trace:
    v = flat(final)
    v[0] = 2.0
    return trace({"loss.train": v}, probe=name, status=status)


def test_plateau_escape_and_reseed_gain():
    s = extract(probes(final_at("baseline", 1.0), final_at("continued", 0.9), final_at("perturbed", 0.5),
                       final_at("reseed_1", 0.8), final_at("reseed_2", 0.3), final_at("reseed_3", 0.1, "diverged")))
    assert s["plateau.escape"] == pytest.approx((0.9 - 0.5) / 1.0)
    assert s["plateau.reseed_gain"] == pytest.approx((1.0 - 0.3) / 1.0)  # the diverged reseed does not count


def test_plateau_symptoms_need_their_probes():
    s = extract(probes(final_at("baseline", 1.0), final_at("perturbed", 0.5)))  # no control
    assert "plateau.escape" not in s and "plateau.reseed_gain" not in s


def test_plateau_escape_is_not_nan_when_both_followups_diverge():
    s = extract(probes(final_at("baseline", 1.0), final_at("continued", 0.9, "diverged"),
                       final_at("perturbed", 0.5, "diverged")))
    assert not math.isnan(s.get("plateau.escape", 0.0))


# --------------------------------------------------------------------------- validation and gap

CK = np.arange(0, 110, 10)  # checkpoints at steps 0, 10, ..., 100
VAL = np.array([2.0, 1.6, 1.3, 1.1, 1.0, 1.05, 1.1, 1.2, 1.3, 1.4, 1.5])  # minimum at step 40
TRAIN = np.linspace(2.0, 0.2, 11)


def test_validation_rising_after_its_minimum():
    t = trace({"loss.val": (CK, VAL), "loss.train_eval": (CK, TRAIN), "acc.val": (CK, np.full(11, 0.7)),
               "acc.train": (CK, np.full(11, 0.99))}, steps=100, chance_loss=2.0)
    s = only(extract(probes(t)), "val") | only(extract(probes(t)), "gap") | only(extract(probes(t)), "acc")
    assert s == pytest.approx({
        "val.final": 1.5, "val.min": 1.0, "val.min_at": 0.4,
        "val.rise": (1.5 - 1.0) / 2.0,
        "gap.val_train": (1.5 - 0.2) / 2.0,
        "gap.train_drop_after_val_min": (TRAIN[4] - 0.2) / 2.0,
        "acc.val_final": 0.7, "acc.train_final": 0.99,
    })  # fmt: skip


def test_validation_scale_without_chance_and_too_few_checkpoints():
    t = trace({"loss.val": (CK, VAL), "loss.train_eval": (CK, TRAIN)}, steps=100)
    assert extract(probes(t))["val.rise"] == pytest.approx((1.5 - 1.0) / 1.0)  # relative to the minimum
    short = trace({"loss.val": (CK[:2], VAL[:2]), "loss.train_eval": (CK[:2], TRAIN[:2])}, steps=100)
    assert only(extract(probes(short)), "val") == {}
    no_val = trace({"loss.train_eval": (CK, TRAIN)}, steps=100)
    assert only(extract(probes(no_val)), "gap") == {}


# --------------------------------------------------------------------------- curvature


def hess_rows():
    return [
        {"step": 0.0, "lambda_max": 10.0, "lambda_min": -1.0, "lambda_min_rel": -0.1, "negative_mass": 0.2,
         "effective_condition": 50.0, "condition_spread": 20.0},
        {"step": 50.0, "lambda_max": nan},  # a failed measurement is skipped
        {"step": 100.0, "lambda_max": 40.0, "lambda_min": -0.4, "lambda_min_rel": -0.01, "negative_mass": 0.05,
         "effective_condition": 30.0, "condition_spread": 25.0},
    ]  # fmt: skip


def hess_trace(optimizer: str, **args) -> Trace:
    return trace({"loss.train": flat(1.0)}, hessian=hess_rows(), lr=0.1, optimizer=optimizer, optimizer_args=args)


def test_curvature_symptoms_sgd_momentum():
    s = only(extract(probes(hess_trace("sgd", momentum=0.9))), "hess")
    assert s == pytest.approx({
        "hess.lambda_max": 40.0, "hess.lambda_min": -0.4, "hess.lambda_min_rel": -0.01,
        "hess.lambda_min_rel.init": -0.1, "hess.negative_mass": 0.05,
        "hess.effective_condition": 50.0, "hess.condition_spread": 25.0,  # largest over the measurements
        "hess.lr_sharpness": 0.1 * 40.0, "hess.lr_sharpness.init": 0.1 * 10.0,
        "hess.stability": 0.1 * 40.0 / (2 * (1 + 0.9)),  # heavy ball: lr * lambda < 2 (1 + beta)
    })  # fmt: skip


@pytest.mark.parametrize(
    "optimizer, args, limit",
    [("sgd", {}, 2.0), ("sgd", {"momentum": 0.5}, 3.0), ("adam", {}, None), ("adamw", {"betas": [0.9, 0.99]}, None),
     ("sgd", {"momentum": 0.9, "dampening": 0.1}, None)],
    ids=["sgd", "sgd-momentum", "adam", "adamw", "sgd-dampening"],
)
def test_stability_limit(optimizer, args, limit):
    assert stability_limit(optimizer, args) == limit
    s = extract(probes(hess_trace(optimizer, **args)))
    assert s["hess.lr_sharpness"] == pytest.approx(4.0)
    if limit is None:
        assert "hess.stability" not in s  # absent for Adam: the raw sharpness is not its limit
    else:
        assert s["hess.stability"] == pytest.approx(4.0 / limit)


def _heavy_ball_diverges(a: float, beta: float, nesterov: bool, steps: int = 3000) -> bool:
    """torch.optim.SGD's update on f(p) = p^2 / 2 with lr * curvature = a, in plain floats."""
    p, buf = 1.0, None
    for _ in range(steps):
        g = p
        buf = g if buf is None else beta * buf + g
        p -= (g + beta * buf if nesterov else buf) * a
        if abs(p) > 1e6:
            return True
    return False


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
def test_stability_limit_matches_the_iteration(beta):
    """The limit is where SGD's own iteration on a quadratic starts to diverge."""
    limit = stability_limit("sgd", {"momentum": beta})
    assert not _heavy_ball_diverges(0.98 * limit, beta, nesterov=False)
    assert _heavy_ball_diverges(1.02 * limit, beta, nesterov=False)


def test_stability_limit_nesterov():
    limit = stability_limit("sgd", {"momentum": 0.9, "nesterov": True})
    assert _heavy_ball_diverges(1.02 * limit, 0.9, nesterov=True)
    assert not _heavy_ball_diverges(0.98 * limit, 0.9, nesterov=True)
    assert limit == pytest.approx(2 * 1.9 / 2.8)


def test_curvature_absent_without_measurements():
    assert only(extract(probes(trace({"loss.train": flat(1.0)}, lr=0.1, optimizer="sgd"))), "hess") == {}
    failed = trace({"loss.train": flat(1.0)}, hessian=[{"step": 0.0, "lambda_max": nan}], lr=0.1, optimizer="sgd")
    assert only(extract(probes(failed)), "hess") == {}


# --------------------------------------------------------------------------- data


def test_data_symptoms():
    stats = {"feature_scale_spread": 1e4, "feature_mean_over_std": 30.0, "feature_rms_max": 5.0, "n_features": 8.0}
    s = extract(probes(trace({"loss.train": flat(1.0)}), data_stats=stats))
    assert only(s, "data") == {"data.feature_scale_spread": 1e4, "data.feature_mean_over_std": 30.0}
    assert only(extract(probes(trace({"loss.train": flat(1.0)}))), "data") == {}


# --------------------------------------------------------------------------- the registry


def rich_probeset() -> ProbeSet:
    """Every kind of input a diagnosis can have."""
    base = act_trace()
    base.series.update(trace({
        "loss.train": np.linspace(2.0, 1.0, 40), "grad.global_norm": np.linspace(1.0, 2.0, 40),
        "grad.norm": np.tile(GEOMETRIC, (40, 1)), "update.ratio": np.full((40, 4), 1e-3),
        "loss.val": (np.arange(0, 44, 4), VAL), "loss.train_eval": (np.arange(0, 44, 4), TRAIN),
        "acc.val": (np.arange(0, 44, 4), np.full(11, 0.7)), "acc.train": (np.arange(0, 44, 4), np.full(11, 0.9)),
        "loss.train_trainmode": (np.array([36, 40]), 0.9 * TRAIN[-2:]),
    }).series)  # fmt: skip
    base.hessian = hess_rows()
    base.series["weight.row_spread"] = (np.array([0]), np.array([[1.0, 0.5, 0.0, 0.9]]))  # one layer of identical rows
    base.series["weight.init_gain"] = (np.array([0]), np.array([[0.6, 0.5, 1.4, 0.0]]))  # hidden median 0.6 (head left out)
    base.series["grad.position"] = (np.array([0, 10]), np.array([[0.1, 0.5, 1.0], [0.2, 0.6, 1.0]]))
    base.series["layer.out_scale"] = (np.array([0]), np.array([[1.0, 2.0, 4.0, 0.5]]))
    base.series["lr"] = (np.arange(40), np.full(40, 0.1))
    base.meta.update(lr=0.1, optimizer="sgd", optimizer_args={"momentum": 0.9}, chance_loss=1.5, affine=0.0,
                     linear_share=1.0, loss="cross_entropy")
    base.series["act.dead_frac"][1][:, 0] = 0.9  # some layer dies: act.dead_onset
    lrs = np.logspace(-5, 0, 50)
    lr_range = trace({"lr": lrs, "loss.train": 2.0 - 1.5 * np.exp(-((np.log10(lrs) + 2) ** 2))}, probe="lr_range", lr=0.1)
    others = [lr_trace(0.1, 1.9, dead=0.2), lr_trace(10.0, 0.5), final_at("continued", 0.9), final_at("perturbed", 0.5),
              final_at("reseed_1", 0.8), final_at("standardized", 0.7), final_at("whitened", 0.6), final_at("target_standardized", 0.7), lr_range]
    others[-2].meta["chance_loss"] = 1.0  # standardised targets: their own chance loss
    base.series["weight.recurrent_gain"] = (np.array([0]), np.array([[np.nan, 0.58, np.nan, np.nan]]))
    return probes(base, *others, data_stats={"feature_scale_spread": 10.0, "feature_mean_over_std": 2.0,
                                             "feature_condition": 500.0, "target_scale": 3.0, "target_mean_over_std": 1.0})


def test_every_produced_name_is_declared_with_a_meaning():
    s = extract(rich_probeset())
    undeclared = set(s) - set(SYMPTOMS)
    assert not undeclared
    for name in s:
        d = SYMPTOMS[name]
        assert d.name == name and d.meaning.strip() and d.family == name.split(".")[0]
    # the rich set exercises every declared symptom but the one its indefinite Hessian rules out
    assert set(SYMPTOMS) - set(s) == {"hess.condition_pd"}
    assert all(isinstance(v, float) and not math.isnan(v) for v in s.values())


def test_every_declared_name_belongs_to_one_producer():
    names = [n for p in PRODUCERS for n in p.names]
    assert len(names) == len(set(names)) and set(names) == set(SYMPTOMS)


def test_a_producer_returning_an_undeclared_name_raises(monkeypatch):
    monkeypatch.setattr(registry, "SYMPTOMS", dict(registry.SYMPTOMS))
    monkeypatch.setattr(registry, "PRODUCERS", list(registry.PRODUCERS))

    @registry.produces(("test.declared", "a symptom of this test", "count"))
    def sloppy(p):
        return {"test.declared": 1.0, "test.typo": 2.0}

    with pytest.raises(ValueError, match="undeclared symptoms.*test.typo"):
        registry.extract(probes(trace({"loss.train": flat(1.0)})))


def test_a_name_declared_twice_is_refused(monkeypatch):
    monkeypatch.setattr(registry, "SYMPTOMS", dict(registry.SYMPTOMS))
    monkeypatch.setattr(registry, "PRODUCERS", list(registry.PRODUCERS))
    with pytest.raises(ValueError, match="declared twice"):
        registry.produces(("loss.initial", "again"))(lambda p: {})


def test_none_means_absent(monkeypatch):
    monkeypatch.setattr(registry, "SYMPTOMS", dict(registry.SYMPTOMS))
    monkeypatch.setattr(registry, "PRODUCERS", [])
    registry.produces(("test.a", "a"), ("test.b", "b"))(lambda p: {"test.a": None, "test.b": 3})
    assert registry.extract(probes(trace({}))) == {"test.b": 3.0}


def test_missing_inputs_mean_absent_symptoms_not_nan():
    """A baseline with nothing but a loss curve: only loss symptoms, none of them NaN."""
    s = extract(probes(trace({"loss.train": np.linspace(2.0, 1.0, 30)})))
    assert {k.split(".")[0] for k in s} == {"loss"}
    assert all(not math.isnan(v) for v in s.values())
    assert extract(probes(trace({}))) == {}


def test_symptoms_do_not_import_torch():
    code = ("import sys; from optdoctor.symptoms import extract; from optdoctor.trace import ProbeSet, Trace; "
            "extract(ProbeSet({'baseline': Trace('baseline')})); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_condition_number_only_for_a_positive_definite_hessian():
    pd = [{"step": 0.0, "lambda_max": 10.0, "lambda_min": 1e-3, "lambda_min_rel": 1e-4}]
    s = extract(probes(trace({"loss.train": flat(1.0)}, hessian=pd, lr=0.1, optimizer="sgd")))
    assert s["hess.condition_pd"] == pytest.approx(1e4)
    indefinite = [{"step": 0.0, "lambda_max": 10.0, "lambda_min": -1e-3, "lambda_min_rel": -1e-4}]
    s = extract(probes(trace({"loss.train": flat(1.0)}, hessian=indefinite, lr=0.1, optimizer="sgd")))
    assert "hess.condition_pd" not in s


def test_adam_stability_uses_the_preconditioned_sharpness():
    rows = [{"step": 0.0, "lambda_max": 50.0, "lambda_min": -1.0, "lambda_min_rel": -0.02},
            {"step": 100.0, "lambda_max": 50.0, "lambda_min": -1.0, "lambda_min_rel": -0.02,
             "precond_lambda_max": 1.9e4, "precond_limit_factor": 38.0}]
    s = extract(probes(trace({"loss.train": flat(1.0)}, hessian=rows, lr=1e-3, optimizer="adam")))
    assert s["hess.stability"] == pytest.approx(1e-3 * 1.9e4 / 38.0)


def test_counterfactual_dead_fraction_and_identical_rows():
    s = extract(rich_probeset())
    assert s["lr.down_dead_frac"] == pytest.approx(0.2)
    assert s["weight.identical_rows_frac"] == pytest.approx(0.25)


# --------------------------------------------------------------------------- depth in time


def test_time_ratio_is_first_over_last_position_early_on():
    growing = np.array([[8.0, 4.0, 2.0, 1.0], [27.0, 9.0, 3.0, 1.0], [8.0, 4.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    s = extract(probes(trace({"grad.position": (np.array([0, 10, 20, 30]), growing)})))
    assert s["grad.time_steps"] == 4
    assert s["grad.time_ratio"] == pytest.approx((8.0 * 27.0 * 8.0) ** (1 / 3))  # the first 3 measurements only
    shrinking = extract(probes(trace({"grad.position": (np.array([0]), np.array([[1e-9, 1e-3, 1.0]]))})))
    assert shrinking["grad.time_ratio"] == pytest.approx(1e-9)
    assert s["grad.time_factor"] == pytest.approx(((8.0 * 27.0 * 8.0) ** (1 / 3)) ** (1 / 3))  # per position: 3 steps apart
    assert shrinking["grad.time_factor"] == pytest.approx(1e-9 ** 0.5)


def test_time_symptoms_absent_without_a_sequence_and_a_dead_first_position_is_no_ratio():
    assert only(extract(probes(trace({"loss.train": flat(1.0)}))), "grad") == {}
    s = extract(probes(trace({"grad.position": (np.array([0]), np.array([[0.0, 1.0]]))})))
    assert "grad.time_ratio" not in s and "grad.time_factor" not in s and s["grad.time_steps"] == 2


def test_standardize_gain_is_relative_to_the_baselines_final_loss():
    base = trace({"loss.train": np.concatenate([np.linspace(9000.0, 80.0, 45), flat(80.0, 5)])})
    std = trace({"loss.train": np.concatenate([np.linspace(2.0, 1.6, 45), flat(1.6, 5)])}, probe="standardized")
    assert extract(probes(base, std))["data.standardize_gain"] == pytest.approx((80.0 - 1.6) / 80.0)
    worse = trace({"loss.train": flat(200.0, 50)}, probe="standardized")
    assert extract(probes(base, worse))["data.standardize_gain"] < 0
    gone = trace({"loss.train": np.linspace(2.0, 1.0, 10)}, probe="standardized", status="diverged", stopped_at=9)
    assert extract(probes(base, gone))["data.standardize_gain"] == -1.0
    assert "data.standardize_gain" not in extract(probes(base))


def test_layer_scale_ratio_leaves_the_head_out():
    s = extract(probes(trace({"layer.out_scale": (np.array([0]), np.array([[1.0, 1.6, 2.56, 4.1, 0.3]]))})))
    assert s["layer.scale_ratio.init"] == pytest.approx(4.1)
    assert s["layer.scale_factor.init"] == pytest.approx(4.1 ** (1 / 3))
    few = extract(probes(trace({"layer.out_scale": (np.array([0]), np.array([[1.0, np.nan, 0.3]]))})))
    assert "layer.scale_ratio.init" not in few


def test_init_gain_is_the_hidden_layers_median_and_needs_two_of_them():
    from optdoctor.symptoms.activations import init_gain

    def ps(row):
        t = trace({"loss.train": np.ones(5)})
        t.series["weight.init_gain"] = (np.array([0]), np.array([row]))
        return probes(t)

    assert init_gain(ps([0.01, 0.02, np.nan, 0.5, 9.0]))["weight.init_gain"] == pytest.approx(0.02)  # median of 0.01, 0.02, 0.5
    assert init_gain(ps([0.01, np.nan, 9.0])) == {}  # one hidden layer: no trend to speak of
    assert init_gain(ps([np.nan, np.nan])) == {}

    def rec(row, rrow):
        out = ps(row)
        out.baseline.series["weight.recurrent_gain"] = (np.array([0]), np.array([rrow]))
        return out

    # one recurrent matrix is enough (the state crosses it once per position); the head still left out
    assert init_gain(rec([np.nan, np.nan, 0.9], [np.nan, 0.003, np.nan]))["weight.init_gain"] == pytest.approx(0.003)
    assert init_gain(rec([np.nan, 0.6, np.nan, 9.0], [np.nan, np.nan, 0.58, np.nan]))["weight.init_gain"] == pytest.approx(0.59)
    assert init_gain(rec([np.nan, 0.9], [np.nan, np.nan])) == {}


def test_step_gain_reads_the_step_taken_not_lr_times_g_squared():
    """Adam's step is ~lr per coordinate: its first-order gain is g . dW, not lr |g|^2."""
    from optdoctor.symptoms.gradients import gradient_depth

    t = trace({"loss.train": np.full(20, 2.0), "grad.global_norm": np.full(20, 1e-3)}, lr=1e-3)
    assert gradient_depth(probes(t))["grad.step_gain"] == pytest.approx(1e-3 * 1e-6 / 2.0)  # fallback: lr |g|^2 / loss
    t.series["update.first_order"] = (np.arange(0, 20, 2), np.full(10, 4e-4))
    s = gradient_depth(probes(t))
    assert s["grad.step_gain"] == pytest.approx(2e-4) and s["grad.step_gain_init"] == pytest.approx(2e-4)


def test_deep_linear_needs_an_affine_model_linear_layers_only_and_a_convex_builtin_loss():
    def dl(**meta):
        return extract(probes(trace({"loss.train": flat(1.0)}, **meta))).get("model.deep_linear")

    assert dl(affine=1.0, linear_share=1.0, loss="mse") == 1.0
    assert dl(affine=1.0, linear_share=1.0, loss="cross_entropy") == 1.0
    assert dl(affine=0.0, linear_share=1.0, loss="mse") == 0.0  # a ReLU stack
    assert dl(affine=1.0, linear_share=0.0, loss="mse") == 0.0  # affine through its own parameterisation
    assert dl(affine=1.0, linear_share=1.0, loss="model") == 0.0  # the model's own loss: unknown
    assert dl(affine=1.0, linear_share=1.0, loss="losses.py:mae") == 0.0  # a user's loss: unknown
    assert dl(affine=None, linear_share=1.0, loss="mse") is None  # untested
    assert dl(affine=1.0, loss="mse") is None
