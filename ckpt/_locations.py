"""What the run-level tools ask about a location (exists, is a directory, size, time, listing).

:mod:`ckpt.listing`, :mod:`ckpt.verify`, :mod:`ckpt.convert` and the ``ckpt`` command never call
``os.path``/``os.stat``/``open`` on a checkpoint location themselves: they ask here, and open files
with the library's readers. This is the one module to route through the storage seam
(``ckpt.storage``) so that every such tool accepts URLs; today it answers for local paths.
Locations are passed through as given (``str`` or ``os.PathLike``) and returned as ``str``.
"""

from __future__ import annotations

import datetime as _dt
import errno as _errno
import os
from typing import Optional, Union

__all__ = ["Location", "text", "exists", "is_dir", "is_file", "size", "mtime_iso", "join", "basename",
           "npz_files", "require_file", "require_dir", "check_output", "read_head", "absolute", "relative"]

Location = Union[str, "os.PathLike[str]"]


def text(loc: Location) -> str:
    """The location as a string, for messages and records."""
    return os.fspath(loc)


def exists(loc: Location) -> bool:
    return os.path.exists(loc)


def is_dir(loc: Location) -> bool:
    return os.path.isdir(loc)


def is_file(loc: Location) -> bool:
    return os.path.isfile(loc)


def size(loc: Location) -> Optional[int]:
    """The size in bytes, or None when it cannot be read (removed meanwhile)."""
    try:
        return os.path.getsize(loc)
    except OSError:
        return None


def mtime_iso(loc: Location) -> Optional[str]:
    """The last write time as a manifest timestamp (UTC, microseconds, ``Z``), or None."""
    try:
        t = _dt.datetime.fromtimestamp(os.path.getmtime(loc), tz=_dt.timezone.utc)
    except OSError:
        return None
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def join(loc: Location, name: str) -> str:
    return os.path.join(text(loc), name)


def basename(loc: Location) -> str:
    return os.path.basename(text(loc))


def npz_files(directory: Location) -> list[str]:
    """The ``.npz`` files directly in ``directory`` (no hidden names: temp files, caches), sorted."""
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
    parent = os.path.dirname(os.path.abspath(loc))
    if not is_dir(parent):
        raise FileNotFoundError(_errno.ENOENT, "No such directory for the output file", parent)


def read_head(loc: Location, n: int) -> bytes:
    """The first ``n`` bytes (fewer for a shorter file), to tell a file's kind before choosing a reader."""
    with open(loc, "rb") as f:
        return f.read(n)


def absolute(loc: Location) -> str:
    """``loc`` as an absolute location (URLs as given)."""
    return os.path.abspath(loc)


def relative(loc: Location, root: Location) -> str:
    """``loc`` relative to ``root`` for display (its last component when it is ``root`` itself)."""
    if text(loc) == text(root):
        return basename(loc)
    return os.path.relpath(loc, root)
