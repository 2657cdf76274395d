"""Spectral density by stochastic Lanczos quadrature (SLQ).

For a random unit vector v, m Lanczos steps give T_m = S diag(theta) S^T, and
v^T f(H) v ~ sum_j S[0, j]^2 f(theta_j) is an m-node Gauss quadrature of the spectral
measure seen from v (Golub & Meurant; Ubaru, Chen & Saad, SIMAX 2017). Averaging over a few
starts estimates (1/n) sum_i f(lambda_i); with f a Gaussian bump this is the broadened
density of Ghorbani, Krishnan & Xiao (ICML 2019). For n in the thousands one start already
has little variance (the v^T f(H) v of a uniform unit vector has variance O(1/n)); the
error that matters is the quadrature's resolution, so more steps beat more starts.

Derived numbers, all from the (node, weight) pairs rather than the broadened curve (the
Gaussian bumps leak mass across zero). rho = max |lambda| (the spectral radius; = lambda_max
for the usual Hessian whose positive outliers dominate), eps = ``NULL_EPS`` = 1e-2:

- ``negative_mass``: weight of the nodes below -eps * rho.
- ``near_null_mass``: weight of the nodes with |theta| <= eps * rho.
- ``effective_condition``: rho / q10, q10 the weighted 10th percentile of |theta| among the
  nodes with |theta| > eps * rho. lambda_max / lambda_min means nothing for an indefinite,
  nearly singular Hessian (one measured MLP: 31% negative eigenvalues, half of them below
  1e-3 lambda_max; DESIGN.md), so the near-null space is left out, and a low percentile
  rather than the minimum is taken since the smallest nodes are the least resolved. By
  construction it lies in [1, 1/eps] = [1, 100].

Why eps = 1e-2 and not 1e-3: m = 40-80 quadrature nodes cannot resolve the cluster of
eigenvalues around zero. Measured against dense spectra (a 5,122-parameter MLP at init and
after 100 SGD steps, three ~250-parameter nets; 3 starts): at eps = 1e-3 the near-null mass
came out 0.00-0.38 where the exact value was 0.16-0.32 (the cluster's one heavy node falls
on either side of the threshold), and the effective condition scattered from 0.15x to 4.1x of
the exact one (m = 40, 80); at eps = 1e-2 the negative and near-null masses were within 0.12
of exact (0.06 for m = 80) and the effective condition within 0.74x-1.26x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from optdoctor.curvature.lanczos import LanczosRun, lanczos

Matvec = Callable[[torch.Tensor], torch.Tensor]

NULL_EPS = 1e-2  # |lambda| <= NULL_EPS * rho counts as near-null (see above for why not 1e-3)
CONDITION_FLOOR = NULL_EPS  # eigenvalues below this * rho are left out of the effective condition
CONDITION_QUANTILE = 0.10
SIGMA_REL = 0.01  # Gaussian broadening, relative to the spectrum's width
GRID_POINTS = 512


@dataclass
class SpectralDensity:
    nodes: np.ndarray  # (r*m,) Ritz values of all starts
    weights: np.ndarray  # (r*m,) quadrature weights, sum to 1
    grid: np.ndarray  # (G,)
    values: np.ndarray  # (G,) broadened density on grid, integrates to ~1
    sigma: float
    negative_mass: float
    near_null_mass: float
    effective_condition: float
    starts: int
    steps: int  # Lanczos steps of the longest start


def quadrature(run: LanczosRun) -> tuple[np.ndarray, np.ndarray]:
    """Nodes theta (m,) and weights S[0, :]^2 (m,) of one Lanczos run from a unit vector."""
    theta, s = run.ritz()
    return theta, s[0, :] ** 2


def broaden(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    z = (grid[None, :] - nodes[:, None]) / sigma  # (r*m, G)
    return weights @ np.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))


def spectral_radius(nodes: np.ndarray) -> float:
    return float(np.abs(nodes).max()) if len(nodes) else math.nan


def negative_mass(nodes: np.ndarray, weights: np.ndarray, eps: float = NULL_EPS) -> float:
    return float(weights[nodes < -eps * spectral_radius(nodes)].sum())


def near_null_mass(nodes: np.ndarray, weights: np.ndarray, eps: float = NULL_EPS) -> float:
    return float(weights[np.abs(nodes) <= eps * spectral_radius(nodes)].sum())


def effective_condition(nodes: np.ndarray, weights: np.ndarray, floor: float = CONDITION_FLOOR,
                        quantile: float = CONDITION_QUANTILE) -> float:
    rho = spectral_radius(nodes)
    mag = np.abs(nodes)
    keep = mag > floor * rho
    if not keep.any() or not rho > 0:
        return math.nan
    order = np.argsort(mag[keep])
    mag, w = mag[keep][order], weights[keep][order]
    cdf = np.cumsum(w) / w.sum()
    q = float(mag[min(np.searchsorted(cdf, quantile), len(mag) - 1)])
    return rho / q


def slq(
    matvec: Matvec,
    n: int,
    generator: torch.Generator,
    *,
    dtype: torch.dtype,
    device: torch.device,
    starts: int = 3,
    steps: int = 40,
    first: LanczosRun | None = None,
    eps: float = NULL_EPS,
) -> SpectralDensity:
    """Density from ``starts`` Lanczos runs of ``steps`` steps from Gaussian unit vectors.

    ``first``: a run already made from such a vector (``hessian_spectrum``'s own) counts as
    the first start, so it costs nothing more."""
    runs = [first] if first is not None else []
    while len(runs) < starts:
        v0 = torch.randn(n, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)
        runs.append(lanczos(matvec, v0, max_iter=steps, tol=None))
    parts = [quadrature(r) for r in runs]
    nodes = np.concatenate([p[0] for p in parts])
    weights = np.concatenate([p[1] for p in parts]) / len(parts)
    return density_from_nodes(nodes, weights, starts=len(runs), steps=max(r.iters for r in runs), eps=eps)


def density_from_nodes(nodes: np.ndarray, weights: np.ndarray, *, starts: int, steps: int,
                       eps: float = NULL_EPS) -> SpectralDensity:
    width = float(nodes.max() - nodes.min()) if len(nodes) else 0.0
    rho = spectral_radius(nodes)
    # a zero spectrum (width = rho = 0) is a unit-width bump at 0
    sigma = SIGMA_REL * width if width > 0 else (SIGMA_REL * rho if rho > 0 else 1.0)
    grid = np.linspace(nodes.min() - 5 * sigma, nodes.max() + 5 * sigma, GRID_POINTS)
    return SpectralDensity(
        nodes=nodes,
        weights=weights,
        grid=grid,
        values=broaden(nodes, weights, grid, sigma),
        sigma=sigma,
        negative_mass=negative_mass(nodes, weights, eps),
        near_null_mass=near_null_mass(nodes, weights, eps),
        effective_condition=effective_condition(nodes, weights, floor=eps),
        starts=starts,
        steps=steps,
    )
