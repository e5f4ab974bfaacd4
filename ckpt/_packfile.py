"""Pack files on disk: a validating reader and a streaming writer, below the Pack API.

A reader opens any zip: a ckpt pack (with a manifest), or a plain ``.npz`` /
objax file (no manifest), which it presents as one ``main`` arrays slot whose
integrity is checked by the zip CRCs only. The writer copies kept slots' members
verbatim (re-hashing them on the way), streams new ones, stores identical
content once, and writes the manifest last.
"""

from __future__ import annotations

import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterable, Mapping, Optional

import numpy as np

from . import _crc, _digest, _json, _limits, _readpipe, _zip, deps as _deps, manifest as _manifest
from ._members import Encoded
from ._slotnames import DEFAULT_SLOT, member_prefix
from .errors import ChecksumError, FormatError, InternalError, NotAPackError, SlotNotFoundError
from .incremental import _objects
from .manifest import MANIFEST_MEMBER, SlotInfo

_MAGICS = [
    (b"\x80", "a pickle stream (pickle protocol 2 or later)"),
    (b"7z\xbc\xaf\x27\x1c", "a 7z archive"),
    (b"\x93NUMPY", "a single .npy array file, not an .npz archive"),
    (b"\x1f\x8b", "a gzip stream"),
    (b"BZh", "a bzip2 stream"),
    (b"\xfd7zXZ", "an xz stream"),
    (b"\x89HDF", "an HDF5 file"),
    (b"Rar!", "a RAR archive"),
    (b"\x28\xb5\x2f\xfd", "a zstd stream"),
]


def sniff(head: bytes) -> Optional[str]:
    """None if ``head`` starts like a zip archive, else a description of what it is."""
    if not head:
        return "an empty file"
    if head[:4] in (_zip.LOCAL_SIG, _zip.EOCD_SIG):
        return None
    for magic, what in _MAGICS:
        if head.startswith(magic):
            return what
    if head[:1] in (b"(", b"]", b"}", b"c") and head[:2] != b"c\n":
        return "possibly a pickle stream (protocol 0/1) or other non-zip data"
    return f"not a zip archive (starts with {head[:8]!r})"


@dataclass
class _Member:
    zip: _zip.Member
    digest: Optional[str]  # None in files without a manifest: their zip CRCs are checked instead
    algorithm: str = "sha256"
    shared: bool = False  # stored outside the archive as a shared object (docs/FORMAT.md 2.3)


