"""The manager's retention: which checkpoints the policies keep, pruning, ``best``, and the metadata cache.

Policies are recomputed from the files in storage (metrics live in each manifest), so they
survive restarts. Each file's manifest is read once per version of it: the cache is keyed by
the storage's :attr:`~ckpt.storage.ObjectInfo.token`, which changes whenever the file is replaced.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Optional

from .. import aliases as _aliases, retention as _ret
from ..errors import CkptError, UnknownMetricError
from ..storage import ObjectInfo
from .restoring import Restoring, _check_main, _one_line

log = logging.getLogger("ckpt")


class Pruning(Restoring):
    """Rotation after a save, ``plan_prune``/``prune`` and ``best``."""

    _meta_cache: dict[str, tuple[str, dict[str, Any], Optional[str]]]
    _verified_cache: dict[str, str]
    _warned_damaged: dict[str, str]

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
                self.storage.delete([self.key(idx)])
                self._log("removed old checkpoint %s", path)
            except FileNotFoundError:
                pass
            except OSError as err:  # the new checkpoint is durable: the save succeeded; retry at the next one
                log.warning("could not remove old checkpoint %s (kept; retried at the next save): %s", path, err)
                continue
            removed.append(idx)
            with self._meta_lock:
                self._meta_cache.pop(self.key(idx), None)
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
          as it was written); a result is cached per file version (its storage token). A
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
        return _aliases.protected_indices(self.storage, self.indices())

    def _newest_verified(self, plan: _ret.Plan, just_written: Optional[int]) -> Optional[int]:
        """The newest entry that passes every hash; entries that fail move to ``plan.damaged``."""
        for e in reversed(list(plan.entries)):
            if e.idx == just_written or self._custom_format:
                return e.idx
            path, name = self.path(e.idx), self.key(e.idx)
            info = self.storage.stat(name)
            if info is None:
                continue
            key = info.token
            try:
                with self._meta_lock:
                    ok = self._verified_cache.get(name) == key
                if not ok:
                    with self._open(e.idx) as reader:
                        _check_main(reader, headers=True)
                        for slot in reader.slots:
                            reader.verify_slot(slot)
                    with self._meta_lock:
                        self._verified_cache[name] = key
                return e.idx
            except FileNotFoundError:
                continue
            except (CkptError, OSError) as err:
                why = _one_line(err, path)
                plan.damaged[e.idx] = why
                plan.entries = [x for x in plan.entries if x.idx != e.idx]
                with self._meta_lock:
                    self._meta_cache[name] = (key, {}, why)  # damaged until the file changes
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
        if not self.storage.isdir():
            return []
        if dry_run:
            return self._rotate(None, dry_run=True, strict_metric=True, protected=protected)
        with self._lock():
            return self._rotate(None, strict_metric=True, protected=protected)

    def best(self, metric: Optional[str] = None, mode: Optional[str] = None) -> Optional[tuple[int, dict[str, Any]]]:
        """``(idx, metrics)`` of the best checkpoint in storage by ``metric`` (default: the manager's), or None.

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


    def _inspect(self, idx: int, info: ObjectInfo) -> tuple[dict[str, Any], Optional[str]]:
        """A file's manifest metadata and None, or ``({}, why)`` when it does not open as a checkpoint.

        Cached by the storage's token, so rotation re-reads only files that changed.
        """
        key, path = info.token, self.path(idx)
        if self._custom_format:
            return {}, None  # a SAVE_FN file need not be a pack: counted, never inspected
        with self._meta_lock:
            cached = self._meta_cache.get(info.key)
        if cached is not None and cached[0] == key:
            return dict(cached[1]), cached[2]
        problem: Optional[str] = None
        meta: dict[str, Any] = {}
        try:
            with self._open(idx) as reader:
                _check_main(reader, headers=True)
                meta = dict(reader.metadata)
        except FileNotFoundError:
            raise
        except (CkptError, OSError) as e:
            problem = _one_line(e, path)
        with self._meta_lock:
            self._meta_cache[info.key] = (key, meta, problem)
        return dict(meta), problem

    def _scan(self) -> tuple[list[_ret.Entry], dict[int, str]]:
        """The committed checkpoints that open (index, size, metrics), ascending, and the damaged ones (why)."""
        out = []
        damaged: dict[int, str] = {}
        for idx, info in self._listing().items():
            try:
                meta, problem = self._inspect(idx, info)
            except FileNotFoundError:
                continue  # removed by a concurrent writer's rotation
            if problem is not None:
                damaged[idx] = problem
                continue
            record = meta.get("ckpt")
            stored = record.get("metrics") if isinstance(record, dict) else None
            out.append(_ret.Entry(idx, info.size, stored if isinstance(stored, dict) else {}))
        return out, damaged

