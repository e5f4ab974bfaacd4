"""Helpers that inspect and doctor real pack files with the standard library's zipfile.

Kept independent of ckpt's own zip code on purpose: the tests check ckpt's
output with a second implementation, and build damaged or hostile files the
way an outsider would.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import struct
import zipfile
from typing import Any, Callable, Mapping, Optional

import numpy as np

MANIFEST = "__ckpt__/manifest.json"
_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # 30 bytes


def _open_zip(source):
    if isinstance(source, (bytes, bytearray)):
        return zipfile.ZipFile(io.BytesIO(bytes(source)))
    return zipfile.ZipFile(source)


def data_offsets(source) -> dict[str, int]:
    """Member name -> absolute offset of its first data byte, from the local headers."""
    if isinstance(source, (bytes, bytearray)):
        raw = bytes(source)
    else:
        with open(source, "rb") as f:
            raw = f.read()
    out = {}
    with _open_zip(raw) as zf:
        for info in zf.infolist():
            sig, *_rest, name_len, extra_len = _LOCAL_HEADER.unpack_from(raw, info.header_offset)
            assert sig == b"PK\x03\x04", info.filename
            out[info.filename] = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    return out


def npy_data_offset(path, member: str) -> int:
    """Absolute file offset of the first array byte of a stored .npy member."""
    start = data_offsets(path)[member]
    with open(path, "rb") as f:
        f.seek(start)
        head = f.read(12)
    assert head[:6] == b"\x93NUMPY", head
    if head[6] == 1:
        return start + 10 + int.from_bytes(head[8:10], "little")
    return start + 12 + int.from_bytes(head[8:12], "little")


def flip_byte(path, offset: int, mask: int = 0x01) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def read_manifest(source) -> dict[str, Any]:
    with _open_zip(source) as zf:
        return json.loads(zf.read(MANIFEST))


def member_names(source) -> list[str]:
    with _open_zip(source) as zf:
        return zf.namelist()


def slot_digest(member_hashes: list[str], algorithm: str = "sha256") -> str:
    """A slot's digest as docs/FORMAT.md defines it, computed here without ckpt."""
    return content_digest(b"".join(bytes.fromhex(hx) for hx in member_hashes), algorithm)


def content_digest(data: bytes, algorithm: str = "sha256") -> str:
    if algorithm == "blake3":
        import blake3
        return blake3.blake3(data).hexdigest()
    return hashlib.new(algorithm, data).hexdigest()


def digest_field(record: dict) -> str:
    """Which digest a manifest record (member or slot) holds: "blake3" or "sha256"."""
    (algorithm,) = [a for a in ("blake3", "sha256") if a in record]
    return algorithm


def rehash(doc: dict, replaced: Mapping[str, bytes]) -> None:
    """Make a manifest consistent again after members were replaced, as an attacker who controls the
    whole file would: each replaced member gets its new size and digest (same algorithm as before),
    every slot its recomputed digest and size."""
    for name, data in replaced.items():
        old = doc["members"].get(name, {})
        algorithm = digest_field(old) if old else "sha256"
        doc["members"][name] = {"size": len(data), algorithm: content_digest(data, algorithm)}
    for slot in doc["slots"].values():
        algorithm = digest_field(slot)
        slot[algorithm] = slot_digest([doc["members"][m][digest_field(doc["members"][m])] for m in slot["members"]],
                                      algorithm)
        slot["size"] = sum(doc["members"][m]["size"] for m in slot["members"])


def rewrite_pack(src, dst, *, edit_manifest: Optional[Callable[[dict], None]] = None,
                 replace_members: Optional[Mapping[str, bytes]] = None) -> None:
    """Build a new zip at ``dst`` from the pack ``src``, as an outsider with zipfile would.

    ``replace_members`` swaps member contents and recomputes their size and
    digest (and the digests of the slots using them), so the result is a
    self-consistent pack; ``edit_manifest(doc)`` then changes the manifest in
    place. zipfile recomputes every CRC, including the manifest's.
    """
    replace_members = dict(replace_members or {})
    with zipfile.ZipFile(src) as zin:
        contents = {i.filename: zin.read(i.filename) for i in zin.infolist()}
    doc = json.loads(contents.pop(MANIFEST))
    contents.update(replace_members)
    rehash(doc, replace_members)
    if edit_manifest is not None:
        edit_manifest(doc)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for name, data in contents.items():
            zout.writestr(name, data)
        zout.writestr(MANIFEST, json.dumps(doc))


def temp_leftovers(directory) -> list[str]:
    """Names in ``directory`` that look like temp files a writer left behind."""
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


def assert_arrays_identical(actual, expected) -> None:
    """Same dtype, shape and bytes (NaN payloads and -0.0 included)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.tobytes() == expected.tobytes()


def assert_dicts_identical(actual: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    assert list(actual) == list(expected)
    for k in expected:
        assert_arrays_identical(actual[k], expected[k])


def snapshot(vc) -> dict[str, np.ndarray]:
    """Copies of the values of an objax VarCollection, or of a dict of arrays, by name."""
    if type(vc) is not dict:  # an objax VarCollection (a dict subclass) of variables
        return {k: np.array(v.value) for k, v in vc.items()}
    return {k: np.array(v) for k, v in vc.items()}


def os_system_pickle(sentinel) -> bytes:
    """A protocol-0 pickle that imports ``os.system`` and runs ``touch <sentinel>`` when loaded."""
    cmd = "touch " + shlex.quote(os.fspath(sentinel))
    return b"cos\nsystem\n(V" + cmd.encode("raw_unicode_escape") + b"\ntR."


class TouchOnUnpickle:
    """Pickles (protocol 2+) to a call of os.system, which pickle records as posix.system."""

    def __init__(self, sentinel):
        self.cmd = "touch " + shlex.quote(os.fspath(sentinel))

    def __reduce__(self):
        return (os.system, (self.cmd,))


def os_system_pickle_v5(sentinel) -> bytes:
    import pickle

    return pickle.dumps(TouchOnUnpickle(sentinel), protocol=5)
