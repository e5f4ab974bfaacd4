"""Shared objects: array members stored once per checkpoint directory, named by their digest.

An object is exactly the bytes the member would have had inside a checkpoint (a whole ``.npy``
file, header included, or a ``.ckz`` member), at ``<ckpt dir>/objects/<algorithm>/<digest><ext>``.
Its name is its content, so an object is written once, never changed, and checked on every
read against the digest of the manifest that refers to it (docs/FORMAT.md section 2.3).
Everything goes through the checkpoint directory's :class:`~ckpt.storage.Storage`. On a local
folder an object is written while it is hashed, in one pass (temp file beside the target, fsync,
rename, through :data:`ckpt._io.ops`), and the folder is fsynced once per save
(:meth:`ObjectStore.sync`), before the checkpoint that refers to the new objects is committed. On
other storages the bytes are hashed first and committed under their name (``Storage.commit``).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import numpy as np

from .. import _digest, _io, _limits
from ..errors import ChecksumError, FormatError, SaveError
from ..storage import Storage, local as _local

OBJECTS_DIR = "objects"
EXTENSIONS = (".npy", ".ckz")
_OBJECT_RE = re.compile(r"^(?P<digest>[0-9a-f]{64})(?P<ext>\.npy|\.ckz)$")
_READ_SLICE = 64 << 20


class MissingObjectError(FormatError):
    """A checkpoint refers to a shared object that is not in its directory (deleted or never copied)."""


def object_key(algorithm: str, digest: str, ext: str) -> str:
    """The object's path below the checkpoint directory, ``/``-separated."""
    return f"{OBJECTS_DIR}/{algorithm}/{digest}{ext}"


def ext_of(member: str) -> str:
    return os.path.splitext(member)[1]


def parse_object_name(algorithm: str, name: str) -> Optional[tuple[str, str]]:
    """(digest, ext) of a committed object's file name in the folder of ``algorithm``, else None."""
    if algorithm not in _digest.ALGORITHMS:
        return None
    m = _OBJECT_RE.match(name)
    return (m.group("digest"), m.group("ext")) if m else None


@dataclass(frozen=True)
class Where:
    """Where a checkpoint's shared objects are: its storage, and the key of the checkpoint file."""

    storage: Storage
    checkpoint: str

    @property
    def prefix(self) -> str:
        folder = self.checkpoint.rpartition("/")[0]
        return folder + "/" if folder else ""

    def key(self, algorithm: str, digest: str, ext: str) -> str:
        return self.prefix + object_key(algorithm, digest, ext)


