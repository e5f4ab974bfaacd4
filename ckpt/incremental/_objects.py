"""Shared objects: array members stored once per checkpoint directory, named by their digest.

An object is exactly the bytes the member would have had inside a checkpoint (a whole ``.npy``
file, header included, or a ``.ckz`` member), at ``<ckpt dir>/objects/<algorithm>/<digest><ext>``.
Its name is its content, so an object is written once, never changed, and checked on every
read against the digest of the manifest that refers to it (docs/FORMAT.md section 2.3).
Writes follow the durability protocol of :mod:`ckpt._io`: temp file beside the target, fsync,
rename; the folder is fsynced once per save (:meth:`ObjectStore.sync`), before the checkpoint
that refers to the new objects is committed.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any, Iterable, Optional

import numpy as np

from .. import _digest, _io, _limits
from ..errors import ChecksumError, FormatError, SaveError

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


class ObjectStore:
    """The ``objects`` folder of one checkpoint directory."""

    def __init__(self, directory: str):
        self.directory = directory  # the checkpoint directory (``<logdir>/ckpt``)
        self.root = os.path.join(directory, OBJECTS_DIR)
        self._touched: set[str] = set()

    def path(self, algorithm: str, digest: str, ext: str) -> str:
        return os.path.join(self.directory, *object_key(algorithm, digest, ext).split("/"))

    def has(self, algorithm: str, digest: str, ext: str, size: int) -> bool:
        """Whether a committed object of this content exists (by name and size: a cheap stat)."""
        try:
            return os.stat(self.path(algorithm, digest, ext)).st_size == size
        except OSError:
            return False

    def is_empty(self) -> bool:
        return not self.listing()

    def _folder(self, algorithm: str) -> str:
        folder = os.path.join(self.root, algorithm)
        if not os.path.isdir(folder):
            _io.makedirs(folder)
        return folder

    def put(self, algorithm: str, ext: str, chunks: Iterable[Any], *,
            expect: Optional[str] = None) -> tuple[str, int, bool]:
        """Write an object from its bytes, hashing them on the way; returns ``(digest, size, written)``.

        The temp file is renamed to the digest's name only once it is durable; when that object
        exists already, the temp file is dropped instead (same name, same bytes). ``expect``: the
        digest the caller computed earlier; bytes that hash otherwise (an array changed while it
        was saved) raise :class:`~ckpt.errors.SaveError` and write nothing.
        """
        folder = self._folder(algorithm)
        tmp = _io.temp_path_for(os.path.join(folder, "object" + ext))
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
            if expect is not None and digest != expect:
                raise SaveError(f"{self.root}: an array changed while it was being saved ({algorithm} {digest}, "
                                f"hashed as {expect} just before); nothing was committed", file=self.root)
            final = self.path(algorithm, digest, ext)
            written = not self.has(algorithm, digest, ext, size)
            if not written:
                _io.ops.unlink(tmp)
            else:
                _io.ops.replace(tmp, final)
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
        try:
            algorithms = os.listdir(self.root)
        except OSError:
            return out
        for algorithm in algorithms:
            try:
                entries = list(os.scandir(os.path.join(self.root, algorithm)))
            except OSError:
                continue
            for e in entries:
                parsed = parse_object_name(algorithm, e.name)
                if parsed is not None:
                    try:
                        out[object_key(algorithm, *parsed)] = e.stat().st_size
                    except OSError:
                        continue
        return out

    def remove_stale_temps(self) -> None:
        for algorithm in _digest.ALGORITHMS:
            _io.remove_stale_temps(os.path.join(self.root, algorithm), lambda name: name.startswith("object."))

    def delete(self, keys: Iterable[str]) -> list[str]:
        """Remove committed objects; returns the keys removed. Durable when this returns."""
        removed, folders = [], set()
        for key in keys:
            path = os.path.join(self.directory, *key.split("/"))
            try:
                _io.ops.unlink(path)
            except FileNotFoundError:
                continue
            removed.append(key)
            folders.add(os.path.dirname(path))
        for folder in sorted(folders):
            _io.ops.fsync_dir(folder)
        return removed


def open_object(directory: Optional[str], algorithm: str, digest: str, member: str, size: int, *,
                label: str, slot: Optional[str]) -> Any:
    """The open file of a member stored as a shared object, after its size is checked."""
    where = f"{label}: slot {slot!r} member {member!r}" if slot else f"{label}: member {member!r}"
    if directory is None:
        raise MissingObjectError(f"{where} is a shared object of an incremental checkpoint, and this file was not "
                                 "opened by path inside its checkpoint directory; open it there, or write a "
                                 "standalone copy with ckpt.export_standalone / `ckpt export --to npz`",
                                 file=label, slot=slot)
    path = os.path.join(directory, *object_key(algorithm, digest, ext_of(member)).split("/"))
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        if not os.path.exists(label):
            raise  # the checkpoint itself is gone: rotated away while being read
        raise MissingObjectError(f"{where} refers to the shared object {path}, which is missing (deleted by hand, "
                                 "or the checkpoint was copied without its objects folder)", file=label,
                                 slot=slot) from None
    except OSError as e:
        raise MissingObjectError(f"{where}: cannot open its shared object {path}: {e.strerror or e}", file=label,
                                 slot=slot) from e
    found = os.fstat(f.fileno()).st_size
    if found != size:
        f.close()
        raise ChecksumError(f"{where}: its shared object {path} is {found} bytes, the manifest records {size}",
                            file=label, slot=slot, member=member)
    return f


def read_object(directory: Optional[str], algorithm: str, digest: str, member: str, size: int, *, label: str,
                slot: Optional[str], verify: bool, keep: bool = True) -> Any:
    """A shared object's bytes in a new writable buffer (checked against ``digest`` with ``verify``)."""
    if size > _limits.MAX_MEMBER_BYTES:
        raise FormatError(f"{label}: member {member!r} of {size} bytes is over the limit", file=label, slot=slot)
    with open_object(directory, algorithm, digest, member, size, label=label, slot=slot) as f:
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


def object_head(directory: Optional[str], algorithm: str, digest: str, member: str, size: int, n: int, *,
                label: str) -> bytes:
    with open_object(directory, algorithm, digest, member, size, label=label, slot=None) as f:
        return f.read(min(n, size))


def object_chunks(directory: Optional[str], algorithm: str, digest: str, member: str, size: int, *,
                  label: str) -> Iterable[bytes]:
    with open_object(directory, algorithm, digest, member, size, label=label, slot=None) as f:
        while True:
            chunk = f.read(_READ_SLICE)
            if not chunk:
                return
            yield chunk
