"""The rule-condition language: a small, safe expression language over named numbers.

    grad.depth_ratio < params.ratio_max and loss.rel_drop < 0.05
    not isnan(hess.lambda_min_rel) and hess.lambda_min_rel < -params.neg_rel
    0.1 < x.y <= 2

Rule files are data and may come from an untrusted rule pack (DESIGN.md), so a condition is
parsed with :mod:`ast`, checked against an allow-list, rewritten and only then compiled:

- names are dotted identifiers (``act.saturated_frac.max``) looked up as *whole strings* in
  the environment mapping, never as attributes; a name part may not start with ``_``;
- ``and or not``, comparisons (chained too), ``+ - * /``, unary ``- +``, int/float literals,
  ``true false True False nan inf``, parentheses, and calls of :data:`FUNCTIONS`;
- nothing else: no strings, subscripts, attributes of anything but a name, lambdas,
  comprehensions, ``** // %``, bit operators, ``is``/``in``, walrus, f-strings, keyword or
  starred arguments, and no conditional expressions (``a if c else b``): a threshold that
  depends on the setup belongs in a named, documented ``param`` and the rest is ``and``/``or``.

Semantics (IEEE 754 throughout, nothing raises on bad numbers):

- literals are floats; ``/`` by zero gives ``±inf`` or ``nan``; ``log10(0)`` is ``-inf``,
  ``log10(-1)`` and ``sqrt(-1)`` are ``nan``, ``exp(1000)`` is ``inf``;
- comparisons with ``nan`` are false, except ``!=`` which is true (IEEE);
- ``and``/``or``/``not`` short-circuit and always give a bool; a number used as a truth value
  is true when it is neither 0 nor ``nan`` (so a missing measurement never counts as true);
- ``min``/``max``/``clip`` return ``nan`` when any argument is ``nan`` (Python's builtins
  would answer depending on argument order);
- every name the expression mentions must be in the environment, read or not:
  :class:`MissingName` is raised otherwise, so that a rule whose inputs are missing is
  reported as "not evaluated", never silently false (STYLE.md principle 4).

The compiled function reads each name once into a local, then evaluates the rewritten
expression: about 0.4 us per evaluation here (``python benchmarks/expr.py``).
"""

from __future__ import annotations

import ast
import difflib
import math
import re
import warnings
from collections.abc import Callable, Collection, Mapping
from typing import NamedTuple

from optdoctor.errors import Problem, RuleError

__all__ = ["FUNCTIONS", "Expr", "ExprError", "MissingName", "compile_expr"]

# Guards against hostile or absurd input, checked before and after parsing. CPython's own
# parser gives up at 200 nested parentheses and its compiler recurses once per AST level
# (RecursionError at ~1000 unary minus signs), so both limits sit well below that.
MAX_SOURCE_CHARS = 1000
MAX_BRACKET_DEPTH = 50
MAX_AST_DEPTH = 100
MAX_AST_NODES = 500

_INF = math.inf
_NAN = math.nan


# ---------------------------------------------------------------- the allowed functions


def _abs(x):
    return abs(x)


def _min(*xs):
    best = xs[0]
    for x in xs:
        if x != x:  # nan wins, whatever its position
            return x
        if x < best:
            best = x
    return best


def _max(*xs):
    best = xs[0]
    for x in xs:
        if x != x:
            return x
        if x > best:
            best = x
    return best


def _log10(x):
    try:
        return math.log10(x)
    except ValueError:  # x <= 0 or x == -inf
        return -_INF if x == 0 else _NAN


def _log(x):
    try:
        return math.log(x)
    except ValueError:
        return -_INF if x == 0 else _NAN


def _exp(x):
    try:
        return math.exp(x)
    except OverflowError:  # also an int beyond float range, either sign
        return _INF if x > 0 else 0.0


def _sqrt(x):
    try:
        return math.sqrt(x)
    except ValueError:
        return _NAN
    except OverflowError:  # an int beyond float range
        return _INF if x > 0 else _NAN


def _isnan(x):
    try:
        return math.isnan(x)
    except OverflowError:  # an int too large for a float is still a number
        return False


def _isfinite(x):
    try:
        return math.isfinite(x)
    except OverflowError:
        return True


def _clip(x, lo, hi):
    if x != x or lo != lo or hi != hi:
        return _NAN
    if x < lo:
        x = lo
    if x > hi:
        x = hi
    return x


