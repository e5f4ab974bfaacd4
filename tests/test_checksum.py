"""sha256 verification: one flipped byte is caught by every loader; manifest damage is a FormatError."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

import ckpt
from ckpt.errors import ChecksumError, CorruptCheckpointWarning, FormatError, NotAPackError
from helpers import assert_dicts_identical, data_offsets, flip_byte, npy_data_offset, snapshot, temp_leftovers

W = np.arange(1000, dtype=np.float32)


@pytest.fixture
def state():
    return {"w": W.copy(), "b": np.full(4, 7, np.int32)}


@pytest.fixture
def corrupt_pack(tmp_path, state):
    """A pack whose 'w' array (member 0.npy) has one flipped byte in its data."""
    path = tmp_path / "corrupt.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("main", state)
        pack.dump("cfg", {"lr": 0.1})
    flip_byte(path, npy_data_offset(path, "0.npy") + 400)
    return path


def _assert_names(err, slot, path, member=None):
    assert isinstance(err, ValueError)
    assert err.slot == slot
    assert err.file == str(path)
    assert repr(slot) in str(err) and str(path) in str(err)
    if member is not None:
        assert err.member == member


def test_pack_load_detects_a_flipped_byte(corrupt_pack):
    with ckpt.Pack(corrupt_pack) as pack:
        with pytest.raises(ChecksumError) as info:
            pack.load("main")
        _assert_names(info.value, "main", corrupt_pack, "0.npy")
        assert info.value.expected != info.value.found
        # Other slots are unaffected and still load.
        assert pack.load("cfg") == {"lr": 0.1}
        with pytest.raises(ChecksumError):
            pack.verify()


def test_load_var_collection_detects_a_flipped_byte_and_assigns_nothing(corrupt_pack, state):
    target = {k: np.zeros_like(v) for k, v in state.items()}
    with pytest.raises(ChecksumError) as info:
        ckpt.load_var_collection(corrupt_pack, target)
    _assert_names(info.value, "main", corrupt_pack)
    assert not any(v.any() for v in target.values())


def test_compat_load_detects_a_flipped_byte(corrupt_pack):
    with pytest.raises(ChecksumError) as info:
        ckpt.load(corrupt_pack)
    _assert_names(info.value, "main", corrupt_pack)


def test_checkpoint_restore_of_a_damaged_index_raises(tmp_path, state):
    ck = ckpt.Checkpoint(tmp_path, keep_ckpts=3)
    ck.save(state, 1)
    path = ck.save({k: v + 1 for k, v in state.items()}, 2)
    flip_byte(path, npy_data_offset(path, "1.npy") + 3)
    target = {k: np.zeros_like(v) for k, v in state.items()}
    with pytest.raises(ChecksumError) as info:
        ck.restore(target, idx=2)
    _assert_names(info.value, "main", path, "1.npy")
    assert not any(v.any() for v in target.values())
    # The older, intact checkpoint still restores.
    assert ck.restore(target, idx=1) == (1, ck.path(1))
    assert_dicts_identical(target, state)


def test_checkpoint_restore_latest_skips_a_damaged_newest(tmp_path, state):
    ck = ckpt.Checkpoint(tmp_path, keep_ckpts=3)
    ck.save(state, 1)
    path = ck.save({k: v + 1 for k, v in state.items()}, 2)
    flip_byte(path, npy_data_offset(path, "0.npy") + 3)
    target = {k: np.zeros_like(v) for k, v in state.items()}
    with pytest.warns(CorruptCheckpointWarning, match="0000000002.npz") as record:
        assert ck.restore(target) == (1, ck.path(1))
    assert len(record) == 1 and "ChecksumError" not in str(record[0].message) and "blake3" in str(record[0].message)
    assert_dicts_identical(target, state)


def test_checkpoint_restore_latest_with_every_checkpoint_damaged(tmp_path, state):
    ck = ckpt.Checkpoint(tmp_path, keep_ckpts=3)
    for i in (1, 2):
        flip_byte(ck.save(state, i), npy_data_offset(ck.path(i), "0.npy"))
    target = {k: np.zeros_like(v) for k, v in state.items()}
    with pytest.warns(CorruptCheckpointWarning) as record:
        with pytest.raises(FormatError, match="damaged"):
            ck.restore(target)
    assert len(record) == 2
    assert not any(v.any() for v in target.values())


def test_checkpoint_extras_are_verified(tmp_path, state):
    ck = ckpt.Checkpoint(tmp_path, keep_ckpts=3)
    path = ck.save(state, 5, extras={"ema": {"w": W * 2}})
    flip_byte(path, npy_data_offset(path, "ema/0.npy") + 10)
    target = {k: np.zeros_like(v) for k, v in state.items()}
    with pytest.raises(ChecksumError) as info:
        ck.restore(target, idx=5, extras={"ema": {"w": np.zeros_like(W)}})
    _assert_names(info.value, "ema", path)
    assert not any(v.any() for v in target.values()), "main must not be assigned when an extra is corrupt"
    with pytest.raises(ChecksumError):
        ck.load_extras(5)


def test_verify_false_skips_the_hash(corrupt_pack, state):
    with ckpt.Pack(corrupt_pack, verify=False) as pack:
        loaded = pack.load("main")
    diff = np.flatnonzero(loaded["w"].view(np.uint32) != state["w"].view(np.uint32))
    assert diff.tolist() == [100], "exactly the element holding the flipped byte differs"
    np.testing.assert_array_equal(loaded["b"], state["b"])
    # The per-call switch and load_var_collection's do the same.
    with ckpt.Pack(corrupt_pack) as pack:
        assert not np.array_equal(pack.load("main", verify=False)["w"], state["w"])
    target = {k: np.zeros_like(v) for k, v in state.items()}
    ckpt.load_var_collection(corrupt_pack, target, verify=False)
    assert target["w"][100] != state["w"][100] and target["w"][99] == state["w"][99]


def test_corrupt_slot_is_not_copied_into_a_rewrite(corrupt_pack, tmp_path):
    original = corrupt_pack.read_bytes()
    with ckpt.Pack(corrupt_pack) as pack:
        with pytest.raises(ChecksumError, match="refusing to copy"):
            pack.dump("more", [1, 2])
    assert corrupt_pack.read_bytes() == original
    assert temp_leftovers(tmp_path) == []


def test_plain_npz_is_checked_by_crc(tmp_path, state):
    path = tmp_path / "plain.npz"
    np.savez(path, **state)
    flip_byte(path, npy_data_offset(path, "w.npy") + 40)
    with pytest.raises(ChecksumError) as info:
        ckpt.load(path)
    assert info.value.member == "w.npy"
    target = {k: np.zeros_like(v) for k, v in state.items()}
    with pytest.raises(ChecksumError):
        ckpt.load_var_collection(path, target)
    assert not any(v.any() for v in target.values())


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_flipped_manifest_byte_is_a_format_error(tmp_path, state, where):
    path = tmp_path / "p.npz"
    ckpt.save_var_collection(path, state)
    start = data_offsets(path)["__ckpt__/manifest.json"]
    with zipfile.ZipFile(path) as zf:
        size = zf.getinfo("__ckpt__/manifest.json").file_size
    offset = {"first": start, "middle": start + size // 2, "last": start + size - 1}[where]
    flip_byte(path, offset, mask=0x20)
    for load in (lambda: ckpt.Pack(path), lambda: ckpt.load(path),
                 lambda: ckpt.load_var_collection(path, {k: np.zeros_like(v) for k, v in state.items()})):
        with pytest.raises(FormatError) as info:
            load()
        assert not isinstance(info.value, NotAPackError)
        assert str(path) in str(info.value)


@pytest.mark.parametrize("keep", [0.5, 0.99], ids=["half", "tail_cut"])
def test_truncated_file_is_a_format_error(tmp_path, state, keep):
    path = tmp_path / "p.npz"
    ckpt.save_var_collection(path, state)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(FormatError):
        ckpt.load(path)
    target = snapshot(state)
    with pytest.raises(FormatError):
        ckpt.load_var_collection(path, target)
    assert_dicts_identical(target, state)
