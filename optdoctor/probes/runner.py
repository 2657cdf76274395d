"""Short instrumented trainings ("probes") of one config, and the set of probes a diagnosis
needs (the differential tests of DESIGN.md: the same run at other learning rates, a restart
from a perturbed plateau, another seed).

One probe = one ``ProbeSpec`` (a variant of the user's setup) -> one ``Trace``.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from optdoctor.config.schedule import scaled_schedule_args
from optdoctor.config.factories import call_user, crash, raised_in_optdoctor, stage
from optdoctor.errors import ConfigError, OptdoctorError, ProbeError
from optdoctor.probes.instruments import Context, InstrumentSet, default_instruments, discover
from optdoctor.probes.recorder import Recorder
from optdoctor.probes.instruments.base import Series
from optdoctor.probes.batches import bind, call_model
from optdoctor.probes.setup import EVAL_CAP, Setup, fraction_steps
from optdoctor.trace import ProbeSet, Trace

# A probe whose loss exceeds this multiple of its initial loss has diverged; going on only
# burns time (the loss of a diverging SGD run grows geometrically).
DIVERGENCE_FACTOR = 1e4

# Size of the kick that tests a plateau for a saddle, in units of a standard init's scale
# 1/sqrt(fan_in): small next to trained weights, large next to a degenerate saddle's ~0 weights.
PERTURB_EPS = 0.1
# LR range test: learning rates swept exponentially over this interval in LR_RANGE_STEPS steps.
LR_RANGE = (1e-7, 10.0)
LR_RANGE_STEPS = 100
# Fresh initialisations tried when the baseline is stuck: the best of them tells a bad basin
# from a model that cannot do better anyway.
RESEEDS = 3
# fresh-start probes whose traces are read as a baseline: the affine test (probes.affine) runs there
AFFINE_KINDS = ("baseline", "verify", "seed")

# What the training loop itself records (the instruments declare theirs).
LOOP_SERIES = (
    Series("loss.train", "step", "training loss of the step's batch", tag="loss/train"),
    Series("lr", "step", "learning rate of the step (first parameter group)", tag="lr"),
)

Progress = Callable[[str, int, int], None]  # (probe name, step, steps)


@dataclass
class ProbeSpec:
    name: str = "baseline"
    kind: str = "baseline"  # one of trace.KINDS: how symptoms find this probe
    steps: int = 200
    seed: int = 0
    lr_factor: float = 1.0
    full: bool = True  # all instruments; else no curvature, histograms or input statistics
    hessian_steps: list[int] = field(default_factory=list)
    start_state: dict | None = None  # continue from these weights instead of a fresh init
    perturb: float = 0.0  # isotropic weight perturbation, in units of 1/sqrt(fan_in)


class ProbeInterrupted(Exception):
    """Ctrl-C during probing; carries everything measured so far."""

    def __init__(self, probes: ProbeSet):
        self.probes = probes
        super().__init__("interrupted")


def _perturb_(model: nn.Module, eps: float, gen: torch.Generator) -> None:
    """Add N(0, (eps/sqrt(fan_in))^2) to every weight matrix (eps for vectors and scalars): a
    tenth of a standard init's scale for eps=0.1, tiny next to trained weights but enough to
    leave a degenerate saddle."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.is_floating_point():
                fan_in = p[0].numel() if p.dim() >= 2 else 1
                noise = torch.randn(p.shape, generator=gen, dtype=p.dtype) * (eps / math.sqrt(fan_in))
                p.add_(noise.to(p.device))


def forward(model: nn.Module, X):
    """The model called on a batch's inputs (``batches.Inputs``; a tuple is several positional inputs)."""
    return call_model(model, X)


def batches(setup: Setup, seed: int):
    """Training batches ``(inputs, target)`` without end, the same for the same seed: the one
    batch iterator of every probe and the LR range test (``Setup.batches``)."""
    return setup.batches(seed)


