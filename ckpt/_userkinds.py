"""User serializers: a slot kind for a type, saved by its own method (MLIO's type-specific path).

``register_serializer(scipy.sparse.csr_matrix, name="scipy.sparse", dump=..., load=...,
requires=["scipy"])`` makes saves store such values as the bytes ``dump`` returns (one member,
``<slot>/data.bin``) under the kind ``scipy.sparse``, and loads give them back through ``load``.
The reading process must register the same name: a file names its kind, never code to import, so
a slot of a kind nobody registered is refused (:class:`~ckpt.errors.UnknownSlotKindError`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Union

from . import slotkinds as _kinds
from ._members import Encoded, MemberSource

TypeOrPredicate = Union[type, tuple, Callable[[Any], bool], None]

__all__ = ["register_serializer", "unregister_serializer"]


def _claims(type_or_predicate: TypeOrPredicate) -> Optional[Callable[[Any], bool]]:
    if type_or_predicate is None:
        return None  # used only when a save names it: serializer="mylib.kind"
    if isinstance(type_or_predicate, type) or (
            isinstance(type_or_predicate, tuple) and all(isinstance(t, type) for t in type_or_predicate)):
        types = type_or_predicate
        return lambda value: isinstance(value, types)
    if callable(type_or_predicate):
        return type_or_predicate
    raise TypeError(f"register_serializer takes a type, a tuple of types, a predicate or None, not "
                    f"{type(type_or_predicate).__name__}")


def register_serializer(type_or_predicate: TypeOrPredicate, *, name: str, dump: Callable[[Any], Any],
                        load: Callable[[bytes], Any], requires: Iterable[str] = (), replace: bool = False) -> None:
    """Store values of a type (or those ``predicate(value)`` accepts) with your own ``dump`` (value ->
    bytes) and ``load`` (bytes -> value), as the slot kind ``name``.

    ``name`` is namespaced with a dot (``"scipy.sparse"``, ``"mylib.tokenizer"``), so it can never
    collide with a kind ckpt adds later. ``requires`` lists the packages reading the slot needs: their
    installed versions are recorded (same major version needed, same minor for 0.x) and checked at
    load like ckpt's own. Kinds registered later win over earlier ones for a value both claim;
    values no user kind claims keep the built-in choice (arrays, json, raw, pickle).

    ``load`` receives bytes read from a file, which anyone may have written (their digest only says
    they are what the writer wrote): it should be safe on untrusted input, e.g. never unpickle.
    """
    if not isinstance(name, str) or "." not in name.strip("."):
        raise ValueError(f"serializer name {name!r} must contain a dot, e.g. 'mylib.sparse' (bare names are "
                         "kept for ckpt's own kinds)")
    if name in _kinds.BUILTIN:
        raise ValueError(f"{name!r} is a built-in slot kind")
    if not callable(dump) or not callable(load):
        raise TypeError("register_serializer needs callables dump(value) -> bytes and load(bytes) -> value")
    packages = tuple(requires)
    bad = [p for p in packages if not isinstance(p, str) or not p]
    if bad or isinstance(requires, str):
        raise TypeError(f"requires is a list of package names, not {requires!r}")

    def encode(value: Any, **_: Any) -> Encoded:
        data = dump(value)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"the dump of serializer {name!r} returned {type(data).__name__}; it must return bytes")
        blob = bytes(data)
        # The versions of ``requires`` are added by slotkinds.encode, as for every kind.
        return Encoded(name, [MemberSource("data.bin", len(blob), lambda: [blob])], info={}, informational={"numpy"})

    def decode(stored: _kinds.StoredSlot) -> Any:
        return load(bytes(stored.read(stored.only_member())))

    _kinds.register(_kinds.SlotKind(name, encode, decode, _claims(type_or_predicate), packages), replace=replace)


def unregister_serializer(name: str) -> None:
    """Forget a registered serializer (values it claimed fall back to the built-in kinds)."""
    _kinds.unregister(name)
