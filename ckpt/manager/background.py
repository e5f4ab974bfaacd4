"""The manager's background saves: one save thread per manager, its pending save, and interpreter exit.

A background save returns once its snapshot is taken; its error is raised by the next ``save``,
``wait`` or ``close``, and interpreter exit finishes (or reports) every save still in flight.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Mapping, Optional, TypeVar

from .. import _snapshot
from .naming import Naming

log = logging.getLogger("ckpt")
_B = TypeVar("_B", bound="Background")


class Background(Naming):
    """The save thread and the one save in flight."""

    _executor: Optional[ThreadPoolExecutor]
    _pending: Optional["Future[None]"]
    _pending_idx: Optional[int]

    def _commit(self, idx: int, encoded: Mapping[str, Any], metadata: Optional[Mapping[str, Any]]) -> None:
        raise NotImplementedError  # the saving concern's

    def _submit(self, snap: _snapshot.Snapshot, idx: int, encoded: Mapping[str, Any],
                metadata: Optional[Mapping[str, Any]]) -> None:
        """Commit in the save thread; the snapshot's buffers become reusable once it is over."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-save")
            _live_managers.add(self)
        self._pending = self._executor.submit(self._commit_snapshot, snap, idx, encoded, metadata)
        self._pending_idx = idx

    def _commit_snapshot(self, snap: _snapshot.Snapshot, idx: int, encoded: Mapping[str, Any],
                         metadata: Optional[Mapping[str, Any]]) -> None:
        try:
            self._commit(idx, encoded, metadata)
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

    def __enter__(self: _B) -> _B:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


#: Managers with a save thread, so that interpreter exit can finish their saves.
_live_managers: "weakref.WeakSet[Background]" = weakref.WeakSet()


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
