"""Recipes: how an object was constructed, recorded as JSON, so a checkpoint can say what it is and be rebuilt.

``@ckpt.recorded`` on a class records, for each instance, its importable class
path, its MRO (as names) and the bound constructor arguments with defaults
filled in (DRYML's ``dry_args``/``dry_kwargs``). ``ckpt.recipe_of(obj)`` returns
that :class:`Recipe`; ``Recipe.of(cls, ...)`` makes one for a class that is not
decorated. Unlike DRYML and Lightning's ``save_hyperparameters``, arguments are
stored as tagged JSON (see :mod:`ckpt._tagged`, :mod:`ckpt._recipe_json`), never pickled: reading a
recipe cannot run code, and ``.hash`` is the sha256 of canonical JSON, so it is
the same in every process whatever ``PYTHONHASHSEED``. Building a recipe read
from a file imports its classes only when ``trusted`` admits them.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import uuid
import weakref
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar, Union

from . import _recipe_json as _rj
from . import _tagged
from ._trust import Trusted, admits, construct, import_class, nested_records
from .errors import FormatError, RecipeArgumentError, RecipeNotFoundError, UntrustedClassError

log = logging.getLogger("ckpt")

__all__ = ["Recipe", "recorded", "recipe_of", "Trusted"]

T = TypeVar("T")
RECIPE_VERSION = 1
_MAX_NAME = 1000
_FACTORY = getattr(dataclasses, "_HAS_DEFAULT_FACTORY", object())  # a dataclass default_factory placeholder

#: id(obj) -> Recipe, or the error that recording it met (raised by recipe_of). Entries leave with their object.
_TABLE: dict[int, Union["Recipe", Exception]] = {}


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class Recipe:
    """How to construct one object: class, MRO names, tagged-JSON args and kwargs, an instance id, a parent.

    ``hash`` identifies the definition (class, args, kwargs; not the id, parent or
    MRO); ``id`` tells apart instances built from the same definition; ``parent``
    is lineage, e.g. the main slot digest of the checkpoint a fine-tune started from.
    """

    __slots__ = ("cls", "module", "mro", "_args", "_kwargs", "id", "parent", "_classes", "_hash", "_decoded")

    def __init__(self, cls: str, module: str, mro: Sequence[str], args: list[Any], kwargs: dict[str, Any],
                 id: Optional[str] = None, parent: Optional[str] = None,
                 classes: Optional[Mapping[str, type]] = None, hash: Optional[str] = None):
        self.cls = cls
        self.module = module
        self.mro = tuple(mro)
        self._args = args
        self._kwargs = kwargs
        self.id = id
        self.parent = parent
        self._classes = dict(classes or {})  # classes this process already has: build needs no trust for them
        self._hash = hash
        self._decoded: Optional[tuple[tuple[Any, ...], dict[str, Any]]] = None

    # -- making ------------------------------------------------------------
    @classmethod
    def of(cls, target: type, *args: Any, **kwargs: Any) -> "Recipe":
        """The recipe of ``target(*args, **kwargs)``, for a class that is not ``@ckpt.recorded``."""
        if not isinstance(target, type):
            raise TypeError(f"Recipe.of needs a class, not a {type(target).__name__}")
        result = _make(target, _constructor_signature(target), args, kwargs, new_id=True)
        if isinstance(result, Exception):
            raise result
        return result

    def with_parent(self, parent: Optional[str]) -> "Recipe":
        """A copy with lineage ``parent`` (e.g. ``entry.digest`` of the checkpoint it was fine-tuned from)."""
        if parent is not None and (type(parent) is not str or not 0 < len(parent) <= _MAX_NAME):
            raise TypeError(f"parent must be a non-empty string (a checkpoint's digest) or None, not {parent!r:.80}")
        return Recipe(self.cls, self.module, self.mro, self._args, self._kwargs, self.id, parent, self._classes,
                      self._hash)

    # -- reading -----------------------------------------------------------
    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON of class, args and kwargs: stable across processes and hash seeds."""
        if self._hash is None:
            self._hash = _rj.digest({"class": self.cls, "args": _definition(self._args),
                                     "kwargs": _definition(self._kwargs)})
        return self._hash

    def _decode(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self._decoded is None:
            where = f"recipe of {self.cls}"
            args = _rj.decode(self._args, f"{where} args", _nested_recipe)
            kwargs = _rj.decode(self._kwargs, f"{where} kwargs", _nested_recipe)
            self._decoded = (tuple(args), dict(kwargs))
        return self._decoded

    @property
    def args(self) -> tuple[Any, ...]:
        """Positional arguments as Python values (nested recipes as :class:`Recipe`)."""
        return self._decode()[0]

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments as Python values (nested recipes as :class:`Recipe`)."""
        return dict(self._decode()[1])

    @property
    def name(self) -> str:
        """The class's own name (``MLP`` for ``mypkg.models.MLP``)."""
        return self.cls.rsplit(".", 1)[-1]

    def to_dict(self) -> dict[str, Any]:
        """The JSON record stored in a manifest (docs/FORMAT.md, "Recipes")."""
        return {"version": RECIPE_VERSION, "class": self.cls, "module": self.module, "mro": list(self.mro),
                "args": _copy(self._args), "kwargs": _copy(self._kwargs), "id": self.id, "parent": self.parent,
                "hash": self.hash}

    def _record(self) -> dict[str, Any]:
        """The nested-recipe record (the ``v`` of a ``recipe`` tag)."""
        return {"class": self.cls, "module": self.module, "mro": list(self.mro), "args": self._args,
                "kwargs": self._kwargs}

    @classmethod
    def from_dict(cls, doc: Any, where: str = "recipe", *, check: bool = True) -> "Recipe":
        """A recipe from its JSON record, validated (``check``: every argument tag too); imports nothing."""
        if not isinstance(doc, dict):
            raise FormatError(f"{where}: invalid recipe: not a JSON object")
        version = doc.get("version", RECIPE_VERSION)
        if type(version) is not int or version < 1:
            raise FormatError(f"{where}: invalid recipe: version {version!r:.40}")
        if version > RECIPE_VERSION:
            raise FormatError(f"{where}: recipe version {version} is newer than this ckpt reads "
                              f"({RECIPE_VERSION}); upgrade ckpt")
        recipe = _from_fields(doc, where)
        for key in ("id", "parent"):
            if doc.get(key) is not None and (type(doc[key]) is not str or len(doc[key]) > _MAX_NAME):
                raise FormatError(f"{where}: invalid recipe: {key} is not a short string")
        recipe.id, recipe.parent = doc.get("id"), doc.get("parent")
        stored = doc.get("hash")
        if check:
            recipe._decode()  # every tag, nested recipes included
            if stored is not None and stored != recipe.hash:
                log.warning("%s: stored recipe hash %.16s... differs from its content's %.16s...; using the "
                            "content's", where, stored, recipe.hash)
        elif type(stored) is str:
            recipe._hash = stored
        return recipe

    # -- building ----------------------------------------------------------
    def build(self, *, trusted: Trusted = None) -> Any:
        """A fresh, untrained object from this recipe (DRYML's ``ObjectDef.build``).

        Classes this process recorded need no trust. A recipe read from a file
        imports its classes (and those of nested recipes) only if ``trusted``
        admits every one (``True``, or patterns like ``["mypkg.models.*"]``);
        otherwise :class:`~ckpt.errors.UntrustedClassError`, and nothing is imported.
        The pickle allow-list's code-execution primitives (``os.*``, ``subprocess.*``,
        ...) are refused even with ``trusted=True``: no model is built from them.
        """
        records = [self._record()]
        names: dict[str, str] = {}
        while records:  # every class first: refuse before importing any
            record = records.pop()
            names[record["class"]] = record.get("module") or record["class"].rsplit(".", 1)[0]  # as _from_fields
            records.extend(nested_records(record["args"]) + nested_records(record["kwargs"]))
        refused = [n for n in names if n not in self._classes and not admits(trusted, n)]
        if refused:
            hint = (f" (a string is not a list of patterns: pass trusted=[{trusted!r:.100}])"
                    if isinstance(trusted, str) else "")
            raise UntrustedClassError(
                f"building this recipe would import {', '.join(sorted(refused))}, which trusted={trusted!r:.200} "
                f"does not admit{hint}; nothing was imported. Pass trusted=['<package>.*'] for code you trust",
                classes=sorted(refused))
        for n, module in names.items():
            if n not in self._classes:
                self._classes[n] = import_class(n, module, f"recipe of {self.cls}")
        return construct(self._record(), self._classes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Recipe) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.hash, self.id, self.parent))

    def __repr__(self) -> str:
        parts = [self.cls]
        if self._args:
            parts.append(f"args={self.args!r:.200}")
        if self._kwargs:
            parts.append(f"kwargs={self.kwargs!r:.300}")
        return f"Recipe({', '.join(parts)}, hash={self.hash[:12]})"


