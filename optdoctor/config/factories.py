"""``"file.py:callable"`` and ``"package.module:callable"`` -> callables; running user code.

A config that names a missing file or callable is a config error (exit 2, located at the key).
User code that raises, at import or when called, is a probe error (exit 3) whose detail is the
user's own traceback: optdoctor's frames are noise to someone debugging their model. So is
running out of memory or a CUDA error anywhere in a stage of probing (``stage``), in the
user's code or in torch's: the machine gave out, and the message says what to try.
No torch here.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

from optdoctor.config.loader import problem_at
from optdoctor.config.schema import LoadedConfig
from optdoctor.errors import ConfigError, OptdoctorError, Problem, ProbeError, did_you_mean, exhaustion

_ENFORCE = re.compile(r"^\[enforce fail at [^\]]*\]\s*(?:err == 0\.\s*)?")
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*\Z")
_OWN_DIRS = (
    str(Path(__file__).resolve().parents[1]) + os.sep,  # the optdoctor package
    str(Path(importlib.__file__).resolve().parent) + os.sep,  # import machinery
)


def resolve_callable(spec: str, base_dir: str, key: str, loaded: LoadedConfig | None = None) -> Callable[..., Any]:
    """The callable named by ``spec``; ``key`` (e.g. "model.factory") locates errors."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        _fail(loaded, key, f'{spec!r} is not of the form "file.py:callable" or "package.module:callable"')
    if target.endswith(".py"):
        module = _import_file(target, base_dir, key, loaded)
    else:
        module = _import_module(target, base_dir, key, loaded)
    return _attribute(module, target, attr, key, loaded)


