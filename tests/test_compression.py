"""Opt-in compression: byte shuffle + zstd/lz4 in parallel chunks, raw fallback, corruption."""

from __future__ import annotations

import json
import tracemalloc
import zipfile

import numpy as np
import pytest

import ckpt
from ckpt import _codec
from ckpt.errors import ChecksumError, FormatError

CODECS = [c for c in ("zstd", "lz4") if pytest.importorskip("importlib").util.find_spec(
    {"zstd": "zstandard", "lz4": "lz4"}[c]) is not None]


def trained_like(rng, shape, dtype=np.float32):
    """Weights with the exponent spread of trained layers: mostly small, a few larger outliers."""
    w = rng.standard_normal(shape) * 0.02
    w[rng.random(shape) < 0.01] *= 50
    return w.astype(dtype)


def model(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    return {
        "dense/kernel": trained_like(rng, (512, 1024)),
        "dense/bias": np.zeros(1024, np.float32),
        "emb": trained_like(rng, (1000, 256)).astype(ml_dtypes.bfloat16),
        "half": trained_like(rng, (256, 256), np.float16),
        "f64": trained_like(rng, (128, 128), np.float64),
        "fortran": np.asfortranarray(trained_like(rng, (300, 200))),
        "step": np.array(1234, np.int64),
        "noise": rng.integers(0, 256, 1 << 20, dtype=np.uint8),  # high entropy: stored raw
        "tiny": np.arange(3, dtype=np.float32),
    }


def raw_bytes(a):
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def members_of(path):
    return ckpt.inspect(path)["slots"]["main"]


@pytest.mark.parametrize("codec", CODECS)
def test_roundtrip_is_exact_for_every_dtype(tmp_path, codec):
    rng = np.random.default_rng(0)
    w = model(rng)
    path = tmp_path / "c.npz"
    ckpt.save_var_collection(path, w, compression=codec)
    back = ckpt.load(path)
    assert list(back) == list(w)
    for k in w:
        assert back[k].dtype == w[k].dtype, k
        assert back[k].shape == w[k].shape, k
        np.testing.assert_array_equal(raw_bytes(back[k]), raw_bytes(w[k]), err_msg=k)
    assert back["fortran"].flags.f_contiguous
    # Restoring into a collection works the same way.
    target = {k: np.zeros_like(v) for k, v in w.items()}
    ckpt.load_var_collection(path, target)
    np.testing.assert_array_equal(target["dense/kernel"], w["dense/kernel"])


@pytest.mark.parametrize("codec", CODECS)
def test_each_array_decides_and_records_its_encoding(tmp_path, codec):
    path = tmp_path / "c.npz"
    ckpt.save_var_collection(path, model(np.random.default_rng(1)), compression=codec)
    slot = members_of(path)
    enc = {a["name"]: a.get("encoding") for a in slot["arrays"]}
    assert enc["dense/kernel"] == f"{codec}+shuffle"
    assert enc["emb"] == f"{codec}+shuffle"
    assert enc["noise"] is None  # sampled ratio says it will not compress: stored raw
    assert enc["tiny"] is None and enc["step"] is None  # too small to bother
    names = dict(zip([a["name"] for a in slot["arrays"]], slot["members"][1:]))
    assert names["dense/kernel"].endswith(".ckz") and names["noise"].endswith(".npy")
    # Raw members are still ordinary .npy members numpy can read.
    with np.load(path) as z:
        np.testing.assert_array_equal(z[names["noise"][:-4]], model(np.random.default_rng(1))["noise"])


def test_compression_makes_trained_like_weights_smaller_and_shuffle_matters(tmp_path):
    pytest.importorskip("zstandard")
    rng = np.random.default_rng(2)
    w = {"k": trained_like(rng, (1024, 1024))}
    plain, packed = tmp_path / "p.npz", tmp_path / "z.npz"
    ckpt.save_var_collection(plain, w)
    ckpt.save_var_collection(packed, w, compression="zstd")
    ratio = packed.stat().st_size / plain.stat().st_size
    assert ratio < 0.9, ratio
    import zstandard
    no_shuffle = len(zstandard.ZstdCompressor(level=3).compress(w["k"].tobytes())) / w["k"].nbytes
    assert ratio < no_shuffle, (ratio, no_shuffle)


def test_default_stays_uncompressed_and_aligned(tmp_path):
    path = tmp_path / "p.npz"
    ckpt.save_var_collection(path, {"a": np.ones((100, 100), np.float32)})
    with zipfile.ZipFile(path) as z:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
        assert all(not n.endswith(".ckz") for n in z.namelist())


@pytest.mark.parametrize("codec", CODECS)
def test_checkpoint_manager_option_and_per_save_override(tmp_path, codec):
    ck = ckpt.Checkpoint(tmp_path, keep_ckpts=3, compression=(codec, 1))
    w = {"k": trained_like(np.random.default_rng(3), (256, 256))}
    p1 = ck.save(w, 1)
    p2 = ck.save(w, 2, compression=None)
    assert members_of(p1)["members"][1].endswith(".ckz")
    assert members_of(p2)["members"][1].endswith(".npy")
    target = {"k": np.zeros((256, 256), np.float32)}
    assert ck.restore(target, idx=1)[0] == 1
    np.testing.assert_array_equal(target["k"], w["k"])
    with pytest.raises(ValueError, match="unknown codec"):
        ckpt.Checkpoint(tmp_path, compression="brotli")


def _corrupt_member(path, member, offset_from_end):
    """Flip a byte inside a member and re-hash it in the manifest, so only the codec's own checks can notice."""
    from helpers import rehash
    with zipfile.ZipFile(path) as z:
        items = {n: z.read(n) for n in z.namelist()}
    data = bytearray(items[member])
    data[len(data) - offset_from_end] ^= 0x40
    items[member] = bytes(data)
    manifest = json.loads(items["__ckpt__/manifest.json"])
    rehash(manifest, {member: bytes(data)})
    items["__ckpt__/manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w") as z:
        for n, b in items.items():
            z.writestr(n, b)


@pytest.mark.parametrize("codec", CODECS)
def test_corrupt_chunk_is_a_checksum_error_naming_the_array(tmp_path, codec):
    w = {"weights": trained_like(np.random.default_rng(4), (512, 512))}
    path = tmp_path / "c.npz"
    ckpt.save_var_collection(path, w, compression=codec)
    member = members_of(path)["members"][1]
    # 1) Without re-hashing: the member's sha256 catches it.
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start + info.file_size - 100] ^= 0x01
    bad = tmp_path / "bad.npz"
    bad.write_bytes(raw)
    with pytest.raises(ChecksumError, match="0.ckz"):
        ckpt.load(bad)
    # 2) With a consistent manifest (the hash matches the damaged bytes): the codec's chunk checks catch it.
    for offset in (100, 5000):
        forged = tmp_path / f"forged{offset}.npz"
        forged.write_bytes(path.read_bytes())
        _corrupt_member(forged, member, offset)
        with pytest.raises(ChecksumError) as err:
            ckpt.load(forged)
        assert "weights" in str(err.value) and "chunk" in str(err.value)


