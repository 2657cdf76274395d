"""The one family of exceptions the CLI maps to exit codes (CONTRACT.md section 3)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One located problem in a config or rule file.

    Rendered as ``file:line:col: key.path: message; did you mean 'x'?`` so that editors and
    CI annotate the right place. ``line`` and ``col`` are 1-based.
    """

    message: str
    key: str = ""
    file: str | None = None
    line: int | None = None
    col: int | None = None
    suggestion: str | None = None

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
                if self.col is not None:
                    where += f":{self.col}"
            where += ": "
        key = f"{self.key}: " if self.key else ""
        hint = ""
        if self.suggestion:
            hint = self.suggestion if self.suggestion.startswith(("did you", "use ", "try ")) else f"did you mean {self.suggestion!r}?"
            hint = f"; {hint}"
        return f"{where}{key}{self.message}{hint}"


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest choice to a misspelt word, or None (for ``Problem.suggestion``)."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def sort_problems(problems: Iterable[Problem]) -> list[Problem]:
    """In file order (unlocated ones first)."""
    return sorted(problems, key=lambda p: (p.line or 0, p.col or 0))


class OptdoctorError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UsageError(OptdoctorError):
    """Bad command-line usage or bad input files (exit 2: nothing was probed)."""

    exit_code = 2

    def __init__(self, problems: list[Problem] | str):
        if isinstance(problems, str):
            problems = [Problem(problems)]
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ConfigError(UsageError):
    """The probe config is invalid; carries every problem found, not only the first."""


class RuleError(UsageError):
    """A rule file (shipped or user's) is invalid."""


class ProbeError(OptdoctorError):
    """The probe could not run (exit 3): the user's model/data/loss code raised, out of
    memory, ...  ``detail`` holds the user's own traceback frames, already formatted;
    ``exhausted`` says the machine gave out (``exhaustion``), ``hint`` what to try then."""

    exit_code = 3

    def __init__(self, message: str, detail: str = "", hint: str = "", exhausted: str | None = None):
        self.message = message
        self.detail = detail
        self.hint = hint
        self.exhausted = exhausted
        super().__init__(message)


# What PyTorch and Python say when memory or the GPU gives out (torch is not imported here:
# torch.OutOfMemoryError and torch.cuda.OutOfMemoryError are one class, matched by name).
_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "Cannot allocate memory", "CUBLAS_STATUS_ALLOC_FAILED",
                  "Storage size calculation overflowed")  # a tensor of more than 2^63 bytes
_CUDA_ERROR = ("CUDA error", "CUDNN_STATUS_", "CUBLAS_STATUS_", "NCCL error")


def exhaustion(exc: BaseException) -> str | None:
    """"ran out of memory" or "hit a CUDA error" when ``exc`` is the machine giving out rather
    than a bug in anyone's code (the probe could not run: exit 3); else None."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "ran out of memory"
    if isinstance(exc, RuntimeError) or type(exc).__name__ == "AcceleratorError":  # a device-side assert (torch 2.11)
        text = str(exc)
        if any(m in text for m in _OUT_OF_MEMORY):
            return "ran out of memory"
        if any(m in text for m in _CUDA_ERROR):
            return "hit a CUDA error"
    return None
