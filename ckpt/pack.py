"""Pack: a file of named slots with a manifest (hashes, dependencies, metadata).

A pack is a zip that numpy opens as an ``.npz`` and objax as a var-collection
file. Each change (``dump``, ``remove``, ``set_metadata``) rewrites the whole
pack: to a temp file and a rename when the pack is a path, from the start
position when it is a file object. Nothing is ever appended in place.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, BinaryIO, Iterator, Mapping, Optional, Union

from . import _packfile, deps as _deps, manifest as _manifest, serializers as _ser
from ._packfile import DEFAULT_SLOT
from .errors import ReadOnlyPackError, SlotExistsError, SlotNotFoundError
from .manifest import ManifestInfo, SlotInfo, slot_name_problem
from .storage import Storage, open_file

log = logging.getLogger("ckpt")
PathOrFile = Union[str, "os.PathLike[str]", BinaryIO]

__all__ = ["Pack", "DEFAULT_SLOT", "check_slot_name"]


def check_slot_name(name: str) -> str:
    """Slot names become member path prefixes, so they are kept to a safe alphabet."""
    problem = slot_name_problem(name)
    if problem is not None:
        raise ValueError(f"invalid slot name {name!r}: it {problem}")
    return name


class Pack:
    """Named slots in one file. Use as a context manager over a path or a binary file object.

    >>> with Pack("model.npz") as pack:            # doctest: +SKIP
    ...     pack.dump("main", {"w": w})            # arrays -> .npy members
    ...     pack.dump("config", {"lr": 0.1})       # JSON
    ...     w2 = pack.load("main")["w"]

    ``deps`` sets what a dependency mismatch at load does: ``"warn"`` (default,
    one :class:`~ckpt.errors.DependencyWarning`), ``"strict"`` (raise
    :class:`~ckpt.errors.DependencyError`) or ``"ignore"``. ``verify=False``
    skips the digest check on load (the structure is still validated).

    ``file`` may be a local path, an ``os.PathLike``, an fsspec URL (``storage_options`` go to its
    filesystem; each change is committed atomically as for a path) or a binary file object.
    """

    def __init__(self, file: PathOrFile, *, deps: str = "warn", verify: bool = True,
                 storage_options: Optional[dict[str, Any]] = None):
        self._deps = _deps.check_mode(deps)
        self._verify = verify
        self._path: Optional[str] = None
        self._fobj: Optional[BinaryIO] = None
        self._handle: Optional[BinaryIO] = None
        self._reader: Optional[_packfile.PackReader] = None
        self._closed = False
        self._store: Optional[Storage] = None
        self._key = ""
        if isinstance(file, (str, os.PathLike)):
            self._path = os.fspath(file)
            self.label = self._path
            self._store, self._key = open_file(file, storage_options)
            self._open_path()
        else:
            self._fobj = file
            name = getattr(file, "name", None)
            self.label = name if isinstance(name, str) else repr(file)
            self._base = file.tell() if _seekable(file) else 0
            self._open_fobj()

    # -- opening -----------------------------------------------------------
    def _open_path(self) -> None:
        if self._store is None:
            return
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._reader = None
        info = self._store.stat(self._key)
        if info is not None and info.size > 0:
            self._handle = self._store.open_read(self._key)
            try:
                self._reader = _packfile.PackReader(self._handle, self.label)
            except BaseException:
                self._handle.close()
                self._handle = None
                raise

    def _open_fobj(self) -> None:
        f = self._fobj
        self._reader = None
        if f is None:
            return
        if not _readable(f) or not _seekable(f):
            return
        f.seek(0, 2)
        end = f.tell()
        f.seek(self._base)
        if end > self._base:
            self._reader = _packfile.PackReader(f, self.label)

    # -- context manager ---------------------------------------------------
    def __enter__(self) -> "Pack":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the file handle a path-backed pack holds. A file object is left open."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._closed = True

    def __del__(self) -> None:
        # Like zipfile.ZipFile: a pack dropped without close() still releases its handle.
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.close()

    def _live(self) -> None:
        if self._closed:
            raise ValueError(f"{self.label}: pack is closed")

    # -- queries -----------------------------------------------------------
    @property
    def slots_info(self) -> Mapping[str, SlotInfo]:
        """Per slot: serializer, digest, size, dependencies, members, created_at."""
        self._live()
        return dict(self._reader.slots) if self._reader else {}

    @property
    def manifest_info(self) -> ManifestInfo:
        """Format version, created/updated times (UTC) and user metadata."""
        self._live()
        r = self._reader
        if r is None:
            return ManifestInfo(0, None, None, {})
        return ManifestInfo(
            r.format_version,
            _manifest.parse_time(r.created_at) if r.created_at else None,
            _manifest.parse_time(r.updated_at) if r.updated_at else None,
            dict(r.metadata),
        )

    @property
    def metadata(self) -> dict[str, Any]:
        """The user metadata (a copy; change it with :meth:`set_metadata`)."""
        return self.manifest_info.metadata

    def __contains__(self, slot: object) -> bool:
        self._live()
        return self._reader is not None and slot in self._reader.slots

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.slots_info))

    def __len__(self) -> int:
        return len(self.slots_info)

    # -- loading -----------------------------------------------------------
    def _readable_reader(self) -> _packfile.PackReader:
        self._live()
        if self._reader is None:
            if self._fobj is not None and not _readable(self._fobj):
                raise ReadOnlyPackError(f"{self.label}: file object is not readable; open it with 'rb' or 'w+b'",
                                        file=self.label)
            raise SlotNotFoundError(f"{self.label}: the pack is empty", file=self.label)
        return self._reader

    def load(self, slot: str = DEFAULT_SLOT, *, trusted: _ser.Trusted = False, deps: Optional[str] = None,
             verify: Optional[bool] = None) -> Any:
        """The value in ``slot``, after checking its dependencies and digest.

        Pickle slots load only with ``trusted=True`` or an allow-list of globals
        (``trusted=["objax.nn.Linear", "mypkg.*"]``); otherwise
        :class:`~ckpt.errors.UntrustedPickleError` lists what the pickle would import.
        """
        r = self._readable_reader()
        r.slot(slot)
        mode = _deps.check_mode(deps) if deps is not None else self._deps
        _deps.report(r.dependency_mismatches([slot]), mode, self.label)
        return r.load(slot, trusted=trusted, verify=self._verify if verify is None else verify)

    def arrays(self, slot: str = DEFAULT_SLOT) -> _ser.ArraysView:
        """Lazy access to an arrays slot: names, shapes and dtypes first, one verified array at a time."""
        r = self._readable_reader()
        _deps.report(r.dependency_mismatches([slot]), self._deps, self.label)
        return r.arrays(slot, verify=self._verify)

    def verify(self) -> None:
        """Check every slot's members against their digest (blake3 or sha256; CRC for files without a manifest)."""
        r = self._readable_reader()
        for slot in r.slots:
            r.verify_slot(slot)

    # -- changing ----------------------------------------------------------
    def dump(self, slot: str, obj: Any, *, serializer: Optional[str] = None, compression: Any = None) -> None:
        """Store ``obj`` in a new slot (raises SlotExistsError if it exists; ``remove`` it first).

        ``compression`` ("zstd", "lz4" or (codec, level)) compresses the arrays of an
        arrays slot that a sample shows will shrink (docs/FORMAT.md section 2.2).
        """
        self._live()
        check_slot_name(slot)
        if slot in self:
            raise SlotExistsError(f"{self.label}: slot {slot!r} already exists; remove() it before dumping again",
                                  file=self.label, slot=slot)
        encoded = _ser.encode(obj, serializer, _packfile.member_prefix(slot), compression=compression)
        self._rewrite(new={slot: encoded}, drop=())

    def remove(self, slot: str) -> None:
        """Delete a slot (members no other slot uses are dropped from the file)."""
        self._live()
        self._readable_reader().slot(slot)
        self._rewrite(new={}, drop=(slot,))

    def set_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Replace the pack's user metadata (any JSON object)."""
        self._live()
        self._rewrite(new={}, drop=(), metadata=dict(metadata))

    def _rewrite(self, *, new: Mapping[str, _ser.Encoded], drop: tuple[str, ...],
                 metadata: Optional[dict[str, Any]] = None) -> None:
        r = self._reader
        if self._fobj is not None and not _writable(self._fobj):
            raise ReadOnlyPackError(f"{self.label}: file object is not writable; open it with 'w+b' to change the pack",
                                    file=self.label)
        if self._fobj is not None and not _readable(self._fobj) and self._written_once():
            raise ReadOnlyPackError(
                f"{self.label}: cannot change a pack in a write-only file object after the first write; "
                "open it with 'w+b'", file=self.label)
        keep = [s for s in (r.slots if r else {}) if s not in drop]
        meta = metadata if metadata is not None else (dict(r.metadata) if r else {})
        created = r.created_at if r else None

        def write(f: BinaryIO) -> None:
            _packfile.write_pack(f, new=new, source=r, keep=keep, metadata=meta, created_at=created)

        if self._store is not None:
            self._store.commit(self._key, write)
            self._open_path()
            return
        f = self._fobj
        if f is None:
            raise ValueError(f"{self.label}: pack has neither a path nor a file object")
        if r is None:
            if _seekable(f):
                f.seek(self._base)
            write(f)
            _truncate(f)
            self._wrote = True
        else:
            # The old content is the source while the new is written, so stage it first.
            with tempfile.TemporaryFile() as tmp:
                write(tmp)
                tmp.seek(0)
                f.seek(self._base)
                while True:
                    chunk = tmp.read(1 << 20)
                    if not chunk:
                        break
                    f.write(chunk)
                _truncate(f)
        f.flush()
        self._open_fobj()

    def _written_once(self) -> bool:
        return getattr(self, "_wrote", False)

    def __repr__(self) -> str:
        return f"Pack({self.label!r}, slots={list(self.slots_info) if not self._closed else '<closed>'})"


def _seekable(f: Any) -> bool:
    try:
        return bool(f.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _readable(f: Any) -> bool:
    try:
        return bool(f.readable())
    except (AttributeError, OSError, ValueError):
        return False


def _writable(f: Any) -> bool:
    """False only when the object says it cannot be written (duck-typed objects are given a try)."""
    try:
        return bool(f.writable())
    except (AttributeError, OSError, ValueError):
        return True


def _truncate(f: Any) -> None:
    try:
        f.truncate()
    except (AttributeError, OSError, ValueError) as e:  # e.g. a pipe: nothing after us to cut
        log.debug("could not truncate %r: %s", f, e)