def test_truncated_or_garbage_compressed_member_is_refused(tmp_path):
    pytest.importorskip("zstandard")
    h = _codec.header((10,), np.dtype(np.float32), False, _codec.Compression("zstd"), 40)
    with pytest.raises(ChecksumError, match="truncated"):
        _codec.decode(h, _codec.parse_header(h, where="x"), where="x")
    with pytest.raises(FormatError, match="magic"):
        _codec.parse_header(b"NOPE" + h[4:], where="x")
    bad_header = _codec.MAGIC + (12).to_bytes(4, "little") + b'{"codec": 1}'
    with pytest.raises(FormatError):
        _codec.parse_header(bad_header, where="x")


def test_compressed_save_memory_is_bounded_by_chunks_not_the_model(tmp_path):
    pytest.importorskip("zstandard")
    w = {f"w{i}": trained_like(np.random.default_rng(i), (1024, 1024)) for i in range(8)}  # 32 MiB
    tracemalloc.start()
    try:
        ckpt.save_var_collection(tmp_path / "m.npz", w, compression="zstd")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, peak  # a few 1 MiB chunks and their compressed output, not 32 MiB


def test_compressed_pack_slot_and_export_style_read(tmp_path):
    pytest.importorskip("zstandard")
    w = {"k": trained_like(np.random.default_rng(5), (300, 300))}
    with ckpt.Pack(tmp_path / "p.npz") as pack:
        pack.dump("ema", w, compression="zstd")
        assert pack.slots_info["ema"].members[1].endswith(".ckz")
        np.testing.assert_array_equal(pack.load("ema")["k"], w["k"])
        pack.verify()


