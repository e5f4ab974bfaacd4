"""Compressed array members: byte planes + zstd (or lz4), in independent chunks, in parallel.

Why this layout: trained float weights have random mantissas but clustered
exponents. Splitting each chunk into byte planes (byte *k* of every element
together) puts the exponent bytes in one plane, which compresses to about a third,
while the mantissa planes are noise that no codec shrinks. Each plane is therefore
compressed or stored on its own: the codec only spends time where it pays (on
trained float32 weights it sees a quarter of the bytes), and the stored planes cost
one copy. Chunks are independent, so both directions run on every core (the codecs,
numpy copies and CRC-32 release the GIL), and memory stays bounded by a few chunks.
Each chunk carries the CRC-32 of its raw bytes, so a corrupt chunk is reported,
never returned as garbage.

Member layout (ckpt's own encoding, docs/FORMAT.md section 2.2)::

    b"CKZ2" | u32 header length | header JSON | chunk*
    chunk = u32 CRC-32 of the raw chunk | plane table | plane data
    plane table = one (u32 stored length, u8 method) per plane; method 0 stored, 1 codec

Header JSON: codec, level, filter ("shuffle" or "none"), descr (numpy dtype
string or ml_dtypes name), shape, fortran_order, nbytes, chunk_bytes.
"""

from __future__ import annotations

import json
import math
import os
import struct
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np

from . import _crc, _json, _limits, _npy
from .errors import ChecksumError, FormatError, InternalError, MissingDependencyError

Buffer = Union[bytes, bytearray, memoryview]

MAGIC = b"CKZ2"
CODECS = ("zstd", "lz4")
#: Raw bytes per chunk: small enough for caches and bounded memory, large enough for the codec.
CHUNK_BYTES = 1 << 20
#: Arrays whose sampled ratio (stored / raw) is above this are stored as plain .npy.
RAW_THRESHOLD = 0.95
#: A plane is worth compressing if its sample shrinks to this fraction; a compressed plane
#: that ends up larger than this is stored instead.
PLANE_THRESHOLD = 0.97
STORED, PACKED = 0, 1
_SAMPLE_BYTES = 64 * 1024
_CRC = struct.Struct("<I")
_PLANE = struct.Struct("<IB")
_WORKERS: Optional[ThreadPoolExecutor] = None
_WORKERS_LOCK = threading.Lock()
_LOCAL = threading.local()


def _workers() -> int:
    """Codec threads: every core, up to 16 (past that the disk, not the codec, sets the pace)."""
    return max(1, min(16, os.cpu_count() or 1))


def _pool() -> ThreadPoolExecutor:
    global _WORKERS
    with _WORKERS_LOCK:
        if _WORKERS is None:
            _WORKERS = ThreadPoolExecutor(max_workers=_workers(), thread_name_prefix="ckpt-codec")
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
        if c.level is not None and type(c.level) is not int:
            raise ValueError(f"compression level must be an int or None, not {c.level!r}")
        _codec_functions(c.codec, c.level)  # fail early when the codec library is missing
        return c


def _zstd_compressor(level: Optional[int]) -> Any:
    """This thread's compressor for ``level`` (zstd contexts are reusable but not thread-safe)."""
    import zstandard

    cache = getattr(_LOCAL, "zstd", None)
    if cache is None:
        cache = _LOCAL.zstd = {}
    if level not in cache:
        if level is None:
            # Level 1 with matches of 7+ bytes, the smallest hash table and a window as large as a
            # chunk: exponent planes are mostly entropy-coded literals with few real matches, and
            # there this is both smaller and three to four times as fast as plain level 1 (measured:
            # ratio 0.347 vs 0.396 at ~930 vs ~260 MB/s); on runs, sparse and integer planes it is
            # as small or smaller.
            params = zstandard.ZstdCompressionParameters.from_level(1, min_match=7, hash_log=6, window_log=20)
            cache[level] = zstandard.ZstdCompressor(compression_params=params)
        else:
            cache[level] = zstandard.ZstdCompressor(level=level)
    return cache[level]