class _Step:
    """One training step's user-code calls, each reported as the user's error when it raises."""

    def __init__(self, setup: Setup, model: nn.Module, optimizer=None, scheduler=None):
        cfg = setup.cfg
        self.model, self.criterion = model, setup.criterion
        self.optimizer, self.scheduler = optimizer, scheduler
        self.fwd = f"the model's forward ({cfg.model.factory})"
        # Autograd runs the backward of the user's model and loss (an in-place op on a saved
        # tensor, an op without a gradient); the optimizer is the config's torch.optim class.
        self.bwd = f"the backward pass of the model ({cfg.model.factory}) and loss ({cfg.loss})"
        self.opt = f"optimizer {cfg.optimizer.name}.step()"
        self.sched = f"scheduler {cfg.schedule.name}.step()" if cfg.schedule else ""

    def forward(self, m: nn.Module, X):
        call = bind(m, X)  # outside call_user: a model that cannot take the target is not a crash of its code
        return call_user(forward, m, call, what=self.fwd)

    def loss(self, X, y):
        return self.criterion(self.forward(self.model, X), y)

    def update(self, loss, X=None, y=None) -> None:
        """Backward, optimizer step, scheduler step. A closure-based optimizer (L-BFGS) gets a
        closure whose first call returns this loss, whose gradient is already there (the one
        the instruments measure, in the step pre-hook, before any line search); later calls
        re-evaluate the same batch."""
        _torch_call(loss.backward, self.bwd)
        if needs_closure(self.optimizer):
            first = [loss]

            def closure():
                if first:
                    return first.pop()
                self.optimizer.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    again = self.loss(X, y)
                    _torch_call(again.backward, self.bwd)
                return again

            _torch_call(lambda: self.optimizer.step(closure), self.opt)
        else:
            _torch_call(self.optimizer.step, self.opt)  # instruments: gradients before it, updates and states after it
        if self.scheduler is not None:
            _torch_call(self.scheduler.step, self.sched)


def needs_closure(optimizer) -> bool:
    """Whether ``optimizer.step`` must be given a closure that re-evaluates the loss: L-BFGS, or
    any class that says so with ``requires_closure = True``."""
    return isinstance(optimizer, torch.optim.LBFGS) or bool(getattr(optimizer, "requires_closure", False))


def _torch_call(fn: Callable[[], object], what: str) -> None:
    """``fn()``, which runs torch code on the user's behalf and optdoctor's instrument hooks: an
    exception raised inside optdoctor's own code is a bug (it propagates: exit 4), anything else
    the probe could not run (exit 3)."""
    try:
        fn()
    except (KeyboardInterrupt, SystemExit, OptdoctorError):
        raise
    except Exception as exc:
        if raised_in_optdoctor(exc):
            raise
        raise crash(exc, what) from exc


def _capped(chunks: list, cap: int) -> list:
    """Whole evaluation chunks until ``cap`` items (at least one chunk)."""
    out, n = [], 0
    for chunk in chunks:
        if out and n >= cap:
            break
        out.append(chunk)
        y = chunk[1]
        n += len(y) if hasattr(y, "__len__") else 1
    return out


def _diverged(lval: float, initial: float) -> bool:
    return not math.isfinite(lval) or (math.isfinite(initial) and abs(lval) > DIVERGENCE_FACTOR * max(abs(initial), 1e-3))


def _build(setup: Setup, spec: ProbeSpec):
    cfg = setup.cfg
    model = setup.build_model(spec.seed)
    if spec.start_state is not None:
        model.load_state_dict(spec.start_state)
    if spec.perturb:  # its own generator: a perturbed probe sees the same batches as its control
        _perturb_(model, spec.perturb, torch.Generator().manual_seed(spec.seed + 7919))
    lr = cfg.optimizer.lr * spec.lr_factor
    try:
        optimizer = setup.optimizer_cls(model.parameters(), lr=lr, **cfg.optimizer.args)
    except (TypeError, ValueError) as e:
        raise ProbeError(f"optimizer {cfg.optimizer.name} rejected its arguments: {e}") from e
    scheduler = None
    if setup.scheduler_cls is not None:
        try:
            scheduler = setup.scheduler_cls(optimizer, **scaled_schedule_args(cfg.schedule.args, spec.lr_factor))
        except (TypeError, ValueError) as e:
            raise ProbeError(f"scheduler {cfg.schedule.name} rejected its arguments: {e}") from e
    return model, optimizer, scheduler, lr


