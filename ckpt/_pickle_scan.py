"""Read a pickle's opcodes, without executing it, to list what it would import and call.

Used to tell a user what an untrusted pickle would run, to record the packages a
pickle slot depends on, and to check allow-lists. The scan shadows the
unpickler's stack and memo exactly (each opcode's declared stack effect), so it
knows which globals a pickle *calls* (REDUCE, NEWOBJ, OBJ, INST), whether it
calls something that is not a named global (an object built while unpickling),
and whether it modifies a global in place (BUILD, SETITEM, APPEND... on it).
A STACK_GLOBAL whose operands are not plain string constants is reported as
``<dynamic>`` and never allowed by an allow-list.
"""

from __future__ import annotations

import pickletools
from dataclasses import dataclass, field
from typing import Callable, Optional

from .errors import FormatError

DYNAMIC = "<dynamic>"
#: Callables that set the state of their first argument: calling one on a global changes it in place.
STATE_SETTERS = frozenset({"ckpt._module_pickle.set_state"})
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_CALLS = {"REDUCE": 2, "NEWOBJ": 2, "NEWOBJ_EX": 3}  # opcode -> depth of the callable on the stack
_MUTATES = {"BUILD": 2, "SETITEM": 3, "APPEND": 2}  # opcode -> depth of the object it changes in place
_PASS_THROUGH = {"BUILD", "SETITEM", "APPEND", "APPENDS", "SETITEMS", "ADDITEMS", "READONLY_BUFFER"}


class _Sym:
    """What the scan knows about one stack entry: a string constant, a named global, or neither."""

    __slots__ = ("glob", "items", "text")

    def __init__(self, text: Optional[str] = None, glob: Optional[str] = None,
                 items: Optional[list["_Sym"]] = None):
        self.text = text
        self.glob = glob
        self.items = items  # the entries of a tuple built by TUPLE/TUPLE1-3


_MARK = _Sym()
_UNKNOWN = _Sym()


@dataclass
class PickleScan:
    """What a pickle would do, read from its opcodes."""

    globals: list[str] = field(default_factory=list)  # in order, no duplicates
    called: set[str] = field(default_factory=set)  # globals in a call position
    problems: list[str] = field(default_factory=list)  # things no allow-list admits (calls on built objects...)


def scan(data: bytes, *, where: str = "pickle") -> PickleScan:
    """Shadow-run the opcodes of ``data`` (nothing is imported or called)."""
    out = PickleScan()
    seen: set[str] = set()
    stack: list[_Sym] = []
    memo: dict[int, _Sym] = {}

    def note(problem: str) -> None:
        if problem not in out.problems and len(out.problems) < 20:
            out.problems.append(problem)

    def pop(n: int) -> list[_Sym]:
        if n > len(stack) or any(s is _MARK for s in stack[len(stack) - n:]):
            raise ValueError("stack underflow")
        taken = stack[len(stack) - n:]
        del stack[len(stack) - n:]
        return taken

    try:
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            before = op.stack_before
            if name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                if not stack or stack[-1] is _MARK:
                    raise ValueError("memo store from an empty stack")
                key = len(memo) if name == "MEMOIZE" else int(arg or 0)
                if key > (_pos or 0):
                    # The unpickler sizes its memo table by the largest index (a 5-byte opcode could make
                    # it allocate gigabytes); a pickler numbers entries in order, so index <= offset.
                    raise ValueError(f"memo index {key} at offset {_pos} is larger than any pickler writes")
                memo[key] = stack[-1]
                continue
            if pickletools.markobject in before:
                for i in range(len(stack) - 1, -1, -1):
                    if stack[i] is _MARK:
                        break
                else:
                    raise ValueError(f"{name} without a MARK")
                sliced = stack[i + 1:]
                del stack[i:]
                taken = pop(before.index(pickletools.markobject))
                if name == "OBJ":
                    callee = sliced[0] if sliced else _UNKNOWN
                    _call(out, callee, name, note)
                if taken and taken[0].glob is not None:
                    note(f"{name} changes the global {taken[0].glob} in place")
                result = taken[0] if name in _PASS_THROUGH and taken else _UNKNOWN
                if name == "TUPLE":
                    result = _Sym(items=sliced)
            else:
                taken = pop(len(before))
                if name in _CALLS:
                    _call(out, taken[-_CALLS[name]], name, note)
                    args = taken[-1].items or []
                    if taken[0].glob in STATE_SETTERS and args and args[0].glob is not None:
                        note(f"{name} of {taken[0].glob} changes the global {args[0].glob} in place")
                if name in _MUTATES and taken[-_MUTATES[name]].glob is not None:
                    note(f"{name} changes the global {taken[-_MUTATES[name]].glob} in place")
                result = taken[0] if name in _PASS_THROUGH and taken else _UNKNOWN
                if name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                    result = _Sym(items=taken)
            glob = None
            if name in ("GLOBAL", "INST"):
                module, _, qualname = str(arg).partition(" ")
                glob = f"{module}.{qualname}"
            elif name == "STACK_GLOBAL":
                owner, qual = taken
                glob = f"{owner.text}.{qual.text}" if owner.text is not None and qual.text is not None else DYNAMIC
            elif name in ("EXT1", "EXT2", "EXT4"):
                glob = f"<copyreg extension {arg}>"
            if glob is not None and glob not in seen:
                seen.add(glob)
                out.globals.append(glob)
            if name == "INST" and glob is not None:
                out.called.add(glob)
            if name in ("GET", "BINGET", "LONG_BINGET"):
                key = int(arg or 0)
                if key not in memo:
                    raise ValueError(f"memo key {key} used before it is stored")
                stack.append(memo[key])
                continue
            if name == "DUP":
                stack.extend(taken * 2)
                continue
            for kind in op.stack_after:
                if kind is pickletools.markobject:
                    stack.append(_MARK)
                elif glob is not None and name != "INST":
                    stack.append(_Sym(glob=glob))
                elif name in _STRING_OPS:
                    stack.append(_Sym(text=arg if isinstance(arg, str) else None))
                else:
                    stack.append(result)
    except (ValueError, EOFError, TypeError, KeyError, IndexError, OverflowError) as e:
        raise FormatError(f"{where}: not a valid pickle stream ({e})") from None
    return out


def _call(out: PickleScan, callee: _Sym, op: str, note: Callable[[str], None]) -> None:
    if callee.glob is not None:
        out.called.add(callee.glob)
    else:
        note(f"{op} calls an object built while unpickling, not a named global")


def scan_globals(data: bytes, *, where: str = "pickle") -> list[str]:
    """The ``module.qualname`` names a pickle imports, in order, without duplicates."""
    return scan(data, where=where).globals


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
