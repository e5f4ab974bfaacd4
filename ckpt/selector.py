"""Selectors: which checkpoints (or recipes) a search keeps, matched without importing model code.

DRYML's rules (keys the selector leaves out match anything; ``kwargs`` match as a
nested subset; ``cls`` matches subclasses through the recorded MRO names) plus
what MLflow and W&B searches lack: comparisons, ``and``/``or``/``not`` (also as
``&``, ``|``, ``~`` between selectors) and Python callables. ``where`` strings
are parsed and interpreted by :mod:`ckpt._where` over a whitelist of nodes;
nothing in them is evaluated as Python.

A comparison with a missing value is false (``!=`` too), so ``not (loss < 1)``
keeps the checkpoints that have no ``loss``. NaN compares as IEEE 754 says
(only ``!=`` is true), except that equality matching treats NaN as equal to NaN.
"""

from __future__ import annotations

import collections.abc as _abc
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from ._where import MISSING, Expression, Match, _Call, _equal, _View
from .errors import FormatError, SelectorError
from .recipes import Recipe

__all__ = ["Selector", "Match", "MISSING"]


class Selector(Match):
    """Match checkpoints by ``cls`` (name, class, or a list of them), ``args`` (a prefix), ``kwargs`` (a nested
    subset), ``metrics`` (name -> value or callable) and ``where`` (an expression like
    ``"loss < 0.1 and (lr == 1e-3 or not depth in [2, 4])"``, a callable taking the entry, or a list of them).

    Values in ``args``, ``kwargs`` and ``metrics`` match by equality (a list equals a
    tuple with the same items, a dtype its name), a nested dict as a subset (of a
    nested recipe's kwargs too), a callable when it returns true, and a ``Selector``
    against a nested recipe.
    """

    def __init__(self, cls: Any = None, args: Optional[Sequence[Any]] = None,
                 kwargs: Optional[Mapping[str, Any]] = None, metrics: Optional[Mapping[str, Any]] = None,
                 where: Union[str, Callable[[Any], Any], Sequence[Union[str, Callable[[Any], Any]]], None] = None):
        self.cls = _class_names(cls)
        if args is not None and not isinstance(args, (list, tuple)):
            raise SelectorError(f"Selector args must be a list or tuple, not {type(args).__name__}")
        for label, m in (("kwargs", kwargs), ("metrics", metrics)):
            if m is not None and not (isinstance(m, _abc.Mapping) and all(type(k) is str for k in m)):
                raise SelectorError(f"Selector {label} must be a dict with string keys, not {m!r:.80}")
        self.args = None if args is None else list(args)
        self.kwargs = None if kwargs is None else dict(kwargs)
        self.metrics = None if metrics is None else dict(metrics)
        self.where_src = where
        items = [] if where is None else (list(where) if isinstance(where, (list, tuple)) else [where])
        self._where: list[Match] = [_Call(w) if callable(w) else Expression(w) for w in items]  # type: ignore[arg-type]
        # Recipe -> whether cls/args/kwargs match: a run's checkpoints share one Recipe object, so a search
        # matches each recipe once. The Recipe is kept beside its result, so a reused id() never hits.
        self._memo: dict[int, tuple[Recipe, bool]] = {}

    def _recipe_matches(self, recipe: Recipe) -> bool:
        hit = self._memo.get(id(recipe))
        if hit is not None and hit[0] is recipe:
            return hit[1]
        try:
            result = ((self.cls is None or _cls_matches(self.cls, recipe.mro or (recipe.cls,)))
                      and (self.args is None or (len(recipe.args) >= len(self.args)
                                                 and all(_matches(s, v) for s, v in zip(self.args, recipe.args))))
                      and (self.kwargs is None or _dict_matches(self.kwargs, recipe.kwargs)))
        except FormatError:  # a malformed cached recipe: it matches nothing
            result = False
        if len(self._memo) >= 4096:
            self._memo.clear()
        self._memo[id(recipe)] = (recipe, result)
        return result

    def __call__(self, item: Any) -> bool:
        view = _View.of(item)
        recipe = view.recipe
        if self.cls is not None or self.args is not None or self.kwargs is not None:
            if recipe is None or not self._recipe_matches(recipe):
                return False
        if self.metrics is not None and not _dict_matches(self.metrics, view.metrics):
            return False
        return all(w(view.item) for w in self._where)

    def __repr__(self) -> str:
        parts = [f"{k}={v!r}" for k, v in (("cls", self.cls), ("args", self.args), ("kwargs", self.kwargs),
                                             ("metrics", self.metrics), ("where", self.where_src)) if v is not None]
        return f"Selector({', '.join(parts)})"


def _class_names(cls: Any) -> Optional[list[str]]:
    if cls is None:
        return None
    items = list(cls) if isinstance(cls, (list, tuple, set, frozenset)) else [cls]
    out = []
    for c in items:
        if isinstance(c, type):
            out.append(f"{c.__module__}.{c.__qualname__}")
        elif type(c) is str and c:
            out.append(c)
        else:
            raise SelectorError(f"Selector cls must be a class, a class name or a list of them, not {c!r:.80}")
    return out


def _cls_matches(wanted: list[str], mro: Sequence[str]) -> bool:
    """A dotted name matches an MRO entry exactly; a bare name matches the last part of one."""
    for w in wanted:
        if "." in w:
            if w in mro:
                return True
        elif any(m.rsplit(".", 1)[-1] == w for m in mro):
            return True
    return False


# -- value matching -----------------------------------------------------------
def _dict_matches(spec: Mapping[str, Any], value: Any) -> bool:
    if isinstance(value, Recipe):
        value = value.kwargs
    if not isinstance(value, _abc.Mapping):
        return False
    return all(k in value and _matches(s, value[k]) for k, s in spec.items())


def _matches(spec: Any, value: Any) -> bool:
    if isinstance(spec, Match):
        return isinstance(value, Recipe) and spec(value)
    if isinstance(spec, _abc.Mapping):
        return _dict_matches(spec, value)
    if isinstance(spec, (list, tuple)):
        return (isinstance(value, (list, tuple)) and len(spec) == len(value)
                and all(_matches(s, v) for s, v in zip(spec, value)))
    if callable(spec) and not isinstance(spec, type) and not hasattr(spec, "dtype"):
        try:
            return bool(spec(value))
        except (TypeError, ValueError, KeyError, AttributeError, IndexError):
            return False
    return _equal(spec, value)