def _instruments(setup: Setup, spec: ProbeSpec, step_fn: _Step) -> list:
    cfg = setup.cfg
    val_every = cfg.probe.val_every or max(1, spec.steps // 20)
    checkpoints = sorted(set(range(0, spec.steps + 1, val_every)) | {spec.steps})
    cap = cfg.probe.eval_samples or EVAL_CAP  # a time budget may evaluate on fewer samples
    val = _capped(setup.eval_batches("val"), cap) or None
    evaluation = dict(at=checkpoints, forward=step_fn.forward, loss_fn=setup.criterion, output=setup.criterion.predictions,
                      train=_capped(setup.eval_batches("train"), cap), val=val, n_classes=setup.n_classes)
    curvature = None
    if spec.full and cfg.probe.hessian.enabled and spec.hessian_steps:
        X, y = setup.first(cfg.probe.hessian.batch_size)  # bound to the model: the Hessian calls it as training does
        curvature = dict(at=spec.hessian_steps, loss_fn=setup.criterion, hcfg=cfg.probe.hessian, seed=spec.seed,
                         batch=(bind(step_fn.model, X), y))
    return default_instruments(spec.steps, full=spec.full, seed=spec.seed, evaluation=evaluation, curvature=curvature)


def _remeasure_last(instruments: InstrumentSet, rec: Recorder) -> None:
    """After early stopping restored the best checkpoint: the last checkpoint's evaluation rows
    measure the weights the probe ends with (the best ones), so that ``val.final`` is theirs."""
    from optdoctor.probes.instruments.evaluation import Evaluation

    for inst in instruments.instruments:
        if isinstance(inst, Evaluation):
            rows = rec.rows("loss.train_trainmode")
            if rows:
                rows[-1] = (rows[-1][0], inst._train_mode_loss(inst.batches[0][1]))
            for split, batch in inst.batches:
                loss, acc = inst._evaluate(batch)
                for name, value in ((f"loss.{'train_eval' if split == 'train' else 'val'}", loss), (f"acc.{split}", acc)):
                    rows = rec.rows(name)
                    if rows and value is not None:
                        rows[-1] = (rows[-1][0], value)


def _interventions(setup: Setup, spec: ProbeSpec, model: nn.Module) -> dict:
    """The in-loop remedies the config switches on, by trace metadata key (``interventions.py``)."""
    from optdoctor.probes.interventions import NegativeCurvatureStep, PerturbedGD

    cfg = setup.cfg.probe
    hooks: dict = {}
    if cfg.perturb_gd is not None:
        hooks["perturb_gd"] = PerturbedGD(cfg.perturb_gd, model, spec.seed)
    if cfg.negative_curvature_step is not None:
        X, y = setup.first(cfg.hessian.batch_size)  # the Hessian batch, bound to the model as the curvature instrument's
        hooks["negative_curvature"] = NegativeCurvatureStep(cfg.negative_curvature_step, spec.steps, model, setup.criterion,
                                                            (bind(model, X), y), spec.seed)
    return hooks


def run_probe(setup: Setup, spec: ProbeSpec, progress: Progress | None = None,
              stop: Callable[[], bool] | None = None) -> tuple[Trace, dict]:
    """Train ``spec.steps`` steps with instruments attached; returns the trace and the final
    weights. A non-finite or exploding loss stops the probe cleanly (status "diverged");
    Ctrl-C stops it with status "interrupted" and raises ProbeInterrupted carrying the trace;
    ``stop()`` true before a step (after the first) ends it with status "stopped" (a time
    budget): the trace is then a shorter probe (meta "steps"; "planned_steps" what was planned).

    Build the model and optimizer; fix the layer order with one forward pass; attach the
    instruments (hooks on the model and the optimizer); run a plain training loop; detach."""
    cfg = setup.cfg
    model, optimizer, scheduler, lr = _build(setup, spec)
    step_fn = _Step(setup, model, optimizer, scheduler)
    bs = setup.batch_size
    rec = Recorder()
    rec.declare(LOOP_SERIES)
    try:
        example = bind(model, setup.first(bs)[0])
    except ProbeError:  # a forward that cannot take the target: the training step says so
        example = None
    layers, acts = discover(model, example)
    affine = linear = None  # untested: meta stays plain JSON
    if spec.kind in AFFINE_KINDS and spec.start_state is None and example is not None:
        from optdoctor.probes.affine import affine_in_input, linear_share

        a, share = affine_in_input(model, example), linear_share(model)
        affine, linear = (None if math.isnan(a) else a), (None if math.isnan(share) else share)
    ctx = Context(model, optimizer, rec, layers, acts, meta={
        "kind": spec.kind, "lr": lr, "lr_factor": spec.lr_factor, "steps": spec.steps, "seed": spec.seed,
        "optimizer": cfg.optimizer.name.lower(), "optimizer_args": dict(cfg.optimizer.args),
        "batch_size": bs, "n_train": setup.train.n, "n_params": sum(p.numel() for p in model.parameters()),
        "chance_loss": setup.chance_loss, "n_classes": setup.n_classes, "loss": cfg.loss,
        "perturb": spec.perturb, "continued": spec.start_state is not None, "affine": affine,
        "linear_share": linear,
    })
    trace = Trace(spec.name)
    instruments = InstrumentSet(_instruments(setup, spec, step_fn))
    clip = None
    step = 0
    model.train()
    # Remedies acting in the loop (probe settings): post-hooks registered before the instruments'.
    in_loop = _interventions(setup, spec, model)
    hooks = [optimizer.register_step_post_hook(h) for h in in_loop.values()]
    stopper = None
    if cfg.probe.early_stopping is not None and setup.val is not None and setup.val.n != 0:  # n None: an iterable
        from optdoctor.probes.interventions import EarlyStopping

        stopper = EarlyStopping(cfg.probe.early_stopping, model)
    seconds: list[float] = []  # wall time of each step (forward, backward, optimizer step): a remedy's cost
    try:
        instruments.attach(ctx)  # measures the initial state (evaluation, curvature) too
        if cfg.probe.clip_grad_norm:  # after the instruments' hook: they see the unclipped gradient
            def _clip(*_):  # a step pre-hook must return None: clip_grad_norm_'s norm would be taken for new args
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.probe.clip_grad_norm)

            clip = optimizer.register_step_pre_hook(_clip)
        data = batches(setup, spec.seed)
        initial = None
        if stopper is not None:
            stopper.observe(rec.rows("loss.val"), 0)  # the checkpoint at attach (step 0)
        for step in range(spec.steps):
            if stop is not None and step and stop():
                trace.status, trace.stopped_at = "stopped", step
                break
            X, y = next(data)
            t0 = time.perf_counter()
            loss = step_fn.loss(X, y)
            lval = float(loss.detach())
            rec.log("loss.train", step, lval)
            rec.log("lr", step, optimizer.param_groups[0]["lr"])
            initial = lval if initial is None else initial
            if _diverged(lval, initial):
                trace.status, trace.stopped_at = "diverged", step
                break
            optimizer.zero_grad(set_to_none=True)
            step_fn.update(loss, X, y)
            seconds.append(time.perf_counter() - t0)
            if progress:
                progress(spec.name, step + 1, spec.steps)
            if stopper is not None and stopper.observe(rec.rows("loss.val"), step + 1):
                trace.stopped_at = step + 1
                break
        if stopper is not None:
            if stopper.finish():
                _remeasure_last(instruments, rec)
            ctx.meta["early_stopping"] = stopper.records
    except KeyboardInterrupt:
        trace.status, trace.stopped_at = "interrupted", step
    finally:
        if clip is not None:
            clip.remove()
        for h in hooks:
            h.remove()
        for key, hook in in_loop.items():
            ctx.meta[key] = hook.records
        if seconds:  # includes the instruments' own time, as every probe does: compare probes, not runs
            ctx.meta["step_seconds"] = statistics.median(seconds)
        instruments.detach()
        instruments.finish(trace)
        if setup.target_stats and "data_stats" in trace.meta:  # the inputs' statistics and the targets' scale
            trace.meta["data_stats"] = {**trace.meta["data_stats"], **setup.target_stats}
    if trace.status == "interrupted":
        raise ProbeInterrupted(ProbeSet({spec.name: trace}))
    if trace.status == "stopped":
        trace.meta.update(steps=trace.stopped_at, planned_steps=spec.steps)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return trace, state


