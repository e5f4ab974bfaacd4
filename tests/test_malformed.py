"""Damaged and hostile files: each is refused with a ckpt error, fast, without large allocations.

Every case in ``CASES`` is a file that ckpt must refuse when it is opened through
any public entry point (``ckpt.load``, ``ckpt.Pack``, ``ckpt.load_var_collection``
and ``Checkpoint.restore(idx=...)``). The refusal must:

- raise an instance of :class:`ckpt.errors.CkptError` (never a raw ``zipfile``,
  numpy, json, struct, ``KeyError``, ``IndexError``, ``UnicodeDecodeError``,
  ``MemoryError`` or ``RecursionError``), of the type the case expects;
- name the file in the message;
- finish within a few seconds (each call runs in a watchdog thread);
- grow traced memory (``tracemalloc`` peak) by less than 100 MB, also for files
  that *claim* terabytes.

The files are built from a valid pack written by ckpt, or from scratch with a
raw zip writer (below) that can produce what :mod:`zipfile` refuses to write:
duplicate names, overlapping entries, lying sizes. Nothing here imports jax.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

import helpers
import numpy as np
import pytest

import ckpt
from ckpt import _limits
from ckpt.errors import ChecksumError, CkptError, FormatError, NotAPackError, SlotKindError

MANIFEST = "__ckpt__/manifest.json"
W = np.arange(12, dtype=np.float64).reshape(3, 4)
B = np.arange(4, dtype=np.int32)
CONFIG = {"lr": 0.1, "name": "x"}
WATCHDOG_S = 20.0
MEMORY_LIMIT = 100 * 1024 * 1024
MiB = 1024 * 1024


def target() -> dict[str, np.ndarray]:
    return {"w": np.zeros_like(W), "b": np.zeros_like(B)}


# -- a raw zip writer: everything zipfile would not let us write --------------------------------------
@dataclasses.dataclass
class E:
    """One zip entry. ``data`` is what is stored (already compressed for method 8).

    Central-directory fields default to the truth and can each be overridden to lie.
    """

    name: str | bytes
    data: bytes = b""
    method: int = 0
    usize: int | None = None  # declared uncompressed size (default: len(data), or len(raw) via deflated())
    crc: int | None = None
    flags: int = 0
    local_name: bytes | None = None  # name in the local header (default: the central one)
    cd_sizes64: tuple[int, int] | None = None  # (usize, csize) in a zip64 extra of the central entry
    cd_csize: int | None = None  # compressed size claimed by the central entry
    points_at: int | None = None  # central entry points at the local header of entry #points_at
    local: bool = True  # write a local header and data (False: central entry only, use points_at)


def _b(name: str | bytes) -> bytes:
    return name if isinstance(name, bytes) else name.encode("utf-8")


def deflated(name: str, raw: bytes, **kw: Any) -> E:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = c.compress(raw) + c.flush()
    kw.setdefault("usize", len(raw))
    kw.setdefault("crc", zlib.crc32(raw))
    return E(name, data, method=8, **kw)


def build_zip(entries: list[E], *, n_entries: int | None = None, disk: int = 0,
              cd_offset_delta: int = 0, trailer: bytes = b"") -> bytes:
    out = bytearray()
    offsets: list[int] = []
    for e in entries:
        offsets.append(len(out))
        if not e.local:
            continue
        name = _b(e.name)
        local_name = e.local_name if e.local_name is not None else name
        usize = e.usize if e.usize is not None else len(e.data)
        crc = e.crc if e.crc is not None else zlib.crc32(e.data)
        out += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, e.flags, e.method, 0, 33, crc,
                           len(e.data), usize & 0xFFFFFFFF, len(local_name), 0)
        out += local_name + e.data
    cd_offset = len(out)
    for i, e in enumerate(entries):
        name = _b(e.name)
        usize = e.usize if e.usize is not None else len(e.data)
        csize = e.cd_csize if e.cd_csize is not None else len(e.data)
        crc = e.crc if e.crc is not None else zlib.crc32(e.data)
        extra = b""
        if e.cd_sizes64 is not None:
            extra = struct.pack("<HHQQ", 1, 16, *e.cd_sizes64)
            usize = csize = 0xFFFFFFFF
        offset = offsets[e.points_at if e.points_at is not None else i]
        out += struct.pack("<4s6H3I5HII", b"PK\x01\x02", 0x031E, 20, e.flags, e.method, 0, 33, crc,
                           csize, usize, len(name), len(extra), 0, 0, 0, 0o100644 << 16, offset)
        out += name + extra
    cd_size = len(out) - cd_offset
    n = len(entries) if n_entries is None else n_entries
    out += struct.pack("<4s4H2IH", b"PK\x05\x06", disk, disk, n, n, cd_size, cd_offset + cd_offset_delta, 0)
    return bytes(out) + trailer


def zip64_end(n: int, cd_size: int, cd_offset: int, at: int) -> bytes:
    """Zip64 end record + locator + an end record that defers to them (``at``: where they start)."""
    return (struct.pack("<4sQ2H2I4Q", b"PK\x06\x06", 44, 0x031E, 45, 0, 0, n, n, cd_size, cd_offset)
            + struct.pack("<4sIQI", b"PK\x06\x07", 0, at, 1)
            + struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))


def many_members_zip(n: int) -> bytes:
    """A real zip of ``n`` empty stored members (0.txt, 1.txt, ...), written fast."""
    local = struct.Struct("<4s5H3I2H")
    central = struct.Struct("<4s6H3I5HII")
    parts = []
    cd = []
    pos = 0
    crc0 = zlib.crc32(b"")
    for i in range(n):
        name = b"%d.txt" % i
        parts.append(local.pack(b"PK\x03\x04", 20, 0, 0, 0, 33, crc0, 0, 0, len(name), 0) + name)
        cd.append(central.pack(b"PK\x01\x02", 0x031E, 20, 0, 0, 0, 33, crc0, 0, 0, len(name), 0, 0, 0, 0,
                               0o100644 << 16, pos) + name)
        pos += 30 + len(name)
    directory = b"".join(cd)
    body = b"".join(parts)
    return body + directory + zip64_end(n, len(directory), len(body), len(body) + len(directory))


# -- .npy members with any header ---------------------------------------------------------------------
def npy(header: str | bytes, data: bytes = b"", *, version: int = 1, pad: bool = True) -> bytes:
    h = header.encode("latin1") if isinstance(header, str) else header
    prefix_len = 10 if version == 1 else 12
    if pad:
        h = h + b" " * ((-(prefix_len + len(h) + 1)) % 64) + b"\n"
    size = struct.pack("<H", len(h)) if version == 1 else struct.pack("<I", len(h))
    return b"\x93NUMPY" + bytes([version, 0]) + size + h + data


def np_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def w_header(shape: str, descr: str = "'<f8'", fortran: str = "False") -> str:
    return f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}"


W_DATA = W.tobytes()


# -- the valid pack everything starts from ------------------------------------------------------------
@functools.cache
def base() -> bytes:
    d = tempfile.mkdtemp(prefix="ckpt-malformed-")
    try:
        path = os.path.join(d, "base.npz")
        ckpt.save_var_collection(path, {"w": W, "b": B})
        with ckpt.Pack(path) as pack:
            pack.dump("config", CONFIG)
        with open(path, "rb") as f:
            return f.read()
    finally:
        shutil.rmtree(d)


@functools.cache
def _base_parts() -> tuple[tuple[tuple[str, bytes], ...], str]:
    with zipfile.ZipFile(io.BytesIO(base())) as zf:
        members = tuple((i.filename, zf.read(i)) for i in zf.infolist() if i.filename != MANIFEST)
        manifest = zf.read(MANIFEST).decode("utf-8")
    return members, manifest


def layout() -> dict[str, tuple[int, int, int]]:
    """Member -> (local header offset, data offset, size) in ``base()``."""
    data = base()
    out = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
            out[info.filename] = (info.header_offset, info.header_offset + 30 + name_len + extra_len, info.file_size)
    return out


def central_entries() -> dict[str, int]:
    """Member -> offset of its central directory entry in ``base()``."""
    data = base()
    n, _cd_size, cd_offset = struct.unpack_from("<HII", data, len(data) - 22 + 10)
    out = {}
    pos = cd_offset
    for _ in range(n):
        name_len, extra_len, comment_len = struct.unpack_from("<3H", data, pos + 28)
        out[data[pos + 46:pos + 46 + name_len].decode()] = pos
        pos += 46 + name_len + extra_len + comment_len
    return out


def cd_offset() -> int:
    data = base()
    return struct.unpack_from("<I", data, len(data) - 22 + 16)[0]


def slot_digest(hashes: list[str]) -> str:
    return helpers.slot_digest(hashes, "blake3")  # the base pack is written with the default digest


def repack(replace: dict[str, bytes] | None = None, edit: Callable[[dict], None] | None = None,
           manifest: bytes | None = None, entries: Callable[[list[E]], list[E]] | None = None) -> bytes:
    """The base pack rewritten as a consistent zip: ``replace`` swaps members *and* their hashes.

    So the result passes every checksum, and what refuses it is the deeper validation.
    ``edit(doc)`` then changes the manifest; ``manifest`` replaces its bytes outright.
    """
    parts, manifest_text = _base_parts()
    members = dict(parts)
    doc = json.loads(manifest_text)
    members.update(replace or {})
    helpers.rehash(doc, replace or {})
    if edit is not None:
        edit(doc)
    mbytes = manifest if manifest is not None else json.dumps(doc).encode("utf-8")
    es = [E(n, d) for n, d in members.items()] + [E(MANIFEST, mbytes)]
    if entries is not None:
        es = entries(es)
    return build_zip(es)


def flip(offset: int, mask: int = 0x01) -> bytes:
    data = bytearray(base())
    data[offset] ^= mask
    return bytes(data)


def truncate(at: Callable[[], int]) -> Callable[[], bytes]:
    return lambda: base()[:at()]


def plain_npz(entries: list[E]) -> bytes:
    """A manifest-less .npz (as numpy or objax writes one) of the given entries."""
    return build_zip(entries)


def objax_entries(names: list[str] = ("w", "b")) -> list[E]:
    arrays = {"w": W, "b": B}
    out = [E("names.npy", np_bytes(np.array(list(names))))]
    for i, n in enumerate(names):
        out.append(E(f"{i}.npy", np_bytes(arrays[n])))
    return out


def _set(path: tuple, value: Any) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        node = doc
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
    return edit


def _del(path: tuple) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        node = doc
        for k in path[:-1]:
            node = node[k]
        del node[path[-1]]
    return edit


def _deflate_lie() -> bytes:
    """names.npy deflated (stored blocks) from 128 KiB, but declaring ~1000x that: under the ratio limit."""
    raw = np.random.default_rng(0).integers(0, 256, 128 * 1024, dtype=np.uint8).tobytes()
    c = zlib.compressobj(0, zlib.DEFLATED, -15)
    data = c.compress(raw) + c.flush()
    declared = len(data) * (_limits.MAX_DEFLATE_RATIO - 24)
    assert declared > MEMORY_LIMIT
    return plain_npz([E("names.npy", data, method=8, usize=declared, crc=zlib.crc32(raw)),
                      *objax_entries()[1:]])


def _overlap_nested() -> bytes:
    """Entry 'a.npy' is stored and its data span the whole of entry 'b.npy' (local header included)."""
    inner_data = np_bytes(W)
    inner = struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 0, 0, 33, zlib.crc32(inner_data), len(inner_data),
                        len(inner_data), 5, 0) + b"b.npy" + inner_data
    outer_name = b"a.npy"
    outer = struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 0, 0, 33, zlib.crc32(inner), len(inner), len(inner),
                        len(outer_name), 0) + outer_name
    body = outer + inner
    inner_off = len(outer)
    cd = b""
    for name, off, size, crc in ((outer_name, 0, len(inner), zlib.crc32(inner)),
                                 (b"b.npy", inner_off, len(inner_data), zlib.crc32(inner_data))):
        cd += struct.pack("<4s6H3I5HII", b"PK\x01\x02", 0x031E, 20, 0, 0, 0, 33, crc, size, size, len(name), 0,
                          0, 0, 0, 0o100644 << 16, off) + name
    return body + cd + struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 2, 2, len(cd), len(body), 0)


def _too_many_claimed() -> bytes:
    """Zip64 end records claiming 100,001 entries over a one-entry directory."""
    z = build_zip([E("0.npy", np_bytes(W))])
    _n, cd_size, cd_off = struct.unpack_from("<HII", z, len(z) - 22 + 10)
    body = z[:len(z) - 22]
    return body + zip64_end(_limits.MAX_MEMBERS + 1, cd_size, cd_off, len(body))


def _huge_manifest() -> bytes:
    """A manifest member just over 64 MiB (its bytes are really there; it is refused by its size)."""
    filler = b" " * (_limits.MAX_MANIFEST_BYTES + 1 - 2)
    return repack(manifest=b"{" + filler + b"}")


def _cut_middle() -> bytes:
    data = base()
    start = layout()["0.npy"][1] + 8
    return data[:start] + data[start + 40:]


# -- the table ---------------------------------------------------------------------------------------
ALL_APIS = ("ckpt.load", "Pack", "load_var_collection", "Checkpoint.restore")
EXTRA_APIS = ("Pack", "Checkpoint.restore+extras")  # damage in the json "config" slot only


@dataclasses.dataclass
class Case:
    id: str
    build: Callable[[], bytes]
    expect: type = FormatError
    apis: tuple = ALL_APIS
    limits: dict | None = None  # ckpt._limits overrides (the readers read them at call time)
    match: str | None = None  # a substring every refusal message must contain
    big: bool = False  # also checked with getrusage in a subprocess


def C(id: str, build: Callable[[], bytes], expect: type = FormatError, **kw: Any) -> Case:
    return Case(id, build, expect, **kw)


def _manifest_missing(key: str) -> Case:
    return C(f"manifest-missing-{key}", lambda: repack(edit=_del((key,))), match=key)


CASES = [
    # truncation at many offsets
    C("truncated-to-0-bytes", truncate(lambda: 0), CkptError),
    C("truncated-to-1-byte", truncate(lambda: 1), NotAPackError),
    C("truncated-to-4-bytes", truncate(lambda: 4)),
    C("truncated-inside-first-local-header", truncate(lambda: 17)),
    C("truncated-inside-names-npy", truncate(lambda: layout()["names.npy"][1] + 30)),
    C("truncated-inside-npy-header", truncate(lambda: layout()["0.npy"][1] + 20)),
    C("truncated-inside-array-data", truncate(lambda: layout()["0.npy"][1] + 150)),
    C("truncated-inside-json-slot", truncate(lambda: layout()["config/data.json"][1] + 5)),
    C("truncated-inside-manifest", truncate(lambda: layout()[MANIFEST][1] + 700)),
    C("truncated-inside-central-directory", truncate(lambda: cd_offset() + 100)),
    C("truncated-inside-end-record", truncate(lambda: len(base()) - 10)),
    C("truncated-last-byte", truncate(lambda: len(base()) - 1)),
    C("bytes-cut-from-array-data", _cut_middle),
    C("trailing-garbage-after-end-record", lambda: base() + b"garbage after the end"),
    C("prepended-garbage", lambda: b"#!/bin/sh\n" + base(), NotAPackError),
    # single flipped bits
    C("bitflip-array-data", lambda: flip(layout()["0.npy"][1] + 128 + 9), ChecksumError,
      match="'0.npy'"),
    C("bitflip-names-npy-data", lambda: flip(layout()["names.npy"][1] + 130), ChecksumError),
    C("bitflip-npy-header-shape", lambda: flip(base().index(b"(3, 4)", layout()["0.npy"][1]) + 1)),
    C("bitflip-npy-header-magic", lambda: flip(layout()["0.npy"][1] + 1)),
    C("bitflip-manifest-json", lambda: flip(layout()[MANIFEST][1] + 300), ChecksumError, match="CRC"),
    C("bitflip-json-slot", lambda: flip(layout()["config/data.json"][1] + 3), ChecksumError, apis=EXTRA_APIS),
    C("bitflip-central-dir-signature", lambda: flip(central_entries()["1.npy"], 0x02)),
    C("bitflip-central-dir-header-offset", lambda: flip(central_entries()["0.npy"] + 42, 0x04)),
    C("bitflip-central-dir-name", lambda: flip(central_entries()["1.npy"] + 46, 0x40)),
    C("bitflip-central-dir-manifest-crc", lambda: flip(central_entries()[MANIFEST] + 16), ChecksumError),
    C("bitflip-central-dir-method", lambda: flip(central_entries()["0.npy"] + 10, 0x02)),
    C("bitflip-local-header-signature", lambda: flip(layout()["1.npy"][0] + 2)),
    C("bitflip-end-record-signature", lambda: flip(len(base()) - 22 + 1)),
    # .npy headers (member and hashes rewritten consistently: the header check is what refuses)
    C("npy-shape-1e12-float64", lambda: repack({"0.npy": npy(w_header("(1000000000000,)"), W_DATA)}),
      match="1000000000000", big=True),
    C("npy-shape-overflows-int64", lambda: repack({"0.npy": npy(w_header("(1099511627776, 1099511627776)"),
                                                                W_DATA)}), big=True),
    C("npy-shape-overflows-int64-zero-itemsize",
      lambda: repack({"0.npy": npy(w_header("(1099511627776, 1099511627776)", "'|V0'"))}), big=True),
    C("npy-shape-negative-dim", lambda: repack({"0.npy": npy(w_header("(-1, 4)"), W_DATA)})),
    C("npy-shape-is-list", lambda: repack({"0.npy": npy(w_header("[3, 4]"), W_DATA)})),
    C("npy-shape-is-string", lambda: repack({"0.npy": npy(w_header("'12'"), W_DATA)})),
    C("npy-shape-has-float", lambda: repack({"0.npy": npy(w_header("(3.0, 4)"), W_DATA)})),
    C("npy-shape-has-bool", lambda: repack({"0.npy": npy(w_header("(True, 12)"), W_DATA)})),
    C("npy-shape-65-dims", lambda: repack({"0.npy": npy(w_header("(" + "1, " * 65 + ")"))})),
    C("npy-shape-5000-digit-int", lambda: repack({"0.npy": npy(w_header("(1" + "0" * 5000 + ",)"), W_DATA,
                                                               version=2)})),
    C("npy-object-dtype", lambda: repack({"0.npy": npy(w_header("(12,)", "'|O'"), W_DATA)}), match="object"),
    C("npy-object-field-in-struct-dtype",
      lambda: repack({"0.npy": npy(w_header("(12,)", "[('a', '|O')]"), W_DATA)}), match="object"),
    C("npy-unknown-descr", lambda: repack({"0.npy": npy(w_header("(3, 4)", "'<f9'"), W_DATA)})),
    C("npy-deprecated-descr-alias", lambda: repack({"0.npy": npy(w_header("(3, 4)", "'<a8'"), W_DATA)})),
    C("npy-descr-subarray-too-big",
      lambda: repack({"0.npy": npy(w_header("(1,)", "[('a', '<f8', (1000000, 1000000))]"), W_DATA)})),
    C("npy-header-over-64KiB", lambda: repack({"0.npy": npy(w_header("(3, 4)") + " " * 70000, W_DATA,
                                                            version=2)}), match="limit"),
    C("npy-header-longer-than-member", lambda: repack({"0.npy": npy(b"{" * 200, pad=False)[:10] + b"{'d"}),
      match="cut short"),
    C("npy-bad-magic", lambda: repack({"0.npy": b"\x93NUMPX" + npy(w_header("(3, 4)"), W_DATA)[6:]})),
    C("npy-unknown-format-version", lambda: repack({"0.npy": npy(w_header("(3, 4)"), W_DATA, version=9)})),
    C("npy-header-is-code", lambda: repack({"0.npy": npy(
        "{'descr': __import__('os').system('false'), 'fortran_order': False, 'shape': (3, 4)}", W_DATA)})),
    C("npy-header-not-a-dict", lambda: repack({"0.npy": npy("('<f8', False, (3, 4))", W_DATA)})),
    C("npy-header-extra-key", lambda: repack({"0.npy": npy(w_header("(3, 4)")[:-1] + "'x': 1}", W_DATA)})),
    C("npy-header-missing-key", lambda: repack({"0.npy": npy("{'descr': '<f8', 'shape': (3, 4)}", W_DATA)})),
    C("npy-fortran-order-not-bool", lambda: repack({"0.npy": npy(w_header("(3, 4)", fortran="0"), W_DATA)})),
    C("npy-header-deep-nesting", lambda: repack({"0.npy": npy("(" * 5000 + ")" * 5000, W_DATA, version=2)})),
    C("npy-header-bad-utf8-v3", lambda: repack({"0.npy": npy(b"{'descr': '\xff\xfe', 'fortran_order': False, "
                                                             b"'shape': (3, 4)}", W_DATA, version=3)})),
    C("npy-one-byte-too-many", lambda: repack({"0.npy": npy(w_header("(3, 4)"), W_DATA + b"\0")})),
    C("npy-one-byte-too-few", lambda: repack({"0.npy": npy(w_header("(3, 4)"), W_DATA[:-1])})),
    C("manifest-recorded-dtype-is-object",
      lambda: repack({"0.npy": npy(w_header("(3, 4)", "'|V8'"), W_DATA)},
                     edit=_set(("slots", "main", "info", "arrays", 0, "dtype"), "O")), match="object"),
    C("manifest-recorded-dtype-is-module-attribute",
      lambda: repack(edit=_set(("slots", "main", "info", "arrays", 0, "dtype"), "__loader__"))),
    C("manifest-recorded-dtype-too-big",
      lambda: repack(edit=_set(("slots", "main", "info", "arrays", 0, "dtype"), "(100000,100000)f8"))),
    # names.npy
    C("names-npy-2d", lambda: repack({"names.npy": np_bytes(np.array([["w", "b"]]))}), match="1-D"),
    C("names-npy-integers", lambda: repack({"names.npy": np_bytes(np.array([1, 2]))}), match="1-D"),
    C("names-npy-bytes-dtype", lambda: repack({"names.npy": np_bytes(np.array([b"w", b"b"]))})),
    C("names-npy-duplicate-names", lambda: repack({"names.npy": np_bytes(np.array(["w", "w"]))}),
      match="duplicate"),
    C("names-npy-too-few-names", lambda: repack({"names.npy": np_bytes(np.array(["w"]))}), match="1 names"),
    C("names-npy-too-many-names", lambda: repack({"names.npy": np_bytes(np.array(["w", "b", "c"]))})),
    C("npz-names-npy-without-arrays", lambda: plain_npz(objax_entries()[:2])),
    C("npz-zero-itemsize-shape-overflows-int64", lambda: plain_npz(
        [*objax_entries()[:1], E("0.npy", npy(w_header("(1099511627776, 1099511627776)", "'|V0'"))),
         *objax_entries()[2:]]), match="more elements"),
    # the manifest
    C("manifest-not-json", lambda: repack(manifest=b"{not json"), match="JSON"),
    C("manifest-not-utf8", lambda: repack(manifest=b'{"format": "\xff\xfe"}')),
    C("manifest-json-array", lambda: repack(manifest=b"[1, 2, 3]"), match="object"),
    C("manifest-json-deep-nesting", lambda: repack(manifest=b"[" * 200000 + b"]" * 200000)),
    C("manifest-over-limit-patched", lambda: base(), limits={"MAX_MANIFEST_BYTES": 512}, match="limit"),
    C("manifest-over-64MiB", _huge_manifest, match="limit", big=True),
    C("manifest-version-4", lambda: repack(edit=_set(("version",), 4)), match="Upgrade"),
    C("manifest-blake3-in-version-1", lambda: repack(edit=_set(("version",), 1)), match="version 1"),
    C("manifest-version-is-string", lambda: repack(edit=_set(("version",), "1"))),
    C("manifest-wrong-format-name", lambda: repack(edit=_set(("format",), "zip"))),
    *[_manifest_missing(k) for k in ("format", "version", "created_at", "updated_at", "metadata", "members",
                                     "slots")],
    C("manifest-bad-timestamp", lambda: repack(edit=_set(("created_at",), "yesterday"))),
    C("manifest-blake3-wrong-length",
      lambda: repack(edit=lambda d: d["members"]["0.npy"].update(blake3=d["members"]["0.npy"]["blake3"][:-1]))),
    C("manifest-blake3-trailing-newline", match="64 lowercase hex",
      build=lambda: repack(edit=lambda d: d["members"]["0.npy"].update(blake3=d["members"]["0.npy"]["blake3"] + "\n"))),
    C("manifest-blake3-uppercase",
      lambda: repack(edit=lambda d: d["members"]["0.npy"].update(blake3=d["members"]["0.npy"]["blake3"].upper()))),
    C("manifest-sha512-instead-of-blake3",
      lambda: repack(edit=lambda d: d["members"]["0.npy"].update(sha512=d["members"]["0.npy"].pop("blake3") * 2))),
    C("manifest-member-without-digest", lambda: repack(edit=lambda d: d["members"]["0.npy"].pop("blake3")),
      match="no digest"),
    C("manifest-member-two-digests", match="blake3 and sha256", build=lambda: repack(
        edit=lambda d: d["members"]["0.npy"].update(sha256=helpers.content_digest(dict(_base_parts()[0])["0.npy"])))),
    C("manifest-slot-two-digests", lambda: repack(edit=_set(("slots", "main", "sha256"), "0" * 64)),
      match="blake3 and sha256"),
    C("manifest-member-size-differs", lambda: repack(edit=_set(("members", "0.npy", "size"), 225))),
    C("manifest-member-size-negative", lambda: repack(edit=_set(("members", "0.npy", "size"), -1))),
    C("manifest-member-missing-from-archive",
      lambda: repack(edit=_set(("members", "2.npy"), {"size": 128, "sha256": "0" * 64}))),
    C("manifest-slot-member-missing",
      lambda: repack(edit=lambda d: d["slots"]["main"]["members"].append("2.npy"))),
    C("manifest-slot-blake3-mismatch", lambda: repack(edit=_set(("slots", "main", "blake3"), "0" * 64))),
    # A kind this process has not registered is not damage: the slot is refused by name, nothing imported.
    C("manifest-slot-unknown-serializer", lambda: repack(edit=_set(("slots", "main", "serializer"), "exec")),
      SlotKindError, apis=("ckpt.load", "Pack", "load_var_collection"), match="'exec'"),
    C("manifest-slot-unknown-serializer-checkpoint",
      lambda: repack(edit=_set(("slots", "main", "serializer"), "mylib.kind")), apis=("Checkpoint.restore",),
      match="not a checkpoint"),
    C("manifest-slot-serializer-not-a-kind-name",
      lambda: repack(edit=_set(("slots", "main", "serializer"), "../x")), match="not a slot kind name"),
    C("manifest-slot-serializer-not-a-string",
      lambda: repack(edit=_set(("slots", "main", "serializer"), 7)), match="not a slot kind name"),
    C("manifest-slot-dependencies-malformed",
      lambda: repack(edit=_set(("slots", "main", "dependencies"), {"numpy": "2.0"}))),
    C("manifest-slot-info-not-object", lambda: repack(edit=_set(("slots", "main", "info"), [1]))),
    C("manifest-slot-unknown-layout", lambda: repack(edit=_set(("slots", "main", "info", "layout"), "columns"))),
    C("manifest-named-layout-without-names",
      lambda: repack(edit=lambda d: d["slots"]["main"]["info"].update(layout="named", arrays=[{"nom": "w"}, {}]))),
    C("manifest-arrays-info-not-a-list", lambda: repack(edit=_set(("slots", "main", "info", "arrays"), 7))),
    C("manifest-tree-refers-to-missing-array", apis=("ckpt.load", "Pack"),  # restoring by name needs no tree
      build=lambda: repack(edit=lambda d: d["slots"]["main"]["info"].update(kind="tree", tree={"list": [0, 1, 7]}))),
    C("manifest-main-slot-without-members", lambda: repack(edit=lambda d: d["slots"]["main"].update(
        members=[], blake3=slot_digest([]), size=0))),
    C("manifest-json-slot-two-members", apis=EXTRA_APIS, build=lambda: repack(edit=lambda d: d["slots"][
        "config"].update(members=["config/data.json", "0.npy"], blake3=slot_digest(
            [d["members"]["config/data.json"]["blake3"], d["members"]["0.npy"]["blake3"]])))),
    C("json-slot-not-json", lambda: repack({"config/data.json": b'{"lr": '}), apis=EXTRA_APIS),
    C("json-slot-over-limit-patched", lambda: base(), apis=EXTRA_APIS, limits={"MAX_JSON_BYTES": 8},
      match="limit"),
    # zip structure
    C("zip-duplicate-member-name", lambda: repack(entries=lambda es: es[:2] + [E("0.npy", es[1].data)] + es[2:]),
      match="twice"),
    C("name-with-dotdot", lambda: repack(entries=lambda es: es + [E("../../evil.npy", b"x")]), match="'..'"),
    C("name-absolute-path", lambda: repack(entries=lambda es: es + [E("/etc/passwd", b"root")]), match="absolute"),
    C("name-drive-letter", lambda: repack(entries=lambda es: es + [E("C:/evil.npy", b"x")]), match="absolute"),
    C("name-with-nul-byte", lambda: repack(entries=lambda es: es + [E("0.npy\x00.txt", b"x")]), match="NUL"),
    C("name-with-backslash", lambda: repack(entries=lambda es: es + [E("..\\evil.npy", b"x")]),
      match="backslash"),
    C("name-empty", lambda: repack(entries=lambda es: es + [E("", b"x")]), match="empty"),
    C("name-over-4096-bytes", lambda: repack(entries=lambda es: es + [E("a" * 5000, b"x")]), match="longer"),
    C("name-invalid-utf8", lambda: repack(entries=lambda es: es + [E(b"\xff\xfe.npy", b"x", flags=0x800)])),
    C("local-header-name-differs", lambda: repack(entries=lambda es: [
        dataclasses.replace(e, local_name=b"1.npz") if e.name == "1.npy" else e for e in es])),
    C("overlap-two-entries-one-local-header",
      lambda: repack(entries=lambda es: es + [E("2.npy", es[1].data, local=False, points_at=1)])),
    C("overlap-entry-inside-another", _overlap_nested, match="overlap"),
    C("member-runs-into-central-directory", lambda: repack(entries=lambda es: [
        dataclasses.replace(e, cd_csize=len(e.data) + 100, usize=len(e.data) + 100) if e.name == MANIFEST
        else e for e in es]), match="past the central directory"),
    C("stored-sizes-disagree", lambda: repack(entries=lambda es: [
        dataclasses.replace(e, cd_csize=len(e.data) - 1) if e.name == "1.npy" else e for e in es])),
    C("encrypted-member", lambda: repack(entries=lambda es: [
        dataclasses.replace(e, flags=1) if e.name == "0.npy" else e for e in es]), match="encrypted"),
    C("compression-method-bzip2", lambda: repack(entries=lambda es: [
        dataclasses.replace(e, method=12) if e.name == "0.npy" else e for e in es]), match="method"),
    C("declared-size-over-1TiB", lambda: repack(entries=lambda es: es + [
        E("huge.bin", b"x", cd_sizes64=(_limits.MAX_MEMBER_BYTES + 1, _limits.MAX_MEMBER_BYTES + 1))]),
      match="limit", big=True),
    C("deflate-ratio-over-1024", lambda: plain_npz([deflated("names.npy", np_bytes(np.array(["w", "b"])),
                                                             usize=10 ** 9), *objax_entries()[1:]]),
      match="ratio", big=True),
    C("deflate-inflates-past-declared-size", lambda: plain_npz(
        [*objax_entries()[:1], deflated("0.npy", np_bytes(W), usize=100), *objax_entries()[2:]]),
      match="past"),
    C("deflate-inflates-short-of-declared-size", lambda: plain_npz(
        [*objax_entries()[:1], deflated("0.npy", np_bytes(W), usize=300), *objax_entries()[2:]])),
    C("deflate-declared-size-is-a-lie", _deflate_lie, big=True),
    C("deflate-stream-invalid", lambda: plain_npz(
        [*objax_entries()[:1], E("0.npy", b"\xff" * 64, method=8, usize=224), *objax_entries()[2:]]),
      ChecksumError),
    C("deflate-crc-mismatch", lambda: plain_npz(
        [*objax_entries()[:1], deflated("0.npy", np_bytes(W), crc=1234), *objax_entries()[2:]]), ChecksumError,
      match="CRC"),
    C("too-many-members-100001", lambda: many_members_zip(_limits.MAX_MEMBERS + 1), match="100001", big=True),
    C("too-many-members-claimed", _too_many_claimed, match="limit", big=True),
    C("too-many-members-patched-limit", lambda: base(), limits={"MAX_MEMBERS": 3}, match="limit of 3"),
    C("multi-disk-archive", lambda: build_zip(objax_entries(), disk=1),
      match="multi-disk"),
    C("end-record-claims-more-entries", lambda: build_zip(objax_entries(), n_entries=200)),
    C("central-directory-offset-past-end", lambda: build_zip(objax_entries(), cd_offset_delta=10 ** 6)),
    C("zip64-locator-missing", lambda: build_zip(objax_entries(), n_entries=0xFFFF), match="zip64"),
    C("empty-zip-archive", lambda: b"PK\x05\x06" + b"\0" * 18, CkptError),
    C("zip-without-npy-members", lambda: build_zip([E("readme.txt", b"hello")]), CkptError),
    # not a zip at all
    C("empty-file", lambda: b"", CkptError),
    C("random-bytes", lambda: np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
      NotAPackError),
    C("pickle-protocol-5", lambda: pickle.dumps({"w": W}, protocol=5), NotAPackError, match="pickle"),
    C("pickle-protocol-0", lambda: pickle.dumps({"w": [1.0]}, protocol=0), NotAPackError, match="pickle"),
    C("7z-archive-header", lambda: b"7z\xbc\xaf\x27\x1c\x00\x04" + b"\0" * 100, NotAPackError, match="7z"),
    C("gzip-stream", lambda: gzip.compress(base()), NotAPackError, match="gzip"),
    C("single-npy-file", lambda: np_bytes(W), NotAPackError, match=".npy"),
]
CASES_BY_ID = {c.id: c for c in CASES}
assert len(CASES_BY_ID) == len(CASES), "case ids must be unique"


# -- running a refusal -------------------------------------------------------------------------------
def _call(api: str, path: str, logdir: str) -> Any:
    if api == "ckpt.load":
        return ckpt.load(path)
    if api == "Pack":
        with ckpt.Pack(path) as pack:
            out = [pack.load()]
            if "config" in pack:
                out.append(pack.load("config"))
            pack.verify()
            return out
    if api == "load_var_collection":
        return ckpt.load_var_collection(path, target())
    if api == "Checkpoint.restore":
        return ckpt.Checkpoint(logdir, verbose=False).restore(target(), idx=1)
    if api == "Checkpoint.restore+extras":
        extras: dict[str, Any] = {"config": None}
        return ckpt.Checkpoint(logdir, verbose=False).restore(target(), idx=1, extras=extras), extras
    raise AssertionError(api)


def run_guarded(fn: Callable[[], Any], timeout: float = WATCHDOG_S) -> tuple[BaseException | None, int]:
    """Run ``fn`` in a watchdog thread under tracemalloc; (exception or None, peak traced growth in bytes)."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - everything is reported to the test
            box["exc"] = e

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        t = threading.Thread(target=body, daemon=True)
        t.start()
        t.join(timeout)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    if t.is_alive():
        pytest.fail(f"still running after {timeout} s (a hang on a hostile file)")
    return box.get("exc"), peak


