"""YAML probe config -> validated ``LoadedConfig`` (CONTRACT.md section 1).

Every problem carries ``file:line:col`` and the key path, and all problems of a file are
reported at once. The YAML itself is read by ``optdoctor.yamlio`` (with its size limits). No torch here: ``optdoctor schema`` and the ``rules`` commands import this.
"""

from __future__ import annotations

import os
import typing
from typing import Any

from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode

from optdoctor.config.schema import BUILTIN_LOSSES, LoadedConfig, ProbeConfig
from optdoctor.errors import ConfigError, Problem, did_you_mean, sort_problems
from optdoctor.yamlio import Position, PositionedTree, compose, describe_node, mark_of, read_text

# Keys whose value is one of a few names: a typo there gets a did-you-mean too.
_CHOICES: dict[str, tuple[str, ...]] = {"loss": BUILTIN_LOSSES}


def load_config(path: str | os.PathLike[str]) -> LoadedConfig:
    """Read, parse and validate a probe config; raise ``ConfigError`` with every problem."""
    shown = os.fspath(path)
    root = _root(compose(read_text(shown, shown, "config file", ConfigError), shown, ConfigError), shown)
    tree = PositionedTree(shown)
    data = tree.build(root)
    problems = list(tree.problems)
    try:
        config = ProbeConfig.model_validate(data)
    except ValidationError as err:
        problems += _validation_problems(err, tree, shown)
    if problems:
        raise ConfigError(sort_problems(dict.fromkeys(problems)))  # a merged anchor repeats its own
    base_dir = os.path.dirname(os.path.abspath(shown))
    return LoadedConfig(config=config, path=shown, base_dir=base_dir, positions=tree.positions)


def problem_at(loaded: LoadedConfig | None, key: str, message: str, suggestion: str | None = None) -> Problem:
    """A problem located at a key path of a loaded config (or at its closest present parent)."""
    if loaded is None:
        return Problem(message, key=key, suggestion=suggestion)
    line, col = loaded.line_of(key) or (None, None)
    return Problem(message, key=key, file=loaded.path, line=line, col=col, suggestion=suggestion)


def _root(root: Node | None, shown: str) -> MappingNode:
    if root is None or (isinstance(root, ScalarNode) and root.tag == "tag:yaml.org,2002:null"):
        message = "the config is empty; expected sections model:, data:, optimizer:"
        raise ConfigError([Problem(message, file=shown, line=1, col=1)])
    if not isinstance(root, MappingNode):
        line, col = mark_of(root)
        message = f"the config must be a mapping of sections (model:, data:, optimizer:, ...), got {describe_node(root)}"
        raise ConfigError([Problem(message, file=shown, line=line, col=col)])
    return root


# --- pydantic errors -> Problems -----------------------------------------------------------

_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
    "list_type": "a list",
}
_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def _validation_problems(err: ValidationError, tree: PositionedTree, shown: str) -> list[Problem]:
    errors = [e for e in err.errors(include_url=False) if _key(e["loc"]) not in tree.broken]
    problems = [_problem(e, tree, shown) for e in errors]
    # "optimzer:" also leaves "optimizer" missing; the did-you-mean already says that.
    meant = {(_key(e["loc"][:-1]), p.suggestion) for e, p in zip(errors, problems) if e["type"] == "extra_forbidden"}
    return [p for e, p in zip(errors, problems) if not (e["type"] == "missing" and (_key(e["loc"][:-1]), e["loc"][-1]) in meant)]


def _key(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _problem(error: dict[str, Any], tree: PositionedTree, shown: str) -> Problem:
    loc = tuple(str(part) for part in error["loc"])
    kind, value = error["type"], error.get("input")
    key = ".".join(loc)
    if kind == "missing":
        parent = ".".join(loc[:-1])
        line, col = tree.positions.get(parent, tree.root)
        what = "section" if len(loc) == 1 else "required key"
        return Problem(f"missing {what} {loc[-1]!r}", key=parent, file=shown, line=line, col=col)
    message, suggestion = _message(kind, error, loc, value)
    line, col = _nearest(tree.positions, loc) or tree.root
    return Problem(message, key=key, file=shown, line=line, col=col, suggestion=suggestion)


def _message(kind: str, error: dict[str, Any], loc: tuple[str, ...], value: Any) -> tuple[str, str | None]:
    if kind == "extra_forbidden":
        return f"unknown key {loc[-1]!r}", _suggest_key(loc)
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_show(value)}", None
    if kind in _BOUNDS:
        name, op = _BOUNDS[kind]
        bound = error["ctx"][name]
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound  # "> 0", not "> 0.0"
        return f"must be {op} {bound}, got {_show(value)}", None
    message = error["msg"].removeprefix("Value error, ")
    choices = _CHOICES.get(".".join(loc))
    suggestion = did_you_mean(value, choices) if choices and isinstance(value, str) else None
    return message, suggestion


def _suggest_key(loc: tuple[str, ...]) -> str | None:
    """A close sibling key; else a hint for settings put one level too high or too low."""
    model = _model_at(loc[:-1])
    if model is None:
        return None
    fields = model.model_fields
    close = did_you_mean(loc[-1], fields)
    if close:
        return close
    if "args" in fields:  # "optimizer: {momentum: 0.9}" means optimizer.args.momentum
        return "did you mean to put it under 'args:'?"
    for name in fields:  # "steps: 200" at the top means probe.steps
        child = _model_at((*loc[:-1], name))
        if child is not None and loc[-1] in child.model_fields:
            return f"{name}.{loc[-1]}"
    return None


def _model_at(loc: tuple[str, ...]) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at a key path, if any."""
    model: type[BaseModel] = ProbeConfig
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            return None
        found = _model_in(field.annotation)
        if found is None:
            return None
        model = found
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    candidates = typing.get_args(annotation) or (annotation,)  # Optional[X] -> (X, None)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _nearest(positions: dict[str, Position], loc: tuple[str, ...]) -> Position | None:
    for end in range(len(loc), 0, -1):
        where = positions.get(".".join(loc[:end]))
        if where:
            return where
    return None


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)