class PackReader:
    """Read-only view of one pack (or plain npz) file, positioned at ``f``'s current offset."""

    def __init__(self, f: BinaryIO, label: str, *, mmap: bool = False, objects_at: Optional[_objects.Where] = None):
        self.f = f
        self.label = label
        #: The checkpoint directory holding this file's shared objects (None: opened without a path).
        self.objects_at = objects_at
        start = f.tell()
        head = f.read(8)
        f.seek(start)
        what = sniff(head)
        if what is not None:
            raise NotAPackError(f"{label}: {what}; ckpt only reads zip-based pack/.npz files and never unpickles "
                                "a bare file", file=label)
        self.zip = _zip.ZipReader(f, file=label)
        # Reads copy by default (pread): a mapped file that another program truncates kills the
        # reader with SIGBUS, while a short read is a FormatError. ``mmap=True`` is for callers that
        # know the file is not changed while their zero-copy views live (docs/FORMAT.md 6).
        self.mm = _map(f) if mmap and start == 0 else None
        self._verified: set[str] = set()
        self.members: dict[str, _Member] = {}
        if MANIFEST_MEMBER in self.zip.members:
            self._read_manifest()
        else:
            self._synthesize()

    # -- opening -----------------------------------------------------------
    def _read_manifest(self) -> None:
        zm = self.zip.members[MANIFEST_MEMBER]
        if zm.size > _limits.MAX_MANIFEST_BYTES:
            raise FormatError(f"{self.label}: manifest of {zm.size} bytes is over the limit of "
                              f"{_limits.MAX_MANIFEST_BYTES}", file=self.label)
        if zm.method != _zip.STORED:
            _json.check_expansion(zm.size, zm.compressed_size, what=f"{self.label}: manifest", file=self.label)
        data = self.zip.read(zm, check_crc=True)
        sizes = {n: m.size for n, m in self.zip.members.items() if n != MANIFEST_MEMBER}
        doc, self.slots = _manifest.decode(data, self.label, sizes, stored_bytes=zm.compressed_size)
        self.has_manifest = True
        self.created_at: Optional[str] = doc["created_at"]
        self.updated_at: Optional[str] = doc["updated_at"]
        self.metadata: dict[str, Any] = doc["metadata"]
        self.format_version: int = doc["version"]
        for name, m in doc["members"].items():
            algorithm, digest = _digest.of(m)  # type: ignore[misc]  # decode checked there is exactly one
            if m.get("object"):
                entry = _zip.Member(name, 0, 0, m["size"], m["size"], 0, _zip.STORED)
                self.members[name] = _Member(entry, digest, algorithm, shared=True)
            else:
                self.members[name] = _Member(self.zip.members[name], digest, algorithm)

    def _synthesize(self) -> None:
        """Present a manifest-less .npz (numpy's or objax's) as one ``main`` arrays slot."""
        self.has_manifest = False
        self.created_at = self.updated_at = None
        self.metadata = {}
        self.format_version = 0
        self.slots = {}
        npy = [n for n in self.zip.members if n.endswith(".npy")]
        if self.zip.members and not npy:
            shown = ", ".join(sorted(self.zip.members)[:5]) + (", ..." if len(self.zip.members) > 5 else "")
            raise NotAPackError(f"{self.label}: not a ckpt file/npz: a zip archive with neither a ckpt manifest nor "
                                f".npy arrays (it holds: {shown})", file=self.label)
        for n in npy:
            self.members[n] = _Member(self.zip.members[n], None)
        size = sum(self.zip.members[n].size for n in npy)
        count = len(npy) - 1
        ordered = ["names.npy"] + [f"{i}.npy" for i in range(count)]
        if "names.npy" in self.zip.members and all(n in self.zip.members for n in ordered):
            objax_info: dict[str, Any] = {"kind": "dict", "layout": "objax"}
            self.slots[DEFAULT_SLOT] = SlotInfo("arrays", ordered, size, None, None, {}, objax_info)
        elif npy:
            named: dict[str, Any] = {"kind": "dict", "layout": "named", "arrays": [{"name": n[:-4]} for n in npy]}
            self.slots[DEFAULT_SLOT] = SlotInfo("arrays", npy, size, None, None, {}, named)

    # -- reading -----------------------------------------------------------
    def slot(self, name: str) -> SlotInfo:
        try:
            return self.slots[name]
        except KeyError:
            have = ", ".join(sorted(self.slots)) or "none"
            raise SlotNotFoundError(f"{self.label}: no slot {name!r} (slots: {have})", file=self.label,
                                    slot=name) from None

    def member_size(self, name: str) -> int:
        return self.members[name].zip.size

    def is_shared(self, name: str) -> bool:
        """Whether member ``name`` is stored outside this file, as a shared object (incremental saves)."""
        return self.members[name].shared

    def _object(self, name: str, *, verify: bool, slot: Optional[str], keep: bool = True) -> Any:
        m = self.members[name]
        return _objects.read_object(self.objects_at, m.algorithm, m.digest or "", name, m.zip.size,
                                    label=self.label, slot=slot, verify=verify and m.digest is not None, keep=keep)

    def read_head(self, name: str, n: int = _limits.MAX_NPY_HEADER_BYTES) -> bytes:
        if self.members[name].shared:
            m = self.members[name]
            return _objects.object_head(self.objects_at, m.algorithm, m.digest or "", name, m.zip.size, n,
                                        label=self.label)
        zm = self.zip.locate(self.members[name].zip)
        if zm.method == _zip.STORED:
            self.f.seek(self.zip._base + zm.data_offset)
            return self.f.read(min(n, zm.size))
        out = b""
        for chunk in self.zip.chunks(zm, check_crc=False, chunk=1 << 16):
            out += chunk
            if len(out) >= n:
                break
        return out[:n]

    def read_member(self, name: str, *, verify: bool = True, slot: Optional[str] = None,
                    copy: bool = True) -> Any:
        """A member's bytes, checked against its digest (or CRC without one).

        With ``copy=False`` and a memory-mapped file, the result is a read-only
        view of the mapping (no copy); otherwise a writable ``bytearray``.
        """
        m = self.members[name]
        if m.shared:
            return self._object(name, verify=verify and name not in self._verified, slot=slot)
        if self.mm is not None and m.zip.method == _zip.STORED:
            view = self._view(m)
            if verify and name not in self._verified:
                self._check(view, m, name, slot)
                self._verified.add(name)
            # A copy straight from the mapping: no zero-filled buffer, no chunked reads.
            return bytearray(view) if copy else view
        return self._stream(name, verify=verify, slot=slot, keep=True)

    def _stream(self, name: str, *, verify: bool, slot: Optional[str], keep: bool) -> Any:
        """Read a member chunk by chunk (no mapping, or deflated), hashing as it goes; keep the bytes or not."""
        m = self.members[name]
        if m.shared:
            return self._object(name, verify=verify, slot=slot, keep=keep)
        # A stored member's size is bounded by the file's own. A deflated one's is only a claim (at most
        # deflate's own ratio times its compressed size): its buffer is reserved once at the declared size
        # as untouched anonymous memory, so memory grows only with what really inflates (a lie costs
        # nothing), and nothing is copied again once inflated.
        stored = m.zip.method == _zip.STORED
        buf: Any = bytearray(m.zip.size if stored and keep else 0)
        if keep and not stored:
            buf = _reserve(m.zip.size)
        pos = 0
        sha = _digest.new(m.algorithm, self.label) if (verify and m.digest) else None
        for chunk in self.zip.chunks(m.zip, check_crc=verify and m.digest is None):
            if keep:
                buf[pos:pos + len(chunk)] = chunk if stored else np.frombuffer(chunk, dtype=np.uint8)
            pos += len(chunk)
            if sha is not None:
                sha.update(chunk)
        if sha is not None and sha.hexdigest() != m.digest:
            raise self._corrupt(name, m, slot, sha.hexdigest())
        return buf

    def _corrupt(self, name: str, m: _Member, slot: Optional[str], found: str) -> ChecksumError:
        return ChecksumError(
            f"{self.label}: slot {slot!r} member {name!r} is corrupt: {m.algorithm} {found} does not match the "
            f"recorded {m.digest}",
            file=self.label, slot=slot, member=name, expected=m.digest, found=found,
        )

    def read_members(self, names: list[str], *, verify: bool = True, slot: Optional[str] = None) -> dict[str, Any]:
        """Several stored members read into new writable buffers in one ordered pass (ckpt._readpipe):
        neighbours coalesced into one ``preadv``, each piece hashed on one thread while the next is
        read. Members this cannot read so (deflated, shared, or no file descriptor) use read_member."""
        try:
            fd = self.f.fileno()
        except (AttributeError, OSError, ValueError):
            fd = None
        out: dict[str, Any] = {}
        wants: list[_readpipe.Want] = []
        for n in dict.fromkeys(names):
            m = self.members[n]
            if fd is None or m.zip.method != _zip.STORED or m.shared:
                out[n] = self.read_member(n, verify=verify, slot=slot)
            else:
                self.zip.locate(m.zip)
                wants.append(_readpipe.Want(n, self.zip._base + m.zip.data_offset, m.zip.size))

        def new_check(w: _readpipe.Want) -> Optional[_readpipe.Check]:
            if not verify or w.name in self._verified:
                return None
            return _MemberCheck(self, w.name, slot)

        def cut_short(w: _readpipe.Want) -> FormatError:
            return FormatError(f"{self.label}: member {w.name!r} is cut short", file=self.label)

        if wants:
            out.update(_readpipe.read(fd, wants, new_check, cut_short))  # type: ignore[arg-type]
        return out

    def _view(self, m: _Member) -> memoryview:
        if self.mm is None:
            raise InternalError(f"{self.label}: internal error: a mapped read without a mapping", file=self.label)
        self.zip.locate(m.zip)
        return memoryview(self.mm)[m.zip.data_offset:m.zip.data_offset + m.zip.size]

    def verify_members(self, names: Iterable[str], *, slot: Optional[str] = None) -> None:
        """Check many members' hashes at once, on every core (the hashers release the GIL).

        Later zero-copy reads of these members skip the check. Without a mapping,
        members are checked one by one as they are read.
        """
        todo = [n for n in dict.fromkeys(names) if n not in self._verified]
        if self.mm is None or not todo:
            return
        mapped = [n for n in todo if self.members[n].zip.method == _zip.STORED and not self.members[n].shared]
        big = sum(self.members[n].zip.size for n in mapped)
        if len(mapped) < 2 or big < (8 << 20):
            for n in mapped:
                self._check(self._view(self.members[n]), self.members[n], n, slot)
                self._verified.add(n)
            return
        with ThreadPoolExecutor(max_workers=min(len(mapped), os.cpu_count() or 1),
                                thread_name_prefix="ckpt-verify") as pool:
            for n, _ in zip(mapped, pool.map(lambda n: self._check(self._view(self.members[n]), self.members[n],
                                                                     n, slot), mapped)):
                self._verified.add(n)

    def _check(self, view: memoryview, m: _Member, name: str, slot: Optional[str]) -> None:
        check = _MemberCheck(self, name, slot)
        check.update(view)
        check.finish()

    def _crc_failed(self, name: str, m: _Member, slot: Optional[str], found: int) -> ChecksumError:
        return ChecksumError(
            f"{self.label}: member {name!r} fails its CRC check (recorded {m.zip.crc:08x}, computed "
            f"{found:08x})", file=self.label, slot=slot, member=name)

    def member_chunks(self, name: str) -> Iterable[bytes]:
        m = self.members[name]
        if m.shared:  # a rewrite or export copies the object's bytes in: the new file stands alone
            return _objects.object_chunks(self.objects_at, m.algorithm, m.digest or "", name, m.zip.size,
                                          label=self.label)
        return self.zip.chunks(m.zip, check_crc=False)

    def verify_member(self, name: str, *, slot: Optional[str] = None) -> None:
        """Check one member against its hash (or CRC) without keeping its bytes (a deflated one streams)."""
        m = self.members[name]
        if self.mm is not None and m.zip.method == _zip.STORED and not m.shared:
            if name not in self._verified:
                self._check(self._view(m), m, name, slot)
                self._verified.add(name)
        else:
            self._stream(name, verify=True, slot=slot, keep=False)

    def verify_slot(self, name: str) -> None:
        """Check every member of a slot against its hash without keeping the data."""
        members = self.slot(name).members
        self.verify_members(members, slot=name)  # mapped members: on every core
        for member in members:
            if member not in self._verified:
                self._stream(member, verify=True, slot=name, keep=False)

    def dependency_mismatches(self, slots: Iterable[str]) -> list[_deps.Mismatch]:
        out = []
        for s in slots:
            out.extend(_deps.find_mismatches(self.slot(s).dependencies, f"slot {s!r}"))
        return out

    # What a slot's members mean is its kind's business (ckpt.slotkinds); these forward to it for
    # the callers that hold a reader.
    def arrays(self, slot: str, *, verify: bool = True) -> Any:
        from . import slotkinds

        return slotkinds.arrays(self, slot, verify=verify)

    def load(self, slot: str, *, trusted: Any = False, verify: bool = True) -> Any:
        """The value stored in a slot, decoded by its kind (dependencies are the caller's to check first)."""
        from . import slotkinds

        return slotkinds.load(self, slot, trusted=trusted, verify=verify)

    def pickle_globals(self, slot: str) -> list[str]:
        from . import slotkinds

        return slotkinds.pickle_globals(self, slot)