@pytest.fixture(scope="module")
def case_files(tmp_path_factory):
    """Case id -> path of its file, built once per module (the big ones are tens of MB)."""
    root = tmp_path_factory.mktemp("malformed")
    cache: dict[str, str] = {}

    def get(case: Case) -> str:
        if case.id not in cache:
            path = root / f"{case.id}.npz"
            path.write_bytes(case.build())
            cache[case.id] = str(path)
        return cache[case.id]

    return get


def _place(src: str, logdir: str) -> str:
    d = os.path.join(logdir, "ckpt")
    os.makedirs(d, exist_ok=True)
    dst = os.path.join(d, ckpt.Checkpoint.FILE_FORMAT % 1)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
    return dst


PARAMS = [pytest.param(c, api, id=f"{c.id}-{api}") for c in CASES for api in c.apis]


@pytest.mark.parametrize("case, api", PARAMS)
def test_malformed_file_is_refused(case: Case, api: str, case_files, tmp_path, monkeypatch):
    src = case_files(case)
    logdir = str(tmp_path / "log")
    path = _place(src, logdir) if api.startswith("Checkpoint") else src
    for name, value in (case.limits or {}).items():
        monkeypatch.setattr(_limits, name, value)

    exc, peak = run_guarded(lambda: _call(api, path, logdir))

    assert exc is not None, f"{case.id}: {api} accepted a malformed file"
    if not isinstance(exc, CkptError):
        raise AssertionError(f"{case.id}: {api} raised a raw {type(exc).__name__}, not a CkptError: {exc}") from exc
    assert isinstance(exc, case.expect), f"expected {case.expect.__name__}, got {type(exc).__name__}: {exc}"
    assert os.path.basename(path) in str(exc), f"the message does not name the file: {exc}"
    assert exc.file is not None and os.path.basename(path) in exc.file, f"{type(exc).__name__}.file is {exc.file!r}"
    if case.match is not None:
        assert case.match in str(exc), f"{case.match!r} not in {exc}"
    assert peak < MEMORY_LIMIT, f"refusing took {peak / MiB:.0f} MiB of traced memory"


