"""The manager's naming and listing: where checkpoint ``idx`` lives, which ones exist, the writer lock.

Everything here goes through the manager's :class:`~ckpt.storage.Storage` (a local folder or an
fsspec URL), rooted at ``<logdir>/<DIR_NAME>``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from typing import Any, Iterator, Optional

from .. import _snapshot, deps as _deps, retention as _ret
from ..errors import CheckpointNotFoundError, LockedError, SaveError
from ..storage import ObjectInfo, Storage

log = logging.getLogger("ckpt")


def format_regex(file_format: str) -> re.Pattern[str]:
    """The pattern of the file names ``FILE_FORMAT`` gives (one integer field, e.g. ``%010d.npz``)."""
    m = re.search(r"%0?\d*d", file_format)
    if m is None or file_format.count("%") != 1:
        raise ValueError(f"FILE_FORMAT {file_format!r} must contain exactly one integer field like %010d")
    return re.compile("^" + re.escape(file_format[:m.start()]) + r"(\d+)" + re.escape(file_format[m.end():]) + "$")


def check_idx(idx: Any) -> int:
    """``idx`` as a checkpoint index (an integer >= 0, not a bool)."""
    if isinstance(idx, bool) or not hasattr(idx, "__index__"):
        raise TypeError(f"checkpoint index must be an integer, not {type(idx).__name__}")
    value = int(idx.__index__())
    if value < 0:
        raise ValueError(f"checkpoint index must be >= 0, not {value}")
    return value


class Naming:
    """Names, listing and the lock of one checkpoint directory (the base of the manager's concerns)."""

    DIR_NAME: str = "ckpt"
    FILE_FORMAT: str = "%010d.npz"
    LOCK_NAME: str = ".ckpt.lock"

    # Set by Checkpoint.__init__; declared here for the concerns built on top.
    logdir: str
    verbose: bool
    verify: bool
    deps: _deps.DepsMode
    lock_timeout: Optional[float]
    retention: _ret.RetentionPolicy
    _root: Storage
    _dir_cache: Optional[tuple[str, Storage]]
    _pattern: re.Pattern[str]
    _meta_lock: threading.Lock
    _last_read: Optional[int]
    _snapshot_buffers: _snapshot.SnapshotBuffers

    @property
    def storage(self) -> Storage:
        """The storage of the checkpoint directory ``<logdir>/<DIR_NAME>`` (local folder or fsspec URL)."""
        cached = self._dir_cache
        if cached is None or cached[0] != self.DIR_NAME:
            cached = self._dir_cache = (self.DIR_NAME, self._root.child(self.DIR_NAME))
        return cached[1]

    @property
    def directory(self) -> str:
        """The checkpoint directory as a path or URL (``<logdir>/ckpt``)."""
        return self.storage.url

    def key(self, idx: int) -> str:
        """The storage key (file name) of checkpoint ``idx``."""
        return self.FILE_FORMAT % check_idx(idx)

    def path(self, idx: int) -> str:
        """Where checkpoint ``idx`` lives, as a path or URL (whether or not it exists)."""
        return self.storage.label(self.key(idx))

    def _listing(self) -> dict[int, ObjectInfo]:
        """Committed checkpoints by index (one listing: temp files never count)."""
        out = {}
        for info in self.storage.list():
            m = self._pattern.match(info.key)
            # Only the exact name path() gives: '7.npz' or '00000000007.npz' would be listed as 7,
            # but restore would open '0000000007.npz' and rotation would count a file it cannot remove.
            if m and info.key == self.FILE_FORMAT % int(m.group(1)):
                out[int(m.group(1))] = info
        return dict(sorted(out.items()))

    def indices(self) -> list[int]:
        """Indices of committed checkpoints, ascending (temp files never count)."""
        return list(self._listing())

    def latest(self) -> Optional[int]:
        """The largest committed index, or None when there is no checkpoint."""
        idx = self.indices()
        return idx[-1] if idx else None

    def _resolve(self, idx: Optional[int]) -> Optional[int]:
        """``idx`` checked to exist (CheckpointNotFoundError naming the file), or the latest."""
        if idx is not None:
            idx = check_idx(idx)
            if self.storage.stat(self.key(idx)) is None:
                have = self.indices()
                raise CheckpointNotFoundError(
                    f"no checkpoint {idx} in {self.directory} (have: {have[-10:] if have else 'none'})",
                    file=self.path(idx))
            return idx
        return self.latest()

    def _log(self, msg: str, *args: Any) -> None:
        log.log(logging.INFO if self.verbose else logging.DEBUG, msg, *args)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """The directory's writer lock (locally an OS lock: a writer killed with SIGKILL releases it).

        A timeout raises :class:`~ckpt.errors.LockedError`; a lock that cannot be taken at all
        :class:`~ckpt.errors.SaveError`.
        """
        lock_file = self.storage.label(self.LOCK_NAME)
        try:
            held = self.storage.lock(self.LOCK_NAME, timeout=self.lock_timeout)
            held.__enter__()
        except LockedError:
            raise LockedError(
                f"{self.directory}: another process is saving to this checkpoint directory (lock held for more "
                f"than {self.lock_timeout} s); pass lock_timeout=None to wait for it",
                file=self.directory) from None
        except OSError as e:  # a read-only file system, an unwritable lock file, a directory in its place
            cause = e.__cause__ if isinstance(e.__cause__, OSError) else e
            raise SaveError(
                f"{self.directory}: cannot take the writer lock {lock_file}: {cause.strerror or cause} (a read-only "
                "file system or an unwritable lock file?); nothing was written or deleted", errno=cause.errno,
                file=lock_file) from e
        try:
            yield
        finally:
            held.__exit__(None, None, None)

    def _clean_stale_temps(self) -> None:
        """Remove temp files left by writers that are gone (killed mid-save)."""
        self.storage.cleanup("", self._pattern.match)