def _codec_functions(codec: str, level: Optional[int]) -> tuple[Callable[[Any], bytes], Callable[[Any, int], bytes]]:
    if codec == "zstd":
        try:
            import zstandard
        except ImportError:
            raise MissingDependencyError("zstd compression (writing, or reading zstd members) needs the zstandard "
                                         "package, which is not installed: pip install 'ckpt[zstd]'",
                                         package="zstandard", extra="zstd") from None

        def compress(data: Any) -> bytes:
            return _zstd_compressor(level).compress(data)

        def decompress(data: Any, size: int) -> bytes:
            # The frame must declare its size (ckpt's writer always does): python-zstandard trusts a
            # declared size over max_output_size, so a forged frame could otherwise inflate to far
            # more memory than its plane. Bytes after the frame, which it would skip, are refused.
            declared = zstandard.frame_content_size(data)
            if declared != size:
                raise ValueError(f"the frame declares {declared} bytes (-1: unknown)")
            frame = zstandard.ZstdDecompressor().decompressobj(write_size=max(1, size))
            out = frame.decompress(data)
            if not frame.eof or frame.unused_data:
                raise ValueError("the frame is cut short" if not frame.eof else
                                 f"{len(frame.unused_data)} bytes follow the frame")
            return out

        return compress, decompress
    if codec == "lz4":
        try:
            import lz4.block
        except ImportError:
            raise MissingDependencyError("lz4 compression (writing, or reading lz4 members) needs the lz4 "
                                         "package, which is not installed: pip install 'ckpt[lz4]'",
                                         package="lz4", extra="lz4") from None
        accel = 1 if level is None else max(1, int(level))

        def compress_lz4(data: Any) -> bytes:
            return lz4.block.compress(data, mode="fast", acceleration=accel, store_size=False)

        def decompress_lz4(data: Any, size: int) -> bytes:
            return lz4.block.decompress(data, uncompressed_size=size)

        return compress_lz4, decompress_lz4
    raise ValueError(f"unknown codec {codec!r}")


_WORDS: dict[int, np.dtype[Any]] = {2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}


def split_planes(piece: Any, itemsize: int) -> list[np.ndarray]:
    """The byte planes of ``piece`` as contiguous arrays: plane k holds byte k of every element.

    For 2-, 4- and 8-byte elements, shifting little-endian words is vectorized and about 1.7x as
    fast as strided byte copies; other widths use the strided copies."""
    src = np.frombuffer(piece, dtype=np.uint8)
    if itemsize == 1:
        return [src]
    word = _WORDS.get(itemsize)
    if word is None:
        grid = src.reshape(-1, itemsize)
        return [np.ascontiguousarray(grid[:, k]) for k in range(itemsize)]
    values = src.view(word)
    shifted = np.empty_like(values)
    planes = [values.astype(np.uint8)]  # the cast keeps the low byte
    for k in range(1, itemsize):
        np.right_shift(values, 8 * k, out=shifted)
        planes.append(shifted.astype(np.uint8))
    return planes


def join_planes(target: np.ndarray, planes: Sequence[np.ndarray]) -> None:
    """Write the elements whose byte planes are ``planes`` into the uint8 array ``target``."""
    itemsize = len(planes)
    if itemsize == 1:
        target[:] = planes[0]
        return
    word = _WORDS.get(itemsize)
    if word is None:
        grid = target.reshape(-1, itemsize)
        for k, plane in enumerate(planes):
            grid[:, k] = plane
        return
    values = target.view(word)
    np.copyto(values, planes[-1])
    for plane in reversed(planes[:-1]):
        np.left_shift(values, 8, out=values)
        np.bitwise_or(values, plane, out=values)


