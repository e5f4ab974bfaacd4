"""``where`` expressions and what a selector sees: evaluated over a whitelist of nodes, never as Python.

A ``where`` string is parsed with :mod:`ast` (MLflow's ``AND``/``OR``/``NOT``/``IN``
and a lone ``=`` are read as Python's) and interpreted: names, attributes,
constant subscripts, literals, comparisons and boolean operators; nothing else.
A bare name is a metric, else a recipe kwarg, else an entry field (``idx``,
``run``, ``cls``, ``hash``, ...); ``metrics.x``, ``kwargs.x`` (or ``params.x``)
and ``args[0]`` say which. A comparison with a missing value is false (``!=``
too); NaN compares as IEEE 754 says, except that equality treats NaN as NaN.
"""

from __future__ import annotations

import ast
import collections.abc as _abc
import io
import math
import tokenize
from typing import Any, Callable, Mapping, Optional

import numpy as np

from .errors import FormatError, SelectorError
from .recipes import Recipe, recipe_of

__all__ = ["Match", "MISSING", "Expression"]

_MAX_EXPR = 10_000
_MAX_DEPTH = 100
_FIELDS = ("idx", "run", "path", "created_at", "digest", "algorithm", "sha256", "size", "aliases", "cls", "name",
           "hash", "id", "parent", "mro", "metadata")
_RECIPE_ATTRS = ("cls", "name", "module", "mro", "args", "kwargs", "hash", "id", "parent")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


#: What a name in a ``where`` expression is when the checkpoint has no such value.
MISSING: Any = _Missing()


class Match:
    """Something that says yes or no to a checkpoint entry (or a recipe); combines with ``&``, ``|``, ``~``."""

    def __call__(self, item: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def __and__(self, other: Any) -> "Match":
        return _Combined("and", [self, _as_match(other)])

    def __or__(self, other: Any) -> "Match":
        return _Combined("or", [self, _as_match(other)])

    def __invert__(self) -> "Match":
        return _Combined("not", [self])

    __rand__ = __and__
    __ror__ = __or__


class _Call(Match):
    def __init__(self, func: Callable[[Any], Any]):
        self.func = func

    def __call__(self, item: Any) -> bool:
        return bool(self.func(item))

    def __repr__(self) -> str:
        return f"Match({self.func!r})"


class _Combined(Match):
    def __init__(self, op: str, parts: list[Match]):
        self.op, self.parts = op, parts

    def __call__(self, item: Any) -> bool:
        if self.op == "and":
            return all(p(item) for p in self.parts)
        if self.op == "or":
            return any(p(item) for p in self.parts)
        return not self.parts[0](item)

    def __repr__(self) -> str:
        if self.op == "not":
            return f"~{self.parts[0]!r}"
        return "(" + f" {'&' if self.op == 'and' else '|'} ".join(map(repr, self.parts)) + ")"


def _as_match(x: Any) -> Match:
    if isinstance(x, Match):
        return x
    if callable(x):
        return _Call(x)
    raise SelectorError(f"cannot combine a selector with a {type(x).__name__}; use a Selector or a callable")


class _View:
    """What a selector sees of an entry, a recipe or a recorded object."""

    __slots__ = ("item", "recipe", "metrics")

    def __init__(self, item: Any, recipe: Optional[Recipe], metrics: Mapping[str, Any]):
        self.item, self.recipe, self.metrics = item, recipe, metrics

    @classmethod
    def of(cls, item: Any) -> "_View":
        if isinstance(item, Recipe):
            return cls(item, item, {})
        if hasattr(item, "recipe") and hasattr(item, "metrics"):
            metrics = item.metrics if isinstance(item.metrics, _abc.Mapping) else {}
            return cls(item, item.recipe, metrics)
        return cls(item, recipe_of(item), {})


def _equal(a: Any, b: Any) -> bool:
    if a is MISSING or b is MISSING:
        return False
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, np.dtype) or isinstance(b, np.dtype):
        try:
            return bool(np.dtype(a) == np.dtype(b))
        except (TypeError, ValueError):
            return False
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, Recipe) or isinstance(b, Recipe):
        return isinstance(a, Recipe) and isinstance(b, Recipe) and a.hash == b.hash
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


# -- where expressions ----------------------------------------------------------
_CMP = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.In: "in",
        ast.NotIn: "not in"}


def _compare(op: str, a: Any, b: Any) -> bool:
    if a is MISSING or b is MISSING:
        return False
    if op == "==":
        return _equal(a, b)
    if op == "!=":
        return not _equal(a, b)
    if op in ("in", "not in"):
        if isinstance(b, str):
            found = isinstance(a, str) and a in b
        elif isinstance(b, (list, tuple)):
            found = any(_equal(a, x) for x in b)
        elif isinstance(b, _abc.Mapping):
            found = a in b if isinstance(a, str) else False
        else:
            return False
        return found if op == "in" else not found
    numbers = all(isinstance(x, (int, float, np.number)) and not isinstance(x, bool) for x in (a, b))
    if not numbers and not (isinstance(a, str) and isinstance(b, str)):
        return False
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


_WORDS = {"AND": "and", "OR": "or", "NOT": "not", "IN": "in"}


