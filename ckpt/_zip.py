"""A small zip container: a deterministic streaming writer and a validating reader.

Why not :mod:`zipfile`: the writer must align member data to 64 bytes (so readers
can memory-map arrays), produce the same bytes for the same input, and hash while
it streams; the reader must check a hostile file (names, overlaps, sizes, ratios)
before it reads or allocates anything. The output is an ordinary zip that
``zipfile``, ``numpy.load`` and ``unzip`` read.
"""

from __future__ import annotations

import os
import re
import struct
import threading
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterable, Iterator, NoReturn, Optional, Union

from . import _crc, _digest, _limits, _writeback
from .errors import ChecksumError, FormatError, InternalError

Buffer = Union[bytes, bytearray, memoryview]

LOCAL_SIG = b"PK\x03\x04"
CENTRAL_SIG = b"PK\x01\x02"
EOCD_SIG = b"PK\x05\x06"
ZIP64_EOCD_SIG = b"PK\x06\x06"
ZIP64_LOCATOR_SIG = b"PK\x06\x07"
DESCRIPTOR_SIG = b"PK\x07\x08"

_LOCAL = struct.Struct("<4s5H3I2H")  # 30 bytes
_CENTRAL = struct.Struct("<4s6H3I5HII")  # 46 bytes
_EOCD = struct.Struct("<4s4H2IH")  # 22 bytes
_ZIP64_EOCD = struct.Struct("<4sQ2H2I4Q")  # 56 bytes
_ZIP64_LOCATOR = struct.Struct("<4sIQI")  # 20 bytes

STORED = 0
DEFLATED = 8
_FLAG_ENCRYPTED = 0x1
_FLAG_DESCRIPTOR = 0x8
_FLAG_UTF8 = 0x800
_KNOWN_FLAGS = 0x1 | 0x2 | 0x4 | _FLAG_DESCRIPTOR | _FLAG_UTF8  # encryption refused below; the rest zipfile refuses
_MAX_NEEDED_VERSION = 63  # zipfile's MAX_EXTRACT_VERSION
_U32 = 0xFFFFFFFF
_U16 = 0xFFFF
_DOS_TIME = 0  # 00:00:00
_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01: fixed, so output is deterministic
_MADE_BY = (3 << 8) | 45  # Unix, spec 4.5
_EXTERNAL_ATTR = (0o100644 << 16)
_ALIGN_EXTRA_ID = 0xD935  # the id Android's zipalign uses for padding records


_SMALL = 256 << 10  # members up to this size are gathered first: header, name and data in one write, no patch
_INLINE = 64 << 10  # digests of members up to this size run on the writing thread (a hand-off costs more)
_BEHIND_BYTES = 16 << 20  # at most this many written bytes wait for their digest (bounds memory for fresh chunks)
_BEHIND_STREAMED = 4 << 20  # the same for compressed members, whose every chunk is fresh memory
_POOL: Optional[ThreadPoolExecutor] = None
_POOL_LOCK = threading.Lock()