def _div(a, b):
    """``a / b`` without raising: IEEE 754 division (x/0 = ±inf, 0/0 = nan)."""
    try:
        return a / b
    except ZeroDivisionError:
        if a != a or a == 0:
            return _NAN
        return _INF if (a > 0) == (math.copysign(1.0, b) > 0) else -_INF
    except OverflowError:  # int / int beyond float range
        return _INF if (a > 0) == (b > 0) else -_INF


def _truth(x):
    """A number as a truth value: true unless 0 or nan."""
    return x == x and x != 0


class _Signature(NamedTuple):
    fn: Callable
    min_args: int
    max_args: int | None  # None: any number
    usage: str
    returns_bool: bool = False


_SIGNATURES: dict[str, _Signature] = {
    "abs": _Signature(_abs, 1, 1, "abs(x)"),
    "clip": _Signature(_clip, 3, 3, "clip(x, lo, hi)"),
    "exp": _Signature(_exp, 1, 1, "exp(x)"),
    "isfinite": _Signature(_isfinite, 1, 1, "isfinite(x)", returns_bool=True),
    "isnan": _Signature(_isnan, 1, 1, "isnan(x)", returns_bool=True),
    "log": _Signature(_log, 1, 1, "log(x)"),
    "log10": _Signature(_log10, 1, 1, "log10(x)"),
    "max": _Signature(_max, 2, None, "max(a, b, ...)"),
    "min": _Signature(_min, 2, None, "min(a, b, ...)"),
    "sqrt": _Signature(_sqrt, 1, 1, "sqrt(x)"),
}

#: The allow-list: function name -> its safe implementation (pure, never raises on numbers).
FUNCTIONS: dict[str, Callable] = {name: sig.fn for name, sig in _SIGNATURES.items()}

_CONSTANTS: dict[str, object] = {
    "true": True, "false": False, "True": True, "False": False, "nan": _NAN, "inf": _INF,
}

# The compiled function's only globals. Generated code names them, user text never can:
# user names are rewritten into string keys, and no user name part may start with "_".
_GLOBALS: dict[str, object] = {"__builtins__": {}, "_div": _div, "_truth": _truth}
_GLOBALS.update({f"_f_{name}": fn for name, fn in FUNCTIONS.items()})


# ---------------------------------------------------------------------------- errors


class ExprError(RuleError):
    """An expression that cannot be compiled (or evaluated).

    ``line`` and ``col`` are 1-based and relative to the expression's source; the rule loader
    adds the position of the expression in its file (see :meth:`to_problem`).
    """

    def __init__(self, message: str, line: int = 1, col: int = 1, suggestion: str | None = None):
        self.message = message
        self.line = line
        self.col = col
        self.suggestion = suggestion
        super().__init__([Problem(message, line=line, col=col, suggestion=suggestion)])

    def to_problem(self, file: str | None = None, key: str = "", start: tuple[int, int] = (1, 1)) -> Problem:
        """This error located in a file, ``start`` being where the expression's first
        character sits there (1-based line, col). Exact for single-line expressions; for a
        multi-line block scalar the caller knows the indentation and should place it itself."""
        line = start[0] + self.line - 1
        col = start[1] + self.col - 1 if self.line == 1 else self.col
        return Problem(self.message, key=key, file=file, line=line, col=col, suggestion=self.suggestion)

    def __str__(self) -> str:
        text = f"{self.line}:{self.col}: {self.message}"
        if self.suggestion:
            hint = self.suggestion
            if not hint.startswith(("did you", "use ", "try ")):
                hint = f"did you mean {hint!r}?"
            text += f"; {hint}"
        return text


