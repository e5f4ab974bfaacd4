"""The Checkpoint manager: numbered, atomic, rotated checkpoint files in ``<logdir>/ckpt``.

Compatible with ``objax.io.Checkpoint`` (same directory, names and
``save``/``restore`` contract) and fixes its rotation: steps are compared as
integers (so 10**10 sorts after 9999999999), the file just written is never
deleted, and temp files are never listed, restored or counted.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import logging
import os
import re
import threading
import time
import warnings
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, TypeVar

from . import _codec, _io, _snapshot, collections as _coll, deps as _deps, retention as _ret, serializers as _ser
from . import aliases as _aliases, recipes as _recipes
from ._packfile import DEFAULT_SLOT
from .errors import (
    CheckpointNotFoundError,
    CkptError,
    CorruptCheckpointWarning,
    FormatError,
    LockedError,
    SaveError,
    SlotNotFoundError,
    UnknownMetricError,
)
from .metrics import metrics_of
from .pack import check_slot_name
from .varfile import PreparedRestore, encode_slots, open_reader, prepare_restore, write_encoded

log = logging.getLogger("ckpt")

__all__ = ["Checkpoint"]

T = TypeVar("T")

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

    Retention policies compose: a checkpoint is kept if any policy keeps it.
    ``keep_ckpts`` keeps the latest k (None turns it off), ``keep_every=N`` keeps
    indices divisible by N forever, ``keep_best=k`` keeps the k best by
    ``metric`` (``mode`` "min" or "max", values given to ``save(metrics=...)``;
    NaN, infinite or missing values are never best), ``max_bytes`` keeps the
    newest files whose total size fits. The newest checkpoint, the newest one that
    verifies and the file just written are never deleted; damaged files are never
    counted or deleted (see :meth:`plan_prune`); with every policy off, nothing is.
    Policies are recomputed from the files on disk (metrics live in each manifest),
    so they survive restarts.

    ``lock_timeout`` bounds how long ``save`` waits for another writer holding the
    directory's lock (None waits forever; a timeout raises :class:`~ckpt.errors.LockedError`). A lock
    that cannot be taken at all (read-only file system, unwritable lock file) raises
    :class:`~ckpt.errors.SaveError`.
    """

    DIR_NAME: str = "ckpt"
    FILE_MATCH: str = "*.npz"
    FILE_FORMAT: str = "%010d.npz"
    LOCK_NAME: str = ".ckpt.lock"

    def __init__(self, logdir: str, keep_ckpts: Optional[int] = 5, makedir: bool = True, verbose: bool = True, *,
                 keep_every: Optional[int] = None, keep_best: Optional[int] = None, metric: Optional[str] = None,
                 mode: str = "min", max_bytes: Optional[int] = None,
                 deps: str = "warn", verify: bool = True, lock_timeout: Optional[float] = None,
                 async_save: bool = False, compression: Any = None):
        if keep_ckpts is not None and (isinstance(keep_ckpts, bool) or not isinstance(keep_ckpts, int)
                                       or keep_ckpts < 1):
            raise ValueError(f"keep_ckpts must be an integer >= 1 (the newest checkpoint is always kept), "
                             f"or None to turn the keep-latest policy off, not {keep_ckpts!r}")
        self.retention = _ret.RetentionPolicy(keep_last=keep_ckpts, keep_every=keep_every, keep_best=keep_best,
                                              metric=metric, mode=mode, max_bytes=max_bytes)
        self._meta_cache: dict[str, tuple[tuple[int, int, int], dict[str, Any], Optional[str]]] = {}
        self._verified_cache: dict[str, tuple[int, int, int]] = {}
        self._warned_damaged: dict[str, str] = {}
        self._meta_lock = threading.Lock()
        self.logdir = os.fspath(logdir)
        self.keep_ckpts = keep_ckpts
        self.verbose = verbose
        self.deps = _deps.check_mode(deps)
        self.verify = verify
        self.lock_timeout = lock_timeout
        self.async_save = async_save
        self.compression = compression
        _codec.Compression.parse(compression)  # refuse an unknown codec now, not at the first save
        self._executor: Optional[ThreadPoolExecutor] = None
        self._pending: Optional[Future[None]] = None
        self._pending_idx: Optional[int] = None
        self._last_read: Optional[int] = None  # what load_extras() reads by default; reset by save()
        # Background saves copy writable numpy arrays into these, reused from one save to the next.
        self._snapshot_buffers = _snapshot.SnapshotBuffers()
        self._pattern = _format_regex(self.FILE_FORMAT)
        if makedir:
            try:
                _io.makedirs(self.directory)
            except OSError as e:
                raise SaveError(f"cannot create the checkpoint directory {self.directory}: {e.strerror or e} (pass "
                                "makedir=False to only read checkpoints)", errno=e.errno, file=self.directory) from e

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
        for _attempt in range(10):
            try:
                before = os.stat(self.directory).st_mtime_ns
                # One directory read: the file type comes with each entry (no second look that a
                # concurrent rotation could invalidate).
                with os.scandir(self.directory) as it:
                    entries = [(e.name, e.is_file()) for e in it]
                changed = os.stat(self.directory).st_mtime_ns != before
            except FileNotFoundError:
                return []
            out = []
            for name, is_file in entries:
                m = self._pattern.match(name)
                # Only the exact name path() gives: '7.npz' or '00000000007.npz' would be listed as 7,
                # but restore would open '0000000007.npz' and rotation would count a file it cannot remove.
                if m and is_file and name == self.FILE_FORMAT % int(m.group(1)):
                    out.append(int(m.group(1)))
            # A rename and a deletion during the read may both be missed; read again if it changed.
            if out or not changed:
                break
        return sorted(set(out))

    def latest(self) -> Optional[int]:
        """The largest committed index, or None when there is no checkpoint."""
        idx = self.indices()
        return idx[-1] if idx else None

    def _log(self, msg: str, *args: Any) -> None:
        log.log(logging.INFO if self.verbose else logging.DEBUG, msg, *args)

    # -- saving ------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """The directory's writer lock (an OS lock: a writer killed with SIGKILL releases it)."""
        import filelock  # imported here so that `import ckpt` needs numpy alone

        path = os.path.join(self.directory, self.LOCK_NAME)
        lock = filelock.FileLock(path, timeout=-1 if self.lock_timeout is None else self.lock_timeout)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise LockedError(
                f"{self.directory}: another process is saving to this checkpoint directory (lock held for more "
                f"than {self.lock_timeout} s); pass lock_timeout=None to wait for it",
                file=self.directory) from None
        except OSError as e:  # a read-only file system, an unwritable lock file, a directory in its place
            raise SaveError(
                f"{self.directory}: cannot take the writer lock {path}: {e.strerror or e} (a read-only file system "
                "or an unwritable lock file?); nothing was written or deleted", errno=e.errno, file=path) from e
        try:
            yield
        finally:
            lock.release()

    def _clean_stale_temps(self) -> None:
        """Remove temp files left by writers that are gone (killed mid-save)."""
        _io.remove_stale_temps(self.directory, self._pattern.match)

    def save(self, vc: Any, idx: int, *, extras: Optional[Mapping[str, Any]] = None,
             metadata: Optional[Mapping[str, Any]] = None, metrics: Optional[Mapping[str, Any]] = None,
             module: Any = None, block: Optional[bool] = None, compression: Any = "default",
             recipe: Any = None) -> str:
        """Write checkpoint ``idx`` atomically, then rotate old ones; returns its path.

        With ``async_save=True`` on the manager (or ``block=False`` here) it returns
        once a consistent snapshot is taken (JAX arrays are immutable and kept by
        reference; numpy arrays, read-only views too, are copied) and writes in a background
        thread; :meth:`wait` blocks until it is durable, and a background error is
        raised by the next ``save``, ``wait`` or ``close``. The copies go into
        buffers the manager keeps from one background save to the next (one copy of
        the model's numpy arrays, freed by :meth:`close`), so from the
        second save on the copy runs at memory speed instead of faulting in fresh pages.

        ``extras`` are more slots in the same file (optimizer state, RNG keys,
        metrics, config, ...), each stored by type as arrays, JSON, raw or pickle.
        ``module`` (e.g. the whole objax network) is pickled into the ``module``
        slot with its arrays stored once, shared with ``vc``'s; read it back with
        :meth:`load_module`. ``compression`` overrides the manager's setting for this
        save ("zstd", "lz4", (codec, level) or None).

        ``metrics`` (name -> number, e.g. ``{"val_loss": 0.31}``) are recorded in
        the manifest as ``metadata["ckpt"]["metrics"]``, where ``keep_best`` and
        :meth:`best` read them back, also after a restart (without them, an extras
        slot named ``metrics`` counts: see :mod:`ckpt.metrics`). The ``"ckpt"``
        metadata key is the library's own.

        ``recipe`` (a :class:`~ckpt.Recipe`, or a ``@ckpt.recorded`` object) records how
        the model was built, as ``metadata["ckpt"]["recipe"]``: ``ckpt.find`` selects by
        it and ``ckpt.build`` rebuilds from it.
        """
        idx = _check_idx(idx)
        self._last_read = None
        metadata = self._manifest_metadata(idx, metadata, metrics)
        if recipe is not None:
            metadata["ckpt"]["recipe"] = _recipes.recipe_of(recipe).to_dict()
        wanted = self.retention.metric
        if metrics is not None and self.retention.keep_best is not None and wanted not in metrics:
            log.warning("checkpoint %d: metrics %s have no %r, so keep_best cannot rank it", idx, sorted(metrics),
                        wanted)
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
        snap = self._snapshot_buffers.snapshot() if background else None
        try:
            encoded = encode_slots(slots, serializers, snapshot=background,
                                   compression=self.compression if compression == "default" else compression,
                                   buffers=snap)
        except BaseException:
            if snap is not None:
                snap.done()
            raise
        path = self.path(idx)
        if snap is None:
            self._commit(idx, path, encoded, metadata)
            return path
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-save")
            _live_managers.add(self)
        self._pending = self._executor.submit(self._commit_snapshot, snap, idx, path, encoded, metadata)
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

    def _commit_snapshot(self, snap: _snapshot.Snapshot, idx: int, path: str, encoded: Mapping[str, Any],
                         metadata: Optional[Mapping[str, Any]]) -> None:
        """A background commit; its snapshot's buffers become reusable once it is over."""
        try:
            self._commit(idx, path, encoded, metadata)
        finally:
            snap.done()

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
        """Wait for background saves (raising their error), then stop the save thread and free its buffers."""
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
                _live_managers.discard(self)
            self._snapshot_buffers.release()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _rotate(self, just_written: Optional[int], *, dry_run: bool = False, strict_metric: bool = False,
                protected: Iterable[int] = ()) -> list[int]:
        """Delete what no retention policy keeps; returns the indices deleted (or, with ``dry_run``, to delete).

        Runs under the lock, after the new file's rename and directory fsync, so a
        checkpoint is only deleted once its successor is durable. See :meth:`plan_prune`
        for what is never deleted.
        """
        plan = self.plan_prune(just_written, strict_metric=strict_metric, protected=protected)
        if just_written is not None and plan.entries and just_written not in plan.kept_by_policy:
            log.warning("checkpoint %d is older than the newest in %s and no retention policy keeps it; it is kept "
                        "anyway as the file just written, so %d files remain", just_written, self.directory,
                        len(plan.keep))
        removed = []
        for idx in plan.delete:
            if dry_run:
                removed.append(idx)
                continue
            path = self.path(idx)
            try:
                _io.remove(path)
                self._log("removed old checkpoint %s", path)
            except FileNotFoundError:
                pass
            except OSError as err:  # the new checkpoint is durable: the save succeeded; retry at the next one
                log.warning("could not remove old checkpoint %s (kept; retried at the next save): %s", path, err)
                continue
            removed.append(idx)
            with self._meta_lock:
                self._meta_cache.pop(path, None)
        return removed

    def plan_prune(self, just_written: Optional[int] = None, *, strict_metric: bool = True,
                   protected: Iterable[int] = ()) -> _ret.Plan:
        """What retention would keep and delete now, and which files it skips as damaged (nothing is deleted).

        - A file that does not open as a checkpoint (zip directory, manifest, a ``main``
          arrays slot whose ``.npy`` headers parse: a structural check, cached per file,
          that reads a few KiB per array and no array data) is *damaged*: it is never
          counted by any policy and never deleted (left for a person to inspect), and a
          warning names it.
        - The newest checkpoint that verifies (structure and every hash) is never deleted.
          Its hash pass is paid only when something would be deleted and the newest
          candidate is not the file this process just wrote (whose hashes were computed
          as it was written); a result is cached per file (size, mtime, inode). A
          candidate that fails its hashes is damaged too.
        - ``protected`` indices (and ``just_written``) are always kept.
        - ``keep_best`` with a metric that no checkpoint records raises
          :class:`~ckpt.errors.UnknownMetricError` with ``strict_metric`` (``prune()``,
          ``ckpt prune``); in a save's rotation it deletes nothing and warns instead. A
          metric missing from some checkpoints is a warning.
        """
        policy = self.retention
        protected = set(protected) | self._protected_indices()
        entries, damaged = self._scan()
        plan = _ret.Plan(entries=entries, damaged=damaged)
        if not policy.active or not entries:
            plan.keep = plan.kept_by_policy = {e.idx for e in entries}
            return self._report(plan)
        if policy.keep_best is not None and policy.metric is not None:
            lacking = [e.idx for e in entries if not isinstance(e.metrics, Mapping) or policy.metric not in e.metrics]
            if len(lacking) == len(entries):
                recorded = sorted({k for e in entries if isinstance(e.metrics, Mapping) for k in e.metrics})
                message = (f"{self.directory}: no checkpoint records the metric {policy.metric!r} (recorded: "
                           f"{', '.join(recorded) or 'none'}); nothing was deleted")
                if strict_metric:
                    raise UnknownMetricError(message, file=self.directory, metric=policy.metric, recorded=recorded)
                log.warning("%s", message)
                plan.keep = plan.kept_by_policy = {e.idx for e in entries}
                return self._report(plan)
            if lacking:
                plan.missing_metric = lacking
                # prune() says so; a save's rotation already warned about its own file in save()
                log.log(logging.WARNING if strict_metric else logging.DEBUG,
                        "checkpoints %s in %s do not record the metric %r; keep_best cannot rank them",
                        lacking, self.directory, policy.metric)
        while True:
            newest = plan.entries[-1].idx if plan.entries else None
            plan.kept_by = _ret.kept_by(plan.entries, policy)
            plan.kept_by_policy = _ret.select(plan.entries, policy, newest, protected=protected)
            plan.keep = _ret.select(plan.entries, policy, newest, just_written, protected=protected)
            if not [e for e in plan.entries if e.idx not in plan.keep]:
                break
            verified = self._newest_verified(plan, just_written)
            if verified is None or verified in plan.entries_by_idx():  # no damage found on the way: plan holds
                plan.newest_verified = verified
                if verified is not None:
                    plan.keep.add(verified)
                break
        plan.delete = [e.idx for e in plan.entries if e.idx not in plan.keep]
        return self._report(plan)

    def _protected_indices(self) -> set[int]:
        """Indices no retention ever deletes: the aliased ones (all of them while the alias table is unreadable)."""
        return _aliases.protected_indices(self.directory, self.indices())

    def _newest_verified(self, plan: _ret.Plan, just_written: Optional[int]) -> Optional[int]:
        """The newest entry that passes every hash; entries that fail move to ``plan.damaged``."""
        for e in reversed(list(plan.entries)):
            if e.idx == just_written:
                return e.idx
            path = self.path(e.idx)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            key = (st.st_size, st.st_mtime_ns, st.st_ino)
            try:
                with self._meta_lock:
                    ok = self._verified_cache.get(path) == key
                if not ok:
                    with open_reader(path) as reader:
                        _check_main(reader, headers=True)
                        for slot in reader.slots:
                            reader.verify_slot(slot)
                    with self._meta_lock:
                        self._verified_cache[path] = key
                return e.idx
            except FileNotFoundError:
                continue
            except (CkptError, OSError) as err:
                why = _one_line(err, path)
                plan.damaged[e.idx] = why
                plan.entries = [x for x in plan.entries if x.idx != e.idx]
                with self._meta_lock:
                    self._meta_cache[path] = (key, {}, why)  # damaged until the file changes
                return -1  # not an index: the entries changed, so the policies select again
        return None

    def _report(self, plan: _ret.Plan) -> _ret.Plan:
        for idx, why in sorted(plan.damaged.items()):
            path = self.path(idx)
            with self._meta_lock:
                if self._warned_damaged.get(path) == why:
                    continue
                self._warned_damaged[path] = why
            log.warning("retention skipped damaged checkpoint %s (%s): it is neither counted nor deleted; inspect "
                        "or remove it yourself", path, why)
        return plan

    def prune(self, dry_run: bool = False, *, protected: Iterable[int] = ()) -> list[int]:
        """Apply the retention policies now; returns the indices removed (or, with ``dry_run``, that would be).

        Useful after changing the policies of an existing run, or for a lower index
        kept only because it was just written. The newest checkpoint that verifies is
        always kept; damaged files are skipped (logged, never counted or deleted); a
        ``keep_best`` metric that no checkpoint records raises
        :class:`~ckpt.errors.UnknownMetricError` and deletes nothing.
        """
        self._finish_pending(raise_error=False)  # see our own in-flight save; its error stays for save/wait
        if not os.path.isdir(self.directory):
            return []
        if dry_run:
            return self._rotate(None, dry_run=True, strict_metric=True, protected=protected)
        with self._lock():
            return self._rotate(None, strict_metric=True, protected=protected)

    def best(self, metric: Optional[str] = None, mode: Optional[str] = None) -> Optional[tuple[int, dict[str, Any]]]:
        """``(idx, metrics)`` of the best checkpoint on disk by ``metric`` (default: the manager's), or None.

        A checkpoint's metrics are those of :func:`ckpt.metrics.metrics_of`: ``save(metrics=)``, else
        an extras slot named ``metrics`` (the same rule ``keep_best`` and ``ckpt ls`` use).

        NaN, infinite, missing and non-numeric values are never best; among equal
        values the newer checkpoint wins.
        """
        metric = metric if metric is not None else self.retention.metric
        if metric is None:
            raise ValueError("best() needs a metric: pass best(metric=...) or Checkpoint(..., metric=...)")
        mode = mode if mode is not None else self.retention.mode
        self._finish_pending(raise_error=False)
        found = _ret.best(self._scan()[0], metric, mode)
        return None if found is None else (found.idx, dict(found.metrics))

    def metadata(self, idx: Optional[int] = None) -> dict[str, Any]:
        """The manifest metadata of checkpoint ``idx``; ``["ckpt"]["metrics"]`` holds its metrics.

        Without ``idx``: the checkpoint last restored or loaded (as :meth:`load_extras`),
        else the newest whose structure is intact (zip directory, manifest, a ``main`` arrays
        slot whose ``.npy`` headers parse). Reads only those, not the array data (a bad hash is not
        noticed here; restore and load notice it).
        """
        def read(resolved: int) -> dict[str, Any]:
            with open_reader(self.path(resolved)) as reader:
                _check_main(reader, headers=True)
                return dict(reader.metadata)

        return self._on_checkpoint(idx, read, default_restored=True)[1]

    @staticmethod
    def _manifest_metadata(idx: int, metadata: Optional[Mapping[str, Any]],
                           metrics: Optional[Mapping[str, Any]]) -> dict[str, Any]:
        """User metadata plus the library's ``"ckpt"`` record (index, metrics)."""
        out = copy.deepcopy(dict(metadata or {}))  # a background save writes what save() was given
        if "ckpt" in out:
            raise ValueError('metadata key "ckpt" is reserved for the checkpoint\'s index and metrics; use '
                             "save(..., metrics={...}) for metrics, or another key")
        record: dict[str, Any] = {"idx": idx}
        if metrics is not None:
            record["metrics"] = copy.deepcopy(_ret.normalize_metrics(metrics))
        out["ckpt"] = record
        return out

    def _inspect(self, path: str, st: os.stat_result) -> tuple[dict[str, Any], Optional[str]]:
        """A file's metrics (:func:`ckpt.metrics.metrics_of`) and None, or ``({}, why)`` when it does not
        open as a checkpoint.

        Cached by (size, mtime, inode), so rotation re-reads only files that changed.
        """
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        with self._meta_lock:
            cached = self._meta_cache.get(path)
        if cached is not None and cached[0] == key:
            return dict(cached[1]), cached[2]
        problem: Optional[str] = None
        meta: dict[str, Any] = {}
        try:
            with open_reader(path) as reader:
                _check_main(reader, headers=True)
                meta = metrics_of(reader)
        except FileNotFoundError:
            raise
        except (CkptError, OSError) as e:
            problem = _one_line(e, path)
        with self._meta_lock:
            self._meta_cache[path] = (key, meta, problem)
        return dict(meta), problem

    def _scan(self) -> tuple[list[_ret.Entry], dict[int, str]]:
        """The committed checkpoints that open (index, size, metrics), ascending, and the damaged ones (why)."""
        out = []
        damaged: dict[int, str] = {}
        for idx in self.indices():
            path = self.path(idx)
            try:
                st = os.stat(path)
                metrics, problem = self._inspect(path, st)
            except FileNotFoundError:
                continue  # removed by a concurrent writer's rotation
            if problem is not None:
                damaged[idx] = problem
                continue
            out.append(_ret.Entry(idx, st.st_size, metrics))
        return out, damaged

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
        if not _coll.restores_in_place(vc):
            raise TypeError(
                f"restore() updates its target in place, and a {type(vc).__name__} pytree cannot be updated in "
                "place: use tree = ck.load(idx, template=tree) (or a jax.eval_shape template) instead")
        extras = extras if extras is not None else {}

        def restore_one(resolved: int) -> str:
            return self._restore_one(resolved, vc, extras, renamer=renamer, strict=strict, trusted=trusted)

        found = self._on_checkpoint(idx, restore_one, default_restored=False, missing_ok=True)
        if found is None:
            self._log("no checkpoint in %s; nothing restored", self.directory)
            return 0, ""
        return found

    def _on_checkpoint(self, idx: Optional[int], read: Callable[[int], T], *, default_restored: bool,
                       missing_ok: bool = False) -> Any:
        """``(idx, read(idx))`` for checkpoint ``idx``, or the newest intact one: every load path's fallback.

        Without ``idx``, a damaged newest checkpoint (anything the reader reports as a
        :class:`~ckpt.errors.FormatError`: truncated, bad hash, not a zip, no ``main``
        arrays slot, broken ``.npy`` header, ...) is skipped with a
        :class:`~ckpt.errors.CorruptCheckpointWarning` and the next older one is read.
        ``default_restored``: without ``idx``, read the checkpoint this manager last
        restored or loaded, if any since its last save (extras come from the weights' step).
        With no checkpoint at all: None if ``missing_ok``, else CheckpointNotFoundError.
        """
        if idx is None and default_restored and self._last_read is not None:
            idx = self._last_read
        if idx is not None:
            resolved = self._resolve(idx)
            if resolved is None:  # _resolve raises for a missing idx; this only narrows the type
                raise CheckpointNotFoundError(f"no checkpoint {idx} in {self.directory}", file=self.directory)
            result = read(resolved)
            self._last_read = resolved
            return resolved, result
        tried: dict[int, str] = {}
        damaged: list[tuple[int, FormatError]] = []
        while True:
            # Re-list each time: a concurrent writer may have added or rotated files meanwhile.
            candidates = [i for i in self.indices() if i not in tried]
            if damaged and (candidates or len(tried) > 1):  # falling back past it: say so
                for i, e in damaged:
                    warnings.warn(f"skipping damaged checkpoint {self.path(i)}: {e}", CorruptCheckpointWarning,
                                  stacklevel=3)
                damaged = []
            if not candidates:
                if len(tried) == 1 and damaged:  # the only checkpoint: its own error, nothing skipped
                    raise damaged[0][1]
                if tried:
                    raise FormatError(f"{self.directory}: every checkpoint is damaged, nothing was read: "
                                      + "; ".join(f"{i}: {why}" for i, why in sorted(tried.items())),
                                      file=self.directory)
                if missing_ok:
                    return None
                raise CheckpointNotFoundError(f"no checkpoint in {self.directory}", file=self.directory)
            newest = candidates[-1]
            try:
                result = read(newest)
            except FileNotFoundError:
                tried[newest] = "removed while being read"
                continue  # rotated away between listing and opening
            except FormatError as e:
                tried[newest] = str(e)
                damaged.append((newest, e))
                continue
            self._last_read = newest
            return newest, result

    def _restore_one(self, resolved: int, vc: Any, extras: dict[str, Any], *, renamer: _coll.Renamer,
                     strict: bool, trusted: _ser.Trusted) -> str:
        path = self.path(resolved)
        self._log("restoring from %s", path)
        with open_reader(path) as reader:
            _check_main(reader)
            names = [DEFAULT_SLOT, *extras]
            try:
                for n in names:
                    reader.slot(n)
            except SlotNotFoundError:
                _check_main(reader, headers=True)  # a damaged file is skipped as damaged, not "no slot"
                raise
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
        if not strict and any(prepared.report.values()):
            log.warning("restored %s partially; skipped %s", path, prepared.report)
        for name, p in staged.items():
            extras[name] = p.commit()
        extras.update(loaded)
        return path

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

    def load(self, idx: Optional[int] = None, template: Any = None, *, strict: bool = True,
             cast: bool = False) -> Any:
        """The variables of checkpoint ``idx`` (or the latest), for JAX pytrees and other immutable state.

        Without ``template``: numpy arrays, as a nested dict for a saved pytree
        (``{"params": {"Dense_0": {"kernel": ...}}}``) or a flat {name: array} dict
        for a saved objax VarCollection or dict. With ``template`` (a pytree of
        arrays, or of ``jax.ShapeDtypeStruct`` from ``jax.eval_shape``, possibly
        with shardings): a tree of the template's structure, each array placed
        where the template's leaf says; non-array leaves are kept from the
        template. ``strict=False`` restores the intersection and returns
        ``(tree, skipped)``; ``cast=True`` converts dtypes that differ.
        """
        self._finish_pending(raise_error=False)

        def read(resolved: int) -> Any:
            with open_reader(self.path(resolved)) as reader:
                _check_main(reader)
                _deps.report(reader.dependency_mismatches([DEFAULT_SLOT]), self.deps, reader.label)
                if template is None:
                    return reader.arrays(DEFAULT_SLOT, verify=self.verify).as_value()
                prepared = prepare_restore(reader, DEFAULT_SLOT, template, strict=strict, verify=self.verify,
                                           cast=cast)
            restored = prepared.commit()
            return restored if strict else (restored, prepared.report)

        return self._on_checkpoint(idx, read, default_restored=False)[1]

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
        """The extra slots of checkpoint ``idx``: all of them, or ``names``.

        Without ``idx``: the checkpoint this manager last restored or loaded (since its
        last save), so weights and extras always come from the same step; otherwise the
        newest intact one, skipping damaged files as :meth:`restore` does (so the weights'
        hashes are checked too, which costs a read of them).
        """
        self._finish_pending(raise_error=False)

        def read(resolved: int) -> dict[str, Any]:
            with open_reader(self.path(resolved)) as reader:
                if idx is None and self._last_read is None:
                    # Choosing the newest intact checkpoint as restore() would: its weights are checked
                    # too (a hash pass over them), so extras never come from a step restore() skips.
                    _check_main(reader, headers=True)
                    if self.verify:
                        reader.verify_slot(DEFAULT_SLOT)
                wanted = list(names) if names is not None else [s for s in reader.slots if s not in RESERVED_SLOTS]
                for n in wanted:
                    reader.slot(n)
                _deps.report(reader.dependency_mismatches(wanted), self.deps, reader.label)
                return {n: reader.load(n, trusted=trusted, verify=self.verify) for n in wanted}

        return self._on_checkpoint(idx, read, default_restored=True)[1]

    # -- aliases -------------------------------------------------------------
    def alias(self, name: str, idx: Optional[int]) -> None:
        """Point alias ``name`` (e.g. ``"best"``) at checkpoint ``idx``, durably; ``idx=None`` removes it.

        One checkpoint per alias (setting it again moves it); retention never
        deletes an aliased checkpoint. Resolve with ``ckpt.find(..., alias=)``,
        ``ckpt.build(..., alias=)`` or :meth:`aliases`.
        """
        _aliases.set_alias(self, name, None if idx is None else _check_idx(idx))

    def aliases(self) -> dict[str, int]:
        """Alias name -> checkpoint index."""
        return _aliases.read(self.directory)

    def __repr__(self) -> str:
        p = self.retention
        extra = "".join(f", {k}={v!r}" for k, v in (("keep_every", p.keep_every), ("keep_best", p.keep_best),
                                                       ("metric", p.metric), ("max_bytes", p.max_bytes))
                        if v is not None)
        if p.keep_best is not None:
            extra += f", mode={p.mode!r}"
        return f"Checkpoint({self.logdir!r}, keep_ckpts={self.keep_ckpts}{extra})"


