"""The one YAML reader of optdoctor's input files (probe configs and rule packs), with limits.

A config or a rule pack may come from someone else (``optdoctor rules validate`` is meant for
untrusted files), so reading one must fail fast, never hang or exhaust memory. The limits are
checked while PyYAML composes its node graph, before any Python value is built:

- ``MAX_BYTES`` (256 KiB): 50 times the largest shipped file (5 KiB); a hand-written config
  is a page.
- ``MAX_DEPTH`` (64 nested collections): a config is 4 levels deep, a rule file 5; the
  composer recurses per level, so a file of 10,000 ``[`` would otherwise hit Python's
  recursion limit.
- ``MAX_ALIASES`` (100 ``*alias`` uses): a config uses a few (``<<: *defaults``).
- ``MAX_NODES`` (10,000 values, counting what every alias stands for): 50 times the largest
  shipped file (211). The "billion laughs" bomb (9 aliases of 9 aliases of ...) is a few
  hundred bytes and fewer than 100 aliases, but expands to 10^9 values for whoever walks it;
  composing shares an aliased node, so counting the expanded size costs nothing.

PyYAML is pure Python here: measured on this project's 2-core machine, the worst files within
these limits (10,000 values nested 60 deep, or a flat list) fail in under a second; with
1 MiB and 100,000 values they took 5-8 s.

Every problem is a ``Problem`` located at ``file:line:col`` and raised as the caller's error
class (``ConfigError``, ``RuleError``: exit 2). ``PositionedTree`` turns the node graph into
plain values and remembers where each key sits. No torch here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from optdoctor.errors import Problem, UsageError

Position = tuple[int, int]  # (line, col), 1-based

MAX_BYTES = 256 << 10
MAX_DEPTH = 64
MAX_ALIASES = 100
MAX_NODES = 10_000

# Floats with an exponent but no dot, or an unsigned exponent (1e-3, 3E5, 1.0e5): YAML 1.1,
# which PyYAML implements, reads them as strings; YAML 1.2 and people read them as numbers.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")


class LimitError(yaml.MarkedYAMLError):
    """The input exceeds one of the limits above (raised while composing)."""


class NumberLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float, and composes within the limits."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._nodes = 0  # aliases counted as the size of what they stand for
        self._sizes: dict[str, int] = {}  # anchor -> expanded size of its node

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise LimitError(None, None, f"more than {MAX_ALIASES} aliases (*name)", event.start_mark)
            node = super().compose_node(parent, index)
            self._count(self._sizes.get(event.anchor, 1), event)  # an alias into its own anchor: 1
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise LimitError(None, None, f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
        start = self._nodes
        self._count(1, event)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if event.anchor is not None:
            self._sizes[event.anchor] = self._nodes - start
        return node

    def _count(self, n: int, event: yaml.Event) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            what = " once its aliases are expanded" if self._aliases else ""
            raise LimitError(None, None, f"more than {MAX_NODES:,} values{what}", event.start_mark)


NumberLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+.0123456789"))


def read_text(path: str | Path, shown: str, what: str, error: type[UsageError]) -> str:
    """The text of a YAML input file (at most ``MAX_BYTES``); ``what`` names it in messages
    ("config file", "rule file")."""
    path = Path(path)
    if path.is_dir():
        raise error([Problem(f"is a directory, expected a YAML {what}", file=shown)])
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)  # a FIFO or /dev/zero has no size to ask for first
    except FileNotFoundError:
        raise error([Problem(f"{what} not found", file=shown)]) from None
    except OSError as err:
        raise error([Problem(f"cannot read the {what}: {err.strerror or err}", file=shown)]) from None
    if len(data) > MAX_BYTES:
        limit = f"{MAX_BYTES >> 10} KiB"
        raise error([Problem(f"larger than {limit}: optdoctor reads {what}s of at most {limit}", file=shown)])
    try:
        return data.decode("utf-8-sig")  # -sig: tolerate the BOM some editors write
    except UnicodeDecodeError as err:
        raise error([Problem(f"not UTF-8 text ({err.reason} at byte {err.start})", file=shown)]) from None


def compose(text: str, shown: str, error: type[UsageError]) -> Node | None:
    """The node graph of one YAML document (None when empty), within the limits."""
    try:
        loader = NumberLoader(text)  # its reader already rejects control characters
        try:
            return loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as err:
        raise error([yaml_problem(err, shown)]) from None
    except yaml.reader.ReaderError as err:
        line, col = _line_col(text, err.position)
        message = f"invalid YAML: {err.reason} (found {chr(err.character)!r})"
        raise error([Problem(message, file=shown, line=line, col=col)]) from None
    except yaml.YAMLError as err:  # any other PyYAML complaint: still the file's fault
        raise error([Problem(f"invalid YAML: {err}", file=shown)]) from None


def yaml_problem(err: yaml.MarkedYAMLError, shown: str) -> Problem:
    mark = err.problem_mark or err.context_mark
    prefix = "YAML too complex: " if isinstance(err, LimitError) else "invalid YAML: "
    message = prefix + f"{err.problem or err.context}"
    if err.context and err.problem:
        where = err.context_mark
        at = f" at line {where.line + 1}" if where and mark and where.line != mark.line else ""
        message += f" ({err.context}{at})"  # where an unclosed bracket or quote began
    line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
    return Problem(message, file=shown, line=line, col=col)


def _line_col(text: str, offset: int) -> Position:
    line_start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset) + 1, offset - line_start + 1


def mark_of(node: Node) -> Position:
    return node.start_mark.line + 1, node.start_mark.column + 1


def describe_node(node: Node) -> str:
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
        self.root = mark_of(node)
        return self._value(node, "")

    def _value(self, node: Node, path: str) -> Any:
        if id(node) in self._active:
            self._add("recursive YAML alias", path, mark_of(node))
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
                self._add(f"a key must be a plain name, got {describe_node(key_node)}", path, mark_of(key_node))
                continue
            key = key_node.value
            child = f"{path}.{key}" if path else key
            if key in first:
                self._add(f"duplicate key {key!r} (first at line {first[key]})", child, mark_of(key_node))
            first[key] = key_node.start_mark.line + 1
            self.positions[child] = mark_of(key_node)
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
                self._add("'<<' must merge a mapping", path, mark_of(item))
        return out

    def _sequence(self, node: SequenceNode, path: str) -> list[Any]:
        items = []
        for i, item in enumerate(node.value):
            child = f"{path}.{i}"
            self.positions[child] = mark_of(item)
            items.append(self._value(item, child))
        return items

    def _scalar(self, node: ScalarNode, path: str) -> Any:
        try:
            return self._constructor.construct_object(node)
        except yaml.MarkedYAMLError as err:  # e.g. an unknown tag "!foo" or a bad !!int
            self.problems.append(yaml_problem(err, self.shown))
        except (ValueError, TypeError, OverflowError) as err:  # a 5000-digit int, a 30th of February
            self._add(f"invalid YAML value {_clip(node.value)!r}: {err}", path, mark_of(node))
        self.broken.add(path)
        return None

    def _add(self, message: str, key: str, where: Position) -> None:
        self.problems.append(Problem(message, key=key, file=self.shown, line=where[0], col=where[1]))


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