def test_the_table_is_large_and_named():
    assert len(CASES) >= 35
    assert all(c.id and " " not in c.id for c in CASES)


# -- the base file and the rewrite helper are sound, so the cases test what they say ---------------------
@pytest.mark.parametrize("build", [base, repack], ids=["base", "repack-unchanged"])
@pytest.mark.parametrize("api", ALL_APIS + ("Checkpoint.restore+extras",))
def test_undamaged_files_load_everywhere(build, api, tmp_path):
    src = tmp_path / "ok.npz"
    src.write_bytes(build())
    logdir = str(tmp_path / "log")
    path = _place(str(src), logdir) if api.startswith("Checkpoint") else str(src)
    exc, _ = run_guarded(lambda: _call(api, path, logdir))
    assert exc is None, exc
    out = ckpt.load(str(src))
    np.testing.assert_array_equal(out["w"], W)
    np.testing.assert_array_equal(out["b"], B)
    with ckpt.Pack(str(src)) as pack:
        assert pack.load("config") == CONFIG
        pack.verify()


def test_plain_npz_helpers_build_valid_files(tmp_path):
    path = tmp_path / "plain.npz"
    path.write_bytes(plain_npz(objax_entries()))
    t = ckpt.load_var_collection(str(path), target())
    np.testing.assert_array_equal(t["w"], W)
    path.write_bytes(plain_npz([*objax_entries()[:1], deflated("0.npy", np_bytes(W)), *objax_entries()[2:]]))
    np.testing.assert_array_equal(ckpt.load(str(path))["w"], W)
    with np.load(path) as z:  # numpy agrees the deflated file is sound
        np.testing.assert_array_equal(z["0"], W)


