"""Variable-collection files: objax's ``save_var_collection``/``load_var_collection``, made safe.

The file is a pack whose ``main`` slot holds the arrays in objax's layout
(``names.npy``, ``0.npy``, ``1.npy``, ...), so objax and numpy open it too.
Restoring checks names, shapes, dtypes and hashes of everything before it
assigns anything: a mismatch or a corrupt file never leaves a half-restored model.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Mapping, Optional, Union

import numpy as np

from . import _packfile, _snapshot, collections as _coll, deps as _deps, serializers as _ser, slotkinds as _kinds
from ._packfile import DEFAULT_SLOT, PackReader
from .incremental import _objects
from .storage import Storage, open_file

PathOrFile = Union[str, "os.PathLike[str]", BinaryIO]

__all__ = ["save_var_collection", "load_var_collection", "write_file", "write_encoded", "encode_slots",
           "open_reader", "PreparedRestore", "prepare_restore"]


def encode_slots(slots: Mapping[str, Any], serializers: Optional[Mapping[str, str]] = None, *,
                 snapshot: bool = False, compression: Any = None,
                 buffers: Optional[_snapshot.Snapshot] = None) -> dict[str, _ser.Encoded]:
    """Encode every slot's value (name -> value) ready for :func:`write_encoded`; a ``snapshot``
    copies writable arrays into ``buffers`` (reused from an earlier snapshot) when given."""
    serializers = serializers or {}
    return {
        name: _kinds.encode(value, serializers.get(name), snapshot=snapshot, compression=compression,
                            buffers=buffers)
        for name, value in slots.items()
    }


def write_file(file: PathOrFile, slots: Mapping[str, Any], *, metadata: Optional[Mapping[str, Any]] = None,
               serializers: Optional[Mapping[str, str]] = None, compression: Any = None,
               storage_options: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Write a new pack holding ``slots`` (name -> value): atomically for a path or URL, in place for a file
    object."""
    return write_encoded(file, encode_slots(slots, serializers, compression=compression), metadata=metadata,
                         storage_options=storage_options)


def write_encoded(file: PathOrFile, encoded: Mapping[str, _ser.Encoded], *,
                  metadata: Optional[Mapping[str, Any]] = None, storage_options: Optional[dict[str, Any]] = None,
                  storage: Optional[Storage] = None, exclusive: bool = False) -> dict[str, Any]:
    """Write already-encoded slots as a new pack: committed atomically for a path or URL (or the key ``file``
    of ``storage``; ``exclusive``: never replacing an existing one), in place for a file object."""

    def write(f: BinaryIO) -> dict[str, Any]:
        return _packfile.write_pack(f, new=encoded, metadata=metadata)

    if storage is not None:
        return storage.commit(str(file), write, exclusive=exclusive)
    if isinstance(file, (str, os.PathLike)):
        store, key = open_file(file, storage_options)
        return store.commit(key, write)
    result = write(file)
    try:
        file.truncate()  # a reused file object may hold a longer, older pack after ours
    except (AttributeError, OSError, ValueError):
        pass
    file.flush()
    return result


class open_reader:
    """Context manager giving a PackReader over a path, a URL, a key of ``storage``, or a file object (left
    open).

    ``mmap=True`` maps the file, so ``read(name, copy=False)`` gives read-only zero-copy views;
    only for local files nothing truncates while the views live (a truncated mapping is SIGBUS).
    A local file is a real OS file, so reads keep their ``preadv`` fast path.
    """

    def __init__(self, file: PathOrFile, *, mmap: bool = False, storage_options: Optional[dict[str, Any]] = None,
                 storage: Optional[Storage] = None):
        self._file = file
        self._mmap = mmap
        self._storage_options = storage_options
        self._storage = storage
        self._handle: Optional[BinaryIO] = None

    def __enter__(self) -> PackReader:
        if self._storage is not None or isinstance(self._file, (str, os.PathLike)):
            if self._storage is not None:
                store, key = self._storage, str(self._file)
            else:
                store, key = open_file(self._file, self._storage_options)  # type: ignore[arg-type]
            label = os.fspath(self._file) if self._storage is None else store.label(key)  # type: ignore[arg-type]
            self._handle = store.open_read(key)
            try:
                return PackReader(self._handle, label, mmap=self._mmap, objects_at=_objects.Where(store, key))
            except BaseException:
                self._handle.close()
                raise
        name = getattr(self._file, "name", None)
        return PackReader(self._file, name if isinstance(name, str) else repr(self._file), mmap=self._mmap)

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.close()


@dataclass
class PreparedRestore:
    """Arrays read and verified for one target, ready to assign with :meth:`commit`."""

    pairs: list[tuple[_coll.Target, np.ndarray]]
    rebuild: Callable[[], Any]
    report: dict[str, Any] = field(default_factory=dict)

    def commit(self) -> Any:
        for target, arr in self.pairs:
            target.assign(arr)
        return self.rebuild()


