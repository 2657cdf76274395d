"""A time budget for one diagnosis (``probe.budget`` / ``--budget 30s``).

Three steps, each plain data in and out:

1. **parse** (``parse_budget``): ``30s``, ``2m``, ``1m30s``, ``1h``, ``90`` -> seconds.
   Pure: the config schema uses it, no torch.
2. **calibrate** (``calibrate``): time what a probe is made of on *this* machine, with *this*
   model and data, on a fresh copy of the model -- a few training steps, a checkpoint
   evaluation, the Hessian-vector products of a curvature measurement, each on a small sample
   and scaled up -- into ``Costs``.
3. **plan** (``make_plan``): price every probe from those costs (``Pricer``) and fit them, in
   priority order, into the seconds left: the baseline (fewer checkpoints and evaluation
   samples, steps reduced proportionally, never below ``MIN_STEPS`` but as a last resort; the
   Hessian batch halved and a lean Hessian before curvature is dropped), the LR variants, the LR
   range test, then the plateau follow-ups (only if they fit), extra seeds and ``--verify``
   probes last (each only if it fits when its turn comes). The ``Plan`` is a set of config
   keys (``apply``): the probe runner needs no other knowledge of it.

Then ``Budget`` enforces it while the probes run: between probes an optional one starts only
when its estimate (scaled by how the finished probes compared with theirs) fits before the
soft deadline; inside a probe, ``stop()`` is checked every step and ends the probe before the
hard limit (``HARD_FACTOR`` x budget, less what the report needs). What was cut and why goes
into ``Diagnosis.extra["budget"]`` (``Budget.summary``).

The budget counts wall time from ``start`` (the CLI passes the process's start, so that
Python's and torch's import count too). A budget makes the report depend on the machine's
speed; ``--check`` keeps its fixed step cap for byte-identical reports.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

# A probe is never planned shorter than this (or than probe.steps when that is smaller):
# below it the checkpoints' trends (persistence over 20 checkpoints, late-half loss drop) are
# too short to mean anything.
MIN_STEPS = 40
# ... unless nothing else is left to cut: then the baseline is planned shorter, down to this,
# rather than planned at MIN_STEPS and stopped by the hard limit after a step or two (a planned
# probe still gets its last checkpoint evaluation; a stopped one does not).
LAST_RESORT_STEPS = 10
# The run may exceed the budget by at most this factor (enforced per step).
HARD_FACTOR = 1.2
# Calibration (``calibrate``): plain training steps timed (the first is a warm-up), scaled by
# what the instruments add (benchmarks/overhead.py: under 1.3x); samples one checkpoint
# evaluation is timed on; Hessian-vector products timed, on a batch of this size.
CALIBRATION_STEPS = 6
INSTRUMENT_FACTOR = 1.3
CALIBRATION_EVAL = 128
CALIBRATION_HVPS = 2
CALIBRATION_HESSIAN_BATCH = 32
# Checkpoints (evaluations) per probe when they must be thinned (the default is 20; the rules'
# persistence conditions need 2).
MIN_CHECKPOINTS = 10
# Samples per split a checkpoint evaluation is cut to (default 1024: setup.EVAL_CAP); for conv
# nets the evaluations are most of a probe's cost (ResNet-20-shaped fixture: 1.2 s each vs
# 0.13 s per training step, under load).
MIN_EVAL_SAMPLES = 256
# A lean Hessian measurement: Lanczos only (top-k and lambda_min; 20 steps gave the top-5 to
# 3e-6 on a 5k MLP, DESIGN.md), no trace or density.
LEAN_HESSIAN_ITERS = 20
# The Hessian batch is halved, down to this, before curvature is dropped.
MIN_HESSIAN_BATCH = 16
# Seconds kept for what follows the probes: symptoms at every checkpoint and rules
# (REPORT_PER_PROBE per probe that ran), the report and the exit (EXIT_RESERVE). Python's own
# teardown after torch's optimizers were imported takes 1-2.3 s here (measured under load), so
# under a budget the CLI ends the process with os._exit once its output is flushed (cli.main):
# 0.15 s from the end of the diagnosis to the end of the process, measured.
EXIT_RESERVE = 0.5
REPORT_PER_PROBE = 0.15
# How far the scaling of estimates by measured/estimated probe times may go.
SPEED_RANGE = (0.5, 4.0)

_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([hms])")


def parse_budget(value: Any) -> float:
    """Seconds of a budget: a number (seconds) or a string of hours/minutes/seconds parts in that
    order, ``30s``, ``2m``, ``1m30s``, ``1h``, ``90`` (seconds), ``2.5m``.

    >>> [parse_budget(v) for v in ("30s", "2m", "1m30s", "90", 45, "1h 2m 3s")]
    [30.0, 120.0, 90.0, 90.0, 45.0, 3723.0]
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"expected a duration such as 30s, 2m, 1m30s or 90 (seconds), got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            parts = list(_PART.finditer(text))
            rebuilt = "".join(m.group(0) for m in parts).replace(" ", "")
            units = [m.group(2) for m in parts]
            if not parts or rebuilt != text.replace(" ", "") or units != sorted(set(units), key="hms".index):
                raise ValueError(f"{value!r} is not a duration; write it as 30s, 2m, 1m30s, 1h or 90 (seconds)") from None
            seconds = sum(float(m.group(1)) * _UNIT[m.group(2)] for m in parts)
    else:
        raise ValueError(f"expected a duration such as 30s, 2m, 1m30s or 90 (seconds), got {type(value).__name__}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a budget must be a positive duration, got {value!r}")
    return seconds