class _MemberCheck:
    """A member's digest (or, without one, its zip CRC) over its bytes as they are read, in order."""

    def __init__(self, reader: PackReader, name: str, slot: Optional[str]):
        self.reader, self.name, self.slot = reader, name, slot
        self.m = reader.members[name]
        self.crc = 0
        # Small members on one thread (see _digest.new).
        self.hasher = None if self.m.digest is None else _digest.new(self.m.algorithm, reader.label, self.m.zip.size)

    def update(self, data: memoryview) -> None:
        if self.hasher is None:
            self.crc = _crc32(data, self.crc)
        else:
            self.hasher.update(data)

    def finish(self) -> None:
        if self.hasher is None:
            if self.crc != self.m.zip.crc:
                raise self.reader._crc_failed(self.name, self.m, self.slot, self.crc)
            return
        found = self.hasher.hexdigest()
        if found != self.m.digest:
            raise self.reader._corrupt(self.name, self.m, self.slot, found)


def _reserve(size: int) -> np.ndarray:
    """A writable byte buffer whose pages are only committed when written (anonymous memory)."""
    if size < _RESERVE_MIN:
        return np.empty(size, dtype=np.uint8)
    return np.frombuffer(mmap.mmap(-1, size), dtype=np.uint8)


_RESERVE_MIN = 1 << 20