def plan(raw: memoryview, itemsize: int, c: Compression) -> Optional[tuple[bool, ...]]:
    """Which byte planes to compress, from samples at the start and the middle of the array;
    None when the array would barely shrink (store it as plain .npy)."""
    compress, _ = _codec_functions(c.codec, c.level)
    n = len(raw)
    if n < 4096:
        return None
    step = max(itemsize, (_SAMPLE_BYTES // itemsize) * itemsize)
    sizes = [0] * itemsize
    packed = [0] * itemsize
    starts = [0] if n <= 2 * step else [0, (n // 2) // itemsize * itemsize]  # small arrays: sampled once
    for start in starts:
        piece = raw[start:start + step]
        piece = piece[:len(piece) // itemsize * itemsize]
        for k, plane in enumerate(split_planes(piece, itemsize)):
            sizes[k] += len(plane)
            packed[k] += len(compress(plane))
    use = tuple(p <= PLANE_THRESHOLD * s for p, s in zip(packed, sizes))
    total = sum(sizes)
    stored = sum(p if u else s for p, s, u in zip(packed, sizes, use))
    if not total or stored > RAW_THRESHOLD * total:
        return None
    return use


def parallel_map(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``[fn(x) for x in items]`` on the codec threads (for work that releases the GIL)."""
    return list(_pool().map(fn, items)) if len(items) > 1 else [fn(x) for x in items]


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
    """An upper bound of a compressed member's size (for deciding on zip64 before writing):
    a plane is never stored larger than it is raw."""
    chunks = max(1, math.ceil(nbytes / _chunk_bytes(itemsize)))
    return 4096 + nbytes + chunks * (_CRC.size + itemsize * _PLANE.size)


def encode_chunk(piece: memoryview, itemsize: int, use: Sequence[bool], compress: Callable[[Any], bytes]) -> list[Buffer]:
    """One chunk's bytes: CRC, plane table, then each plane compressed or stored."""
    parts: list[Buffer] = []
    table = [_CRC.pack(_crc.crc32(piece))]
    for k, data in enumerate(split_planes(piece, itemsize)):  # a 1-byte plane is ``piece`` itself: no copy
        if use[k]:
            packed = compress(data)
            if len(packed) <= PLANE_THRESHOLD * len(data):
                parts.append(packed)
                table.append(_PLANE.pack(len(packed), PACKED))
                continue
        parts.append(data.data.cast("B"))
        table.append(_PLANE.pack(len(data), STORED))
    return [b"".join(table), *parts]


@dataclass
class _Job:
    head: bytes
    raw: memoryview
    itemsize: int
    use: tuple[bool, ...]
    compress: Callable[[Any], bytes]

    def starts(self) -> range:
        return range(0, len(self.raw), _chunk_bytes(self.itemsize))

    def run(self, start: int) -> list[Buffer]:
        return encode_chunk(self.raw[start:start + _chunk_bytes(self.itemsize)], self.itemsize, self.use, self.compress)


class Encoder:
    """Compresses the arrays of one slot ahead of the writer, across member boundaries.

    The writer asks for members in order; chunks of the next members are already
    being compressed while it writes this one, so no core idles at array boundaries.
    At most ``window`` chunks are in flight: memory stays bounded by a few chunks per
    codec thread (8 MiB of input on 2 cores, 36 at most), never by the model.
    """

    def __init__(self, window: Optional[int] = None):
        self._jobs: list[_Job] = []
        self._queue: deque[tuple[int, Future[list[Buffer]]]] = deque()
        self._cursor = (0, 0)  # next (job, chunk) to submit
        self._last = -1  # the last member the writer asked for
        self._window = window or 2 * _workers() + 4
        self._lock = threading.Lock()

    def add(self, head: bytes, raw: memoryview, itemsize: int, use: tuple[bool, ...], c: Compression) -> int:
        """Register one array; returns the index to ask ``chunks`` for."""
        compress, _ = _codec_functions(c.codec, c.level)
        self._jobs.append(_Job(head, raw, itemsize, use, compress))
        return len(self._jobs) - 1

    def _fill(self) -> None:
        job, chunk = self._cursor
        while len(self._queue) < self._window and job < len(self._jobs):
            starts = self._jobs[job].starts()
            if chunk >= len(starts):
                job, chunk = job + 1, 0
                continue
            self._queue.append((job, _pool().submit(self._jobs[job].run, starts[chunk])))
            chunk += 1
        self._cursor = (job, chunk)

    def chunks(self, index: int) -> Iterator[Buffer]:
        """The bytes of member ``index``: its header, then its chunks as they are ready."""
        job = self._jobs[index]
        yield job.head
        with self._lock:
            in_order = index > self._last
            if in_order:
                self._last = index
                while self._queue and self._queue[0][0] < index:  # members the writer skipped (dedup)
                    self._queue.popleft()[1].cancel()
                self._cursor = max(self._cursor, (index, 0))
        if not in_order:  # asked again (never by write_pack; kept correct): compress it here, in order
            for start in job.starts():
                yield from job.run(start)
            return
        for _ in job.starts():
            with self._lock:
                self._fill()
                owner, fut = self._queue.popleft()
            if owner != index:
                raise InternalError(f"internal error: compressed member {owner} queued before {index}")
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
        raise FormatError(f"{where}: not a ckpt compressed member (bad magic {bytes(data[:4])!r}, expected {MAGIC!r})")
    n = struct.unpack_from("<I", data, 4)[0]
    if n > _limits.MAX_NPY_HEADER_BYTES or 8 + n > len(data):
        raise FormatError(f"{where}: compressed member header of {n} bytes is too long or cut short")
    doc = _json.parse(data[8:8 + n], stored_bytes=None, what=f"{where}: compressed member header")
    try:
        codec, shape, nbytes, chunk = doc["codec"], doc["shape"], doc["nbytes"], doc["chunk_bytes"]
        dtype = _npy.dtype_from_name(doc["descr"], where=where)
        ok = (codec in CODECS and isinstance(shape, list) and len(shape) <= _limits.MAX_NDIM
              and all(type(s) is int and s >= 0 for s in shape) and type(nbytes) is int and type(chunk) is int
              and chunk > 0 and chunk % max(1, dtype.itemsize) == 0 and doc.get("filter") in ("shuffle", "none")
              and isinstance(doc.get("fortran_order", False), bool))
    except (KeyError, TypeError) as e:
        raise FormatError(f"{where}: compressed member header lacks {e}") from None
    if not ok or math.prod(shape) * dtype.itemsize != nbytes or nbytes > _limits.MAX_MEMBER_BYTES \
            or chunk > _limits.MAX_CODEC_CHUNK_BYTES:
        raise FormatError(f"{where}: compressed member header is inconsistent: {doc!r:.300}")
    _npy.check_shape(tuple(shape), dtype, where)
    if (doc["filter"] == "shuffle") != (dtype.itemsize > 1):
        raise FormatError(f"{where}: filter {doc['filter']!r} does not fit a {dtype.itemsize}-byte dtype")
    return Header(codec, doc.get("level"), doc["filter"] == "shuffle", dtype, tuple(shape),
                  bool(doc.get("fortran_order", False)), nbytes, chunk, 8 + n)


@dataclass(frozen=True)
class _Frame:
    index: int
    start: int  # offset of the chunk's raw bytes in the array
    raw_len: int
    crc: int
    planes: tuple[tuple[int, memoryview], ...]  # (method, stored bytes)


def _frames(view: memoryview, h: Header, where: str) -> list[_Frame]:
    """Locate every chunk and plane, checking each length against what the header allows."""
    frames = []
    pos = h.data_start
    count = math.ceil(h.nbytes / h.chunk_bytes) if h.nbytes else 0
    nplanes = h.dtype.itemsize if h.shuffle else 1
    head = _CRC.size + nplanes * _PLANE.size
    if pos + count * head > len(view):  # checked before any work: each chunk needs its table
        raise ChecksumError(f"{where}: compressed data is truncated: {h.nbytes} bytes in {count} chunks need at "
                            f"least {count * head} bytes of chunk tables; the member holds {len(view) - pos}")
    for i in range(count):
        if pos + head > len(view):
            raise ChecksumError(f"{where}: compressed data is truncated at chunk {i} of {count}")
        (crc,) = _CRC.unpack_from(view, pos)
        raw_len = min(h.chunk_bytes, h.nbytes - i * h.chunk_bytes)
        plane_len = raw_len // nplanes
        table = [_PLANE.unpack_from(view, pos + _CRC.size + k * _PLANE.size) for k in range(nplanes)]
        pos += head
        planes = []
        for k, (length, method) in enumerate(table):
            if method not in (STORED, PACKED) or (method == STORED and length != plane_len):
                raise ChecksumError(f"{where}: chunk {i} plane {k} has a bad table entry "
                                    f"(method {method}, {length} bytes for a {plane_len}-byte plane)")
            if pos + length > len(view):
                raise ChecksumError(f"{where}: chunk {i} of {count} runs past the member")
            planes.append((method, view[pos:pos + length]))
            pos += length
        frames.append(_Frame(i, i * h.chunk_bytes, raw_len, crc, tuple(planes)))
    if pos != len(view):
        raise ChecksumError(f"{where}: {len(view) - pos} unexpected bytes after the last chunk")
    return frames


def decode(data: Any, h: Header, *, where: str, dtype: Optional[np.dtype] = None) -> np.ndarray:
    """Decompress a member into a new array, chunks in parallel, each checked against its CRC."""
    return decode_many([(data, h, where, dtype)])[0]


def decode_many(items: Sequence[tuple[Any, Header, str, Optional[np.dtype]]]) -> list[np.ndarray]:
    """Decode several members (data, header, where, dtype) at once: the chunks of all of them share
    the codec threads, so many small arrays decode as fast as one large one."""
    outs, jobs = [], []
    for data, h, where, _ in items:
        _, decompress = _codec_functions(h.codec, h.level)
        frames = _frames(memoryview(data), h, where)
        try:
            out = np.empty(h.nbytes, dtype=np.uint8)  # every byte is written by the jobs: no zero-fill
        except MemoryError:
            raise FormatError(f"{where}: the array declares {h.nbytes} bytes, more than can be allocated") from None
        outs.append(out)
        jobs += [(f, out, h.dtype.itemsize if h.shuffle else 1, decompress, where) for f in frames]
    for _ in _pool().map(lambda job: _decode_chunk(*job), jobs):
        pass
    arrays = []
    for out, (_, h, _, dtype) in zip(outs, items):
        dt = dtype if dtype is not None else h.dtype
        arr = out.view(dt) if h.nbytes else np.zeros(0, dt)
        arrays.append(arr.reshape(h.shape, order="F" if h.fortran_order else "C"))
    return arrays


def _decode_chunk(f: _Frame, out: np.ndarray, itemsize: int, decompress: Callable[[Any, int], bytes],
                  where: str) -> None:
    target = out[f.start:f.start + f.raw_len]
    plane_len = f.raw_len // itemsize
    planes = []
    for k, (method, stored) in enumerate(f.planes):
        if method == PACKED:
            try:
                plane: Any = decompress(stored, plane_len)
            except Exception as e:  # the codec's own error types differ; all mean a corrupt chunk
                raise ChecksumError(f"{where}: chunk {f.index} plane {k} does not decompress "
                                    f"({type(e).__name__}: {e})") from None
            if len(plane) != plane_len:
                raise ChecksumError(f"{where}: chunk {f.index} plane {k} decompresses to {len(plane)} bytes, "
                                    f"expected {plane_len}")
        else:
            plane = stored
        planes.append(np.frombuffer(plane, dtype=np.uint8))
    join_planes(target, planes)
    if _crc.crc32(target.data) != f.crc:
        raise ChecksumError(f"{where}: chunk {f.index} fails its CRC check after decompression")
