"""Local POSIX storage: the durability protocol ckpt has always used, behind the storage seam.

Committing one object: create a temp file beside the target (same directory, so the rename
cannot cross filesystems) named ``.<name>.<pid>.<random>.tmp``, write, flush, fsync it,
``os.replace`` it over the target (``os.link`` for an exclusive commit, which refuses an
existing target), fsync the directory. A failure at any step removes the temp file and leaves
the target as it was; a killed writer's temp is skipped by listings and removed by
:meth:`LocalStorage.cleanup` once its pid is gone.

*Atomic commit* here means the rename: a reader sees the old object or the whole new one, and
after :meth:`commit` returns the object survives a power loss. *Exclusion* is ``filelock``:
an OS lock that the kernel releases when its holder dies, even by SIGKILL. Not guaranteed:
exclusion between machines on a network filesystem whose locks are not coherent (NFS without
lockd), and durability where the disk lies about fsync.

Every primitive goes through :data:`ckpt._io.ops`, so tests can record or fail each one.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import logging
import os
import re
import secrets
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Optional, TypeVar

from ..errors import LockedError, StorageError
from .base import ObjectInfo, Storage

log = logging.getLogger("ckpt")
T = TypeVar("T")

TEMP_SUFFIX = ".tmp"
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")

__all__ = ["LocalStorage", "atomic_write", "makedirs", "remove", "remove_stale_temps", "parse_temp_name",
           "temp_path_for", "pid_alive", "check_key"]


def _ops() -> Any:
    """The current :data:`ckpt._io.ops` (looked up per call: tests replace it)."""
    from .. import _io

    return _io.ops


def check_key(key: str) -> list[str]:
    """The parts of a storage key; ValueError for an absolute key, ``..``, or an empty part."""
    if not isinstance(key, str):
        raise TypeError(f"a storage key is a str, not {type(key).__name__}")
    if key == "":
        return []
    parts = key.split("/")
    if key.startswith("/") or "\\" in key or "\0" in key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"storage key {key!r} must be a relative '/'-separated name without '.', '..' or empty parts")
    return parts


def temp_path_for(path: str) -> str:
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def parse_temp_name(name: str) -> Optional[tuple[str, int]]:
    """(target name, writer pid) of a temp file name made by :func:`temp_path_for`, else None."""
    m = _TEMP_RE.match(name)
    return (m.group("target"), int(m.group("pid"))) if m else None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a temp file's writer that is gone left it behind)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError as e:
        return e.errno != errno.ESRCH
    return True


def atomic_write(path: str, write: Callable[[BinaryIO], T], *, exclusive: bool = False) -> T:
    """Write ``path`` all-or-nothing through ``write(f)``; returns what ``write`` returned.

    With ``exclusive`` an existing ``path`` is never replaced (FileExistsError, nothing changed).
    """
    ops = _ops()
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    tmp = temp_path_for(path)
    f = ops.open_temp(tmp)
    try:
        try:
            result = write(f)
            f.flush()
            ops.fsync(f)
        finally:
            f.close()
        if exclusive:
            ops.link(tmp, path)
            ops.unlink(tmp)
        else:
            ops.replace(tmp, path)
    except BaseException:
        try:
            ops.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError as e:  # keep the original error; the stale temp is ignored by readers
            log.warning("could not remove temp file %s: %s", tmp, e)
        raise
    ops.fsync_dir(directory)
    return result


def makedirs(path: str) -> None:
    """Create ``path`` and any missing parents, fsyncing each new entry's parent directory.

    Without those fsyncs a power loss can drop a freshly created directory, and the
    first checkpoint inside it with it, after its save has returned.
    """
    path = os.path.abspath(path)
    missing = []
    current = path
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
        _ops().fsync_dir(os.path.dirname(directory))


def remove(path: str) -> None:
    """Delete a committed file and make the deletion durable."""
    _ops().unlink(path)
    _ops().fsync_dir(os.path.dirname(os.path.abspath(path)))


def remove_stale_temps(directory: str, target: Any) -> None:
    """Remove temp files in ``directory`` left by writers that are gone (killed mid-write), for the
    final name ``target`` (or every final name the predicate ``target`` accepts)."""
    matches = target if callable(target) else target.__eq__
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        parsed = parse_temp_name(name)
        if parsed is None or not matches(parsed[0]) or parsed[1] == os.getpid() or pid_alive(parsed[1]):
            continue
        try:
            _ops().unlink(os.path.join(directory, name))
            log.info("removed stale temp file %s left by process %d", name, parsed[1])
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not remove stale temp file %s: %s", name, e)


def _token(st: os.stat_result) -> str:
    return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"


class LocalStorage(Storage):
    """A folder of the local filesystem (see the module docstring for what it guarantees)."""

    def __init__(self, root: Any, url: Optional[str] = None):
        self.root = os.path.abspath(os.fspath(root))
        self.url = url if url is not None else os.fspath(root)

    def path(self, key: str) -> str:
        """The OS path of ``key`` (which need not exist)."""
        return os.path.join(self.root, *check_key(key))

    def label(self, key: str) -> str:
        """``key`` as the user would name it, for messages."""
        return os.path.join(self.url, *check_key(key)) if key else self.url

    def _object(self, key: str) -> str:
        """The OS path of the object ``key`` (ValueError for the root itself)."""
        if key == "":
            raise ValueError(f"{self.url}: an object key must not be empty (that names the folder itself)")
        return self.path(key)

    def local_path(self, key: str) -> Optional[str]:
        return self.path(key)

    def open_read(self, key: str) -> BinaryIO:
        return open(self._object(key), "rb")

    def stat(self, key: str) -> Optional[ObjectInfo]:
        try:
            st = os.stat(self._object(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not _is_regular(st):
            return None
        return ObjectInfo(key, st.st_size, st.st_mtime_ns, _token(st))

    def isdir(self, prefix: str = "") -> bool:
        return os.path.isdir(self.path(prefix))

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        directory = self.path(prefix)
        lead = prefix + "/" if prefix else ""
        for _attempt in range(10):
            try:
                before = os.stat(directory).st_mtime_ns
                # One directory read; a rename and a deletion during it may both be missed, so an
                # empty result from a directory that changed meanwhile is read again.
                with os.scandir(directory) as it:
                    entries = list(it)
                changed = os.stat(directory).st_mtime_ns != before
            except (FileNotFoundError, NotADirectoryError):
                return []
            out = []
            for e in entries:
                if parse_temp_name(e.name) is not None:
                    continue
                try:
                    if not e.is_file(follow_symlinks=True):
                        continue
                    st = e.stat()
                except FileNotFoundError:
                    continue  # removed (rotated away) while we looked
                out.append(ObjectInfo(lead + e.name, st.st_size, st.st_mtime_ns, _token(st)))
            if out or not changed:
                return out
        return out

    def list_dirs(self, prefix: str = "") -> "builtins.list[str]":
        lead = prefix + "/" if prefix else ""
        try:
            with os.scandir(self.path(prefix)) as it:
                return [lead + e.name for e in it if e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def commit(self, key: str, write: Callable[[BinaryIO], T], *, exclusive: bool = False) -> T:
        return atomic_write(self._object(key), write, exclusive=exclusive)

    def delete(self, keys: Iterable[str]) -> None:
        directories = set()
        for key in keys:
            path = self._object(key)
            try:
                _ops().unlink(path)
            except FileNotFoundError:
                continue
            directories.add(os.path.dirname(path))
        for directory in sorted(directories):
            _ops().fsync_dir(directory)

    def makedirs(self, prefix: str = "") -> None:
        makedirs(self.path(prefix))

    @contextlib.contextmanager
    def lock(self, key: str, timeout: Optional[float] = None) -> Iterator[None]:
        import filelock  # imported here so that `import ckpt` needs numpy alone

        path = self.path(key)
        lock = filelock.FileLock(path, timeout=-1 if timeout is None else timeout)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise LockedError(f"{self.label(key)}: held by another writer for more than {timeout} s",
                              file=self.label(key)) from None
        except OSError as e:  # a read-only file system, an unwritable lock file, a directory in its place
            raise StorageError(f"{self.label(key)}: cannot take the writer lock: {e.strerror or e}",
                               file=self.label(key)) from e
        try:
            yield
        finally:
            lock.release()

    def cleanup(self, prefix: str, target: Callable[[str], Any]) -> None:
        remove_stale_temps(self.path(prefix), target)

    def child(self, prefix: str) -> "LocalStorage":
        return LocalStorage(self.path(prefix), url=self.label(prefix))

    def __repr__(self) -> str:
        return f"LocalStorage({self.url!r})"


def _is_regular(st: os.stat_result) -> bool:
    import stat as _stat

    return _stat.S_ISREG(st.st_mode)
