"""Config names -> torch objects: optimizer and scheduler classes, loss functions.

Imports torch, so only the probe runner imports this module (``optdoctor.config`` does not).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.optim import lr_scheduler

from optdoctor.config.factories import check_kwargs, resolve_callable
from optdoctor.config.loader import problem_at
from optdoctor.config.schema import BUILTIN_LOSSES, LoadedConfig, OptimizerConfig, ScheduleConfig
from optdoctor.errors import ConfigError, Problem, ProbeError, did_you_mean, sort_problems

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# Packages of optimisers beyond torch.optim that optdoctor's remedies name: the extra that
# installs each (a remedy needing an absent one is reported "not applicable: pip install ...").
OPTIONAL_OPTIMIZERS = {"pytorch_optimizer": "optdoctor[optimizers]", "heavyball": "heavyball"}


def optimizer_available(name: str) -> str | None:
    """``pip install ...`` when the optimiser ``name`` lives in one of the optional packages of
    ``OPTIONAL_OPTIMIZERS`` and that package is not installed; else None (a torch.optim name, a
    file, or any other module: importing it reports its own errors). Looks the package up only."""
    import importlib.util

    target = name.partition(":")[0]
    top = target.split(".")[0]
    if ":" not in name or target.endswith(".py") or top not in OPTIONAL_OPTIMIZERS:
        return None
    if importlib.util.find_spec(top) is not None:
        return None
    return f"pip install '{OPTIONAL_OPTIMIZERS[top]}'"


def resolve_optimizer(cfg: OptimizerConfig, loaded: LoadedConfig | None = None) -> type[torch.optim.Optimizer]:
    """The ``torch.optim`` class named (case-insensitively) by ``cfg.name``, or the class a
    ``"package.module:Class"`` names (e.g. ``pytorch_optimizer:Shampoo``), its args checked."""
    if ":" in cfg.name:
        missing = optimizer_available(cfg.name)
        if missing:
            raise ConfigError([problem_at(loaded, "optimizer.name", f"optimizer {cfg.name!r} needs a package that is not installed: {missing}")])
        cls = resolve_callable(cfg.name, loaded.base_dir if loaded else ".", "optimizer.name", loaded)
        if not (isinstance(cls, type) and callable(getattr(cls, "step", None)) and callable(getattr(cls, "zero_grad", None))):
            raise ConfigError([problem_at(loaded, "optimizer.name", f"{cfg.name} is not an optimizer class (it needs step() and zero_grad())")])
    else:
        cls = _pick(_subclasses(torch.optim, torch.optim.Optimizer), cfg.name, "optimizer", loaded)
    provided = {"params": "the model's parameters, which optdoctor passes", "lr": "optimizer.lr"}
    _raise_if(check_kwargs(cls, cfg.args, "optimizer.args", loaded, provided))
    return cls


def resolve_scheduler(cfg: ScheduleConfig, loaded: LoadedConfig | None = None) -> type[lr_scheduler.LRScheduler]:
    """The ``torch.optim.lr_scheduler`` class named by ``cfg.name``, its args checked."""
    cls = _pick(_subclasses(lr_scheduler, lr_scheduler.LRScheduler), cfg.name, "schedule", loaded)
    provided = {"optimizer": "the probe's optimizer, which optdoctor passes"}
    _raise_if(check_kwargs(cls, cfg.args, "schedule.args", loaded, provided))
    return cls


def resolve_loss(spec: str, loaded: LoadedConfig | None = None) -> Loss:
    """A built-in loss by name, or the user's ``"file.py:callable"``."""
    if spec in _LOSSES:
        return _LOSSES[spec]
    if ":" in spec:
        base_dir = loaded.base_dir if loaded else "."
        return resolve_callable(spec, base_dir, "loss", loaded)
    message = f'unknown loss {spec!r}: use one of {", ".join(BUILTIN_LOSSES)} or "file.py:callable"'
    raise ConfigError([problem_at(loaded, "loss", message, did_you_mean(spec, BUILTIN_LOSSES))])


