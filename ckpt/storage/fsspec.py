"""Storage on any fsspec filesystem (``memory://``, ``file://`` through fsspec, ``gs://``, ...).

*Atomic commit*: the object is written to a temp key beside the target
(``.<name>.<host>-<pid>.<random>.tmp``, skipped by listings), then moved onto the target. On
``memory://`` the move is a dict update under a process-wide lock, so it is exact (readers see
the old or the whole new object; an exclusive commit checks and moves under the same lock). On a
local filesystem through fsspec the move is a rename (atomic, but without ckpt's fsyncs: use a
plain path for durability). On object stores a move is copy + delete: a reader never sees a
partial target, but an exclusive commit is a check then a move, not atomic against another
machine; hold :meth:`FsspecStorage.lock` (the manager does) when that matters.

*Exclusion*: a lock object at the lock key holding ``{"owner", "expires"}``. It is created with
an exclusive commit, refreshed by a thread while held, and taken over once expired (its holder
died) or, on the same host, once its holder's pid is gone. Not guaranteed: exclusion on stores
whose exclusive create is not atomic across machines, or when clocks disagree by more than the
lease (``lock_ttl``, 60 s).

*Cleanup* removes temps of this host's dead pids, and any temp older than ``stale_after``
(a day) from other hosts.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Optional, TypeVar

from ..errors import LockedError, MissingDependencyError, StorageError
from .base import ObjectInfo, Storage
from .local import check_key, pid_alive

log = logging.getLogger("ckpt")
T = TypeVar("T")

_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")
_HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
_MEMORY_LOCK = threading.RLock()  # memory:// is process-wide: its moves and checks are exact under this
_MEMORY_GENERATION: dict[str, int] = {}  # path -> commits so far: memory:// times are too coarse for a token

__all__ = ["FsspecStorage", "import_fsspec"]

#: The package fsspec needs for common schemes (named in the error when it is missing).
_BACKEND_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
                     "abfss": "adlfs", "hf": "huggingface_hub", "sftp": "paramiko", "ssh": "paramiko"}


def import_fsspec(url: str) -> Any:
    """The fsspec module, or MissingDependencyError naming what to install for ``url``."""
    try:
        import fsspec
    except ImportError:
        raise MissingDependencyError(
            f"{url}: a URL location needs the fsspec package, which is not installed; pip install 'ckpt[fsspec]' "
            "(plus the fsspec backend for the scheme, e.g. gcsfs for gs://)", package="fsspec", extra="fsspec",
            file=url) from None
    return fsspec


def parse_temp_name(name: str) -> Optional[tuple[str, str, int]]:
    """(target name, host hash, pid) of an fsspec temp key's last part, else None."""
    m = _TEMP_RE.match(name)
    return (m.group("target"), m.group("host"), int(m.group("pid"))) if m else None


