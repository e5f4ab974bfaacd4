"""ckpt, zipfile and numpy see the same archive: ckpt accepts a file only if they would read the same
member names and bytes, and refuses (FormatError, saying why) every archive they would read differently.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckpt
from ckpt import _zip
from ckpt.errors import CkptError, FormatError

EOCD = struct.Struct("<4s4H2IH")


def _archive(members: dict[str, bytes], *, deflate: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _npy(arr: np.ndarray) -> bytes:
    f = io.BytesIO()
    np.save(f, arr)
    return f.getvalue()


def _eocd(data: bytes) -> tuple[int, tuple]:
    pos = data.rfind(b"PK\x05\x06")
    return pos, EOCD.unpack_from(data, pos)


def _ckpt_view(data: bytes) -> dict[str, bytes]:
    r = _zip.ZipReader(io.BytesIO(data), file="x.zip")
    return {name: r.read(m) for name, m in r.members.items()}


def _refused(data: bytes, match: str) -> None:
    with pytest.raises(FormatError, match=match):
        _ckpt_view(data)


BASE = {"a.npy": _npy(np.arange(6.0)), "b.npy": _npy(np.ones(3, np.int32))}


def test_bytes_between_directory_and_end_record_are_refused():
    data = _archive(BASE)
    pos, _ = _eocd(data)
    hostile = data[:pos] + b"\0" * 46 + data[pos:]
    _refused(hostile, "end records start at")


def test_more_directory_entries_than_the_end_record_counts_are_refused():
    data = _archive(BASE)
    pos, rec = _eocd(data)
    cd_size, cd_offset = rec[5], rec[6]
    # zipfile reads entries until the directory's bytes run out: it sees 2, the count says 1.
    hostile = data[:pos] + EOCD.pack(rec[0], 0, 0, 1, 1, cd_size, cd_offset, 0)
    with zipfile.ZipFile(io.BytesIO(hostile)) as zf:
        assert len(zf.namelist()) == 2
    _refused(hostile, "after its 1 counted entries")


def test_fake_end_record_in_the_comment_is_refused():
    real = _archive(BASE)
    other = _archive({"a.npy": _npy(np.full(6, 7.0))})
    # One file: the real archive's members, then the other's; the comment carries an end record for the other.
    pos, rec = _eocd(real)
    o_pos, o_rec = _eocd(other)
    shift = pos
    fake = EOCD.pack(o_rec[0], 0, 0, o_rec[3], o_rec[4], o_rec[5], o_rec[6] + shift, 0)
    body = real[:pos]
    comment = other[:o_pos] + fake + b"zz"  # not flush with the end: only zipfile takes it
    hostile = body + EOCD.pack(rec[0], 0, 0, rec[3], rec[4], rec[5], rec[6], len(comment)) + comment
    if len(comment) > 0xFFFF:
        pytest.skip("comment too long")
    _refused(hostile, "second end-of-central-directory record")


def test_two_end_records_are_refused():
    data = _archive(BASE)
    pos, _ = _eocd(data)
    _refused(data + data[pos:pos + 22], "end records start at|second end")


def test_zip64_locator_that_points_elsewhere_is_refused():
    data = _archive(BASE)
    pos, rec = _eocd(data)
    cd_size, cd_offset = rec[5], rec[6]
    z64 = struct.pack("<4sQ2H2I4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 2, 2, cd_size, cd_offset)
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, 0, 1)  # points at offset 0, not at the record
    hostile = data[:pos] + z64 + locator + data[pos:]
    _refused(hostile, "zip64 end locator points at 0")


def test_zip64_record_that_contradicts_the_end_record_is_refused():
    data = _archive(BASE)
    pos, rec = _eocd(data)
    cd_size, cd_offset = rec[5], rec[6]
    z64 = struct.pack("<4sQ2H2I4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 1, 1, cd_size, cd_offset)
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, pos, 1)
    hostile = data[:pos] + z64 + locator + data[pos:]
    _refused(hostile, "contradicts the zip64 record")


def test_hidden_member_between_listed_members_is_refused():
    hidden = _archive({"evil.npy": _npy(np.full(3, 666.0))})
    _, h_rec = _eocd(hidden)
    local = hidden[:h_rec[6]]  # its local header and data only
    data = _archive(BASE)
    pos, rec = _eocd(data)
    cd = data[rec[6]:pos]
    # Insert the hidden member before the directory and shift the directory offset.
    hostile = data[:rec[6]] + local + cd + EOCD.pack(rec[0], 0, 0, rec[3], rec[4], rec[5], rec[6] + len(local), 0)
    with zipfile.ZipFile(io.BytesIO(hostile)) as zf:
        assert sorted(zf.namelist()) == sorted(BASE)  # zipfile does not see it; a streaming reader would
    _refused(hostile, "belong to no member")


def test_name_and_name_npy_are_the_same_key_to_numpy():
    data = _archive({"a": b"raw", "a.npy": _npy(np.arange(3))})
    _refused(data, "same key to numpy.load")


def test_local_header_name_read_with_its_own_utf8_flag():
    name = "é.npy"
    data = bytearray(_archive({name: _npy(np.arange(3))}))
    # Clear the local header's UTF-8 flag: zipfile then decodes it as cp437 and refuses the mismatch.
    flags = struct.unpack_from("<H", data, 6)[0]
    struct.pack_into("<H", data, 6, flags & ~0x800)
    with pytest.raises(zipfile.BadZipFile), zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        zf.read(name)
    _refused(bytes(data), "local header names it")


def test_np_savez_and_ckpt_files_still_read(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, w=np.arange(4.0))
    np.savez_compressed(tmp_path / "c.npz", w=np.zeros(1 << 20, np.float32))
    assert sorted(ckpt.load(path)) == ["w"]
    ckpt.dump({"w": np.arange(3.0)}, tmp_path / "p.npz")
    for p in ("a.npz", "c.npz", "p.npz"):
        with open(tmp_path / p, "rb") as f:
            _ckpt_view(f.read())


# -- differential: random archives, random damage ------------------------------------------------
_names = st.text(alphabet="abé/._-x0", min_size=1, max_size=8)


@st.composite
def _damaged_archive(draw):
    members = draw(st.dictionaries(_names, st.binary(max_size=64), min_size=1, max_size=4))
    data = bytearray(_archive(members, deflate=draw(st.booleans())))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "set"]))
        # Damage mostly where readers make decisions: the directory and end records.
        near_end = draw(st.booleans())
        lo = max(0, len(data) - 120) if near_end else 0
        pos = draw(st.integers(lo, max(lo, len(data) - 1)))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=24))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 8))]
        else:
            data[pos:pos + 4] = draw(st.sampled_from([b"PK\x05\x06", b"PK\x01\x02", b"PK\x03\x04", b"PK\x06\x07",
                                                      b"\xff\xff\xff\xff", b"\0\0\0\0"]))
    return bytes(data)


def _zipfile_view(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        assert len(names) == len(set(names)), names
        return {n: zf.read(n) for n in names}


@settings(max_examples=int(os.environ.get("CKPT_FUZZ_EXAMPLES", "1500")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(_damaged_archive())
def test_ckpt_accepts_an_archive_only_if_zipfile_reads_the_same(data):
    try:
        mine = _ckpt_view(data)
    except CkptError:
        return  # refused (FormatError or ChecksumError): nothing to compare
    theirs = _zipfile_view(data)  # must open, and read every member without error
    assert mine == theirs


def test_differential_harness_does_compare():
    data = _archive(BASE)
    assert _ckpt_view(data) == _zipfile_view(data) == BASE
    assert zlib.crc32(b"") == 0


@st.composite
def _damaged_npz(draw):
    names = draw(st.lists(st.text(alphabet="abxé_0", min_size=1, max_size=5), min_size=1, max_size=3, unique=True))
    arrays = {n: np.arange(draw(st.integers(0, 6)), dtype=draw(st.sampled_from(["<f4", "<i8", "|u1", ">f8"])))
              for n in names}
    buf = io.BytesIO()
    (np.savez_compressed if draw(st.booleans()) else np.savez)(buf, **arrays)
    data = bytearray(buf.getvalue())
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(data) - 1))
        if draw(st.booleans()):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        else:
            data[pos:pos + 1] = draw(st.sampled_from([b"\x00", b"\xff", b"(", b",", b"1", b"'", b"PK\x05\x06"]))
    return bytes(data)


@settings(max_examples=int(os.environ.get("CKPT_FUZZ_EXAMPLES", "1500")) // 3, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(_damaged_npz())
def test_ckpt_loads_an_npz_only_as_numpy_reads_it(data):
    try:
        mine = ckpt.load(io.BytesIO(data))
    except CkptError:
        return
    with np.load(io.BytesIO(data), allow_pickle=False) as theirs:
        for name, arr in mine.items():
            other = theirs[name]
            assert arr.dtype == other.dtype and arr.shape == other.shape, name
            assert arr.tobytes() == other.tobytes(), name
