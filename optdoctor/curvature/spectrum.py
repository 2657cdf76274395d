"""``hessian_spectrum``: top-k, smallest eigenvalue, trace and density of a batch loss's Hessian.

One operator (``hvp.py``), one Lanczos run (``lanczos.py``) for both ends of the spectrum,
and -- only when asked -- a trace estimate deflated by that run's Krylov basis (``trace.py``)
and a density whose first start is that same run (``density.py``). The result is plain
Python/numpy so that it can go into a Trace as is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from optdoctor.curvature.density import NULL_EPS, SpectralDensity, slq
from optdoctor.curvature.hvp import hvp_operator
from optdoctor.curvature.lanczos import lanczos
from optdoctor.curvature.trace import hutchinson

NAN = math.nan


@dataclass
class HessianSpectrum:
    """What ``hessian_spectrum`` measured. Eigenvalues are float, vectors numpy float64."""

    top: list[float]  # k largest eigenvalues, descending
    min: float  # smallest eigenvalue
    n_params: int
    hvps: int  # Hessian-vector products, all estimators together
    lanczos_iters: int
    converged: bool  # Lanczos met its tolerance (or spanned the space)
    loss: float
    finite: bool = True  # False: the loss or a product was NaN/Inf; the numbers are NaN
    backend: str = "autograd"
    trace: float | None = None
    trace_stderr: float | None = None
    trace_converged: bool | None = None
    density: SpectralDensity | None = None
    top_vectors: np.ndarray | None = field(default=None, repr=False)  # (k, n), unit rows
    min_vector: np.ndarray | None = field(default=None, repr=False)  # (n,), unit

    @property
    def lambda_max(self) -> float:
        return self.top[0] if self.top else NAN

    def as_dict(self) -> dict[str, float]:
        """Flat floats for the Trace and the symptoms; NaN where not measured.

        ``lambda_min_rel`` = lambda_min / |lambda_max|; ``trace_per_param`` = trace / n;
        ``condition_spread`` = lambda_max / (trace / n), NaN unless the trace is positive (how
        far the top eigenvalue stands out of the average one)."""
        lam_max, lam_min = self.lambda_max, self.min
        trace = NAN if self.trace is None else self.trace
        per_param = trace / self.n_params if self.n_params else NAN
        dens = self.density
        out = {
            "lambda_max": lam_max,
            "lambda_min": lam_min,
            "lambda_min_rel": lam_min / abs(lam_max) if lam_max != 0 else NAN,
            "trace": trace,
            "trace_stderr": NAN if self.trace_stderr is None else self.trace_stderr,
            "trace_per_param": per_param,
            "condition_spread": lam_max / per_param if per_param > 0 else NAN,
            "negative_mass": dens.negative_mass if dens else NAN,
            "near_null_mass": dens.near_null_mass if dens else NAN,
            "effective_condition": dens.effective_condition if dens else NAN,
            "hvps": float(self.hvps),
            "lanczos_iters": float(self.lanczos_iters),
            "converged": float(self.converged),
            "n_params": float(self.n_params),
            "finite": float(self.finite),
            "loss": self.loss,
        }
        for i, lam in enumerate(self.top[1:], start=2):
            out[f"lambda_{i}"] = lam
        return {key: float(value) for key, value in out.items()}


def hessian_spectrum(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    batch: Any,
    *,
    k: int = 5,
    trace: bool = False,
    density: bool = False,
    max_iter: int = 40,
    tol: float | None = 1e-4,
    seed: int = 0,
    backend: str | None = None,
    dtype: torch.dtype | None = None,
    return_vectors: bool = False,
    trace_rtol: float = 1e-2,
    trace_max_hvps: int = 200,
    density_starts: int = 3,
    density_steps: int | None = None,
    null_eps: float = NULL_EPS,
) -> HessianSpectrum:
    """Spectrum of the Hessian of ``loss_fn(model(inputs), targets)`` on ``batch``.

    The Hessian is w.r.t. the parameters that require grad and are used, measured with every
    module in eval mode (each module's training flag restored afterwards; ``hvp.py``).

    - ``k``, ``max_iter``, ``tol``: one Lanczos run gives the k largest and the smallest
      eigenvalue. It stops when those Ritz values moved by at most ``tol * max|theta|`` in
      total over the last 5 steps (``lanczos.py`` says why not over one step), or at
      ``max_iter``; ``tol=None`` runs all ``max_iter`` steps. Clustered extremes need more
      than the default 40 steps -- ``converged`` says when they did not get them (a 5k MLP
      at init: not converged at 60 steps, top-5 off by up to 4e-3 * lambda_max).
    - ``trace=True``: Hutchinson on the remainder of the Lanczos basis until its standard
      error is <= ``trace_rtol * |trace|``, at most ``trace_max_hvps`` products (``trace.py``).
    - ``density=True``: stochastic Lanczos quadrature, ``density_starts`` starts (the first
      is the main run) of ``density_steps`` steps (default ``max_iter``; ``density.py``).
    - ``return_vectors=True``: also the Ritz vectors of the top-k and of the smallest
      eigenvalue (e.g. to perturb a saddle along its most negative direction).
    - ``backend``: "autograd" (default) or "func"; ``dtype``: e.g. torch.float64 to measure a
      float64 copy (the model is not touched).

    Randomness comes from a local ``torch.Generator(seed)`` (same seed, same numbers), and
    the global RNG state is saved and restored, so measuring does not perturb training. A
    NaN/Inf loss or product gives NaN numbers and ``finite=False``; nothing is raised.
    Forward hooks on the model fire once (one forward pass per call).

    >>> import torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> batch = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
    >>> s = hessian_spectrum(model, torch.nn.functional.cross_entropy, batch, k=3, trace=True)
    >>> len(s.top), s.top[0] >= s.top[1] >= s.top[2] >= s.min, s.n_params
    (3, True, 67)
    >>> s.as_dict()["lambda_max"] == s.top[0]
    True
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    rng_devices = [device] if device.type == "cuda" else []

    with torch.random.fork_rng(devices=rng_devices):
        op, n = hvp_operator(model, loss_fn, batch, backend=backend, dtype=dtype)
        if not op.finite or n == 0:
            return HessianSpectrum(top=[NAN] * k, min=NAN, n_params=n, hvps=0, lanczos_iters=0,
                                   converged=False, loss=op.loss, finite=op.finite, backend=op.backend)
        generator = torch.Generator().manual_seed(seed)

        def draw() -> torch.Tensor:  # Gaussian on the CPU generator: same numbers on any device
            v = torch.randn(n, generator=generator, dtype=torch.float64)
            return v.to(dtype=op.dtype, device=op.device)

        run = lanczos(op, draw(), max_iter=max_iter, k=k, tol=tol, restart=draw)
        if run.reason == "nonfinite":
            return HessianSpectrum(top=[NAN] * k, min=NAN, n_params=n, hvps=op.calls,
                                   lanczos_iters=run.iters, converged=False, loss=op.loss,
                                   finite=False, backend=op.backend)
        theta, _ = run.ritz()
        order = list(np.argsort(theta)[::-1][:k])
        result = HessianSpectrum(
            top=[float(theta[i]) for i in order],
            min=float(theta[0]),
            n_params=n,
            hvps=0,
            lanczos_iters=run.iters,
            converged=run.converged,
            loss=op.loss,
            backend=op.backend,
        )
        if return_vectors:
            vectors = run.ritz_vectors(order + [int(np.argmin(theta))])
            result.top_vectors, result.min_vector = vectors[:-1], vectors[-1]

        if trace:
            est = hutchinson(op, n, generator, dtype=op.dtype, device=op.device, basis=run.basis,
                             basis_trace=float(run.alphas.sum()), rtol=trace_rtol, max_hvps=trace_max_hvps)
            result.trace, result.trace_stderr, result.trace_converged = est.value, est.stderr, est.converged
        if density:
            result.density = slq(op, n, generator, dtype=op.dtype, device=op.device, starts=density_starts,
                                 steps=density_steps or max_iter, first=run, eps=null_eps)
        result.hvps = op.calls
        result.finite = all(math.isfinite(x) for x in [*result.top, result.min, result.trace or 0.0])
    return result
