"""Recipe arguments as tagged JSON (docs/FORMAT.md 3.1): the recipe layer's rules over :mod:`ckpt._tagged`.

Recipes use the one tagged-JSON scheme with three more kinds, added through its
``extend`` hooks: ``dtype`` (``v``: the dtype name; numpy dtypes, scalar types,
``jnp.float32``), ``scalar`` (``v``: ``[dtype name, value]``, numpy scalars keep
their type) and ``recipe`` (``v``: a nested record ``{"class", "module", "mro",
"args", "kwargs"}``). Of the base kinds, recipes hold tuples, dicts and
non-finite floats, not sets (their order, so the hash, would follow the hash
seed), bytes or complex. Anything else is refused with the path of the offending
argument; nesting is limited to 64 levels. Decoding validates every tag (the
text comes from a file) and never imports anything but numpy (and ml_dtypes).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Callable, Optional

import numpy as np

from . import _npy, _tagged
from ._tagged import BASE, TAG
from .errors import CkptError, FormatError, RecipeArgumentError

MAX_DEPTH = 64
_JSON = (type(None), bool, int, float, list, tuple)
_KEYS = (type(None), bool, int, float, str, tuple)
_REFUSED_KINDS = ("set", "frozenset", "bytes", "complex")  # base kinds a recipe never writes
_ALLOWED = ("JSON values (None, bool, int, float, str, list, dict), tuples, numpy dtypes and scalars, and "
            "@ckpt.recorded objects")


def canonical(doc: Any) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8, no NaN (the input of every recipe hash)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def digest(doc: Any) -> str:
    return hashlib.sha256(canonical(doc)).hexdigest()


def _dtype_of(value: Any) -> Optional[np.dtype]:
    """The dtype ``value`` names (a dtype, a numpy scalar type, jnp.float32, ...), else None."""
    if isinstance(value, np.dtype):
        return value
    if isinstance(value, type) and issubclass(value, np.generic):
        return np.dtype(value)
    if type(value).__name__ == "_ScalarMeta" and isinstance(getattr(value, "dtype", None), np.dtype):
        return value.dtype  # type: ignore[no-any-return]  # jax.numpy's scalar types
    return None


def encode(value: Any, path: str, nested: Callable[[Any, str], Optional[dict[str, Any]]]) -> Any:
    """``value`` as tagged JSON; ``nested(value, path)`` gives the tag of a recorded object (or None)."""

    def hook(v: Any, where: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise RecipeArgumentError(f"{where}: nested more than {MAX_DEPTH} levels deep", path=where)
        t = type(v)
        if t is str:
            _checked_str(v, where)
            return BASE
        if t in _JSON:
            return BASE
        if t is dict:
            for k in v:
                if type(k) not in _KEYS:
                    raise RecipeArgumentError(f"{where} has a key of type {type(k).__name__} ({k!r:.60}); recipe "
                                              "dict keys are strings, numbers, booleans, None or tuples", path=where)
                if type(k) is str:
                    _checked_str(k, where)
            return BASE
        dt = _dtype_of(v)
        if dt is not None:
            return _tagged.tag("dtype", _checked_dtype_name(dt, where))
        if isinstance(v, np.generic) and v.dtype.kind in "biuf":
            return _tagged.tag("scalar", [_checked_dtype_name(v.dtype, where), _tagged.encode(v.item())])
        found = nested(v, where)
        if found is not None:
            return found
        what = t.__name__ if not callable(v) else f"{t.__name__} {getattr(v, '__qualname__', v)!r:.80}"
        raise RecipeArgumentError(
            f"{where} is a {what}: recipe arguments are stored as JSON, never pickled, so they must be {_ALLOWED}; "
            "pass a name (e.g. activation='relu') and look it up in __init__, or decorate its class with "
            "@ckpt.recorded", path=where)

    return _tagged.encode(value, hook, path=path)


def _checked_str(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RecipeArgumentError(f"{path}: the string {text!r:.60} is not valid Unicode (a lone surrogate) and "
                                  "cannot be stored as UTF-8 JSON", path=path) from None


def _checked_dtype_name(dt: np.dtype, path: str) -> str:
    if dt.hasobject or dt.names is not None:
        raise RecipeArgumentError(f"{path} is the dtype {dt}: only plain numeric, bool, string and ml_dtypes dtypes "
                                  "can be recorded", path=path)
    return _npy.dtype_name(dt)


def _bad(where: str, what: str) -> FormatError:
    return FormatError(f"{where}: invalid recipe: {what}")


def decode(value: Any, where: str, recipe: Callable[[dict[str, Any], str], Any]) -> Any:
    """Python values from tagged JSON read from a file; ``recipe(record, where)`` makes a nested recipe's value."""

    def hook(doc: Any, at: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise _bad(at, f"nested more than {MAX_DEPTH} levels deep")
        t = type(doc)
        if t is float and not math.isfinite(doc):
            raise _bad(at, "a non-finite number outside a float tag")
        if t is not dict or TAG not in doc:
            return BASE
        kind, v = doc[TAG], doc["v"]
        if kind == "dtype" and type(v) is str:
            return _dtype(v, at)
        if kind == "scalar" and type(v) is list and len(v) == 2 and type(v[0]) is str:
            dt = _dtype(v[0], at)
            raw = _tagged.decode(v[1], at) if type(v[1]) is dict else v[1]  # a number, or a float tag
            if type(v[1]) is float and not math.isfinite(v[1]):
                raise _bad(at, "a non-finite number outside a float tag")
            if dt.kind not in "biuf" or type(raw) not in (bool, int, float):
                raise _bad(at, f"scalar of dtype {dt} holds {raw!r:.40}")
            try:
                return dt.type(raw)
            except (OverflowError, ValueError, TypeError):
                raise _bad(at, f"{raw!r:.40} does not fit a {dt} scalar") from None
        if kind == "recipe" and type(v) is dict:
            return recipe(v, at)
        if kind in _REFUSED_KINDS or kind in ("dtype", "scalar", "recipe"):
            raise _bad(at, f"unknown or malformed tag {kind!r:.40}")
        return BASE  # tuple, dict, float: the base rules (which refuse unknown kinds)

    return _tagged.decode(value, where, hook)


def _dtype(name: str, where: str) -> np.dtype:
    try:
        dt = _npy.dtype_from_name(name, where=where)
    except CkptError:
        raise
    except (TypeError, ValueError):
        raise _bad(where, f"unknown dtype {name!r:.40}") from None
    if dt.hasobject or dt.names is not None:
        raise _bad(where, f"dtype {name!r:.40} is not a plain dtype")
    return dt