def run_lr_range(setup: Setup, steps: int, lr_min: float = LR_RANGE[0], lr_max: float = LR_RANGE[1],
                 progress: Progress | None = None, stop: Callable[[], bool] | None = None) -> Trace:
    """Smith's LR range test (as torch-lr-finder runs it): a fresh copy of the model trained for
    ``steps`` steps with the learning rate growing exponentially from lr_min to lr_max; stops
    once the loss exceeds 4x its best (the LR is past usable). Records "lr" and "loss.train"."""
    cfg = setup.cfg
    model = setup.build_model(cfg.seed)
    optimizer = setup.optimizer_cls(model.parameters(), lr=lr_min, **cfg.optimizer.args)
    step_fn = _Step(setup, model, optimizer)
    rec = Recorder()
    rec.declare(LOOP_SERIES)
    trace = Trace("lr_range", meta={"kind": "lr_range", "steps": steps, "seed": cfg.seed, "lr": cfg.optimizer.lr,
                                    "lr_min": lr_min, "lr_max": lr_max, "optimizer": cfg.optimizer.name.lower()})
    growth = (lr_max / lr_min) ** (1.0 / max(1, steps - 1))
    best = math.inf
    data = batches(setup, cfg.seed)
    model.train()
    try:
        for step in range(steps):
            if stop is not None and step and stop():
                trace.status, trace.stopped_at = "stopped", step
                trace.meta["stopped"] = "time budget"
                break
            lr = lr_min * growth**step
            for g in optimizer.param_groups:
                g["lr"] = lr
            X, y = next(data)
            loss = step_fn.loss(X, y)
            lval = float(loss.detach())
            rec.log("lr", step, lr)
            rec.log("loss.train", step, lval)
            if not math.isfinite(lval) or lval > 4 * best:  # past the usable range: the test is done
                trace.stopped_at = step
                trace.meta["stopped"] = "loss above 4x its best"
                break
            best = min(best, lval)
            optimizer.zero_grad(set_to_none=True)
            step_fn.update(loss, X, y)
            if progress:
                progress("lr_range", step + 1, steps)
    finally:
        rec.finish(trace)
        rec.describe(trace)
    return trace


