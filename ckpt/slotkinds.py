"""Slot kinds: how each kind of value becomes a slot's members and comes back, in one registry.

A kind has a name (the manifest's ``serializer``), an encoder (value -> members and manifest
records), a decoder (one verified stored slot -> value), optionally a test that claims values on
save, and the packages reading it needs. The built-in kinds (``arrays``, ``json``, ``raw``,
``pickle``) register here like any other; later kinds (shard and content references) and users'
own (:func:`ckpt.register_serializer`) add themselves the same way. The file layer below
(``_packfile``) only moves members and bytes; it never learns what a kind means.

A slot is decoded only by a kind registered in the reading process under the name the file
records: nothing named in a file is ever imported.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from . import _codec, _json, _limits, _npy, _zip, deps as _deps, manifest as _manifest, serializers as _ser
from ._members import Encoded
from ._pickle_scan import scan, scan_globals
from .errors import FormatError, SlotKindError, UnknownSlotKindError, attach

if TYPE_CHECKING:
    from ._packfile import PackReader

__all__ = ["SlotKind", "StoredSlot", "WithDeps", "with_deps", "register", "unregister", "get", "registered",
           "choose", "encode", "load", "arrays", "pickle_globals", "BUILTIN"]

BUILTIN = ("arrays", "json", "raw", "pickle")


@dataclass(frozen=True)
class SlotKind:
    """One kind of slot. ``encode(value, snapshot=, compression=, buffers=)`` returns the members to
    write; ``decode(stored)`` gets a :class:`StoredSlot` and returns the value. ``claims(value)``, when
    given, makes :func:`choose` pick this kind for such values on save. ``requires`` are packages
    reading the slot needs (recorded with their installed versions, checked at load)."""

    name: str
    encode: Callable[..., Encoded]
    decode: Callable[["StoredSlot"], Any]
    claims: Optional[Callable[[Any], bool]] = None
    requires: tuple[str, ...] = ()
    builtin: bool = False


class StoredSlot:
    """What a kind's decoder sees: one slot of an open file, its manifest record, and the caller's
    trust. Every member it reads is checked against its digest first (unless ``verify`` is off)."""

    def __init__(self, reader: "PackReader", name: str, *, trusted: _ser.Trusted = False, verify: bool = True):
        self.reader = reader
        self.name = name
        self.info = reader.slot(name)
        self.trusted = trusted
        self.verify = verify
        self.file = reader.label
        self.where = f"{reader.label} slot {name!r}"

    @property
    def members(self) -> list[str]:
        return list(self.info.members)

    def read(self, member: str, *, copy: bool = True) -> Any:
        """One member's verified bytes (a writable buffer, or with ``copy=False`` maybe a read-only view)."""
        return self.reader.read_member(member, verify=self.verify, slot=self.name, copy=copy)

    def only_member(self) -> str:
        """The slot's single member (json, raw and user kinds hold exactly one)."""
        if len(self.info.members) != 1:
            raise FormatError(f"{self.where}: a {self.info.serializer} slot must have exactly one member "
                              f"(it lists {len(self.info.members)})", file=self.file, slot=self.name)
        return self.info.members[0]

    def arrays(self) -> _ser.ArraysView:
        return arrays(self.reader, self.name, verify=self.verify)


@dataclass(frozen=True)
class WithDeps:
    """A value with the user's own dependency descriptors for its slot (see :func:`with_deps`)."""

    value: Any
    deps: Mapping[str, Any] = field(default_factory=dict)


def with_deps(value: Any, deps: Mapping[str, Any]) -> WithDeps:
    """Store ``value`` with extra dependency descriptors, e.g. ``{"mylib": "1.2"}`` (``mylib`` of the
    same major version is needed to read it) or ``{"vocab": {"version": "7", "requires": ""}}``
    (recorded only). Usable wherever a slot's value goes (``extras=``, ``Pack.dump``, ``ckpt.dump``);
    loads check them like the versions ckpt records itself (``deps="warn"`` / ``"strict"``)."""
    return WithDeps(value, dict(deps))


_KINDS: dict[str, SlotKind] = {}
_LOCK = threading.Lock()


