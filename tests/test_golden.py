"""The format promise (docs/FORMAT.md section 7): files written by earlier ckpt read back bit-exactly.

tests/data/golden/ holds files written by tests/data/make_golden.py with the code of the day; these
tests read them with today's code. Never regenerate them to make a failure go away.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import zipfile

import numpy as np
import pytest

import ckpt

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "data", "golden")
sys.path.insert(0, os.path.join(HERE, "data"))
import make_golden  # noqa: E402

EXPECTED = make_golden.expected()


def assert_same(found, want, where="value"):
    """Equal values of exactly the same types; arrays equal in dtype, shape and every byte."""
    assert type(found) is type(want), f"{where}: {type(found).__name__} != {type(want).__name__}"
    if isinstance(want, np.ndarray):
        assert found.dtype == want.dtype, f"{where}: dtype {found.dtype} != {want.dtype}"
        assert found.shape == want.shape, f"{where}: shape {found.shape} != {want.shape}"
        assert np.ascontiguousarray(found).tobytes() == np.ascontiguousarray(want).tobytes(), where
    elif isinstance(want, dict):
        assert list(found) == list(want), f"{where}: keys {list(found)} != {list(want)}"
        for k in want:
            assert_same(found[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(found) == len(want), where
        for i, (f, w) in enumerate(zip(found, want)):
            assert_same(f, w, f"{where}[{i}]")
    elif isinstance(want, float) and math.isnan(want):
        assert math.isnan(found), where
    else:
        assert found == want, f"{where}: {found!r} != {want!r}"


def test_every_golden_file_is_covered():
    assert sorted(os.listdir(GOLDEN)) == sorted(EXPECTED)
    for name in EXPECTED:  # small enough to keep in the repository
        assert os.path.getsize(os.path.join(GOLDEN, name)) < 64 * 1024, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_values_read_back_bit_exact(name):
    with ckpt.Pack(os.path.join(GOLDEN, name)) as pack:
        assert sorted(pack) == sorted(EXPECTED[name])
        pack.verify()
        for slot, want in EXPECTED[name].items():
            assert_same(pack.load(slot, trusted=True), want, f"{name} slot {slot!r}")


@pytest.mark.parametrize("name,version,algorithm", [
    ("v2-blake3-kinds.npz", 2, "blake3"), ("v1-sha256-kinds.npz", 1, "sha256"),
    ("v2-zstd-checkpoint.npz", 2, "blake3"), ("v2-lz4.npz", 2, "blake3"),
])
def test_golden_manifests_keep_their_version_digests_and_kinds(name, version, algorithm):
    with ckpt.Pack(os.path.join(GOLDEN, name)) as pack:
        assert pack.manifest_info.format_version == version
        for slot, info in pack.slots_info.items():
            assert info.algorithm == algorithm, slot
        kinds = {s: i.serializer for s, i in pack.slots_info.items()}
    if "kinds" in name:
        assert kinds == {"main": "arrays", "cfg": "json", "tagged": "json", "blob": "raw", "tree": "arrays",
                         "obj": "pickle"}
        with ckpt.Pack(os.path.join(GOLDEN, name)) as pack:
            assert pack.metadata == make_golden.METADATA
            # The pickle slot imports a global: untrusted loads still refuse it.
            with pytest.raises(ckpt.UntrustedPickleError):
                pack.load("obj")


def test_golden_compressed_members_are_really_compressed():
    for name, codec in (("v2-zstd-checkpoint.npz", "zstd"), ("v2-lz4.npz", "lz4")):
        with ckpt.Pack(os.path.join(GOLDEN, name)) as pack:
            view = pack.arrays("main")
            assert view.stored("w")[0] == f"{codec}+shuffle"
            assert view.stored("small")[0] is None


def test_golden_checkpoint_keeps_index_and_metrics(tmp_path):
    """A Checkpoint directory holding the old file restores it and ranks it by its recorded metrics."""
    os.makedirs(tmp_path / "ckpt")
    shutil.copyfile(os.path.join(GOLDEN, "v2-zstd-checkpoint.npz"), tmp_path / "ckpt" / "0000000042.npz")
    ck = ckpt.Checkpoint(str(tmp_path), verbose=False)
    target = {k: np.zeros_like(v) for k, v in make_golden.compressible().items()}
    idx, _ = ck.restore(target)
    assert idx == 42
    assert_same(target, make_golden.compressible())
    assert ck.load_extras(42, names=["cfg"])["cfg"]["lr"] == 0.001
    with ckpt.Pack(str(tmp_path / "ckpt" / "0000000042.npz")) as pack:
        assert pack.metadata["ckpt"] == {"idx": 42, "metrics": make_golden.METRICS}


def test_golden_packs_stay_plain_npz_files():
    """numpy reads the main arrays of an old pack (extension dtypes as void of the same bytes)."""
    want = make_golden.arrays()
    with np.load(os.path.join(GOLDEN, "v2-blake3-kinds.npz")) as z:
        names = list(z["names"])
        for i, n in enumerate(names):
            arr = z[str(i)]
            assert arr.shape == want[n].shape
            assert arr.tobytes() == want[n].tobytes(), n
    assert sorted(names) == sorted(want)


def test_golden_manifest_bytes_are_what_the_spec_says():
    with zipfile.ZipFile(os.path.join(GOLDEN, "v2-blake3-kinds.npz")) as z:
        doc = json.loads(z.read("__ckpt__/manifest.json"))
    assert doc["format"] == "ckpt.pack" and doc["version"] == 2
    assert doc["created_at"] == "2027-01-15T08:00:00.000000Z"  # SOURCE_DATE_EPOCH of the script
    assert doc["slots"]["cfg"]["members"] == ["cfg/data.json"]
    assert doc["slots"]["obj"]["members"] == ["obj/data.pkl", "obj/0.npy"]


def _with_manifest_edit(src: str, dst, edit) -> None:
    with zipfile.ZipFile(src) as z:
        entries = [(i, z.read(i.filename)) for i in z.infolist()]
    doc = json.loads(dict((i.filename, d) for i, d in entries)["__ckpt__/manifest.json"])
    edit(doc)
    with zipfile.ZipFile(dst, "w") as z:
        for info, data in entries:
            z.writestr(info, json.dumps(doc).encode() if info.filename == "__ckpt__/manifest.json" else data)


def _add_unknown_keys(doc):
    doc["future_top_level"] = {"x": 1}
    doc["metadata"]["ckpt_future"] = [1]
    for member in doc["members"].values():
        member["future_member_key"] = "crc64:..."
    for slot in doc["slots"].values():
        slot["future_slot_key"] = True
        slot["info"]["future_info_key"] = {"nested": None}
    for rec in doc["slots"]["main"]["info"]["arrays"]:
        rec["future_array_key"] = 3


@pytest.mark.parametrize("name", ["v2-blake3-kinds.npz", "v1-sha256-kinds.npz", "v2-zstd-checkpoint.npz"])
def test_readers_ignore_unknown_keys_in_manifest_slot_member_and_info(tmp_path, name):
    """FORMAT section 7: a key a reader does not know is ignored, wherever it is (the version says
    what a reader must understand)."""
    path = tmp_path / name
    _with_manifest_edit(os.path.join(GOLDEN, name), path, _add_unknown_keys)
    with ckpt.Pack(str(path)) as pack:
        pack.verify()
        for slot, want in EXPECTED[name].items():
            assert_same(pack.load(slot, trusted=True), want, f"{name} slot {slot!r}")


def test_an_unknown_slot_kind_refuses_only_its_slot(tmp_path):
    """A slot of a kind this reader does not know (a newer ckpt's, or a user's not registered here)
    leaves the file readable: the other slots load, that one raises UnknownSlotKindError."""
    path = tmp_path / "k.npz"
    _with_manifest_edit(os.path.join(GOLDEN, "v2-blake3-kinds.npz"), path,
                        lambda d: d["slots"]["blob"].update(serializer="shardref"))
    with ckpt.Pack(str(path)) as pack:
        pack.verify()
        assert_same(pack.load("cfg"), EXPECTED["v2-blake3-kinds.npz"]["cfg"])
        with pytest.raises(ckpt.UnknownSlotKindError, match="'shardref'") as info:
            pack.load("blob")
    assert info.value.kind == "shardref" and info.value.slot == "blob" and info.value.file == str(path)


def test_a_newer_version_is_refused_by_its_number(tmp_path):
    newer = ckpt._limits.FORMAT_VERSION + 1
    path = tmp_path / f"v{newer}.npz"
    _with_manifest_edit(os.path.join(GOLDEN, "v2-blake3-kinds.npz"), path, lambda d: d.update(version=newer))
    with pytest.raises(ckpt.FormatError, match=f"version {newer}.*Upgrade ckpt"):
        ckpt.Pack(str(path))


def test_todays_writer_writes_the_golden_members_byte_for_byte(tmp_path, monkeypatch):
    """The on-disk format of every existing kind is unchanged: today's writer, given the same values,
    writes the same member bytes and the same manifest (but for the package versions it records)."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", make_golden.SOURCE_DATE_EPOCH)
    make_golden.write(str(tmp_path))
    for name in EXPECTED:
        with zipfile.ZipFile(os.path.join(GOLDEN, name)) as old, zipfile.ZipFile(tmp_path / name) as new:
            assert new.namelist() == old.namelist(), name
            for member in old.namelist():
                if member.endswith(".pkl"):
                    continue  # pickle bytes may differ between Python versions; the values are checked above
                if member == "__ckpt__/manifest.json":
                    a, b = json.loads(old.read(member)), json.loads(new.read(member))
                    for doc in (a, b):
                        for slot in doc["slots"].values():
                            slot.pop("dependencies")
                            slot.pop("blake3", None), slot.pop("sha256", None)  # the pickle's digest
                        doc["members"] = {k: v for k, v in doc["members"].items() if not k.endswith(".pkl")}
                    assert a == b, name
                else:
                    assert new.read(member) == old.read(member), f"{name} member {member}"
