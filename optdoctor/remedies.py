"""Remedies as config patches, and their verification by counterfactual probes.

A rule's remedy may carry a machine-applicable patch of the probe config:

    remedies:
      - text: "Lower the learning rate."
        patch: {optimizer.lr: "x0.1"}                  # multiply
      - text: "Use Kaiming init."
        patch: {model.args.init: kaiming_normal}       # set
      - text: "Warm up, then decay."
        patch: {schedule: {name: OneCycleLR, args: {max_lr: "$lr", total_steps: "$steps"}}}

Values: ``"x0.1"`` (or ``"*0.1"``) multiplies the current number; ``"$lr"`` and ``"$steps"``
stand for the configured learning rate and probe steps, ``"$lr.range_suggested"`` (any
``$symptom``) for a number the diagnosis measured (the LR range test's suggestion), each
optionally scaled: ``"$steps/4"``, ``"$lr.range_best*0.3"``; anything else is set as is. A
symptom the diagnosis lacks makes the patch not applicable. A relative or measured rate
(``optimizer.lr: "x0.1"``, ``"$lr.range_suggested"``, ``"$lr*0.5"``) also scales the rates a
configured schedule sets itself (CyclicLR's base_lr/max_lr, OneCycleLR's max_lr, eta_min,
min_lr) by new/old, unless the patch sets the schedule: such a schedule would otherwise undo the
change; a literal number (``optimizer.lr: 0.01``) sets the optimizer's rate alone. A measured
rate is the rate to train at: where the baseline's schedule sets its own peak (``max_lr``) and
raised the rate above the configured one (``lr.peak_over_config`` > 1, e.g. CyclicLR from a low
base_lr), the schedule's peak becomes the measured rate (old is that peak, not the configured floor).
``schedule: null`` drops the configured schedule (the rate stays constant at ``optimizer.lr``);
with no schedule configured there is none to drop and the patch is not applicable.

A remedy of a rule whose cause says which way the rate is wrong (``cause``: ``lr_too_high``,
``lr_too_low``) must move the rate that way: a patch that sets ``optimizer.lr`` to a rate not
below (``lr_too_high``; not above, ``lr_too_low``) the configured one is not applicable (the LR
range test's suggestion may lie above a rate that diverges only through its schedule), and so,
for ``lr_too_high``, is ``schedule: null`` when the baseline never stepped above the configured
rate (``lr.peak_over_config`` <= 1: the schedule only warms up to it or decays from it). Setting
``optimizer.name`` drops ``optimizer.args`` unless the patch sets them too (another optimiser's
arguments rarely fit). A patch of ``model.args.X`` or ``data.args.X`` applies only if the
factory takes ``X``: for the user's own factories that do not, the remedy stays text and the
report says which config line (or which code) to change. A key ending in ``?``
(``model.args.weight_scale?: 1.0``) is optional: it is set only where the factory takes that
argument, and the rest of the patch applies either way (a built-in model's companion setting
that users' own factories lack).

``apply_patch`` is pure (no torch): the verification probes live in ``diagnose/verify.py``.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import ValidationError

from optdoctor.config.schedule import scaled_schedule_args
from optdoctor.config.schema import LoadedConfig, ProbeConfig

PLACEHOLDER = re.compile(r"^\s*\$([A-Za-z_][\w.]*)\s*(?:([*/])\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))?\s*$")
MULTIPLY = re.compile(r"^\s*[x×*]\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


class NotApplicable(Exception):
    """The patch cannot be applied to this config (the reason says what to change by hand)."""


# which way a rule's cause says the learning rate is wrong: its remedies must move it that way
LR_DIRECTION = {"lr_too_high": -1, "lr_too_low": 1}


@dataclass
class Verification:
    """What a remedy measurably changed, in a probe with the same seed and budget."""

    remedy: str
    patch: dict[str, Any]
    applicable: bool = True
    reason: str = ""  # why it could not be applied or measured
    note: str = ""  # which patch this one stands in for (a rule's or_patch), and why
    metric: str = "loss.final"  # what is compared: the rule's verify: symptom
    before: float | None = None
    after: float | None = None
    after_train_mode: float | None = None  # set when ``after`` is the eval-mode loss, clearly the higher (``compared``)
    gain: float | None = None  # (before - after) / |before|; the ranking key
    helped: bool = False  # the compared loss fell clearly, below the initial/chance loss, and the rule no longer fires
    improved: bool = False  # the compared loss fell clearly, but the rule still fires or it ended above the initial/chance loss
    still_fires: bool | None = None  # None: the rule could not be evaluated on the verification probe
    symptoms: dict[str, list[float]] = field(default_factory=dict)  # name -> [before, after]
    probe: str | None = None  # the verification probe (its TensorBoard run), if one ran
    cost: float | None = None  # median time per step / the baseline's (measured: not deterministic)
    seeds: dict[str, Any] | None = None  # {"fixed": k, "of": n, "after": [...]}: tried again on n more seeds
    seeds_note: str = ""  # why it was not tried on more seeds
    longer: dict[str, Any] | None = None  # {"steps", "after", "fixed", "probe"} or {"steps", "reason"}: trained probe.verify.longer x longer
    interventions: dict[str, Any] = field(default_factory=dict)  # what in-loop remedies did (negative-curvature steps, kicks)
    combines: list[str] = field(default_factory=list)  # a combination (probe.verify.combine): the two remedies' texts
    recommended: bool = False
    why: str = ""  # the recommendation's trade-off, in words

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def _resolve_value(value: Any, current: Any, cfg: ProbeConfig, symptoms: dict[str, float] | None = None) -> Any:
    if isinstance(value, str):
        m = MULTIPLY.match(value)
        if m:
            if not isinstance(current, (int, float)) or isinstance(current, bool):
                raise NotApplicable(f"cannot multiply {current!r}: not a number")
            product = current * float(m.group(1))
            return max(1, round(product)) if isinstance(current, int) else product  # sizes stay integers
        p = PLACEHOLDER.match(value)
        if p:
            name, op, factor = p.groups()
            if name == "lr":
                base: float | int = cfg.optimizer.lr
            elif name == "steps":
                base = cfg.probe.steps
            else:
                found = (symptoms or {}).get(name)
                if found is None or not math.isfinite(found):
                    why = (" (the LR range test did not run or found no usable rate: probe.lr_range)"
                           if name.startswith("lr.range") else "")
                    raise NotApplicable(f"not applicable: it needs {name}, which this diagnosis did not measure{why}")
                base = found
            if op is None:
                return base
            out = base * float(factor) if op == "*" else base / float(factor)
            return max(1, round(out)) if isinstance(base, int) else out  # step counts stay integers
    if isinstance(value, dict):
        return {k: _resolve_value(v, (current or {}).get(k) if isinstance(current, dict) else None, cfg, symptoms) for k, v in value.items()}
    return value


def _takes(factory: Callable | None, name: str) -> bool:
    if factory is None:
        return True
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _optimizer_takes(cfg: ProbeConfig, name: str) -> bool:
    """Whether the configured optimizer's class takes an argument ``name`` (True when unsure)."""
    try:
        from optdoctor.config.resolve import resolve_optimizer

        return _takes(resolve_optimizer(cfg.optimizer), name)
    except Exception:  # an optimizer that does not resolve fails later, where the config is checked
        return True


