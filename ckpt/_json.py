"""Parsing JSON from a file with limits checked before the parse, and duplicate keys refused.

Parsing costs up to ~50 bytes of memory per JSON value, so the number of values is bounded
before ``json.loads`` runs: by an absolute limit, and by the member's size *in the file* (a
small deflated member cannot expand into millions of objects). Duplicate keys are refused:
other JSON readers keep the first or the last, so a file with them means different things
to different readers.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from . import _limits
from .errors import FormatError


def node_bound(data: bytes) -> int:
    """An upper bound on the values in a JSON text (every value but the first follows , : [ or {)."""
    return data.count(b",") + data.count(b":") + data.count(b"[") + data.count(b"{") + 1


def node_limit(stored_bytes: int) -> int:
    """How many JSON values a member occupying ``stored_bytes`` in the file may hold."""
    return min(_limits.MAX_JSON_NODES, _limits.JSON_NODES_FREE + stored_bytes)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {dup!r:.80}")
    return out


def parse(data: Any, *, stored_bytes: Optional[int], what: str, file: Optional[str] = None) -> Any:
    """Parse ``data`` (UTF-8 JSON) or raise FormatError naming ``what``; ``stored_bytes`` is its size in the file."""
    raw = bytes(data)
    bound = node_bound(raw)
    limit = node_limit(len(raw) if stored_bytes is None else stored_bytes)
    if bound > limit:
        raise FormatError(f"{what} may hold up to {bound} JSON values, over the limit of {limit} for "
                          f"{stored_bytes if stored_bytes is not None else len(raw)} bytes in the file", file=file)
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FormatError(f"{what} is not valid JSON ({e})", file=file) from None


def check_expansion(size: int, compressed: int, *, what: str, file: Optional[str] = None) -> None:
    """Refuse a deflated JSON member that declares more than it could plausibly expand to."""
    allowed = _limits.JSON_NODES_FREE + _limits.MAX_JSON_EXPANSION * compressed
    if size > allowed:
        raise FormatError(f"{what} is deflated from {compressed} to {size} bytes; JSON is accepted up to "
                          f"{_limits.MAX_JSON_EXPANSION}x its compressed size (+{_limits.JSON_NODES_FREE} bytes)",
                          file=file)