# -- byte planes ------------------------------------------------------------
def _chunk_tables(path, member):
    """(method per plane) for every chunk of a compressed member, parsed independently of the decoder."""
    import struct
    with zipfile.ZipFile(path) as z:
        data = z.read(member)
    assert data[:4] == b"CKZ2"
    n = struct.unpack_from("<I", data, 4)[0]
    head = json.loads(data[8:8 + n])
    planes = head["descr"] and (np.dtype(head["descr"]).itemsize if head["filter"] == "shuffle" else 1)
    pos, tables = 8 + n, []
    while pos < len(data):
        pos += 4  # CRC-32
        entries = [struct.unpack_from("<IB", data, pos + 5 * k) for k in range(planes)]
        pos += 5 * planes + sum(length for length, _ in entries)
        tables.append([method for _, method in entries])
    assert pos == len(data)
    return head, tables


def test_only_the_exponent_plane_of_trained_floats_is_compressed(tmp_path):
    pytest.importorskip("zstandard")
    w = {"k": trained_like(np.random.default_rng(6), (1024, 1024))}  # 4 chunks of 1 MiB
    path = tmp_path / "z.npz"
    ckpt.save_var_collection(path, w, compression="zstd")
    head, tables = _chunk_tables(path, members_of(path)["members"][1])
    assert head["filter"] == "shuffle" and head["chunk_bytes"] == 1 << 20
    # float32 little-endian: planes 0-2 are mantissa noise (stored), plane 3 is sign + exponent (zstd).
    assert tables == [[_codec.STORED, _codec.STORED, _codec.STORED, _codec.PACKED]] * 4


def test_a_plane_that_stops_compressing_midway_is_stored_in_those_chunks(tmp_path):
    pytest.importorskip("zstandard")
    rng = np.random.default_rng(7)
    a = np.zeros(3 << 20, np.float32)  # 12 MiB; the sample (start and middle) sees only zeros
    a[(1 << 20):(3 << 19)] = rng.integers(0, 2**32, 1 << 19, dtype=np.uint32).view(np.float32)  # noise
    path = tmp_path / "z.npz"
    ckpt.save_var_collection(path, {"a": a}, compression="zstd")
    _, tables = _chunk_tables(path, members_of(path)["members"][1])
    assert tables[0] == [_codec.PACKED] * 4  # zeros
    assert tables[4] == [_codec.STORED] * 4 and tables[5] == [_codec.STORED] * 4  # noise: not worth it
    np.testing.assert_array_equal(ckpt.load(path)["a"].view(np.uint32), a.view(np.uint32))


def test_one_byte_dtypes_are_one_plane(tmp_path):
    pytest.importorskip("zstandard")
    q = np.clip(np.random.default_rng(8).normal(0, 6, 1 << 20), -127, 127).astype(np.int8)  # quantized
    path = tmp_path / "z.npz"
    ckpt.save_var_collection(path, {"q": q}, compression="zstd")
    head, tables = _chunk_tables(path, members_of(path)["members"][1])
    assert head["filter"] == "none" and tables == [[_codec.PACKED]]
    assert path.stat().st_size < 0.7 * q.nbytes
    np.testing.assert_array_equal(ckpt.load(path)["q"], q)


def test_same_array_twice_and_many_arrays_pipeline_across_members(tmp_path):
    pytest.importorskip("zstandard")
    rng = np.random.default_rng(9)
    shared = trained_like(rng, (512, 512))
    w = {f"layer{i}": trained_like(rng, (64 + i, 300)) for i in range(40)}  # chunks of many members in flight
    w.update({"tied/a": shared, "tied/b": shared, "after": trained_like(rng, (700, 700))})
    # The main slot keeps one member per array (numpy's layout): both copies are written.
    path = tmp_path / "z.npz"
    ckpt.save_var_collection(path, w, compression="zstd")
    back = ckpt.load(path)
    for k in w:
        np.testing.assert_array_equal(raw_bytes(back[k]), raw_bytes(w[k]), err_msg=k)
    # Other slots store one object once: the writer skips the second member the encoder prepared.
    with ckpt.Pack(tmp_path / "p.npz") as pack:
        pack.dump("ema", w, compression="zstd")
        members = dict(zip(list(w), pack.slots_info["ema"].members[1:]))
        assert members["tied/a"] == members["tied/b"] and members["after"].endswith(".ckz")
        back = pack.load("ema")
    for k in w:
        np.testing.assert_array_equal(raw_bytes(back[k]), raw_bytes(w[k]), err_msg=k)


