"""Hessian spectra that are right and cheap (imports torch; import this package lazily).

    hvp.py       Hessian-vector products through one create_graph gradient
    lanczos.py   Lanczos with full reorthogonalization: top-k and smallest eigenvalue
    trace.py     Hutchinson / Hutch++ trace, stopped on its standard error
    density.py   stochastic Lanczos quadrature: spectral density, negative/near-null mass
    spectrum.py  hessian_spectrum(): the entry point
"""

from optdoctor.curvature.density import SpectralDensity
from optdoctor.curvature.hvp import HessianOperator, hvp_operator
from optdoctor.curvature.spectrum import HessianSpectrum, hessian_spectrum

__all__ = ["HessianOperator", "HessianSpectrum", "SpectralDensity", "hessian_spectrum", "hvp_operator"]