def register(kind: SlotKind, *, replace: bool = False) -> SlotKind:
    """Add a kind; a name already registered is refused unless ``replace`` (never a built-in one)."""
    if not isinstance(kind.name, str) or _manifest.KIND_NAME.fullmatch(kind.name) is None:
        raise ValueError(f"invalid slot kind name {kind.name!r}: 1-100 letters, digits, '_', '.', '+' or '-', "
                         "starting with a letter or digit")
    with _LOCK:
        old = _KINDS.get(kind.name)
        if old is not None and (old.builtin or not replace):
            raise ValueError(f"slot kind {kind.name!r} is already registered"
                             + ("" if old.builtin else "; pass replace=True to replace it"))
        _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove a kind that is not built in (files holding it then refuse to load that slot)."""
    with _LOCK:
        kind = _KINDS.get(name)
        if kind is None:
            raise KeyError(f"no slot kind {name!r} is registered")
        if kind.builtin:
            raise ValueError(f"slot kind {name!r} is built in and cannot be removed")
        del _KINDS[name]


def registered() -> list[str]:
    """The names of every registered kind, built-in ones first."""
    with _LOCK:
        return [*BUILTIN, *sorted(n for n in _KINDS if n not in BUILTIN)]


def get(name: str, *, file: Optional[str] = None, slot: Optional[str] = None) -> SlotKind:
    """The kind registered as ``name``; an unregistered one is an :class:`UnknownSlotKindError`."""
    kind = _KINDS.get(name)
    if kind is None:
        where = f"{file}: slot {slot!r}" if file else f"slot {slot!r}" if slot else "a slot"
        raise UnknownSlotKindError(
            f"{where} was written by the slot kind {name!r}, which this process has not registered "
            f"(registered: {', '.join(registered())}). Register it before loading, e.g. "
            f"ckpt.register_serializer(<type>, name={name!r}, dump=..., load=...); nothing in the file is "
            "imported to find it", kind=name, file=file, slot=slot)
    return kind


def choose(value: Any) -> str:
    """The kind a value gets on save: the latest registered kind that claims it, else a built-in one."""
    with _LOCK:
        claiming = [k for k in reversed(list(_KINDS.values())) if k.claims is not None and not k.builtin]
    for kind in claiming:
        if kind.claims(value):  # type: ignore[misc]
            return kind.name
    return _ser.choose(value)


def encode(value: Any, serializer: Optional[str] = None, *, snapshot: bool = False, compression: Any = None,
           buffers: Any = None) -> Encoded:
    """Members and manifest records for one slot's value, by the kind chosen (or named by ``serializer``).
    With ``snapshot``, later mutation of ``value`` does not change what is written."""
    extra: Mapping[str, Any] = {}
    if isinstance(value, WithDeps):
        value, extra = value.value, value.deps
    name = serializer or choose(value)
    kind = _KINDS.get(name)
    if kind is None:
        raise ValueError(f"unknown serializer {name!r}; choose one of {', '.join(registered())}")
    enc = kind.encode(value, snapshot=snapshot, compression=compression, buffers=buffers)
    enc.needed |= set(kind.requires)
    if extra:
        enc.dependencies.update(_deps.user_descriptors(extra))
    return enc


def load(reader: "PackReader", slot: str, *, trusted: _ser.Trusted = False, verify: bool = True) -> Any:
    """The value stored in a slot, by its kind (dependencies are the caller's to check first)."""
    info = reader.slot(slot)
    kind = get(info.serializer, file=reader.label, slot=slot)
    with attach(reader.label, slot):
        return kind.decode(StoredSlot(reader, slot, trusted=trusted, verify=verify))


def arrays(reader: "PackReader", slot: str, *, verify: bool = True) -> _ser.ArraysView:
    """Lazy, verified access to an arrays slot."""
    info = reader.slot(slot)
    if info.serializer != "arrays":
        raise SlotKindError(f"{reader.label}: slot {slot!r} holds {info.serializer!r} data, not arrays",
                            file=reader.label, slot=slot)

    def read(member: str, copy: bool = True) -> Any:
        return reader.read_member(member, verify=verify, slot=slot, copy=copy)

    with attach(reader.label, slot):
        return _ser.ArraysView(
            info.members, info.info,
            read_member=read,
            read_head=reader.read_head,
            member_size=reader.member_size,
            where=f"{reader.label} slot {slot!r}",
            verify_members=(lambda names: reader.verify_members(names, slot=slot)) if verify else None,
            read_many=lambda names: reader.read_members(names, verify=verify, slot=slot),
            file=reader.label, slot=slot,
        )


def pickle_globals(reader: "PackReader", slot: str) -> list[str]:
    """The globals a pickle slot would import, read from its opcodes (verified first; nothing runs)."""
    info = reader.slot(slot)
    if info.serializer != "pickle" or not info.members:
        return []
    data = reader.read_member(info.members[0], slot=slot)
    with attach(reader.label, slot):
        return scan_globals(bytes(data), where=f"{reader.label} slot {slot!r}")


# -- the built-in kinds ------------------------------------------------------
def _encode_arrays(value: Any, *, snapshot: bool = False, compression: Any = None, buffers: Any = None) -> Encoded:
    return _ser.encode_arrays(value, snapshot=snapshot, compression=_codec.Compression.parse(compression),
                              buffers=buffers)


def _encode_pickle(value: Any, *, snapshot: bool = False, compression: Any = None, buffers: Any = None) -> Encoded:
    return _ser.encode_pickle(value, snapshot=snapshot, buffers=buffers)


def _decode_json(stored: StoredSlot) -> Any:
    member = stored.only_member()
    zm = stored.reader.zip.members[member]
    if zm.method != _zip.STORED:
        _json.check_expansion(zm.size, zm.compressed_size, what=f"{stored.where} JSON member", file=stored.file)
    data = stored.read(member)
    return _ser.decode_json(data, stored.where, stored.info.info, stored_bytes=zm.compressed_size, file=stored.file)


def _decode_raw(stored: StoredSlot) -> bytes:
    return bytes(stored.read(stored.only_member()))


def _decode_pickle(stored: StoredSlot) -> Any:
    """The one place a pickle slot is unpickled: trust is checked from the opcodes, every member is
    verified, and only then does :func:`serializers.decode_pickle` run it."""
    where, file, slot = stored.where, stored.file, stored.name
    if not stored.info.members:
        raise FormatError(f"{where}: a pickle slot needs its pickle member", file=file, slot=slot)
    data = bytes(stored.read(stored.info.members[0], copy=False))
    _ser.check_trusted(stored.trusted, scan(data, where=where), where, file=file, slot=slot)
    arrays_: list[Any] = []
    records = stored.info.info.get("arrays", [])
    for i, member in enumerate(stored.info.members[1:]):
        buf = stored.read(member)
        header = _npy.parse_header(bytes(buf[:_limits.MAX_NPY_HEADER_BYTES]), len(buf),
                                   where=f"{where} member {member!r}")
        rec = records[i] if i < len(records) and isinstance(records[i], dict) else {}
        true = _npy.dtype_from_name(rec["dtype"], where=where) if isinstance(rec.get("dtype"), str) else None
        arrays_.append(_npy.array_from_buffer(buf, header, dtype=true))

    def load_array(i: int, kind: str) -> Any:
        if not 0 <= i < len(arrays_):
            raise FormatError(f"{where}: the pickle refers to array {i}; the slot holds {len(arrays_)}",
                              file=file, slot=slot)
        arr = arrays_[i]
        if kind == "jax" and sys.modules.get("jax") is not None:
            return sys.modules["jax"].numpy.array(arr)
        return arr

    return _ser.decode_pickle(data, stored.trusted, where, load_array=load_array, file=file, slot=slot)


for _kind in (
    SlotKind("arrays", _encode_arrays, lambda stored: stored.arrays().as_value(), builtin=True),
    SlotKind("json", lambda value, **_: _ser.encode_json(value), _decode_json, builtin=True),
    SlotKind("raw", lambda value, **_: _ser.encode_raw(value), _decode_raw, builtin=True),
    SlotKind("pickle", _encode_pickle, _decode_pickle, builtin=True),
):
    register(_kind)