def _from_fields(doc: dict[str, Any], where: str) -> Recipe:
    name, module, mro = doc.get("class"), doc.get("module"), doc.get("mro", [])
    if type(name) is not str or not 0 < len(name) <= _MAX_NAME:
        raise FormatError(f"{where}: invalid recipe: class is not a non-empty string")
    if module is None:
        module = name.rsplit(".", 1)[0]
    if type(module) is not str or not name.startswith(module + "."):
        raise FormatError(f"{where}: invalid recipe: module {module!r:.80} is not a prefix of class {name!r:.80}")
    if type(mro) is not list or len(mro) > 256 or not all(type(m) is str and len(m) <= _MAX_NAME for m in mro):
        raise FormatError(f"{where}: invalid recipe: mro is not a list of class names")
    args, kwargs = doc.get("args", []), doc.get("kwargs", {})
    if type(args) is not list or type(kwargs) is not dict:
        raise FormatError(f"{where}: invalid recipe: args is not a list or kwargs not an object")
    try:
        return Recipe(name, module, mro, _copy(args), _copy(kwargs))
    except FormatError as e:
        raise FormatError(f"{where}: {e}") from None


_MAX_JSON_DEPTH = 4 * _rj.MAX_DEPTH  # each tag level is up to a few JSON levels (a tuple: an object and a list)