def _pythonic(source: str) -> str:
    """SQL/MLflow spellings as Python: ``AND``/``OR``/``NOT``/``IN`` and a lone ``=`` for equality."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return source  # ast.parse reports the problem
    out = []
    for tok in tokens:
        if tok.type == tokenize.NAME and tok.string in _WORDS:
            tok = tok._replace(string=_WORDS[tok.string])
        elif tok.type == tokenize.OP and tok.string == "=":
            tok = tok._replace(string="==")
        out.append((tok.type, tok.string))
    return tokenize.untokenize(out)


class Expression(Match):
    """A parsed ``where`` string, evaluated against entries without ever running Python code."""

    def __init__(self, source: str):
        if type(source) is not str or not source.strip():
            raise SelectorError(f"a where expression must be a non-empty string, not {source!r:.80}")
        if len(source) > _MAX_EXPR:
            raise SelectorError(f"where expression of {len(source)} characters is over the limit of {_MAX_EXPR}")
        self.source = source
        try:
            tree = ast.parse(_pythonic(source.strip()), mode="eval")
        except SyntaxError as e:
            raise SelectorError(f"where {source!r:.200}: not an expression ({e.msg}); write e.g. "
                                "\"loss < 0.1 and not (lr == 1e-3 or depth in [2, 4])\"") from None
        except (RecursionError, MemoryError, ValueError) as e:
            raise SelectorError(f"where {source!r:.200}: cannot be parsed ({type(e).__name__})") from None
        self._check_depth(tree.body)
        self._check(tree.body)
        self.tree = tree.body

    def _check_depth(self, root: ast.AST) -> None:
        stack = [(root, 0)]
        while stack:
            node, depth = stack.pop()
            if depth > _MAX_DEPTH:
                raise SelectorError(f"where {self.source!r:.200}: nested more than {_MAX_DEPTH} levels deep")
            stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))

    def _check(self, node: ast.AST) -> None:
        allowed = (ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd, ast.Compare, ast.Name,
                   ast.Load, ast.Attribute, ast.Subscript, ast.Constant, ast.List, ast.Tuple, *_CMP)
        for n in ast.walk(node):
            if not isinstance(n, allowed):
                raise SelectorError(f"where {self.source!r:.200}: {type(n).__name__} is not allowed (only names, "
                                    "literals, comparisons, and/or/not, .attribute and [constant])")
            if isinstance(n, ast.Attribute) and n.attr.startswith("_"):
                raise SelectorError(f"where {self.source!r:.200}: attribute {n.attr!r} is not allowed")
            if isinstance(n, ast.Subscript) and not isinstance(n.slice, ast.Constant):
                raise SelectorError(f"where {self.source!r:.200}: only constant subscripts like x[0] or x['k']")

    def __call__(self, item: Any) -> bool:
        return bool(self._eval(self.tree, _View.of(item)))

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"

    def _eval(self, node: ast.AST, view: _View) -> Any:
        if isinstance(node, ast.BoolOp):
            if isinstance(node.op, ast.And):
                return all(self._eval(v, view) for v in node.values)
            return any(self._eval(v, view) for v in node.values)
        if isinstance(node, ast.UnaryOp):
            value = self._eval(node.operand, view)
            if isinstance(node.op, ast.Not):
                return not value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return -value if isinstance(node.op, ast.USub) else value
            return MISSING
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, view)
            for op, right_node in zip(node.ops, node.comparators):
                right = self._eval(right_node, view)
                if not _compare(_CMP[type(op)], left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self._eval(e, view) for e in node.elts]
        if isinstance(node, ast.Name):
            return _name(node.id, view)
        if isinstance(node, ast.Attribute):
            return _member(self._eval(node.value, view), node.attr)
        if isinstance(node, ast.Subscript):
            return _member(self._eval(node.value, view), node.slice.value)  # type: ignore[attr-defined]
        raise SelectorError(f"where {self.source!r:.200}: cannot evaluate {type(node).__name__}")  # pragma: no cover


def _recipe_value(recipe: Optional[Recipe], what: str) -> Any:
    if recipe is None:
        return MISSING
    try:
        return getattr(recipe, what)
    except FormatError:
        return MISSING


def _name(name: str, view: _View) -> Any:
    """A bare name: a metric, else a recipe kwarg, else an entry field (``idx``, ``run``, ``cls``, ...)."""
    if name in ("metrics", "kwargs", "params", "args"):  # params: MLflow's word for kwargs
        if name == "metrics":
            return view.metrics
        return _recipe_value(view.recipe, "args" if name == "args" else "kwargs")
    if name in view.metrics:
        return view.metrics[name]
    kwargs = _recipe_value(view.recipe, "kwargs")
    if isinstance(kwargs, dict) and name in kwargs:
        return kwargs[name]
    if name in _FIELDS:
        if name in _RECIPE_ATTRS:
            return _recipe_value(view.recipe, name)
        value = getattr(view.item, name, MISSING)
        return MISSING if value is None else value
    return MISSING


def _member(value: Any, key: Any) -> Any:
    if value is MISSING:
        return MISSING
    if isinstance(value, Recipe):
        return _recipe_value(value, key) if key in _RECIPE_ATTRS else _member(_recipe_value(value, "kwargs"), key)
    if isinstance(value, _abc.Mapping):
        return value.get(key, MISSING) if isinstance(key, str) else MISSING
    if isinstance(value, (list, tuple)) and type(key) is int and -len(value) <= key < len(value):
        return value[key]
    return MISSING
