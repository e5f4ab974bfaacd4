"""Read a pickle's opcodes, without executing it, to list the globals it would import.

Used to tell a user what an untrusted pickle would run, to record the packages a
pickle slot depends on, and to check allow-lists. A STACK_GLOBAL whose operands
are not plain string constants (built at unpickling time) is reported as
``<dynamic>`` and never allowed by an allow-list.
"""

from __future__ import annotations

import pickletools
from typing import Any

from .errors import FormatError

DYNAMIC = "<dynamic>"
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def scan_globals(data: bytes, *, where: str = "pickle") -> list[str]:
    """The ``module.qualname`` names a pickle imports, in order, without duplicates."""
    found: list[str] = []
    # A shadow of the unpickler's stack and memo, tracking only string constants.
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    try:
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if name in ("GLOBAL", "INST"):
                module, _, qualname = str(arg).partition(" ")
                found.append(f"{module}.{qualname}")
                stack.append(None)
            elif name == "STACK_GLOBAL":
                qual: Any = stack.pop() if stack else None
                owner: Any = stack.pop() if stack else None
                if isinstance(owner, str) and isinstance(qual, str):
                    found.append(f"{owner}.{qual}")
                else:
                    found.append(DYNAMIC)
                stack.append(None)
            elif name in ("EXT1", "EXT2", "EXT4"):
                found.append(f"<copyreg extension {arg}>")
                stack.append(None)
            elif name in _STRING_OPS:
                stack.append(arg if isinstance(arg, str) else None)
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg or 0)] = stack[-1] if stack else None
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(int(arg or 0)))
            elif name in ("MARK",):
                stack.append(None)
            else:
                # Any other opcode: the tracked strings may no longer be on top.
                stack.append(None)
            if len(stack) > 4096:
                del stack[:2048]
    except (ValueError, EOFError, TypeError, KeyError, IndexError) as e:
        raise FormatError(f"{where}: not a valid pickle stream ({e})") from None
    seen: set[str] = set()
    out = []
    for g in found:
        if g not in seen:
            seen.add(g)
            out.append(g)
    return out


def top_level_packages(globals_: list[str]) -> set[str]:
    """Top-level package names of a list of globals (``builtins`` and markers left out)."""
    out = set()
    for g in globals_:
        if g.startswith("<"):
            continue
        top = g.split(".", 1)[0]
        if top and top not in ("builtins", "__builtin__", "copyreg", "copy_reg", "__main__"):
            out.add(top)
    return out
