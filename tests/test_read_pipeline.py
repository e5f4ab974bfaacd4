"""The restore path (issue 20): one ordered, coalesced read pass, hashed while it reads, and the
exact fast parser for the .npy headers numpy writes. Real files throughout; the pieces are made
small (``_readpipe.PIECE``) so that a few kilobytes exercise what 8 MiB pieces do on a model."""

from __future__ import annotations

import ast
import io
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from helpers import assert_arrays_identical, data_offsets, flip_byte, npy_data_offset, rehash, rewrite_pack

import ckpt
from ckpt import _npy, _readpipe
from ckpt.errors import ChecksumError, FormatError

ml_dtypes = pytest.importorskip("ml_dtypes")


def _model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20)
    out = {
        "f32": rng.standard_normal((33, 7)).astype(np.float32),
        "f64_big": rng.standard_normal(5000),  # 40 kB: several small pieces
        "bf16": rng.standard_normal((9, 5)).astype(ml_dtypes.bfloat16),
        "f8": rng.standard_normal(17).astype(ml_dtypes.float8_e4m3fn),
        "i8_be": np.arange(-50, 50, dtype=">i8"),
        "u1": np.arange(256, dtype=np.uint8),
        "bool": rng.random(37) > 0.5,
        "c128": (rng.standard_normal(11) + 1j * rng.standard_normal(11)),
        "f16": rng.standard_normal(13).astype(np.float16),
        "scalar": np.array(3.5, dtype=np.float32),
        "scalar_i": np.array(-7, dtype=np.int64),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "empty1": np.zeros(0, dtype=np.int32),
        "fortran": np.asfortranarray(rng.standard_normal((6, 9)).astype(np.float32)),
        "datetime": np.array(["2026-12-02T04:00", "1970-01-01"], dtype="datetime64[ns]"),
        "unicode": np.array(["a", "bcd", "ééé"]),
        "bytes": np.array([b"x", b"yz"]),
        "void": np.frombuffer(b"abcdef", dtype="V2").copy(),
    }
    for i in range(40):  # many tiny neighbours: one coalesced read
        out[f"tiny{i}"] = np.full(i % 5 + 1, i, dtype=np.int16)
    return out


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for k, v in want.items():
        assert_arrays_identical(got[k], v)
        assert got[k].flags.f_contiguous == v.flags.f_contiguous or v.ndim < 2 or v.size == 0, k
        assert got[k].flags.writeable and got[k].flags.owndata or got[k].base is not None, k


@pytest.fixture
def model_file(tmp_path):
    path = str(tmp_path / "m.npz")
    model = _model()
    ckpt.save_var_collection(path, model)
    return path, model


@pytest.mark.parametrize("piece", [_readpipe.PIECE, 4096, 1000, 64])
@pytest.mark.parametrize("verify", [True, False])
def test_coalesced_reads_give_identical_arrays(model_file, monkeypatch, piece, verify):
    path, model = model_file
    monkeypatch.setattr(_readpipe, "PIECE", piece)
    _same(ckpt.load(path, verify=verify), model)


