"""CRC-32 as zip defines it: ISA-L's when the ``isal`` package is installed (about five times
faster than zlib's, and zip CRCs are computed over every byte written), else zlib's. Same values."""

from __future__ import annotations

import zlib
from typing import Callable

crc32: Callable[..., int]  # crc32(data, value=0) -> int, like zlib.crc32
try:
    from isal import isal_zlib

    crc32 = isal_zlib.crc32
    IMPLEMENTATION = "isal"
except ImportError:  # optional: ckpt[zstd] and ckpt[lz4] install it
    crc32 = zlib.crc32
    IMPLEMENTATION = "zlib"
