"""Tagged JSON: everyday Python values (tuples, int keys, bytes, ...) as JSON that loads back exactly.

Plain JSON values stay as they are; a value JSON cannot hold exactly becomes an object
``{"$ckpt": <type>, "v": <payload>}`` (docs/FORMAT.md section 3.1). Only exact builtin
types are accepted (a ``bool`` subclass, a named tuple or an ``OrderedDict`` is not), so
what loads back has the type that was saved; anything else is left to pickle.
"""

from __future__ import annotations

import base64
import math
from typing import Any

from .errors import FormatError

__all__ = ["TAG", "decode", "encodable", "encode"]

TAG = "$ckpt"
MAX_DEPTH = 200
_SCALARS = (type(None), bool, int, float, str, bytes, complex)
_HASHABLE = (type(None), bool, int, float, str, bytes, complex, tuple, frozenset)


def encodable(obj: Any, _depth: int = 0) -> bool:
    """True if :func:`encode` stores ``obj`` exactly."""
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


def is_plain(obj: Any, _depth: int = 0) -> bool:
    """True if ``obj`` is already JSON that needs no tag (so it is written as it was before tags)."""
    if _depth > MAX_DEPTH:
        return False
    t = type(obj)
    if obj is None or t in (bool, int, str):
        return True
    if t is float:
        return math.isfinite(obj)
    if t is list:
        return all(is_plain(x, _depth + 1) for x in obj)
    if t is dict:
        return TAG not in obj and all(type(k) is str and is_plain(v, _depth + 1) for k, v in obj.items())
    return False


def _tag(kind: str, payload: Any) -> dict[str, Any]:
    return {TAG: kind, "v": payload}


def encode(obj: Any) -> Any:
    """``obj`` as tagged JSON (call :func:`encodable` first; anything else raises TypeError)."""
    t = type(obj)
    if obj is None or t in (bool, int, str):
        return obj
    if t is float:
        if math.isfinite(obj):
            return obj
        return _tag("float", "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf"))
    if t is list:
        return [encode(x) for x in obj]
    if t is dict:
        if TAG not in obj and all(type(k) is str for k in obj):
            return {k: encode(v) for k, v in obj.items()}
        return _tag("dict", [[encode(k), encode(v)] for k, v in obj.items()])
    if t is tuple:
        return _tag("tuple", [encode(x) for x in obj])
    if t in (set, frozenset):
        return _tag(t.__name__, [encode(x) for x in obj])
    if t is bytes:
        return _tag("bytes", base64.b64encode(obj).decode("ascii"))
    if t is complex:
        return _tag("complex", [encode(obj.real), encode(obj.imag)])
    raise TypeError(f"a {t.__name__} cannot be stored as tagged JSON")


def decode(doc: Any, where: str = "tagged JSON", _depth: int = 0) -> Any:
    """The value :func:`encode` wrote; a malformed or unknown tag raises FormatError."""
    if _depth > MAX_DEPTH:
        raise FormatError(f"{where}: tagged JSON nested deeper than {MAX_DEPTH}")
    if doc is None or type(doc) in (bool, int, float, str):
        return doc
    if type(doc) is list:
        return [decode(x, where, _depth + 1) for x in doc]
    if type(doc) is not dict:
        raise FormatError(f"{where}: unexpected JSON value of type {type(doc).__name__}")
    if TAG not in doc:
        return {k: decode(v, where, _depth + 1) for k, v in doc.items()}
    kind, payload = doc.get(TAG), doc.get("v")
    if set(doc) != {TAG, "v"}:
        raise FormatError(f"{where}: a {TAG!r} object must have exactly the keys {TAG!r} and 'v', found "
                          f"{sorted(doc)[:5]}")
    try:
        if kind == "float" and payload in ("nan", "inf", "-inf"):
            return float(payload)
        if kind == "bytes" and isinstance(payload, str):
            return base64.b64decode(payload.encode("ascii"), validate=True)
        if kind in ("tuple", "set", "frozenset", "dict", "complex") and isinstance(payload, list):
            items = [decode(x, where, _depth + 1) for x in payload]
            if kind == "tuple":
                return tuple(items)
            if kind == "set":
                return set(items)
            if kind == "frozenset":
                return frozenset(items)
            if kind == "complex" and len(items) == 2 and all(type(x) is float for x in items):
                return complex(items[0], items[1])
            if kind == "dict" and all(isinstance(p, list) and len(p) == 2 for p in items):
                return {k: v for k, v in items}
    except (TypeError, ValueError, UnicodeEncodeError) as e:  # unhashable keys, bad base64
        raise FormatError(f"{where}: malformed {kind!r} value ({e})") from None
    raise FormatError(f"{where}: unknown or malformed tagged value {{{TAG!r}: {kind!r:.40}}}")
