"""Tagged JSON, the one scheme for values JSON cannot hold exactly (docs/FORMAT.md section 3.1).

Plain JSON values stay as they are; anything else becomes ``{"$ckpt": <kind>, "v": <payload>}``.
The base kinds (tuple, set, frozenset, dict, bytes, complex, float) cover everyday Python values;
a layer with its own values and rules (recipes: dtypes, numpy scalars, nested recipes, paths in
errors) passes an ``extend`` hook that sees every value first. Only exact builtin types are base
values (a ``bool`` subclass, a named tuple or an ``OrderedDict`` is not), so what loads back has
the type that was saved; anything else is left to the caller (pickle, or a refusal).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from typing import Any

from .errors import FormatError

__all__ = ["BASE", "TAG", "decode", "encodable", "encode", "tag"]

TAG = "$ckpt"
MAX_DEPTH = 200
_SCALARS = (type(None), bool, int, float, str, bytes, complex)
_HASHABLE = (type(None), bool, int, float, str, bytes, complex, tuple, frozenset)
_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}

#: What an ``extend`` hook returns to leave a value to the base rules.
BASE: Any = type("BaseRules", (), {"__repr__": lambda self: "BASE"})()

#: ``hook(value, path, depth)``: the tagged JSON of ``value``, or BASE; it raises to refuse.
EncodeHook = Callable[[Any, str, int], Any]
#: ``hook(doc, where, depth)``: the value ``doc`` stands for, or BASE; it raises to refuse.
DecodeHook = Callable[[Any, str, int], Any]


def encodable(obj: Any, _depth: int = 0) -> bool:
    """True if :func:`encode` (without ``extend``) stores ``obj`` exactly."""
    if _depth > MAX_DEPTH:
        return False
    t = type(obj)
    if t in _SCALARS:
        return True
    if t in (list, tuple, set, frozenset):
        return all(encodable(x, _depth + 1) for x in obj)
    if t is dict:
        return all(type(k) in _HASHABLE and encodable(k, _depth + 1) and encodable(v, _depth + 1)
                   for k, v in obj.items())
    return False


def tag(kind: str, payload: Any) -> dict[str, Any]:
    """The tagged object of one value: ``{"$ckpt": kind, "v": payload}``."""
    return {TAG: kind, "v": payload}


def encode(obj: Any, extend: EncodeHook | None = None, *, path: str = "value") -> Any:
    """``obj`` as tagged JSON. Without ``extend`` call :func:`encodable` first (anything else raises
    TypeError); with it, ``extend`` sees every value first and ``path`` names each one (``path[0]``,
    ``path['k']``, ``path<key 1>``) for its errors."""
    return _encode(obj, extend, path, 0)


def _encode(obj: Any, extend: EncodeHook | None, path: str, depth: int) -> Any:
    t = type(obj)
    if extend is not None:
        done = extend(obj, path, depth)
        if done is not BASE:
            return done
    if obj is None or t in (bool, int, str):
        return obj
    if t is float:
        if math.isfinite(obj):
            return obj
        return tag("float", "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf"))
    if t in (list, tuple, set, frozenset):
        if extend is None:  # no paths to name: the common, fast case
            items = [x if type(x) in (int, str) else _encode(x, None, path, depth + 1) for x in obj]
        else:
            items = [_encode(x, extend, f"{path}[{i}]", depth + 1) for i, x in enumerate(obj)]
        return items if t is list else tag(t.__name__, items)
    if t is dict:
        if TAG not in obj and all(type(k) is str for k in obj):
            return {k: _encode(v, extend, f"{path}[{k!r}]" if extend else path, depth + 1) for k, v in obj.items()}
        return tag("dict", [[_encode(k, extend, f"{path}<key {k!r:.40}>" if extend else path, depth + 1),
                             _encode(v, extend, f"{path}[{k!r}]" if extend else path, depth + 1)]
                            for k, v in obj.items()])
    if t is bytes:
        return tag("bytes", base64.b64encode(obj).decode("ascii"))
    if t is complex:
        return tag("complex", [_encode(obj.real, None, path, depth + 1), _encode(obj.imag, None, path, depth + 1)])
    raise TypeError(f"{path}: a {t.__name__} cannot be stored as tagged JSON")


def decode(doc: Any, where: str = "tagged JSON", extend: DecodeHook | None = None) -> Any:
    """The value :func:`encode` wrote; a malformed or unknown tag raises FormatError. ``extend``
    sees every value first (a tagged object only once its keys are checked)."""
    return _decode(doc, where, extend, 0)


def _decode(doc: Any, where: str, extend: DecodeHook | None, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise FormatError(f"{where}: tagged JSON nested deeper than {MAX_DEPTH}")
    t = type(doc)
    if t is dict and TAG in doc and set(doc) != {TAG, "v"}:
        raise FormatError(f"{where}: a {TAG!r} object must have exactly the keys {TAG!r} and 'v', found "
                          f"{sorted(doc)[:5]}")
    if extend is not None:
        done = extend(doc, where, depth)
        if done is not BASE:
            return done
    if doc is None or t in (bool, int, float, str):
        return doc
    if t is list:
        if extend is None:
            return [x if type(x) in (int, str) else _decode(x, where, None, depth + 1) for x in doc]
        return [_decode(x, f"{where}[{i}]", extend, depth + 1) for i, x in enumerate(doc)]
    if t is not dict:
        raise FormatError(f"{where}: unexpected JSON value of type {t.__name__}")
    if TAG not in doc:
        return {k: _decode(v, f"{where}[{k!r}]" if extend else where, extend, depth + 1) for k, v in doc.items()}
    kind, payload = doc[TAG], doc["v"]
    if kind == "float" and type(payload) is str and payload in _FLOATS:
        return _FLOATS[payload]
    if kind == "bytes" and type(payload) is str:
        try:
            return base64.b64decode(payload.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError) as e:  # not base64
            raise FormatError(f"{where}: malformed 'bytes' value ({e})") from None
    if kind in ("tuple", "set", "frozenset", "dict", "complex") and type(payload) is list:
        if extend is None:
            items = [x if type(x) in (int, str) else _decode(x, where, None, depth + 1) for x in payload]
        else:  # outside the try: an error the hook raises (a model's own, building it) stays as it is
            items = [_decode(x, f"{where}[{i}]", extend, depth + 1) for i, x in enumerate(payload)]
        try:
            if kind == "tuple":
                return tuple(items)
            if kind == "set":
                return set(items)
            if kind == "frozenset":
                return frozenset(items)
            if kind == "complex" and len(items) == 2 and all(type(x) is float for x in items):
                return complex(items[0], items[1])
            if kind == "dict" and all(type(p) is list and len(p) == 2 for p in items):
                return {k: v for k, v in items}
        except TypeError as e:  # an unhashable member or key
            raise FormatError(f"{where}: malformed {kind!r} value ({e})") from None
    raise FormatError(f"{where}: unknown or malformed tagged value {{{TAG!r}: {kind!r:.40}}}")
