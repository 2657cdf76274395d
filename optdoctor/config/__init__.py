"""YAML probe config -> validated ``LoadedConfig``; factories -> callables.

Torch-free on purpose (the ``schema`` and ``rules`` commands import it). The torch side,
optimizer/scheduler/loss resolution, lives in ``optdoctor.config.resolve``.
"""

from optdoctor.config.factories import call_user, check_kwargs, resolve_callable, user_traceback
from optdoctor.config.loader import load_config
from optdoctor.config.schema import LoadedConfig, ProbeConfig

__all__ = [
    "LoadedConfig",
    "ProbeConfig",
    "call_user",
    "check_kwargs",
    "load_config",
    "resolve_callable",
    "user_traceback",
]