def test_a_member_larger_than_one_real_piece(tmp_path):
    path = str(tmp_path / "big.npz")
    big = np.random.default_rng(1).standard_normal((_readpipe.PIECE // 4 + 12345,)).astype(np.float32)
    model = {"a": np.ones(3, np.float32), "big": big, "z": np.arange(5)}
    ckpt.save_var_collection(path, model)
    _same(ckpt.load(path), model)
    # The last piece of the large member is damaged: that member is named.
    flip_byte(path, npy_data_offset(path, _member(path, "big")) + big.nbytes - 3)
    with pytest.raises(ChecksumError) as e:
        ckpt.load(path)
    assert e.value.member == _member(path, "big")


def test_neighbours_are_read_in_few_calls(model_file, monkeypatch):
    """Every member of a small model in one preadv (the spy passes each call on to the real one),
    and no small header read per member before it."""
    path, model = model_file
    calls = []
    real = os.preadv

    def spy(fd, buffers, offset, *rest):
        calls.append(len(buffers))
        return real(fd, buffers, offset, *rest)

    monkeypatch.setattr(os, "preadv", spy)
    _same(ckpt.load(path), model)
    assert len(calls) == 1 and calls[0] > len(model), calls


def _member(path: str, name: str) -> str:
    with ckpt.Pack(path) as p:
        return p.arrays().member(name)


@pytest.mark.parametrize("piece", [_readpipe.PIECE, 1000])
@pytest.mark.parametrize("name, where", [
    ("tiny0", "first"), ("tiny20", "middle"), ("tiny39", "last"), ("f64_big", "start"),
    ("f64_big", "middle"), ("f64_big", "end"), ("scalar", "first"), ("bf16", "middle"),
])
def test_a_flipped_byte_names_its_member(model_file, monkeypatch, piece, name, where):
    path, model = model_file
    monkeypatch.setattr(_readpipe, "PIECE", piece)
    member = _member(path, name)
    start = npy_data_offset(path, member)
    nbytes = model[name].nbytes
    offset = {"first": start, "start": start, "middle": start + nbytes // 2, "last": start + nbytes - 1,
              "end": start + nbytes - 1}[where]
    flip_byte(path, offset)
    with pytest.raises(ChecksumError) as e:
        ckpt.load(path)
    assert e.value.member == member and e.value.file == path and e.value.slot == "main"
    assert member in str(e.value) and "does not match the recorded" in str(e.value)
    assert e.value.expected and e.value.found and e.value.expected != e.value.found
    _same(ckpt.load(path, verify=False) | {name: model[name]}, model)  # unverified: read as stored


def test_the_first_bad_member_in_file_order_is_reported(model_file, monkeypatch):
    path, _ = model_file
    monkeypatch.setattr(_readpipe, "PIECE", 512)
    offsets = data_offsets(path)
    late, early = _member(path, "tiny30"), _member(path, "f32")
    assert offsets[early] < offsets[late]
    flip_byte(path, npy_data_offset(path, late))
    flip_byte(path, npy_data_offset(path, early) + 5)
    with pytest.raises(ChecksumError) as e:
        ckpt.load(path)
    assert e.value.member == early


def test_plain_npz_members_are_crc_checked(tmp_path, monkeypatch):
    """numpy's own .npz (no manifest): the zip CRC of each member, checked the same way."""
    path = str(tmp_path / "plain.npz")
    model = {f"a{i}": np.arange(i * 100, dtype=np.float64) for i in range(12)}
    np.savez(path, **model)
    monkeypatch.setattr(_readpipe, "PIECE", 2048)
    _same(ckpt.load(path), model)
    flip_byte(path, npy_data_offset(path, "a7.npy") + 300)
    with pytest.raises(ChecksumError) as e:
        ckpt.load(path)
    assert e.value.member == "a7.npy" and "CRC" in str(e.value)


_TRUNCATE = r"""
import os, sys
import numpy as np
import ckpt
from ckpt import _readpipe
path, cut = sys.argv[1], int(sys.argv[2])
_readpipe.PIECE = 4096
size = os.path.getsize(path)
with ckpt.Pack(path) as p:
    os.truncate(path, cut)  # cut short under the open reader
    try:
        p.load("main")
    except ckpt.FormatError as e:
        print("FormatError", e)
    else:
        print("loaded")
"""


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_a_file_truncated_under_the_reader_is_a_format_error(model_file, fraction):
    path, _ = model_file
    with zipfile.ZipFile(path) as z:  # the manifest (read on opening) comes last: cut the arrays
        arrays_end = z.getinfo("__ckpt__/manifest.json").header_offset
    cut = int(arrays_end * fraction)
    r = subprocess.run([sys.executable, "-c", _TRUNCATE, path, str(cut)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr  # a SIGBUS would be -7
    assert r.stdout.startswith("FormatError") and "cut short" in r.stdout and path in r.stdout, r.stdout


# -- the .npy header parser -------------------------------------------------
_DTYPES = ["<f4", ">f4", "<f8", ">f8", "<f2", "|u1", "|i1", "<i2", ">i8", "<u8", "|b1", "<c8", ">c16",
           "<M8[ns]", "<m8[s]", "<M8", "<U3", "<U0", "|S5", "|S0", "|V2", "|V16", "<i4", "=i4",
           [("a", "<i4"), ("b", ">f8")], ("<i4", (2,)), "<u4"]
_SHAPES = [(), (0,), (1,), (5,), (3, 4), (2, 0), (1, 1, 1, 1), (7, 0, 3), (10**6,), (2,) * 32]


def _headers():
    for dt in _DTYPES:
        for shape in _SHAPES:
            for order in "CF":
                a = np.empty(0, dtype=dt)
                d = np.lib.format.header_data_from_array_1_0(a)
                d["shape"] = tuple(shape) + (a.shape[1:] if isinstance(dt, tuple) else ())
                d["fortran_order"] = order == "F" and len(shape) > 1
                for version in (1, 2):
                    buf = io.BytesIO()
                    (np.lib.format.write_array_header_1_0 if version == 1
                     else np.lib.format.write_array_header_2_0)(buf, d)
                    yield buf.getvalue()


def _general(head: bytes, size: int):
    """What the header parses to by the general (ast.literal_eval) path."""
    total = _npy.header_prefix_len(head[:12], where="w")
    return _npy._parse_text(head, 10 if head[6] == 1 else 12, total, where="w")


def test_fast_header_parser_agrees_with_literal_eval_on_numpy_headers():
    fast = 0
    for head in _headers():
        text_start = 10 if head[6] == 1 else 12
        literal = ast.literal_eval(head[text_start:].decode("latin1"))
        known = _npy._canonical(head[text_start:])
        try:
            general = _general(head, 0)
        except FormatError:
            general = None
        if known is None:
            continue
        fast += 1
        assert general is not None, head
        assert (known[0], known[1], known[2]) == (general.dtype, general.shape, general.fortran_order), head
        assert known[0] == np.lib.format.descr_to_dtype(literal["descr"]) and known[1] == literal["shape"]
        size = len(head) + general.nbytes
        assert _npy.parse_header(head, size, where="w") == general
    assert fast > 400  # the plain dtypes all take the fast path


@pytest.mark.parametrize("text", [
    "{'descr': '<f4', 'fortran_order': False, 'shape': (3,4), }",  # no space
    "{'fortran_order': False, 'descr': '<f4', 'shape': (3, 4), }",  # keys reordered
    "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4)}",  # no trailing comma
    "{'descr': '<f4', 'fortran_order': False, 'shape': (5), }",  # an int, not a tuple
    "{'descr': '<f4', 'fortran_order': False, 'shape': (05,), }",  # leading zero: not a literal
    "{'descr': '<f4', 'fortran_order': False, 'shape': (00,), }",
    "{'descr': '<f4', 'fortran_order': 0, 'shape': (3,), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (True,), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }",
    "{'descr': \"<f4\", 'fortran_order': False, 'shape': (3,), }",
    "{'descr': '<a8', 'fortran_order': False, 'shape': (3,), }",  # deprecated alias
    "{'descr': '|O', 'fortran_order': False, 'shape': (3,), }",  # object
    "{'descr': '<q9', 'fortran_order': False, 'shape': (3,), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (" + "1, " * 70 + "1), }",  # over MAX_NDIM
    "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), 'x': 1, }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }\t",
])
def test_non_canonical_headers_take_the_general_path(text):
    raw = text.encode("latin1")
    pad = (-(10 + len(raw) + 1)) % 64
    text_bytes = raw + b" " * pad + b"\n"
    head = b"\x93NUMPY\x01\x00" + len(text_bytes).to_bytes(2, "little") + text_bytes
    assert _npy._canonical(text_bytes) is None or text.startswith("{'descr': '<f4', 'fortran_order': False, "
                                                                  "'shape': (00,)")
    try:
        want = _general(head, 0)
    except FormatError as e:
        with pytest.raises(FormatError) as got:
            _npy.parse_header(head, len(head) + 12, where="w")
        assert str(got.value) == str(e)
    else:
        size = len(head) + want.nbytes
        assert _npy.parse_header(head, size, where="w") == want


def test_a_header_that_does_not_fill_its_member_is_refused_on_the_fast_path():
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (3,)})
    head = buf.getvalue()
    assert _npy._canonical(head[10:]) is not None
    with pytest.raises(FormatError, match="claims shape"):
        _npy.parse_header(head, len(head) + 11, where="w")
    assert _npy.parse_header(head, len(head) + 12, where="w").shape == (3,)


def test_a_long_padded_header_is_parsed_but_not_cached():
    text = b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }" + b" " * 60000 + b"\n"
    head = b"\x93NUMPY\x02\x00" + len(text).to_bytes(4, "little") + text
    before = _npy._canonical_core.cache_info().currsize
    assert _npy.parse_header(head, len(head) + 12, where="w").shape == (3,)
    assert _npy._canonical_core.cache_info().currsize <= before + 1  # the key is the unpadded text


def test_a_signalling_nan_averages_without_a_warning(tmp_path):
    path = str(tmp_path / "nan.npz")
    snan = np.frombuffer(np.array([0x7FA00000], dtype="<u4").tobytes(), dtype="<f4").copy()
    ckpt.save_var_collection(path, {"w": np.concatenate([snan, np.ones(3, np.float32)])})
    out = ckpt.average([path, path])  # the suite turns warnings into errors
    assert np.isnan(out["w"][0]) and (out["w"][1:] == 1).all()


def test_zip_layout_of_the_model_has_gaps_between_members(model_file):
    """The coalesced reads above really span local headers (a few dozen bytes) between members."""
    path, _ = model_file
    with zipfile.ZipFile(path) as z:
        infos = sorted(z.infolist(), key=lambda i: i.header_offset)
    offsets = data_offsets(path)
    gaps = [offsets[b.filename] - (offsets[a.filename] + a.file_size) for a, b in zip(infos, infos[1:])]
    assert all(g >= 30 for g in gaps)


def _empty_member_pack(tmp_path, *, bad_digest: bool) -> tuple[str, str, str]:
    """A pack whose member for array "tiny10" is replaced by zero bytes (the manifest made consistent,
    or its digest for that member left wrong): (path, the emptied member, an earlier member)."""
    src = str(tmp_path / "src.npz")
    ckpt.save_var_collection(src, _model())
    emptied, earlier = _member(src, "tiny10"), _member(src, "f32")
    dst = str(tmp_path / "empty.npz")

    def edit(doc):
        if bad_digest:
            rec = doc["members"][emptied]
            alg = "blake3" if "blake3" in rec else "sha256"
            rec[alg] = "0" * 64
            rehash(doc, {})  # the slot's digest agrees with the (wrong) member digest

    rewrite_pack(src, dst, replace_members={emptied: b""}, edit_manifest=edit)
    return dst, emptied, earlier


def test_an_emptied_member_is_a_format_error_naming_it(tmp_path):
    path, emptied, _ = _empty_member_pack(tmp_path, bad_digest=False)
    with pytest.raises(FormatError) as e:
        ckpt.load(path)
    assert "tiny10" in str(e.value) or emptied in str(e.value)


def test_an_empty_member_is_checked_in_file_order(tmp_path, monkeypatch):
    monkeypatch.setattr(_readpipe, "PIECE", 512)
    path, emptied, earlier = _empty_member_pack(tmp_path, bad_digest=True)
    with pytest.raises(ChecksumError) as e:
        ckpt.load(path)
    assert e.value.member == emptied
    assert data_offsets(path)[earlier] < data_offsets(path)[emptied]
    flip_byte(path, npy_data_offset(path, earlier) + 1)  # an earlier member is damaged too: it is reported
    with pytest.raises(ChecksumError) as e:
        ckpt.load(path)
    assert e.value.member == earlier