def _hasher() -> ThreadPoolExecutor:
    """One process-wide thread that hashes what the writers wrote (in order: one hasher's updates never race)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-hash")
        return _POOL


class _Behind:
    """Digests that run behind the writer, across members, on the hashing thread.

    Why: a member used to wait for its digest before the next one started, so the writing thread
    and the hashing one took turns; now the writer only waits when more than ``_BEHIND_BYTES`` are
    written but not yet hashed, or when a digest is asked for (deduplication, the manifest). The
    chunks handed over are kept alive by their futures and must not be changed by their source.
    """

    def __init__(self) -> None:
        self._queue: deque[tuple[Future[Any], int]] = deque()
        self._bytes = 0

    def update(self, h: _digest.Hasher, view: memoryview, limit: int = 0) -> None:
        self._hand(h.update, len(view), limit, view)

    def hexdigest(self, h: _digest.Hasher) -> Future[str]:
        return self._hand(h.hexdigest, 0, 0)

    def digest_of(self, h: _digest.Hasher, parts: list[memoryview]) -> Future[str]:
        """The digest of a whole small member, in one hand-off (three cost more than hashing 256 KiB)."""
        def run() -> str:
            for part in parts:
                h.update(part)
            return h.hexdigest()

        return self._hand(run, sum(len(p) for p in parts), 0)

    def _hand(self, fn: Any, nbytes: int, limit: int, *args: Any) -> Future[Any]:
        """Queue ``fn(*args)`` on the hashing thread; wait while more than ``limit`` bytes are unhashed."""
        fut = _hasher().submit(fn, *args)
        self._queue.append((fut, nbytes))
        self._bytes += nbytes
        while self._bytes > (limit or _BEHIND_BYTES):
            self._pop()
        return fut

    def _pop(self) -> None:
        fut, n = self._queue.popleft()
        self._bytes -= n
        fut.result()

    def drain(self) -> None:
        """Wait for every digest handed over (also after a failure: the chunks may be reused then)."""
        while self._queue:
            try:
                self._pop()
            except BaseException:
                self.drain()
                raise


@dataclass
class Member:
    """One zip entry, as the central directory and its local header describe it."""

    name: str
    header_offset: int
    data_offset: int
    size: int
    compressed_size: int
    crc: int
    method: int
    flags: int = 0


class Written:
    """What the writer recorded for a member it wrote: its entry and its content digest.

    The digest may still be computing on the hashing thread; reading it waits for it.
    """

    def __init__(self, member: Member, digest: Union[str, Future[str]], algorithm: str = "sha256") -> None:
        self.member = member
        self._digest = digest
        self.algorithm = algorithm

    @property
    def digest(self) -> str:
        if not isinstance(self._digest, str):
            self._digest = self._digest.result()
        return self._digest


def _is_seekable(f: BinaryIO) -> bool:
    try:
        return bool(f.seekable())
    except (AttributeError, OSError, ValueError):
        return False


class ZipWriter:
    """Streams stored (uncompressed) members into ``f`` and closes with a central directory.

    Member data start at offsets that are multiples of ``ALIGNMENT``. Offsets are
    relative to where ``f`` was when the writer was made.
    """

    def __init__(self, f: BinaryIO):
        self._f = f
        self._seekable = _is_seekable(f)
        self._base = f.tell() if self._seekable else 0
        self._pos = 0
        self.members: list[Member] = []
        self._names: set[str] = set()
        self._writeback = _writeback.starter(f) if self._seekable else None
        self._written_back = 0  # where the last write-out hint ended
        self._behind = _Behind()

    @property
    def can_rollback(self) -> bool:
        return self._seekable

    def _write(self, data: Buffer) -> None:
        view = memoryview(data)
        self._f.write(view)
        self._pos += view.nbytes
        if self._writeback is not None and self._pos - self._written_back >= _writeback.STEP:
            # The disk starts on what was just written while the next chunks are hashed and copied.
            self._writeback(self._base + self._written_back, self._pos - self._written_back)
            self._written_back = self._pos

    def add(self, name: str, size: int, chunks: Iterable[Buffer], *, exact: bool = True,
            algorithm: str = "sha256") -> Written:
        """Write one member of exactly ``size`` bytes taken from ``chunks``, hashed with ``algorithm``.

        With ``exact=False``, ``size`` is only an upper bound (a compressed member):
        the real size is patched into the local header afterwards (or given by a
        data descriptor when ``f`` cannot seek).
        """
        if name in self._names:
            raise InternalError(f"internal error: member {name!r} written twice")
        encoded = name.encode("utf-8")
        flags = _FLAG_UTF8 if not encoded.isascii() else 0
        zip64 = size >= _U32
        if not self._seekable:
            flags |= _FLAG_DESCRIPTOR
        header_offset = self._pos
        extra = b""
        if zip64:
            extra = struct.pack("<HHQQ", 1, 16, 0 if not self._seekable else size, 0 if not self._seekable else size)
        unpadded = header_offset + _LOCAL.size + len(encoded) + len(extra) + 6
        pad = (-unpadded) % _limits.ALIGNMENT
        extra += struct.pack("<HHH", _ALIGN_EXTRA_ID, 2 + pad, _limits.ALIGNMENT) + b"\0" * pad
        field_size = _U32 if zip64 else (0 if not self._seekable else size)
        if exact and self._seekable and size <= _SMALL:
            return self._add_small(name, encoded, flags, extra, size, chunks, algorithm)
        header = _LOCAL.pack(
            LOCAL_SIG, 45 if zip64 else 20, flags, STORED, _DOS_TIME, _DOS_DATE,
            0, field_size, field_size, len(encoded), len(extra),
        )
        self._write(header)
        self._write(encoded)
        self._write(extra)
        data_offset = self._pos
        crc = 0
        sha = _digest.new(algorithm, None, size)
        behind = size > _INLINE  # the digest runs on the hashing thread, behind this one (see _Behind)
        written = 0
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            if written + len(view) > size:
                raise InternalError(f"internal error: member {name!r} longer than its "
                                    f"{'declared' if exact else 'bound of'} {size} bytes")
            if behind:
                self._behind.update(sha, view, 0 if exact else _BEHIND_STREAMED)
            else:
                sha.update(view)
            crc = _crc.crc32(view, crc)
            self._write(view)
            written += len(view)
        if exact and written != size:
            raise InternalError(f"internal error: member {name!r} is {written} bytes, declared {size}")
        size = written
        if self._seekable:
            end = self._f.tell()
            self._f.seek(self._base + header_offset + 14)
            if zip64:
                self._f.write(struct.pack("<I", crc))
                self._f.seek(self._base + header_offset + _LOCAL.size + len(encoded) + 4)
                self._f.write(struct.pack("<QQ", size, size))
            else:
                self._f.write(struct.pack("<III", crc, size, size))
            self._f.seek(end)
        else:
            if zip64:
                self._write(struct.pack("<4sIQQ", DESCRIPTOR_SIG, crc, size, size))
            else:
                self._write(struct.pack("<4sIII", DESCRIPTOR_SIG, crc, size, size))
        return self._added(Member(name, header_offset, data_offset, size, size, crc, STORED, flags),
                           self._behind.hexdigest(sha) if behind else sha.hexdigest(), algorithm)

    def _add_small(self, name: str, encoded: bytes, flags: int, extra: bytes, size: int,
                   chunks: Iterable[Buffer], algorithm: str) -> Written:
        """A small member of known size: CRC and digest first, then one write with the final header.

        The bytes are the same as the streamed path's after its header patch; this saves two seeks
        and three writes per member, which is most of the cost of files of many tiny arrays.
        """
        parts = [memoryview(c).cast("B") for c in chunks]
        written = sum(len(p) for p in parts)
        if written != size:
            raise InternalError(f"internal error: member {name!r} is {written} bytes, declared {size}")
        crc = 0
        h = _digest.new(algorithm, None, size)
        behind = size > _INLINE
        digest: Union[str, Future[str]] = self._behind.digest_of(h, parts) if behind else ""
        for part in parts:
            crc = _crc.crc32(part, crc)
            if not behind:
                h.update(part)
        header_offset = self._pos
        header = _LOCAL.pack(LOCAL_SIG, 20, flags, STORED, _DOS_TIME, _DOS_DATE, crc, size, size,
                             len(encoded), len(extra))
        head = header + encoded + extra
        self._write(b"".join([head, *parts]) if size <= 4096 else head)
        if size > 4096:
            for part in parts:
                self._write(part)
        return self._added(Member(name, header_offset, header_offset + len(head), size, size, crc, STORED, flags),
                           digest if behind else h.hexdigest(), algorithm)

    def _added(self, member: Member, digest: Union[str, Future[str]], algorithm: str) -> Written:
        self.members.append(member)
        self._names.add(member.name)
        return Written(member, digest, algorithm)

    def rollback(self, member: Member) -> None:
        """Drop the last member written (used to deduplicate content after the fact)."""
        if not self._seekable or not self.members or self.members[-1] is not member:
            raise InternalError("internal error: can only roll back the last member of a seekable file")
        self.members.pop()
        self._names.discard(member.name)
        self._f.seek(self._base + member.header_offset)
        self._f.truncate()
        self._pos = member.header_offset
        self._written_back = min(self._written_back, self._pos)

    def drain(self) -> None:
        """Wait until every member written so far is hashed (a failed save calls it before giving up)."""
        self._behind.drain()

    def finish(self) -> int:
        """Write the central directory and end records; return the archive's size."""
        self._behind.drain()
        cd_offset = self._pos
        directory: list[bytes] = []  # written at once: one write, not three per member
        for m in self.members:
            encoded = m.name.encode("utf-8")
            extra_fields = b""
            size_field = m.size
            offset_field = m.header_offset
            if m.size >= _U32:
                extra_fields += struct.pack("<QQ", m.size, m.compressed_size)
                size_field = _U32
            if m.header_offset >= _U32:
                extra_fields += struct.pack("<Q", m.header_offset)
                offset_field = _U32
            extra = struct.pack("<HH", 1, len(extra_fields)) + extra_fields if extra_fields else b""
            directory += [
                _CENTRAL.pack(
                    CENTRAL_SIG, _MADE_BY, 45 if extra else 20, m.flags, m.method, _DOS_TIME, _DOS_DATE,
                    m.crc, size_field, size_field, len(encoded), len(extra), 0, 0, 0,
                    _EXTERNAL_ATTR, offset_field,
                ),
                encoded,
                extra,
            ]
        self._write(b"".join(directory))
        cd_size = self._pos - cd_offset
        count = len(self.members)
        if count >= _U16 or cd_offset >= _U32 or cd_size >= _U32:
            z64_offset = self._pos
            self._write(_ZIP64_EOCD.pack(ZIP64_EOCD_SIG, 44, _MADE_BY, 45, 0, 0, count, count, cd_size, cd_offset))
            self._write(_ZIP64_LOCATOR.pack(ZIP64_LOCATOR_SIG, 0, z64_offset, 1))
            self._write(_EOCD.pack(EOCD_SIG, 0, 0, _U16, _U16, _U32, _U32, 0))
        else:
            self._write(_EOCD.pack(EOCD_SIG, 0, 0, count, count, cd_size, cd_offset, 0))
        self._f.flush()
        return self._pos