def test_limits_are_read_at_call_time(tmp_path, monkeypatch):
    """The readers look the limits up when they run, so a patched limit is honoured (as two cases rely on)."""
    path = tmp_path / "ok.npz"
    path.write_bytes(base())
    ckpt.load(str(path))
    monkeypatch.setattr(_limits, "MAX_MEMBERS", 4)
    with pytest.raises(FormatError, match="limit of 4"):
        ckpt.load(str(path))
    monkeypatch.setattr(_limits, "MAX_MEMBERS", 5)
    ckpt.load(str(path))


def test_many_members_zip_is_real():
    """The writer behind the 100,001-entry case makes real zips (zipfile reads a small one entry by entry)."""
    with zipfile.ZipFile(io.BytesIO(many_members_zip(300))) as zf:
        assert zf.namelist() == [f"{i}.txt" for i in range(300)]
        assert zf.testzip() is None
    data = many_members_zip(_limits.MAX_MEMBERS + 1)
    assert data.count(b"PK\x01\x02") == data.count(b"PK\x03\x04") == _limits.MAX_MEMBERS + 1


# -- sweeps: every bit flip and every truncation of the base file ----------------------------------------
@pytest.fixture
def cached_versions(monkeypatch):
    """The sweeps open thousands of files: look installed package versions up once, not per slot and file."""
    monkeypatch.setattr(ckpt.deps, "installed_version", functools.lru_cache(maxsize=None)(ckpt.deps.installed_version))