class FsspecStorage(Storage):
    """A folder-like prefix on an fsspec filesystem (see the module docstring for its guarantees)."""

    def __init__(self, url: str, storage_options: Optional[dict[str, Any]] = None, *, fs: Any = None,
                 root: Optional[str] = None, lock_ttl: float = 60.0, stale_after: float = 86400.0):
        scheme, sep, rest = url.partition("://")
        self.url = scheme + sep + rest.rstrip("/")  # "memory://" stays itself
        self.storage_options = dict(storage_options or {})
        if fs is None:
            fsspec = import_fsspec(url)
            try:
                fs, root = fsspec.core.url_to_fs(url, **self.storage_options)
            except ImportError as e:
                scheme = url.split("://", 1)[0].lower()
                package = _BACKEND_PACKAGES.get(scheme) or getattr(e, "name", None) or scheme
                raise MissingDependencyError(f"{url}: fsspec's {scheme}:// backend needs {package}, which is not "
                                             f"installed: pip install {package} ({e})", package=package,
                                             file=url) from None
            except (ValueError, OSError) as e:
                raise StorageError(f"{url}: cannot open this location: {e}", file=url) from e
        self.fs = fs
        self.root = str(root if root is not None else "").rstrip("/")
        self.lock_ttl = lock_ttl
        self.stale_after = stale_after
        self._made: set[str] = set()  # folders makedirs() made: object stores have none to look at
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self._exact = protocol == "memory"

    # -- naming ------------------------------------------------------------
    def path(self, key: str) -> str:
        parts = check_key(key)
        return "/".join([self.root, *parts]) if parts else self.root

    def _object(self, key: str) -> str:
        if key == "":
            raise ValueError(f"{self.url}: an object key must not be empty (that names the folder itself)")
        return self.path(key)

    def label(self, key: str) -> str:
        if not key:
            return self.url
        return f"{self.url}{key}" if self.url.endswith("://") else f"{self.url}/{key}"

    def _key_of(self, path: str) -> str:
        path = path.rstrip("/")
        root = self.root.lstrip("/")
        stripped = path.lstrip("/")
        return stripped[len(root):].lstrip("/") if stripped.startswith(root) else stripped

    def child(self, prefix: str) -> "FsspecStorage":
        child = FsspecStorage(self.label(prefix), self.storage_options, fs=self.fs, root=self.path(prefix),
                              lock_ttl=self.lock_ttl, stale_after=self.stale_after)
        return child

    # -- reading -----------------------------------------------------------
    def open_read(self, key: str) -> BinaryIO:
        path = self._object(key)
        try:
            if self.fs.isdir(path):
                raise IsADirectoryError(21, "Is a directory", self.label(key))
            return self.fs.open(path, "rb")  # type: ignore[no-any-return]
        except FileNotFoundError:
            raise FileNotFoundError(2, "No such file or directory", self.label(key)) from None

    def read_ranges(self, key: str, ranges: Any) -> list[bytes]:
        path = self._object(key)
        if not ranges:
            return []
        if hasattr(self.fs, "cat_ranges"):
            starts = [s for s, _ in ranges]
            ends = [s + n for s, n in ranges]
            return list(self.fs.cat_ranges([path] * len(ranges), starts, ends))
        return super().read_ranges(key, ranges)

    def _info(self, key: str, info: dict[str, Any]) -> ObjectInfo:
        size = int(info.get("size") or 0)
        mtime = _mtime_ns(info)
        etag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("ino")
        token = f"{etag}:{size}" if etag is not None else f"{mtime}:{size}"
        if self._exact:
            token += f":{_MEMORY_GENERATION.get(self.path(key), 0)}"
        return ObjectInfo(key, size, mtime, token)

    def stat(self, key: str) -> Optional[ObjectInfo]:
        try:
            info = self.fs.info(self._object(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if info.get("type") != "file":
            return None
        return self._info(key, info)

    def isdir(self, prefix: str = "") -> bool:
        try:
            return self.path(prefix) in self._made or bool(self.fs.isdir(self.path(prefix)))
        except FileNotFoundError:
            return False

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        lead = prefix + "/" if prefix else ""
        try:
            found = self.fs.ls(self.path(prefix), detail=True, refresh=True) if self._supports_refresh() \
                else self.fs.ls(self.path(prefix), detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for info in found:
            if info.get("type") != "file":
                continue
            name = info["name"].rstrip("/").rsplit("/", 1)[-1]
            if parse_temp_name(name) is not None:
                continue
            out.append(self._info(lead + name, info))
        return out

    def list_dirs(self, prefix: str = "") -> "builtins.list[str]":
        lead = prefix + "/" if prefix else ""
        try:
            found = self.fs.ls(self.path(prefix), detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [lead + info["name"].rstrip("/").rsplit("/", 1)[-1] for info in found if info.get("type") == "directory"]

    def _supports_refresh(self) -> bool:
        return not self._exact and self.fs.protocol not in ("file", "local", ("file", "local"))

    # -- writing -----------------------------------------------------------
    def _temp_key(self, key: str) -> str:
        head, _, name = key.rpartition("/")
        temp = f".{name}.{_HOST}-{os.getpid()}.{secrets.token_hex(4)}.tmp"
        return f"{head}/{temp}" if head else temp

    def commit(self, key: str, write: Callable[[BinaryIO], T], *, exclusive: bool = False) -> T:
        target = self._object(key)
        tmp = self.path(self._temp_key(key))
        try:
            with self.fs.open(tmp, "wb") as f:
                result = write(f)
            guard = _MEMORY_LOCK if self._exact else contextlib.nullcontext()
            with guard:
                if exclusive and self.fs.exists(target):
                    raise FileExistsError(17, "File exists", self.label(key))
                self.fs.mv(tmp, target)
                if self._exact:
                    _MEMORY_GENERATION[target] = _MEMORY_GENERATION.get(target, 0) + 1
        except BaseException:
            try:
                if self.fs.exists(tmp):
                    self.fs.rm(tmp)
            except OSError as e:  # keep the original error; listings skip the temp
                log.warning("could not remove temp object %s: %s", tmp, e)
            raise
        return result

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            try:
                self.fs.rm(self._object(key))
            except FileNotFoundError:
                pass

    def makedirs(self, prefix: str = "") -> None:
        self.fs.makedirs(self.path(prefix), exist_ok=True)
        self._made.add(self.path(prefix))

    @contextlib.contextmanager
    def lock(self, key: str, timeout: Optional[float] = None) -> Iterator[None]:
        owner = f"{_HOST}-{os.getpid()}-{threading.get_ident()}-{secrets.token_hex(4)}"
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.01
        while not self._try_lock(key, owner):
            if deadline is not None and time.monotonic() >= deadline:
                raise LockedError(f"{self.label(key)}: held by another writer for more than {timeout} s",
                                  file=self.label(key))
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(key, owner, stop), daemon=True,
                                name="ckpt-lock-lease")
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            with contextlib.suppress(FileNotFoundError):
                if self._read_lock(key).get("owner") == owner:
                    self.fs.rm(self.path(key))

    def _lease(self, owner: str) -> bytes:
        return json.dumps({"owner": owner, "expires": time.time() + self.lock_ttl}).encode()

    def _read_lock(self, key: str) -> dict[str, Any]:
        try:
            with self.fs.open(self.path(key), "rb") as f:
                doc = json.loads(f.read(4096).decode("utf-8"))
            return doc if isinstance(doc, dict) else {}
        except (ValueError, UnicodeDecodeError):
            return {}  # a torn or foreign lock object: treated as expired below

    def _try_lock(self, key: str, owner: str) -> bool:
        try:
            self.commit(key, functools.partial(_write_all, self._lease(owner)), exclusive=True)
            if self._exact:
                return True
            # Elsewhere the exclusive create is a check then a move: a writer that raced us may have
            # moved its lock over ours. Whoever reads back its own owner holds the lock.
            return self._read_lock(key).get("owner") == owner
        except FileExistsError:
            pass
        except FileNotFoundError:
            return False
        try:
            doc = self._read_lock(key)
            info = self.stat(key)
        except FileNotFoundError:
            return False  # released meanwhile: try again
        holder = str(doc.get("owner", ""))
        expires = doc.get("expires")
        if not isinstance(expires, (int, float)):  # torn or foreign: held until a lease has passed
            age = time.time() - (info.mtime_ns / 1e9 if info is not None and info.mtime_ns else 0.0)
            expires = time.time() + 1.0 if age < self.lock_ttl else 0.0
        gone = expires < time.time()
        host, _, rest = holder.partition("-")
        pid = rest.partition("-")[0]
        if not gone and host == _HOST and pid.isdigit() and not pid_alive(int(pid)):
            gone = True
        if gone:
            log.info("%s: taking over a lock whose holder is gone (%s)", self.label(key), holder or "unreadable")
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(self.path(key))
        return False

    def _heartbeat(self, key: str, owner: str, stop: threading.Event) -> None:
        while not stop.wait(self.lock_ttl / 3):
            try:
                if self._read_lock(key).get("owner") != owner:
                    log.warning("%s: the writer lock was taken over while held", self.label(key))
                    return
                self.commit(key, functools.partial(_write_all, self._lease(owner)))
            except OSError as e:
                log.warning("%s: could not refresh the writer lock: %s", self.label(key), e)

    def cleanup(self, prefix: str, target: Callable[[str], Any]) -> None:
        lead = prefix + "/" if prefix else ""
        try:
            found = self.fs.ls(self.path(prefix), detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return
        now = time.time()
        for info in found:
            name = info["name"].rstrip("/").rsplit("/", 1)[-1]
            parsed = parse_temp_name(name)
            if parsed is None or not target(parsed[0]):
                continue
            _, host, pid = parsed
            if host == _HOST:
                if pid == os.getpid() or pid_alive(pid):
                    continue
            elif now - _mtime_ns(info) / 1e9 < self.stale_after:
                continue  # another machine's writer may still be at it
            try:
                self.fs.rm(self.path(lead + name))
                log.info("removed stale temp object %s left by process %d", self.label(lead + name), pid)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("could not remove stale temp object %s: %s", self.label(lead + name), e)

    def __repr__(self) -> str:
        return f"FsspecStorage({self.url!r})"


def _write_all(data: bytes, f: BinaryIO) -> int:
    return f.write(data)


def _mtime_ns(info: dict[str, Any]) -> int:
    """An fsspec info dict's modification time in ns (0 when the backend gives none)."""
    for name in ("mtime", "LastModified", "updated", "created"):
        value = info.get(name)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return int(value.timestamp() * 1e9)
        if isinstance(value, (int, float)):
            return int(value * 1e9)
        if isinstance(value, str):
            try:
                from datetime import datetime

                return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1e9)
            except ValueError:
                continue
    return 0
