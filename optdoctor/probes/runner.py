"""Short instrumented trainings ("probes") of one config, and the set of probes a diagnosis
needs (the differential tests of DESIGN.md: the same run at other learning rates, a restart
from a perturbed plateau, another seed).

One probe = one ``ProbeSpec`` (a variant of the user's setup) -> one ``Trace``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from optdoctor.config.factories import call_user, crash, stage
from optdoctor.errors import ProbeError, exhaustion
from optdoctor.probes.instruments import (
    Activations,
    GradHistogram,
    GradNorms,
    LayerOrder,
    infer_functional_activations,
    weight_row_spread,
    UpdateRatios,
    activation_kind,
    parametrised_layers,
)
from optdoctor.probes.recorder import Recorder
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

Progress = Callable[[str, int, int], None]  # (probe name, step, steps)


@dataclass
class ProbeSpec:
    name: str = "baseline"
    kind: str = "baseline"  # one of trace.KINDS: how symptoms find this probe
    steps: int = 200
    seed: int = 0
    lr_factor: float = 1.0
    full: bool = True  # all instruments; else no curvature and no gradient histograms
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


def _evaluate(model: nn.Module, loss_fn, batch, n_classes: int | None) -> tuple[float, float | None]:
    X, y = batch
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(*X) if isinstance(X, tuple) else model(X)
            loss = float(loss_fn(out, y))
            acc = None
            if n_classes and out.dim() == 2 and out.shape[1] == n_classes:
                acc = float((out.argmax(dim=1) == y).float().mean())
    finally:
        model.train(was)
    return loss, acc


def _measure_curvature(model, loss_fn, batch, hcfg, seed: int, optimizer, step: int) -> dict[str, float]:
    """One Hessian measurement (curvature/), plus Adam's preconditioned sharpness when the
    optimiser has second-moment estimates (not at step 0)."""
    from optdoctor.curvature import hessian_spectrum
    from optdoctor.curvature.preconditioned import adam_stability_factor, preconditioned_sharpness

    s = hessian_spectrum(model, loss_fn, batch, k=hcfg.k, trace=hcfg.trace, density=hcfg.density,
                         max_iter=hcfg.max_iter, tol=hcfg.tol, seed=seed, trace_rtol=0.05,
                         trace_max_hvps=hcfg.trace_max_hvps, density_starts=hcfg.density_starts)
    row = {k: float(v) for k, v in s.as_dict().items() if isinstance(v, (int, float))}
    row["step"] = float(step)
    row["hvps"] = float(s.hvps)
    if s.density is not None:
        row["density"] = {"nodes": [float(x) for x in s.density.nodes], "weights": [float(x) for x in s.density.weights]}
    pre = preconditioned_sharpness(model, loss_fn, batch, optimizer, seed=seed) if step > 0 else None
    if pre is not None:
        row["precond_lambda_max"], beta1 = pre
        row["precond_limit_factor"] = adam_stability_factor(beta1)
    return row


def run_probe(setup: Setup, spec: ProbeSpec, progress: Progress | None = None) -> tuple[Trace, dict]:
    """Train ``spec.steps`` steps with instruments attached; returns the trace and the final
    weights. A non-finite or exploding loss stops the probe cleanly (status "diverged");
    Ctrl-C stops it with status "interrupted" and raises ProbeInterrupted carrying the trace."""
    cfg = setup.cfg
    model = setup.build_model(spec.seed)
    if spec.start_state is not None:
        model.load_state_dict(spec.start_state)
    gen = torch.Generator().manual_seed(spec.seed)  # batch order
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
            scheduler = setup.scheduler_cls(optimizer, **cfg.schedule.args)
        except (TypeError, ValueError) as e:
            raise ProbeError(f"scheduler {cfg.schedule.name} rejected its arguments: {e}") from e

    layers = parametrised_layers(model)
    acts = [(n, m, k) for n, m in model.named_modules() if (k := activation_kind(m))]
    if not acts and layers:  # activations written as functions in forward(): infer them
        acts = infer_functional_activations(model, layers, setup.train.head(cfg.data.batch_size)[0])
    rec = Recorder()
    instruments = [GradNorms(layers), UpdateRatios(layers)]
    act_inst = None
    if acts:  # every probe: the variants' dead fractions are counterfactual evidence (OD406)
        act_inst = Activations(acts, every=max(1, spec.steps // 10), window=2)
        instruments.append(act_inst)
    if spec.full:
        instruments.append(GradHistogram(layers, every=max(1, spec.steps // 10), seed=spec.seed))
    for inst in instruments:
        inst.attach(model, rec, optimizer)
    order = LayerOrder(layers + [(n, m) for n, m, _ in acts])

    n = len(setup.train)
    bs = min(cfg.data.batch_size, n)
    val_every = cfg.probe.val_every or max(1, spec.steps // 20)
    eval_train = setup.train.head(EVAL_CAP)
    eval_val = setup.val.head(EVAL_CAP) if setup.val is not None and len(setup.val) else None
    hess_batch = setup.train.head(cfg.probe.hessian.batch_size)
    fwd = f"the model's forward ({cfg.model.factory})"
    loss_what = f"the loss ({cfg.loss})"
    bwd, opt_step = _backward_what(cfg), f"optimizer {cfg.optimizer.name}.step()"

    trace = Trace(spec.name, meta={
        "kind": spec.kind, "lr": lr, "lr_factor": spec.lr_factor, "steps": spec.steps, "seed": spec.seed,
        "optimizer": cfg.optimizer.name.lower(), "optimizer_args": dict(cfg.optimizer.args),
        "batch_size": bs, "n_train": n, "n_params": sum(p.numel() for p in model.parameters()),
        "chance_loss": setup.chance_loss, "n_classes": setup.n_classes, "loss": cfg.loss,
        "perturb": spec.perturb, "continued": spec.start_state is not None,
    })

    def checkpoint(step: int) -> None:
        tl, ta = call_user(_evaluate, model, setup.loss_fn, eval_train, setup.n_classes, what=fwd)
        rec.log("loss.train_eval", step, tl)
        if ta is not None:
            rec.log("acc.train", step, ta)
        if eval_val is not None:
            vl, va = call_user(_evaluate, model, setup.loss_fn, eval_val, setup.n_classes, what=fwd)
            rec.log("loss.val", step, vl)
            if va is not None:
                rec.log("acc.val", step, va)

    def curvature(step: int) -> None:
        """A Hessian measurement; one the model cannot give (an op without double backward, say)
        is noted in the trace and the probe goes on: curvature rules are then not evaluated."""
        try:
            trace.hessian.append(_measure_curvature(model, setup.loss_fn, hess_batch, cfg.probe.hessian,
                                                    spec.seed, optimizer, step))
        except RuntimeError as e:
            if exhaustion(e):
                hint = (f"a smaller probe.hessian.batch_size (now {cfg.probe.hessian.batch_size}), "
                        "or probe.hessian.enabled: false")
                raise crash(e, f"the Hessian measurement at step {step}", hint) from e
            trace.meta.setdefault("hessian_errors", []).append(f"step {step}: {e}")

    model.train()
    on_cpu = setup.device.type == "cpu"
    hess_due = set(spec.hessian_steps) if spec.full and cfg.probe.hessian.enabled else set()
    perm = torch.randperm(n, generator=gen)
    pos = 0
    initial = None
    step = 0
    try:
        checkpoint(0)
        if 0 in hess_due:
            curvature(0)
        for step in range(spec.steps):
            if pos + bs > n:
                perm, pos = torch.randperm(n, generator=gen), 0
            idx = perm[pos:pos + bs] if on_cpu else perm[pos:pos + bs].to(setup.device)
            pos += bs
            X, y = setup.train.take(idx)
            for inst in instruments:
                inst.before_forward(step)
            out = call_user(model, *X, what=fwd) if isinstance(X, tuple) else call_user(model, X, what=fwd)
            if step == 0:
                names = order.done()
                rank = {nm: i for i, nm in enumerate(names)}
                layers.sort(key=lambda t: rank[t[0]])
                acts.sort(key=lambda t: rank[t[0]])
                trace.meta["layers"] = [nm for nm, _ in layers]
                trace.meta["layer_types"] = [type(m).__name__ for _, m in layers]
                rec.log("weight.row_spread", 0, weight_row_spread(layers))
                for inst in instruments:  # layers were sorted in place: index samples follow them
                    if isinstance(inst, GradHistogram):
                        inst.attach(model, rec, optimizer)
                trace.meta["act_layers"] = [nm for nm, _, _ in acts]
                trace.meta["act_kinds"] = [k for _, _, k in acts]
                if act_inst is not None:
                    act_inst.order = trace.meta["act_layers"]
            loss = call_user(setup.loss_fn, out, y, what=loss_what)
            lval = float(loss.detach())
            rec.log("loss.train", step, lval)
            rec.log("lr", step, optimizer.param_groups[0]["lr"])
            if initial is None:
                initial = lval
            if not math.isfinite(lval) or (math.isfinite(initial)
                                           and abs(lval) > DIVERGENCE_FACTOR * max(abs(initial), 1e-3)):
                trace.status, trace.stopped_at = "diverged", step
                break
            optimizer.zero_grad(set_to_none=True)
            call_user(loss.backward, what=bwd)
            for inst in instruments:
                inst.after_backward(step)
            if cfg.probe.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.probe.clip_grad_norm)
            call_user(optimizer.step, what=opt_step)
            if scheduler is not None:
                call_user(scheduler.step, what=f"scheduler {cfg.schedule.name}.step()")
            for inst in instruments:
                inst.after_step(step)
            if progress:
                progress(spec.name, step + 1, spec.steps)
            if (step + 1) % val_every == 0 or step + 1 == spec.steps:
                checkpoint(step + 1)
            if step + 1 in hess_due:
                curvature(step + 1)
    except KeyboardInterrupt:
        trace.status, trace.stopped_at = "interrupted", step
    finally:
        order.done()
        for inst in instruments:
            inst.detach()
        rec.finish(trace)
        for inst in instruments:
            inst.finish(trace)
    if trace.status == "interrupted":
        raise ProbeInterrupted(ProbeSet({spec.name: trace}))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return trace, state


def run_lr_range(setup: Setup, steps: int, lr_min: float = LR_RANGE[0], lr_max: float = LR_RANGE[1],
                 progress: Progress | None = None) -> Trace:
    """Smith's LR range test (as torch-lr-finder runs it): a fresh copy of the model trained for
    ``steps`` steps with the learning rate growing exponentially from lr_min to lr_max; stops
    once the loss exceeds 4x its best (the LR is past usable). Records "lr" and "loss.train"."""
    cfg = setup.cfg
    model = setup.build_model(cfg.seed)
    optimizer = setup.optimizer_cls(model.parameters(), lr=lr_min, **cfg.optimizer.args)
    gen = torch.Generator().manual_seed(cfg.seed)
    rec = Recorder()
    trace = Trace("lr_range", meta={"kind": "lr_range", "steps": steps, "seed": cfg.seed, "lr": cfg.optimizer.lr, "lr_min": lr_min, "lr_max": lr_max,
                                    "optimizer": cfg.optimizer.name.lower()})
    n = len(setup.train)
    bs = min(cfg.data.batch_size, n)
    fwd = f"the model's forward ({cfg.model.factory})"
    growth = (lr_max / lr_min) ** (1.0 / max(1, steps - 1))
    best = math.inf
    perm, pos = torch.randperm(n, generator=gen), 0
    model.train()
    try:
        for step in range(steps):
            lr = lr_min * growth**step
            for g in optimizer.param_groups:
                g["lr"] = lr
            if pos + bs > n:
                perm, pos = torch.randperm(n, generator=gen), 0
            X, y = setup.train.take(perm[pos:pos + bs].to(setup.device))
            pos += bs
            out = call_user(model, *X, what=fwd) if isinstance(X, tuple) else call_user(model, X, what=fwd)
            loss = call_user(setup.loss_fn, out, y, what=f"the loss ({cfg.loss})")
            lval = float(loss.detach())
            rec.log("lr", step, lr)
            rec.log("loss.train", step, lval)
            if not math.isfinite(lval) or lval > 4 * best:  # past the usable range: the test is done
                trace.stopped_at = step
                trace.meta["stopped"] = "loss above 4x its best"
                break
            best = min(best, lval)
            optimizer.zero_grad(set_to_none=True)
            call_user(loss.backward, what=_backward_what(cfg))
            call_user(optimizer.step, what=f"optimizer {cfg.optimizer.name}.step()")
            if progress:
                progress("lr_range", step + 1, steps)
    finally:
        rec.finish(trace)
    return trace


def _backward_what(cfg) -> str:
    """Autograd runs the backward of the user's model and loss (an in-place op on a saved
    tensor, an op without a gradient): their failure, not optdoctor's."""
    return f"the backward pass of the model ({cfg.model.factory}) and loss ({cfg.loss})"


