"""YAML probe config -> validated ``LoadedConfig`` (CONTRACT.md section 1).

Every problem carries ``file:line:col`` and the key path, and all problems of a file are
reported at once. No torch here: ``optdoctor schema`` and the ``rules`` commands import this.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from optdoctor.config.schema import BUILTIN_LOSSES, LoadedConfig, ProbeConfig
from optdoctor.errors import ConfigError, Problem

Position = tuple[int, int]  # (line, col), 1-based

# Floats with an exponent but no dot, or an unsigned exponent (1e-3, 3E5, 1.0e5): YAML 1.1,
# which PyYAML implements, reads them as strings; YAML 1.2 and people read them as numbers.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")


class NumberLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float."""


NumberLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+.0123456789"))

# Keys whose value is one of a few names: a typo there gets a did-you-mean too.
_CHOICES: dict[str, tuple[str, ...]] = {"loss": BUILTIN_LOSSES}


def load_config(path: str | os.PathLike[str]) -> LoadedConfig:
    """Read, parse and validate a probe config; raise ``ConfigError`` with every problem."""
    shown = os.fspath(path)
    root = _compose(_read(shown), shown)
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


# --- helpers shared with factories.py and resolve.py ---------------------------------------


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest choice to a misspelt word, or None."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def problem_at(loaded: LoadedConfig | None, key: str, message: str, suggestion: str | None = None) -> Problem:
    """A problem located at a key path of a loaded config (or at its closest present parent)."""
    if loaded is None:
        return Problem(message, key=key, suggestion=suggestion)
    line, col = loaded.line_of(key) or (None, None)
    return Problem(message, key=key, file=loaded.path, line=line, col=col, suggestion=suggestion)


def sort_problems(problems: Iterable[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.line or 0, p.col or 0))


# --- reading and parsing -------------------------------------------------------------------


def _read(shown: str) -> str:
    path = Path(shown)
    if path.is_dir():
        raise ConfigError([Problem("is a directory, expected a YAML config file", file=shown)])
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: tolerate the BOM some editors write
    except FileNotFoundError:
        raise ConfigError([Problem("config file not found", file=shown)]) from None
    except UnicodeDecodeError as err:
        raise ConfigError([Problem(f"not UTF-8 text ({err.reason} at byte {err.start})", file=shown)]) from None
    except OSError as err:
        raise ConfigError([Problem(f"cannot read the config: {err.strerror}", file=shown)]) from None


def _compose(text: str, shown: str) -> MappingNode:
    try:
        loader = NumberLoader(text)  # already rejects control characters
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as err:
        raise ConfigError([_yaml_problem(err, shown)]) from None
    except yaml.reader.ReaderError as err:
        line, col = _line_col(text, err.position)
        message = f"invalid YAML: {err.reason} (found {chr(err.character)!r})"
        raise ConfigError([Problem(message, file=shown, line=line, col=col)]) from None
    if root is None or (isinstance(root, ScalarNode) and root.tag == "tag:yaml.org,2002:null"):
        message = "the config is empty; expected sections model:, data:, optimizer:"
        raise ConfigError([Problem(message, file=shown, line=1, col=1)])
    if not isinstance(root, MappingNode):
        line, col = _mark(root)
        message = f"the config must be a mapping of sections (model:, data:, optimizer:, ...), got {_describe_node(root)}"
        raise ConfigError([Problem(message, file=shown, line=line, col=col)])
    return root


def _line_col(text: str, offset: int) -> Position:
    line_start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset) + 1, offset - line_start + 1


def _yaml_problem(err: yaml.MarkedYAMLError, shown: str) -> Problem:
    mark = err.problem_mark or err.context_mark
    message = f"invalid YAML: {err.problem or err.context}"
    if err.context and err.problem:
        where = err.context_mark
        at = f" at line {where.line + 1}" if where and mark and where.line != mark.line else ""
        message += f" ({err.context}{at})"  # where an unclosed bracket or quote began
    line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
    return Problem(message, file=shown, line=line, col=col)


def _mark(node: Node) -> Position:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _describe_node(node: Node) -> str:
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, MappingNode):
        return "a mapping"
    return f"a single value {node.value!r}"


class PositionedTree:
    """Builds plain Python values from YAML nodes, recording where every key sits.

    Keys stay as written (``on:`` is the string "on", not True): config keys are names.
    """

    def __init__(self, shown: str):
        self.shown = shown
        self.positions: dict[str, Position] = {}
        self.problems: list[Problem] = []
        self.root: Position = (1, 1)
        self._constructor = NumberLoader("")  # only its scalar constructors are used
        self._active: set[int] = set()  # nodes being built: an alias back into one loops forever
        self.broken: set[str] = set()  # key paths already reported, whose value is a stand-in None

    def build(self, node: MappingNode) -> dict[str, Any]:
        self.root = _mark(node)
        return self._value(node, "")

    def _value(self, node: Node, path: str) -> Any:
        if id(node) in self._active:
            self._add("recursive YAML alias", path, _mark(node))
            self.broken.add(path)
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            if isinstance(node, SequenceNode):
                return self._sequence(node, path)
            return self._scalar(node, path)
        finally:
            self._active.discard(id(node))

    def _mapping(self, node: MappingNode, path: str) -> dict[str, Any]:
        merged = [value for key, value in node.value if key.tag == "tag:yaml.org,2002:merge"]
        out = self._merge(merged, path)  # "<<: *defaults" first: explicit keys override it
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if not isinstance(key_node, ScalarNode):
                self._add(f"a key must be a plain name, got {_describe_node(key_node)}", path, _mark(key_node))
                continue
            key = key_node.value
            child = f"{path}.{key}" if path else key
            if key in first:
                self._add(f"duplicate key {key!r} (first at line {first[key]})", child, _mark(key_node))
            first[key] = key_node.start_mark.line + 1
            self.positions[child] = _mark(key_node)
            out[key] = self._value(value_node, child)
        return out

    def _merge(self, sources: list[Node], path: str) -> dict[str, Any]:
        nodes = [n for source in sources for n in (source.value if isinstance(source, SequenceNode) else [source])]
        out: dict[str, Any] = {}
        for item in reversed(nodes):  # the first source wins, as in YAML
            value = self._value(item, path)
            if isinstance(value, dict):
                out.update(value)
            else:
                self._add("'<<' must merge a mapping", path, _mark(item))
        return out

    def _sequence(self, node: SequenceNode, path: str) -> list[Any]:
        items = []
        for i, item in enumerate(node.value):
            child = f"{path}.{i}"
            self.positions[child] = _mark(item)
            items.append(self._value(item, child))
        return items

    def _scalar(self, node: ScalarNode, path: str) -> Any:
        try:
            return self._constructor.construct_object(node)
        except yaml.MarkedYAMLError as err:  # e.g. an unknown tag "!foo" or a bad !!int
            self.problems.append(_yaml_problem(err, self.shown))
            self.broken.add(path)
            return None

    def _add(self, message: str, key: str, where: Position) -> None:
        self.problems.append(Problem(message, key=key, file=self.shown, line=where[0], col=where[1]))


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
