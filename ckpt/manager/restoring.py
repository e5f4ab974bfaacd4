"""The manager's reading: restore and load with fallback past damaged checkpoints, and following a trainer.

Every load path goes through :meth:`Restoring._on_checkpoint`: with no index given, a newest
checkpoint that the reader reports as damaged is skipped (with a warning) for the next older one.
"""

from __future__ import annotations

import logging
import time
import warnings
import zipfile
from typing import Any, Callable, ClassVar, Optional, TypeVar

from .. import collections as _coll, deps as _deps, serializers as _ser
from .._packfile import DEFAULT_SLOT, PackReader
from ..errors import CheckpointNotFoundError, CkptError, CorruptCheckpointWarning, FormatError, SlotNotFoundError
from ..varfile import PreparedRestore, open_reader, prepare_restore
from .background import Background

log = logging.getLogger("ckpt")
T = TypeVar("T")

#: Slot names the manager uses itself; extras cannot take them.
RESERVED_SLOTS = frozenset({DEFAULT_SLOT, "module"})


class Restoring(Background):
    """restore/load/load_extras/load_module/metadata, and wait_for_new."""

    #: objax compatibility: a subclass may set ``LOAD_FN = staticmethod(fn)`` (``fn(file, vc)``, or with
    #: a ``renamer`` keyword, as ``objax.io.Checkpoint`` calls it); ``restore`` then reads through it.
    LOAD_FN: ClassVar[Optional[Callable[..., Any]]] = None

    @property
    def _custom_format(self) -> bool:
        """Whether files are written or read by a subclass's SAVE_FN/LOAD_FN (not inspected as packs)."""
        return getattr(type(self), "SAVE_FN", None) is not None or type(self).LOAD_FN is not None

    def _restore_with_fn(self, load_fn: Callable[..., Any], resolved: int, vc: Any, extras: dict[str, Any],
                         renamer: _coll.Renamer) -> str:
        """Restore ``vc`` through ``LOAD_FN``; its failures count as a damaged file for the fallback."""
        if extras:
            raise ValueError(f"{type(self).__name__}.LOAD_FN restores the variables only; extras cannot be read "
                             "through it")
        path = self.path(resolved)
        self._log("restoring from %s through %s.LOAD_FN", path, type(self).__name__)
        with self.storage.open_read(self.key(resolved)) as f:
            try:
                if renamer is None:
                    load_fn(f, vc)
                else:
                    load_fn(f, vc, renamer=renamer)
            except (CkptError, FileNotFoundError, TypeError):
                raise
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
                raise FormatError(f"{path}: {type(self).__name__}.LOAD_FN could not read it: {e}", file=path) from e
        return path

    def _open(self, idx: int) -> open_reader:
        """A reader of checkpoint ``idx`` through the manager's storage."""
        return open_reader(self.key(idx), storage=self.storage)

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
            load_fn = type(self).LOAD_FN
            if load_fn is not None:
                return self._restore_with_fn(load_fn, resolved, vc, extras, renamer)
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
        with self._open(resolved) as reader:
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
            with self._open(resolved) as reader:
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
            with self._open(resolved) as reader:
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


    def metadata(self, idx: Optional[int] = None) -> dict[str, Any]:
        """The manifest metadata of checkpoint ``idx``; ``["ckpt"]["metrics"]`` holds its metrics.

        Without ``idx``: the checkpoint last restored or loaded (as :meth:`load_extras`),
        else the newest whose structure is intact (zip directory, manifest, a ``main`` arrays
        slot whose ``.npy`` headers parse). Reads only those, not the array data (a bad hash is not
        noticed here; restore and load notice it).
        """
        def read(resolved: int) -> dict[str, Any]:
            with self._open(resolved) as reader:
                _check_main(reader, headers=True)
                return dict(reader.metadata)

        return self._on_checkpoint(idx, read, default_restored=True)[1]



def _one_line(e: BaseException, path: str = "") -> str:
    """An error as one line, without the file name the caller shows already."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text[len(path) + 2:] if path and text.startswith(path + ": ") else text


def _check_main(reader: PackReader, *, headers: bool = False) -> None:
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