def _default(factory: Callable | None, name: str) -> Any:
    try:
        p = inspect.signature(factory).parameters.get(name) if factory else None
    except (TypeError, ValueError):
        return None
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def _args_for(old: str, new: str, args: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """The model's arguments when a patch swaps one built-in model for another (e.g. ``mlp`` for
    ``resmlp``, residual paths): those the new factory takes are kept, the rest dropped. Only
    between optdoctor's own models: the user's own model is changed in their code."""
    if old == new:
        return args
    if not (old.startswith("optdoctor.models:") and new.startswith("optdoctor.models:")):
        raise NotApplicable(f"{old} is your own model: make this change ({new.partition(':')[2]}) in your code")
    import importlib

    factory = getattr(importlib.import_module("optdoctor.models"), new.partition(":")[2], None)
    if factory is None:
        raise NotApplicable(f"optdoctor.models has no model {new.partition(':')[2]!r}")
    set_here = {k.split(".", 2)[2] for k in patch if k.startswith("model.args.")}
    return {k: v for k, v in args.items() if _takes(factory, k) or k in set_here}


def _check_direction(value: Any, new: Any, old: float, direction: int | None, what: str = "the configured rate") -> None:
    """A rate that does not move the way the rule's cause says is no remedy."""
    if not direction or not isinstance(new, (int, float)) or isinstance(new, bool):
        return
    if direction < 0 and new >= old:
        raise NotApplicable(f"not applicable: {value} is {new:.3g}, not below {what} {old:.3g}, "
                            "so it would not lower the rate")
    if direction > 0 and new <= old:
        raise NotApplicable(f"not applicable: {value} is {new:.3g}, not above {what} {old:.3g}, "
                            "so it would not raise the rate")


def _schedule_peak(value: Any, data: dict[str, Any], patch: dict[str, Any], symptoms: dict[str, float] | None) -> float | None:
    """``lr.peak_over_config`` when ``optimizer.lr`` is set to a measured rate (``$lr.range_suggested``:
    an absolute rate to train at) under a kept schedule that sets its own peak (``max_lr``:
    CyclicLR, OneCycleLR) and raised the rate above the configured one (> 1: CyclicLR from a low
    base_lr). The schedule's peak then becomes the measured rate (everything scaled by
    measured/peak) and the direction is judged against the peak: the configured rate of such a
    schedule is only its floor. None otherwise: the rate is compared with and scaled from the
    configured one. A schedule that grows the rate by a factor (ExponentialLR, gamma > 1) has no
    peak to set (over a longer run it outgrows any base rate; dropping it is the remedy)."""
    p = PLACEHOLDER.match(value) if isinstance(value, str) else None
    sch = data.get("schedule")
    if p is None or p.group(1) in ("lr", "steps") or not isinstance(sch, dict) or "schedule" in patch \
            or "max_lr" not in (sch.get("args") or {}):
        return None
    peak = (symptoms or {}).get("lr.peak_over_config")
    return peak if peak is not None and math.isfinite(peak) and peak > 1 else None


def _check_schedule_drop(cfg: ProbeConfig, direction: int | None, symptoms: dict[str, float] | None) -> None:
    """``schedule: null`` needs a schedule to drop; for a rate too high, one that raised the rate
    above the configured base (dropping it keeps the rate there)."""
    if cfg.schedule is None:
        raise NotApplicable("not applicable: no schedule is configured, so there is none to drop")
    peak = (symptoms or {}).get("lr.peak_over_config")
    if direction is not None and direction < 0 and peak is not None and math.isfinite(peak) and peak <= 1:
        raise NotApplicable(f"not applicable: the schedule ({cfg.schedule.name}) never raised the rate above the configured "
                            f"{cfg.optimizer.lr:.3g} (peak/configured {peak:.3g}), so dropping it would not lower the rate")


def apply_patch(loaded: LoadedConfig, patch: dict[str, Any], factories: dict[str, Callable] | None = None,
                symptoms: dict[str, float] | None = None, cause: str | None = None) -> LoadedConfig:
    """A copy of the config with the patch applied; NotApplicable says why it cannot be.
    ``symptoms``: the diagnosis' measurements, for ``$symptom`` placeholders. ``cause``: the
    cause of the rule whose remedy this is (``lr_too_high`` remedies must lower the rate, ...)."""
    cfg = loaded.config
    direction = LR_DIRECTION.get(cause or "")
    data = cfg.model_dump()
    factories = factories or {}
    loaded_patch_keys = list(patch)
    patch = {k.rstrip("?"): v for k, v in patch.items()}
    optional = {k.rstrip("?") for k in loaded_patch_keys if k.endswith("?")}
    sets_args = any(k == "optimizer.args" or k.startswith("optimizer.args.") for k in patch)
    for key, value in patch.items():
        parts = key.split(".")
        if parts[0] in ("model", "data") and len(parts) == 3 and parts[1] == "args":
            if not _takes(factories.get(parts[0]), parts[2]):
                if key in optional:  # "model.args.weight_scale?": only where the factory takes it
                    continue
                spec = getattr(cfg, parts[0]).factory
                where = loaded.line_of(f"{parts[0]}.factory")
                at = f" ({loaded.path}:{where[0]})" if where else ""
                raise NotApplicable(f"{spec}{at} takes no argument {parts[2]!r}: make this change in your code")
        if parts[:2] == ["optimizer", "args"] and len(parts) == 3 and "optimizer.name" not in patch \
                and not _optimizer_takes(cfg, parts[2]):
            raise NotApplicable(f"not applicable: {cfg.optimizer.name} takes no argument {parts[2]!r}"
                                + (" (Adam-type optimizers carry momentum in their betas)" if parts[2] == "momentum" else ""))
        node = data
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise NotApplicable(f"{key}: {p!r} is not a section")
        current = node.get(parts[-1])
        if current is None and parts[0] in ("model", "data") and len(parts) == 3:
            current = _default(factories.get(parts[0]), parts[2])  # "x4" of an argument left at its default
        if key == "schedule" and value is None:
            _check_schedule_drop(cfg, direction, symptoms)
        try:
            node[parts[-1]] = _resolve_value(copy.deepcopy(value), current, cfg, symptoms)
        except NotApplicable as e:
            if current is None and isinstance(value, str) and MULTIPLY.match(value):
                raise NotApplicable(f"not applicable: {key} is not set (or its default is not a number), so there is "
                                    f"nothing to multiply by {value[1:]}") from e
            raise
        if key == "optimizer.lr":
            peak = _schedule_peak(value, data, patch, symptoms)
            if peak is not None:  # a measured rate is the rate to train at: the schedule's peak becomes it
                target = node[parts[-1]]
                _check_direction(value, target, cfg.optimizer.lr * peak, direction, "the rate the schedule peaked at")
                node[parts[-1]] = target / peak  # the schedule's own rates are scaled below by the same factor
            else:
                _check_direction(value, node[parts[-1]], cfg.optimizer.lr, direction)
        relative = isinstance(value, str) and bool(MULTIPLY.match(value) or PLACEHOLDER.match(value))
        if key == "optimizer.lr" and relative and isinstance(data.get("schedule"), dict) and "schedule" not in patch:
            # a relative or measured rate also scales the rates a schedule sets itself (CyclicLR's
            # max_lr, ...) by new/old: the schedule would otherwise undo the change
            new_lr, old_lr = node[parts[-1]], cfg.optimizer.lr
            if isinstance(new_lr, (int, float)) and not isinstance(new_lr, bool) and old_lr:
                sch = data["schedule"]
                sch["args"] = scaled_schedule_args(sch.get("args") or {}, new_lr / old_lr)
        if key == "optimizer.name" and not sets_args:
            data["optimizer"]["args"] = {}
        if key == "model.factory":
            data["model"]["args"] = _args_for(cfg.model.factory, node[parts[-1]], data["model"].get("args") or {}, patch)
    try:
        new = ProbeConfig.model_validate(data)
    except ValidationError as e:
        raise NotApplicable(f"the patched config is invalid: {e.errors()[0]['msg']}") from None
    return loaded.model_copy(update={"config": new})