def _copy(value: Any, depth: int = 0) -> Any:
    """A copy of a JSON structure, so that a recipe and the documents it came from or gave out never share state."""
    if depth > _MAX_JSON_DEPTH:
        raise FormatError(f"invalid recipe: nested more than {_MAX_JSON_DEPTH} levels deep")
    if type(value) is list:
        return [_copy(v, depth + 1) for v in value]
    if type(value) is dict:
        return {k: _copy(v, depth + 1) for k, v in value.items()}
    return value


def _nested_recipe(record: dict[str, Any], where: str) -> Recipe:
    return _from_fields(record, where)


def _definition(value: Any) -> Any:
    """The value with nested recipe records reduced to class, args and kwargs (what a hash covers)."""
    if type(value) is list:
        return [_definition(v) for v in value]
    if type(value) is dict:
        record = value.get("v")
        if value.get(_tagged.TAG) == "recipe" and type(record) is dict:
            return _tagged.tag("recipe", {"class": record.get("class"), "args": _definition(record.get("args")),
                                          "kwargs": _definition(record.get("kwargs"))})
        return {k: _definition(v) for k, v in value.items()}
    return value


# -- recording ---------------------------------------------------------------
def _signature(init: Callable[..., Any]) -> Optional[inspect.Signature]:
    try:
        return inspect.signature(init)
    except (TypeError, ValueError):  # a builtin __init__ without a signature
        return None


def _constructor_signature(cls: type) -> Optional[inspect.Signature]:
    """The signature the constructor binds arguments with: ``__init__``'s, or ``__new__``'s when only it is defined."""
    init = getattr(cls, "__init__")  # noqa: B009  # the class's, not an instance's
    if init is object.__init__ and cls.__new__ is not object.__new__:
        return _signature(cls.__new__)  # its first parameter (cls) stands where self would
    return _signature(init)


def _is_linen(cls: type) -> bool:
    return any(c.__module__ == "flax.linen.module" and c.__name__ == "Module" for c in cls.__mro__)


def _bind(sig: Optional[inspect.Signature], args: tuple[Any, ...], kwargs: dict[str, Any],
          linen: bool) -> tuple[list[Any], dict[str, Any]]:
    """Arguments as the constructor binds them, defaults filled in, each parameter in one canonical place."""
    if sig is None:
        return list(args), dict(kwargs)
    bound = sig.bind(None, *args, **kwargs)  # None stands for self
    bound.apply_defaults()
    params = list(sig.parameters.values())[1:]
    var_pos = [p for p in params if p.kind is p.VAR_POSITIONAL]
    spill = bool(var_pos and bound.arguments.get(var_pos[0].name))  # named params before *args go positionally
    pos: list[Any] = []
    kw: dict[str, Any] = {}
    for p in params:
        if p.name not in bound.arguments or (linen and p.name == "parent"):
            continue
        v = bound.arguments[p.name]
        if v is _FACTORY:
            continue  # a dataclass default_factory: the rebuilt object makes its own
        if p.kind is p.POSITIONAL_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and spill):
            pos.append(v)
        elif p.kind is p.VAR_POSITIONAL:
            pos.extend(v)
        elif p.kind is p.VAR_KEYWORD:
            kw.update(v)
        else:
            kw[p.name] = v
    return pos, kw


