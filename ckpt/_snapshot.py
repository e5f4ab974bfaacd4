"""Snapshot buffers for background saves: writable numpy arrays copied into memory kept between saves.

Why: an async save must copy writable numpy arrays (the caller may change them as soon as
``save()`` returns), and copying into fresh memory pays a page fault per 4 KiB page on first
touch, which on some VMs runs at well under 1 GiB/s and made the copy nearly as slow as the
save. A :class:`SnapshotBuffers` keeps the buffers of one snapshot and hands them to the next
(matched by byte size), so from the second save on the copy runs at memory speed (one thread:
on the 2-core VM these were measured on, two threads copied at half the speed of one).

Memory: the buffers of the latest snapshot only, i.e. one copy of the model's writable numpy
arrays, which the copy needs anyway while its save is in flight; between saves it stays
allocated until :meth:`release` (``Checkpoint.close()``). Buffers the next snapshot does not
reuse are dropped when it ends.
"""

from __future__ import annotations

import numpy as np


class SnapshotBuffers:
    """Buffers that one background snapshot copies into and the next one reuses (see the module docstring).

    Not thread-safe: one owner (a Checkpoint manager) calls :meth:`begin`, :meth:`copy` and
    :meth:`release` from the thread that saves, and only while no snapshot it took is being written.
    """

    def __init__(self) -> None:
        self._free: dict[int, list[np.ndarray]] = {}
        self._held: list[np.ndarray] = []

    @property
    def nbytes(self) -> int:
        """Bytes held now (the latest snapshot's buffers)."""
        return sum(b.nbytes for b in self._held) + sum(b.nbytes for bs in self._free.values() for b in bs)

    def begin(self) -> None:
        """Start a snapshot: the previous snapshot's buffers (its save is done) become reusable."""
        for buf in self._held:
            self._free.setdefault(buf.nbytes, []).append(buf)
        self._held = []

    def end(self) -> None:
        """Finish a snapshot: buffers it did not reuse are dropped, so memory stays one snapshot's."""
        self._free = {}

    def copy(self, arr: np.ndarray) -> np.ndarray:
        """A C-ordered copy of ``arr`` in a reused (already faulted-in) buffer when one of its size is free."""
        if arr.dtype.hasobject:  # never stored as arrays; copied plainly so the caller's error stays the same
            return arr.copy()
        free = self._free.get(arr.nbytes)
        buf = free.pop() if free else np.empty(arr.nbytes, dtype=np.uint8)
        self._held.append(buf)
        out = buf.view(arr.dtype).reshape(arr.shape) if arr.nbytes else np.empty(arr.shape, arr.dtype)
        np.copyto(out, arr, casting="no")
        return out

    def release(self) -> None:
        """Free every buffer (the manager is closing)."""
        self._free = {}
        self._held = []
