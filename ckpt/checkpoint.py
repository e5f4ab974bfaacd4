"""The Checkpoint manager: numbered, atomic, rotated checkpoint files in ``<logdir>/ckpt``.

Compatible with ``objax.io.Checkpoint`` (same directory, names and
``save``/``restore`` contract) and fixes its rotation: steps are compared as
integers (so 10**10 sorts after 9999999999), the file just written is never
deleted, and temp files are never listed, restored or counted.
"""

from __future__ import annotations

import atexit
import errno as _errno
import logging
import os
import re
import time
import warnings
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Mapping, Optional

from . import _io, collections as _coll, deps as _deps, serializers as _ser
from ._packfile import DEFAULT_SLOT
from .errors import (
    CheckpointNotFoundError,
    ChecksumError,
    CkptError,
    CorruptCheckpointWarning,
    FormatError,
    LockedError,
    SaveError,
)
from .pack import check_slot_name
from .varfile import PreparedRestore, encode_slots, open_reader, prepare_restore, write_encoded

log = logging.getLogger("ckpt")

__all__ = ["Checkpoint"]

#: Slot names the manager uses itself; extras cannot take them.
RESERVED_SLOTS = frozenset({DEFAULT_SLOT, "module"})


def _format_regex(file_format: str) -> re.Pattern[str]:
    m = re.search(r"%0?\d*d", file_format)
    if m is None or file_format.count("%") != 1:
        raise ValueError(f"FILE_FORMAT {file_format!r} must contain exactly one integer field like %010d")
    return re.compile("^" + re.escape(file_format[:m.start()]) + r"(\d+)" + re.escape(file_format[m.end():]) + "$")


def _check_idx(idx: Any) -> int:
    if isinstance(idx, bool) or not hasattr(idx, "__index__"):
        raise TypeError(f"checkpoint index must be an integer, not {type(idx).__name__}")
    value = int(idx.__index__())
    if value < 0:
        raise ValueError(f"checkpoint index must be >= 0, not {value}")
    return value