class MissingName(KeyError):
    """A name the expression mentions is not in the environment."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"{self.name!r} is not in the environment"


# ------------------------------------------------------------------ the compiled form


class Expr:
    """A compiled condition. Build it with :func:`compile_expr`."""

    __slots__ = ("source", "names", "name_positions", "is_bool", "_fn")

    source: str
    names: frozenset[str]
    name_positions: dict[str, tuple[int, int]]
    is_bool: bool  # True when the result is a bool whatever the values (a condition)

    def __init__(self, source, names, name_positions, is_bool, fn):
        self.source = source
        self.names = names
        self.name_positions = name_positions
        self.is_bool = is_bool
        self._fn = fn

    def evaluate(self, env: Mapping[str, float]) -> bool | float:
        """The value of the expression with names read from ``env``.

        Raises :class:`MissingName` when a name the expression mentions is absent (the first
        one in source order), :class:`ExprError` when a value is not a number.
        """
        try:
            return self._fn(env)
        except KeyError as e:
            raise MissingName(e.args[0] if e.args else "?") from None
        except (TypeError, ValueError, ArithmeticError) as e:
            raise ExprError(f"cannot evaluate {self.source!r}: {e}") from e

    def __repr__(self) -> str:
        return f"Expr({self.source!r})"

    def __reduce__(self):  # picklable (e.g. to worker processes): recompile from source
        return (compile_expr, (self.source,))


# ------------------------------------------------------------------------ the compiler

_BINOPS: dict[type, str] = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/",
    ast.Pow: "**", ast.FloorDiv: "//", ast.Mod: "%", ast.MatMult: "@",
    ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|", ast.BitXor: "^", ast.BitAnd: "&",
}
_ALLOWED_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div)
_BINOP_HINTS = {
    "**": "use x * x, or exp(y * log(x))",
    "&": "use 'and'",
    "|": "use 'or'",
}
_CMPOPS: dict[type, str] = {
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
    ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in",
}
_ALLOWED_CMPOPS = (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq)
_CMP_HINTS = {"is": "use '=='", "is not": "use '!='"}

# What to say about a construct outside the language.
_CONSTRUCTS: dict[type, str] = {
    ast.Lambda: "lambdas are not allowed",
    ast.IfExp: "conditional expressions ('x if c else y') are not allowed",
    ast.ListComp: "list comprehensions are not allowed",
    ast.SetComp: "set comprehensions are not allowed",
    ast.DictComp: "dict comprehensions are not allowed",
    ast.GeneratorExp: "generator expressions are not allowed",
    ast.NamedExpr: "':=' (assignment expressions) is not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.List: "lists are not allowed",
    ast.Tuple: "tuples are not allowed",
    ast.Set: "sets are not allowed",
    ast.Dict: "dicts are not allowed",
    ast.Subscript: "subscripts ('a[i]') are not allowed",
    ast.Slice: "slices are not allowed",
    ast.Starred: "starred expressions ('*x') are not allowed",
    ast.Await: "'await' is not allowed",
    ast.Yield: "'yield' is not allowed",
    ast.YieldFrom: "'yield from' is not allowed",
}
_CONSTRUCT_HINTS = {
    ast.IfExp: "use 'and'/'or', or a named param",
    ast.Subscript: "use a dotted name such as act.dead_frac.max",
}

_LITERALS: dict[type, tuple[str, str | None]] = {
    str: ("string literals are not allowed", None),
    bytes: ("bytes literals are not allowed", None),
    complex: ("imaginary numbers are not allowed", None),
    type(None): ("'None' is not allowed", "use nan"),
    type(...): ("'...' is not allowed", None),
}

# Habits from other languages, hinted at when the text does not parse.
_SYNTAX_HINTS = [
    (re.compile(r"&&"), "use 'and'"),
    (re.compile(r"\|\|"), "use 'or'"),
    (re.compile(r"==="), "use '=='"),
    (re.compile(r"<>"), "use '!='"),
    (re.compile(r"(?<![<>=!])=(?!=)"), "use '=='"),
    (re.compile(r"!(?!=)"), "use 'not'"),
]

_ALLOWED_FN_LIST = ", ".join(sorted(_SIGNATURES))


def compile_expr(source: str, known_names: Collection[str] | None = None) -> Expr:
    """Check ``source`` against the language and compile it.

    With ``known_names``, every name must be one of them (typos fail here, with a
    did-you-mean, instead of at evaluation). Raises :class:`ExprError` and nothing else.
    """
    return _Compiler(source, known_names).compile()


class _Compiler:
    def __init__(self, source, known_names):
        self.source = source
        self.known = known_names
        self.slot_of: dict[str, str] = {}  # dotted name -> local variable in the generated code
        self.positions: dict[str, tuple[int, int]] = {}  # name -> first (line, col)
        self.name_offsets: dict[str, int] = {}  # name -> first offset into the source
        self.nodes = 0
        self.flat = ""  # the source on one line (set by parse)
        self.shift = 0  # offset of the parsed text into the source (leading blanks)

    # --- locations: ast gives 0-based UTF-8 byte columns of one line; the text is ASCII
    # (checked) and flattened to one line with newlines as spaces, so a column is an offset
    # into the original source.

    def at(self, offset: int) -> tuple[int, int]:
        source = self.source
        offset = max(0, min(offset, len(source)))
        line = source.count("\n", 0, offset) + source.count("\r", 0, offset) - source.count("\r\n", 0, offset) + 1
        line_start = max(source.rfind("\n", 0, offset), source.rfind("\r", 0, offset)) + 1
        return line, offset - line_start + 1

    def error(self, message: str, offset: int = 0, suggestion: str | None = None) -> ExprError:
        line, col = self.at(offset)
        return ExprError(message, line, col, suggestion)

    def start(self, node: ast.AST) -> int:
        return self.shift + getattr(node, "col_offset", 0)

    def end(self, node: ast.AST) -> int:
        return self.shift + (getattr(node, "end_col_offset", None) or node.col_offset)

    def find(self, token: str, lo: int, hi: int, default: int) -> int:
        i = self.flat.find(token, lo, hi)
        return default if i < 0 else i

    # --- stages

    def compile(self) -> Expr:
        source = self.source
        if not isinstance(source, str):
            raise ExprError(f"an expression must be a string, not {type(source).__name__}")
        self.check_text()
        try:
            body = self.parse()
            lowered, is_bool = self.lower(body, 0)
            code = self.generate(lowered)
        except (RecursionError, MemoryError) as e:  # last resort if the limits above are raised
            raise self.error(f"expression is too complex ({type(e).__name__})") from None
        for name in self.positions:  # source order: the first unknown name is reported
            self.check_known(name)
        namespace = dict(_GLOBALS)
        exec(code, namespace)  # defines _expr; its globals are _GLOBALS only, no builtins
        return Expr(source, frozenset(self.positions), dict(self.positions), is_bool, namespace["_expr"])

    def check_text(self) -> None:
        source = self.source
        if len(source) > MAX_SOURCE_CHARS:
            raise self.error(f"expression is too long ({len(source)} characters; at most {MAX_SOURCE_CHARS})")
        if not source.strip():
            raise self.error("empty expression")
        depth = 0
        for i, ch in enumerate(source):
            if ch > "\x7e" or (ch < " " and ch not in "\t\n\r"):
                what = f"{ch!r}" if ch.isprintable() else f"U+{ord(ch):04X}"
                raise self.error(f"character {what} is not allowed (expressions are ASCII)", i)
            if ch == "#":  # a comment would silently drop the rest of a multi-line condition
                raise self.error("comments ('#') are not allowed in expressions", i, "use a YAML comment")
            if ch in "([{":
                depth += 1
                if depth > MAX_BRACKET_DEPTH:
                    raise self.error(f"too many nested parentheses (more than {MAX_BRACKET_DEPTH})", i)
            elif ch in ")]}":
                depth = max(0, depth - 1)

    def parse(self) -> ast.expr:
        flat = self.source.replace("\r", " ").replace("\n", " ")  # same offsets, one line
        stripped = flat.lstrip(" \t")  # eval mode refuses leading indentation
        self.shift = len(flat) - len(stripped)
        self.flat = flat
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. invalid escapes in a (rejected) string
                tree = ast.parse(stripped, mode="eval")
        except SyntaxError as e:
            raise self.syntax_error(e, stripped) from None
        except ValueError as e:  # pragma: no cover - null bytes, rejected by check_text
            raise self.error(f"invalid syntax: {e}") from None
        return tree.body

    def syntax_error(self, e: SyntaxError, text: str) -> ExprError:
        offset = self.shift + (e.offset - 1 if e.offset else 0)
        message = "invalid syntax" if e.msg == "invalid syntax" else f"invalid syntax: {e.msg}"
        if e.msg == "invalid syntax":
            try:  # does it only lack its end ("x <", "a and")?
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ast.parse(text + " 1", mode="eval")
                message, offset = "invalid syntax: the expression ends too early", len(self.source.rstrip())
            except Exception:
                pass
        hint = next((h for pattern, h in _SYNTAX_HINTS if pattern.search(self.flat)), None)
        return self.error(message, offset, hint)

    def check_known(self, name: str) -> None:
        if self.known is None or name in self.known:
            return
        close = difflib.get_close_matches(name, list(self.known), n=1, cutoff=0.6)
        offset = self.name_offsets[name]
        raise self.error(f"unknown name {name!r}", offset, close[0] if close else None)

    def generate(self, body: ast.expr):
        # def _expr(_e):
        #     _n0 = _e["grad.depth_ratio"]      # every name read once, in source order
        #     ...
        #     return <body over _n0, _n1, ...>
        stmts: list[ast.stmt] = [
            ast.Assign(
                targets=[ast.Name(slot, ast.Store())],
                value=ast.Subscript(ast.Name("_e", ast.Load()), ast.Constant(name), ast.Load()),
            )
            for name, slot in self.slot_of.items()
        ]
        stmts.append(ast.Return(body))
        fn = ast.FunctionDef(
            name="_expr",
            args=ast.arguments(posonlyargs=[], args=[ast.arg("_e")], kwonlyargs=[], kw_defaults=[], defaults=[]),
            body=stmts,
            decorator_list=[],
            returns=None,
        )
        module = ast.fix_missing_locations(ast.Module(body=[fn], type_ignores=[]))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return compile(module, "<rule expression>", "exec")
        except (ValueError, SyntaxError) as e:  # pragma: no cover - the AST was checked
            raise self.error(f"cannot compile: {e}") from None

    # --- the allow-list: returns (rewritten node, whether its value is always a bool)

    def lower(self, node: ast.AST, depth: int) -> tuple[ast.expr, bool]:
        self.nodes += 1
        if self.nodes > MAX_AST_NODES:
            raise self.error(f"expression is too large (more than {MAX_AST_NODES} parts)", self.start(node))
        if depth > MAX_AST_DEPTH:
            raise self.error(f"expression is nested too deeply (more than {MAX_AST_DEPTH} levels)", self.start(node))
        d = depth + 1

        if isinstance(node, ast.BoolOp):
            values = [self.as_bool(v, d) for v in node.values]
            return ast.BoolOp(node.op, values), True

        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return ast.UnaryOp(ast.Not(), self.as_bool(node.operand, d)), True
            if isinstance(node.op, (ast.USub, ast.UAdd)):
                operand, _ = self.lower(node.operand, d)
                return ast.UnaryOp(node.op, operand), False
            raise self.error("'~' is not allowed", self.start(node), "use 'not'")

        if isinstance(node, ast.BinOp):
            symbol = _BINOPS.get(type(node.op), type(node.op).__name__)
            if not isinstance(node.op, _ALLOWED_BINOPS):
                at = self.find(symbol, self.end(node.left), self.start(node.right), self.start(node))
                raise self.error(f"'{symbol}' is not allowed", at, _BINOP_HINTS.get(symbol))
            left, _ = self.lower(node.left, d)
            right, _ = self.lower(node.right, d)
            if isinstance(node.op, ast.Div) and not _nonzero_constant(right):
                return ast.Call(ast.Name("_div", ast.Load()), [left, right], []), False
            return ast.BinOp(left, node.op, right), False

        if isinstance(node, ast.Compare):
            lo = self.end(node.left)
            for op, right in zip(node.ops, node.comparators):
                if not isinstance(op, _ALLOWED_CMPOPS):
                    symbol = _CMPOPS.get(type(op), type(op).__name__)
                    at = self.find(symbol.split()[0], lo, self.start(right), self.start(node))
                    raise self.error(f"'{symbol}' is not allowed", at, _CMP_HINTS.get(symbol))
                lo = self.end(right)
            left, _ = self.lower(node.left, d)
            comparators = [self.lower(c, d)[0] for c in node.comparators]
            return ast.Compare(left, node.ops, comparators), True

        if isinstance(node, ast.Call):
            return self.lower_call(node, d)

        if isinstance(node, (ast.Name, ast.Attribute)):
            name = self.dotted(node)
            if name in _CONSTANTS:
                value = _CONSTANTS[name]
                return ast.Constant(value), isinstance(value, bool)
            if name in _SIGNATURES:
                usage = _SIGNATURES[name].usage
                raise self.error(f"function {name!r} must be called", self.start(node), f"use {usage}")
            return ast.Name(self.slot(name, self.start(node)), ast.Load()), False

        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool):
                return ast.Constant(value), True
            if isinstance(value, (int, float)):
                try:
                    return ast.Constant(float(value)), False
                except OverflowError:
                    raise self.error("number is too large", self.start(node), "use inf") from None
            message, hint = _LITERALS.get(type(value), (f"the literal {value!r} is not allowed", None))
            raise self.error(message, self.start(node), hint)

        message = _CONSTRUCTS.get(type(node), f"'{type(node).__name__}' expressions are not allowed")
        offset = self.start(node)
        if isinstance(node, ast.Subscript):
            offset = self.find("[", self.end(node.value), self.end(node), offset)
        raise self.error(message, offset, _CONSTRUCT_HINTS.get(type(node)))

    def as_bool(self, node: ast.AST, depth: int) -> ast.expr:
        lowered, is_bool = self.lower(node, depth)
        if is_bool:
            return lowered
        return ast.Call(ast.Name("_truth", ast.Load()), [lowered], [])

    def lower_call(self, node: ast.Call, depth: int) -> tuple[ast.expr, bool]:
        func = node.func
        if isinstance(func, (ast.Name, ast.Attribute)):
            name = self.dotted(func, as_function=True)
        else:
            self.lower(func, depth)  # names the construct (lambda, subscript, ...)
            raise self.error("only the allowed functions can be called", self.start(node),
                             f"use one of {_ALLOWED_FN_LIST}")
        sig = _SIGNATURES.get(name)
        if sig is None:
            close = difflib.get_close_matches(name, list(_SIGNATURES), n=1, cutoff=0.6)
            raise self.error(f"function {name!r} is not allowed; allowed: {_ALLOWED_FN_LIST}",
                             self.start(func), close[0] if close else None)
        if node.keywords:
            kw = node.keywords[0]
            what = "'**' arguments are" if kw.arg is None else "keyword arguments are"
            raise self.error(f"{what} not allowed", self.start(kw), f"use {sig.usage}")
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.error("starred arguments ('*args') are not allowed", self.start(arg), f"use {sig.usage}")
        args = [self.lower(a, depth)[0] for a in node.args]  # first: name a bad construct inside
        n = len(node.args)
        if n < sig.min_args or (sig.max_args is not None and n > sig.max_args):
            wanted = f"{sig.min_args}" if sig.min_args == sig.max_args else f"at least {sig.min_args}"
            plural = "" if wanted == "1" else "s"
            raise self.error(f"function {name!r} takes {wanted} argument{plural}, got {n}", self.start(node),
                             f"use {sig.usage}")
        return ast.Call(ast.Name(f"_f_{name}", ast.Load()), args, []), sig.returns_bool

    def dotted(self, node: ast.AST, as_function: bool = False) -> str:
        """``a.b.c`` (an Attribute chain rooted at a Name) as one string, checked."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            if node.attr.startswith("_"):
                raise self.error(f"name part {node.attr!r} is not allowed: names may not start with '_'",
                                 self.end(node) - len(node.attr))
            parts.append(node.attr)
            inner = node.value
            if not isinstance(inner, (ast.Name, ast.Attribute)):
                dot = self.find(".", self.end(inner), self.end(node), self.start(node))
                what = {ast.Call: "a call", ast.Constant: "a literal", ast.Subscript: "a subscript"}.get(
                    type(inner), "an expression")
                raise self.error(f"attribute access on {what} is not allowed", dot,
                                 "use a dotted symptom name such as grad.depth_ratio")
            node = inner
        assert isinstance(node, ast.Name)
        if node.id.startswith("_") and not as_function:
            raise self.error(f"name {node.id!r} is not allowed: names may not start with '_'", self.start(node))
        parts.append(node.id)
        return ".".join(reversed(parts))

    def slot(self, name: str, offset: int) -> str:
        slot = self.slot_of.get(name)
        if slot is None:
            slot = self.slot_of[name] = f"_n{len(self.slot_of)}"
            self.positions[name] = self.at(offset)
            self.name_offsets[name] = offset
        return slot


def _nonzero_constant(node: ast.expr) -> bool:
    """A literal divisor that cannot be zero: plain ``/`` is safe (float / float never raises)."""
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, float)
        and node.value != 0
        and node.value == node.value
    )
