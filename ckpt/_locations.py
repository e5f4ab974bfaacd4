"""What the run-level tools ask about a location (exists, is a directory, size, time, listing).

:mod:`ckpt.listing`, :mod:`ckpt.verify`, :mod:`ckpt.convert` and the ``ckpt`` command never call
``os.path``/``os.stat``/``open`` on a checkpoint location themselves: they ask here, and open files
with the library's readers. Local paths are answered by the OS as before; URLs through the storage
seam (:mod:`ckpt.storage`), so that every such tool accepts them. Locations are passed through as
given (``str``, ``os.PathLike`` or a URL) and returned as ``str``.
"""

from __future__ import annotations

import datetime as _dt
import errno as _errno
import os
from typing import BinaryIO, Callable, Optional, TypeVar, Union

from .storage import is_url, kind_of, open_file, open_storage, split_location

__all__ = ["Location", "text", "exists", "is_dir", "is_file", "size", "mtime_iso", "join", "basename",
           "npz_files", "require_file", "require_dir", "check_output", "commit", "read_head", "absolute", "relative"]

Location = Union[str, "os.PathLike[str]"]
T = TypeVar("T")


def text(loc: Location) -> str:
    """The location as a string, for messages and records."""
    return os.fspath(loc)


def exists(loc: Location) -> bool:
    return kind_of(loc) is not None if is_url(loc) else os.path.exists(loc)


def is_dir(loc: Location) -> bool:
    return kind_of(loc) == "dir" if is_url(loc) else os.path.isdir(loc)


def is_file(loc: Location) -> bool:
    return kind_of(loc) == "file" if is_url(loc) else os.path.isfile(loc)


def _stat_url(loc: str) -> Optional[tuple[int, int]]:
    """(size, mtime_ns) of the object a URL names, or None."""
    storage, key = open_file(loc)
    info = storage.stat(key)
    return None if info is None else (info.size, info.mtime_ns)


def size(loc: Location) -> Optional[int]:
    """The size in bytes, or None when it cannot be read (removed meanwhile)."""
    try:
        if is_url(loc):
            found = _stat_url(text(loc))
            return None if found is None else found[0]
        return os.path.getsize(loc)
    except OSError:
        return None


def mtime_iso(loc: Location) -> Optional[str]:
    """The last write time as a manifest timestamp (UTC, microseconds, ``Z``), or None."""
    try:
        if is_url(loc):
            found = _stat_url(text(loc))
            if found is None:
                return None
            seconds = found[1] / 1e9
        else:
            seconds = os.path.getmtime(loc)
        t = _dt.datetime.fromtimestamp(seconds, tz=_dt.timezone.utc)
    except (OSError, ValueError, OverflowError):
        return None
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def join(loc: Location, name: str) -> str:
    return f"{text(loc).rstrip('/')}/{name}" if is_url(loc) else os.path.join(text(loc), name)


def basename(loc: Location) -> str:
    return split_location(text(loc).rstrip("/"))[1] if is_url(loc) else os.path.basename(text(loc))


def npz_files(directory: Location) -> list[str]:
    """The ``.npz`` files directly in ``directory`` (no hidden names: temp files, caches), sorted."""
    if is_url(directory):
        names = [info.key for info in open_storage(directory).list()]
        return sorted(join(directory, n) for n in names if n.endswith(".npz") and not n.startswith("."))
    return sorted(join(directory, n) for n in os.listdir(directory)
                  if n.endswith(".npz") and not n.startswith(".") and is_file(join(directory, n)))


def require_file(loc: Location) -> None:
    """Raise the OSError a user expects when ``loc`` is not an existing file."""
    if not exists(loc):
        raise FileNotFoundError(_errno.ENOENT, "No such file or directory", text(loc))
    if is_dir(loc):
        raise IsADirectoryError(_errno.EISDIR, "Is a directory (expected a checkpoint file)", text(loc))


def require_dir(loc: Location) -> None:
    """Raise the OSError a user expects when ``loc`` is not an existing directory."""
    if not exists(loc):
        raise FileNotFoundError(_errno.ENOENT, "No such file or directory", text(loc))
    if not is_dir(loc):
        raise NotADirectoryError(_errno.ENOTDIR, "Not a directory (expected a log directory)", text(loc))


def check_output(loc: Location, force: bool) -> None:
    """Refuse an output location that is a directory, exists (unless ``force``), or has no parent."""
    from .errors import OutputExistsError

    if is_dir(loc):
        raise IsADirectoryError(_errno.EISDIR, "Is a directory (expected an output file name)", text(loc))
    if exists(loc) and not force:
        raise OutputExistsError(f"{text(loc)}: already exists; pass --force (force=True) to overwrite it",
                                file=text(loc))
    if is_url(loc):
        return  # object stores have no folders to require; the commit creates what it needs
    parent = os.path.dirname(os.path.abspath(loc))
    if not is_dir(parent):
        raise FileNotFoundError(_errno.ENOENT, "No such directory for the output file", parent)


def commit(loc: Location, write: Callable[[BinaryIO], T]) -> T:
    """Write the file ``loc`` whole or not at all through the storage it lives in (``write(f)``)."""
    storage, key = open_file(loc)
    return storage.commit(key, write)


def read_head(loc: Location, n: int) -> bytes:
    """The first ``n`` bytes (fewer for a shorter file), to tell a file's kind before choosing a reader."""
    if is_url(loc):
        storage, key = open_file(text(loc))
        return storage.read_range(key, 0, n)
    with open(loc, "rb") as f:
        return f.read(n)


def absolute(loc: Location) -> str:
    """``loc`` as an absolute location (URLs as given)."""
    return text(loc) if is_url(loc) else os.path.abspath(loc)


def relative(loc: Location, root: Location) -> str:
    """``loc`` relative to ``root`` for display (its last component when it is ``root`` itself)."""
    if text(loc) == text(root):
        return basename(loc)
    if is_url(loc):
        prefix = text(root).rstrip("/") + "/"
        return text(loc)[len(prefix):] if text(loc).startswith(prefix) else text(loc)
    return os.path.relpath(loc, root)
