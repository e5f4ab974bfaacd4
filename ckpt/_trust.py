"""Importing a recipe's classes only when the caller trusts them, and calling them.

``trusted`` uses the pickle allow-list's rules (``module.qualname`` names or
``pkg.*`` patterns, see :mod:`ckpt._pickle_policy`); its denied modules, names and
classes are refused whatever ``trusted`` says, ``True`` included. Every class
of a recipe, nested ones too, is checked before the first import, and what an
import finds must be a class defined under the recorded name.
"""

from __future__ import annotations

import importlib
import types
from typing import Any, Mapping, Sequence, Union

from . import _pickle_policy as _policy, _recipe_json as _rj, _tagged
from .errors import RecipeNotFoundError, UntrustedClassError

__all__ = ["Trusted", "admits", "import_class", "construct", "nested_records"]

Trusted = Union[bool, Sequence[str], None]


def nested_records(value: Any) -> list[dict[str, Any]]:
    """The records of the recipe tags directly or indirectly inside a tagged-JSON value (not inside those)."""
    out: list[dict[str, Any]] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if type(v) is list:
            stack.extend(v)
        elif type(v) is dict:
            if v.get(_tagged.TAG) == "recipe" and type(v.get("v")) is dict:
                out.append(v["v"])
            else:
                stack.extend(v.values())
    return out


def construct(record: dict[str, Any], classes: Mapping[str, type]) -> Any:
    """A new object from a recipe record, nested records built first, with classes already imported."""
    def nested(r: dict[str, Any], where: str) -> Any:
        return construct(r, classes)

    where = f"recipe of {record['class']}"
    args = _rj.decode(record["args"], f"{where} args", nested)
    kwargs = _rj.decode(record["kwargs"], f"{where} kwargs", nested)
    try:
        return classes[record["class"]](*args, **kwargs)
    except Exception as e:  # the model's own error, kept as it is, with where it happened
        if hasattr(e, "add_note"):
            e.add_note(f"ckpt: while building {record['class']} from its recipe (args={args!r:.200}, "
                       f"kwargs={kwargs!r:.300})")
        raise


def admits(trusted: Trusted, name: str) -> bool:
    """Whether ``trusted`` lets ``build`` import class ``name``; code-execution primitives never (not even True)."""
    if _policy.name_denied(name):
        return False
    if trusted is True:
        return True
    if not trusted or isinstance(trusted, (str, bytes)):
        return False
    return _policy.admitted(name, list(trusted))


def import_class(name: str, module: str, where: str) -> type:
    """The class ``module.qualname`` names, refusing module objects, dunders and re-exports on the way."""
    qualname = name[len(module) + 1:]
    parts = qualname.split(".")
    if not all(p.isidentifier() and not p.startswith("__") for p in parts + module.split(".")):
        raise UntrustedClassError(f"{where}: class name {name!r:.200} is not a plain importable path; nothing was "
                                  "imported", classes=[name])
    try:
        target: Any = importlib.import_module(module)
    except ImportError as e:
        raise RecipeNotFoundError(f"{where}: cannot import module {module!r} for class {name}: {e}") from None
    for part in parts:
        target = getattr(target, part, None)
        if target is None:
            raise RecipeNotFoundError(f"{where}: module {module!r} has no class {qualname!r}")
        if isinstance(target, types.ModuleType):
            raise UntrustedClassError(f"{where}: {name} reaches the module {target.__name__} through an attribute, "
                                      "not a class; refused", classes=[name])
    if not isinstance(target, type) or f"{target.__module__}.{target.__qualname__}" != name:
        raise UntrustedClassError(f"{where}: {name} is not a class defined under that name (found "
                                  f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', '?')}); "
                                  "refused", classes=[name])
    why = _policy.judge_target(name, target, called=True)
    if why is not None:  # e.g. a subclass of subprocess.Popen: calling it runs a process
        raise UntrustedClassError(f"{where}: {name} is refused, {why}", classes=[name])
    return target
