"""Learning rates that a schedule sets itself (torch-free: used by probes and remedy patches)."""

from __future__ import annotations

from typing import Any

# schedule arguments that are learning rates, not multiples of the optimizer's: CyclicLR's
# base_lr/max_lr, OneCycleLR's max_lr, CosineAnnealing*'s eta_min, ReduceLROnPlateau's min_lr
ABSOLUTE_LR_ARGS = ("base_lr", "max_lr", "eta_min", "min_lr")


def scaled_schedule_args(args: dict[str, Any], factor: float) -> dict[str, Any]:
    """The schedule's arguments for ``factor`` x the configured learning rate. A schedule that
    sets the rate itself (CyclicLR's max_lr, ...) would otherwise undo the change: a "0.1x LR"
    probe or remedy would still run at the configured peak."""
    if factor == 1:
        return dict(args)

    def scale(v):
        if isinstance(v, bool):
            return v
        if isinstance(v, (int, float)):
            return v * factor
        if isinstance(v, (list, tuple)):
            return type(v)(scale(x) for x in v)
        return v

    return {k: scale(v) if k in ABSOLUTE_LR_ARGS else v for k, v in args.items()}