def test_encoder_gives_the_same_bytes_when_a_member_is_asked_for_again():
    pytest.importorskip("zstandard")
    rng = np.random.default_rng(10)
    c = _codec.Compression("zstd")
    arrays = [trained_like(rng, (700, 900)), trained_like(rng, (300, 300))]
    enc = _codec.Encoder(window=2)
    jobs = []
    for a in arrays:
        raw = a.reshape(-1).view(np.uint8).data
        use = _codec.plan(raw, 4, c)
        assert use == (False, False, False, True)
        jobs.append(enc.add(_codec.header(a.shape, a.dtype, False, c, a.nbytes), raw, 4, use, c))
    first = [b"".join(bytes(b) for b in enc.chunks(j)) for j in jobs]
    again = b"".join(bytes(b) for b in enc.chunks(jobs[0]))  # out of order: encoded on its own
    assert again == first[0]
    for a, data in zip(arrays, first):
        h = _codec.parse_header(data, where="x")
        np.testing.assert_array_equal(_codec.decode(data, h, where="x"), a)


def _first_table_offset(path, member):
    import struct
    with zipfile.ZipFile(path) as z:
        data = z.read(member)
    return len(data) - (8 + struct.unpack_from("<I", data, 4)[0] + 4)  # from the end, as _corrupt_member counts


@pytest.mark.parametrize("at, message", [(4, "plane 0 has a bad table entry"), (18, "runs past the member")])
def test_damaged_plane_table_is_a_checksum_error(tmp_path, at, message):
    pytest.importorskip("zstandard")
    w = {"weights": trained_like(np.random.default_rng(11), (512, 512))}
    path = tmp_path / "c.npz"
    ckpt.save_var_collection(path, w, compression="zstd")
    member = members_of(path)["members"][1]
    # Table byte 4 is plane 0's method (stored: 0 -> 0x40); byte 18 is the top byte of plane 3's length
    # (the compressed exponent plane: its length grows by 1 GiB).
    _corrupt_member(path, member, _first_table_offset(path, member) - at)
    with pytest.raises(ChecksumError, match=message) as err:
        ckpt.load(path)
    assert "weights" in str(err.value)


def test_compression_level_must_be_an_int():
    pytest.importorskip("zstandard")
    with pytest.raises(ValueError, match="level"):
        _codec.Compression.parse(("zstd", "3"))
    assert _codec.Compression.parse(("zstd", 9)) == _codec.Compression("zstd", 9)


def test_fast_crc_gives_zlib_values():
    import zlib
    from ckpt import _crc
    rng = np.random.default_rng(12)
    for n in (0, 1, 7, 4096, 1 << 20, (1 << 20) + 3):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert _crc.crc32(data, 0) == zlib.crc32(data)
        assert _crc.crc32(data, 0x1234ABCD) == zlib.crc32(data, 0x1234ABCD)
        assert _crc.crc32(memoryview(data)[1:], 0) == zlib.crc32(data[1:])


def test_async_compressed_save_keeps_the_values_at_the_call(tmp_path):
    pytest.importorskip("zstandard")
    rng = np.random.default_rng(13)
    w = {"k": trained_like(rng, (1024, 1024)), "b": trained_like(rng, (4096,))}
    expected = {k: v.copy() for k, v in w.items()}
    ck = ckpt.Checkpoint(tmp_path, compression="zstd", async_save=True)
    ck.save(w, 1)
    for v in w.values():
        v[...] = 7  # the training loop moves on while the save compresses in the background
    ck.wait()
    assert members_of(ck.path(1))["members"][1].endswith(".ckz")
    target = {k: np.zeros_like(v) for k, v in expected.items()}
    assert ck.restore(target)[0] == 1
    for k in expected:
        np.testing.assert_array_equal(target[k], expected[k])