def test_every_truncation_is_refused(cached_versions):
    data = base()
    raw = []
    for n in range(len(data)):
        try:
            ckpt.load_var_collection(io.BytesIO(data[:n]), target())
        except CkptError:
            continue
        except Exception as e:  # noqa: BLE001
            raw.append((n, repr(e)))
            continue
        raw.append((n, "accepted"))
    assert not raw, raw[:10]


@pytest.mark.parametrize("mask, source, stride", [(0x01, "BytesIO", 1), (0x80, "BytesIO", 1), (0x10, "file", 4)])
def test_every_bit_flip_is_refused_or_harmless(cached_versions, tmp_path, mask, source, stride):
    """Flip one bit at each offset: ckpt refuses with a CkptError, or (a flip in a field nothing relies on,
    such as a timestamp or the local copy of a size) loads the exact original values.
    From memory, and (every ``stride``-th offset, to spare the disk) from a real file, which the reader maps."""
    data = base()
    path = tmp_path / "flipped.npz"
    bad = []
    for offset in range(0, len(data), stride):
        d = bytearray(data)
        d[offset] ^= mask
        if source == "file":
            path.write_bytes(d)
        try:
            with ckpt.Pack(str(path) if source == "file" else io.BytesIO(bytes(d))) as pack:
                main = pack.load()
                config = pack.load("config")
                pack.verify()
        except CkptError:
            continue
        except Exception as e:  # noqa: BLE001
            bad.append((offset, repr(e)))
            continue
        if not (set(main) == {"w", "b"} and np.array_equal(main["w"], W) and main["w"].dtype == W.dtype
                and np.array_equal(main["b"], B) and main["b"].dtype == B.dtype and config == CONFIG):
            bad.append((offset, "loaded different values"))
    assert not bad, bad[:10]


