"""The in-loop driver (CONTRACT.md section 4): the probe's instruments on the user's own training.

    monitor = optdoctor.Monitor(model, optimizer)   # attaches the instruments by hooks
    for x, y in loader:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        monitor.step(loss)                          # after optimizer.step()
    diagnosis = monitor.diagnose()                  # the same Finding objects as `optdoctor diagnose`
    print(monitor.report("text"))                   # any reporter
    monitor.close()                                 # detaches every hook

What it attaches is what a probe attaches (``probes/instruments``): the same instruments, the
same Trace (kind "monitor", the ProbeSet's baseline), the same symptoms, rules and reporters.
Only the clock differs: the user's loop drives it.

When things are measured (``every``, ``checkpoint_every``):

- every step: the training loss and the learning rate (kept as they are, a detached tensor and
  the group's value, converted at the next checkpoint in one stack and one transfer: no device
  synchronisation per step);
- every ``every`` steps (20): per-layer gradient norms, update/weight ratios, a sample of the
  inputs (until 2048 were seen);
- every ``detail_every`` steps (100): activation statistics, gradient histograms and cosines
  (cosines on a measured step and the one after it).

A step where nothing is due costs a few comparisons: each schedule says its next due step
(``Schedule.next``), and the optimizer hooks and the forward hook are on only for the steps that
use them. A measured step runs a handful of fused torch calls; per-layer values are stacked and
derived (ratios, cosines) once, when the trace is made. Measured inside the small-MLP loop
(~0.6 ms a step, benchmarks/monitor_overhead.py): gradient norms + update ratios ~0.15 ms, a
detail step ~1 ms (activations ~0.07 ms per activation layer, histograms ~0.3 ms, cosines
~0.13 ms); one-offs (layer discovery, attaching, step 0 measuring everything) ~3 ms;
- every ``checkpoint_every`` steps (and at ``diagnose``): the losses are moved to the CPU (averaged
  across ranks under torch.distributed), divergence is decided, TensorBoard is written, and,
  when follow-up probes are possible, the state is kept as the last healthy one.

Gradients are read when the optimizer is about to step: after gradient accumulation, and
unscaled under AMP (``GradScaler.step`` unscales before it calls ``optimizer.step``; a step it
skips for inf/NaN is not measured). Clipping (``clip_grad_norm_``) happens before that moment in a
plain loop, so call ``monitor.grads_ready()`` just before clipping to record the unclipped
gradients (the Lightning callback does this at ``on_before_optimizer_step``).

Curvature (the Hessian's extreme eigenvalues, trace and spectral density: ``hess.*``, what the
edge-of-stability, conditioning and minimum/saddle rules read) is measured by the probe's own
``Curvature`` instrument at ``diagnose`` (and, with ``hessian_every``, at every k-th checkpoint),
on the most recent kept batch, with the model as it is then (the last healthy state after a
divergence): Hessian-vector products by double backward on detached aliases of the parameters,
every module in eval mode, the RNG forked, so that training goes on exactly as without it.

Counterfactual rules (learning-rate variants, plateau kicks) need probes the user's run cannot
give; ``diagnose()`` reports them as "not evaluated" and says what would decide them;
``diagnose(follow_up=True)`` runs those probes on batches the monitor kept (pass ``loss_fn`` and
``monitor.step(loss, batch=(x, y))``), as far as the rules' gates ask for them (``follow_up``):
learning-rate variants and a control on copies of the model and optimizer from their current
state (the last healthy one after a divergence); on a plateau, a kicked copy and fresh-seed
models (``model_factory``, or each module's ``reset_parameters``); for unscaled inputs, a fresh
model on raw and on standardised inputs.
"""

from __future__ import annotations

import copy
import math
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from optdoctor import distributed
from optdoctor.probes.instruments import (
    Activations,
    Context,
    DataStats,
    GradCosine,
    GradHistogram,
    GradNorms,
    Instrument,
    InstrumentSet,
    Series,
    UpdateRatios,
    WeightSymmetry,
    discover,
)
from optdoctor.probes.recorder import Recorder
from optdoctor.trace import ProbeSet, Trace

if TYPE_CHECKING:
    from optdoctor.diagnose import Diagnosis

NEVER = 2**62  # no step is due any more (instruments.base.NEVER)
# Same thresholds as the probe runner: a loss beyond this multiple of the initial one has diverged.
DIVERGENCE_FACTOR = 1e4
# A plateau kick: a tenth of a standard init's scale (see probes.runner.PERTURB_EPS).
PERTURB_EPS = 0.1

LOOP_SERIES = (
    Series("loss.train", "step", "training loss of the step's batch (mean over ranks)", tag="loss/train"),
    Series("lr", "step", "learning rate of the step (first parameter group)", tag="lr"),
    Series("loss.val", "step", "validation loss, as passed to Monitor.validate", tag="loss/val"),
    Series("acc.val", "step", "validation accuracy, as passed to Monitor.validate", tag="accuracy/val"),
    Series("loss.train_eval", "step", "mean training loss since the previous validation", tag="loss/train_eval"),
)
# Symptoms only counterfactual probes give (symptoms/variants.py): what follow_up=True decides.
COUNTERFACTUAL = ("lr.", "plateau.", "data.standardize_gain")
# ... and those of reruns on transformed data, which only ``optdoctor diagnose`` runs (it owns the data).
DIAGNOSE_ONLY = ("data.whiten_gain", "data.target_standardize_gain")


def monitor_instruments(every: int, detail_every: int, has_acts: bool = True, seed: int = 0,
                        data_cap: int = 2048) -> list[Instrument]:
    """The probe's instruments (``default_instruments``) minus the probe-only ones (evaluation
    on fixed batches; curvature is measured by ``Monitor.measure_curvature``), plus gradient
    cosines: gradient norms and update ratios every ``every`` steps (four fused torch calls
    together), activation statistics (combined across ranks), gradient histograms and cosines
    every ``detail_every`` steps (one hook per activation module, ~0.07 ms each on the small
    MLP); input statistics on the first ``data_cap`` samples (of this rank: under
    torch.distributed, each rank takes its share of them)."""
    out: list[Instrument] = [GradNorms(every=every), UpdateRatios(every=every), WeightSymmetry()]
    if has_acts:
        out.append(Activations(every=detail_every, window=2, across_ranks=True))  # one training, every rank a share
    out += [GradHistogram(every=detail_every, seed=seed), GradCosine(every=detail_every), DataStats(cap=data_cap)]
    return out


