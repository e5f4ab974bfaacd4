"""Recipe arguments as tagged JSON: the only form in which constructor arguments are stored.

JSON values stand for themselves (None, bool, int, finite float, str, list,
dict with string keys). Everything else a recipe may hold is a one-key-tagged
object ``{"__ckpt__": TAG, ...}``:

- ``tuple``: ``{"items": [...]}``; ``dict`` (non-string keys, or the tag key
  itself): ``{"items": [[key, value], ...]}``;
- ``float``: ``{"value": "nan" | "inf" | "-inf"}`` (JSON has no such numbers);
- ``dtype``: ``{"name": "float32"}`` (numpy dtypes, scalar types, ``jnp.float32``);
- ``scalar``: ``{"dtype": "float32", "value": 0.5}`` (numpy scalars keep their type);
- ``recipe``: a nested recorded object ``{"class", "module", "mro", "args", "kwargs"}``.

Anything else is refused with the path of the offending argument. Decoding
validates every tag (the text comes from a file) and never imports anything
but numpy (and ml_dtypes for its dtypes).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Callable, Optional

import numpy as np

from . import _npy
from .errors import CkptError, FormatError, RecipeArgumentError

TAG = "__ckpt__"
MAX_DEPTH = 64
_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
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


def encode(value: Any, path: str, nested: Callable[[Any, str], Optional[dict[str, Any]]],
           depth: int = 0) -> Any:
    """``value`` as tagged JSON; ``nested(value, path)`` gives the tag of a recorded object (or None)."""
    if depth > MAX_DEPTH:
        raise RecipeArgumentError(f"{path}: nested more than {MAX_DEPTH} levels deep", path=path)
    t = type(value)
    if t is str:
        return _checked_str(value, path)
    if value is None or t is bool or t is int:
        return value
    if t is float:
        if math.isfinite(value):
            return value
        return {TAG: "float", "value": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if t is list:
        return [encode(v, f"{path}[{i}]", nested, depth + 1) for i, v in enumerate(value)]
    if t is tuple:
        return {TAG: "tuple", "items": [encode(v, f"{path}[{i}]", nested, depth + 1) for i, v in enumerate(value)]}
    if t is dict:
        if all(type(k) is str for k in value) and TAG not in value:
            return {_checked_str(k, path): encode(v, f"{path}[{k!r}]", nested, depth + 1) for k, v in value.items()}
        items = []
        for k, v in value.items():
            if not (k is None or type(k) in (bool, int, float, str, tuple)):
                raise RecipeArgumentError(f"{path} has a key of type {type(k).__name__} ({k!r:.60}); recipe dict "
                                          "keys are strings, numbers, booleans, None or tuples", path=path)
            items.append([encode(k, f"{path}<key {k!r:.40}>", nested, depth + 1),
                          encode(v, f"{path}[{k!r}]", nested, depth + 1)])
        return {TAG: "dict", "items": items}
    dt = _dtype_of(value)
    if dt is not None:
        return {TAG: "dtype", "name": _checked_dtype_name(dt, path)}
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return {TAG: "scalar", "dtype": _checked_dtype_name(value.dtype, path),
                "value": encode(value.item(), path, nested, depth + 1)}
    tag = nested(value, path)
    if tag is not None:
        return tag
    what = t.__name__ if not callable(value) else f"{t.__name__} {getattr(value, '__qualname__', value)!r:.80}"
    raise RecipeArgumentError(
        f"{path} is a {what}: recipe arguments are stored as JSON, never pickled, so they must be {_ALLOWED}; "
        "pass a name (e.g. activation='relu') and look it up in __init__, or decorate its class with "
        "@ckpt.recorded", path=path)


def _checked_str(text: str, path: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RecipeArgumentError(f"{path}: the string {text!r:.60} is not valid Unicode (a lone surrogate) and "
                                  "cannot be stored as UTF-8 JSON", path=path) from None
    return text


def _checked_dtype_name(dt: np.dtype, path: str) -> str:
    if dt.hasobject or dt.names is not None:
        raise RecipeArgumentError(f"{path} is the dtype {dt}: only plain numeric, bool, string and ml_dtypes dtypes "
                                  "can be recorded", path=path)
    return _npy.dtype_name(dt)


def _bad(where: str, what: str) -> FormatError:
    return FormatError(f"{where}: invalid recipe: {what}")


def decode(value: Any, where: str, recipe: Callable[[dict[str, Any], str], Any], depth: int = 0) -> Any:
    """Python values from tagged JSON read from a file; ``recipe(tag, where)`` makes a nested recipe's value."""
    if depth > MAX_DEPTH:
        raise _bad(where, f"nested more than {MAX_DEPTH} levels deep")
    t = type(value)
    if value is None or t in (bool, str, int):
        return value
    if t is float:
        if not math.isfinite(value):
            raise _bad(where, "a non-finite number outside a float tag")
        return value
    if t is list:
        return [decode(v, f"{where}[{i}]", recipe, depth + 1) for i, v in enumerate(value)]
    if t is not dict:
        raise _bad(where, f"a {t.__name__} is not a JSON value")
    if TAG not in value:
        return {k: decode(v, f"{where}[{k!r}]", recipe, depth + 1) for k, v in value.items()}
    tag = value[TAG]
    if tag == "tuple" and type(value.get("items")) is list:
        return tuple(decode(v, f"{where}[{i}]", recipe, depth + 1) for i, v in enumerate(value["items"]))
    if tag == "dict" and type(value.get("items")) is list:
        out = {}
        for i, pair in enumerate(value["items"]):
            if type(pair) is not list or len(pair) != 2:
                raise _bad(where, f"dict item {i} is not a [key, value] pair")
            key = decode(pair[0], f"{where}<key {i}>", recipe, depth + 1)
            try:
                out[key] = decode(pair[1], f"{where}[{key!r:.40}]", recipe, depth + 1)
            except TypeError:  # an unhashable key (a list): not something encode writes
                raise _bad(where, f"dict key {i} is not hashable") from None
        return out
    if tag == "float" and value.get("value") in _FLOATS:
        return _FLOATS[value["value"]]
    if tag == "dtype" and type(value.get("name")) is str:
        return _dtype(value["name"], where)
    if tag == "scalar" and type(value.get("dtype")) is str:
        dt = _dtype(value["dtype"], where)
        raw = decode(value.get("value"), where, recipe, depth + 1)
        if dt.kind not in "biuf" or type(raw) not in (bool, int, float):
            raise _bad(where, f"scalar of dtype {dt} holds {raw!r:.40}")
        try:
            return dt.type(raw)
        except (OverflowError, ValueError, TypeError):
            raise _bad(where, f"{raw!r:.40} does not fit a {dt} scalar") from None
    if tag == "recipe":
        return recipe(value, where)
    raise _bad(where, f"unknown or malformed tag {tag!r:.40}")


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
