"""What every instrument is, and how a set of them rides on a model and an optimizer.

An instrument (Cockpit's quantity, torchmetrics' metric) is one class in one file that declares

- ``series``: what it records (``Series``: name, per step / per layer / per activation, the
  trace metadata key naming its columns, how TensorBoard shows it);
- ``schedule``: when it measures (``Every(k)``, ``At(steps)``; a step -> bool);
- ``needs``: which moments of a training step it listens to:

  ``"forward"``  the next training forward pass will be step ``s``: called when attached (s = 0)
                 and after each optimizer step (module hooks go on for that pass only; no hook
                 stays on the model between measured passes),
  ``"grads"``    gradients are ready: ``optimizer`` step pre-hook (before clipping in a probe),
  ``"update"``   the optimizer has stepped: ``optimizer`` step post-hook,
  ``"state"``    the model's state after ``s`` updates (``s = 0`` when attached, then after each
                 step): evaluations, curvature, weight statistics.

``InstrumentSet`` attaches one step pre-hook and one step post-hook on the optimizer, whatever
the number of instruments, and dispatches to those that asked. Nothing else
drives an instrument: the probe runner is just a training loop, and a user's own loop works the
same way. The set owns the step clock (optimizer steps taken since it was attached).

Per-layer columns follow ``Context.layers`` / ``Context.acts``, whose order is fixed once
(forward order, ``layers.discover``) before anything attaches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from torch import nn

from optdoctor.probes.instruments.layers import layer_type
from optdoctor.probes.recorder import Recorder

NEEDS = ("forward", "grads", "update", "state")
PER = ("step", "layer", "act", "layer_bins", "position", "raw")
# columns of a per-layer series: the trace metadata key that names them
COLUMNS = {"layer": "layers", "act": "act_layers", "layer_bins": "layers"}
NEVER = 2**62  # Schedule.next when no step is due any more
SCAN = 1000  # Schedule.next's fallback: steps scanned ahead


@dataclass(frozen=True)
class Series:
    """One recorded series. ``per``: "step" -> values (T,); "layer" -> (T, L), columns named by
    ``meta["layers"]``; "act" -> (T, A), columns ``meta["act_layers"]``; "layer_bins" -> (T, L, B);
    "position" -> (T, P), one column per position of a sequence input;
    "raw" -> an instrument's intermediate, consumed in its ``finish`` (never in a trace).
    ``tag``: TensorBoard section (per-layer series get one tag per column under it);
    ``log10``: also written as log10 (quantities spanning decades across layers)."""

    name: str
    per: str = "step"
    doc: str = ""
    tag: str | None = None
    log10: str | None = None

    def __post_init__(self):
        if self.per not in PER:
            raise ValueError(f"series {self.name}: per must be one of {PER}, got {self.per!r}")

    @property
    def columns(self) -> str | None:
        return COLUMNS.get(self.per)

    def as_meta(self) -> dict[str, Any]:
        d: dict[str, Any] = {"per": self.per}
        for k in ("columns", "tag", "log10"):
            v = getattr(self, k)
            if v:
                d[k] = v
        return d


class Schedule:
    """When an instrument measures: a predicate on the step."""

    def due(self, step: int) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def next(self, step: int) -> int:
        """The first step >= ``step`` that is due (a driver skips the steps before it without
        asking each instrument). Subclasses answer in O(1); this fallback scans ahead and,
        finding nothing within SCAN steps, answers the step after them (asked again then)."""
        for s in range(step, step + SCAN):
            if self.due(s):
                return s
        return step + SCAN


@dataclass(frozen=True)
class Every(Schedule):
    k: int = 1

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"Every(k) needs k >= 1, got {self.k}")

    def due(self, step: int) -> bool:
        return step % self.k == 0

    def next(self, step: int) -> int:
        return -(-step // self.k) * self.k


@dataclass(frozen=True)
class At(Schedule):
    steps: frozenset = frozenset()

    def __init__(self, steps: Iterable[int]):
        object.__setattr__(self, "steps", frozenset(int(s) for s in steps))

    def due(self, step: int) -> bool:
        return step in self.steps

    def next(self, step: int) -> int:
        return min((s for s in self.steps if s >= step), default=NEVER)


@dataclass
class Context:
    """What instruments measure: the model, its optimizer, the recorder, and the layers in forward
    order. ``extras`` carries what a few instruments need (a loss function, a Hessian batch, eval
    batches); an instrument whose needs are not there is not built (``probes.instruments``)."""

    model: nn.Module
    optimizer: Any
    recorder: Recorder
    layers: list[tuple[str, nn.Module]]  # parametrised layers, forward order
    acts: list[tuple[str, nn.Module, str]] = field(default_factory=list)  # (name, module, kind), forward order
    meta: dict[str, Any] = field(default_factory=dict)  # becomes the trace's metadata
    extras: dict[str, Any] = field(default_factory=dict)
    # True while an instrument runs the model in training mode outside a training step
    # (Evaluation's training-mode pass): hooks that watch training inputs leave that pass alone
    side_pass: bool = False


class Instrument:
    series: tuple[Series, ...] = ()
    needs: frozenset = frozenset()
    schedule: Schedule = Every(1)
    follows: bool = False  # also reads the gradients of the step after each due one (cosines)

    def due(self, step: int) -> bool:
        return self.schedule.due(step)

    def next_due(self, step: int) -> int:
        """The first step >= ``step`` at which ``due`` holds (``Schedule.next``)."""
        if type(self).due is not Instrument.due:  # an instrument with its own ``due``: ask it step by step
            return Schedule.next(self, step)
        return self.schedule.next(step)

    def attach(self, ctx: Context) -> None:
        """Bind to a model/optimizer. Called once, after the layer order is fixed."""
        self.ctx = ctx
        self.recorder = ctx.recorder

    # the moments of a step (only those named in ``needs`` are called)
    def before_forward(self, step: int) -> None:
        """The next training forward pass is step ``step``: arm module hooks for it if due."""

    def after_backward(self, step: int) -> None: ...

    def after_step(self, step: int) -> None: ...

    def at_state(self, step: int) -> None:
        """The model as it is after ``step`` optimizer steps (0: at attach)."""

    def detach(self) -> None: ...

    def finish(self, trace) -> None:
        """Derive the final series from what was recorded (once, after training)."""


class InstrumentSet:
    """Instruments attached to one model and optimizer through three hooks."""

    def __init__(self, instruments: Sequence[Instrument]):
        seen: set[str] = set()
        for inst in instruments:
            bad = set(inst.needs) - set(NEEDS)
            if bad:
                raise ValueError(f"{type(inst).__name__} needs unknown moments {sorted(bad)}; known: {NEEDS}")
            for s in inst.series:
                if s.name in seen:
                    raise ValueError(f"series {s.name!r} declared by two instruments")
                seen.add(s.name)
        self.instruments = list(instruments)
        self.step = 0
        self._handles: list = []
        self.ctx: Context | None = None

    def _with(self, need: str) -> list[Instrument]:
        return [i for i in self.instruments if need in i.needs]

    def declared(self) -> list[Series]:
        return [s for i in self.instruments for s in i.series]

    def attach(self, ctx: Context) -> "InstrumentSet":
        self.ctx = ctx
        ctx.recorder.declare(self.declared())
        ctx.meta["layers"] = [n for n, _ in ctx.layers]
        ctx.meta["layer_types"] = [layer_type(m) for _, m in ctx.layers]
        ctx.meta["act_layers"] = [n for n, _, _ in ctx.acts]
        ctx.meta["act_kinds"] = [k for _, _, k in ctx.acts]
        for inst in self.instruments:
            inst.attach(ctx)
        fwd, grads = self._with("forward"), self._with("grads")
        post = self._with("update"), self._with("state")
        if ctx.optimizer is not None:
            if grads:
                self._handles.append(ctx.optimizer.register_step_pre_hook(self._make_pre_step(grads)))
            # always: the post-hook also advances the step clock
            self._handles.append(ctx.optimizer.register_step_post_hook(self._make_post_step(*post, fwd)))
        for inst in post[1]:
            if inst.due(0):
                inst.at_state(0)
        for inst in fwd:
            inst.before_forward(0)
        return self

    def _make_pre_step(self, insts: list[Instrument]) -> Callable:
        def pre_step(_opt, _args, _kwargs):
            for inst in insts:
                inst.after_backward(self.step)

        return pre_step

    def _make_post_step(self, update: list[Instrument], state: list[Instrument], fwd: list[Instrument]) -> Callable:
        def post_step(_opt, _args, _kwargs):
            step = self.step
            self.step += 1
            for inst in update:
                inst.after_step(step)
            for inst in state:
                if inst.due(self.step):
                    inst.at_state(self.step)
            for inst in fwd:  # after the states: their evaluations must not meet armed hooks
                inst.before_forward(self.step)

        return post_step

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        for inst in self.instruments:
            inst.detach()

    def finish(self, trace) -> None:
        """Hand the recorder's rows and the metadata to ``trace``; each instrument derives."""
        ctx = self.ctx
        if ctx is not None:
            for k, v in ctx.meta.items():
                trace.meta.setdefault(k, v)
            ctx.recorder.finish(trace)
        for inst in self.instruments:
            inst.finish(trace)
        if ctx is not None:
            ctx.recorder.describe(trace)