def call_user(fn: Callable[..., Any], *args: Any, what: str, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; whatever it raises becomes a ``ProbeError`` naming ``what``."""
    try:
        return fn(*args, **kwargs)
    except (KeyboardInterrupt, SystemExit, OptdoctorError):  # built-ins may raise located errors
        raise
    except BaseException as exc:
        raise crash(exc, what) from exc


def crash(exc: BaseException, what: str, hint: str = "") -> ProbeError:
    """``exc``, raised while running ``what``, as a ProbeError (exit 3) with the user's frames.
    Out of memory or a CUDA error: a one-line message (the frames kept are the user's own, not
    torch's allocator's) and ``hint``, what to try, which a ``stage`` may fill in."""
    kind = exhaustion(exc)
    if kind is None:
        return ProbeError(f"{what} raised {type(exc).__name__}: {exc}", detail=user_traceback(exc))
    text = _ENFORCE.sub("", str(exc).strip())  # c10's "[enforce fail at alloc_cpu.cpp:127] err == 0. "
    first = text.splitlines()[0] if text else type(exc).__name__
    detail = user_traceback(exc, frames_only=True, drop=_torch_dirs())
    return ProbeError(f"{what} {kind} ({first})", detail=detail, hint=hint, exhausted=kind)


@contextlib.contextmanager
def stage(what: str, hint: str) -> Iterator[None]:
    """A stage of probing ("probe 'baseline'", "building the model"): running out of memory or a
    CUDA error anywhere inside becomes a ProbeError that names the stage and says what to try
    (``hint``, unless an inner stage said it already). Anything else passes through unchanged."""
    try:
        yield
    except ProbeError as err:
        if not err.exhausted:
            raise
        raise ProbeError(f"{what}: {err.message}", err.detail, err.hint or hint, err.exhausted) from err
    except (KeyboardInterrupt, SystemExit, OptdoctorError):
        raise
    except BaseException as exc:
        if exhaustion(exc) is None:
            raise
        raise crash(exc, what, hint) from exc


def user_traceback(exc: BaseException, frames_only: bool = False, drop: tuple[str, ...] = ()) -> str:
    """The formatted traceback of ``exc`` (and its causes) without optdoctor's own frames (nor
    those under the folders ``drop``); ``frames_only``: only the frames, "" when none is left."""
    report = traceback.TracebackException.from_exception(exc)
    _drop_own_frames(report, _OWN_DIRS + drop)
    if frames_only:
        return "".join(report.stack.format()).rstrip() if report.stack else ""
    return "".join(report.format()).rstrip()


def raised_in_optdoctor(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is optdoctor's own code."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return _is_own(tb.tb_frame.f_code.co_filename, _OWN_DIRS)


def _torch_dirs() -> tuple[str, ...]:
    torch = sys.modules.get("torch")
    file = getattr(torch, "__file__", None)
    return (str(Path(file).resolve().parent) + os.sep,) if file else ()


def check_kwargs(
    fn: Callable[..., Any],
    args: Mapping[str, Any],
    key: str,
    loaded: LoadedConfig | None = None,
    provided: Mapping[str, str] | None = None,
) -> list[Problem]:
    """Problems of calling ``fn(**args)``: unknown and missing keyword arguments.

    ``key`` is the args' key path ("optimizer.args"); ``provided`` maps the arguments optdoctor
    passes itself to where the user sets them instead ({"lr": "optimizer.lr"}).
    """
    provided = provided or {}
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # some C callables have no signature: the call will tell
        return []
    named = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    problems = []
    for name in args:
        where = f"{key}.{name}"
        if name in provided:
            problems.append(problem_at(loaded, where, f"{name!r} is set by optdoctor, not in args", f"use {provided[name]}"))
        elif name not in named and not takes_any:
            hint = did_you_mean(name, [n for n in named if n not in provided])
            problems.append(problem_at(loaded, where, f"unknown argument {name!r} of {_name(fn)}", hint))
    for name in named:
        if params[name].default is inspect.Parameter.empty and name not in args and name not in provided:
            problems.append(problem_at(loaded, key, f"missing required argument {name!r} of {_name(fn)}"))
    return problems


# --- importing -----------------------------------------------------------------------------


def _import_file(target: str, base_dir: str, key: str, loaded: LoadedConfig | None) -> ModuleType:
    path = Path(base_dir, target)
    if not path.is_file():
        where = "is a folder" if path.is_dir() else f"not found (relative to {_shown_dir(loaded, base_dir)})"
        _fail(loaded, key, f"file {target!r} {where}", _close_file(target, path))
    # One module per file, whatever imports it: model and loss from one file share classes,
    # and a second resolution does not run the user's module code again.
    name = _module_name(path)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it, as import does: pickle and dataclasses look it up
    try:
        with _on_sys_path(str(path.parent), front=True):  # its sibling imports ("from layers import ...")
            call_user(spec.loader.exec_module, module, what=f"importing {target}")
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import_module(name: str, base_dir: str, key: str, loaded: LoadedConfig | None) -> ModuleType:
    if not _MODULE_NAME.match(name):
        _fail(loaded, key, f"{name!r} is neither a .py file nor a module name")
    try:
        # Packages beside the config import too; appended so they never shadow installed ones.
        with _on_sys_path(base_dir, front=False):
            return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            _fail(loaded, key, f"cannot import module {name!r}")
        raise ProbeError(f"importing {name} raised ModuleNotFoundError: {exc}", detail=user_traceback(exc)) from exc
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise ProbeError(f"importing {name} raised {type(exc).__name__}: {exc}", detail=user_traceback(exc)) from exc


def _attribute(module: ModuleType, target: str, attr: str, key: str, loaded: LoadedConfig | None) -> Callable[..., Any]:
    obj: Any = module
    parts = attr.split(".")  # "Class.method"
    for i, part in enumerate(parts):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            owner = target if i == 0 else f"{target}:{'.'.join(parts[:i])}"
            _fail(loaded, key, f"{owner} has no callable {part!r}", did_you_mean(part, _public_callables(obj)))
    if not callable(obj):
        _fail(loaded, key, f"{target}:{attr} is not callable (it is a {type(obj).__name__})")
    return obj


def _fail(loaded: LoadedConfig | None, key: str, message: str, suggestion: str | None = None) -> NoReturn:
    raise ConfigError([problem_at(loaded, key, message, suggestion)])


@contextlib.contextmanager
def _on_sys_path(folder: str, front: bool) -> Iterator[None]:
    if folder in sys.path:
        yield
        return
    if front:
        sys.path.insert(0, folder)
    else:
        sys.path.append(folder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):  # the user's code may have removed it already
            sys.path.remove(folder)


def _module_name(path: Path) -> str:
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    return f"optdoctor_user_{stem}_{digest}"


def _shown_dir(loaded: LoadedConfig | None, base_dir: str) -> str:
    """The config's folder as the user wrote it: messages carry no absolute paths."""
    if loaded is None:
        return base_dir.rstrip(os.sep) + "/"
    folder = os.path.dirname(loaded.path)
    return f"{folder}/" if folder else "./"


def _close_file(target: str, path: Path) -> str | None:
    if not path.parent.is_dir():
        return None
    close = did_you_mean(path.name, [p.name for p in path.parent.glob("*.py")])
    return str(Path(target).with_name(close)) if close else None


def _public_callables(obj: Any) -> list[str]:
    return [n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None))]


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _drop_own_frames(report: traceback.TracebackException, dirs: tuple[str, ...]) -> None:
    report.stack = traceback.StackSummary.from_list([f for f in report.stack if not _is_own(f.filename, dirs)])
    for linked in (report.__cause__, report.__context__):  # finite: TracebackException cuts cycles
        if linked is not None:
            _drop_own_frames(linked, dirs)


def _is_own(filename: str, dirs: tuple[str, ...]) -> bool:
    if filename.startswith("<frozen importlib"):
        return True
    return os.path.abspath(filename).startswith(dirs)
