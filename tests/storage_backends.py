"""The storage backends the shared contract suite (tests/test_storage_backends.py) runs against.

Each :class:`Backend` makes a fresh, empty location for one test and knows how to plant a
leftover temp object of a given writer pid (what a writer killed mid-commit leaves). A new
backend (e.g. issue 16's s3 on a moto server) appends one entry to :data:`BACKENDS`.
"""

from __future__ import annotations

import os
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional

import pytest

from ckpt.storage import Storage, open_storage


@dataclass
class Backend:
    name: str
    #: (tmp_path) -> a URL or path of a fresh empty folder location
    location: Callable[[Any], str]
    #: (storage, final key, pid) -> plants the temp object such a writer would leave
    plant_temp: Callable[[Storage, str, int], None]
    #: (storage, prefix) -> every object name under ``prefix`` as stored, temps included
    raw_names: Callable[[Storage, str], list[str]]
    #: whether another OS process sees the same objects (lock and crash tests across processes)
    shared_between_processes: bool = True
    needs: Optional[str] = None  # a module the backend imports (skip when missing)
    #: how to open it (defaults to open_storage(location))
    open: Optional[Callable[[str], Storage]] = None

    def make(self, tmp_path: Any) -> Storage:
        if self.needs:
            pytest.importorskip(self.needs)
        location = self.location(tmp_path)
        return self.open(location) if self.open is not None else open_storage(location)


def _local_temp(storage: Storage, key: str, pid: int) -> None:
    path = storage.local_path(key)
    assert path is not None
    directory, name = os.path.split(path)
    with open(os.path.join(directory, f".{name}.{pid}.{secrets.token_hex(4)}.tmp"), "wb") as f:
        f.write(b"half a checkpoint")


def _local_raw(storage: Storage, prefix: str) -> list[str]:
    path = storage.local_path(prefix)
    assert path is not None
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def _fsspec_temp(storage: Storage, key: str, pid: int) -> None:
    from ckpt.storage import fsspec as backend

    head, _, name = key.rpartition("/")
    temp = f".{name}.{backend._HOST}-{pid}.{secrets.token_hex(4)}.tmp"
    fs = storage.fs  # type: ignore[attr-defined]
    with fs.open(storage.path(f"{head}/{temp}" if head else temp), "wb") as f:  # type: ignore[attr-defined]
        f.write(b"half a checkpoint")


def _fsspec_raw(storage: Storage, prefix: str) -> list[str]:
    fs = storage.fs  # type: ignore[attr-defined]
    try:
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(storage.path(prefix), detail=False))  # type: ignore[attr-defined]
    except FileNotFoundError:
        return []


def _fsspec_on_file(location: str) -> Storage:
    """fsspec's own LocalFileSystem (not ckpt's LocalStorage) on a real folder."""
    from ckpt.storage.fsspec import FsspecStorage

    return FsspecStorage(location)


BACKENDS = [
    Backend("local", lambda tmp: str(tmp / "store"), _local_temp, _local_raw),
    Backend("file-url", lambda tmp: (tmp / "store").as_uri(), _local_temp, _local_raw),
    Backend("memory", lambda tmp: f"memory://ckpt-test-{uuid.uuid4().hex}", _fsspec_temp, _fsspec_raw,
            shared_between_processes=False, needs="fsspec"),
    Backend("fsspec-file", lambda tmp: (tmp / "store").as_uri(), _fsspec_temp, _fsspec_raw, needs="fsspec",
            open=_fsspec_on_file),
]

#: The backends a URL reaches through open_storage (the manager-level tests use these locations).
URL_BACKENDS = [b for b in BACKENDS if b.name in ("file-url", "memory")]