class Checkpoint:
    """Save and restore numbered checkpoints, keeping the latest ``keep_ckpts``.

    >>> ck = Checkpoint("runs/exp1", keep_ckpts=3)          # doctest: +SKIP
    >>> ck.save(net.vars(), idx=1000)                         # doctest: +SKIP
    'runs/exp1/ckpt/0000001000.npz'
    >>> idx, path = ck.restore(net.vars())                    # doctest: +SKIP

    ``lock_timeout`` bounds how long ``save`` waits for another writer holding the
    directory's lock (None waits forever; a timeout raises ``filelock.Timeout``).
    """

    DIR_NAME: str = "ckpt"
    FILE_MATCH: str = "*.npz"
    FILE_FORMAT: str = "%010d.npz"
    LOCK_NAME: str = ".ckpt.lock"

    def __init__(self, logdir: str, keep_ckpts: int = 5, makedir: bool = True, verbose: bool = True, *,
                 deps: str = "warn", verify: bool = True, lock_timeout: Optional[float] = None,
                 async_save: bool = False):
        if isinstance(keep_ckpts, bool) or not isinstance(keep_ckpts, int) or keep_ckpts < 1:
            raise ValueError(f"keep_ckpts must be an integer >= 1 (the newest checkpoint is always kept), "
                             f"not {keep_ckpts!r}")
        self.logdir = os.fspath(logdir)
        self.keep_ckpts = keep_ckpts
        self.verbose = verbose
        self.deps = _deps.check_mode(deps)
        self.verify = verify
        self.lock_timeout = lock_timeout
        self.async_save = async_save
        self._executor: Optional[ThreadPoolExecutor] = None
        self._pending: Optional[Future[None]] = None
        self._pending_idx: Optional[int] = None
        self._pattern = _format_regex(self.FILE_FORMAT)
        if makedir:
            os.makedirs(self.directory, exist_ok=True)

    # -- naming and listing ------------------------------------------------
    @property
    def directory(self) -> str:
        return os.path.join(self.logdir, self.DIR_NAME)

    def path(self, idx: int) -> str:
        """Where checkpoint ``idx`` lives (whether or not it exists)."""
        return os.path.join(self.directory, self.FILE_FORMAT % _check_idx(idx))

    @staticmethod
    def checkpoint_idx(filename: str) -> int:
        """The index in a checkpoint file name (objax's helper)."""
        return int(os.path.basename(filename).split(".")[0])

    def indices(self) -> list[int]:
        """Indices of committed checkpoints, ascending (temp files never count)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            m = self._pattern.match(name)
            if m and os.path.isfile(os.path.join(self.directory, name)):
                out.append(int(m.group(1)))
        return sorted(set(out))

    def latest(self) -> Optional[int]:
        """The largest committed index, or None when there is no checkpoint."""
        idx = self.indices()
        return idx[-1] if idx else None

    def _log(self, msg: str, *args: Any) -> None:
        log.log(logging.INFO if self.verbose else logging.DEBUG, msg, *args)

    # -- saving ------------------------------------------------------------
    def _lock(self) -> Any:
        """The directory's writer lock (an OS lock: a writer killed with SIGKILL releases it)."""
        import filelock  # imported here so that `import ckpt` needs numpy alone

        lock = filelock.FileLock(os.path.join(self.directory, self.LOCK_NAME),
                                 timeout=-1 if self.lock_timeout is None else self.lock_timeout)
        directory = self.directory
        timeout = self.lock_timeout

        class _Held:
            def __enter__(self) -> None:
                try:
                    lock.acquire()
                except filelock.Timeout:
                    raise LockedError(
                        f"{directory}: another process is saving to this checkpoint directory (lock held for more "
                        f"than {timeout} s); pass lock_timeout=None to wait for it",
                        file=directory) from None

            def __exit__(self, *exc: Any) -> None:
                lock.release()

        return _Held()

    def _clean_stale_temps(self) -> None:
        """Remove temp files left by writers that are gone (killed mid-save)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        for name in names:
            parsed = _io.parse_temp_name(name)
            if parsed is None or not self._pattern.match(parsed[0]):
                continue
            pid = parsed[1]
            if pid == os.getpid() or _pid_alive(pid):
                continue
            try:
                _io.ops.unlink(os.path.join(self.directory, name))
                log.info("removed stale temp file %s left by process %d", name, pid)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("could not remove stale temp file %s: %s", name, e)

    def save(self, vc: Any, idx: int, *, extras: Optional[Mapping[str, Any]] = None,
             metadata: Optional[Mapping[str, Any]] = None, module: Any = None, block: Optional[bool] = None) -> str:
        """Write checkpoint ``idx`` atomically, then rotate old ones; returns its path.

        With ``async_save=True`` on the manager (or ``block=False`` here) it returns
        once a consistent snapshot is taken (JAX arrays are immutable and kept by
        reference; writable numpy arrays are copied) and writes in a background
        thread; :meth:`wait` blocks until it is durable, and a background error is
        raised by the next ``save``, ``wait`` or ``close``.

        ``extras`` are more slots in the same file (optimizer state, RNG keys,
        metrics, config, ...), each stored by type as arrays, JSON, raw or pickle.
        ``module`` (e.g. the whole objax network) is pickled into the ``module``
        slot with its arrays stored once, shared with ``vc``'s; read it back with
        :meth:`load_module`.
        """
        idx = _check_idx(idx)
        if _coll.flatten(vc) is None:
            raise TypeError(f"cannot checkpoint a {type(vc).__name__}: expected an objax VarCollection, a dict "
                            "of arrays or a pytree of arrays (use extras= for other values)")
        slots: dict[str, Any] = {DEFAULT_SLOT: vc}
        for name, value in (extras or {}).items():
            check_slot_name(name)
            if name in RESERVED_SLOTS:
                raise ValueError(f"extras cannot use the reserved slot name {name!r}")
            slots[name] = value
        serializers = {DEFAULT_SLOT: "arrays"}
        if module is not None:
            slots["module"] = module
            serializers["module"] = "pickle"
        if not os.path.isdir(self.directory):
            raise FileNotFoundError(f"checkpoint directory {self.directory} does not exist (makedir=False)")
        background = self.async_save if block is None else not block
        self._finish_pending(raise_error=True)  # one snapshot in flight at most; surfaces earlier errors
        encoded = encode_slots(slots, serializers, snapshot=background)
        path = self.path(idx)
        if not background:
            self._commit(idx, path, encoded, metadata)
            return path
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-save")
            _live_managers.add(self)
        self._pending = self._executor.submit(self._commit, idx, path, encoded, metadata)
        self._pending_idx = idx
        return path

    def _commit(self, idx: int, path: str, encoded: Mapping[str, Any], metadata: Optional[Mapping[str, Any]]) -> None:
        """Write, fsync, rename, then rotate: under the directory lock, in the caller's or the save thread."""
        with self._lock():
            self._clean_stale_temps()
            try:
                write_encoded(path, encoded, metadata=metadata)
            except CkptError:
                raise
            except OSError as e:
                raise SaveError(
                    f"could not write checkpoint {idx} to {path}: {e.strerror or e}; the earlier checkpoints are "
                    "intact", errno=e.errno, file=path) from e
            self._log("saved checkpoint %s", path)
            self._rotate(idx)

    def _finish_pending(self, *, raise_error: bool) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        error = pending.exception()
        if error is None:
            return
        if raise_error:
            raise error
        self._pending = pending  # keep it for the next save/wait/close to raise

    def wait(self) -> None:
        """Block until every background save is durable; raise the error of one that failed."""
        self._finish_pending(raise_error=True)

    def close(self) -> None:
        """Wait for background saves (raising their error), then stop the save thread."""
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
                _live_managers.discard(self)

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _rotate(self, just_written: int) -> None:
        """Delete all but the newest ``keep_ckpts`` (by step), never the file just written."""
        idx = self.indices()
        keep = set(idx[-self.keep_ckpts:]) | {just_written}
        if just_written not in idx[-self.keep_ckpts:]:
            log.warning("checkpoint %d is older than the %d newest in %s; it is kept anyway, so %d files remain",
                        just_written, self.keep_ckpts, self.directory, len(keep))
        for old in idx:
            if old not in keep:
                path = self.path(old)
                try:
                    _io.remove(path)
                    self._log("removed old checkpoint %s", path)
                except FileNotFoundError:
                    pass

    # -- restoring ---------------------------------------------------------
    def _resolve(self, idx: Optional[int]) -> Optional[int]:
        if idx is not None:
            idx = _check_idx(idx)
            if not os.path.isfile(self.path(idx)):
                have = self.indices()
                raise CheckpointNotFoundError(
                    f"no checkpoint {idx} in {self.directory} (have: {have[-10:] if have else 'none'})",
                    file=self.path(idx))
            return idx
        return self.latest()

    def restore(self, vc: Any, idx: Optional[int] = None, *, extras: Optional[dict[str, Any]] = None,
                renamer: _coll.Renamer = None, strict: bool = True, trusted: _ser.Trusted = False
                ) -> tuple[int, str]:
        """Restore ``vc`` (and ``extras``) from checkpoint ``idx``, or the latest; returns ``(idx, path)``.

        With no checkpoint at all, returns ``(0, '')`` and leaves ``vc`` untouched.
        Without ``idx``, a newest checkpoint that fails verification (truncated,
        bad hash) is skipped with a :class:`~ckpt.errors.CorruptCheckpointWarning`
        and the previous intact one is restored; ``restore(idx=N)`` of a damaged
        file raises.
        ``extras`` maps slot names to targets: a collection of arrays is restored in
        place (an immutable pytree is replaced by the restored one), and any other
        entry (e.g. None) is replaced by the stored value. Everything is read and
        verified before anything is assigned.
        """
        self._finish_pending(raise_error=False)  # see our own in-flight save; its error stays for save/wait
        extras = extras if extras is not None else {}
        if idx is not None:
            resolved = self._resolve(idx)
            return self._restore_one(resolved, vc, extras, renamer=renamer, strict=strict, trusted=trusted)
        tried: set[int] = set()
        while True:
            # Re-list each time: a concurrent writer may have added or rotated files meanwhile.
            candidates = [i for i in self.indices() if i not in tried]
            if not candidates:
                if tried:
                    raise FormatError(f"{self.directory}: every checkpoint ({sorted(tried)}) is damaged; "
                                      "nothing was restored", file=self.directory)
                self._log("no checkpoint in %s; nothing restored", self.directory)
                return 0, ""
            newest = candidates[-1]
            tried.add(newest)
            try:
                return self._restore_one(newest, vc, extras, renamer=renamer, strict=strict, trusted=trusted)
            except FileNotFoundError:
                continue  # rotated away between listing and opening
            except (ChecksumError, FormatError) as e:
                warnings.warn(f"skipping damaged checkpoint {self.path(newest)}: {e}", CorruptCheckpointWarning,
                              stacklevel=2)

    def _restore_one(self, resolved: int, vc: Any, extras: dict[str, Any], *, renamer: _coll.Renamer,
                     strict: bool, trusted: _ser.Trusted) -> tuple[int, str]:
        path = self.path(resolved)
        self._log("restoring from %s", path)
        with open_reader(path) as reader:
            names = [DEFAULT_SLOT, *extras]
            for n in names:
                reader.slot(n)
            _deps.report(reader.dependency_mismatches(names), self.deps, path)
            prepared = prepare_restore(reader, DEFAULT_SLOT, vc, renamer=renamer, strict=strict, verify=self.verify)
            loaded: dict[str, Any] = {}
            staged: dict[str, PreparedRestore] = {}
            for name, target in extras.items():
                if reader.slot(name).serializer == "arrays" and target is not None and _coll.flatten(target):
                    staged[name] = prepare_restore(reader, name, target, strict=strict, verify=self.verify)
                else:
                    loaded[name] = reader.load(name, trusted=trusted, verify=self.verify)
        prepared.commit()
        for name, p in staged.items():
            extras[name] = p.commit()
        extras.update(loaded)
        return resolved, path

    def wait_for_new(self, after: Optional[int] = None, timeout: Optional[float] = None,
                     poll_interval: float = 0.1) -> Optional[int]:
        """Block until a checkpoint newer than ``after`` is committed; return its index.

        Returns the smallest committed index greater than ``after`` (any index when
        ``after`` is None), or None if ``timeout`` seconds pass first. Lets an
        evaluation process follow a trainer.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            newer = [i for i in self.indices() if after is None or i > after]
            if newer:
                return newer[0]
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(poll_interval if deadline is None else max(0.0, min(poll_interval, deadline - time.monotonic())))

    def load(self, idx: Optional[int] = None) -> dict[str, Any]:
        """The stored arrays of checkpoint ``idx`` (or the latest) as {name: numpy array}."""
        resolved = self._resolve(idx)
        if resolved is None:
            raise CheckpointNotFoundError(f"no checkpoint in {self.directory}", file=self.directory)
        with open_reader(self.path(resolved)) as reader:
            _deps.report(reader.dependency_mismatches([DEFAULT_SLOT]), self.deps, reader.label)
            view = reader.arrays(DEFAULT_SLOT, verify=self.verify)
            return {n: view.read(n) for n in view.names}

    def load_module(self, idx: Optional[int] = None, *, trusted: _ser.Trusted = False) -> Any:
        """The module saved with ``save(..., module=...)`` in checkpoint ``idx`` (or the latest).

        Unpickling runs code chosen by whoever wrote the file, so it is refused
        (:class:`~ckpt.errors.UntrustedPickleError`, listing the globals it would
        import) unless ``trusted=True`` or ``trusted`` is an allow-list such as
        ``["objax.*", "mypkg.models.*"]``.
        """
        return self.load_extras(idx, names=["module"], trusted=trusted)["module"]

    def load_extras(self, idx: Optional[int] = None, names: Optional[list[str]] = None,
                    trusted: _ser.Trusted = False) -> dict[str, Any]:
        """The extra slots of checkpoint ``idx`` (or the latest): all of them, or ``names``."""
        resolved = self._resolve(idx)
        if resolved is None:
            raise CheckpointNotFoundError(f"no checkpoint in {self.directory}", file=self.directory)
        with open_reader(self.path(resolved)) as reader:
            wanted = list(names) if names is not None else [s for s in reader.slots if s not in RESERVED_SLOTS]
            for n in wanted:
                reader.slot(n)
            _deps.report(reader.dependency_mismatches(wanted), self.deps, reader.label)
            return {n: reader.load(n, trusted=trusted, verify=self.verify) for n in wanted}

    def __repr__(self) -> str:
        return f"Checkpoint({self.logdir!r}, keep_ckpts={self.keep_ckpts})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError as e:
        return e.errno != _errno.ESRCH
    return True


#: Managers with a save thread, so that interpreter exit can finish their saves.
_live_managers: "weakref.WeakSet[Checkpoint]" = weakref.WeakSet()


@atexit.register
def _finish_at_exit() -> None:
    """Let in-flight background saves finish at interpreter exit; log (never swallow) their errors."""
    for manager in list(_live_managers):
        pending = manager._pending
        if pending is None:
            continue
        error = pending.exception()
        if error is not None:
            log.error("background save of checkpoint %s in %s failed: %s", manager._pending_idx,
                      manager.directory, error, exc_info=error)