def process_start(clock: Callable[[], float] = time.perf_counter) -> float:
    """The process's start on ``clock``'s scale (Linux: from /proc; elsewhere: now), so that a
    budget counts the interpreter's and torch's import too."""
    try:
        import os

        with open("/proc/self/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time after boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - started
        return clock() - age if 0 <= age < 3600 else clock()
    except (OSError, ValueError, IndexError, AttributeError):
        return clock()


def _fmt_s(x: float) -> str:
    return f"{x:.0f} s" if x >= 10 else f"{x:.1f} s"


# --- calibration ------------------------------------------------------------------------


@dataclass
class Costs:
    """Seconds on this machine, measured by ``calibrate``."""

    overhead: float  # per probe: build the model and find its layers (one forward)
    step: float  # one instrumented training step
    eval_sample: float  # one sample of a checkpoint evaluation (eval mode, no gradients)
    n_train: int = 0
    n_val: int = 0
    hvp: float = 0.0  # one Hessian-vector product on ``hvp_batch`` samples
    hvp_graph: float = 0.0  # the create_graph gradient each Hessian measurement starts with
    hvp_batch: int = 0  # the batch those were timed on
    hessian_batch: int = 0  # the configured Hessian batch (0: no Hessian from this model)
    calibration: float = 0.0  # what calibrating took

    def as_dict(self) -> dict[str, float]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def calibrate(setup, clock: Callable[[], float] = time.perf_counter, left: Callable[[], float] | None = None) -> Costs:
    """Time the parts of a probe on a fresh model, each on a small sample and scaled up:
    ``CALIBRATION_STEPS`` plain training steps (the first untimed: warm-up, lazy inits) times
    ``INSTRUMENT_FACTOR``; a checkpoint evaluation on ``CALIBRATION_EVAL`` samples; the
    create_graph gradient and ``CALIBRATION_HVPS`` Hessian-vector products on
    ``CALIBRATION_HESSIAN_BATCH`` samples. Costs are taken as proportional to the samples.
    When ``left()`` (seconds of the budget) is gone after the steps, the Hessian is not timed
    (``hessian_batch`` 0: curvature is then cut)."""
    import torch

    from optdoctor.probes.batches import bind
    from optdoctor.probes.runner import _Step, batches

    cfg = setup.cfg
    t_begin = clock()
    model = setup.build_model(cfg.seed)
    t_build = clock() - t_begin
    optimizer = setup.optimizer_cls(model.parameters(), lr=cfg.optimizer.lr, **cfg.optimizer.args)
    data = batches(setup, cfg.seed)
    stamps = []
    model.train()
    step_fn = _Step(setup, model, optimizer)  # the user's code raising here is their error (exit 3), as in a probe
    for _ in range(CALIBRATION_STEPS):
        X, y = next(data)
        loss = step_fn.loss(X, y)
        optimizer.zero_grad(set_to_none=True)
        step_fn.update(loss, X, y)  # backward and step as a probe runs them (L-BFGS: with its closure)
        float(loss.detach())
        stamps.append(clock())
    diffs = sorted(b - a for a, b in zip(stamps, stamps[1:]))
    step = diffs[len(diffs) // 2] if diffs else stamps[0] - t_begin
    with torch.random.fork_rng():  # the probes' randomness stays as without a budget
        model = setup.build_model(cfg.seed)
    step_fn = _Step(setup, model)

    n_train = setup.train.n or 10**9  # an iterable's length is unknown: never the limit
    k = min(CALIBRATION_EVAL, n_train)
    model.eval()
    t0 = clock()
    with torch.no_grad():
        X, y = setup.first(k)
        k = max(1, len(y) if hasattr(y, "__len__") else k)
        setup.criterion(step_fn.forward(model, X), y)
    t_sample = (clock() - t0) / k
    model.train()

    costs = Costs(overhead=t_build + step, step=step * INSTRUMENT_FACTOR, eval_sample=t_sample,
                  n_train=n_train, n_val=(setup.val.n or 0) if setup.val is not None else 0)
    h = cfg.probe.hessian
    if h.enabled and (left is None or left() > 0):
        from optdoctor.curvature.hvp import hvp_operator

        costs.hessian_batch = min(h.batch_size, n_train)
        k = costs.hvp_batch = min(CALIBRATION_HESSIAN_BATCH, costs.hessian_batch)
        scale = 1.0
        try:
            with torch.random.fork_rng():
                t0 = clock()
                X, y = setup.first(k)
                op, n = hvp_operator(model, setup.criterion, (bind(model, X), y))
                costs.hvp_graph = (clock() - t0) * scale
                if op.finite and n:
                    v = torch.randn(n, generator=torch.Generator().manual_seed(0)).to(op.dtype).to(op.device)
                    t0 = clock()
                    for _ in range(CALIBRATION_HVPS):
                        op(v)
                    costs.hvp = (clock() - t0) / CALIBRATION_HVPS * scale
                else:
                    costs.hessian_batch = 0
        except (RuntimeError, ValueError):  # no Hessian from this model: the probe will say so
            costs.hessian_batch = 0
    costs.calibration = clock() - t_begin
    return costs


# --- the plan ---------------------------------------------------------------------------


@dataclass
class Plan:
    """What the probes will do: config keys that differ from the user's (``apply`` sets them),
    what was cut to fit and why, and the estimates."""

    keys: dict[str, Any]
    estimate: float  # seconds the planned probes should take (follow-ups only on a plateau)
    full_estimate: float  # seconds the configured probes would have taken
    cut: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"changed": dict(self.keys), "estimate": round(self.estimate, 1), "full_estimate": round(self.full_estimate, 1)}


class Pricer:
    """Seconds of each probe of a config (``cfg.probe`` read as the runner reads it), from
    measured ``Costs``."""

    def __init__(self, cfg, costs: Costs):
        self.cfg, self.c = cfg, costs

    def checkpoints(self, steps: int) -> int:
        every = self.cfg.probe.val_every or max(1, steps // 20)
        return len(set(range(0, steps + 1, every)) | {steps})

    def hessian(self) -> float:
        """One measurement: the graph, then Lanczos (at most max_iter products), the trace (at
        most trace_max_hvps) and the density's extra starts -- priced at their caps."""
        h, c = self.cfg.probe.hessian, self.c
        if not c.hessian_batch or not h.enabled:
            return 0.0
        hvps = h.max_iter + (h.trace_max_hvps if h.trace else 0) + ((h.density_starts - 1) * h.max_iter if h.density else 0)
        scale = 0.2 + 0.8 * min(h.batch_size, c.n_train) / c.hvp_batch  # ~ the batch, plus a fixed part
        return (c.hvp_graph + hvps * c.hvp) * scale

    def eval(self) -> float:
        """One checkpoint evaluation: up to eval_samples of each split."""
        from optdoctor.probes.setup import EVAL_CAP

        cap, c = self.cfg.probe.eval_samples or EVAL_CAP, self.c
        return c.eval_sample * (min(cap, c.n_train) + min(cap, c.n_val))

    def probe(self, steps: int, hessians: int = 0) -> float:
        c = self.c
        return c.overhead + steps * c.step + self.checkpoints(steps) * self.eval() + hessians * self.hessian()

    def lr_range(self, steps: int) -> float:
        from optdoctor.probes.runner import LR_RANGE_STEPS

        return self.c.overhead + min(LR_RANGE_STEPS, max(20, steps)) * self.c.step

    def spec(self, spec) -> float:
        """A runner ProbeSpec, as it will run."""
        return self.probe(spec.steps, len(spec.hessian_steps) if spec.full else 0)

    # the whole plan of a config
    def baseline(self) -> float:
        from optdoctor.probes.setup import fraction_steps

        p = self.cfg.probe
        n = len(fraction_steps(p.hessian.at, p.steps)) if (p.hessian.enabled and self.c.hessian_batch) else 0
        return self.probe(p.steps, n)

    def variants(self) -> float:
        p = self.cfg.probe
        return len(p.variants.lr_factors) * self.probe(p.variants.steps or p.steps)

    def core(self) -> float:
        """Baseline, LR variants, LR range test."""
        p = self.cfg.probe
        return self.baseline() + self.variants() + (self.lr_range(p.steps) if p.lr_range else 0.0)

    def followups(self) -> float:
        """continued, perturbed (variant steps) and the reseeds (baseline steps), on a plateau."""
        from optdoctor.probes.runner import RESEEDS

        p = self.cfg.probe
        return 2 * self.probe(p.variants.steps or p.steps) + RESEEDS * self.probe(p.steps) if p.variants.perturb else 0.0


def make_plan(cfg, costs: Costs, seconds: float) -> Plan:
    """Fit the configured probes into ``seconds``. Cuts, cumulatively, until the baseline, LR
    variants and LR range test fit: checkpoints thinned to ``MIN_CHECKPOINTS``; steps scaled
    down together (never below ``MIN_STEPS``); the Hessian batch halved (down to
    ``MIN_HESSIAN_BATCH``); a lean Hessian (Lanczos only); then the LR range test, the LR
    variants and curvature dropped, in that order. The plateau follow-ups run only if they fit
    in what is left, at the planned steps (they are compared with the baseline)."""
    from optdoctor.probes.runner import RESEEDS

    p = cfg.probe
    S, Sv = p.steps, p.variants.steps
    floor = min(S, MIN_STEPS)
    keys: dict[str, Any] = {}
    cut: list[str] = []
    if p.hessian.enabled and not costs.hessian_batch:
        keys["probe.hessian.enabled"] = False
        cut.append("curvature (Hessian spectra): no Hessian could be priced (no time left, or the model gives none)")

    def pricer(extra: dict[str, Any] | None = None) -> Pricer:
        return Pricer(_tweak(cfg, {**keys, **(extra or {})}), costs)

    def fits(extra: dict[str, Any] | None = None) -> bool:
        return pricer(extra).core() <= seconds

    def saves(extra: dict[str, Any]) -> bool:
        return pricer(extra).core() < pricer().core()

    def scaled(f: float, floor: int = floor) -> dict[str, Any]:
        out: dict[str, Any] = {"probe.steps": max(floor, int(S * f))}
        if Sv:
            out["probe.variants.steps"] = max(min(Sv, floor), int(Sv * f))
        if "probe.val_every" in keys:
            out["probe.val_every"] = max(1, out["probe.steps"] // MIN_CHECKPOINTS)
        return out

    full_estimate = Pricer(cfg, costs).core() + Pricer(cfg, costs).followups()
    thin = {"probe.val_every": max(1, S // MIN_CHECKPOINTS)}
    if not fits() and p.val_every is None and S // 20 < thin["probe.val_every"] and saves(thin):
        keys.update(thin)
        cut.append(f"checkpoints: {MIN_CHECKPOINTS} per probe instead of 20")
    from optdoctor.probes.setup import EVAL_CAP

    cap = p.eval_samples or EVAL_CAP
    fewer = {"probe.eval_samples": MIN_EVAL_SAMPLES}
    if not fits() and cap > MIN_EVAL_SAMPLES and saves(fewer):
        keys.update(fewer)
        cut.append(f"evaluation: {MIN_EVAL_SAMPLES} samples per split at a checkpoint instead of {cap}")
    if not fits():  # the largest step scale that fits (the cost grows with the steps)
        lo, hi = 0.0, 1.0
        for _ in range(20):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fits(scaled(mid)) else (lo, mid)
        keys.update(scaled(lo))
        cut.append(f"steps: {S} -> {keys['probe.steps']} per probe")
    hess = p.hessian.enabled and costs.hessian_batch > 0
    if hess and not fits():
        hb = b = min(p.hessian.batch_size, costs.hessian_batch)
        while b > MIN_HESSIAN_BATCH and not fits({"probe.hessian.batch_size": b}):
            b = max(MIN_HESSIAN_BATCH, b // 2)
        if b < hb:
            keys["probe.hessian.batch_size"] = b
            cut.append(f"Hessian batch: {hb} -> {b} samples")
    if hess and not fits():
        iters = min(p.hessian.max_iter, LEAN_HESSIAN_ITERS)
        keys.update({"probe.hessian.trace": False, "probe.hessian.density": False, "probe.hessian.max_iter": iters})
        cut.append(f"Hessian: Lanczos only ({iters} steps), no trace or spectral density")
    drops = (("probe.lr_range", False, "LR range test"),
             ("probe.variants.lr_factors", [], "LR variants (" + ", ".join(f"lr_x{f:g}" for f in p.variants.lr_factors) + ")"),
             ("probe.hessian.enabled", False, "curvature (Hessian spectra)"))
    for key, value, what in drops:
        before = pricer().core()
        if before <= seconds:
            break
        if keys.get(key, _get(cfg, key)) == value:
            continue
        keys[key] = value
        cut.append(f"{what}: would take ~{_fmt_s(before - pricer().core())}")
    if "probe.steps" in keys:  # what was dropped may leave room for more steps again
        lo, hi = keys["probe.steps"] / S, 1.0
        if fits(scaled(hi)):
            lo = hi
        for _ in range(20):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fits(scaled(mid)) else (lo, mid)
        keys.update(scaled(lo))
        i = next(i for i, c in enumerate(cut) if c.startswith("steps:"))
        if keys["probe.steps"] >= S:
            del cut[i]
        else:
            cut[i] = f"steps: {S} -> {keys['probe.steps']} per probe"
    if not fits() and S > LAST_RESORT_STEPS:  # even the bare baseline at the floor is too long
        last = min(S, LAST_RESORT_STEPS)
        lo, hi = 0.0, keys.get("probe.steps", S) / S
        for _ in range(20):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fits(scaled(mid, last)) else (lo, mid)
        keys.update(scaled(lo, last))
        cut.append(f"steps: {S} -> {keys['probe.steps']}, below the {floor}-step floor: the findings rest on a very short probe")
    plan = Plan(keys, pricer().core(), full_estimate)
    # the plateau follow-ups, at the planned steps, in what is left (or not at all)
    if p.variants.perturb:
        need = pricer().followups()
        if need > seconds - plan.estimate:
            keys["probe.variants.perturb"] = False
            cut.append(f"follow-up probes (continued, perturbed, reseed_1..{RESEEDS}; they run only on a plateau): "
                       f"would take ~{_fmt_s(need)}")
        else:
            plan.estimate += need
    if cut:
        cut.insert(0, f"the configured probes would take ~{_fmt_s(full_estimate)} here; planned ~{_fmt_s(plan.estimate)}")
    plan.cut = cut
    return plan


def _get(cfg, key: str) -> Any:
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _tweak(cfg, keys: dict[str, Any]):
    """A deep copy of a ProbeConfig with dotted keys set."""
    cfg = cfg.model_copy(deep=True)
    for key, value in keys.items():
        *path, last = key.split(".")
        obj = cfg
        for part in path:
            obj = getattr(obj, part)
        setattr(obj, last, value)
    return cfg


def _with_config(setup, cfg):
    import dataclasses

    return dataclasses.replace(setup, loaded=setup.loaded.model_copy(update={"config": cfg}))


def apply(setup, plan: Plan):
    """The setup whose config runs the plan (the probe runner reads everything from it)."""
    return _with_config(setup, _tweak(setup.cfg, plan.keys)) if plan.keys else setup


# --- enforcement ------------------------------------------------------------------------


class Budget:
    """The deadline of one diagnosis and what happened to the plan.

    ``soft``: optional probes start only when their estimate ends before it.
    ``hard``: ``stop()`` ends any probe so that the run finishes within HARD_FACTOR x budget.
    ``clock`` is injectable: the tests drive it from a fake model."""

    def __init__(self, seconds: float, start: float | None = None, clock: Callable[[], float] = time.perf_counter):
        self.seconds, self.clock = float(seconds), clock
        self.start = clock() if start is None else start
        self.plan: Plan | None = None
        self.costs: Costs | None = None
        self.pricer: Pricer | None = None
        self.cut: list[str] = []
        self.ran = 0  # probes that ran (the report's cost grows with them)
        self.speed = 1.0  # measured / estimated seconds of the finished probes
        self._est = self._took = self._took_est = 0.0
        self._tail = 0.0  # what the running probe still does after its last step
        self._current: tuple[str, float, float] | None = None  # (name, estimate, start)
        self.planned_at: float | None = None  # seconds after start when the plan was made
        self.startup: float | None = None  # seconds after start when calibration began
        self.timings: dict[str, list[float]] = {}  # probe -> [estimate, took] seconds

    # time
    def now(self) -> float:
        return self.clock() - self.start

    def reserve(self) -> float:
        return EXIT_RESERVE + REPORT_PER_PROBE * max(self.ran, 6)

    def left(self) -> float:
        """Seconds until the soft deadline."""
        return self.seconds - self.reserve() - self.now()

    def hard_left(self) -> float:
        return HARD_FACTOR * self.seconds - self.reserve() - self.now()

    def eta(self) -> float | None:
        """Seconds the plan still needs (for the progress line), or None before it exists."""
        if self.plan is None:
            return None
        running = (self.clock() - self._current[2]) if self._current else 0.0
        return max(0.0, min(self.plan.estimate * self.speed - self._took - running, self.hard_left()))

    # planning
    def prepare(self, setup):
        """Calibrate on ``setup``, plan into what is left, and return the setup that runs the plan."""
        self.startup = self.now()
        self.costs = calibrate(setup, self.clock, left=self.left)
        self.planned_at = self.now()
        self.plan = make_plan(setup.cfg, self.costs, max(0.0, self.left()))
        self.cut.extend(self.plan.cut)
        planned = apply(setup, self.plan)
        self.pricer = Pricer(planned.cfg, self.costs)
        return planned

    # between probes
    def estimate(self, spec) -> float:
        return self.pricer.spec(spec) * self.speed if self.pricer else 0.0

    def admit(self, what: str, seconds: float) -> bool:
        """Whether an optional probe (or group) of ``seconds`` fits before the soft deadline;
        records the cut when not."""
        if seconds <= self.left():
            return True
        self.cut.append(f"{what}: would take ~{_fmt_s(seconds)}, {_fmt_s(max(0.0, self.left()))} left")
        return False

    def admit_specs(self, what: str, specs: list) -> bool:
        return self.admit(what, sum(self.estimate(s) for s in specs))

    def estimate_lr_range(self, steps: int) -> float:
        return self.pricer.lr_range(steps) * self.speed if self.pricer else 0.0

    def begin(self, name: str, estimate: float, tail: float = 0.0) -> None:
        """A probe starts; ``stop()`` keeps one step, the probe's last evaluation and ``tail``
        (what it measures after its last step, e.g. a Hessian) in hand."""
        self._current = (name, estimate, self.clock())
        c, pr = self.costs, self.pricer
        self._tail = ((c.step + pr.eval()) * self.speed if c is not None and pr is not None else 0.0) + tail

    def begin_spec(self, spec) -> None:
        """``begin`` for a runner ProbeSpec (its Hessian at the last step, if any, in the tail)."""
        tail, pr = 0.0, self.pricer
        if pr is not None and spec.full and spec.hessian_steps and spec.hessian_steps[-1] == spec.steps:
            tail = pr.hessian()
        self.begin(spec.name, self.estimate(spec), tail * self.speed)

    def end(self, trace=None) -> None:
        if self._current is None:
            return
        name, est, t0 = self._current
        took = self.clock() - t0
        self._current = None
        self.ran += 1
        self._took += took
        self.timings[name] = [round(est, 2), round(took, 2)]
        if est > 0 and (trace is None or trace.status == "completed"):
            self._est += est
            self._took_est += took
            self.speed = min(max(self._took_est / self._est, SPEED_RANGE[0]), SPEED_RANGE[1])
        if trace is not None and trace.status == "stopped":
            planned = trace.meta.get("planned_steps") or trace.meta.get("steps")
            self.cut.append(f"{name}: stopped at step {trace.stopped_at} of {planned} (hard time limit)")

    # inside a probe
    def stop(self) -> bool:
        """Checked before every training step: True ends the probe now."""
        return self.hard_left() <= self._tail

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seconds": self.seconds, "limit": round(HARD_FACTOR * self.seconds, 3),
                               "used": round(self.now(), 1), "cut": list(self.cut)}
        if self.plan is not None:
            out["plan"] = self.plan.as_dict()
        if self.costs is not None:
            out["calibration"] = {**self.costs.as_dict(), "started_at": round(self.startup or 0.0, 2),
                                  "planned_at": round(self.planned_at or 0.0, 2)}
        out["probes"] = {k: {"estimate": e, "took": t} for k, (e, t) in sorted(self.timings.items())}
        return out