def test_cli_reads_compressed_checkpoints_and_exports_a_plain_npz(tmp_path, capsys):
    pytest.importorskip("zstandard")
    from ckpt import cli as _cli
    w = {"dense/kernel": trained_like(np.random.default_rng(14), (512, 512)), "step": np.array(3)}
    src, out = tmp_path / "c.npz", tmp_path / "plain.npz"
    ckpt.save_var_collection(src, w, compression="zstd")
    assert _cli.main(["verify", str(src)]) == 0
    capsys.readouterr()
    assert _cli.main(["info", "--json", str(src)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "zstd+shuffle" in json.dumps(info)
    assert _cli.main(["export", str(src), "--to", "npz", str(out)]) == 0
    with np.load(out) as z:  # numpy reads the export without ckpt
        np.testing.assert_array_equal(z["dense/kernel"], w["dense/kernel"])
    assert out.stat().st_size > src.stat().st_size  # the export is uncompressed
    # A damaged compressed chunk: verify reports it (exit 1) and names the member.
    member = members_of(src)["members"][1]
    with zipfile.ZipFile(src) as z:
        info = z.getinfo(member)
    raw = bytearray(src.read_bytes())
    raw[info.header_offset + 30 + len(info.filename) + len(info.extra) + 5000] ^= 0x10
    src.write_bytes(raw)
    capsys.readouterr()
    assert _cli.main(["verify", str(src)]) == 1
    captured = capsys.readouterr()
    assert member in captured.out + captured.err


def test_a_frame_that_expands_past_its_plane_is_refused_before_it_is_inflated():
    zstandard = pytest.importorskip("zstandard")
    import struct
    import zlib
    arr = np.arange(1024, dtype=np.float32)  # one chunk of 4 planes of 1024 bytes
    c = _codec.Compression("zstd")
    head = _codec.header(arr.shape, arr.dtype, False, c, arr.nbytes)
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (256 << 20))  # ~8 KiB that inflate to 256 MiB
    planes = [bomb] + [np.ascontiguousarray(arr.view(np.uint8).reshape(-1, 4)[:, k]).tobytes() for k in (1, 2, 3)]
    table = struct.pack("<IB", len(bomb), _codec.PACKED) + b"".join(struct.pack("<IB", 1024, _codec.STORED)
                                                                 for _ in range(3))
    member = head + struct.pack("<I", zlib.crc32(arr.tobytes())) + table + b"".join(planes)
    tracemalloc.start()
    try:
        with pytest.raises(ChecksumError, match="plane 0 does not decompress.*declares 268435456 bytes"):
            _codec.decode(member, _codec.parse_header(member, where="array 'w'"), where="array 'w'")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak


@pytest.mark.parametrize("tamper, message", [
    (lambda frame: frame + b"junk", "4 bytes follow the frame"),
    (lambda frame: frame[:-3], "cut short|does not decompress"),
])
def test_a_zstd_plane_must_be_exactly_one_whole_frame(tamper, message):
    zstandard = pytest.importorskip("zstandard")
    import struct
    import zlib
    arr = (np.random.default_rng(15).standard_normal(1024) * 0.02).astype(np.float32)
    head = _codec.header(arr.shape, arr.dtype, False, _codec.Compression("zstd"), arr.nbytes)
    planes = [np.ascontiguousarray(arr.view(np.uint8).reshape(-1, 4)[:, k]).tobytes() for k in range(4)]

    def member_with(packed):  # planes 0-2 stored, plane 3 (the exponents) compressed as ``packed``
        table = b"".join(struct.pack("<IB", 1024, _codec.STORED) for _ in range(3))
        table += struct.pack("<IB", len(packed), _codec.PACKED)
        return head + struct.pack("<I", zlib.crc32(arr.tobytes())) + table + b"".join(planes[:3]) + packed

    frame = zstandard.ZstdCompressor().compress(planes[3])
    good = member_with(frame)
    np.testing.assert_array_equal(_codec.decode(good, _codec.parse_header(good, where="w"), where="w"), arr)
    bad = member_with(tamper(frame))
    with pytest.raises(ChecksumError, match=message):
        _codec.decode(bad, _codec.parse_header(bad, where="w"), where="w")


@pytest.mark.parametrize("itemsize", [1, 2, 3, 4, 8, 16])
def test_byte_planes_split_and_join_exactly(itemsize):
    raw = np.random.default_rng(itemsize).integers(0, 256, 1000 * itemsize, dtype=np.uint8)
    planes = _codec.split_planes(raw.data, itemsize)
    assert len(planes) == itemsize
    for k, plane in enumerate(planes):  # plane k is byte k of every element, in memory order
        np.testing.assert_array_equal(plane, raw.reshape(-1, itemsize)[:, k])
    back = np.empty_like(raw)
    _codec.join_planes(back, planes)
    np.testing.assert_array_equal(back, raw)


def test_jax_arrays_compress_and_restore_into_a_template(tmp_path):
    pytest.importorskip("zstandard")
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(16)
    host = {"dense": {"kernel": trained_like(rng, (256, 512)), "bias": np.zeros(512, np.float32)},
            "emb": trained_like(rng, (300, 128)).astype(jnp.bfloat16)}
    tree = jax.tree_util.tree_map(jnp.asarray, host)
    ck = ckpt.Checkpoint(tmp_path, compression="zstd")
    path = ck.save(tree, 5)
    encodings = {a["name"]: a.get("encoding") for a in members_of(path)["arrays"]}
    assert encodings["dense/kernel"] == "zstd+shuffle" and encodings["emb"] == "zstd+shuffle", encodings
    back = ck.load(5, template=jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree))
    for got, want in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(host)):
        assert isinstance(got, jax.Array)
        np.testing.assert_array_equal(raw_bytes(np.asarray(got)), raw_bytes(want))
