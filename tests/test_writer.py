"""The zip writer's fast paths change no byte: small members in one write, early write-out, BLAKE3 overlap."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from helpers import content_digest, read_manifest

import ckpt
from ckpt import _writeback, _zip
from ckpt.errors import FormatError

HERE = os.path.dirname(__file__)
GOLDEN = os.path.join(HERE, "data", "format1-sha256.npz")
# The code that wrote the golden file (tests/test_digest.py's golden_values() holds the same values).
MAKE_GOLDEN = """
import sys
import ml_dtypes
import numpy as np
import ckpt
rng = np.random.default_rng(20)
with ckpt.Pack(sys.argv[1]) as p:
    p.dump("main", {"w": rng.standard_normal((8, 16), dtype=np.float32), "b": np.arange(5, dtype=np.int64),
                    "h": rng.standard_normal(32).astype(ml_dtypes.bfloat16)})
    p.dump("ema", {"w": np.ones((8, 16), np.float32), "copy": np.arange(5, dtype=np.int64)})
    p.dump("packed", {"z": np.zeros(4096, np.float32)}, compression="zstd")
    p.dump("config", {"lr": 0.1, "name": "golden"})
    p.dump("blob", b"raw bytes \\x00\\x01")
    p.set_metadata({"note": "written by ckpt before issue 20"})
"""


def test_sha256_files_are_byte_identical_to_the_previous_writers(tmp_path):
    """With sha256 chosen, everything before the compressed member (whose bytes depend on the zstd
    version) is the same, byte for byte, as what the code before BLAKE3 wrote."""
    out = tmp_path / "again.npz"
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1764547200", "CKPT_DIGEST": "sha256", "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", MAKE_GOLDEN, str(out)], check=True, env=env, timeout=120)
    with zipfile.ZipFile(GOLDEN) as zf:
        stop = min(i.header_offset for i in zf.infolist() if i.filename.startswith("packed/"))
    with open(GOLDEN, "rb") as f:
        golden = f.read()
    assert out.read_bytes()[:stop] == golden[:stop]
    old, new = read_manifest(GOLDEN), read_manifest(out)
    assert new["version"] == old["version"] == 1
    for name in ("names.npy", "0.npy", "1.npy", "2.npy", "ema/names.npy", "ema/0.npy", "config/data.json",
                 "blob/data.bin"):
        assert new["members"][name] == old["members"][name], name


def test_early_write_out_changes_no_byte(tmp_path, monkeypatch):
    arrays = {"big": np.random.default_rng(0).random(5 << 20), "small": np.arange(7.0)}  # 40 MiB: 5 hints
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1764547200")
    ckpt.save_var_collection(str(tmp_path / "on.npz"), arrays)
    monkeypatch.setenv("CKPT_NO_WRITEBACK", "1")
    ckpt.save_var_collection(str(tmp_path / "off.npz"), arrays)
    assert (tmp_path / "on.npz").read_bytes() == (tmp_path / "off.npz").read_bytes()


def test_write_out_hints_only_for_regular_files(tmp_path):
    assert _writeback.starter(io.BytesIO()) is None
    r, w = os.pipe()
    try:
        with os.fdopen(w, "wb", closefd=False) as pipe:
            assert _writeback.starter(pipe) is None
    finally:
        os.close(r)
        os.close(w)
    with open(tmp_path / "f", "wb") as f:
        start = _writeback.starter(f)
        if sys.platform.startswith("linux"):
            assert start is not None
            f.write(b"x" * 100)
            f.flush()
            start(0, 100)  # a hint on a real file: no error, nothing changes
    assert (tmp_path / "f").read_bytes() == b"x" * 100


@pytest.mark.parametrize("seekable", [True, False])
def test_small_and_streamed_members_have_the_same_layout(seekable):
    """A member just under and just over the one-write limit: both valid, aligned, with right CRCs."""
    class Stream(io.BytesIO):
        def seekable(self):
            return False

    buf = io.BytesIO() if seekable else Stream()
    w = _zip.ZipWriter(buf)
    payloads = {"a.bin": os.urandom(_zip._SMALL), "b.bin": os.urandom(_zip._SMALL + 1), "c.bin": b"",
                "d.bin": b"xy"}
    digests = {n: w.add(n, len(d), [d[:3], d[3:]], algorithm="blake3").digest for n, d in payloads.items()}
    w.finish()
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        assert zf.testzip() is None
        for n, d in payloads.items():
            assert zf.read(n) == d
            assert digests[n] == content_digest(d, "blake3")
    assert all(m.data_offset % 64 == 0 for m in w.members)


@pytest.mark.parametrize("chunks", [[b"12345"], [b"1234567890", b"1"]])
def test_a_member_of_another_size_than_declared_is_an_internal_error(chunks):
    w = _zip.ZipWriter(io.BytesIO())
    with pytest.raises(ckpt.errors.InternalError, match="internal error") as info:  # a bug, not a bad file
        w.add("x.bin", 10, chunks)
    assert not isinstance(info.value, FormatError)


def test_large_members_hash_the_same_as_one_blake3_pass(tmp_path):
    """Chunks hashed on the helper thread (BLAKE3 over every core) give the one-pass digest."""
    data = np.random.default_rng(3).integers(0, 255, (40 << 20) + 12345, dtype=np.uint8)
    path = tmp_path / "big.npz"
    ckpt.save_var_collection(str(path), {"x": data})
    with zipfile.ZipFile(path) as zf:
        member = zf.read("0.npy")
    assert read_manifest(path)["members"]["0.npy"]["blake3"] == content_digest(member, "blake3")