def _one_line(e: BaseException, path: str = "") -> str:
    """An error as one line, without the file name the caller shows already."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text[len(path) + 2:] if path and text.startswith(path + ": ") else text


def _check_main(reader: Any, *, headers: bool = False) -> None:
    """A checkpoint holds a ``main`` arrays slot (with ``headers``, whose ``.npy`` headers parse:
    a small read per array); else it is damaged."""
    info = reader.slots.get(DEFAULT_SLOT)
    if info is None:
        have = ", ".join(sorted(reader.slots)) or "none"
        raise FormatError(f"{reader.label}: not a checkpoint: no {DEFAULT_SLOT!r} arrays slot (slots: {have})",
                          file=reader.label, slot=DEFAULT_SLOT)
    if info.serializer != "arrays":
        raise FormatError(f"{reader.label}: not a checkpoint: slot {DEFAULT_SLOT!r} holds {info.serializer} data, "
                          "not arrays", file=reader.label, slot=DEFAULT_SLOT)
    if headers:
        view = reader.arrays(DEFAULT_SLOT, verify=False)
        for name in view.names:  # every array's header parses (hashes are not read)
            view.header(name)


#: Managers with a save thread, so that interpreter exit can finish their saves.
_live_managers: "weakref.WeakSet[Checkpoint]" = weakref.WeakSet()


def _finish_at_exit() -> None:
    """Finish in-flight background saves before the interpreter shuts its thread pools down.

    Registered with ``threading._register_atexit`` (after ``concurrent.futures`` registered its own
    hook, so this runs first): from there on, thread pools refuse new work, and a save still running
    would fail. A save that fails here is reported on stderr and the process exits with status 1,
    so a script never ends "successfully" without its last checkpoint.
    """
    failed = []
    for manager in list(_live_managers):
        pending = manager._pending
        if pending is None:
            continue
        error = pending.exception()
        if error is not None:
            log.error("background save of checkpoint %s in %s failed: %s", manager._pending_idx,
                      manager.directory, error, exc_info=error)
            failed.append(f"ckpt: background save of checkpoint {manager._pending_idx} in {manager.directory} "
                          f"failed at exit: {error}")
    if failed:
        import sys

        for line in failed:
            print(line, file=sys.stderr)  # the process is ending: stderr is the only place left
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def _register_exit_hook() -> None:
    import concurrent.futures.thread  # noqa: F401 - its exit hook must be registered before ours

    register = getattr(threading, "_register_atexit", None)
    try:
        if register is None:
            raise RuntimeError("no threading._register_atexit")
        register(_finish_at_exit)
    except RuntimeError:  # an older Python, or imported during shutdown: the plain atexit hook
        atexit.register(_finish_at_exit)


_register_exit_hook()
