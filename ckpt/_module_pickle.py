"""Pickling whole objects (objax modules, closures, ...) with their arrays kept out of band.

Arrays met while pickling (numpy and JAX) are not put in the pickle: they
become persistent references and are stored as ``.npy`` members beside it, so
a module's weights are stored once (shared with the arrays slot holding the same
variables) and the pickle holds only structure.

Loading is where the danger is. Without ``trusted=True`` nothing is unpickled.
With an allow-list, :class:`_Unpickler` resolves every global itself and
refuses, before importing it, any name that is not allowed, any path through a
module object or a dunder attribute (``pkg.mod.os.system``), and any dynamic
global. There is never a retry in a less strict mode.
"""

from __future__ import annotations

import copyreg
import importlib
import io
import pickle
import sys
import types
from typing import Any, Callable, Optional, Sequence

import numpy as np

from . import _pickle_policy as _policy, collections as _coll
from .errors import UntrustedPickleError

PROTOCOL = 5
_PID_TAG = "ckpt.array"

#: Globals ckpt itself writes into pickles; they are safe whatever the allow-list.
SAFE_HELPERS = _policy.ALWAYS


def set_state(obj: Any, state: Any) -> None:
    """State setter that bypasses ``__getattr__`` hooks (objax variables recurse without it).

    Only for objects being rebuilt: a pickle may not use it to change a class, module or function."""
    if isinstance(obj, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
        raise pickle.UnpicklingError(f"set_state may only fill in an object being rebuilt, not {type(obj).__name__} "
                                     f"{getattr(obj, '__qualname__', '?')!r:.80}")
    if not isinstance(state, dict):
        raise pickle.UnpicklingError(f"state for {type(obj).__name__} must be a dict, not {type(state).__name__}")
    vars(obj).update(state)


def _base_pickler() -> type:
    try:
        import cloudpickle

        return cloudpickle.Pickler  # type: ignore[no-any-return]
    except ImportError:  # pragma: no cover - cloudpickle is a dependency
        return pickle.Pickler


def _importable_by_name(obj: Any) -> bool:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return False
    try:
        target: Any = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError):
        return False
    return target is obj