def _loss_name(fn: Callable | None) -> str | None:
    """The built-in loss name (config ``loss:``) of a ``loss_fn`` that is one of torch's own: the
    functional or its module; None for anything else (a user's loss is not assumed convex)."""
    if fn is None:
        return None
    F = torch.nn.functional
    by_fn = {F.mse_loss: "mse", F.cross_entropy: "cross_entropy", F.binary_cross_entropy_with_logits: "bce_with_logits",
             F.nll_loss: "nll"}
    by_type = {nn.MSELoss: "mse", nn.CrossEntropyLoss: "cross_entropy", nn.BCEWithLogitsLoss: "bce_with_logits",
               nn.NLLLoss: "nll"}
    try:
        if fn in by_fn:
            return by_fn[fn]
    except TypeError:  # an unhashable callable
        pass
    return by_type.get(type(fn))


def _unwrap_model(model: nn.Module) -> nn.Module:
    """DistributedDataParallel / DataParallel hold the user's module in ``.module``: hooks and
    layer names go on that one (names then match a single-process run)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _unwrap_optimizer(opt: Any) -> torch.optim.Optimizer:
    """Lightning's and accelerate's optimizer wrappers hold the torch optimizer."""
    for _ in range(5):  # accelerate's AcceleratedOptimizer subclasses Optimizer but holds the real one
        inner = getattr(opt, "optimizer", None) or getattr(opt, "_optimizer", None)
        if inner is None or inner is opt:
            break
        opt = inner
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"Monitor needs a torch.optim.Optimizer (or a wrapper holding one), got {type(opt).__name__}")
    return opt


def _detached(x: Any) -> Any:
    """A copy of a batch (tensors detached and cloned; tuples, lists and dicts walked)."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, (tuple, list)):
        return type(x)(_detached(v) for v in x)
    if isinstance(x, dict):
        return {k: _detached(v) for k, v in x.items()}
    return x


