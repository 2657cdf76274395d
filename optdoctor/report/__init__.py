"""Reporters: every format renders the same Diagnosis through one interface."""

from optdoctor.report import github, json_report, junit, sarif, text  # noqa: F401  (registration)
from optdoctor.report.base import REPORTERS, exit_code, fails

__all__ = ["REPORTERS", "exit_code", "fails"]
