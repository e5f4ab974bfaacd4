"""Snapshot buffers for background saves: writable numpy arrays copied into memory kept between saves.

Why: an async save must copy writable numpy arrays (the caller may change them as soon as
``save()`` returns), and copying into fresh memory pays a page fault per 4 KiB page on first
touch, which on some VMs runs at well under 1 GiB/s and made the copy nearly as slow as the
save. A :class:`SnapshotBuffers` keeps the buffers of one snapshot and hands them to the next
(matched by byte size), so from the second save on the copy runs at memory speed. Contiguous
arrays are copied as bytes (a bfloat16 array's own copy loop is several times slower than memcpy),
those of 1 MiB or more in slices on up to four threads (the caller's and a small pool): one thread
does not reach the memory bandwidth (one 1 GiB array on the 2-core VM: 100 ms on one thread, 55 ms
on two; the 1 GiB benchmark model's 389 arrays: about 140 ms and 115 ms).

Memory: the buffers of the snapshots being written (which the copy needs anyway) plus those of
the latest finished one, kept for reuse: between saves, one copy of the model's writable numpy
arrays, until :meth:`SnapshotBuffers.release` (``Checkpoint.close()``). Buffers of older snapshots
that a newer one did not reuse are dropped.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np

#: Arrays at least this large are copied on several threads (smaller slices cost more to hand off).
_SPLIT_MIN = 1 << 20
_POOL: Optional[ThreadPoolExecutor] = None
_POOL_LOCK = threading.Lock()


def _threads() -> int:
    try:
        return max(1, min(4, len(os.sched_getaffinity(0))))
    except (AttributeError, OSError):
        return max(1, min(4, os.cpu_count() or 1))


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ckpt-snapshot")
        return _POOL


def _copy(out: np.ndarray, arr: np.ndarray) -> None:
    """``np.copyto(out, arr)``, a large contiguous array in slices on several threads (copyto releases the GIL)."""
    if not (arr.flags.c_contiguous and out.flags.c_contiguous) or arr.dtype.hasobject:
        np.copyto(out, arr, casting="no")
        return
    # Bytes, not elements: a copy of a user dtype (ml_dtypes' bfloat16) runs its element loop, several
    # times slower than memcpy, and does not get faster on more threads.
    src, dst = arr.reshape(-1).view(np.uint8), out.reshape(-1).view(np.uint8)
    parts = _threads()
    if arr.nbytes < _SPLIT_MIN or parts < 2:
        np.copyto(dst, src)
        return
    bounds = [len(src) * i // parts for i in range(parts + 1)]
    pending = [_pool(parts - 1).submit(np.copyto, dst[a:b], src[a:b]) for a, b in zip(bounds[1:-1], bounds[2:])]
    try:
        np.copyto(dst[:bounds[1]], src[:bounds[1]])
    finally:
        for fut in pending:
            fut.result()


class Snapshot:
    """The buffers one background snapshot copied into; :meth:`done` once its save has finished."""

    def __init__(self, owner: SnapshotBuffers) -> None:
        self._owner = owner
        self._buffers: list[np.ndarray] = []
        self._done = False

    def copy(self, arr: np.ndarray) -> np.ndarray:
        """A copy of ``arr`` (Fortran-ordered if ``arr`` is, else C-ordered, as ``np.array(arr, order="K")``
        for contiguous arrays), in a free buffer of its byte size when there is one."""
        if arr.dtype.hasobject or not arr.nbytes:  # objects are never stored as arrays; empty ones cost nothing
            return np.array(arr, copy=True, order="K")
        buf = self._owner._take(arr.nbytes)
        self._buffers.append(buf)
        fortran = arr.ndim > 1 and arr.flags.f_contiguous and not arr.flags.c_contiguous
        flat = buf.view(arr.dtype)
        if fortran:  # the transposes are C-contiguous: copied in slices like any other array
            out = flat.reshape(arr.shape[::-1])
            _copy(out, arr.T)
            return out.T
        out = flat.reshape(arr.shape)
        _copy(out, arr)
        return out

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buffers)

    def done(self) -> None:
        """The save that read these buffers is over (written or failed): the next snapshot may reuse them."""
        if not self._done:
            self._done = True
            self._owner._give_back(self._buffers)


class SnapshotBuffers:
    """Buffers background snapshots copy into, reused by later snapshots (see the module docstring).

    A buffer is reused only after the snapshot that holds it is :meth:`Snapshot.done`, so a save still
    being written is never overwritten, whichever thread takes the next snapshot. The free list keeps the
    buffers of the latest finished snapshot only: memory is the snapshots in flight plus one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: dict[int, list[np.ndarray]] = {}

    @property
    def nbytes(self) -> int:
        """Bytes kept for reuse now (not counting snapshots still being written)."""
        with self._lock:
            return sum(b.nbytes for bs in self._free.values() for b in bs)

    def snapshot(self) -> Snapshot:
        return Snapshot(self)

    def _take(self, nbytes: int) -> np.ndarray:
        with self._lock:
            free = self._free.get(nbytes)
            if free:
                return free.pop()
        return np.empty(nbytes, dtype=np.uint8)

    def _give_back(self, buffers: list[np.ndarray]) -> None:
        fresh: dict[int, list[np.ndarray]] = {}
        for buf in buffers:
            fresh.setdefault(buf.nbytes, []).append(buf)
        with self._lock:
            self._free = fresh  # older free buffers the last snapshot did not reuse are dropped

    def release(self) -> None:
        """Free the buffers kept for reuse (the manager is closing)."""
        with self._lock:
            self._free = {}