def _memory_hint(setup: Setup) -> str:
    cfg = setup.cfg
    hint = f"a smaller data.batch_size (now {cfg.data.batch_size}) or a smaller model (model.args)"
    if setup.device.type == "cuda":
        hint += ", or probe.device: cpu (more memory, and CUDA reports errors late)"
    return hint


def plan_variants(setup: Setup) -> list[ProbeSpec]:
    cfg = setup.cfg
    steps = cfg.probe.variants.steps or cfg.probe.steps
    return [ProbeSpec(name=f"lr_x{f:g}", kind="lr_variant", steps=steps, seed=cfg.seed, lr_factor=f, full=False)
            for f in cfg.probe.variants.lr_factors]


def run_probes(setup: Setup, progress: Progress | None = None,
               followups: Callable[[ProbeSet], bool] | None = None) -> ProbeSet:
    """Baseline, then learning-rate variants; then, when ``followups(probes)`` says the
    baseline sits on a plateau, a restart from the plateau with a small perturbation (does it
    escape? a saddle) and a fresh seed (does another init get much further? a local minimum).

    On Ctrl-C raises ProbeInterrupted carrying every trace measured so far."""
    cfg = setup.cfg
    probes = ProbeSet(data_stats=dict(setup.data_stats))
    hess_steps = fraction_steps(cfg.probe.hessian.at, cfg.probe.steps) if cfg.probe.hessian.enabled else []
    base_spec = ProbeSpec(steps=cfg.probe.steps, seed=cfg.seed, hessian_steps=hess_steps)

    def run(spec: ProbeSpec) -> dict:
        try:
            with stage(f"probe {spec.name!r}", _memory_hint(setup)):
                trace, state = run_probe(setup, spec, progress)
        except ProbeInterrupted as e:
            probes.traces.update(e.probes.traces)
            raise ProbeInterrupted(probes) from None
        except KeyboardInterrupt:  # between two probes
            raise ProbeInterrupted(probes) from None
        probes.traces[spec.name] = trace
        return state

    base_state = run(base_spec)
    for spec in plan_variants(setup):
        run(spec)
    if cfg.probe.lr_range:
        try:
            with stage("probe 'lr_range'", _memory_hint(setup)):
                probes.traces["lr_range"] = run_lr_range(setup, min(LR_RANGE_STEPS, max(20, cfg.probe.steps)), progress=progress)
        except KeyboardInterrupt:
            raise ProbeInterrupted(probes) from None
    if followups is not None and cfg.probe.variants.perturb and followups(probes):
        # From the plateau: go on unchanged (the control) and go on after a small random kick,
        # on the same batches. A saddle lets the kicked run escape; a minimum pulls it back.
        steps = cfg.probe.variants.steps or cfg.probe.steps
        run(ProbeSpec(name="continued", kind="continued", steps=steps, seed=cfg.seed + 1, full=False, start_state=base_state))
        run(ProbeSpec(name="perturbed", kind="perturbed", steps=steps, seed=cfg.seed + 1, full=False,
                      start_state=base_state, perturb=PERTURB_EPS))
        for i in range(1, RESEEDS + 1):  # does another start get much further? (a bad basin)
            run(ProbeSpec(name=f"reseed_{i}", kind="reseed", steps=cfg.probe.steps, seed=cfg.seed + i, full=False))
    return probes
