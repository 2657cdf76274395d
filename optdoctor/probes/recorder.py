"""Collects measurements during a training run and hands them over as a Trace.

Instruments log detached tensors; they are moved to the CPU once, in ``finish`` (on a GPU a
per-step ``.item()`` would synchronise every step). The recorder knows nothing about probes:
the same object serves a user's own training loop.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch

from optdoctor.trace import Trace


class Recorder:
    def __init__(self) -> None:
        self._rows: dict[str, list[tuple[int, Any]]] = defaultdict(list)

    def log(self, name: str, step: int, value: Any) -> None:
        """``value``: a float, a 0-d or 1-d tensor (per layer), or a sequence of floats."""
        if isinstance(value, torch.Tensor):
            value = value.detach()
        self._rows[name].append((step, value))

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
            if arr.ndim == 2 and arr.shape[1] == 1 and not name.startswith(("grad.norm", "grad._", "update.", "weight.", "act.")):
                arr = arr[:, 0]
            trace.series[name] = (steps, arr)
        self._rows.clear()
        return trace