class ObjectStore:
    """The ``objects`` folder of one checkpoint directory (``storage`` is rooted at that directory)."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self._touched: set[str] = set()

    def has(self, algorithm: str, digest: str, ext: str, size: int) -> bool:
        """Whether a committed object of this content exists (by name and size: a cheap stat)."""
        try:
            info = self.storage.stat(object_key(algorithm, digest, ext))
        except OSError:
            return False
        return info is not None and info.size == size

    def is_empty(self) -> bool:
        return not self.listing()

    def put(self, algorithm: str, ext: str, chunks: Iterable[Any], *,
            expect: Optional[str] = None) -> tuple[str, int, bool]:
        """Write an object from its bytes, hashing them on the way; returns ``(digest, size, written)``.

        Nothing is written when an object of that digest exists already (same name, same bytes).
        ``expect``: the digest the caller computed earlier; bytes that hash otherwise (an array
        changed while it was saved) raise :class:`~ckpt.errors.SaveError` and commit nothing.
        """
        folder = f"{OBJECTS_DIR}/{algorithm}"
        local = self.storage.local_path(folder)
        if local is not None:
            return self._put_local(local, algorithm, ext, chunks, expect)
        data = b"".join(bytes(memoryview(c).cast("B")) for c in chunks)  # object stores: hash, then commit
        digest = _digest.hexdigest(algorithm, data)
        self._check(expect, digest)
        if self.has(algorithm, digest, ext, len(data)):
            return digest, len(data), False
        self.storage.commit(object_key(algorithm, digest, ext), lambda f: f.write(data))
        return digest, len(data), True

    def _check(self, expect: Optional[str], digest: str) -> None:
        if expect is not None and digest != expect:
            raise SaveError(f"{self.storage.url}: an array changed while it was being saved (hashed as {expect} "
                            f"just before, {digest} now); nothing was committed", file=self.storage.url)

    def _put_local(self, folder: str, algorithm: str, ext: str, chunks: Iterable[Any],
                   expect: Optional[str]) -> tuple[str, int, bool]:
        if not os.path.isdir(folder):
            _local.makedirs(folder)
        tmp = _local.temp_path_for(os.path.join(folder, "object" + ext))
        hasher = _digest.new(algorithm)
        size = 0
        try:
            f = _io.ops.open_temp(tmp)
            try:
                for chunk in chunks:
                    hasher.update(chunk)
                    f.write(chunk)
                    size += memoryview(chunk).nbytes
                f.flush()
                _io.ops.fsync(f)
            finally:
                f.close()
            digest = hasher.hexdigest()
            self._check(expect, digest)
            written = not self.has(algorithm, digest, ext, size)
            if not written:
                _io.ops.unlink(tmp)
            else:
                _io.ops.replace(tmp, os.path.join(folder, digest + ext))
                self._touched.add(folder)
        except BaseException:
            with contextlib.suppress(OSError):  # keep the original error; readers ignore temp names
                os.unlink(tmp)
            raise
        return digest, size, written

    def sync(self) -> None:
        """Make the names of the objects written since the last call durable (one fsync per folder)."""
        for folder in sorted(self._touched):
            _io.ops.fsync_dir(folder)
        self._touched.clear()

    def listing(self) -> dict[str, int]:
        """Every committed object: key -> size (temp files are not objects)."""
        out: dict[str, int] = {}
        for algorithm in _digest.ALGORITHMS:
            for info in self.storage.list(f"{OBJECTS_DIR}/{algorithm}"):
                if parse_object_name(algorithm, info.key.rpartition("/")[2]) is not None:
                    out[info.key] = info.size
        return out

    def remove_stale_temps(self) -> None:
        for algorithm in _digest.ALGORITHMS:
            self.storage.cleanup(f"{OBJECTS_DIR}/{algorithm}", lambda name: str(name).startswith("object."))

    def delete(self, keys: Iterable[str]) -> list[str]:
        """Remove committed objects; returns the keys asked for. Durable when this returns."""
        keys = list(keys)
        if keys:
            self.storage.delete(keys)
        return keys


def open_object(where: Optional[Where], algorithm: str, digest: str, member: str, size: int, *,
                label: str, slot: Optional[str]) -> Any:
    """The open file of a member stored as a shared object, after its size is checked."""
    at = f"{label}: slot {slot!r} member {member!r}" if slot else f"{label}: member {member!r}"
    if where is None:
        raise MissingObjectError(f"{at} is a shared object of an incremental checkpoint, and this file was not "
                                 "opened by its location inside its checkpoint directory; open it there, or write "
                                 "a standalone copy with ckpt.export_standalone / `ckpt export --to npz`",
                                 file=label, slot=slot)
    key = where.key(algorithm, digest, ext_of(member))
    shown = where.storage.label(key) if hasattr(where.storage, "label") else key
    try:
        info = where.storage.stat(key)
        f = where.storage.open_read(key) if info is not None else None
    except OSError as e:
        raise MissingObjectError(f"{at}: cannot open its shared object {shown}: {e.strerror or e}", file=label,
                                 slot=slot) from e
    if f is None or info is None:
        if where.storage.stat(where.checkpoint) is None:
            raise FileNotFoundError(f"{label} was removed while being read")  # rotated away meanwhile
        raise MissingObjectError(f"{at} refers to the shared object {shown}, which is missing (deleted by hand, "
                                 "or the checkpoint was copied without its objects folder)", file=label, slot=slot)
    if info.size != size:
        f.close()
        raise ChecksumError(f"{at}: its shared object {shown} is {info.size} bytes, the manifest records {size}",
                            file=label, slot=slot, member=member)
    return f


def read_object(where: Optional[Where], algorithm: str, digest: str, member: str, size: int, *, label: str,
                slot: Optional[str], verify: bool, keep: bool = True) -> Any:
    """A shared object's bytes in a new writable buffer (checked against ``digest`` with ``verify``)."""
    if size > _limits.MAX_MEMBER_BYTES:
        raise FormatError(f"{label}: member {member!r} of {size} bytes is over the limit", file=label, slot=slot)
    with open_object(where, algorithm, digest, member, size, label=label, slot=slot) as f:
        buf = np.empty(size, dtype=np.uint8) if keep else np.empty(min(size, _READ_SLICE), dtype=np.uint8)
        view = memoryview(buf.data)
        hasher = _digest.new(algorithm, label) if verify else None
        done = 0
        while done < size:
            part = view[done:done + _READ_SLICE] if keep else view[:min(_READ_SLICE, size - done)]
            n = f.readinto(part)
            if not n:
                raise FormatError(f"{label}: the shared object of member {member!r} is cut short", file=label,
                                  slot=slot)
            if hasher is not None:
                hasher.update(part[:n])
            done += n
    if hasher is not None:
        found = hasher.hexdigest()
        if found != digest:
            raise ChecksumError(
                f"{label}: slot {slot!r} member {member!r} is corrupt: its shared object "
                f"{object_key(algorithm, digest, ext_of(member))} hashes to {algorithm} {found}, not the recorded "
                f"{digest}", file=label, slot=slot, member=member, expected=digest, found=found)
    return buf if keep else bytearray()


def object_head(where: Optional[Where], algorithm: str, digest: str, member: str, size: int, n: int, *,
                label: str) -> bytes:
    with open_object(where, algorithm, digest, member, size, label=label, slot=None) as f:
        return f.read(min(n, size))


def object_chunks(where: Optional[Where], algorithm: str, digest: str, member: str, size: int, *,
                  label: str) -> Iterable[bytes]:
    with open_object(where, algorithm, digest, member, size, label=label, slot=None) as f:
        while True:
            chunk = f.read(_READ_SLICE)
            if not chunk:
                return
            yield chunk