_DRIVE = re.compile(r"^[A-Za-z]:")


def check_member_name(name: str, file: Optional[str]) -> None:
    """Refuse names that could escape a directory or confuse a reader."""
    problem = member_name_problem(name)
    if problem:
        raise FormatError(f"{file}: zip member name {name!r} {problem}; refusing the file", file=file)


def member_name_problem(name: str) -> Optional[str]:
    """Why a reader refuses ``name`` as a member name, or None (writers check names with this too)."""
    problem = None
    if not name:
        problem = "is empty"
    elif len(name.encode("utf-8", "surrogateescape")) > _limits.MAX_NAME_BYTES:
        problem = f"is longer than {_limits.MAX_NAME_BYTES} bytes"
    elif "\x00" in name:
        problem = "contains a NUL byte"
    elif "\\" in name:
        problem = "contains a backslash"
    elif name.startswith("/") or _DRIVE.match(name):
        problem = "is an absolute path"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        problem = "has an empty, '.' or '..' path component"
    return problem


class ZipReader:
    """Parses and validates a zip's directory; reads members with bounds and CRC checks.

    Validation happens in the constructor, before any member is read: the end
    records, every central directory entry and local header, name rules,
    duplicates, overlaps, declared sizes and compression ratios.
    """

    def __init__(self, f: BinaryIO, *, file: Optional[str] = None):
        self._f = f
        self.file = file
        self._base = f.tell()
        f.seek(0, 2)
        self.size = f.tell() - self._base
        self.members: dict[str, Member] = {}
        # Remote files (S3) set ``ckpt_lazy_headers``: each local header is then checked when its
        # member is first read, so opening costs one tail read instead of a request per member.
        self._lazy = bool(getattr(f, "ckpt_lazy_headers", False))
        self._next_start: dict[str, tuple[int, Optional[str]]] = {}
        self._parse()

    # -- low-level reads -------------------------------------------------
    def _pread(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0 or offset + n > self.size:
            self._fail(f"a read of {n} bytes at offset {offset} runs past the end of the file ({self.size} bytes)")
        self._f.seek(self._base + offset)
        data = self._f.read(n)
        if len(data) != n:
            self._fail(f"short read at offset {offset}: wanted {n} bytes, got {len(data)}")
        return data

    def _fail(self, what: str) -> NoReturn:
        raise FormatError(f"{self.file}: not a valid zip file: {what}", file=self.file)

    # -- directory parsing -----------------------------------------------
    def _find_eocd(self) -> int:
        tail_len = min(self.size, _EOCD.size + 0xFFFF)
        tail = self._pread(self.size - tail_len, tail_len)
        end = len(tail)
        last = tail.rfind(EOCD_SIG)
        while True:
            pos = tail.rfind(EOCD_SIG, 0, end)
            if pos < 0:
                self._fail("no end-of-central-directory record (truncated file?)")
            if pos + _EOCD.size <= len(tail):
                comment_len = struct.unpack_from("<H", tail, pos + 20)[0]
                if pos + _EOCD.size + comment_len == len(tail):
                    break
            end = pos
        if last != pos:
            # zipfile takes the last signature it finds; another record in the comment would
            # make it (and numpy) read a different directory from ours.
            self._fail(f"a second end-of-central-directory record at offset {self.size - tail_len + last} "
                       "(in the archive comment); readers would disagree on which one counts")
        return self.size - tail_len + pos

    def _end_records(self) -> tuple[int, int, int, int]:
        """(entry count, directory size, directory offset, where the directory must end), all checked."""
        eocd_pos = self._find_eocd()
        _, disk, cd_disk, n_this, n_total, cd_size, cd_offset, _ = _EOCD.unpack(self._pread(eocd_pos, _EOCD.size))
        dir_end = eocd_pos
        loc_pos = eocd_pos - _ZIP64_LOCATOR.size
        has_locator = loc_pos >= 0 and self._pread(loc_pos, 4) == ZIP64_LOCATOR_SIG
        if _U16 in (n_this, n_total) or _U32 in (cd_size, cd_offset) or has_locator:
            # zipfile uses a locator whenever one precedes the end record, and reads the zip64
            # record right before it whatever the locator's pointer says: so must we, and they must agree.
            if not has_locator:
                self._fail("zip64 end record expected but missing")
            _, loc_disk, z64_pos, n_disks = _ZIP64_LOCATOR.unpack(self._pread(loc_pos, _ZIP64_LOCATOR.size))
            if z64_pos != loc_pos - _ZIP64_EOCD.size or loc_disk != 0 or n_disks > 1:
                self._fail(f"zip64 end locator points at {z64_pos}, not at the record just before it "
                           f"({loc_pos - _ZIP64_EOCD.size})")
            rec = _ZIP64_EOCD.unpack(self._pread(z64_pos, _ZIP64_EOCD.size))
            if rec[0] != ZIP64_EOCD_SIG:
                self._fail("zip64 end record has a bad signature")
            z64 = (rec[4], rec[5], rec[6], rec[7], rec[8], rec[9])
            for field_name, small, big, sat in (("entry count", n_this, z64[2], _U16), ("entry count", n_total, z64[3], _U16),
                                                ("directory size", cd_size, z64[4], _U32),
                                                ("directory offset", cd_offset, z64[5], _U32)):
                if small not in (sat, big):
                    self._fail(f"the end record's {field_name} ({small}) contradicts the zip64 record's ({big})")
            disk, cd_disk, n_this, n_total, cd_size, cd_offset = z64
            dir_end = z64_pos
        if disk != 0 or cd_disk != 0 or n_this != n_total:
            self._fail("multi-disk archives are not supported")
        if n_total > _limits.MAX_MEMBERS:
            self._fail(f"{n_total} members, more than the limit of {_limits.MAX_MEMBERS}")
        if cd_offset + cd_size != dir_end:
            # zipfile shifts every offset by the difference (it assumes prepended data): it and
            # we would read different bytes.
            self._fail(f"central directory ({cd_size} bytes at {cd_offset}) ends at {cd_offset + cd_size}, "
                       f"but the end records start at {dir_end}")
        if n_total * _CENTRAL.size > cd_size:
            self._fail(f"central directory of {cd_size} bytes cannot hold {n_total} entries")
        return n_total, cd_size, cd_offset, dir_end

    def _parse(self) -> None:
        if self.size < _EOCD.size:
            self._fail(f"only {self.size} bytes long")
        n_total, cd_size, cd_offset, _ = self._end_records()
        directory = self._pread(cd_offset, cd_size)
        pos = 0
        for _ in range(n_total):
            if pos + _CENTRAL.size > len(directory):
                self._fail("central directory is truncated")
            (sig, _, needed, flags, method, _, _, crc, csize, usize, name_len, extra_len, comment_len,
             _, _, _, offset) = _CENTRAL.unpack_from(directory, pos)
            if sig != CENTRAL_SIG:
                self._fail(f"central directory entry at {cd_offset + pos} has a bad signature")
            if needed & 0xFF > _MAX_NEEDED_VERSION or flags & ~_KNOWN_FLAGS:
                self._fail(f"central directory entry at {cd_offset + pos} needs zip version {needed & 0xFF} or "
                           f"flags {flags:#06x} that zipfile does not read")
            pos += _CENTRAL.size
            if pos + name_len + extra_len + comment_len > len(directory):
                self._fail("central directory entry runs past the directory")
            raw_name = directory[pos:pos + name_len]
            extra = directory[pos + name_len:pos + name_len + extra_len]
            pos += name_len + extra_len + comment_len
            name = self._decode_name(raw_name, flags)
            usize, csize, offset = self._zip64_fields(extra, usize, csize, offset, name)
            if flags & _FLAG_ENCRYPTED:
                self._fail(f"member {name!r} is encrypted")
            if method not in (STORED, DEFLATED):
                self._fail(f"member {name!r} uses compression method {method}; only stored (0) and deflate (8) are read")
            if method == STORED and usize != csize:
                self._fail(f"stored member {name!r} declares {usize} bytes but occupies {csize}")
            if usize > _limits.MAX_MEMBER_BYTES:
                self._fail(f"member {name!r} declares {usize} bytes, over the limit of {_limits.MAX_MEMBER_BYTES}")
            if method == DEFLATED and usize > max(csize, 1) * _limits.MAX_DEFLATE_RATIO:
                self._fail(f"member {name!r} declares a compression ratio over {_limits.MAX_DEFLATE_RATIO}:1, "
                           "more than deflate can reach")
            check_member_name(name, self.file)
            if name in self.members:
                self._fail(f"member name {name!r} appears twice")
            self.members[name] = Member(name, offset, -1, usize, csize, crc, method, flags)
        if pos != len(directory):
            # zipfile reads entries until the directory's bytes run out, whatever the count says.
            self._fail(f"central directory holds {len(directory) - pos} bytes after its {n_total} counted entries")
        for name in self.members:
            if name.endswith(".npy") and name[:-4] in self.members:
                self._fail(f"members {name[:-4]!r} and {name!r} are the same key to numpy.load")
        self._locate_data(cd_offset)

    def _decode_name(self, raw: bytes, flags: int) -> str:
        try:
            return raw.decode("utf-8") if flags & _FLAG_UTF8 else raw.decode("cp437")
        except UnicodeDecodeError:
            self._fail(f"member name {raw!r} is not valid UTF-8")

    def _zip64_fields(self, extra: bytes, usize: int, csize: int, offset: int, name: str) -> tuple[int, int, int]:
        pos = 0
        while pos + 4 <= len(extra):
            tag, length = struct.unpack_from("<HH", extra, pos)
            body = extra[pos + 4:pos + 4 + length]
            if len(body) != length:
                self._fail(f"member {name!r} has a truncated extra field")
            if tag == 1:
                values = []
                for i in range(0, len(body) - len(body) % 8, 8):
                    values.append(struct.unpack_from("<Q", body, i)[0])
                it = iter(values)
                try:
                    if usize == _U32:
                        usize = next(it)
                    if csize == _U32:
                        csize = next(it)
                    if offset == _U32:
                        offset = next(it)
                except StopIteration:
                    self._fail(f"member {name!r} has a short zip64 extra field")
            pos += 4 + length
        return usize, csize, offset

    def _locate_data(self, cd_offset: int) -> None:
        ordered = sorted(self.members.values(), key=lambda m: m.header_offset)
        # What follows each member (the next one's header, or the directory): a member's data must
        # end there, with at most a data descriptor between (checked by _locate).
        self._next_start = {m.name: ((ordered[i + 1].header_offset, ordered[i + 1].name) if i + 1 < len(ordered)
                                     else (cd_offset, None)) for i, m in enumerate(ordered)}
        self._check_gap(None, 0, ordered[0].header_offset if ordered else cd_offset)
        previous_end, previous = 0, None
        for m in ordered:  # overlaps are caught from the directory alone (a local header is >= 30 bytes)
            if m.header_offset < previous_end:
                self._fail(f"members {previous!r} and {m.name!r} overlap (a zip bomb or a damaged file)")
            previous_end, previous = m.header_offset + _LOCAL.size + m.compressed_size, m.name
        if not self._lazy:
            self._prefetch_headers(ordered)
            for m in ordered:
                self.locate(m)

    def _prefetch_headers(self, ordered: list[Member]) -> None:
        """Ask the kernel for every local header's page at once before reading them one by one.

        Why: on a cold cache each header read is a disk round trip, one after the other (hundreds per
        model); asked for together (``POSIX_FADV_WILLNEED``, which does not wait) the disk serves them
        in parallel. On cached pages this is a few microseconds per member.
        """
        advise = getattr(os, "posix_fadvise", None)
        if advise is None or len(ordered) < 16:
            return
        try:
            fd = self._f.fileno()
            for m in ordered:
                advise(fd, self._base + m.header_offset, _LOCAL.size + 256, os.POSIX_FADV_WILLNEED)
        except (AttributeError, OSError, ValueError):  # not a real file (BytesIO, a wrapper): nothing to do
            return

    def locate(self, m: Member) -> Member:
        """Read and check ``m``'s local header (once): its name, where its data starts, and that its
        data ends where the next member (or the directory) begins. Opening does this for every
        member, except over remote files that defer it to the member's first read (few requests)."""
        if m.data_offset >= 0:
            return m
        # The header and the name it should hold, in one read (a different name is read again below).
        guess = len(m.name.encode("utf-8", "surrogateescape"))
        head = self._pread(m.header_offset, min(_LOCAL.size + guess, self.size - m.header_offset))
        if len(head) < _LOCAL.size:
            self._fail(f"local header of member {m.name!r} at offset {m.header_offset} runs past the end of the file")
        sig, _, local_flags, _, _, _, _, _, _, name_len, extra_len = _LOCAL.unpack(head[:_LOCAL.size])
        if sig != LOCAL_SIG:
            self._fail(f"local header of member {m.name!r} at offset {m.header_offset} has a bad signature")
        local_name = (head[_LOCAL.size:] if name_len == guess
                      else self._pread(m.header_offset + _LOCAL.size, name_len))
        try:  # decoded as zipfile decodes it: by the local header's own UTF-8 flag
            local_text = local_name.decode("utf-8" if local_flags & _FLAG_UTF8 else "cp437")
        except UnicodeDecodeError:
            local_text = None
        if local_text != m.name:
            self._fail(f"member {m.name!r}: local header names it {local_name!r}")
        data_offset = m.header_offset + _LOCAL.size + name_len + extra_len
        # Members tile the file from offset 0 to the directory: no bytes a streaming reader could
        # take for a member the directory does not list (only a data descriptor may follow data).
        end = data_offset + m.compressed_size
        following, nxt = self._next_start[m.name]
        if end > following:
            if nxt is None:
                self._fail(f"member {m.name!r} ends at {end}, past the central directory at {following}")
            self._fail(f"members {m.name!r} and {nxt!r} overlap (a zip bomb or a damaged file)")
        self._check_gap(m, end, following)
        m.data_offset = data_offset
        return m

    def _check_gap(self, before: Optional[Member], start: int, end: int) -> None:
        gap = end - start
        if gap == 0:
            return
        if before is not None and before.flags & _FLAG_DESCRIPTOR and gap in (12, 16, 20, 24):
            return
        where = f"after member {before.name!r}" if before is not None else "before the first member"
        self._fail(f"{gap} bytes {where} at offset {start} belong to no member (hidden data other readers "
                   "may read)")

    # -- member access ---------------------------------------------------
    def chunks(self, m: Member, *, check_crc: bool = True, chunk: int = _limits.CHUNK_BYTES) -> Iterator[bytes]:
        """Yield the uncompressed bytes of ``m``, checking its length and (optionally) CRC."""
        crc = 0
        produced = 0
        self.locate(m)
        if m.method == STORED:
            pos, left = m.data_offset, m.size
            while left:
                n = min(chunk, left)
                data = self._pread(pos, n)
                pos += n
                left -= n
                if check_crc:
                    crc = _crc.crc32(data, crc)
                produced += n
                yield data
        else:
            d = zlib.decompressobj(-15)
            pos, left = m.data_offset, m.compressed_size
            pending = b""
            while left or pending:
                if not pending:
                    n = min(chunk, left)
                    pending = self._pread(pos, n)
                    pos += n
                    left -= n
                try:
                    out = d.decompress(pending, min(chunk, m.size - produced + 1))
                except zlib.error as e:
                    raise ChecksumError(f"{self.file}: member {m.name!r} is not valid deflate data ({e})",
                                        file=self.file, member=m.name) from None
                pending = d.unconsumed_tail
                produced += len(out)
                if produced > m.size:
                    self._fail(f"member {m.name!r} inflates past its declared {m.size} bytes")
                if check_crc:
                    crc = _crc.crc32(out, crc)
                if out:
                    yield out
                if d.eof:
                    break
        if produced != m.size:
            self._fail(f"member {m.name!r} holds {produced} bytes, its directory entry says {m.size}")
        if check_crc and crc != m.crc:
            raise ChecksumError(
                f"{self.file}: member {m.name!r} fails its CRC check (recorded {m.crc:08x}, computed {crc:08x})",
                file=self.file, member=m.name, expected=f"{m.crc:08x}", found=f"{crc:08x}",
            )

    def read(self, m: Member, *, check_crc: bool = True) -> bytes:
        """The whole member, uncompressed."""
        self.locate(m)
        if m.method == STORED:
            data = self._pread(m.data_offset, m.size)
            found = _crc.crc32(data) if check_crc else m.crc
            if found != m.crc:
                raise ChecksumError(
                    f"{self.file}: member {m.name!r} fails its CRC check (recorded {m.crc:08x}, computed {found:08x})",
                    file=self.file, member=m.name, expected=f"{m.crc:08x}", found=f"{found:08x}",
                )
            return data
        return b"".join(self.chunks(m, check_crc=check_crc))
