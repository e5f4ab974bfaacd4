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


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_digests_hashed_behind_the_writer_match_one_pass_for_every_size(algorithm, monkeypatch):
    """Members of every size class (inline, handed to the hashing thread, streamed, larger than the
    in-flight bound) in one file: each recorded digest is the one-pass digest of its bytes, whatever
    order the hashing thread finished in."""
    monkeypatch.setattr(_zip, "_BEHIND_BYTES", 1 << 20)  # the writer must wait for the hashing thread often
    rng = np.random.default_rng(7)
    sizes = [0, 10, _zip._INLINE, _zip._INLINE + 1, _zip._SMALL, _zip._SMALL + 1, 3 << 20, 5, 1 << 20]
    payloads = {f"m{i}.bin": rng.integers(0, 255, s, dtype=np.uint8).tobytes() for i, s in enumerate(sizes)}
    buf = io.BytesIO()
    w = _zip.ZipWriter(buf)
    written = {n: w.add(n, len(d), [d[i:i + 300_000] for i in range(0, len(d), 300_000)] or [b""],
                        algorithm=algorithm) for n, d in payloads.items()}
    w.finish()
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        assert zf.testzip() is None
    for n, d in payloads.items():
        assert written[n].digest == content_digest(d, algorithm), n


def test_a_failed_member_leaves_no_digest_running_on_its_chunks(monkeypatch):
    """A source that fails mid-member: by the time write_pack raises, the hashing thread holds none of
    the chunks handed to it (the caller may reuse its buffers at once, as async snapshots do)."""
    import gc
    import time
    import weakref

    from ckpt import _digest, _packfile, serializers

    real_new = _digest.new

    class SlowHasher:  # a hashing thread far behind the writer
        def __init__(self, *args):
            self._h = real_new("sha256")

        def update(self, data):
            time.sleep(0.05)
            self._h.update(data)

        def hexdigest(self):
            return self._h.hexdigest()

    monkeypatch.setattr(_zip._digest, "new", SlowHasher)
    handed: list[weakref.ref] = []

    class Tracked(bytearray):
        pass

    def chunks():
        for _ in range(4):
            b = Tracked(os.urandom(1 << 20))
            handed.append(weakref.ref(b))
            yield b
        raise OSError("the source failed")

    enc = serializers.Encoded("raw", [serializers.MemberSource("data.bin", 8 << 20, chunks)])
    with pytest.raises(OSError, match="the source failed"):
        _packfile.write_pack(io.BytesIO(), new={"blob": enc})
    gc.collect()
    assert len(handed) == 4 and all(r() is None for r in handed)  # nothing still queued holds a chunk


def test_identical_members_of_later_slots_still_share_one_copy(tmp_path):
    """Deduplication now reads only same-size members' digests: an extras slot equal to the main slot's
    arrays still points at the main slot's members, and different arrays of the same size do not."""
    w = np.arange(100_000, dtype=np.float32)
    other = w[::-1].copy()  # same size, other bytes
    path = str(tmp_path / "d.npz")
    with ckpt.Pack(path) as p:
        p.dump("main", {"w": w, "v": np.ones(7)})
        p.dump("ema", {"w": w.copy(), "o": other})
    m = read_manifest(path)
    ema = m["slots"]["ema"]["members"]
    assert m["slots"]["main"]["members"][1] in ema  # the copy of w is the main slot's member
    assert len(set(ema)) == len(ema) and all(k in m["members"] for k in ema)
    with ckpt.Pack(path) as p:
        got = p.load("ema")
    np.testing.assert_array_equal(got["w"], w)
    np.testing.assert_array_equal(got["o"], other)
