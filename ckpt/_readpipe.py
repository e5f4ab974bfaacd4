"""Reading many stored members at the speed of the disk: one ordered pass, hashed while it reads.

Members are read in file order into fresh ``np.empty`` buffers (no zero fill, never the mapping:
a file truncated under the reader is a short read here, not a SIGBUS). Neighbours are coalesced
into one ``os.preadv`` (the few hundred bytes of local headers between them go to a scratch
buffer), large members are read in pieces, and each piece is handed to one checking thread while
the next is read, so a member's hash is ready as soon as its last byte is. The first failing
member in file order is the one reported.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

import numpy as np

#: Bytes one preadv call reads at most (and a large member's piece).
PIECE = 8 << 20
#: Neighbours further apart than this are read by separate calls (the gap is read and dropped).
MAX_GAP = 64 << 10
#: iovecs one call passes at most (Linux's IOV_MAX is 1024).
MAX_IOVECS = 512


class Check(Protocol):
    """A member's running check: bytes in order, then ``finish`` raises if they do not match."""

    def update(self, data: memoryview, /) -> None: ...
    def finish(self) -> None: ...


@dataclass(frozen=True)
class Want:
    """One member to read: its name, where its data starts in the file, and how many bytes it holds."""

    name: str
    offset: int
    size: int


@dataclass
class _Segment:
    member: Optional[int]  # index into the wants; None for gap bytes (discarded)
    start: int  # offset within the member (or the gap)
    length: int
    last: bool = False  # the member's final bytes: its check finishes after them


def plan(wants: list[Want], *, piece: int = PIECE, max_gap: int = MAX_GAP,
         max_iovecs: int = MAX_IOVECS) -> list[tuple[int, list[_Segment]]]:
    """The preadv calls that read ``wants`` (sorted by offset, not overlapping): (file offset, segments)."""
    calls: list[tuple[int, list[_Segment]]] = []
    segs: list[_Segment] = []
    call_start = end = length = 0

    def close() -> None:
        nonlocal segs, length
        if segs:
            calls.append((call_start, segs))
        segs, length = [], 0

    for i, w in enumerate(wants):
        if w.size == 0:  # no bytes: its check still finishes in file order
            if not segs:
                call_start = end = w.offset
            segs.append(_Segment(i, 0, 0, last=True))
            continue
        gap = w.offset - end
        if segs and (gap < 0 or gap > max_gap or length + gap >= piece or len(segs) + 2 > max_iovecs):
            close()
        if segs and gap:
            segs.append(_Segment(None, 0, gap))
            length += gap
        done = 0
        while done < w.size:
            if not segs:
                call_start = w.offset + done
            n = min(w.size - done, piece - length)
            segs.append(_Segment(i, done, n, last=done + n == w.size))
            length += n
            done += n
            if length >= piece or len(segs) >= max_iovecs:
                close()
        end = w.offset + w.size
    close()
    return calls


def read(fd: int, wants: list[Want], new_check: Callable[[Want], Optional[Check]],
         cut_short: Callable[[Want], BaseException]) -> dict[str, Any]:
    """Every member of ``wants`` in a fresh writable buffer (a ``bytearray`` when empty), each checked by
    ``new_check(want)`` (None: not checked) on one thread while the next piece is read.

    ``cut_short(want)`` is the error for a member the file ends inside. A failed check stops the
    reading; the first failure in file order is raised.
    """
    order = sorted(range(len(wants)), key=lambda i: wants[i].offset)
    ordered = [wants[i] for i in order]
    bufs: list[Any] = [np.empty(w.size, dtype=np.uint8) if w.size else bytearray(0) for w in ordered]
    views = [memoryview(b).cast("B") if w.size else memoryview(b) for b, w in zip(bufs, ordered)]
    checks = [new_check(w) for w in ordered]
    calls = plan(ordered, piece=PIECE)
    scratch = memoryview(bytearray(max((s.length for _, ss in calls for s in ss if s.member is None), default=0)))
    hashing = [c is not None for c in checks]
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-check") if any(hashing) else None
    pending: list[Future[None]] = []
    failed: list[bool] = [False]

    def check(segs: list[_Segment]) -> None:
        if failed[0]:
            return
        try:
            for s in segs:
                c = checks[s.member] if s.member is not None else None
                if c is not None:
                    c.update(views[s.member][s.start:s.start + s.length])  # type: ignore[index]
                    if s.last:
                        c.finish()
        except BaseException:
            failed[0] = True
            raise

    try:
        for offset, segs in calls:
            if failed[0]:
                break
            iov = [scratch[:s.length] if s.member is None else views[s.member][s.start:s.start + s.length]
                   for s in segs]
            _read_fully(fd, offset, iov, functools.partial(_cut_at, cut_short, ordered, segs))
            if pool is not None and any(s.member is not None and hashing[s.member] for s in segs):
                pending.append(pool.submit(check, segs))
    except BaseException:
        first = _first_failure(pending)  # a member before the one cut short failed its check: that one
        if first is not None:
            raise first from None
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    first = _first_failure(pending)
    if first is not None:
        raise first
    return {w.name: b for w, b in zip(ordered, bufs)}


def _first_failure(pending: list[Future[None]]) -> Optional[BaseException]:
    """The first check that raised (once one fails, the later ones return without checking)."""
    for f in pending:
        exc = f.exception()
        if exc is not None:
            return exc
    return None


def _cut_at(cut_short: Callable[[Want], BaseException], ordered: list[Want], segs: list[_Segment],
            k: int) -> BaseException:
    return cut_short(ordered[_member_at(segs, k)])


def _member_at(segs: list[_Segment], k: int) -> int:
    """The member of segment ``k`` (or of the first member segment after a gap)."""
    for s in segs[k:] + segs[:k][::-1]:
        if s.member is not None:
            return s.member
    return 0


def _read_fully(fd: int, offset: int, iov: list[memoryview], cut_short: Callable[[int], BaseException]) -> None:
    """Fill every buffer of ``iov`` from ``offset`` on, resuming after short reads; EOF is ``cut_short``
    (given the index of the buffer it stopped in)."""
    k = 0
    while True:
        while k < len(iov) and not len(iov[k]):  # empty members: nothing to read
            k += 1
        if k == len(iov):
            return
        n = os.preadv(fd, iov[k:], offset)
        if n <= 0:
            raise cut_short(k)
        offset += n
        while k < len(iov) and n >= len(iov[k]):
            n -= len(iov[k])
            k += 1
        if n:
            iov[k] = iov[k][n:]
