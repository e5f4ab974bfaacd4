"""Slots are identified by an arbitrary string (MLIO), mapped to safe member names (docs/FORMAT.md 2.3)."""

from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import ckpt
from ckpt._slotnames import member_prefix, problem

NAMES = ["object 1", "model/encoder", "模型", "../x", ".hidden", "-dash", "a%2Fb", "naïve", "x" * 252, "🙂",
         "a\\b", "C:", "   ", "..", "."]


def _members(path):
    with zipfile.ZipFile(path) as z:
        return z.namelist()


def _assert_safe(member: str) -> None:
    """The zip rules a reader enforces (FORMAT section 1): no traversal, no empty or dot components."""
    assert member and "\\" not in member and "\x00" not in member and not member.startswith("/")
    assert all(part not in ("", ".", "..") for part in member.split("/")), member
    assert re.match(r"[A-Za-z]:", member) is None, member  # no drive letter


@pytest.mark.parametrize("name", NAMES)
def test_any_text_names_a_slot_and_round_trips(tmp_path, name):
    path = tmp_path / "p.npz"
    value = {"w": np.arange(3.0), "name": np.array([len(name)])}
    with ckpt.Pack(path) as pack:
        pack.dump("main", {"x": np.ones(2)})
        pack.dump(name, value)
        pack.dump(name + "#cfg", {"n": name})
    with ckpt.Pack(path) as pack:
        assert set(pack) == {"main", name, name + "#cfg"}
        got = pack.load(name)
        assert got.keys() == value.keys() and all(np.array_equal(got[k], value[k]) for k in value)
        assert pack.load(name + "#cfg") == {"n": name}
    for member in _members(path):
        _assert_safe(member)
    with np.load(path) as z:  # still an npz numpy opens
        assert np.array_equal(z["0"], np.ones(2))


def test_names_valid_before_keep_their_members(tmp_path):
    path = tmp_path / "p.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("opt.state-1_x", {"m": np.zeros(2)})
        pack.dump("cfg", {"lr": 0.1})
    assert set(_members(path)) >= {"opt.state-1_x/names.npy", "opt.state-1_x/0.npy", "cfg/data.json"}


@pytest.mark.parametrize("name,prefix", [
    ("model/encoder", "model%2Fencoder/"), ("object 1", "object%201/"), ("../x", "%2E.%2Fx/"),
    ("a%2Fb", "a%252Fb/"), ("模", "%E6%A8%A1/"), ("-x", "%2Dx/"), ("main", ""),
])
def test_the_mapping_is_the_documented_one(name, prefix):
    assert member_prefix(name) == prefix


def test_names_that_escape_alike_do_not_collide(tmp_path):
    path = tmp_path / "p.npz"
    names = ["a/b", "a%2Fb", "a%252Fb", "a b", "a%20b"]
    with ckpt.Pack(path) as pack:
        for i, n in enumerate(names):
            pack.dump(n, {"i": i})
    with ckpt.Pack(path) as pack:
        assert [pack.load(n) for n in names] == [{"i": i} for i in range(len(names))]
    assert len({m.split("/")[0] for m in _members(path) if m.endswith("data.json")}) == len(names)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=40), min_size=2, max_size=6, unique=True))
def test_member_prefixes_are_one_to_one_and_one_safe_component(names):
    names = [n for n in names if problem(n) is None]
    prefixes = [member_prefix(n) for n in names]
    assert len(set(prefixes)) == len(prefixes)
    for n, p in zip(names, prefixes):
        if n == "main":
            continue
        assert p.endswith("/") and p.count("/") == 1 and p[:-1] not in ("", ".", "..") and p.isascii()
        assert not p.startswith(("_", ".", "-"))


def test_checkpoint_extras_take_any_slot_name(tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path), verbose=False)
    ck.save({"w": np.ones(3)}, 1, extras={"model/encoder": {"w": np.arange(4.0)}, "object 1": {"k": 1}})
    target = {"w": np.zeros(3)}
    extras = {"model/encoder": {"w": np.zeros(4)}, "object 1": None}
    ck.restore(target, extras=extras)
    assert np.array_equal(extras["model/encoder"]["w"], np.arange(4.0))
    assert extras["object 1"] == {"k": 1}


@pytest.mark.parametrize("name", ["", "_mine", "x" * 257, "bell\x07", "tab\tname", "lone\udc00", "rtl\u202e", 3])
def test_writer_and_reader_refuse_the_same_names(tmp_path, name):
    with pytest.raises((ValueError, TypeError), match="invalid slot name"):
        ckpt.pack.check_slot_name(name)  # type: ignore[arg-type]
    if not isinstance(name, str) or "\udc00" in name:
        return
    path = tmp_path / "p.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("main", {"x": np.ones(2)})
        pack.dump("ok", {"a": 1})
    # Rename the slot in the manifest (same members): the reader refuses the name itself.
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    doc = json.loads(entries["__ckpt__/manifest.json"])
    doc["slots"][name] = doc["slots"].pop("ok")
    entries["__ckpt__/manifest.json"] = json.dumps(doc).encode()
    bad = tmp_path / "bad.npz"
    with zipfile.ZipFile(bad, "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)
    with pytest.raises(ckpt.FormatError, match="slot name") as info:
        ckpt.Pack(str(bad))
    assert info.value.file == str(bad)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=20).filter(lambda n: problem(n) is None and n != "main"),
                min_size=1, max_size=4, unique=True))
def test_random_names_round_trip_through_a_file(tmp_path_factory, names):
    path = tmp_path_factory.mktemp("names") / "p.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("main", {"x": np.ones(1)})
        for i, n in enumerate(names):
            pack.dump(n, {"i": i, "name": n})
    with ckpt.Pack(path) as pack:
        pack.verify()
        assert sorted(pack) == sorted(["main", *names])
        assert [pack.load(n) for n in names] == [{"i": i, "name": n} for i, n in enumerate(names)]
    for member in _members(path):
        _assert_safe(member)