def prepare_restore(reader: PackReader, slot: str, target: Any, *, renamer: _coll.Renamer = None,
                    strict: bool = True, verify: bool = True, cast: bool = False) -> PreparedRestore:
    """Match ``target`` against a stored arrays slot and read what it needs, assigning nothing."""
    view = reader.arrays(slot, verify=verify)
    skeleton = view.info.get("tree") if view.info.get("kind") == "tree" else None
    values = _coll.tree_values(skeleton, where=view.where) if skeleton is not None else {}
    targets, rebuild = _coll.targets_of(target, values)
    stored: dict[str, tuple[tuple[int, ...], np.dtype]] = {n: view.shape_dtype(n) for n in view.names}
    # A template array where a plain number was stored (jax.eval_shape turns an int step into a
    # 0-d ShapeDtypeStruct): that number, as a 0-d array of the template's dtype.
    from_values = _value_arrays(targets, values, stored, where=view.where)
    stored.update({n: (a.shape, a.dtype) for n, a in from_values.items()})
    pairs, report = _coll.plan(targets, stored, renamer=renamer, strict=strict, file=reader.label, slot=slot,
                               cast=cast)
    # Read (not mapped: a file truncated meanwhile is a FormatError, never SIGBUS) and verified,
    # two arrays at a time, before anything is assigned.
    arrays = view.read_all(name for _, name in pairs if name not in from_values)
    arrays.update(from_values)
    loaded = []
    for t, name in pairs:
        arr = arrays[name]
        loaded.append((t, arr if arr.dtype == t.dtype else arr.astype(t.dtype)))
    return PreparedRestore(loaded, rebuild, report)


def _value_arrays(targets: list[_coll.Target], values: Mapping[str, Any],
                  stored: Mapping[str, Any], *, where: str) -> dict[str, np.ndarray]:
    """0-d arrays for scalar targets that match a stored number by name (and hold it exactly)."""
    out: dict[str, np.ndarray] = {}
    for t in targets:
        name = t.names[0]
        value = values.get(name)
        if name in stored or t.shape != () or type(value) not in (bool, int, float, complex):
            continue
        try:
            arr = np.asarray(value, dtype=t.dtype)
        except (OverflowError, TypeError, ValueError):
            continue  # reported by plan() as missing
        # Integers must fit exactly; a Python float rounds to the template's float dtype, as JAX
        # itself rounds a weakly typed float.
        inexact = isinstance(value, (float, complex)) and t.dtype.kind in "fc"
        if inexact or arr.item() == value or (isinstance(value, float) and math.isnan(value)):
            out[name] = arr
    return out


def save_var_collection(file: PathOrFile, vc: Any, *, metadata: Optional[Mapping[str, Any]] = None,
                        compression: Any = None, storage_options: Optional[dict[str, Any]] = None) -> None:
    """Save a collection of arrays to ``file`` (a path or fsspec URL, written atomically, or a binary file object,
    left open); ``storage_options`` go to the URL's filesystem.

    ``vc`` may be an objax VarCollection, a dict of name -> array, or a JAX pytree of
    arrays. The file opens with ``numpy.load`` and ``objax.io.load_var_collection``,
    unless ``compression`` ("zstd", "lz4" or (codec, level)) is given: compressed
    arrays use ckpt's own encoding (``ckpt export`` turns such a file into a plain npz).
    """
    if _coll.flatten(vc) is None:
        raise TypeError(f"cannot save a {type(vc).__name__} as a variable collection: expected an objax "
                        "VarCollection, a dict of arrays or a pytree of arrays")
    write_file(file, {DEFAULT_SLOT: vc}, metadata=metadata, serializers={DEFAULT_SLOT: "arrays"},
               compression=compression, storage_options=storage_options)


def load_var_collection(file: PathOrFile, vc: Any, renamer: _coll.Renamer = None, *, strict: bool = True,
                        cast: bool = False, deps: str = "warn", verify: bool = True,
                        storage_options: Optional[dict[str, Any]] = None) -> Any:
    """Restore ``vc`` from ``file`` (a path, fsspec URL or file object, written by ckpt, objax or
    ``numpy.savez``); returns the restored collection.

    objax VarCollections and dicts of arrays are updated in place (and returned);
    other pytrees are immutable, so the restored tree is returned. A pytree template
    may hold ``jax.ShapeDtypeStruct`` leaves (e.g. from ``jax.eval_shape``): arrays
    are then built directly where their ``sharding`` says. ``renamer`` maps names
    in the file to names in ``vc`` (a callable or a dict). With ``strict`` (the
    default) any missing, unused or mismatched name raises
    :class:`~ckpt.errors.MismatchError` before anything is assigned; with
    ``strict=False`` the intersection is restored and ``(restored, skipped)`` is
    returned, ``skipped`` holding the missing, unused and mismatched names. Dtypes
    are converted only when asked (``cast=True``).
    """
    mode = _deps.check_mode(deps)
    with open_reader(file, storage_options=storage_options) as reader:
        _deps.report(reader.dependency_mismatches([DEFAULT_SLOT]), mode, reader.label)
        prepared = prepare_restore(reader, DEFAULT_SLOT, vc, renamer=renamer, strict=strict, verify=verify,
                                   cast=cast)
    restored = prepared.commit()
    return restored if strict else (restored, prepared.report)