def _make_pickler(f: io.BytesIO, arrays: list[Any]) -> Any:
    base = _base_pickler()

    class Pickler(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__(f, protocol=PROTOCOL)
            self._ids: dict[int, int] = {}

        def persistent_id(self, obj: Any) -> Any:
            if isinstance(obj, np.ndarray) or _coll.is_jax_array(obj):
                if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
                    return None
                key = id(obj)
                if key not in self._ids:
                    self._ids[key] = len(arrays)
                    arrays.append(obj)
                return (_PID_TAG, self._ids[key], "jax" if _coll.is_jax_array(obj) else "numpy")
            return None

        def reducer_override(self, obj: Any) -> Any:
            objax = sys.modules.get("objax")
            if objax is not None:
                if isinstance(obj, objax.BaseVar):
                    return (copyreg.__newobj__, (type(obj),), dict(vars(obj)), None, None,  # type: ignore[attr-defined]
                            set_state)
                if type(obj) is objax.Jit:
                    return (objax.Jit, (obj.__wrapped__, obj.vc, obj.static_argnums))
            if type(obj).__name__ == "PjitFunction":
                if _importable_by_name(obj):
                    return obj.__qualname__
                raise pickle.PicklingError(
                    f"a jax.jit-compiled function ({getattr(obj, '__qualname__', obj)!r}) cannot be stored: it is "
                    "not importable by name; store the function before jax.jit, or wrap the module in objax.Jit")
            sup = getattr(super(), "reducer_override", None)
            return sup(obj) if sup is not None else NotImplemented

    return Pickler()


def _attempt(obj: Any) -> Optional[str]:
    try:
        _make_pickler(io.BytesIO(), []).dump(obj)
        return None
    except Exception as e:  # any failure is the answer we are looking for
        return f"{type(e).__name__}: {e}"


def _children(obj: Any) -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        return [(f"[{k!r}]", v) for k, v in list(obj.items())[:1000]]
    if isinstance(obj, (list, tuple)):
        return [(f"[{i}]", v) for i, v in enumerate(obj[:1000])]
    d = getattr(obj, "__dict__", None)
    if isinstance(d, dict):
        return [(f".{k}", v) for k, v in list(d.items())[:1000]]
    return []


def find_unpicklable(obj: Any, path: str = "obj", depth: int = 0) -> tuple[str, str]:
    """The deepest attribute path under ``obj`` that fails to pickle, and why."""
    reason = _attempt(obj)
    if reason is None or depth > 20:
        return path, reason or "unknown"
    for suffix, child in _children(obj):
        if _attempt(child) is not None:
            return find_unpicklable(child, path + suffix, depth + 1)
    return path, reason


def dumps(obj: Any) -> tuple[bytes, list[Any]]:
    """Pickle ``obj`` with its arrays replaced by references; returns (pickle bytes, arrays)."""
    arrays: list[Any] = []
    buf = io.BytesIO()
    try:
        _make_pickler(buf, arrays).dump(obj)
    except RecursionError:
        raise TypeError(f"cannot pickle {type(obj).__name__}: it is nested too deeply") from None
    except Exception as e:
        where, why = find_unpicklable(obj, type(obj).__name__)
        raise TypeError(f"cannot pickle {type(obj).__name__}: {where} fails ({why})") from e
    return buf.getvalue(), arrays


class _ArraysMixin:
    """Persistent ids resolve only to the slot's own arrays."""

    _load_array: Callable[[int, str], Any]
    _where: str

    def persistent_load(self, pid: Any) -> Any:
        if (not isinstance(pid, tuple) or len(pid) != 3 or pid[0] != _PID_TAG or type(pid[1]) is not int
                or pid[2] not in ("jax", "numpy")):
            raise pickle.UnpicklingError(f"{self._where}: unknown persistent reference {pid!r:.100}")
        return self._load_array(pid[1], pid[2])


class _TrustedUnpickler(_ArraysMixin, pickle.Unpickler):
    """``trusted=True``: the fast C unpickler, every global allowed."""

    def __init__(self, data: bytes, load_array: Callable[[int, str], Any], where: str):
        super().__init__(io.BytesIO(data))
        self._load_array = load_array
        self._where = where


class _Unpickler(_ArraysMixin, pickle._Unpickler):  # type: ignore[name-defined, misc]
    """An allow-list (or no globals at all): the Python unpickler, so that BUILD can be checked too.

    Resolves every global itself and refuses, before importing it, anything doubtful; a BUILD may not
    set dunder attributes (``__array_interface__`` on an instance would let numpy read any address)."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]
    stack: list[Any]

    def __init__(self, data: bytes, load_array: Callable[[int, str], Any], patterns: Sequence[str],
                 where: str, called: frozenset[str] = frozenset()):
        super().__init__(io.BytesIO(data))
        self._load_array = load_array
        self._patterns = list(patterns)
        self._where = where
        self._called = called

    def _refuse(self, full: str, why: str) -> UntrustedPickleError:
        return UntrustedPickleError(f"{self._where}: the pickle imports {full}, {why}; nothing was executed",
                                    globals=[full])

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if not _policy.admitted(full, self._patterns):
            raise self._refuse(full, f"which is not in the allow-list {self._patterns}")
        parts = name.split(".")
        if any(p.startswith("__") and p.endswith("__") for p in parts) and full not in _policy.VETTED:
            raise self._refuse(full, "which goes through a dunder attribute")
        if _policy.module_denied(module) and full not in _policy.VETTED:
            raise self._refuse(full, "whose module can run code or touch the system")
        target: Any = importlib.import_module(module)
        for part in parts:
            target = getattr(target, part)
            if isinstance(target, types.ModuleType):
                raise self._refuse(full, f"which reaches the module {target.__name__} through an attribute")
        why = _policy.judge_target(full, target, full in self._called)
        if why:
            raise self._refuse(full, why)
        return target

    def load_build(self) -> None:
        state = self.stack[-1]
        for part in (state if isinstance(state, tuple) and len(state) == 2 else (state,)):
            if isinstance(part, dict):
                bad = [k for k in part if isinstance(k, str) and k.startswith("__") and k.endswith("__")]
                if bad:
                    raise UntrustedPickleError(
                        f"{self._where}: the pickle sets the attribute {bad[0]!r:.80} of a "
                        f"{type(self.stack[-2]).__name__}; an allow-list never admits dunder attributes")
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]

    dispatch[pickle.BUILD[0]] = load_build  # type: ignore[assignment]


def loads(data: bytes, load_array: Callable[[int, str], Any], trusted: Any, where: str,
          called: frozenset[str] = frozenset()) -> Any:
    """Unpickle with ``trusted=True`` (no limits) or a list of allowed globals (restricted).

    ``called`` names the globals the opcode scan found in a call position."""
    if trusted is True:
        return _TrustedUnpickler(data, load_array, where).load()
    return _Unpickler(data, load_array, list(trusted), where, called).load()
