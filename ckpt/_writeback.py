"""Start the disk writing a file's dirty pages while the save goes on, so the final fsync has little left.

Why: a save is durable only after ``fsync``, and without a hint the kernel starts writing a new
file's pages to disk late (seconds later, or at the fsync), so the whole write-out came after
the last byte was copied. ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` on each range just written
starts its write-out at once, without waiting for it, so the disk works while the next chunks
are hashed and copied. Durability still comes from the fsync (``_io.atomic_write``); this only
moves work earlier. Linux only (glibc/musl ``sync_file_range``); elsewhere a no-op.

Measured on the 2-core VM these benchmarks were developed on: 512 MiB written and fsynced in
0.27 s with it against 0.41 s without (the fsync itself dropped from 0.20 s to 0.01 s).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import stat
import sys
from collections.abc import Callable
from typing import Any, Optional

_SYNC_FILE_RANGE_WRITE = 2
#: Start the write-out each time this many new bytes were written.
STEP = 8 << 20

_call: Optional[Callable[..., int]] = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _call = _libc.sync_file_range
        _call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        _call.restype = ctypes.c_int
    except (OSError, AttributeError):
        _call = None


def starter(f: Any) -> Optional[Callable[[int, int], None]]:
    """``start(offset, nbytes)`` for a regular file ``f``; None when it has no descriptor or is not a file."""
    if _call is None or os.environ.get("CKPT_NO_WRITEBACK"):
        return None
    try:
        fd = f.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
    except (AttributeError, OSError, ValueError):
        return None
    call = _call

    def start(offset: int, nbytes: int) -> None:
        call(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)  # a hint: its result does not matter

    return start
