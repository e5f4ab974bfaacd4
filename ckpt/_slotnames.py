"""Slot names: any non-empty string, mapped to a safe member prefix (docs/FORMAT.md section 2.3).

A slot is "identified by an arbitrary string" (``"object 1"``, ``"model/encoder"``, ``"模型"``), but
its members live in a zip where ``/`` separates folders and ``..`` climbs out of them. The prefix
keeps ``A-Z a-z 0-9 _ . -`` as they are (so every name valid before maps to the members it always
had) and writes every other character, and a leading character that is not a letter or digit, as
``%XX`` per UTF-8 byte. ``%`` itself is always escaped, so the mapping is one-to-one and its
result is a single path component that is never empty, ``.``, ``..`` or reserved.
"""

from __future__ import annotations

import unicodedata
from typing import Any, Optional

from . import _limits

DEFAULT_SLOT = "main"
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
# Characters that would let a name rewrite a terminal or reorder the text around it when printed.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def problem(name: Any) -> Optional[str]:
    """Why ``name`` is not a valid slot name, or None; writers and readers share this rule."""
    if not isinstance(name, str):
        return "is not a string"
    if not name:
        return "is empty"
    if len(name) > _limits.MAX_SLOT_NAME:
        return f"has {len(name)} characters, over the limit of {_limits.MAX_SLOT_NAME}"
    if name.startswith("_"):
        return "starts with '_', which is reserved for ckpt's own slots"
    for c in name:
        category = unicodedata.category(c)
        if category in ("Cc", "Cs") or c in _BIDI:
            what = "a lone surrogate" if category == "Cs" else f"the control character {c!r}"
            return f"contains {what}; slot names are printed, so they hold text only"
    return None


def member_prefix(slot: str) -> str:
    """The member name prefix of a slot: ``""`` for ``main``, else the escaped name and ``/``."""
    if slot == DEFAULT_SLOT:
        return ""
    out = []
    for i, c in enumerate(slot):
        if c in _SAFE and (i > 0 or c.isalnum()):
            out.append(c)
        else:
            out.extend(f"%{b:02X}" for b in c.encode("utf-8"))
    return "".join(out) + "/"