def _memory_hint(setup: Setup) -> str:
    hint = f"a smaller data.batch_size (now {setup.cfg.data.batch_size}) or a smaller model (model.args)"
    if setup.device.type == "cuda":
        hint += ", or probe.device: cpu (more memory, and CUDA reports errors late)"
    return hint


def plan_variants(setup: Setup) -> list[ProbeSpec]:
    cfg = setup.cfg
    steps = cfg.probe.variants.steps or cfg.probe.steps
    return [ProbeSpec(name=f"lr_x{f:g}", kind="lr_variant", steps=steps, seed=cfg.seed, lr_factor=f, full=False)
            for f in cfg.probe.variants.lr_factors]


def _standardized_rerun(setup: Setup, setting: str, name: str) -> tuple[ProbeSpec, Setup]:
    """The baseline again with ``probe.<setting>`` switched on, as a probe of kind ``name``."""
    from optdoctor.probes.setup import derive

    cfg = setup.cfg
    cfg_std = cfg.model_copy(deep=True)
    setattr(cfg_std.probe, setting, True)
    std_setup = derive(setup, setup.loaded.model_copy(update={"config": cfg_std}), {f"probe.{setting}": True})
    steps = cfg.probe.variants.steps or cfg.probe.steps
    return ProbeSpec(name=name, kind=name, steps=steps, seed=cfg.seed, full=False), std_setup


def standardized_probe(setup: Setup) -> tuple[ProbeSpec, Setup]:
    """Does the inputs' scale spread matter? The baseline again, on standardised inputs."""
    return _standardized_rerun(setup, "standardize_inputs", "standardized")


def whitened_probe(setup: Setup) -> tuple[ProbeSpec, Setup] | None:
    """Do the inputs' correlations matter? The baseline again, on whitened inputs; None when the
    inputs cannot be whitened (not one floating input of at most 512 features, too few items)."""
    try:
        return _standardized_rerun(setup, "whiten_inputs", "whitened")
    except ConfigError:
        return None


def target_standardized_probe(setup: Setup) -> tuple[ProbeSpec, Setup]:
    """Does the targets' scale matter? The baseline again, on standardised targets."""
    return _standardized_rerun(setup, "standardize_targets", "target_standardized")


