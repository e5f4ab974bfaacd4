"""The bytes on disk: aligned members, deterministic output, a zip any reader accepts, a truthful manifest."""

from __future__ import annotations

import io
import json
import os
import threading
import zipfile

import numpy as np
import pytest

import ckpt
from helpers import MANIFEST, assert_arrays_identical, content_digest, assert_dicts_identical, data_offsets, read_manifest

ALIGN = 64


@pytest.fixture(scope="module")
def mixed():
    rng = np.random.default_rng(99)
    return {
        "a": rng.standard_normal((3, 5)).astype(np.float32),
        "odd_size": np.arange(7, dtype=np.int8),
        "scalar": np.array(1.5),
        "empty": np.zeros((0, 4)),
        "fortran": np.asfortranarray(rng.standard_normal((4, 3))),
        "flags": np.array([True, False, True]),
    }


def _pack_with_everything(path, mixed):
    with ckpt.Pack(path) as pack:
        pack.dump("main", mixed)
        pack.dump("cfg", {"lr": 0.1, "name": "x" * 13})
        pack.dump("blob", b"\x01" * 37)
        pack.dump("obj", (1, 2, 3))
        pack.dump("ema", {k: v * 2 for k, v in mixed.items()})
        pack.remove("blob")  # a rewrite that copies the kept members


def _pipe_bytes(write):
    """Run ``write(f)`` on the write end of a real OS pipe (not seekable) and return what came out."""
    r, w = os.pipe()
    chunks = []

    def drain():
        with open(r, "rb") as f:
            while True:
                data = f.read(65536)
                if not data:
                    return
                chunks.append(data)

    t = threading.Thread(target=drain)
    t.start()
    try:
        with open(w, "wb") as f:
            assert not f.seekable()
            write(f)
    finally:
        t.join()
    return b"".join(chunks)


def _file_kinds(tmp_path, mixed):
    p1 = tmp_path / "varfile.npz"
    ckpt.save_var_collection(p1, mixed)
    p2 = tmp_path / "pack.npz"
    _pack_with_everything(p2, mixed)
    ck = ckpt.Checkpoint(tmp_path / "run")
    p3 = ck.save(mixed, 1, extras={"metrics": {"loss": 0.25}, "opt": {"m": mixed["a"] + 1}})
    buf = io.BytesIO()
    with ckpt.Pack(buf) as pack:
        pack.dump("main", mixed)
        pack.dump("cfg", [1, 2, 3])
    piped = _pipe_bytes(lambda f: ckpt.save_var_collection(f, mixed))
    return {"save_var_collection": p1.read_bytes(), "pack_rewritten": p2.read_bytes(),
            "checkpoint": _read(p3), "bytesio_pack": buf.getvalue(),
            "non_seekable_pipe": piped}


def _read(path):
    with open(path, "rb") as f:
        return f.read()


KINDS = ["save_var_collection", "pack_rewritten", "checkpoint", "bytesio_pack", "non_seekable_pipe"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, mixed):
    """Each kind of file ckpt writes, built once for the module (the tests only read them)."""
    return _file_kinds(tmp_path_factory.mktemp("kinds"), mixed)


@pytest.mark.parametrize("kind", KINDS)
def test_every_member_data_offset_is_aligned(files, kind):
    offsets = data_offsets(files[kind])
    assert MANIFEST in offsets
    misaligned = {name: off for name, off in offsets.items() if off % ALIGN}
    assert misaligned == {}


@pytest.mark.parametrize("kind", KINDS)
def test_npy_array_data_is_aligned_too(files, kind):
    data = files[kind]
    for name, off in data_offsets(data).items():
        if not name.endswith(".npy"):
            continue
        assert data[off:off + 6] == b"\x93NUMPY"
        header_len = 10 + int.from_bytes(data[off + 8:off + 10], "little") if data[off + 6] == 1 else \
            12 + int.from_bytes(data[off + 8:off + 12], "little")
        assert (off + header_len) % ALIGN == 0, name


