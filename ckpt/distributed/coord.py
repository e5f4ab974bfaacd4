"""Coordination of a multi-process save or restore through the JAX coordination service.

Only the service's key-value store is used (never a device collective, which cannot time out):
each process posts one JSON value per step of the protocol and reads everyone else's with a
deadline, so a process that died or hangs is named in a :class:`~ckpt.errors.CoordinationTimeoutError`
instead of blocking the others forever, and an error on one process is raised on all of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
import time
from typing import Any, Optional, Sequence

from ..errors import CoordinationTimeoutError, DistributedError

log = logging.getLogger("ckpt")

#: Seconds every wait allows by default (``Checkpoint(coordination_timeout=...)`` or
#: ``CKPT_COORDINATION_TIMEOUT`` override it).
DEFAULT_TIMEOUT = 300.0


def default_timeout() -> float:
    value = os.environ.get("CKPT_COORDINATION_TIMEOUT")
    try:
        return float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        return DEFAULT_TIMEOUT


def _client() -> Any:
    """The coordination-service client of an initialized ``jax.distributed``, else None.

    jax is not imported here: a job that never imported it is single-process."""
    if "jax" not in sys.modules:
        return None
    try:
        from jax._src import distributed
    except ImportError:
        return None
    state = getattr(distributed, "global_state", None)
    return getattr(state, "client", None)


def process_count() -> int:
    if _client() is None:
        return 1
    import jax

    return int(jax.process_count())


def active() -> bool:
    """True in a job of more than one process (``jax.distributed`` initialized)."""
    return process_count() > 1


_counters: dict[str, int] = {}
_counter_lock = threading.Lock()


def next_name(kind: str, directory: str) -> str:
    """A name for one save or read of ``directory``, unique within the job.

    Every process makes the same ckpt calls in the same order, so a per-process count of calls
    per directory is the same everywhere (whatever the number of Checkpoint objects)."""
    token = hashlib.sha256(os.fspath(directory).encode()).hexdigest()[:12]
    with _counter_lock:
        _counters[token] = n = _counters.get(token, 0) + 1
    return f"{kind}/{token}/{n}"


class Coordinator:
    """One sequence of exchanges among the processes of a job, under a shared name.

    Every process makes the same exchanges in the same order; ``name`` plus a counter makes
    each exchange's keys unique.
    """

    def __init__(self, name: str, timeout: float):
        import jax

        self.client = _client()
        if self.client is None:
            raise DistributedError("jax.distributed is not initialized; a multi-process exchange needs it")
        self.process = int(jax.process_index())
        self.count = int(jax.process_count())
        self.timeout = float(timeout)
        self.name = name
        self._seq = 0
        self._posted: list[str] = []  # this process's keys of earlier exchanges, not yet deleted

    def _key(self, tag: str, seq: int, process: int) -> str:
        return f"ckpt/{self.name}/{seq}/{tag}/{process}"

    def exchange(self, tag: str, payload: Any = None, *, error: Optional[str] = None,
                 from_processes: Optional[Sequence[int]] = None, post: bool = True,
                 what: str = "") -> list[Any]:
        """Post ``payload`` (or ``error``) and return every process's payload, in process order.

        Raises :class:`DistributedError` on every process when any process posted an error (the
        message names them and says what each found), and :class:`CoordinationTimeoutError`
        naming the processes that did not post within the timeout. ``from_processes`` limits
        whose values are awaited (e.g. only the primary's commit); ``post=False`` only reads.
        """
        self._seq += 1
        seq = self._seq
        key = self._key(tag, seq, self.process)
        if post:
            value = json.dumps({"error": error} if error is not None else {"ok": payload}, separators=(",", ":"))
            self.client.key_value_set(key, value)
        wanted = list(range(self.count)) if from_processes is None else list(from_processes)
        deadline = time.monotonic() + self.timeout
        got: dict[int, Any] = {}
        missing: list[int] = []
        for p in wanted:
            remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
            try:
                raw = self.client.blocking_key_value_get(self._key(tag, seq, p), remaining_ms)
            except Exception:  # the service reports a deadline (or a dead peer) as a runtime error
                missing.append(p)
                continue
            got[p] = json.loads(raw)
        if missing:
            raise CoordinationTimeoutError(
                f"{what or tag}: process(es) {missing} of {self.count} did not arrive within {self.timeout:g} s "
                f"(killed, hung, or not calling the same ckpt method); this process ({self.process}) gives up",
                processes=missing)
        errors = {p: v["error"] for p, v in got.items() if "error" in v}
        if errors:
            detail = "; ".join(f"process {p}: {msg}" for p, msg in sorted(errors.items()))
            raise DistributedError(f"{what or tag} failed on {len(errors)} of {self.count} process(es): {detail}",
                                   processes=sorted(errors))
        if from_processes is None and post:
            self._forget_earlier()
        if post:
            self._posted.append(key)
        return [got[p]["ok"] for p in wanted]

    def _forget_earlier(self) -> None:
        """Every process posted this exchange, which each does only after reading all of the earlier
        ones: this process's earlier keys are read by everyone, so delete them (a long run must not
        fill the coordination service)."""
        earlier, self._posted = self._posted, []
        for key in earlier:
            try:
                self.client.key_value_delete(key)
            except Exception as e:  # a leftover key costs memory, not correctness
                log.debug("could not delete coordination key %s: %s", key, e)