def run_probes(setup: Setup, progress: Progress | None = None,
               followups: Callable[..., bool] | None = None, budget=None) -> ProbeSet:
    """Baseline, then learning-rate variants; then, when ``followups(probes)`` says the
    baseline sits on a plateau, a restart from the plateau with a small perturbation (does it
    escape? a saddle) and a fresh seed (does another init get much further? a local minimum).

    ``budget`` (probes/budget.py ``Budget``; ``setup`` already carries its plan): every probe
    but the baseline starts only when it fits before the deadline (a skipped one is recorded
    in ``budget.cut``), and any probe stops at the hard limit.

    On Ctrl-C raises ProbeInterrupted carrying every trace measured so far."""
    cfg = setup.cfg
    probes = ProbeSet()
    hess_steps = fraction_steps(cfg.probe.hessian.at, cfg.probe.steps) if cfg.probe.hessian.enabled else []
    base_spec = ProbeSpec(steps=cfg.probe.steps, seed=cfg.seed, hessian_steps=hess_steps)

    def fits(what: str, *specs: ProbeSpec) -> bool:
        return budget is None or budget.admit_specs(what, list(specs))

    def run(spec: ProbeSpec, on: Setup = setup) -> dict:
        if budget is not None:
            budget.begin_spec(spec)
        try:
            with stage(f"probe {spec.name!r}", _memory_hint(on)):
                trace, state = run_probe(on, spec, progress, stop=budget.stop if budget is not None else None)
        except ProbeInterrupted as e:
            probes.traces.update(e.probes.traces)
            raise ProbeInterrupted(probes) from None
        except KeyboardInterrupt:  # between two probes
            raise ProbeInterrupted(probes) from None
        probes.traces[spec.name] = trace
        if budget is not None:
            budget.end(trace)
        return state

    base_state = run(base_spec)
    probes.data_stats = dict(probes.baseline.meta.get("data_stats", {}))
    for spec in plan_variants(setup):
        if fits(spec.name, spec):
            run(spec)
    range_steps = min(LR_RANGE_STEPS, max(20, cfg.probe.steps))
    if cfg.probe.lr_range and (budget is None or budget.admit("lr_range", budget.estimate_lr_range(range_steps))):
        if budget is not None:
            budget.begin("lr_range", budget.estimate_lr_range(range_steps))
        try:
            with stage("probe 'lr_range'", _memory_hint(setup)):
                probes.traces["lr_range"] = run_lr_range(setup, range_steps, progress=progress,
                                                         stop=budget.stop if budget is not None else None)
        except KeyboardInterrupt:
            raise ProbeInterrupted(probes) from None
        if budget is not None:
            budget.end(probes.traces["lr_range"])
    if followups is not None and not cfg.probe.standardize_inputs and followups(probes, "standardized"):
        spec, std_setup = standardized_probe(setup)
        if fits(spec.name, spec):
            run(spec, std_setup)
    if followups is not None and not cfg.probe.whiten_inputs and followups(probes, "whitened"):
        rerun = whitened_probe(setup)
        if rerun is not None and fits(rerun[0].name, rerun[0]):
            run(*rerun)
    if followups is not None and not cfg.probe.standardize_targets and followups(probes, "target_standardized"):
        spec, std_setup = target_standardized_probe(setup)
        if fits(spec.name, spec):
            run(spec, std_setup)
    if followups is not None and cfg.probe.variants.perturb and followups(probes, "plateau"):
        # From the plateau: go on unchanged (the control) and go on after a small random kick,
        # on the same batches. A saddle lets the kicked run escape; a minimum pulls it back.
        steps = cfg.probe.variants.steps or cfg.probe.steps
        pair = [ProbeSpec(name="continued", kind="continued", steps=steps, seed=cfg.seed + 1, full=False, start_state=base_state),
                ProbeSpec(name="perturbed", kind="perturbed", steps=steps, seed=cfg.seed + 1, full=False,
                          start_state=base_state, perturb=PERTURB_EPS)]
        if fits("continued, perturbed", *pair):
            for spec in pair:
                run(spec)
        for i in range(1, RESEEDS + 1):  # does another start get much further? (a bad basin)
            spec = ProbeSpec(name=f"reseed_{i}", kind="reseed", steps=cfg.probe.steps, seed=cfg.seed + i, full=False)
            if fits(spec.name, spec):
                run(spec)
    return probes
