"""Files that are not zip archives are refused by their leading bytes, and never unpickled."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest

import ckpt
from ckpt.errors import FormatError, NotAPackError
from helpers import os_system_pickle, os_system_pickle_v5


def _npy_bytes():
    buf = io.BytesIO()
    np.save(buf, np.arange(10))
    return buf.getvalue()


def _random_bytes():
    data = np.random.default_rng(7).bytes(4096)
    assert data[:2] != b"PK"
    return data


# name -> (file contents given the sentinel path, words expected in the message)
NOT_PACKS = {
    "pickle_protocol5_os_system": (os_system_pickle_v5, "pickle"),
    "pickle_protocol0_os_system": (os_system_pickle, "pickle"),
    "7z_archive": (lambda s: b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(200), "7z"),
    "random_bytes": (lambda s: _random_bytes(), "zip"),
    "empty_file": (lambda s: b"", "empty"),
    "single_npy": (lambda s: _npy_bytes(), ".npy"),
    "gzip_stream": (lambda s: b"\x1f\x8b\x08\x00" + bytes(64), "gzip"),
}


@pytest.fixture(params=list(NOT_PACKS), ids=list(NOT_PACKS))
def not_a_pack(request, tmp_path):
    make, words = NOT_PACKS[request.param]
    sentinel = tmp_path / "pwned"
    path = tmp_path / "model.npz"
    path.write_bytes(make(sentinel))
    yield path, words
    assert not sentinel.exists(), "the file's pickle payload ran"


def test_sentinel_payloads_are_live(tmp_path):
    """Control: the pickle payloads above really do run os.system when unpickled."""
    for make in (os_system_pickle, os_system_pickle_v5):
        sentinel = tmp_path / f"ran-{make.__name__}"
        pickle.loads(make(sentinel))
        assert sentinel.exists()


def _check(err_info, path, words):
    err = err_info.value
    assert isinstance(err, FormatError) and isinstance(err, ValueError)
    assert err.file == str(path)
    assert str(path) in str(err)
    assert words in str(err)


def test_compat_load_refuses(not_a_pack):
    path, words = not_a_pack
    with pytest.raises(NotAPackError) as info:
        ckpt.load(path)
    _check(info, path, words)
    with pytest.raises(NotAPackError):
        ckpt.load(path, trusted=True)  # trusting a slot is no licence to unpickle a bare file


def test_compat_load_refuses_a_file_object(not_a_pack):
    path, words = not_a_pack
    with open(path, "rb") as f:
        with pytest.raises(NotAPackError) as info:
            ckpt.load(f)
        assert not f.closed
    assert words in str(info.value)


def test_load_var_collection_refuses(not_a_pack):
    path, words = not_a_pack
    target = {"w": np.zeros(3)}
    with pytest.raises(NotAPackError) as info:
        ckpt.load_var_collection(path, target)
    _check(info, path, words)
    assert not target["w"].any()


def test_pack_refuses(not_a_pack):
    path, words = not_a_pack
    if path.stat().st_size == 0:
        # By design an empty file is where a new pack gets written (e.g. a NamedTemporaryFile):
        # Pack opens it with no slots, and reading from it finds none.
        with ckpt.Pack(path) as pack:
            assert len(pack) == 0
            with pytest.raises(ckpt.errors.SlotNotFoundError):
                pack.load("main")
        assert path.stat().st_size == 0
        return
    original = path.read_bytes()
    with pytest.raises(NotAPackError) as info:
        ckpt.Pack(path)
    _check(info, path, words)
    assert path.read_bytes() == original


def test_checkpoint_restore_refuses(not_a_pack, tmp_path):
    path, words = not_a_pack
    ck = ckpt.Checkpoint(tmp_path / "run")
    planted = ck.path(3)
    path.replace(planted)
    target = {"w": np.zeros(3)}
    with pytest.raises(NotAPackError) as info:
        ck.restore(target, idx=3)
    assert str(planted) in str(info.value) and words in str(info.value)
    assert not target["w"].any()
