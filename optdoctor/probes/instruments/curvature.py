"""Hessian spectra at chosen steps (optdoctor/curvature/), as an instrument."""

from __future__ import annotations

from typing import Any, Callable

from optdoctor.config.factories import crash
from optdoctor.errors import exhaustion
from optdoctor.probes.instruments.base import At, Instrument


class Curvature(Instrument):
    """At the scheduled states, the Hessian's top-k eigenvalues, lambda_min, optionally its trace
    and spectral density, on a fixed batch (one ``create_graph`` gradient reused for every
    Hessian-vector product), plus Adam's preconditioned sharpness once the optimizer has
    second-moment estimates (not at step 0). One measurement per row of ``trace.hessian``.

    A Hessian the model cannot give (an op without double backward, say) is noted in
    ``meta["hessian_errors"]`` and training goes on: the curvature rules are then not evaluated.
    Running out of memory is not that: the probe cannot run as configured (exit 3, with the
    Hessian batch to shrink).
    """

    needs = frozenset({"state"})

    def __init__(self, at: list[int], loss_fn: Callable, batch: Any, hcfg: Any, seed: int = 0):
        self.schedule = At(at)
        self.loss_fn, self.batch, self.hcfg, self.seed = loss_fn, batch, hcfg, seed
        self.rows: list[dict] = []
        self.errors: list[str] = []

    def at_state(self, step: int) -> None:
        try:
            self.rows.append(self.measure(step))
        except RuntimeError as e:
            if exhaustion(e):
                hint = f"a smaller probe.hessian.batch_size (now {self.hcfg.batch_size}), or probe.hessian.enabled: false"
                raise crash(e, f"the Hessian measurement at step {step}", hint) from e
            self.errors.append(f"step {step}: {e}")

    def measure(self, step: int) -> dict[str, Any]:
        from optdoctor.curvature import hessian_spectrum
        from optdoctor.curvature.preconditioned import adam_stability_factor, preconditioned_sharpness

        h, model = self.hcfg, self.ctx.model
        s = hessian_spectrum(model, self.loss_fn, self.batch, k=h.k, trace=h.trace, density=h.density,
                             max_iter=h.max_iter, tol=h.tol, seed=self.seed, trace_rtol=0.05,
                             trace_max_hvps=h.trace_max_hvps, density_starts=h.density_starts)
        row: dict[str, Any] = {k: float(v) for k, v in s.as_dict().items() if isinstance(v, (int, float))}
        row["step"] = float(step)
        row["hvps"] = float(s.hvps)
        if s.density is not None:
            row["density"] = {"nodes": [float(x) for x in s.density.nodes], "weights": [float(x) for x in s.density.weights]}
        pre = preconditioned_sharpness(model, self.loss_fn, self.batch, self.ctx.optimizer, seed=self.seed) if step > 0 else None
        if pre is not None:
            row["precond_lambda_max"], beta1 = pre
            row["precond_limit_factor"] = adam_stability_factor(beta1)
        return row

    def finish(self, trace) -> None:
        trace.hessian.extend(self.rows)
        if self.errors:
            trace.meta.setdefault("hessian_errors", []).extend(self.errors)