# -- large claims, measured from outside: the process's peak RSS barely moves --------------------------
_RSS_SCRIPT = textwrap.dedent("""
    import sys, warnings
    import numpy as np
    import ckpt
    warnings.simplefilter("error")

    def peak_rss():
        # VmHWM is this process's own high-water mark; ru_maxrss would carry over the parent's across exec.
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024

    def target():
        return {"w": np.zeros((3, 4)), "b": np.zeros(4, np.int32)}

    def pack_load(p):
        with ckpt.Pack(p) as pack:
            return pack.load()

    paths = sys.argv[1:]
    calls = [ckpt.load, pack_load, lambda p: ckpt.load_var_collection(p, target())]
    # warm up every code path on a valid file first, so imports and caches are not counted
    for call in calls:
        call(paths[0])
    before = peak_rss()
    for p in paths[1:]:
        for call in calls:
            try:
                call(p)
            except ckpt.CkptError:
                pass
            else:
                sys.exit("accepted " + p)
    print(peak_rss() - before)
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_large_claims_do_not_raise_peak_rss(case_files, tmp_path):
    ok = tmp_path / "ok.npz"
    ok.write_bytes(base())
    big = [case_files(c) for c in CASES if c.big]
    assert len(big) >= 6
    proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(ok), *big], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    growth = int(proc.stdout.strip().splitlines()[-1])
    assert growth < MEMORY_LIMIT, f"peak RSS grew by {growth / MiB:.0f} MiB while refusing {len(big)} files"


# -- a names.npy of many duplicates must be refused quickly -------------------------------------------
def _many_duplicate_names(n: int) -> bytes:
    entries = [E("names.npy", np_bytes(np.array(["dup"] * n)))]  # not 1 char: CPython caches those
    entries += [E(f"{i}.npy", b"") for i in range(n)]
    return build_zip(entries)


def test_duplicate_name_report_is_not_quadratic(tmp_path):
    """50,000 identical names (a 5 MB file) must be refused, not hang: a quadratic duplicate report
    (2.5e9 comparisons) would run past the watchdog; a linear one takes well under a second."""
    path = tmp_path / "dups.npz"
    path.write_bytes(_many_duplicate_names(50_000))
    exc, _ = run_guarded(lambda: ckpt.load_var_collection(str(path), target()), timeout=60)
    assert isinstance(exc, FormatError) and "duplicate" in str(exc), exc


def test_zero_itemsize_arrays_load_as_numpy_loads_them(tmp_path):
    """A .npy of a zero-size dtype holds no data bytes; numpy.load reads it, and so must ckpt."""
    path = tmp_path / "v0.npz"
    path.write_bytes(plain_npz([E("names.npy", np_bytes(np.array(["e"]))),
                                E("0.npy", npy(w_header("(3, 2)", "'|V0'")))]))
    with np.load(path) as z:
        expected = z["0"]
    out = ckpt.load(str(path))
    assert out["e"].dtype == expected.dtype and out["e"].shape == expected.shape == (3, 2)


_NAMES_RSS_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, ckpt

    def peak_rss():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024

    before = peak_rss()
    try:
        ckpt.load_var_collection(sys.argv[1], {"w": np.zeros((3, 4)), "b": np.zeros(4, np.int32)})
    except ckpt.FormatError as e:
        assert "names for" in str(e), e
    else:
        sys.exit("accepted")
    print(peak_rss() - before)
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_names_count_is_checked_before_the_names_are_converted(tmp_path):
    path = tmp_path / "names.npz"
    path.write_bytes(plain_npz([E("names.npy", np_bytes(np.array(["ab"] * 2_000_000))), *objax_entries()[1:]]))
    proc = subprocess.run([sys.executable, "-c", _NAMES_RSS_SCRIPT, str(path)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    growth = int(proc.stdout.strip().splitlines()[-1])
    assert growth < MEMORY_LIMIT, f"peak RSS grew by {growth / MiB:.0f} MiB refusing a {path.stat().st_size / MiB:.0f} MiB file"
