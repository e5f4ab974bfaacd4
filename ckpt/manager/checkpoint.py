"""The Checkpoint manager: numbered, atomic, rotated checkpoint files in ``<logdir>/ckpt``.

Compatible with ``objax.io.Checkpoint`` (same directory, names, ``save``/``restore`` contract and
``SAVE_FN``/``LOAD_FN`` hooks) and fixes its rotation: steps are compared as integers (so 10**10
sorts after 9999999999), the file just written is never deleted, and temp files are never listed,
restored or counted. The concerns live in sibling modules: naming and listing
(:mod:`.naming`), background saves (:mod:`.background`), restore/load with fallback
(:mod:`.restoring`), retention (:mod:`.pruning`) and saving (:mod:`.saving`); this class puts
them together.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Optional

from .. import _codec, _snapshot, aliases as _aliases, deps as _deps, retention as _ret
from ..errors import SaveError
from ..storage import Location, Storage, open_storage
from .naming import check_idx, format_regex
from .saving import Saving

log = logging.getLogger("ckpt")

__all__ = ["Checkpoint"]


class Checkpoint(Saving):
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
    Policies are recomputed from the files in storage (metrics live in each manifest),
    so they survive restarts.

    ``lock_timeout`` bounds how long ``save`` waits for another writer holding the
    directory's lock (None waits forever; a timeout raises :class:`~ckpt.errors.LockedError`). A lock
    that cannot be taken at all (read-only file system, unwritable lock file) raises
    :class:`~ckpt.errors.SaveError`.

    ``logdir`` is a local path, an ``os.PathLike`` or an fsspec URL (``memory://run``,
    ``s3://bucket/run``; ``storage_options`` go to its filesystem). What a commit and the lock
    guarantee there is the backend's (see :mod:`ckpt.storage`).

    Subclasses ported from ``objax.io.Checkpoint`` may set ``SAVE_FN``/``LOAD_FN``
    (``staticmethod(fn)``, called as ``fn(file, vc)`` with a binary file object): saves then write
    through ``SAVE_FN`` (still committed atomically, then rotated; the variables only) and
    ``restore`` reads through ``LOAD_FN``. Such files are not inspected: retention counts them
    without metrics and cannot check their hashes.
    """

    def __init__(self, logdir: Location, keep_ckpts: Optional[int] = 5, makedir: bool = True, verbose: bool = True, *,
                 keep_every: Optional[int] = None, keep_best: Optional[int] = None, metric: Optional[str] = None,
                 mode: str = "min", max_bytes: Optional[int] = None,
                 deps: str = "warn", verify: bool = True, lock_timeout: Optional[float] = None,
                 async_save: bool = False, compression: Any = None,
                 storage_options: Optional[dict[str, Any]] = None):
        if keep_ckpts is not None and (isinstance(keep_ckpts, bool) or not isinstance(keep_ckpts, int)
                                       or keep_ckpts < 1):
            raise ValueError(f"keep_ckpts must be an integer >= 1 (the newest checkpoint is always kept), "
                             f"or None to turn the keep-latest policy off, not {keep_ckpts!r}")
        self.retention = _ret.RetentionPolicy(keep_last=keep_ckpts, keep_every=keep_every, keep_best=keep_best,
                                              metric=metric, mode=mode, max_bytes=max_bytes)
        self._meta_cache = {}
        self._verified_cache = {}
        self._warned_damaged = {}
        self._meta_lock = threading.Lock()
        self._root = open_storage(logdir, storage_options)
        self._dir_cache = None
        self.logdir = logdir.url if isinstance(logdir, Storage) else os.fspath(logdir)
        self.keep_ckpts = keep_ckpts
        self.verbose = verbose
        self.deps = _deps.check_mode(deps)
        self.verify = verify
        self.lock_timeout = lock_timeout
        self.async_save = async_save
        self.compression = compression
        _codec.Compression.parse(compression)  # refuse an unknown codec now, not at the first save
        self._executor = None
        self._pending = None
        self._pending_idx = None
        self._last_read = None  # what load_extras() reads by default; reset by save()
        # Background saves copy writable numpy arrays into these, reused from one save to the next.
        self._snapshot_buffers = _snapshot.SnapshotBuffers()
        self._pattern = format_regex(self.FILE_FORMAT)
        if makedir:
            try:
                self.storage.makedirs()
            except OSError as e:
                raise SaveError(f"cannot create the checkpoint directory {self.directory}: {e.strerror or e} (pass "
                                "makedir=False to only read checkpoints)", errno=e.errno, file=self.directory) from e

    # -- aliases -------------------------------------------------------------
    def alias(self, name: str, idx: Optional[int]) -> None:
        """Point alias ``name`` (e.g. ``"best"``) at checkpoint ``idx``, durably; ``idx=None`` removes it.

        One checkpoint per alias (setting it again moves it); retention never
        deletes an aliased checkpoint. Resolve with ``ckpt.find(..., alias=)``,
        ``ckpt.build(..., alias=)`` or :meth:`aliases`.
        """
        _aliases.set_alias(self, name, None if idx is None else check_idx(idx))

    def aliases(self) -> dict[str, int]:
        """Alias name -> checkpoint index."""
        return _aliases.read(self.storage)

    def __repr__(self) -> str:
        p = self.retention
        extra = "".join(f", {k}={v!r}" for k, v in (("keep_every", p.keep_every), ("keep_best", p.keep_best),
                                                       ("metric", p.metric), ("max_bytes", p.max_bytes))
                        if v is not None)
        if p.keep_best is not None:
            extra += f", mode={p.mode!r}"
        return f"Checkpoint({self.logdir!r}, keep_ckpts={self.keep_ckpts}{extra})"


