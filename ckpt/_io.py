"""The injection point for local file operations: every primitive the local backend performs.

The protocol itself (temp beside the target, fsync, rename, directory fsync, stale temps of
dead writers) lives in :mod:`ckpt.storage.local`; this module keeps the primitives it calls in
:data:`ops`, so tests can record or fail each operation by replacing ``ckpt._io.ops`` with a
:class:`FileOps` subclass. The old helper names are re-exported for callers that used them.
"""

from __future__ import annotations

import os
from typing import BinaryIO


class FileOps:
    """Primitive file operations; subclassed in tests to record or inject failures."""

    def open_temp(self, path: str) -> BinaryIO:
        return open(path, "xb")

    def fsync(self, f: BinaryIO) -> None:
        os.fsync(f.fileno())

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def link(self, src: str, dst: str) -> None:
        """Make ``dst`` name the file ``src`` (FileExistsError if ``dst`` exists): an exclusive commit."""
        os.link(src, dst)

    def fsync_dir(self, directory: str) -> None:
        fd = os.open(directory or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def unlink(self, path: str) -> None:
        os.unlink(path)


ops = FileOps()

from .storage.local import (  # noqa: E402 - the protocol uses `ops` above
    TEMP_SUFFIX,
    atomic_write,
    makedirs,
    parse_temp_name,
    pid_alive,
    remove,
    remove_stale_temps,
    temp_path_for,
)

__all__ = ["FileOps", "ops", "TEMP_SUFFIX", "atomic_write", "makedirs", "parse_temp_name", "pid_alive", "remove",
           "remove_stale_temps", "temp_path_for"]
