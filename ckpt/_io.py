"""The only place that writes to the filesystem: atomic replace-by-rename, and removal.

Protocol for one file: create a temp file beside the target (same directory,
so the rename cannot cross filesystems), write, flush, fsync the file,
``os.replace`` it over the target, fsync the directory. A failure at any step
removes the temp file and leaves the target as it was. Temp names start with a
dot and carry the writer's pid, so listings skip them and a later writer can
tell whether their owner is still alive.

All operations go through :data:`ops` so tests can record or fail them.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
from typing import Any, BinaryIO, Callable, TypeVar, Union

log = logging.getLogger("ckpt")
T = TypeVar("T")

TEMP_SUFFIX = ".tmp"
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


class FileOps:
    """Primitive file operations; subclassed in tests to record or inject failures."""

    def open_temp(self, path: str) -> BinaryIO:
        return open(path, "xb")

    def fsync(self, f: BinaryIO) -> None:
        os.fsync(f.fileno())

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def fsync_dir(self, directory: str) -> None:
        fd = os.open(directory or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def unlink(self, path: str) -> None:
        os.unlink(path)


ops = FileOps()


def temp_path_for(path: str) -> str:
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def parse_temp_name(name: str) -> tuple[str, int] | None:
    """(target name, writer pid) of a temp file name made by :func:`temp_path_for`, else None."""
    m = _TEMP_RE.match(name)
    return (m.group("target"), int(m.group("pid"))) if m else None


def atomic_write(path: str, write: Callable[[BinaryIO], T]) -> T:
    """Write ``path`` all-or-nothing through ``write(f)``; returns what ``write`` returned."""
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
        ops.fsync_dir(os.path.dirname(directory))


def remove(path: str) -> None:
    """Delete a committed file and make the deletion durable."""
    ops.unlink(path)
    ops.fsync_dir(os.path.dirname(os.path.abspath(path)))


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


def remove_stale_temps(directory: str, target: Union[str, Callable[[str], Any]]) -> None:
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
            ops.unlink(os.path.join(directory, name))
            log.info("removed stale temp file %s left by process %d", name, parsed[1])
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not remove stale temp file %s: %s", name, e)