def validate_resolvable(loaded: LoadedConfig) -> None:
    """Resolve everything the config names; raise one ``ConfigError`` with all problems.

    Config problems come first (exit 2, nothing probed); only a config without any lets a
    user module's import failure through as a ``ProbeError``.
    """
    cfg = loaded.config
    problems: list[Problem] = []
    failures: list[ProbeError] = []
    for section in ("model", "data"):
        factory = getattr(cfg, section)
        fn = _collect(problems, failures, resolve_callable, factory.factory, loaded.base_dir, f"{section}.factory", loaded)
        if fn is not None:
            problems += check_kwargs(fn, factory.args, f"{section}.args", loaded)
    _collect(problems, failures, resolve_loss, cfg.loss, loaded)
    _collect(problems, failures, resolve_optimizer, cfg.optimizer, loaded)
    if cfg.schedule is not None:
        _collect(problems, failures, resolve_scheduler, cfg.schedule, loaded)
    if problems:
        raise ConfigError(sort_problems(problems))
    if failures:
        raise failures[0]


# --- built-in losses: (model output, y) -> scalar ------------------------------------------


def _cross_entropy(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output, _class_indices(y, output))


def _nll(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(output, _class_indices(y, output))


def _mse(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(output, _like(y, output))


def _bce_with_logits(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(output, _like(y, output))


def _class_indices(y: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Float labels 0., 1., 2. as indices; float targets of the output's shape are probabilities."""
    if y.is_floating_point() and y.dim() == output.dim() - 1:
        return y.long()
    return y


def _like(y: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Targets in the output's dtype and shape: (N,) targets against an (N, 1) head would
    broadcast to (N, N) and silently train on the wrong loss."""
    y = y.to(output.dtype)
    if y.shape != output.shape and y.numel() == output.numel():
        y = y.reshape(output.shape)
    return y


def _model_loss(output, y):
    """loss: model -- the model computes its loss itself (``probes.batches.Criterion`` takes it
    from the model's output; this is never called on a probe's batches)."""
    from optdoctor.probes.batches import model_loss

    return model_loss(output)


_LOSSES: dict[str, Loss] = {
    "model": _model_loss,
    "cross_entropy": _cross_entropy,
    "mse": _mse,
    "bce_with_logits": _bce_with_logits,
    "nll": _nll,
}


# --- helpers -------------------------------------------------------------------------------


def _subclasses(module: Any, base: type) -> dict[str, type]:
    """Public classes of ``module`` derived from ``base`` (not ``base`` itself), by lower-case name."""
    return {
        name.lower(): obj
        for name, obj in vars(module).items()
        if isinstance(obj, type) and issubclass(obj, base) and obj is not base and not name.startswith("_")
    }


def _pick(classes: dict[str, type], name: str, section: str, loaded: LoadedConfig | None) -> type:
    """The class called ``name`` in any case; ``section`` is "optimizer" or "schedule"."""
    cls = classes.get(name.lower())
    if cls is not None:
        return cls
    close = did_you_mean(name.lower(), classes)
    message = f"unknown {_KIND[section]} {name!r}"
    if close is None:
        message += f" (choose from {', '.join(sorted(c.__name__ for c in classes.values()))})"
    suggestion = classes[close].__name__ if close else None
    raise ConfigError([problem_at(loaded, f"{section}.name", message, suggestion)])


_KIND = {"optimizer": "optimizer", "schedule": "scheduler"}


def _raise_if(problems: list[Problem]) -> None:
    if problems:
        raise ConfigError(sort_problems(problems))


def _collect(problems: list[Problem], failures: list[ProbeError], fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, filing its ConfigError's problems or its ProbeError instead of raising."""
    try:
        return fn(*args)
    except ConfigError as err:
        problems += err.problems
    except ProbeError as err:
        failures.append(err)
    return None
