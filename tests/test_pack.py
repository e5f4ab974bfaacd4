"""The Pack API: slots, serializers chosen by type, manifest, dedup, file objects, atomic rewrites."""

from __future__ import annotations

import collections
import datetime as dt
import io
import os
import re
import zipfile

import numpy as np
import pytest

import ckpt
from ckpt.errors import ReadOnlyPackError, SlotExistsError, SlotNotFoundError
from helpers import (
    assert_arrays_identical,
    assert_dicts_identical,
    content_digest,
    member_names,
    read_manifest,
    slot_digest,
    temp_leftovers,
)

BIG = np.arange(256 * 1024, dtype=np.float32)  # 1 MiB


def _equal(a, b):
    """Deep equality that compares arrays exactly and containers by type."""
    if isinstance(b, (np.ndarray, np.generic)):
        assert_arrays_identical(a, b)
        return
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(b, dict):
        assert list(a) == list(b)
        for k in b:
            _equal(a[k], b[k])
    elif isinstance(b, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _equal(x, y)
    else:
        assert a == b


VALUES = {
    "numpy_array": (np.arange(12, dtype=np.int16).reshape(3, 4), "arrays"),
    "numpy_scalar": (np.float32(3.5), "arrays"),
    "dict_of_arrays": ({"w": np.ones((2, 2)), "b": np.zeros(2, np.float32)}, "arrays"),
    "nested_tree": ({"enc": {"w": np.eye(2)}, "layers": [np.arange(3), np.arange(2.0)]}, "arrays"),
    "tuple_of_arrays": ((np.arange(2), np.ones(3)), "arrays"),
    "json_dict": ({"lr": 0.1, "layers": [64, 32], "name": "resnet", "nesterov": True, "clip": None}, "json"),
    "json_list": ([1, "two", 3.0, None, [False]], "json"),
    "json_str": ("hello ✓", "json"),
    "json_int": (2**70, "json"),
    # everyday values JSON cannot hold exactly: tagged JSON (issue 13), loaded without trust
    "tuple": ((1, 2), "json"),
    "dict_with_tuple": ({"shape": (3, 4)}, "json"),
    "set": ({1, 2, 3}, "json"),
    "int_keys": ({1: "a"}, "json"),
    "ordered_dict": (collections.OrderedDict(a=1, b=2), "pickle"),
    "mixed_dict": ({"w": np.ones(2), "lr": 0.1}, "arrays"),  # the number is a value leaf of the tree
    "bytes": (b"\x00\x01\xffraw", "raw"),
    "bytearray": (bytearray(b"abc"), "raw"),
}


@pytest.mark.parametrize("value,serializer", list(VALUES.values()), ids=list(VALUES))
def test_serializer_is_chosen_by_type_and_value_roundtrips(tmp_path, value, serializer):
    path = tmp_path / "pack.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("thing", value)
        assert pack.slots_info["thing"].serializer == serializer
    with ckpt.Pack(path) as pack:
        loaded = pack.load("thing", trusted=(serializer == "pickle"))
    expected = bytes(value) if isinstance(value, bytearray) else value
    _equal(loaded, expected)


def test_jax_array_goes_to_arrays(tmp_path, jnp):
    path = tmp_path / "pack.npz"
    x = jnp.arange(6, dtype=jnp.float32).reshape(2, 3)
    with ckpt.Pack(path) as pack:
        pack.dump("x", x)
        pack.dump("tree", {"a": x, "b": [x + 1]})
        assert pack.slots_info["x"].serializer == "arrays"
        assert pack.slots_info["tree"].serializer == "arrays"
        assert_arrays_identical(pack.load("x"), np.asarray(x))
        tree = pack.load("tree")
    assert_arrays_identical(tree["b"][0], np.asarray(x + 1))


def test_explicit_serializer_overrides_the_choice(tmp_path):
    path = tmp_path / "pack.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("cfg", {"lr": 0.1}, serializer="pickle")
        assert pack.slots_info["cfg"].serializer == "pickle"
        assert pack.load("cfg", trusted=True) == {"lr": 0.1}
        with pytest.raises(ValueError, match="unknown serializer"):
            pack.dump("x", 1, serializer="yaml")
        with pytest.raises(TypeError):
            pack.dump("y", collections.OrderedDict(a=1), serializer="json")  # a tuple is tagged JSON now
        assert "x" not in pack and "y" not in pack


def test_slots_info_describes_each_slot(tmp_path, arrays):
    path = tmp_path / "pack.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("main", arrays)
        pack.dump("cfg", {"lr": 0.1})
        pack.dump("blob", b"12345")
        infos = pack.slots_info
    assert set(infos) == {"main", "cfg", "blob"}

    with zipfile.ZipFile(path) as zf:
        digests = {n: content_digest(zf.read(n), "blake3") for n in zf.namelist()}
        sizes = {i.filename: i.file_size for i in zf.infolist()}
    for name, info in infos.items():
        assert info.members and all(m in digests for m in info.members), name
        assert info.algorithm == "blake3" and info.sha256 is None and re.fullmatch(r"[0-9a-f]{64}", info.digest)
        assert info.digest == slot_digest([digests[m] for m in info.members], "blake3"), name
        assert info.size == sum(sizes[m] for m in info.members)
        for pkg in ("python", "numpy", "ckpt"):
            assert set(info.dependencies[pkg]) == {"version", "requires"}
    assert infos["main"].members[:3] == ["names.npy", "0.npy", "1.npy"]
    assert infos["blob"].size == 5


def test_manifest_info_times_are_utc_and_format_is_2(tmp_path):
    before = dt.datetime.now(dt.timezone.utc)
    path = tmp_path / "pack.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("cfg", {"a": 1})
        info = pack.manifest_info
    after = dt.datetime.now(dt.timezone.utc)
    assert info.format_version == 2  # BLAKE3 digests (1: sha256 only)
    assert info.metadata == {}
    for stamp in (info.created_at, info.updated_at):
        assert stamp.tzinfo is not None and stamp.utcoffset() == dt.timedelta(0)
        assert before - dt.timedelta(seconds=1) <= stamp <= after + dt.timedelta(seconds=1)


def test_set_metadata_replaces_and_persists(tmp_path):
    path = tmp_path / "pack.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("cfg", {"a": 1})
        pack.set_metadata({"run": "exp1", "epoch": 3, "tags": ["a", "b"]})
        assert pack.metadata == {"run": "exp1", "epoch": 3, "tags": ["a", "b"]}
        pack.set_metadata({"epoch": 4})
    with ckpt.Pack(path) as pack:
        assert pack.manifest_info.metadata == {"epoch": 4}
        assert pack.load("cfg") == {"a": 1}


def test_set_metadata_refuses_non_json_and_keeps_the_file(tmp_path):
    path = tmp_path / "pack.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("cfg", {"a": 1})
        original = path.read_bytes()
        with pytest.raises(TypeError, match="JSON"):
            pack.set_metadata({"bad": object()})
    assert path.read_bytes() == original
    assert temp_leftovers(tmp_path) == []


def test_dump_to_an_existing_slot_raises(tmp_path):
    path = tmp_path / "pack.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("cfg", {"a": 1})
        original = path.read_bytes()
        with pytest.raises(SlotExistsError, match="cfg"):
            pack.dump("cfg", {"a": 2})
        assert path.read_bytes() == original
        pack.remove("cfg")
        pack.dump("cfg", {"a": 2})
        assert pack.load("cfg") == {"a": 2}


def test_unknown_slot_is_a_keyerror_naming_slot_and_file(tmp_path):
    path = tmp_path / "pack.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("cfg", {"a": 1})
        assert "cfg" in pack and "nope" not in pack
        for action in (lambda: pack.load("nope"), lambda: pack.remove("nope")):
            with pytest.raises(SlotNotFoundError) as info:
                action()
            assert isinstance(info.value, KeyError)
            assert "'nope'" in str(info.value)
            assert str(path) in str(info.value)
            assert info.value.slot == "nope"


def test_empty_or_missing_path_is_an_empty_pack(tmp_path):
    path = tmp_path / "new.npz"
    with ckpt.Pack(path) as pack:
        assert len(pack) == 0 and "main" not in pack
        assert pack.manifest_info.created_at is None
        with pytest.raises(SlotNotFoundError):
            pack.load("main")
    assert not path.exists(), "opening a pack must not create the file"


def test_remove_drops_members_no_other_slot_uses(tmp_path, rng):
    path = tmp_path / "pack.npz"
    opt_state = {"m": rng.standard_normal(10_000), "v": rng.standard_normal(10_000)}
    with ckpt.Pack(path) as pack:
        pack.dump("main", {"w": np.ones(3)})
        pack.dump("opt", opt_state)
        with_opt = path.stat().st_size
        opt_members = set(pack.slots_info["opt"].members)
        pack.remove("opt")
        assert "opt" not in pack
        assert list(pack.slots_info) == ["main"]
    assert path.stat().st_size < with_opt - 150_000
    assert not opt_members & set(member_names(path))
    assert_dicts_identical(ckpt.load(path), {"w": np.ones(3)})


# Any other non-empty text is a slot name (tests/test_slot_names.py): "../escape", "a/b", "naïve", ...
@pytest.mark.parametrize("name", ["", "_reserved", "x" * 257, "a\x1b[2Jb", "nul\x00", "lone\ud800", "rtl\u202eexe"])
def test_invalid_slot_names_are_refused(tmp_path, name):
    path = tmp_path / "pack.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("ok", 1)
        original = path.read_bytes()
        with pytest.raises(ValueError, match="invalid slot name"):
            pack.dump(name, 2)
    assert path.read_bytes() == original


def test_closed_pack_refuses_use(tmp_path):
    pack = ckpt.Pack(tmp_path / "p.npz")
    pack.dump("a", 1)
    pack.close()
    with pytest.raises(ValueError, match="closed"):
        pack.load("a")
    with pytest.raises(ValueError, match="closed"):
        pack.dump("b", 2)


def test_lazy_arrays_view(tmp_path, arrays):
    path = tmp_path / "p.npz"
    ckpt.save_var_collection(path, arrays)
    with ckpt.Pack(path) as pack:
        view = pack.arrays("main")
        assert view.names == list(arrays)
        assert view.shape_dtype("dense/w") == ((4, 3), np.dtype(np.float32))
        assert_arrays_identical(view.read("embed"), arrays["embed"])


# -- file objects --------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bytesio", "open_w+b"])
def test_pack_over_a_file_object(tmp_path, arrays, kind):
    f = io.BytesIO() if kind == "bytesio" else open(tmp_path / "p.npz", "w+b")
    try:
        with ckpt.Pack(f) as pack:
            pack.dump("main", arrays)
            pack.dump("cfg", {"lr": 0.1})
            pack.dump("note", b"hi")
            pack.remove("note")
            assert list(pack.slots_info) == ["main", "cfg"]
            assert pack.load("cfg") == {"lr": 0.1}
        assert not f.closed
        f.seek(0)
        with ckpt.Pack(f) as again:
            assert_dicts_identical(again.load("main"), arrays)
        f.seek(0)
        data = f.read()
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            assert zf.testzip() is None
            assert not any(n.startswith("note/") for n in zf.namelist())
        with np.load(io.BytesIO(data)) as z:
            assert_arrays_identical(z["0"], arrays["dense/w"])
    finally:
        f.close()


def test_pack_at_an_offset_inside_a_file_object(arrays):
    f = io.BytesIO(b"HEADER")
    f.seek(6)
    with ckpt.Pack(f) as pack:
        pack.dump("main", arrays)
        pack.dump("cfg", [1, 2])
    assert f.getvalue()[:6] == b"HEADER"
    f.seek(6)
    with ckpt.Pack(f) as pack:
        assert pack.load("cfg") == [1, 2]
        assert_dicts_identical(pack.load("main"), arrays)


def test_read_only_file_object_refuses_changes(tmp_path):
    path = tmp_path / "p.npz"
    ckpt.dump({"a": 1}, path)
    original = path.read_bytes()
    with open(path, "rb") as f, ckpt.Pack(f) as pack:
        assert pack.load("main") == {"a": 1}
        with pytest.raises(ReadOnlyPackError):
            pack.dump("more", [1])
        with pytest.raises(ReadOnlyPackError):
            pack.remove("main")
    assert path.read_bytes() == original


def test_write_only_file_object_takes_one_write(tmp_path):
    path = tmp_path / "p.npz"
    with open(path, "wb") as f, ckpt.Pack(f) as pack:
        pack.dump("cfg", {"a": 1})
        with pytest.raises(ReadOnlyPackError):
            pack.dump("more", [1])
        with pytest.raises(ReadOnlyPackError):
            pack.load("cfg")
    with ckpt.Pack(path) as pack:
        assert list(pack.slots_info) == ["cfg"]
        assert pack.load("cfg") == {"a": 1}


# -- deduplication and the objax layout --------------------------------------
@pytest.mark.parametrize("copy", [False, True], ids=["same_objects", "equal_copies"])
def test_identical_data_in_two_slots_is_stored_once(tmp_path, copy):
    path = tmp_path / "p.npz"
    state = {"w": BIG, "b": BIG[:1000] * 2}
    with ckpt.Pack(path) as pack:
        pack.dump("main", state)
        size_one = path.stat().st_size
        members_one = len(member_names(path))
        pack.dump("ema", {k: v.copy() for k, v in state.items()} if copy else state)
        infos = pack.slots_info
        assert_dicts_identical(pack.load("ema"), state)
    assert len(member_names(path)) == members_one
    assert path.stat().st_size - size_one < 4096, "the second copy must not store the arrays again"
    assert set(infos["ema"].members) <= set(infos["main"].members)
    assert infos["ema"].digest == infos["main"].digest


def test_identical_arrays_inside_main_keep_the_objax_layout(tmp_path):
    path = tmp_path / "p.npz"
    zeros = np.zeros(3, np.float32)
    ckpt.save_var_collection(path, {"dense1/b": zeros, "dense2/b": zeros.copy(), "w": np.ones(3, np.float32)})
    assert {"names.npy", "0.npy", "1.npy", "2.npy"} <= set(member_names(path))
    with np.load(path) as z:
        assert list(z["names"]) == ["dense1/b", "dense2/b", "w"]
        assert_arrays_identical(z["1"], zeros)


def test_main_dumped_after_an_identical_slot_keeps_the_objax_layout(tmp_path):
    path = tmp_path / "p.npz"
    state = {"a": np.zeros(4), "b": np.zeros(4)}
    with ckpt.Pack(path) as pack:
        pack.dump("ema", state)
        pack.dump("main", state)
    with np.load(path) as z:
        assert list(z["names"]) == ["a", "b"]
        assert_arrays_identical(z["0"], state["a"])
        assert_arrays_identical(z["1"], state["b"])


def test_slot_sharing_members_survives_removal_of_the_other(tmp_path):
    path = tmp_path / "p.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("main", {"w": BIG})
        pack.dump("ema", {"w": BIG})
        pack.remove("main")
        assert_dicts_identical(pack.load("ema"), {"w": BIG})
        pack.dump("main", {"other": np.ones(2)})
        assert_dicts_identical(pack.load("ema"), {"w": BIG})
        assert_dicts_identical(pack.load("main"), {"other": np.ones(2)})
    with np.load(path) as z:
        assert list(z["names"]) == ["other"]


def test_plain_npz_can_gain_slots(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, w=np.arange(3.0), b=np.ones(2))
    with ckpt.Pack(path) as pack:
        assert list(pack.slots_info) == ["main"]
        pack.dump("cfg", {"lr": 0.1})
        assert pack.load("cfg") == {"lr": 0.1}
        assert_dicts_identical(pack.load("main"), {"w": np.arange(3.0), "b": np.ones(2)})
    with np.load(path) as z:
        assert_arrays_identical(z["w"], np.arange(3.0))


# -- atomic rewrites of a path --------------------------------------------------
def test_changes_rewrite_the_path_by_rename_never_in_place(tmp_path, arrays):
    path = tmp_path / "p.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("main", arrays)
    old_inode = path.stat().st_ino
    old_bytes = path.read_bytes()
    with open(path, "rb") as old_handle:
        with ckpt.Pack(path) as pack:
            pack.dump("cfg", {"lr": 0.1})
            inode_after_dump = path.stat().st_ino
            pack.remove("cfg")
            inode_after_remove = path.stat().st_ino
            pack.set_metadata({"x": 1})
        # The old file was replaced, not modified: a reader holding it sees the old bytes.
        assert old_handle.read() == old_bytes
    # Each change is a new file (a freed inode may be reused later, so compare neighbours).
    inodes = [old_inode, inode_after_dump, inode_after_remove, path.stat().st_ino]
    assert all(a != b for a, b in zip(inodes, inodes[1:], strict=False)), inodes
    assert sorted(os.listdir(tmp_path)) == ["p.npz"]
    assert temp_leftovers(tmp_path) == []


def test_created_at_is_kept_and_updated_at_moves_forward(tmp_path, monkeypatch):
    path = tmp_path / "p.npz"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    with ckpt.Pack(path) as pack:
        pack.dump("a", 1)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000100")
    with ckpt.Pack(path) as pack:
        pack.dump("b", 2)
        info = pack.manifest_info
        slots = pack.slots_info
    created = dt.datetime.fromtimestamp(1700000000, dt.timezone.utc)
    updated = dt.datetime.fromtimestamp(1700000100, dt.timezone.utc)
    assert info.created_at == created
    assert info.updated_at == updated
    assert slots["a"].created_at == read_manifest(path)["slots"]["a"]["created_at"]
    assert slots["a"].created_at.startswith("2023-11-14T22:13:20")
    assert slots["b"].created_at.startswith("2023-11-14T22:15:00")


def test_updated_at_moves_forward_with_the_clock(tmp_path):
    path = tmp_path / "p.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("a", 1)
        first = pack.manifest_info
        pack.dump("b", 2)
        second = pack.manifest_info
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at