@pytest.mark.parametrize("kind", KINDS)
def test_zipfile_accepts_the_file(files, kind, mixed):
    with zipfile.ZipFile(io.BytesIO(files[kind])) as zf:
        assert zf.testzip() is None
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        names = zf.namelist()
        assert len(names) == len(set(names))
        assert names[-1] == MANIFEST, "the manifest is written last"
    with np.load(io.BytesIO(files[kind])) as z:
        assert [str(n) for n in z["names"]] == list(mixed)
        for i, v in enumerate(mixed.values()):
            assert_arrays_identical(z[str(i)], v)


@pytest.mark.parametrize("kind", KINDS)
def test_ckpt_reads_every_kind_back(files, kind, mixed):
    assert_dicts_identical(ckpt.load(io.BytesIO(files[kind])), mixed)


def test_non_seekable_output_uses_data_descriptors(files):
    with zipfile.ZipFile(io.BytesIO(files["non_seekable_pipe"])) as zf:
        assert all(i.flag_bits & 0x08 for i in zf.infolist())
    with zipfile.ZipFile(io.BytesIO(files["save_var_collection"])) as zf:
        assert not any(i.flag_bits & 0x08 for i in zf.infolist())


def test_manifest_tells_the_truth(tmp_path, mixed):
    path = tmp_path / "pack.npz"
    _pack_with_everything(path, mixed)
    doc = read_manifest(path)
    assert doc["format"] == "ckpt.pack" and doc["version"] == 2  # 2: BLAKE3 digests (the default)
    with zipfile.ZipFile(path) as zf:
        contents = {n: zf.read(n) for n in zf.namelist() if n != MANIFEST}
    assert set(doc["members"]) == set(contents)
    for name, data in contents.items():
        assert doc["members"][name] == {"size": len(data), "blake3": content_digest(data, "blake3")}
    assert set(doc["slots"]) == {"main", "cfg", "obj", "ema"}
    assert doc["slots"]["main"]["members"][:2] == ["names.npy", "0.npy"]
    assert all(m.startswith("cfg/") for m in doc["slots"]["cfg"]["members"])
    assert [a["name"] for a in doc["slots"]["main"]["info"]["arrays"]] == list(mixed)
    assert json.loads(contents["cfg/data.json"]) == {"lr": 0.1, "name": "x" * 13}


def test_same_input_same_bytes_with_source_date_epoch(tmp_path, monkeypatch, mixed):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    ckpt.save_var_collection(tmp_path / "a.npz", mixed)
    ckpt.save_var_collection(tmp_path / "b.npz", {k: v.copy(order="K") for k, v in mixed.items()})
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()

    _pack_with_everything(tmp_path / "p1.npz", mixed)
    _pack_with_everything(tmp_path / "p2.npz", mixed)
    assert (tmp_path / "p1.npz").read_bytes() == (tmp_path / "p2.npz").read_bytes()

    a = ckpt.Checkpoint(tmp_path / "r1").save(mixed, 5, extras={"cfg": {"lr": 1}})
    b = ckpt.Checkpoint(tmp_path / "r2").save(mixed, 5, extras={"cfg": {"lr": 1}})
    assert _read(a) == _read(b)
    assert read_manifest(a)["created_at"] == "2023-11-14T22:13:20.000000Z"


def test_without_source_date_epoch_only_the_manifest_differs(tmp_path, mixed):
    ckpt.save_var_collection(tmp_path / "a.npz", mixed)
    ckpt.save_var_collection(tmp_path / "b.npz", mixed)
    with zipfile.ZipFile(tmp_path / "a.npz") as za, zipfile.ZipFile(tmp_path / "b.npz") as zb:
        assert za.namelist() == zb.namelist()
        for name in za.namelist():
            if name != MANIFEST:
                assert za.read(name) == zb.read(name), name


def test_fortran_arrays_are_stored_in_fortran_order(tmp_path):
    f = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    path = tmp_path / "f.npz"
    ckpt.save_var_collection(path, {"f": f})
    with np.load(path) as z:
        loaded = z["0"]
    assert loaded.flags.f_contiguous and not loaded.flags.c_contiguous
    assert_arrays_identical(loaded, f)
    assert ckpt.load(path)["f"].flags.f_contiguous
