"""Compressed array members: byte-shuffle + zstd (or lz4), in independent chunks, in parallel.

Why this layout: trained float weights have random mantissas but clustered
exponents; grouping each byte position of every element (byte shuffle) puts the
exponent bytes together, which is what makes them compress. Chunks are
compressed and decompressed independently, so both run on every core (the codecs
release the GIL) and memory stays bounded by a few chunks. Each chunk carries the
CRC-32 of its raw bytes, so a corrupt chunk is reported, never returned as garbage.

Member layout (ckpt's own encoding, docs/FORMAT.md section 2.2)::

    b"CKZ1" | u32 header length | header JSON | chunk*
    chunk = u32 compressed length | u32 crc32 of the raw chunk | compressed bytes

Header JSON: codec, level, filter ("shuffle" or "none"), descr (numpy dtype
string or ml_dtypes name), shape, fortran_order, nbytes, chunk_bytes.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np

from . import _limits, _npy
from .errors import ChecksumError, FormatError

MAGIC = b"CKZ1"
CODECS = ("zstd", "lz4")
#: Raw bytes per chunk: small enough for caches and bounded memory, large enough for the codec.
CHUNK_BYTES = 1 << 20
#: Arrays whose sampled ratio (compressed / raw) is above this are stored raw.
RAW_THRESHOLD = 0.95
_SAMPLE_BYTES = 256 * 1024
_PREFIX = struct.Struct("<II")
_WORKERS: Optional[ThreadPoolExecutor] = None


def _pool() -> ThreadPoolExecutor:
    global _WORKERS
    if _WORKERS is None:
        import os

        _WORKERS = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1), thread_name_prefix="ckpt-codec")
    return _WORKERS


@dataclass(frozen=True)
class Compression:
    """A compression setting: codec ("zstd" or "lz4") and level (codec-specific; None for its default)."""

    codec: str = "zstd"
    level: Optional[int] = None

    @staticmethod
    def parse(value: Any) -> Optional["Compression"]:
        """None/False/"none" -> no compression; "zstd", "lz4", ("zstd", 5) or a Compression."""
        if value is None or value is False or value == "none":
            return None
        if isinstance(value, Compression):
            c = value
        elif isinstance(value, str):
            c = Compression(value)
        elif isinstance(value, tuple) and len(value) == 2:
            c = Compression(str(value[0]), value[1])
        else:
            raise ValueError(f"compression must be None, 'zstd', 'lz4', (codec, level) or Compression, not {value!r}")
        if c.codec not in CODECS:
            raise ValueError(f"unknown codec {c.codec!r}; choose one of {CODECS}")
        _codec_functions(c.codec, c.level)  # fail early when the codec library is missing
        return c


def _codec_functions(codec: str, level: Optional[int]) -> tuple[Callable[[Any], bytes], Callable[[Any, int], bytes]]:
    if codec == "zstd":
        try:
            import zstandard
        except ImportError:
            raise ImportError("compression='zstd' needs the zstandard package: pip install 'ckpt[zstd]'") from None
        lvl = 1 if level is None else int(level)  # on shuffled floats, level 1 compresses about as well as 3

        def compress(data: Any) -> bytes:
            return zstandard.ZstdCompressor(level=lvl).compress(data)

        def decompress(data: Any, size: int) -> bytes:
            return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)

        return compress, decompress
    if codec == "lz4":
        try:
            import lz4.block
        except ImportError:
            raise ImportError("compression='lz4' needs the lz4 package: pip install 'ckpt[lz4]'") from None
        accel = 1 if level is None else max(1, int(level))

        def compress_lz4(data: Any) -> bytes:
            return lz4.block.compress(data, mode="fast", acceleration=accel, store_size=False)

        def decompress_lz4(data: Any, size: int) -> bytes:
            return lz4.block.decompress(data, uncompressed_size=size)

        return compress_lz4, decompress_lz4
    raise ValueError(f"unknown codec {codec!r}")


def _shuffle(raw: memoryview, itemsize: int) -> bytes:
    if itemsize == 1:
        return bytes(raw)
    src = np.frombuffer(raw, dtype=np.uint8)
    out = np.empty(len(src), dtype=np.uint8)
    planes = out.reshape(itemsize, -1)
    for k in range(itemsize):  # one strided pass per byte plane: ~4x faster than a 2-D transpose
        planes[k] = src[k::itemsize]
    return out.tobytes()


def _unshuffle_into(out: memoryview, data: Any, itemsize: int) -> None:
    dst = np.frombuffer(out, dtype=np.uint8)
    if itemsize == 1:
        dst[:] = np.frombuffer(data, dtype=np.uint8)
        return
    src = np.frombuffer(data, dtype=np.uint8).reshape(itemsize, -1)
    for k in range(itemsize):
        dst[k::itemsize] = src[k]


def worth_compressing(raw: memoryview, itemsize: int, c: Compression) -> bool:
    """Compress a small sample (start and middle); False if it would barely shrink (store it raw)."""
    compress, _ = _codec_functions(c.codec, c.level)
    n = len(raw)
    if n < 4096:
        return False
    step = max(itemsize, (_SAMPLE_BYTES // itemsize) * itemsize)
    total = packed = 0
    for start in sorted({0, (n // 2) // itemsize * itemsize}):
        piece = raw[start:start + step]
        piece = piece[:len(piece) // itemsize * itemsize]
        if not len(piece):
            continue
        total += len(piece)
        packed += len(compress(_shuffle(piece, itemsize)))
    return total > 0 and packed / total <= RAW_THRESHOLD


def header(shape: tuple[int, ...], dtype: np.dtype, fortran: bool, c: Compression, nbytes: int) -> bytes:
    doc = {
        "codec": c.codec, "level": c.level, "filter": "shuffle" if dtype.itemsize > 1 else "none",
        "descr": _npy.dtype_name(dtype), "shape": list(shape), "fortran_order": fortran,
        "nbytes": nbytes, "chunk_bytes": _chunk_bytes(dtype.itemsize),
    }
    body = json.dumps(doc, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<I", len(body)) + body


def _chunk_bytes(itemsize: int) -> int:
    return max(itemsize, CHUNK_BYTES // itemsize * itemsize)


def max_size(nbytes: int, itemsize: int) -> int:
    """An upper bound of a compressed member's size (for deciding on zip64 before writing)."""
    chunks = max(1, math.ceil(nbytes / _chunk_bytes(itemsize)))
    return 4096 + nbytes + chunks * (_PREFIX.size + 64 + _chunk_bytes(itemsize) // 200)


def encode_chunks(head: bytes, raw: memoryview, itemsize: int, c: Compression) -> Iterator[bytes]:
    """The member's bytes: header, then chunks compressed on every core, at most a few in flight."""
    compress, _ = _codec_functions(c.codec, c.level)
    step = _chunk_bytes(itemsize)
    pool = _pool()
    window = 2 * (pool._max_workers or 1)  # bounded memory: a few chunks at a time

    def job(start: int) -> tuple[bytes, bytes]:
        piece = raw[start:start + step]
        packed = compress(_shuffle(piece, itemsize))
        return _PREFIX.pack(len(packed), zlib.crc32(piece)), packed

    yield head
    pending: list[Future[tuple[bytes, bytes]]] = []
    for start in range(0, len(raw), step):
        pending.append(pool.submit(job, start))
        if len(pending) >= window:
            yield from pending.pop(0).result()
    for fut in pending:
        yield from fut.result()


@dataclass(frozen=True)
class Header:
    codec: str
    level: Optional[int]
    shuffle: bool
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    nbytes: int
    chunk_bytes: int
    data_start: int


def parse_header(data: Any, *, where: str) -> Header:
    """Validate a compressed member's header (from its first bytes)."""
    if len(data) < 8 or bytes(data[:4]) != MAGIC:
        raise FormatError(f"{where}: not a ckpt compressed member (bad magic)")
    n = struct.unpack_from("<I", data, 4)[0]
    if n > _limits.MAX_NPY_HEADER_BYTES or 8 + n > len(data):
        raise FormatError(f"{where}: compressed member header of {n} bytes is too long or cut short")
    try:
        doc = json.loads(bytes(data[8:8 + n]).decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise FormatError(f"{where}: compressed member header is not JSON ({e})") from None
    try:
        codec, shape, nbytes, chunk = doc["codec"], doc["shape"], doc["nbytes"], doc["chunk_bytes"]
        dtype = _npy.dtype_from_name(doc["descr"], where=where)
        ok = (codec in CODECS and isinstance(shape, list) and len(shape) <= _limits.MAX_NDIM
              and all(type(s) is int and s >= 0 for s in shape) and type(nbytes) is int and type(chunk) is int
              and chunk > 0 and chunk % max(1, dtype.itemsize) == 0 and doc.get("filter") in ("shuffle", "none")
              and isinstance(doc.get("fortran_order", False), bool))
    except (KeyError, TypeError) as e:
        raise FormatError(f"{where}: compressed member header lacks {e}") from None
    if not ok or math.prod(shape) * dtype.itemsize != nbytes or nbytes > _limits.MAX_MEMBER_BYTES:
        raise FormatError(f"{where}: compressed member header is inconsistent: {doc!r:.300}")
    return Header(codec, doc.get("level"), doc["filter"] == "shuffle", dtype, tuple(shape),
                  bool(doc.get("fortran_order", False)), nbytes, chunk, 8 + n)


def decode(data: Any, h: Header, *, where: str, dtype: Optional[np.dtype] = None) -> np.ndarray:
    """Decompress a member into a new array, chunks in parallel, each checked against its CRC."""
    _, decompress = _codec_functions(h.codec, h.level)
    view = memoryview(data)
    frames = []
    pos = h.data_start
    count = math.ceil(h.nbytes / h.chunk_bytes) if h.nbytes else 0
    for i in range(count):
        if pos + _PREFIX.size > len(view):
            raise ChecksumError(f"{where}: compressed data is truncated at chunk {i} of {count}")
        clen, crc = _PREFIX.unpack_from(view, pos)
        pos += _PREFIX.size
        if pos + clen > len(view):
            raise ChecksumError(f"{where}: chunk {i} of {count} runs past the member")
        raw_len = min(h.chunk_bytes, h.nbytes - i * h.chunk_bytes)
        frames.append((i, view[pos:pos + clen], crc, raw_len))
        pos += clen
    if pos != len(view):
        raise ChecksumError(f"{where}: {len(view) - pos} unexpected bytes after the last chunk")
    out = np.empty(h.nbytes, dtype=np.uint8)  # every byte is written below: no zero-fill
    out_view = out.data
    itemsize = h.dtype.itemsize

    def job(frame: tuple[int, memoryview, int, int]) -> None:
        i, comp, crc, raw_len = frame
        try:
            raw = decompress(comp, raw_len)
        except Exception as e:  # the codec's own error types differ; all mean a corrupt chunk
            raise ChecksumError(f"{where}: chunk {i} does not decompress ({type(e).__name__}: {e})") from None
        if len(raw) != raw_len:
            raise ChecksumError(f"{where}: chunk {i} decompresses to {len(raw)} bytes, expected {raw_len}")
        target = out_view[i * h.chunk_bytes:i * h.chunk_bytes + raw_len]
        if h.shuffle:
            _unshuffle_into(target, raw, itemsize)
        else:
            target[:] = raw
        if zlib.crc32(target) != crc:
            raise ChecksumError(f"{where}: chunk {i} fails its CRC check after decompression")

    for _ in _pool().map(job, frames):
        pass
    dt = dtype if dtype is not None else h.dtype
    arr = out.view(dt) if h.nbytes else np.zeros(0, dt)
    return arr.reshape(h.shape, order="F" if h.fortran_order else "C")

