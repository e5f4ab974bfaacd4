"""The storage seam: the only way ckpt touches the place where checkpoint bytes live.

A :class:`Storage` is rooted at one directory-like location (a local folder, a ``memory://``
prefix, an ``s3://bucket/prefix``) and names objects by keys relative to it: plain names such
as ``"ckpt/0000000010.npz"``, ``/``-separated, never absolute, never ``..``. Everything above
this layer (the file format, the manager, averaging, the CLI) goes through these few methods;
every backend runs the one shared suite in ``tests/test_storage_backends.py``.

What each backend means by "atomic commit" and "writer exclusion" is documented on its class
and in docs/ARCHITECTURE.md; the contract every backend keeps is:

* :meth:`commit` makes a new object visible whole or not at all: a reader never sees a
  partial object under ``key``, and a failure (exception, killed process) leaves the previous
  object, if any, untouched.
* :meth:`lock` excludes other writers of the same root for as long as it is held.
* :meth:`cleanup` removes what writers that are gone left behind (temp files, multipart
  uploads), never anything committed.
"""

from __future__ import annotations

import abc
import builtins
import contextlib
import dataclasses
from typing import Any, BinaryIO, Callable, Iterable, Optional, Sequence, TypeVar

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    """What a listing or :meth:`Storage.stat` knows about one committed object.

    ``token`` changes whenever the object is replaced (local: inode + mtime; object stores:
    the ETag), so callers may cache per ``(key, size, token)``.
    """

    key: str
    size: int
    mtime_ns: int
    token: str


class Storage(abc.ABC):
    """One root location and the operations ckpt needs on it."""

    #: The root as the user gave it, for messages (a path or a URL).
    url: str

    #: Whether the manager commits each step create-only here: a committed step is never replaced by
    #: another save of the same index (object stores, where a second writer of a step must fail, not
    #: overwrite). Local folders and fsspec keep replace semantics.
    create_only_steps: bool = False

    # -- reading ---------------------------------------------------------------
    @abc.abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A seekable binary file of the committed object ``key`` (FileNotFoundError if none)."""

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes of ``key`` from ``start`` (shorter only at the end of the object)."""
        with self.open_read(key) as f:
            f.seek(start)
            return f.read(length)

    def read_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Several ``(start, length)`` ranges of one object; backends may coalesce and parallelise."""
        with self.open_read(key) as f:
            out = []
            for start, length in ranges:
                f.seek(start)
                out.append(f.read(length))
            return out

    @abc.abstractmethod
    def stat(self, key: str) -> Optional[ObjectInfo]:
        """The committed object ``key``, or None when there is none."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Committed objects directly under the folder ``prefix`` (``""`` is the root; not
        recursive, no temp files or uploads in progress), in no particular order."""

    def list_dirs(self, prefix: str = "") -> "builtins.list[str]":
        """Keys of the folders directly under ``prefix`` (for walking a tree of runs; not recursive)."""
        raise NotImplementedError(f"{type(self).__name__} cannot list folders")

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def label(self, key: str) -> str:
        """``key`` as the user would name it (a path or a URL), for messages and ``file=``."""
        return f"{self.url.rstrip('/')}/{key}" if key else self.url

    def isdir(self, prefix: str = "") -> bool:
        """Whether the folder ``prefix`` exists (backends without folders: whether anything is under it)."""
        return bool(self.list(prefix))

    def local_path(self, key: str) -> Optional[str]:
        """The OS path of ``key`` when the backend is a local filesystem (fast paths), else None."""
        return None

    # -- writing ---------------------------------------------------------------
    @abc.abstractmethod
    def commit(self, key: str, write: Callable[[BinaryIO], T], *, exclusive: bool = False) -> T:
        """Write a new object ``key`` through ``write(f)`` and make it visible whole; returns what
        ``write`` returned. ``f`` is a sequential binary writer (``write``, ``tell``; seekable only
        where the backend says so). With ``exclusive=True`` an existing ``key`` is never replaced:
        FileExistsError instead. Durable when this returns."""

    @abc.abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Remove committed objects (missing ones are ignored); durable when this returns."""

    @abc.abstractmethod
    def makedirs(self, prefix: str = "") -> None:
        """Make the folder ``prefix`` (and the root) exist where the backend has folders."""

    @abc.abstractmethod
    def lock(self, key: str, timeout: Optional[float] = None) -> contextlib.AbstractContextManager[None]:
        """Exclude other writers for as long as the context is held (``ckpt.errors.LockedError``
        after ``timeout`` seconds; None waits forever)."""

    @abc.abstractmethod
    def cleanup(self, prefix: str, target: Callable[[str], Any]) -> None:
        """Remove leftovers (temp files, uploads) of writers that are gone, for final keys under
        ``prefix`` that ``target`` accepts. Never touches committed objects."""

    # -- naming ----------------------------------------------------------------
    def child(self, prefix: str) -> "Storage":
        """A storage rooted at the folder ``prefix`` of this one."""
        raise NotImplementedError(f"{type(self).__name__} has no child storages")