def _make(cls: type, sig: Optional[inspect.Signature], args: tuple[Any, ...], kwargs: dict[str, Any], *,
          new_id: bool) -> Union[Recipe, Exception]:
    """The recipe of ``cls(*args, **kwargs)``, or the error that prevents recording it."""
    try:
        pos, kw = _bind(sig, args, kwargs, _is_linen(cls))
    except TypeError as e:
        return TypeError(f"{cls.__qualname__}{sig}: {e}")
    classes: dict[str, type] = {_name(cls): cls}

    def nested(value: Any, path: str) -> Optional[dict[str, Any]]:
        found = value if isinstance(value, Recipe) else _lookup(value)
        if found is None:
            return None
        if isinstance(found, Exception):
            raise RecipeArgumentError(f"{path} is a {type(value).__name__} whose own recipe failed: {found}",
                                      path=path)
        classes.update(found._classes)
        return _tagged.tag("recipe", found._record())

    try:
        enc_args = [_rj.encode(v, f"{cls.__qualname__}.args[{i}]", nested) for i, v in enumerate(pos)]
        enc_kwargs = {k: _rj.encode(v, f"{cls.__qualname__}.kwargs[{k!r}]", nested) for k, v in kw.items()}
    except RecipeArgumentError as e:
        return e
    return Recipe(_name(cls), cls.__module__, [_name(c) for c in cls.__mro__], enc_args, enc_kwargs,
                  uuid.uuid4().hex if new_id else None, None, classes)


def _store(obj: Any, value: Union[Recipe, Exception]) -> None:
    key = id(obj)
    try:
        weakref.finalize(obj, _TABLE.pop, key, None)
    except TypeError:  # not weak-referenceable: keep it on the instance itself
        try:
            object.__setattr__(obj, "__ckpt_recipe__", value)
        except (AttributeError, TypeError):
            log.warning("cannot record the recipe of a %s: it has neither weak references nor a __dict__",
                        type(obj).__qualname__)
        return
    _TABLE[key] = value


def adopt(obj: Any, recipe: Recipe) -> None:
    """Make ``recipe`` (id and parent included) the one ``recipe_of(obj)`` returns: ``obj`` is what it describes."""
    if id(obj) in _TABLE:
        _TABLE[id(obj)] = recipe
    else:
        _store(obj, recipe)


def _lookup(obj: Any) -> Union[Recipe, Exception, None]:
    found = _TABLE.get(id(obj))
    if found is not None:
        return found
    try:
        d = object.__getattribute__(obj, "__dict__")
    except (AttributeError, TypeError):
        return None
    value = d.get("__ckpt_recipe__") if isinstance(d, dict) else None
    return value if isinstance(value, (Recipe, Exception)) else None


def recorded(cls: type[T]) -> type[T]:
    """Class decorator: each instance remembers how it was constructed (see :func:`recipe_of`).

    The outermost constructor call is recorded; a base class's ``__init__``
    reached through ``super().__init__`` does not overwrite it. A subclass that
    defines its own ``__init__`` needs its own ``@ckpt.recorded``. Works on plain
    classes, objax Modules, flax linen modules (``parent`` is not recorded) and
    equinox modules (record the instance you construct: ``eqx.apply_updates``
    and other tree maps make new instances, so take the recipe first).
    """
    if not isinstance(cls, type):
        raise TypeError(f"@ckpt.recorded decorates a class, not a {type(cls).__name__}")
    init = cls.__init__
    if getattr(init, "__ckpt_recorded__", None) is cls:
        return cls
    sig = _constructor_signature(cls)
    bare = init is object.__init__ and cls.__new__ is not object.__new__  # arguments go to __new__ only

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if _lookup(self) is None:
            if type(self).__init__ is not __init__:  # reached via super() from an unrecorded subclass
                _store(self, RecipeNotFoundError(
                    f"{type(self).__qualname__} defines its own __init__ and is not @ckpt.recorded (its base "
                    f"{cls.__qualname__} is); decorate {type(self).__qualname__} too"))
            else:
                _store(self, _make(type(self), sig, args, kwargs, new_id=True))
        if bare:
            init(self)
        else:
            init(self, *args, **kwargs)

    __init__.__ckpt_recorded__ = cls  # type: ignore[attr-defined]
    type.__setattr__(cls, "__init__", __init__)
    return cls


def recipe_of(obj: Any, *, parent: Optional[str] = None) -> Recipe:
    """The recipe recorded when ``obj`` was constructed (its class must be ``@ckpt.recorded``).

    Raises :class:`~ckpt.errors.RecipeArgumentError` naming the argument that is
    not storable as JSON, or :class:`~ckpt.errors.RecipeNotFoundError` for an
    object that was not recorded.
    """
    if isinstance(obj, Recipe):
        found: Union[Recipe, Exception, None] = obj
    else:
        found = _lookup(obj)
    if found is None:
        raise RecipeNotFoundError(
            f"no recipe recorded for this {type(obj).__qualname__}: decorate its class with @ckpt.recorded before "
            "constructing it, or use ckpt.Recipe.of(cls, *args, **kwargs)")
    if isinstance(found, Exception):
        raise found.with_traceback(None)  # the error recording met; raised afresh each time
    return found if parent is None else found.with_parent(parent)
