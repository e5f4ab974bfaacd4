"""modelforge-style helpers: merged strings, squeezed integers, sparse matrices as arrays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import ckpt
from ckpt.arraytools import (
    assemble_sparse_matrix,
    disassemble_sparse_matrix,
    merge_strings,
    split_strings,
    squeeze_bits,
)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20), max_size=50))
def test_merge_split_roundtrip_any_unicode(strings):
    merged = merge_strings(strings)
    assert set(merged) == {"strings", "lengths", "is_bytes"}
    assert merged["strings"].dtype == np.uint8
    assert split_strings(merged) == strings


def test_strings_ending_in_nul_roundtrip_exactly_through_a_file(tmp_path):
    strings = ["a\x00", "\x00\x00", "", "plain", "ü\x00"]
    blobs = [b"x\x00", b"\x00", b""]
    path = tmp_path / "s.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("words", merge_strings(strings))
        pack.dump("blobs", merge_strings(blobs))
        assert pack.slots_info["words"].serializer == "arrays"
    with ckpt.Pack(path) as pack:
        assert split_strings(pack.load("words")) == strings
        assert split_strings(pack.load("blobs")) == blobs
    # numpy's fixed-width bytes would have lost the trailing NULs: the merged form does not.
    assert np.array(["a\x00"]).astype("S")[0] == b"a"


def test_merge_strings_refuses_a_mix_and_split_checks_lengths():
    with pytest.raises(TypeError):
        merge_strings(["a", b"b"])
    bad = merge_strings(["abc"])
    bad["lengths"] = np.array([5])
    with pytest.raises(ValueError, match="lengths"):
        split_strings(bad)


@pytest.mark.parametrize(
    "values, dtype",
    [([0, 255], np.uint8), ([-1, 127], np.int8), ([0, 256], np.uint16), ([-129, 5], np.int16),
     ([0, 2**16], np.uint32), ([-(2**31), 0], np.int32), ([0, 2**40], np.uint64), ([-(2**40), 2**40], np.int64),
     ([], np.uint8)],
    ids=["u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64", "empty"],
)
def test_squeeze_bits_narrows_losslessly(values, dtype):
    a = np.array(values, dtype=np.int64)
    s = squeeze_bits(a)
    assert s.dtype == dtype
    np.testing.assert_array_equal(s.astype(np.int64), a)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=30))
def test_squeeze_bits_never_loses_a_value(values):
    a = np.array(values, dtype=np.int64)
    s = squeeze_bits(a)
    assert s.dtype.itemsize <= 8
    np.testing.assert_array_equal(s.astype(np.int64), a)


def test_squeeze_bits_refuses_floats():
    with pytest.raises(TypeError):
        squeeze_bits(np.array([1.5]))


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
@pytest.mark.parametrize("kind", ["matrix", "array"])
def test_sparse_roundtrip_through_a_pack(tmp_path, fmt, kind):
    sp = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(0)
    dense = rng.random((40, 30)) * (rng.random((40, 30)) < 0.1)
    m = getattr(sp, f"{fmt}_{kind}")(dense)
    path = tmp_path / "m.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("m", disassemble_sparse_matrix(m))
        assert pack.slots_info["m"].serializer == "arrays"  # component arrays, no pickle
    back = assemble_sparse_matrix(ckpt.Pack(path).load("m"))
    assert back.format == fmt and type(back) is type(m)
    np.testing.assert_array_equal(back.toarray(), dense)


def test_unsupported_sparse_format_is_refused():
    sp = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match="CSR, CSC and COO"):
        disassemble_sparse_matrix(sp.lil_matrix((3, 3)))
