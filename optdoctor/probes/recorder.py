"""Collects measurements during a training run and hands them over as a Trace.

Instruments log detached tensors; they are moved to the CPU once, in ``finish`` (on a GPU a
per-step ``.item()`` would synchronise every step). The recorder knows nothing about probes:
the same object serves a user's own training loop.

Shapes follow the series' declarations (``instruments.base.Series``): a per-layer series stays
(T, L) even with one layer; a per-step one is (T,). An undeclared series of one element per
step is (T,). The declarations travel with the trace (``meta["series"]``), so that whoever
reads it (TensorBoard, a replay) knows each series' columns without a list kept elsewhere.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

import numpy as np
import torch

from optdoctor.trace import Trace


class Recorder:
    def __init__(self) -> None:
        self._rows: dict[str, list[tuple[int, Any]]] = defaultdict(list)
        self._declared: dict[str, Any] = {}  # name -> Series

    def declare(self, series: Iterable[Any]) -> None:
        for s in series:
            old = self._declared.get(s.name)
            if old is not None and old != s:
                raise ValueError(f"series {s.name!r} declared twice, differently")
            self._declared[s.name] = s

    def log(self, name: str, step: int, value: Any) -> None:
        """``value``: a float, a 0-d or 1-d tensor (per layer), or a sequence of floats. (Stack a
        per-layer tuple of 0-d tensors first: each tensor kept is one more object for Python's GC
        and the allocator, and the training steps after it pay for that.)"""
        if isinstance(value, torch.Tensor):
            value = value.detach()
        self._rows[name].append((step, value))

    def extend(self, name: str, steps: list[int], values: list[Any]) -> None:
        """``log`` for many steps at once (a checkpoint's losses)."""
        self._rows[name].extend(zip(steps, values))

    def rows(self, name: str) -> list:
        """The (step, value) rows of ``name`` so far (the list itself: a remedy in the loop reads
        the validation checkpoints, and early stopping re-measures the last one)."""
        return self._rows.get(name, [])

    def last(self, name: str) -> Any:
        rows = self._rows.get(name)
        return rows[-1][1] if rows else None

    def finish(self, trace: Trace) -> Trace:
        for name, rows in self._rows.items():
            steps = np.array([s for s, _ in rows], dtype=np.int64)
            vals = [v for _, v in rows]
            if vals and isinstance(vals[0], torch.Tensor):
                arr = torch.stack([v.float().reshape(-1) if v.dim() else v.float() for v in vals]).cpu().numpy()
            else:
                arr = np.asarray(vals, dtype=np.float64)
            arr = arr.astype(np.float64)
            decl = self._declared.get(name)
            per = decl.per if decl is not None else "step"
            if arr.ndim == 2 and arr.shape[1] == 1 and per == "step":
                arr = arr[:, 0]
            trace.series[name] = (steps, arr)
        self._rows.clear()
        return trace

    def describe(self, trace: Trace) -> None:
        """Record the declarations of the series ``trace`` holds in ``meta["series"]``."""
        trace.meta["series"] = {n: s.as_meta() for n, s in sorted(self._declared.items())
                                if s.per != "raw" and n in trace.series}
