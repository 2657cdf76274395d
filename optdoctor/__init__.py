"""optdoctor: tells you why your PyTorch training fails and what to change.

The package is laid out along the data flow (see DESIGN.md):

    config/     YAML -> validated ProbeConfig (factories resolved)
    probes/     short instrumented trainings -> Trace (numpy, CPU)     [torch]
    curvature/  Hessian-vector products, Lanczos, Hutchinson, SLQ      [torch]
    symptoms/   pure functions Trace -> {symptom name: float}
    engine/     safe rule expressions, YAML rule packs, evaluation -> [Finding]
    report/     text, json, sarif, junit, github

Torch is imported lazily: only probes/ and curvature/ (and the built-in model/data zoo)
import it, so ``optdoctor --help`` and the ``rules`` commands stay fast.
"""

__version__ = "0.1.0"

__all__ = ["Monitor", "__version__"]


def __getattr__(name: str):
    """``optdoctor.Monitor`` imports torch on first use only: ``import optdoctor`` stays light."""
    if name == "Monitor":
        from optdoctor.monitor import Monitor

        return Monitor
    raise AttributeError(f"module 'optdoctor' has no attribute {name!r}")
