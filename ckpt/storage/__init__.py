"""Where checkpoint bytes live: one small interface (:mod:`ckpt.storage.base`) and its backends.

:func:`open_storage` turns what a user passes as a location into a :class:`Storage`: a local
path or ``os.PathLike`` (and a ``file://`` URL, which names one exactly) is
:class:`~ckpt.storage.local.LocalStorage`; any other ``scheme://`` URL goes to fsspec
(:class:`~ckpt.storage.fsspec.FsspecStorage`, the optional ``ckpt[fsspec]`` extra), except
``s3://`` (and ``s3a://``), which is :class:`~ckpt.storage.s3.S3Storage` (``ckpt[s3]``). A name is
never a URL by accident: ``memory:run`` (no ``//``) is a local folder, ``memory://run`` is not.
"""

from __future__ import annotations

import os
import re
from typing import Any, Optional, Union
from urllib.parse import unquote, urlsplit

from .base import ObjectInfo, Storage
from .local import LocalStorage

__all__ = ["ObjectInfo", "Storage", "LocalStorage", "Location", "open_storage", "open_file", "is_url",
           "split_location"]

#: What a library call accepts as a location.
Location = Union[str, "os.PathLike[str]", Storage]

_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")


def is_url(location: Any) -> bool:
    """Whether ``location`` is a ``scheme://`` URL string (a PathLike never is)."""
    return isinstance(location, str) and _URL.match(location) is not None and not _is_windows_drive(location)


def _is_windows_drive(location: str) -> bool:
    return len(location) > 2 and location[1] == ":" and location[0].isalpha() and location[2] in "\\/" \
        and os.name == "nt"


def _local_file_url(url: str) -> Optional[str]:
    """The OS path a ``file://`` URL names exactly (``file:///abs`` or ``file://localhost/abs``), else None."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        return None
    return unquote(parts.path) or None


def open_storage(location: Location, storage_options: Optional[dict[str, Any]] = None) -> Storage:
    """The storage rooted at the folder ``location`` (a path, an ``os.PathLike``, a URL, or a Storage).

    ``storage_options`` go to the fsspec filesystem of a URL (credentials, endpoint, ...); they are
    refused for a local path, where they would be silently meaningless.
    """
    if isinstance(location, Storage):
        if storage_options:
            raise ValueError(f"storage_options apply to a URL, not to an already open {location!r}")
        return location
    if isinstance(location, bytes):
        raise TypeError("a location is a str path, an os.PathLike or a URL, not bytes")
    if not isinstance(location, (str, os.PathLike)):
        raise TypeError(f"a location is a str path, an os.PathLike or a URL, not {type(location).__name__}")
    if is_url(location):
        url = str(location)
        local = _local_file_url(url)
        if local is not None and not storage_options:
            return LocalStorage(local, url=url)
        if url.split("://", 1)[0].lower() in ("s3", "s3a"):  # ckpt's own S3 backend (issue 16)
            from .s3 import S3Storage

            return S3Storage(url, storage_options)
        from .fsspec import FsspecStorage

        return FsspecStorage(url, storage_options)
    if storage_options:
        raise ValueError(f"storage_options apply to a URL, not to the local path {os.fspath(location)!r}")
    return LocalStorage(location)


def split_location(location: Union[str, "os.PathLike[str]"]) -> tuple[str, str]:
    """``(parent, name)`` of a file location, as the user spelled it (a URL stays a URL)."""
    if is_url(location):
        url = str(location).rstrip("/")
        scheme_end = url.index("://") + 3
        head, _, name = url[scheme_end:].rpartition("/")
        return url[:scheme_end] + head, name
    path = os.fspath(location)
    parent, name = os.path.split(path)
    return parent, name


def open_file(location: Union[str, "os.PathLike[str]"],
              storage_options: Optional[dict[str, Any]] = None) -> tuple[Storage, str]:
    """``(storage of its parent folder, key)`` for a single file location (a path or a URL)."""
    if not isinstance(location, (str, os.PathLike)) or isinstance(location, bytes):
        raise TypeError(f"a file location is a str path, an os.PathLike or a URL, not {type(location).__name__}")
    parent, name = split_location(location)
    if not name:
        raise ValueError(f"{os.fspath(location)!r} names a folder, not a file")
    if not is_url(location):
        parent = parent or os.curdir
        if storage_options:
            raise ValueError(f"storage_options apply to a URL, not to the local path {os.fspath(location)!r}")
        return LocalStorage(parent, url=os.path.dirname(os.fspath(location))), name
    if parent.endswith("://"):  # memory://file.npz: the file sits at the root
        parent = parent + ""
    return open_storage(parent, storage_options), name


def kind_of(location: Union[str, "os.PathLike[str]"], storage_options: Optional[dict[str, Any]] = None
            ) -> Optional[str]:
    """``"file"``, ``"dir"`` or None (nothing there) for a path or URL the user gave."""
    if not is_url(location):
        if storage_options:
            raise ValueError(f"storage_options apply to a URL, not to the local path {os.fspath(location)!r}")
        path = os.fspath(location)
        return "file" if os.path.isfile(path) else "dir" if os.path.isdir(path) else None
    parent, name = split_location(location)
    if name and not parent.endswith("://") and open_storage(parent, storage_options).stat(name) is not None:
        return "file"
    return "dir" if open_storage(location, storage_options).isdir() else None