def _as_float(x: Any) -> Any:
    """A step's loss as kept until the next checkpoint: the detached tensor (converted there, all
    steps in one stack and one transfer: no device synchronisation per step; measured on the
    small MLP, even a CPU tensor's ``float()`` per step cost more than that), or a number."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    return float(x)


def diverged(values: Sequence[float], initial: float) -> int | None:
    """Index of the first loss that is non-finite or beyond DIVERGENCE_FACTOR x the initial one.
    (A loop: a checkpoint's ~100 floats take a few microseconds, a handful of numpy calls ~10x.)"""
    limit = DIVERGENCE_FACTOR * max(abs(initial), 1e-3) if math.isfinite(initial) else math.inf
    for i, v in enumerate(values):
        v = float(v)
        if not math.isfinite(v) or abs(v) > limit:
            return i
    return None


def cut_at(trace: Trace, stop: int) -> Trace:
    """The trace as the probe runner leaves a diverged probe: the loss of step ``stop`` recorded,
    nothing measured from that step on."""
    for name, (s, v) in list(trace.series.items()):
        keep = s <= stop if name in ("loss.train", "lr") else s < stop
        trace.series[name] = (s[keep], v[keep])
    trace.hessian = [h for h in trace.hessian if h.get("step", 0) < stop]
    trace.status, trace.stopped_at = "diverged", stop
    return trace


class Monitor:
    """The instruments of a probe, attached to the user's model and optimizer by hooks.

    Args:
        model: the ``nn.Module`` being trained (a DDP wrapper is unwrapped).
        optimizer: its ``torch.optim.Optimizer`` (Lightning/accelerate wrappers are unwrapped).
        every: steps between measurements of per-layer gradient norms and update ratios.
        detail_every: steps between activation statistics, gradient histograms and cosines.
        checkpoint_every: steps between checkpoints (loss to CPU, divergence, TensorBoard).
        tensorboard: folder for a live TensorBoard run (written at each checkpoint, rank 0 only).
        loss_fn: ``loss_fn(output, target) -> scalar``; with kept batches it enables
            ``diagnose(follow_up=True)``.
        keep_batches: how many batches passed to ``step(loss, batch=...)`` are kept (copied):
            the first ones, then one every ``keep_every`` steps, the most recent kept last.
        keep_every: steps between kept batches once ``keep_batches`` are held (default
            ``every``): a copy per step would cost a long job one batch copy every step.
        follow_up_steps: steps of each follow-up probe.
        lr_factors: learning-rate multiples of the follow-up variant probes.
        chance_loss: loss of the best constant predictor, if known (e.g. log(K) for K balanced
            classes); enables the "progress" symptoms.
        grads: "optimizer" reads gradients when the optimizer is about to step (plus any
            ``grads_ready()`` call before it); "manual" only at ``grads_ready()`` (Lightning).
        name: the diagnosis' name in reports.
        rules: a rule pack (``engine.rules.load_rules``); default: the shipped one.
        curvature: measure the Hessian's spectrum at ``diagnose`` (needs ``loss_fn`` and a kept
            batch; not on sharded models).
        hessian: the Hessian settings (``probe.hessian`` of a config: a ``HessianConfig`` or a
            dict of its fields); default: the probe's defaults.
        hessian_every: also measure it at every k-th checkpoint (each costs 20-80
            Hessian-vector products, ~2 gradients each); default: at ``diagnose`` only.
        model_factory: ``() -> nn.Module``, a fresh model as the user builds it, for the
            fresh-seed follow-up probes (local minimum); without it a copy of the model is
            re-initialised by each module's ``reset_parameters`` (torch's default init).
        reseeds: how many fresh-seed follow-up probes a plateau opens.
        reseed_steps: steps of each fresh-seed probe (default: ``follow_up_steps``).
    """

    def __init__(self, model: nn.Module, optimizer: Any, *, every: int = 20, detail_every: int = 100,
                 checkpoint_every: int = 100,
                 tensorboard: str | Path | None = None, loss_fn: Callable | None = None, keep_batches: int = 8,
                 keep_every: int | None = None,
                 follow_up_steps: int = 50, lr_factors: Sequence[float] = (0.1, 10.0),
                 chance_loss: float | None = None, grads: str = "optimizer", name: str = "monitor",
                 rules: Sequence[Any] | None = None, curvature: bool = True, hessian: Any = None,
                 hessian_every: int | None = None, model_factory: Callable[[], nn.Module] | None = None,
                 reseeds: int = 3, reseed_steps: int | None = None) -> None:
        if min(every, detail_every, checkpoint_every) < 1:
            raise ValueError("every, detail_every and checkpoint_every must be >= 1")
        if grads not in ("optimizer", "manual"):
            raise ValueError(f"grads must be 'optimizer' or 'manual', got {grads!r}")
        self.model = _unwrap_model(model)
        self.optimizer = _unwrap_optimizer(optimizer)
        # FSDP2/DTensor: gradients are sharded; per-layer norms need one all-reduce of squared norms
        # per measurement (ShardedGradNorms). The other instruments read whole tensors: not measured.
        self.sharded = any(type(p).__name__ == "DTensor" for p in self.model.parameters())
        self.every, self.detail_every, self.checkpoint_every = every, detail_every, checkpoint_every
        self.loss_fn, self.follow_up_steps, self.lr_factors = loss_fn, follow_up_steps, tuple(lr_factors)
        self.chance_loss, self.grads_mode, self.name = chance_loss, grads, name
        self.tensorboard = Path(tensorboard) if tensorboard is not None else None
        self._rules = list(rules) if rules is not None else None
        if hessian_every is not None and hessian_every < 1:
            raise ValueError("hessian_every must be >= 1 (or None: at diagnose only)")
        self.curvature, self.hessian_every = curvature, hessian_every
        self._hcfg = _hessian_config(hessian)
        self._hessian_rows: list[dict] = []
        self._hessian_errors: list[str] = []
        self._checkpoints = 0
        self.model_factory, self.reseeds = model_factory, reseeds
        self.reseed_steps = reseed_steps
        self.follow_up_skipped: dict[str, str] = {}  # follow-up probe -> why it could not run
        self._affine: float | None = None  # probes.affine (None: untested)
        self._affine_input: Any = None  # the first training batch's first items, until tested
        self.step_count = 0  # training steps taken (calls to step())
        self.status = "completed"
        self.stopped_at: int | None = None
        self.diagnosis = None
        self._kept: deque = deque(maxlen=keep_batches)
        self.keep_every = every if keep_every is None else keep_every
        if self.keep_every < 1:
            raise ValueError("keep_every must be >= 1")
        self._pending: list[tuple] = []  # (step, detached loss, a number or None, lr as the group holds it) not yet checked
        self._initial: float | None = None
        self._val_losses: list[float] = []  # training losses since the previous validate()
        self._grads_done = -1  # step whose gradients are final (grads_ready ran)
        self._grads_step = -1  # step whose gradients some instrument read
        self._fwd_step = -1  # step whose forward some instrument watched
        self._next_grads = self._next_state = self._next_fwd = 0
        self._healthy: tuple[int, dict, dict] | None = None  # (step, model state, optimizer state)
        self._tb_writer = None
        self._tb_done = 0  # steps below this were written to TensorBoard
        self._closed = False
        self.rec = Recorder()
        self.rec.declare(LOOP_SERIES)
        self.instruments: InstrumentSet | None = None
        self._order: list[str] = []  # first-call order of layers (fallback discovery)
        self._order_handles: list = []
        self._handles = [self.model.register_forward_pre_hook(self._first_forward, with_kwargs=True)]
        for n, m in self.model.named_modules():
            if any(p.requires_grad for p in m.parameters(recurse=False)) or m is not self.model:
                self._order_handles.append(m.register_forward_hook(self._make_order_hook(n or "model")))
        self._opt_handles: list = []  # the optimizer's step hooks: on only for steps that use them
        self._hook_optimizer(True)

    # --- context manager -------------------------------------------------------------------
    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- attaching: layer order fixed at the first training forward --------------------------
    def _make_order_hook(self, name: str) -> Callable:
        def hook(module, _inp, _out):
            if module.training and name not in self._order:
                self._order.append(name)

        return hook

    def _first_forward(self, module, args, kwargs) -> None:
        if self.instruments is not None or not module.training or self._closed:
            return
        inputs = (args[0] if len(args) == 1 else tuple(args)) if args else (dict(kwargs) if kwargs else None)
        layers, acts = discover(module, inputs)
        if not self.sharded and inputs is not None:  # (a shard is not the model's function)
            from optdoctor.probes.affine import first_items

            self._affine_input = first_items(inputs)  # tested at the first trace(), off the loop
        self._attach(layers, acts)
        self.instruments.step = self.step_count
        # this very forward is the first training step: instruments that watch it start now
        self._fwd_step = self.step_count
        for inst in self._wanting_forward(self.step_count):
            inst.before_forward(self.step_count)

    def _wanting_forward(self, i: int) -> list[Instrument]:
        # (input statistics watch the training forwards with a hook of their own, until their cap)
        return [inst for inst in self._forward_insts if inst.due(i)]

    def _next_grads_after(self, i: int) -> int:
        """The first step after ``i`` whose gradients some instrument reads: one it is due at, or,
        for one that ``follows`` (gradient cosines compare two successive steps), the step after."""
        return min((min(inst.next_due(i + 1), inst.next_due(i) + 1) if inst.follows else inst.next_due(i + 1)
                    for inst in self._grads_insts), default=NEVER)

    def _arm_forward(self) -> None:
        """Put the forward pre-hook on for the next step when an instrument watches its forward."""
        if self._fwd_handle is not None:
            self._fwd_handle.remove()
            self._fwd_handle = None
        i = self.step_count
        if i < self._next_fwd:
            return
        self._next_fwd = min((inst.next_due(i + 1) for inst in self._forward_insts), default=NEVER)
        if self.instruments is None or self.status == "diverged" or self._closed or not self._wanting_forward(i):
            return

        def pre_forward(module, args, kwargs):
            if module.training and self.instruments is not None:
                if self._fwd_handle is not None:
                    self._fwd_handle.remove()
                    self._fwd_handle = None
                self._fwd_step = i
                for inst in self._wanting_forward(i):
                    inst.before_forward(i)

        self._fwd_handle = self.model.register_forward_pre_hook(pre_forward, with_kwargs=True)

    def _attach_from_call_order(self) -> None:
        """The root module's forward never ran (a LightningModule whose training_step calls a
        submodule): order the layers by their first call in this step's forward."""
        from optdoctor.probes.instruments import activation_modules, parametrised_layers

        rank = {n: i for i, n in enumerate(self._order)}
        layers = sorted(parametrised_layers(self.model), key=lambda t: rank.get(t[0], len(rank)))
        acts = sorted(activation_modules(self.model), key=lambda t: rank.get(t[0], len(rank)))
        self._attach(layers, acts)

    def _attach(self, layers, acts) -> None:
        for h in self._order_handles:
            h.remove()
        self._order_handles = []
        opt = self.optimizer
        group = opt.param_groups[0]
        ctx = Context(self.model, None, self.rec, layers, acts, meta={
            "kind": "monitor", "lr": float(group["lr"]), "lr_factor": 1.0, "seed": 0,
            "optimizer": type(opt).__name__.lower(),
            "optimizer_args": {k: v for k, v in group.items() if k not in ("params", "lr") and isinstance(v, (int, float, bool))},
            "n_params": sum(p.numel() for p in self.model.parameters()),
            "chance_loss": self.chance_loss, "world_size": distributed.world_size(), "every": self.every,
        })
        if self.sharded:
            from optdoctor.probes.instruments.sharded_grad_norms import ShardedGradNorms

            self.instruments = InstrumentSet([ShardedGradNorms(every=self.every)])
        else:
            self.instruments = InstrumentSet(monitor_instruments(self.every, self.detail_every, has_acts=bool(acts),
                                                                 data_cap=max(1, 2048 // distributed.world_size())))
        # no optimizer in the context while attaching: the set must not hook it (the monitor owns
        # the clock: its own optimizer hooks dispatch, so that grads_ready() can come first)
        self.instruments.attach(ctx)  # hooks the model's forward; measures the state at step 0
        ctx.optimizer = opt
        # Any forward hook on the root sends every call through torch's slow path: the set's
        # forward pre-hook goes on only for the steps that need it (``_arm_forward``).
        for h in self.instruments._handles:
            h.remove()
        self.instruments._handles = []
        self._handles[0].remove()  # the first-forward hook: its work is done
        self._forward_insts = self.instruments._with("forward")
        self._grads_insts = self.instruments._with("grads")
        self._update_insts = self.instruments._with("update")
        self._state_insts = self.instruments._with("state")
        self._fwd_handle = None
        # The next step at which each kind of moment has work (``Schedule.next``): a step before
        # them costs a comparison, not a question to every instrument.
        i = self.step_count
        self._next_grads = self._next_grads_after(i - 1)
        self._next_state = min((inst.next_due(i + 1) for inst in self._state_insts), default=NEVER)
        self._next_fwd = min((inst.next_due(i + 1) for inst in self._forward_insts), default=NEVER)
        if self.loss_fn is not None and not self.sharded:
            self._keep_state()

    def _hook_optimizer(self, on: bool) -> None:
        """Put the optimizer step pre-/post-hooks on or off (torch calls every hook on every step:
        off, an unmeasured step costs nothing there)."""
        if on and not self._opt_handles:
            self._opt_handles = [self.optimizer.register_step_pre_hook(self._pre_step),
                                 self.optimizer.register_step_post_hook(self._post_step)]
        elif not on and self._opt_handles:
            for h in self._opt_handles:
                h.remove()
            self._opt_handles = []

    # --- the moments of a step -------------------------------------------------------------
    def grads_ready(self) -> None:
        """Gradients of this step are final (accumulated, unscaled) and not yet clipped: measure
        them now. Without this call they are read at ``optimizer.step()``."""
        if self._closed or self.status == "diverged":
            return
        if self.instruments is None:
            self._attach_from_call_order()
        i = self.step_count
        if self._grads_done == i:
            return
        self._grads_done = i
        if i < self._next_grads:  # most steps: nothing reads these gradients
            return
        self._grads_step = i
        self.instruments.step = i
        for inst in self._grads_insts:  # a measured step (and the one after it: gradient cosines)
            if inst.due(i) or (inst.follows and inst.due(i - 1)):
                inst.after_backward(i)
        self._next_grads = self._next_grads_after(i)

    def _pre_step(self, _opt, _args, _kwargs) -> None:
        if self.grads_mode == "optimizer":
            self.grads_ready()

    def _post_step(self, _opt, _args, _kwargs) -> None:
        if self._closed or self.instruments is None or self.status == "diverged" or self._grads_done != self.step_count:
            return
        i = self.step_count
        if self._grads_step == i or self._fwd_step == i:  # updates matter after a measured step only
            for inst in self._update_insts:
                inst.after_step(i)
        if i + 1 >= self._next_state:
            for inst in self._state_insts:
                if inst.due(i + 1):
                    inst.at_state(i + 1)
            self._next_state = min((inst.next_due(i + 2) for inst in self._state_insts), default=NEVER)

    def step(self, loss: Any = None, batch: Any = None) -> None:
        """One training step is done (call after ``optimizer.step()``). ``loss``: its training
        loss (a tensor or a float); ``batch``: its ``(inputs, target)``, kept for follow-up probes."""
        if self._closed:
            raise RuntimeError("Monitor.step after close()")
        i = self.step_count
        # kept as is (a detached loss tensor, the group's lr): converted at the next checkpoint
        self._pending.append((i, None if loss is None else _as_float(loss), self.optimizer.param_groups[0]["lr"]))
        if batch is not None and self._kept.maxlen and (len(self._kept) < self._kept.maxlen or i % self.keep_every == 0):
            self._kept.append(_detached(batch))
        self.step_count = i + 1
        if self.instruments is not None:
            nxt = self.instruments.step = self.step_count
            # most steps: no hook is on and the next step measures nothing (nothing to change)
            if (self._fwd_handle is not None or self._opt_handles or nxt >= self._next_fwd
                    or nxt >= self._next_grads or nxt + 1 >= self._next_state):
                self._arm_forward()
                # the next step needs the optimizer's hooks if its gradients, its update or its
                # forward are measured, or the state after it
                self._hook_optimizer(nxt >= self._next_grads or nxt + 1 >= self._next_state or self._fwd_handle is not None)
        if self.step_count % self.checkpoint_every == 0:
            self.checkpoint()

    def validate(self, loss: float, acc: float | None = None) -> None:
        """Validation loss (and accuracy) of the model as it is now, for the generalisation rules.
        The matching training loss is the mean training loss since the previous validation."""
        self._flush()
        i = self.step_count
        self.rec.log("loss.val", i, float(loss))
        if acc is not None:
            self.rec.log("acc.val", i, float(acc))
        train = self._val_losses or [float("nan")]
        self.rec.log("loss.train_eval", i, float(np.mean(train)))
        self._val_losses = []

    # --- checkpoints -----------------------------------------------------------------------
    def _flush(self) -> None:
        """Pending losses -> CPU (mean over ranks: one all-reduce, called on every rank); decides
        divergence; stops measuring once diverged."""
        if not self._pending:  # every rank calls step() as often: then no rank has losses pending
            return
        pending, self._pending = self._pending, []
        self.rec.extend("lr", [s for s, _, _ in pending], [float(lr) for _, _, lr in pending])
        pending = [(s, v) for s, v, _ in pending if v is not None]
        if not pending:
            return
        steps = [s for s, _ in pending]
        vals = [v for _, v in pending]
        on_device = [j for j, v in enumerate(vals) if isinstance(v, torch.Tensor)]
        if on_device:  # one transfer for all of them
            losses = [vals[j] for j in on_device]
            if not all(v.dim() == 0 for v in losses):  # a loss of shape (1,)
                losses = [v.reshape(()) for v in losses]
            got = torch.stack(losses).to(torch.float64).cpu().tolist()
            for j, v in zip(on_device, got):
                vals[j] = v
        if distributed.active():
            vals = distributed.mean_across_ranks(torch.tensor(vals, dtype=torch.float64)).tolist()
        self.rec.extend("loss.train", steps, vals)
        if self._initial is None:
            finite = [v for v in vals if math.isfinite(v)]
            if finite:
                self._initial = vals[0] if math.isfinite(vals[0]) else finite[0]
        if self.status != "diverged":
            bad = diverged(vals, self._initial if self._initial is not None else float("nan"))
            if bad is not None:
                self.status, self.stopped_at = "diverged", steps[bad]
                if self.instruments is not None:
                    self.instruments.detach()  # nothing more to learn from NaN weights
            else:
                self._val_losses.extend(vals)

    def checkpoint(self) -> None:
        """Losses checked, divergence decided, TensorBoard written, healthy state kept. Runs by
        itself every ``checkpoint_every`` steps; every rank must reach it together."""
        self._flush()
        if self.status != "diverged" and self.loss_fn is not None and not self.sharded:
            self._keep_state()
        self._checkpoints += 1
        if self.hessian_every and self._checkpoints % self.hessian_every == 0 and distributed.is_main():
            self.measure_curvature()  # rank 0 only: no collective inside (the unwrapped module)
        if self.tensorboard is not None and distributed.is_main():
            self._write_tensorboard()

    def _keep_state(self) -> None:
        params = [p for p in self.model.parameters()]
        if params and not all(bool(torch.isfinite(n)) for n in torch._foreach_norm([p.detach() for p in params])):
            return
        model_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self._healthy = (self.step_count, model_state, copy.deepcopy(self.optimizer.state_dict()))

    # --- curvature -------------------------------------------------------------------------
    def measure_curvature(self) -> dict | None:
        """The Hessian's spectrum now (the last healthy state after a divergence) on the most
        recent kept batch, by the probe's ``Curvature`` instrument: one row of ``trace.hessian``
        (None when it cannot be measured: no ``loss_fn`` or kept batch, a sharded model, or
        ``curvature=False``). Training is not perturbed: products of detached aliases (no
        ``.grad`` written), every module in eval mode and its flag restored, the RNG forked.
        Measured once per step: calling it again without training returns the same row."""
        from optdoctor.probes.instruments.curvature import Curvature

        if not self.curvature or self.loss_fn is None or not self._kept or self.sharded or self.instruments is None:
            return None
        if self.status == "diverged":
            if self._healthy is None:
                return None
            step, state = self._start_state()
            model, opt = self._copy(state, 1.0)
        else:
            step, model, opt = self.step_count, self.model, self.optimizer
        for row in self._hessian_rows:
            if row["step"] == step:
                return row
        inst = Curvature([step], self.loss_fn, _bound(self._kept[-1]), self._hcfg, seed=0)
        inst.attach(Context(model, opt, Recorder(), []))
        devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
        grads = [(p, p.grad) for p in model.parameters()]
        with torch.random.fork_rng(devices=devices):
            inst.at_state(step)
        for p, g in grads:  # nothing measured leaves a gradient behind (double backward writes none)
            if p.grad is not g:
                p.grad = g
        self._hessian_errors.extend(inst.errors)
        if not inst.rows:
            return None
        inst.rows[-1]["lr"] = float(opt.param_groups[0]["lr"])  # the rate it steps with now (schedules)
        self._hessian_rows.append(inst.rows[-1])
        return inst.rows[-1]

    # --- the trace and the diagnosis -------------------------------------------------------
    def trace(self) -> Trace:
        """Everything measured so far, as a Trace (kind "monitor"); measuring goes on."""
        self._flush()
        trace = Trace("baseline")
        rec = Recorder()
        rec._declared = dict(self.rec._declared)
        rec._rows.update({k: list(v) for k, v in self.rec._rows.items()})
        if self.instruments is not None:
            ctx = self.instruments.ctx
            for k, v in ctx.meta.items():
                trace.meta.setdefault(k, v)
            rec.finish(trace)
            for inst in self.instruments.instruments:
                inst.finish(trace)
        else:
            rec.finish(trace)
        rec.describe(trace)
        trace.hessian.extend(dict(r) for r in sorted(self._hessian_rows, key=lambda r: r["step"]))
        if self._hessian_errors:
            trace.meta["hessian_errors"] = list(self._hessian_errors)
        affine = self._affine_verdict()
        trace.meta.update({"kind": "monitor", "steps": self.step_count, "chance_loss": self.chance_loss,
                           "affine": affine, "loss": _loss_name(self.loss_fn)})
        if affine is not None:  # with the loss's name, model.deep_linear (OD203's rule-out)
            from optdoctor.probes.affine import linear_share

            share = linear_share(self.model)
            trace.meta["linear_share"] = None if math.isnan(share) else share
        if self.status == "diverged" and self.stopped_at is not None:
            cut_at(trace, self.stopped_at)
        return trace

    def _affine_verdict(self) -> float | None:
        """Whether the model is affine in its input (probes.affine), tested once, on the first
        training batch's first items and the model as it is then: linear stacks stay linear and
        nonlinear nets nonlinear as they train, and the test (a float64 copy, up to 13 forward
        passes) stays out of the training loop."""
        if self._affine_input is not None:
            from optdoctor.probes.affine import affine_in_input

            a = affine_in_input(self.model, self._affine_input)
            self._affine, self._affine_input = (None if math.isnan(a) else a), None
        return self._affine

    def probes(self) -> ProbeSet:
        """The monitored run as a ProbeSet whose baseline it is (what symptoms read)."""
        t = self.trace()
        return ProbeSet({"baseline": t}, dict(t.meta.get("data_stats", {})))

    def diagnose(self, follow_up: bool = False, selection: Any = None) -> "Diagnosis":
        """Symptoms, rules and findings of the run so far: a ``Diagnosis`` whose ``findings``
        are the same ``Finding`` objects ``optdoctor diagnose`` gives. Counterfactual rules are
        "not evaluated" unless ``follow_up`` runs their probes (needs ``loss_fn`` and kept
        batches). Every rank must call it; rank 0 decides, every rank gets its diagnosis."""
        t0 = time.perf_counter()
        self._flush()
        self._reduce_across_ranks()
        diag = None
        if distributed.is_main():
            diag = self._diagnose_here(follow_up, selection)
            diag.seconds = time.perf_counter() - t0
        self.diagnosis = distributed.broadcast_from_main(diag)
        return self.diagnosis

    def _reduce_across_ranks(self) -> None:
        """Statistics each rank took of its own share of the data, made those of all of it
        (input statistics; activation statistics are combined as they are measured). Every rank
        calls this (from ``diagnose``) with the same instruments: every collective is called on
        every rank."""
        if not distributed.active() or self.instruments is None:
            return
        for inst in self.instruments.instruments:
            reduce = getattr(inst, "reduce_across_ranks", None)
            if reduce is not None:
                reduce()

    def _diagnose_here(self, follow_up: bool, selection: Any):
        self.measure_curvature()
        probes = self.probes()
        extra: dict[str, float] = {}
        if follow_up:
            if self.sharded:
                raise NotImplementedError("follow-up probes on sharded (FSDP/DTensor) models are not supported yet")
            if self.loss_fn is None or not self._kept:
                raise ValueError("follow_up=True needs Monitor(..., loss_fn=...) and batches kept by "
                                 "monitor.step(loss, batch=(inputs, target))")
            for name, t in self.follow_up(probes, selection).traces.items():
                if name != "baseline":
                    probes.traces[f"followup_{name}"] = t
            extra = self._followup_symptoms
        return evaluate(probes, self._rules, selection, extra, self.name, follow_up)

    def report(self, fmt: str = "text", fail_on: str = "error") -> str:
        """The diagnosis (``diagnose()`` if not yet run) in any reporter's format."""
        from optdoctor.report import REPORTERS

        if fmt not in REPORTERS:
            raise ValueError(f"unknown format {fmt!r}; known: {', '.join(sorted(REPORTERS))}")
        if self.diagnosis is None:
            self.diagnose()
        return REPORTERS[fmt](self.diagnosis, fail_on)

    def close(self) -> None:
        """Detach every hook (idempotent); closes the TensorBoard writer after a last write."""
        if self._closed:
            return
        if self.tensorboard is not None and distributed.is_main():
            self._write_tensorboard()
        self._closed = True
        for h in self._handles + self._order_handles + ([self._fwd_handle] if getattr(self, "_fwd_handle", None) else []):
            h.remove()
        self._handles, self._order_handles, self._fwd_handle = [], [], None
        self._hook_optimizer(False)
        if self.instruments is not None:
            self.instruments.detach()
        if self._tb_writer is not None:
            self._tb_writer.close()
            self._tb_writer = None

    # --- live TensorBoard ------------------------------------------------------------------
    def _write_tensorboard(self) -> None:
        """Append the steps measured since the last write to one open event file."""
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        from optdoctor.report.tensorboard import scalar_points

        if self._tb_writer is None:
            folder = self.tensorboard / self.name
            folder.mkdir(parents=True, exist_ok=True)
            self._tb_writer = EventFileWriter(str(folder), max_queue_size=1024)
        upto = self.step_count if self.status != "diverged" else min(self.step_count, (self.stopped_at or 0) + 1)  # exclusive
        by_step: dict[int, list] = {}
        for tag, (steps, values) in scalar_points(self.trace()).items():
            for s, v in zip(steps.tolist(), values.tolist()):
                if self._tb_done <= s < upto:
                    by_step.setdefault(s, []).append(Summary.Value(tag=tag, simple_value=v))
        now = time.time()
        for s in sorted(by_step):
            self._tb_writer.add_event(Event(wall_time=now, step=s, summary=Summary(value=by_step[s])))
        self._tb_writer.flush()
        self._tb_done = max(self._tb_done, upto)

    # --- follow-up probes ------------------------------------------------------------------
    def _copy_model(self) -> nn.Module:
        """A deep copy of the model without the monitor's hooks (in training mode)."""
        memo: dict = {}
        m = copy.deepcopy(self.model, memo)
        handles = list(self._handles) + list(self._order_handles) + ([self._fwd_handle] if getattr(self, "_fwd_handle", None) else [])
        if self.instruments is not None:
            handles += self.instruments._handles + [h for i in self.instruments.instruments for h in getattr(i, "_handles", [])]
            handles += [h for i in self.instruments.instruments for h in [getattr(i, "_handle", None)] if h is not None]
        for h in handles:  # the copied hook dicts are in memo: drop our hooks from them
            for ref in [h.hooks_dict_ref] + list(getattr(h, "extra_dict_ref", ())):
                d = ref()
                if d is not None and id(d) in memo:
                    memo[id(d)].pop(h.id, None)
        m.train()
        return m

    def _optimizer_for(self, m: nn.Module, fresh: bool = False) -> torch.optim.Optimizer:
        """The optimizer's class and hyperparameters on ``m``'s parameters (no state). ``fresh``:
        each group's learning rate as the run started (``initial_lr``, set by schedulers)."""
        index = {id(p): i for i, p in enumerate(self.model.parameters())}
        new = list(m.parameters())
        groups = []
        for g in self.optimizer.param_groups:
            hyper = {k: v for k, v in g.items() if k not in ("params", "initial_lr")}
            if fresh and "initial_lr" in g:
                hyper["lr"] = g["initial_lr"]
            groups.append({**hyper, "params": [new[index[id(p)]] for p in g["params"]]})
        return type(self.optimizer)(groups)

    def _copy(self, state: tuple[dict, dict], lr_factor: float) -> tuple[nn.Module, torch.optim.Optimizer]:
        """A copy of the model and the optimizer in ``state``, without the monitor's hooks."""
        model_state, opt_state = state
        m = self._copy_model()
        m.load_state_dict(model_state)
        opt = self._optimizer_for(m)
        opt.load_state_dict(copy.deepcopy(opt_state))
        for g in opt.param_groups:
            g["lr"] = g["lr"] * lr_factor
        return m, opt

    def _fresh(self, seed: int) -> tuple[nn.Module, torch.optim.Optimizer] | str:
        """A freshly initialised model (seeded; the RNG is forked) and a fresh optimizer, or why
        there is none. ``model_factory`` builds it as the user does; otherwise a copy of the model
        is re-initialised by each module's ``reset_parameters`` (torch's default init, which may
        differ from the user's), and a parameter no module can re-initialise makes it impossible."""
        first = next(self.model.parameters(), None)
        devices = [first.device.index or 0] if first is not None and first.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            if self.model_factory is not None:
                m = _unwrap_model(self.model_factory())
                if first is not None:
                    m = m.to(first.device)
                if [(n, p.shape) for n, p in m.named_parameters()] != [(n, p.shape) for n, p in self.model.named_parameters()]:
                    return "model_factory() builds a model whose parameters differ from the monitored one's"
                m.train()
            else:
                m = self._copy_model()
                done: set[int] = set()
                for mod in m.modules():
                    reset = getattr(mod, "reset_parameters", None) or getattr(mod, "_reset_parameters", None)
                    if callable(reset):
                        reset()
                        done.update(id(p) for p in mod.parameters())
                missed = [n for n, p in m.named_parameters() if id(p) not in done]
                if missed:
                    return (f"no reset_parameters() re-initialises {', '.join(missed[:3])}"
                            f"{' ...' if len(missed) > 3 else ''}: pass Monitor(model_factory=...)")
        return m, self._optimizer_for(m, fresh=True)

    def _start_state(self) -> tuple[int, tuple[dict, dict]]:
        if self.status != "diverged":
            self._keep_state()  # the current state, when its weights are finite
        if self._healthy is None:
            raise ValueError("no state with finite weights was kept to start follow-up probes from")
        step, ms, os_ = self._healthy
        return step, (ms, os_)

    def _run_copy(self, name: str, kind: str, state, lr_factor: float, base_meta: dict, perturb: float = 0.0) -> Trace:
        model, opt = self._copy(state, lr_factor)
        if perturb:
            gen = torch.Generator().manual_seed(7919)
            with torch.no_grad():
                for p in model.parameters():
                    if p.requires_grad and p.is_floating_point():
                        fan_in = p[0].numel() if p.dim() >= 2 else 1
                        p.add_((torch.randn(p.shape, generator=gen, dtype=p.dtype) * (perturb / math.sqrt(fan_in))).to(p.device))
        return self._train(name, kind, model, opt, {**base_meta, "lr_factor": lr_factor, "perturb": perturb}, self.follow_up_steps)

    def _train(self, name: str, kind: str, model: nn.Module, opt: torch.optim.Optimizer, meta: dict, steps: int,
               transform: Callable[[Any], Any] | None = None) -> Trace:
        """``steps`` steps of ``model`` on the kept batches (inputs through ``transform``), as a
        probe trace: losses per step, activation statistics five times, stopped at a divergence."""
        from optdoctor.probes.instruments import Activations as Acts

        batches = list(self._kept)
        rec = Recorder()
        rec.declare(LOOP_SERIES)
        trace = Trace(name, meta={**meta, "kind": kind, "lr": float(opt.param_groups[0]["lr"]), "steps": steps})
        acts = None  # activation statistics: the dead fraction of the low-LR variant is evidence (OD406)
        if self.instruments is not None and self.instruments.ctx.acts:
            mods = dict(model.named_modules())
            pairs = [(n, n.split(":")[0], k) for n, _, k in self.instruments.ctx.acts]
            ctx = Context(model, None, rec, [], [(n, mods[m], k) for n, m, k in pairs if m in mods])
            acts = InstrumentSet([Acts(every=max(1, steps // 5), window=2)])
            acts.attach(ctx)
        initial = None
        try:
            for s in range(steps):
                X, y = batches[s % len(batches)]
                if transform is not None:
                    X = transform(X)
                if acts is not None:
                    acts.step = s
                out = model(*X) if isinstance(X, tuple) else (model(**X) if isinstance(X, dict) else model(X))
                loss = self.loss_fn(out, y)
                lval = float(loss.detach())
                rec.log("loss.train", s, lval)
                initial = lval if initial is None else initial
                if diverged([lval], initial) is not None:
                    trace.status, trace.stopped_at = "diverged", s
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if acts is not None:
                    for inst in acts.instruments:
                        inst.after_step(s)
        finally:
            if acts is not None:
                acts.detach()
                acts.finish(trace)
            rec.finish(trace)
        return trace

    def _standardizer(self) -> Callable[[torch.Tensor], torch.Tensor] | str:
        """Inputs -> inputs with each feature at zero mean and unit std over the kept batches (as
        ``probe.standardize_inputs`` does), or why not (inputs that are not one float tensor)."""
        xs = [X for X, _ in self._kept]
        if not all(isinstance(X, torch.Tensor) and X.is_floating_point() and X.dim() >= 2 for X in xs):
            return "the kept inputs are not float tensors of (samples, features...)"
        flat = torch.cat([X.detach().reshape(len(X), -1).double() for X in xs])
        mean, std = flat.mean(dim=0), flat.std(dim=0)
        std = torch.where(std > 0, std, torch.ones_like(std))

        def standardize(X: torch.Tensor) -> torch.Tensor:
            return ((X.reshape(len(X), -1).double() - mean) / std).to(X.dtype).reshape(X.shape)

        return standardize

    def follow_up(self, probes: ProbeSet | None = None, selection: Any = None) -> ProbeSet:
        """The counterfactual probes, on the kept batches, as far as the rules ask for them:

        - always: a control at the same learning rate from the current (or last healthy) state
          (the set's baseline) and the learning-rate variants from that same state;
        - when a selected rule's gate opens the "plateau" follow-ups (OD202, OD203): the control
          kicked by a small random perturbation, and ``reseeds`` fresh initialisations
          (``reseed_steps`` steps each) -- does another start get much further?
        - when one opens "standardized" (OD204): a fresh initialisation trained on raw and on
          standardised inputs (same seed): does the inputs' scale spread matter?

        The gates are the rules' own (``diagnose.gate``), with the selection's params. A probe
        that cannot run says why in ``self.follow_up_skipped``."""
        from optdoctor.diagnose.gate import plateau_gate
        from optdoctor.engine.rules import load_rules
        from optdoctor.symptoms import extract

        probes = probes or self.probes()
        base = probes.baseline
        step, state = self._start_state()
        meta = {k: v for k, v in base.meta.items() if k in ("optimizer", "optimizer_args", "chance_loss", "layers", "act_layers", "act_kinds")}
        meta["start_step"] = step
        gate = plateau_gate(self._rules if self._rules is not None else load_rules(), selection)
        self.follow_up_skipped: dict[str, str] = {}
        out = ProbeSet()
        out.traces["baseline"] = self._run_copy("control", "continued", state, 1.0, meta)
        for f in self.lr_factors:
            out.traces[f"lr_x{f:g}"] = self._run_copy(f"lr_x{f:g}", "lr_variant", state, f, meta)
        fresh_meta = {**meta, "start_step": 0, "lr_factor": 1.0, "perturb": 0.0}
        if gate(probes, "plateau"):
            out.traces["continued"] = out.traces["baseline"]
            out.traces["perturbed"] = self._run_copy("perturbed", "perturbed", state, 1.0, meta, perturb=PERTURB_EPS)
            for i in range(1, self.reseeds + 1):  # seeds 1..n, as the probe runner's reseed_i
                made = self._fresh(i)
                if isinstance(made, str):
                    self.follow_up_skipped["reseed"] = made
                    break
                out.traces[f"reseed_{i}"] = self._train(f"reseed_{i}", "reseed", *made, {**fresh_meta, "seed": i},
                                                        self.reseed_steps or self.follow_up_steps)
        std_sym: dict[str, float] = {}
        if gate(probes, "standardized"):
            standardize, made = self._standardizer(), self._fresh(0)
            why = standardize if isinstance(standardize, str) else (made if isinstance(made, str) else None)
            if why is not None:
                self.follow_up_skipped["standardized"] = why
            else:
                steps = self.reseed_steps or self.follow_up_steps
                raw = self._train("raw", "reseed", *made, {**fresh_meta, "seed": 0}, steps)
                std_model, std_opt = self._fresh(0)
                std = self._train("standardized", "standardized", std_model, std_opt,
                                  {**fresh_meta, "seed": 0, "standardize_inputs": True}, steps, standardize)
                out.traces["standardized"] = std
                out.traces["standardized_raw"] = raw
                std_sym = extract(ProbeSet({"baseline": raw, "standardized": std}))
        sym = extract(ProbeSet({n: t for n, t in out.traces.items() if n not in ("standardized", "standardized_raw")}))
        sym.update({k: v for k, v in std_sym.items() if k == "data.standardize_gain"})
        self._followup_symptoms = {k: v for k, v in sym.items() if k.startswith(COUNTERFACTUAL)}
        # a diverged monitored run is compared as the probe runner compares a diverged baseline
        if base.status == "diverged":
            for key in ("up", "down"):
                if f"lr.{key}_gain" in self._followup_symptoms:
                    div = self._followup_symptoms.get(f"lr.{key}_diverged", 0.0)
                    self._followup_symptoms[f"lr.{key}_gain"] = -1.0 if div else 1.0
        return out


def _pipeline():
    """The one place the monitor imports the diagnosis pipeline (``optdoctor.diagnose``):
    ``Diagnosis`` and symptoms at each checkpoint (``snapshots``); the follow-ups' gates are
    ``diagnose.gate``'s."""
    from optdoctor.diagnose import Diagnosis, snapshots, summarize

    def make(*args, **kw):  # what reporters show is computed once, upstream (diagnose.summarize)
        diag = Diagnosis(*args, **kw)
        diag.summary = summarize(diag.probes, diag.findings)
        return diag

    return make, snapshots


def evaluate(probes: ProbeSet, rules=None, selection=None, extra: dict[str, float] | None = None,
             name: str = "monitor", followed_up: bool = False):
    """Where the monitor meets the diagnosis pipeline: symptoms at each checkpoint
    (``diagnose.snapshots``), plus the follow-up probes' counterfactual symptoms, through the
    rules -> a ``Diagnosis``. Rules that only counterfactual probes can decide say so."""
    from optdoctor.engine.evaluate import evaluate as run_rules
    from optdoctor.engine.rules import load_rules
    from optdoctor.findings import RuleOutcome

    Diagnosis, snapshots = _pipeline()
    rules = list(rules) if rules is not None else load_rules()
    snaps = [(s, {**sym, **(extra or {})}) for s, sym in snapshots(probes)]
    findings, outcomes = run_rules(rules, snaps, selection)
    hint = "counterfactual: monitor.diagnose(follow_up=True) decides it" if not followed_up else "the follow-up probes could not decide it"
    fixed = []
    for o in outcomes:
        missing = o.reason.split(": ", 1)[-1].split(", ") if o.status == "not_evaluated" else []
        if any(n.startswith(DIAGNOSE_ONLY) for n in missing):
            o = RuleOutcome(o.rule, o.name, o.cause, o.status, f"{o.reason} (a rerun on transformed inputs or targets: "
                                                               "`optdoctor diagnose` on a config decides it)")
        elif any(n.startswith(COUNTERFACTUAL) for n in missing):
            o = RuleOutcome(o.rule, o.name, o.cause, o.status, f"{o.reason} ({hint})")
        fixed.append(o)
    return Diagnosis(name, name, findings, fixed, snaps[-1][1], probes, "completed")


def _hessian_config(h: Any):
    """The probe's Hessian settings (``config.schema.HessianConfig``) from None, a dict or one."""
    from optdoctor.config.schema import HessianConfig

    if h is None:
        return HessianConfig()
    if isinstance(h, dict):
        return HessianConfig(**h)
    return h


def _bound(batch: Any) -> tuple[Any, Any]:
    """A kept ``(inputs, target)`` as the curvature code calls the model: a tuple of inputs as
    positional arguments, a dict as keyword arguments (``probes.batches.Call``)."""
    from optdoctor.probes.batches import Call

    X, y = batch
    if isinstance(X, tuple):
        return Call(tuple(X), {}), y
    if isinstance(X, dict):
        return Call((), dict(X)), y
    return X, y
