"""Errors carry the file (and slot) they concern, also when a byte parser that knows no file raised them."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

import ckpt
from ckpt._packfile import PackReader
from ckpt.build import recipe_in


def test_a_recipe_error_names_the_file(tmp_path):
    path = str(tmp_path / "r.npz")
    with ckpt.Pack(path) as pack:
        pack.dump("main", {"w": np.ones(2)})
        pack.set_metadata({"ckpt": {"recipe": {"version": 99}}})
    with open(path, "rb") as f, pytest.raises(ckpt.FormatError, match="recipe version 99") as info:
        recipe_in(PackReader(f, path))
    assert info.value.file == path


def _corrupt_member(path, member: str, offset: int) -> None:
    """Flip one byte of a stored member in place (its digest no longer matches)."""
    with zipfile.ZipFile(path) as z:
        zi = z.getinfo(member)
    with open(path, "r+b") as f:
        f.seek(zi.header_offset + 26)
        name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        at = zi.header_offset + 30 + name_len + extra_len + offset
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_lazy_array_read_names_file_and_slot(tmp_path):
    path = str(tmp_path / "p.npz")
    with ckpt.Pack(path) as pack:
        pack.dump("main", {"w": np.arange(2048, dtype=np.float32) % 5}, compression="zstd")
        pack.dump("opt state", {"m": np.arange(10.0)})
    _corrupt_member(path, "opt%20state/0.npy", 130)
    with ckpt.Pack(path) as pack:
        view = pack.arrays("opt state")  # opening the view reads headers only
        with pytest.raises(ckpt.ChecksumError) as info:
            view.read("m")
    assert (info.value.file, info.value.slot) == (path, "opt state")
    # With verify=False the digest is skipped and the codec's own chunk CRC finds the damage.
    with zipfile.ZipFile(path) as z:
        size = z.getinfo("0.ckz").file_size
    _corrupt_member(path, "0.ckz", size - 3)
    with ckpt.Pack(path, verify=False) as pack:
        with pytest.raises(ckpt.ChecksumError) as info:
            pack.arrays("main").read("w")
        assert (info.value.file, info.value.slot) == (path, "main")
        with pytest.raises(ckpt.ChecksumError) as info:
            pack.load("main")
        assert (info.value.file, info.value.slot) == (path, "main")


def test_untrusted_pickle_and_unknown_kind_name_file_and_slot(tmp_path):
    path = str(tmp_path / "p.npz")
    import collections

    with ckpt.Pack(path) as pack:
        pack.dump("obj", collections.OrderedDict(a=1), serializer="pickle")
    with ckpt.Pack(path) as pack, pytest.raises(ckpt.UntrustedPickleError) as info:
        pack.load("obj")
    assert (info.value.file, info.value.slot) == (path, "obj")


def test_internal_errors_are_not_format_errors():
    assert issubclass(ckpt.errors.InternalError, RuntimeError)
    assert not issubclass(ckpt.errors.InternalError, ValueError)
