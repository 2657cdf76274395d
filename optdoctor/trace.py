"""The Trace: everything a probe measured, as plain numpy arrays on the CPU.

This is the one boundary where tensors become numbers (STYLE.md principle 3). Nothing
downstream (symptoms, rules, reports) imports torch or cares where the numbers came from: a
probe run, a user's own training loop, or a trace loaded from disk.

Layout: ``series[name] = (steps, values)`` where ``steps`` is an int array (T,) and ``values``
is (T,) for scalars or (T, L) for per-layer quantities, columns ordered as ``meta["layers"]``
(parametrised layers, in forward order) or ``meta["act_layers"]`` (activation modules).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# What a probe is, recorded in ``meta["kind"]``: symptoms select probes by kind, never by name.
KINDS = ("baseline", "lr_variant", "continued", "perturbed", "reseed", "lr_range", "standardized", "whitened", "target_standardized", "verify", "seed",
         "monitor")


def kind_from_name(name: str) -> str:
    """The kind of a trace saved before kinds were recorded (its name was the kind's mark)."""
    if name.startswith("lr_x"):
        return "lr_variant"
    if name.startswith("reseed"):
        return "reseed"
    if name.startswith("verify_"):
        return "verify"
    if name[:1] == "s" and "_" in name and name[1:name.index("_")].isdigit():
        return "seed"
    return name if name in KINDS else "baseline"


@dataclass
class Trace:
    probe: str  # "baseline", "lr_x10", "perturbed", ...
    meta: dict[str, Any] = field(default_factory=dict)
    series: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    # curvature measurements: one flat dict of floats per measurement, with its "step"
    hessian: list[dict[str, float]] = field(default_factory=list)
    status: str = "completed"  # completed | diverged | interrupted
    stopped_at: int | None = None  # step at which a divergence/interrupt stopped the probe

    @property
    def kind(self) -> str:
        return self.meta.get("kind") or kind_from_name(self.probe)

    def has(self, name: str) -> bool:
        return name in self.series and len(self.series[name][0]) > 0

    def steps(self, name: str) -> np.ndarray:
        return self.series[name][0]

    def values(self, name: str) -> np.ndarray:
        return self.series[name][1]

    def truncated(self, upto: int) -> "Trace":
        """The trace as it stood at step ``upto`` (inclusive): for persistence checks."""
        series = {}
        for name, (s, v) in self.series.items():
            keep = s <= upto
            series[name] = (s[keep], v[keep])
        hess = [h for h in self.hessian if h.get("step", 0) <= upto]
        stopped = self.stopped_at if (self.stopped_at is not None and self.stopped_at <= upto) else None
        status = self.status if stopped is not None else "completed"
        return Trace(self.probe, dict(self.meta), series, hess, status, stopped)

    # --- persistence: a diagnosis can be recomputed without re-probing ---------------------
    def save(self, path: str | Path) -> None:
        path = Path(path)
        arrays = {}
        for i, (name, (s, v)) in enumerate(sorted(self.series.items())):
            arrays[f"s{i}"] = s
            arrays[f"v{i}"] = v
        header = {
            "probe": self.probe,
            "meta": self.meta,
            "names": sorted(self.series),
            "hessian": self.hessian,
            "status": self.status,
            "stopped_at": self.stopped_at,
        }
        with open(path, "wb") as f:  # a file handle: numpy would append ".npz" to a bare path
            np.savez_compressed(f, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "Trace":
        with np.load(path) as z:
            header = json.loads(bytes(z["header"]).decode())
            series = {n: (z[f"s{i}"], z[f"v{i}"]) for i, n in enumerate(header["names"])}
        return cls(header["probe"], header["meta"], series, header["hessian"], header["status"], header["stopped_at"])


@dataclass
class ProbeSet:
    """All probes of one diagnosis: the baseline and its variants, keyed by probe name."""

    traces: dict[str, Trace] = field(default_factory=dict)
    data_stats: dict[str, float] = field(default_factory=dict)  # properties of the inputs themselves

    @property
    def baseline(self) -> Trace:
        return self.traces["baseline"]

    def of_kind(self, kind: str) -> list[Trace]:
        """The probes of one kind (``KINDS``), in the order they ran."""
        if kind not in KINDS:
            raise ValueError(f"unknown probe kind {kind!r}; kinds: {', '.join(KINDS)}")
        return [t for t in self.traces.values() if t.kind == kind]

    def one(self, kind: str) -> Trace | None:
        found = self.of_kind(kind)
        return found[0] if found else None

    def truncated(self, upto: int) -> "ProbeSet":
        return ProbeSet({k: t.truncated(upto) for k, t in self.traces.items()}, dict(self.data_stats))

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, t in self.traces.items():
            t.save(folder / f"{name}.npz")
        (folder / "data_stats.json").write_text(json.dumps(self.data_stats, sort_keys=True))

    @classmethod
    def load(cls, folder: str | Path) -> "ProbeSet":
        folder = Path(folder)
        traces = {p.stem: Trace.load(p) for p in sorted(folder.glob("*.npz"))}
        stats_file = folder / "data_stats.json"
        stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
        return cls(traces, stats)
