"""The manager's saving: encode the slots, commit the file atomically under the lock, then rotate.

A save writes through the storage's :meth:`~ckpt.storage.Storage.commit` (locally: temp file,
fsync, rename, directory fsync), and only then deletes what retention no longer keeps.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, BinaryIO, Callable, ClassVar, Mapping, Optional

from .. import collections as _coll, recipes as _recipes, retention as _ret
from .._packfile import DEFAULT_SLOT
from ..errors import CheckpointNotFoundError, CkptError, SaveError
from ..distributed import hooks as _dist
from ..incremental import _saver as _incr
from ..pack import check_slot_name
from ..varfile import encode_slots, write_encoded
from .naming import check_idx
from .pruning import Pruning
from .restoring import RESERVED_SLOTS

log = logging.getLogger("ckpt")


class Saving(Pruning):
    """``save`` (in the caller's thread or the save thread) and its commit + rotation."""

    #: objax compatibility: a subclass may set ``SAVE_FN = staticmethod(fn)`` (``fn(file, vc)``, as
    #: ``objax.io.Checkpoint`` calls it); the file object it writes is committed atomically like any save.
    SAVE_FN: ClassVar[Optional[Callable[[BinaryIO, Any], Any]]] = None
    incremental: Optional[_incr.IncrementalSaver]
    compression: Any
    async_save: bool

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
        :meth:`best` read them back, also after a restart. The ``"ckpt"``
        metadata key is the library's own.

        ``recipe`` (a :class:`~ckpt.Recipe`, or a ``@ckpt.recorded`` object) records how
        the model was built, as ``metadata["ckpt"]["recipe"]``: ``ckpt.find`` selects by
        it and ``ckpt.build`` rebuilds from it.
        """
        idx = check_idx(idx)
        self._last_read = None
        save_fn = type(self).SAVE_FN
        if save_fn is not None:
            return self._save_with_fn(save_fn, vc, idx, {"extras": extras, "metadata": metadata, "metrics": metrics,
                                                "module": module, "recipe": recipe})
        try:
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
            if not self.storage.isdir():
                raise CheckpointNotFoundError(f"checkpoint directory {self.directory} does not exist (makedir=False)",
                                              file=self.directory)
        except (TypeError, ValueError, OSError) as e:
            _dist.save_failed(self, idx, e)  # multi-process: raised on every process, not only this one
            raise
        background = self.async_save if block is None else not block
        self._finish_pending(raise_error=True)  # one snapshot in flight at most; surfaces earlier errors
        if _dist.active():  # every process of a jax.distributed job calls save: shards + one commit record
            job = _dist.prepare_save(self, idx, self.path(idx), slots, serializers, metadata, background=background,
                                     compression=self.compression if compression == "default" else compression)
            return self._run_job(idx, job, background)
        snap = self._snapshot_buffers.snapshot() if background else None
        try:
            encoded = encode_slots(slots, serializers, snapshot=background,
                                   compression=self.compression if compression == "default" else compression,
                                   buffers=snap)
        except BaseException:
            if snap is not None:
                snap.done()
            raise
        if self.incremental is not None:  # matched against the previous save before any snapshot copy
            encoded = self.incremental.planned(slots, encoded)
        path = self.path(idx)
        if snap is None:
            self._commit(idx, encoded, metadata)
            return path
        self._submit(snap, idx, encoded, metadata)
        return path

    def _commit(self, idx: int, encoded: Mapping[str, Any], metadata: Optional[Mapping[str, Any]]) -> None:
        """Write, fsync, rename, then rotate: under the directory lock, in the caller's or the save thread.

        An incremental save writes its new shared objects (durably) before the checkpoint file."""
        saver = self.incremental if isinstance(encoded, _incr.PlannedSlots) else None

        def write() -> None:
            slots = saver.store(encoded.plan, encoded) if saver is not None else encoded  # type: ignore[attr-defined]
            write_encoded(self.key(idx), slots, metadata=metadata, storage=self.storage,
                          exclusive=self.storage.create_only_steps)
            if saver is not None:
                saver.committed(encoded.plan)  # type: ignore[attr-defined]

        self._commit_with(idx, write)

    def _commit_record(self, idx: int, encoded: Mapping[str, Any], metadata: Optional[Mapping[str, Any]],
                       save_id: str) -> None:
        """Process 0 of a multi-process save: the commit record, written last, then retention and orphans."""
        self._commit(idx, encoded, metadata)
        _dist.remove_orphans(self, keep={_dist.layout.stem(self.path(idx)): save_id})

    def _commit_with(self, idx: int, write: Callable[[], Any]) -> None:
        path = self.path(idx)
        with self._lock():
            self._clean_stale_temps()
            try:
                write()
            except CkptError:
                raise
            except OSError as e:
                raise SaveError(
                    f"could not write checkpoint {idx} to {path}: {e.strerror or e}; the earlier checkpoints are "
                    "intact", errno=e.errno, file=path) from e
            self._log("saved checkpoint %s", path)
            self._rotate(idx)

    def _save_with_fn(self, save_fn: Callable[[BinaryIO, Any], Any], vc: Any, idx: int,
                      unsupported: Mapping[str, Any]) -> str:
        """A save through a subclass's ``SAVE_FN``: only ``vc``, synchronously, still atomic and rotated."""
        given = sorted(k for k, v in unsupported.items() if v is not None)
        if given:
            raise ValueError(f"{type(self).__name__}.SAVE_FN writes the variables only; {', '.join(given)} cannot be "
                             "saved through it (remove SAVE_FN to use ckpt's own format)")
        self._finish_pending(raise_error=True)
        if not self.storage.isdir():
            raise CheckpointNotFoundError(f"checkpoint directory {self.directory} does not exist (makedir=False)",
                                          file=self.directory)
        self._commit_with(idx, lambda: self.storage.commit(self.key(idx), lambda f: save_fn(f, vc)))
        return self.path(idx)

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

