"""ckpt.dump / ckpt.load where pickle.dump / pickle.load were, and plain numpy .npz files."""

from __future__ import annotations

import fractions
import io

import numpy as np
import pytest

import ckpt
from ckpt.errors import FormatError, UntrustedPickleError
from helpers import TouchOnUnpickle, assert_arrays_identical, assert_dicts_identical, member_names, temp_leftovers

VALUES = {
    "dict_of_arrays": ({"w": np.arange(6.0).reshape(2, 3), "b": np.zeros(3, np.float32)}, "arrays"),
    "array": (np.arange(5, dtype=np.uint8), "arrays"),
    "config": ({"lr": 3e-4, "layers": [128, 64], "act": "relu"}, "json"),
    "bytes": (b"\x00raw\xff", "raw"),
    "tuple": ((1, "two", 3.0), "json"),  # tagged JSON (issue 13): no pickle for everyday values
    "fraction": (fractions.Fraction(1, 3), "pickle"),
}


def _same(a, b):
    if isinstance(b, dict) and all(isinstance(v, np.ndarray) for v in b.values()):
        assert_dicts_identical(a, b)
    elif isinstance(b, np.ndarray):
        assert_arrays_identical(a, b)
    else:
        assert type(a) is type(b) and a == b


@pytest.mark.parametrize("value,serializer", list(VALUES.values()), ids=list(VALUES))
def test_like_pickle_with_file_objects(tmp_path, value, serializer):
    path = tmp_path / "obj.pkl"
    with open(path, "wb") as f:
        ckpt.dump(value, f)
        assert not f.closed
    with open(path, "rb") as f:
        loaded = ckpt.load(f, trusted=(serializer == "pickle"))
        assert not f.closed
    _same(loaded, value)
    with ckpt.Pack(path) as pack:
        assert list(pack.slots_info) == ["main"]
        assert pack.slots_info["main"].serializer == serializer


@pytest.mark.parametrize("as_str", [True, False], ids=["str_path", "pathlib"])
@pytest.mark.parametrize("value,serializer", list(VALUES.values()), ids=list(VALUES))
def test_like_pickle_with_paths(tmp_path, value, serializer, as_str):
    path = tmp_path / "obj.npz"
    target = str(path) if as_str else path
    ckpt.dump(value, target)
    _same(ckpt.load(target, trusted=(serializer == "pickle")), value)
    with ckpt.Pack(path) as pack:
        assert "main" in pack


def test_pickle_slots_that_import_globals_still_need_trust(tmp_path):
    path = tmp_path / "t.npz"
    ckpt.dump(fractions.Fraction(1, 3), path)  # (a tuple is tagged JSON now: no pickle)
    with pytest.raises(UntrustedPickleError):
        ckpt.load(path)
    assert ckpt.load(path, trusted=True) == fractions.Fraction(1, 3)
    # A pickle that imports nothing reaches no callable, so it needs no trust (a self-referencing
    # list is not JSON, so it is pickled).
    loop: list = [1]
    loop.append(loop)
    ckpt.dump(loop, path)
    back = ckpt.load(path)
    assert back[0] == 1 and back[1] is back


def test_dump_replaces_an_existing_file_atomically(tmp_path):
    path = tmp_path / "obj.npz"
    ckpt.dump({"v": 1}, path)
    inode = path.stat().st_ino
    ckpt.dump({"v": 2}, path)
    assert ckpt.load(path) == {"v": 2}
    assert path.stat().st_ino != inode
    assert temp_leftovers(tmp_path) == []


def test_dump_to_bytesio_and_back():
    buf = io.BytesIO()
    ckpt.dump({"w": np.ones(4)}, buf)
    assert buf.getvalue()[:4] == b"PK\x03\x04"
    buf.seek(0)
    assert_dicts_identical(ckpt.load(buf), {"w": np.ones(4)})


def test_dump_with_serializer_and_metadata(tmp_path):
    path = tmp_path / "obj.npz"
    ckpt.dump({"a": 1}, path, serializer="pickle", metadata={"who": "test"})
    with ckpt.Pack(path) as pack:
        assert pack.slots_info["main"].serializer == "pickle"
        assert pack.manifest_info.metadata == {"who": "test"}
    assert ckpt.load(path, trusted=True) == {"a": 1}


def test_dumped_arrays_open_with_numpy(tmp_path):
    path = tmp_path / "obj.npz"
    ckpt.dump({"w": np.arange(3.0), "b": np.ones(2)}, path)
    with np.load(path) as z:
        assert list(z["names"]) == ["w", "b"]
        assert_arrays_identical(z["0"], np.arange(3.0))
        assert_arrays_identical(z["1"], np.ones(2))


# -- plain numpy files -------------------------------------------------------------
@pytest.mark.parametrize("save", [np.savez, np.savez_compressed], ids=["savez", "savez_compressed"])
def test_plain_npz_loads_as_a_dict(tmp_path, rng, save):
    arrays = {"weights": rng.standard_normal((8, 4)).astype(np.float32), "ids": np.arange(10),
              "flags": np.array([True, False])}
    path = tmp_path / "plain.npz"
    save(path, **arrays)
    loaded = ckpt.load(path)
    assert sorted(loaded) == sorted(arrays)
    for k, v in arrays.items():
        assert_arrays_identical(loaded[k], v)
    target = {k: np.zeros_like(v) for k, v in arrays.items()}
    ckpt.load_var_collection(path, target)
    for k, v in arrays.items():
        assert_arrays_identical(target[k], v)
    with ckpt.Pack(path) as pack:
        assert pack.manifest_info.format_version == 0
        assert pack.slots_info["main"].serializer == "arrays"


def test_positional_savez_names(tmp_path):
    path = tmp_path / "pos.npz"
    np.savez(path, np.arange(3), np.ones(2))
    loaded = ckpt.load(path)
    assert sorted(loaded) == ["arr_0", "arr_1"]
    assert_arrays_identical(loaded["arr_0"], np.arange(3))


def test_plain_npz_from_a_file_object(rng):
    buf = io.BytesIO()
    np.savez_compressed(buf, a=rng.standard_normal(100))
    data = buf.getvalue()
    loaded = ckpt.load(io.BytesIO(data))
    with np.load(io.BytesIO(data)) as z:
        assert_arrays_identical(loaded["a"], z["a"])


def test_npz_with_object_arrays_is_refused_unpickled(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "objects.npz"
    np.savez(path, evil=np.array([TouchOnUnpickle(sentinel)], dtype=object), ok=np.ones(2))
    assert "evil.npy" in member_names(path)
    with pytest.raises(FormatError, match="object arrays"):
        ckpt.load(path)
    with pytest.raises(FormatError, match="object arrays"):
        ckpt.load_var_collection(path, {"evil": np.zeros(1), "ok": np.zeros(2)})
    assert not sentinel.exists()