def _map(f: BinaryIO) -> Optional[mmap.mmap]:
    """A read-only mapping of a real file (None for in-memory or unmappable files)."""
    try:
        fileno = f.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    try:
        return mmap.mmap(fileno, 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None


_HASH_SLICE = 64 * 1024 * 1024


def _crc32(view: memoryview, crc: int = 0) -> int:
    for start in range(0, len(view), _HASH_SLICE):
        crc = _crc.crc32(view[start:start + _HASH_SLICE], crc)
    return crc


# -- writing ----------------------------------------------------------------
def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    i = 1
    while f"__ckpt__/moved/{i}/{name}" in taken:
        i += 1
    return f"__ckpt__/moved/{i}/{name}"


def write_pack(
    f: BinaryIO,
    *,
    new: Mapping[str, Encoded],
    source: Optional[PackReader] = None,
    keep: Iterable[str] = (),
    metadata: Optional[Mapping[str, Any]] = None,
    created_at: Optional[str] = None,
    digest: Optional[str] = None,
) -> dict[str, SlotInfo]:
    """Write a complete pack to ``f``: slots ``keep`` copied from ``source``, then ``new`` ones.

    New members are hashed with ``digest`` (default: :func:`ckpt._digest.default`); copied ones keep
    the algorithm their file recorded, so their digests stay the same (and check the copy).
    """
    algorithm = digest or _digest.default()
    writer = _zip.ZipWriter(f)
    try:
        return _write_members(writer, new, source, keep, metadata, created_at, algorithm)
    finally:
        writer.drain()  # digests still running read the callers' buffers: none outlives the call


def _write_members(writer: _zip.ZipWriter, new: Mapping[str, Encoded], source: Optional[PackReader],
                   keep: Iterable[str], metadata: Optional[Mapping[str, Any]], created_at: Optional[str],
                   algorithm: str) -> dict[str, SlotInfo]:
    now = _manifest.utc_now()
    out_members: dict[str, dict[str, Any]] = {}
    by_size: dict[int, list[_zip.Written]] = {}  # members written so far, by size: dedup candidates
    by_identity: dict[int, str] = {}
    reserved = {member_prefix(s) + m.suffix for s, enc in new.items() for m in enc.members}
    reserved.add(MANIFEST_MEMBER)
    # Digests may still be computing on the hashing thread (_zip._Behind): everything that needs them
    # (copy checks, slot digests) is settled once every member is written.
    written_as: dict[str, _zip.Written] = {}
    copy_checks: list[tuple[_zip.Written, _Member, str, str, str]] = []
    pending_slots: list[tuple[str, Callable[[list[str]], SlotInfo], list[str]]] = []

    def record(written: _zip.Written) -> None:
        written_as[written.member.name] = written
        by_size.setdefault(written.member.size, []).append(written)

    def same_as(written: _zip.Written) -> Optional[str]:
        """An earlier member with the same bytes (only same-size ones need their digest now)."""
        for w in by_size.get(written.member.size, []):
            if w.algorithm == written.algorithm and w.digest == written.digest:
                return w.member.name
        return None

    if source is not None:
        copied: dict[str, str] = {}
        for slot_name in keep:
            info = source.slot(slot_name)
            names = []
            for member in info.members:
                if member not in copied:
                    m = source.members[member]
                    out = _unique(member, reserved | set(out_members) | set(written_as))
                    written = writer.add(out, m.zip.size, source.member_chunks(member),
                                         algorithm=m.algorithm if m.digest is not None else algorithm)
                    if m.digest is not None:
                        copy_checks.append((written, m, source.label, slot_name, member))
                    record(written)
                    copied[member] = out
                names.append(copied[member])
            kept = info.algorithm if info.digest is not None else algorithm

            def kept_slot(names: list[str], info: SlotInfo = info, kept: str = kept) -> SlotInfo:
                return SlotInfo(info.serializer, names, sum(out_members[n]["size"] for n in names),
                                _manifest.slot_digest(digests(names), kept), info.created_at or now,
                                dict(info.dependencies), dict(info.info), kept)

            pending_slots.append((slot_name, kept_slot, names))

    for slot_name, enc in new.items():
        prefix = member_prefix(slot_name)
        # The main slot keeps every member under its own name so numpy and objax see the
        # full names.npy/0.npy/1.npy... layout; other slots may point at any identical member.
        dedup = slot_name != DEFAULT_SLOT
        names = []
        for src in enc.members:
            if src.shared is not None:  # stored already as a shared object: record the reference only
                name = prefix + src.suffix
                out_members[name] = {"size": src.size, src.shared[0]: src.shared[1], "object": True}
                names.append(name)
                continue
            if dedup and src.identity is not None and src.identity in by_identity:
                names.append(by_identity[src.identity])
                continue
            name = prefix + src.suffix
            written = writer.add(name, src.size, src.chunks(), exact=src.exact, algorithm=algorithm)
            earlier = same_as(written) if dedup and writer.can_rollback else None
            if earlier is not None:
                writer.rollback(written.member)
                name = earlier
            else:
                record(written)
            if src.identity is not None:
                by_identity[src.identity] = name
            names.append(name)
        deps = _deps.describe(enc.needed, enc.strictness, enc.informational)  # type: ignore[arg-type]
        deps.update(enc.dependencies)

        def new_slot(names: list[str], enc: Encoded = enc, deps: dict[str, Any] = deps) -> SlotInfo:
            return SlotInfo(enc.serializer, names, sum(out_members[n]["size"] for n in names),
                            _manifest.slot_digest(digests(names), algorithm), now, deps, enc.info, algorithm)

        pending_slots.append((slot_name, new_slot, names))

    def digests(names: list[str]) -> list[str]:
        return [_digest.of(out_members[n])[1] for n in names]  # type: ignore[index]

    for written, m, label, slot_name, member in copy_checks:
        if written.digest != m.digest:
            raise ChecksumError(
                f"{label}: slot {slot_name!r} member {member!r} is corrupt ({m.algorithm} "
                "mismatch); refusing to copy it into a new pack",
                file=label, slot=slot_name, member=member, expected=m.digest,
                found=written.digest,
            )
    for name, w in written_as.items():
        out_members[name] = {"size": w.member.size, w.algorithm: w.digest}
    slots = {slot_name: make(names) for slot_name, make, names in pending_slots}

    manifest = _manifest.encode(
        created_at=created_at or now, updated_at=now, metadata=metadata or {}, members=out_members, slots=slots,
    )
    writer.add(MANIFEST_MEMBER, len(manifest), [manifest], algorithm=algorithm)
    writer.finish()
    return slots
