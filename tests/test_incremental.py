"""Incremental checkpoints: what did not change is not written again, and nothing needed is ever lost."""

from __future__ import annotations

import json
import logging
import os
import warnings
import zipfile

import numpy as np
import pytest

import ckpt
from ckpt.errors import ChecksumError, CorruptCheckpointWarning, FormatError
from ckpt.incremental import MissingObjectError
from ckpt.incremental._refs import file_references
from ckpt import export_standalone

jax = pytest.importorskip("jax")
jnp = jax.numpy

FROZEN = 256 * 1024  # float32 elements: 1 MiB


def objects(ck: ckpt.Checkpoint) -> dict[str, int]:
    return ckpt.incremental.ObjectStore(ck.storage).listing()


def needed(ck: ckpt.Checkpoint) -> set[str]:
    return set().union(*(file_references(ck.path(i)) for i in ck.indices()))


def model(step: int, frozen) -> dict:
    return {"base": frozen, "adapter": jnp.full((128, 128), float(step), jnp.float32),
            "bias": np.full(4, step, np.float32)}


def manifest(path: str) -> dict:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("__ckpt__/manifest.json"))


@pytest.fixture
def frozen():
    return jnp.arange(FROZEN, dtype=jnp.float32) * 0.5


def test_frozen_base_is_written_once_and_every_step_restores_bit_exact(tmp_path, frozen):
    ck = ckpt.Checkpoint(str(tmp_path), incremental=True, keep_ckpts=None)
    sizes = []
    for step in range(4):
        ck.save(model(step, frozen), idx=step)
        sizes.append(ck.incremental.stats)
    assert sizes[0].written >= FROZEN * 4 and sizes[0].identical == 0
    for s in sizes[1:]:  # only the 64 KiB adapter is written; the base is the same JAX array: not even hashed
        assert s.written == 128 * 128 * 4 + 128 and s.identical >= FROZEN * 4 and s.objects_written == 1
    assert len(objects(ck)) == 1 + 4  # one base, one adapter per step
    assert os.path.getsize(ck.path(3)) < 4096  # the checkpoint file holds names, the bias and the manifest
    for step in range(4):
        got = ck.load(step)
        assert np.array_equal(got["base"], np.asarray(frozen)) and got["adapter"][0, 0] == step
        assert got["bias"].tolist() == [step] * 4
        with ckpt.Pack(ck.path(step)) as pack:
            pack.verify()


def test_equal_content_in_a_new_array_is_hashed_and_reused_numpy_is_never_trusted_by_identity(tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path), incremental=True, keep_ckpts=None)
    base = np.arange(FROZEN, dtype=np.float32)
    ck.save({"w": base}, idx=0)
    ck.save({"w": base}, idx=1)  # the same numpy object: mutable, so hashed
    assert ck.incremental.stats.identical == 0 and ck.incremental.stats.reused > FROZEN * 4 - 1
    base[7] = -1.0  # changed in place: a new object, and the old checkpoint keeps its content
    ck.save({"w": base}, idx=2)
    assert ck.incremental.stats.written > FROZEN * 4 - 1
    assert ck.load(1)["w"][7] == 7.0 and ck.load(2)["w"][7] == -1.0
    j = jnp.asarray(ck.load(0)["w"])  # a new JAX array with known content: hashed, then found
    ck.save({"w": j}, idx=3)
    assert ck.incremental.stats.reused > FROZEN * 4 - 1 and ck.incremental.stats.written == 0
    assert len(objects(ck)) == 2


def test_a_restarted_manager_reuses_the_objects_on_disk(tmp_path, frozen):
    ckpt.Checkpoint(str(tmp_path), incremental=True).save(model(0, frozen), idx=0)
    again = ckpt.Checkpoint(str(tmp_path), incremental=True)
    again.save(model(1, frozen), idx=1)
    assert again.incremental.stats.reused >= FROZEN * 4 and again.incremental.stats.objects_written == 1


def test_retention_keeps_what_kept_checkpoints_refer_to_and_deletes_the_rest(tmp_path, frozen):
    ck = ckpt.Checkpoint(str(tmp_path), incremental=True, keep_ckpts=2, keep_every=4)
    for step in range(1, 8):
        ck.save(model(step, frozen), idx=step)
        assert set(objects(ck)) == needed(ck), step
    assert ck.indices() == [4, 6, 7]
    assert len(objects(ck)) == 1 + 3
    ck.alias("best", 6)
    for step in range(8, 10):
        ck.save(model(step, frozen), idx=step)
    assert ck.indices() == [4, 6, 8, 9] and set(objects(ck)) == needed(ck)
    assert ck.load(6)["adapter"][0, 0] == 6 and ck.load(4)["adapter"][0, 0] == 4


def test_objects_of_a_crashed_save_are_collected_and_a_plain_manager_collects_too(tmp_path, frozen):
    ck = ckpt.Checkpoint(str(tmp_path), incremental=True, keep_ckpts=2)
    for step in range(3):
        ck.save(model(step, frozen), idx=step)
    store = ckpt.incremental.ObjectStore(ck.storage)
    orphan, _, _ = store.put("blake3", ".npy", [b"\x93NUMPY orphan of a killed save"])
    assert f"objects/blake3/{orphan}.npy" in objects(ck)
    plain = ckpt.Checkpoint(str(tmp_path), keep_ckpts=1)  # not incremental: its rotation still collects
    assert plain.prune() == [1]
    assert set(objects(plain)) == needed(plain) and len(objects(plain)) == 2
    assert plain.load(2)["adapter"][0, 0] == 2


def test_collection_deletes_nothing_while_a_checkpoint_cannot_be_read(tmp_path, frozen, caplog):
    ck = ckpt.Checkpoint(str(tmp_path), incremental=True, keep_ckpts=2)
    for step in range(3):
        ck.save(model(step, frozen), idx=step)
    with open(ck.path(1), "r+b") as f:  # its zip directory cut off: what it refers to is unknown
        f.truncate(100)
    before = set(objects(ck))
    ckpt.incremental.ObjectStore(ck.storage).put("blake3", ".npy", [b"orphan"])
    with caplog.at_level(logging.WARNING, logger="ckpt"):
        assert ck.collect_objects() == []
    assert before <= set(objects(ck)) and "cannot be read" in caplog.text


def _object_path(ck: ckpt.Checkpoint, step: int, array: str) -> str:
    doc = manifest(ck.path(step))
    names = list(np.load(ck.path(step))["names"])
    member = f"{names.index(array)}.npy"
    rec = doc["members"][member]
    assert rec["object"] is True
    return os.path.join(ck.directory, "objects", "blake3", rec["blake3"] + ".npy")


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_shared_data_is_found_by_verify_and_refused_on_restore(tmp_path, frozen, damage):
    ck = ckpt.Checkpoint(str(tmp_path), incremental=True, keep_ckpts=None)
    for step in range(3):
        ck.save(model(step, frozen), idx=step)
    path = _object_path(ck, 2, "adapter")
    if damage == "flip":
        with open(path, "r+b") as f:
            f.seek(-5, 2)
            byte = f.read(1)
            f.seek(-5, 2)
            f.write(bytes([byte[0] ^ 1]))
    elif damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(1000)
    else:
        os.unlink(path)
    with ckpt.Pack(ck.path(2)) as pack, pytest.raises(FormatError) as e:
        pack.verify()
    assert "shared object" in str(e.value) and ck.path(2) in str(e.value)
    if damage == "delete":
        assert isinstance(e.value, MissingObjectError)
    elif damage == "flip":
        assert isinstance(e.value, ChecksumError)
    with ckpt.Pack(ck.path(1)) as pack:
        pack.verify()  # the others do not share that object
    target = {k: np.zeros_like(np.asarray(v)) for k, v in model(0, frozen).items()}
    with pytest.warns(CorruptCheckpointWarning, match="0000000002"):
        idx, _ = ck.restore(target)
    assert idx == 1 and target["adapter"][0, 0] == 1.0 and np.array_equal(target["base"], np.asarray(frozen))
    with pytest.raises(FormatError):
        ck.restore(target, idx=2)
    assert target["adapter"][0, 0] == 1.0  # the refused restore assigned nothing


def _saved_with_damage(tmp_path, frozen, steps: int, step: int, array: str, offset: int, data: bytes
                       ) -> ckpt.Checkpoint:
    """A manager with checkpoints 0..steps-1, the shared object of ``array`` in ``step`` overwritten."""
    ck = ckpt.Checkpoint(str(tmp_path), incremental=True, keep_ckpts=None)
    for i in range(steps):
        ck.save(model(i, frozen), idx=i)
    with open(_object_path(ck, step, array), "r+b") as f:
        f.seek(offset)
        f.write(data)
    return ck


def test_damaged_shared_base_makes_every_checkpoint_refuse(tmp_path, frozen):
    ck = _saved_with_damage(tmp_path, frozen, 2, 1, "base", 200, b"\xff\xff")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptCheckpointWarning)
        with pytest.raises(FormatError, match="every checkpoint is damaged"):
            ck.load()


def test_what_numpy_sees_and_the_manifest_records(tmp_path, frozen):
    ck = ckpt.Checkpoint(str(tmp_path), incremental=True)
    path = ck.save(model(3, frozen), idx=3)
    doc = manifest(path)
    assert doc["version"] == 3
    shared = {n for n, m in doc["members"].items() if m.get("object")}
    with np.load(path) as z:  # numpy lists the members in the file: names, the small arrays, the manifest
        names = list(z["names"])
        bias = str(names.index("bias"))
        assert sorted(names) == ["adapter", "base", "bias"]
        assert sorted(z.files) == sorted(["__ckpt__/manifest.json", bias, "names"])
        assert z[bias].tolist() == [3.0] * 4
    # base and adapter are shared objects; the 16-byte bias stays in the file
    assert shared == {f"{names.index('base')}.npy", f"{names.index('adapter')}.npy"}
    for n in shared:  # each object is itself a plain .npy file, named by its digest
        obj = os.path.join(ck.directory, "objects", "blake3", doc["members"][n]["blake3"] + ".npy")
        assert os.path.getsize(obj) == doc["members"][n]["size"]
        np.load(obj)


def test_export_standalone_and_the_cli_export_write_plain_npz_files(tmp_path, frozen, capsys):
    ck = ckpt.Checkpoint(str(tmp_path / "run"), incremental=True)
    for step in range(2):
        ck.save(model(step, frozen), idx=step, extras={"opt": {"m": jnp.ones(FROZEN)}, "meta": {"s": step}})
    out = export_standalone(ck.path(1), str(tmp_path / "alone.npz"))
    assert not any(m.get("object") for m in manifest(out)["members"].values())
    assert manifest(out)["version"] == 2
    os.rename(str(tmp_path / "run"), str(tmp_path / "gone"))  # the objects are out of reach now
    with np.load(out) as z:
        names = list(z["names"])
        assert np.array_equal(z[str(names.index("base"))], np.asarray(frozen))
    with ckpt.Pack(out) as pack:
        pack.verify()
        assert pack.load("meta") == {"s": 1} and pack.load("opt")["m"].shape == (FROZEN,)
    moved = str(tmp_path / "gone" / "ckpt" / "0000000001.npz")
    from ckpt._cli import main

    assert main(["export", moved, "--to", "npz", str(tmp_path / "cli.npz")]) == 0
    with np.load(str(tmp_path / "cli.npz")) as z:
        assert np.array_equal(z["base"], np.asarray(frozen)) and z["adapter"][0, 0] == 1.0


def test_a_shared_file_opened_without_its_directory_says_what_to_do(tmp_path, frozen):
    ck = ckpt.Checkpoint(str(tmp_path), incremental=True)
    path = ck.save(model(0, frozen), idx=0)
    with open(path, "rb") as f:
        with pytest.raises(MissingObjectError, match="export"):
            ckpt.load_var_collection(f, {k: np.zeros_like(np.asarray(v)) for k, v in model(0, frozen).items()})


def test_info_shows_which_arrays_are_stored_in_the_file_and_which_are_shared(tmp_path, frozen, capsys):
    from ckpt._cli import main

    ck = ckpt.Checkpoint(str(tmp_path), incremental=True)
    path = ck.save(model(0, frozen), idx=0)
    assert main(["info", path, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    where = {a["name"]: a["where"] for a in doc["slots"]["main"]["arrays"]}
    assert where == {"base": "shared", "adapter": "shared", "bias": "file"}
    assert main(["info", path]) == 0
    text = capsys.readouterr().out
    assert "shared object" in text and "2 arrays refer to shared objects" in text


def test_background_saves_and_restore_into_objax_style_targets(tmp_path, frozen):
    ck = ckpt.Checkpoint(str(tmp_path), incremental=True, async_save=True, keep_ckpts=2)
    for step in range(4):
        ck.save(model(step, frozen), idx=step)
    ck.wait()
    assert ck.incremental.stats.identical >= FROZEN * 4
    target = {k: np.zeros_like(np.asarray(v)) for k, v in model(0, frozen).items()}
    assert ck.restore(target)[0] == 3 and target["adapter"][0, 0] == 3
    ck.close()
    assert set(objects(ck)) == needed(ck)


def test_a_deleted_jax_array_is_not_trusted_by_identity(tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path), incremental=True)
    a = jnp.ones(FROZEN)
    ck.save({"a": a}, idx=0)
    plan = ck.incremental.plan({"main": {"a": a}}, {"main": ckpt.varfile.encode_slots({"main": {"a": a}})["main"]})
    assert plan.leaves[("main", 1)].same is not None
    b = jnp.ones(FROZEN) * 2
    plan = ck.incremental.plan({"main": {"a": b}}, {"main": ckpt.varfile.encode_slots({"main": {"a": b}})["main"]})
    assert plan.leaves[("main", 1)].same is None


def test_incremental_min_bytes_is_checked_and_small_arrays_stay_inline(tmp_path):
    with pytest.raises(ValueError, match="incremental_min_bytes"):
        ckpt.Checkpoint(str(tmp_path), incremental=True, incremental_min_bytes=0)
    ck = ckpt.Checkpoint(str(tmp_path), incremental=True, incremental_min_bytes=1 << 30)
    path = ck.save({"w": np.ones(1000)}, idx=0)
    assert not any(m.get("object") for m in manifest(path)["members"].values())
    assert manifest(path)["version"] == 2 and objects(ck) == {}


def _rewrite(path: str, edit) -> None:
    """Rewrite ``path`` with its manifest changed by ``edit(doc)`` (members kept as they are)."""
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    doc = json.loads(entries["__ckpt__/manifest.json"])
    edit(doc)
    entries["__ckpt__/manifest.json"] = json.dumps(doc).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for n, data in entries.items():
            z.writestr(n, data)


def _object_name(doc: dict) -> str:
    return next(n for n, m in doc["members"].items() if m.get("object"))


def _inline_name(doc: dict) -> str:
    return next(n for n in doc["slots"]["main"]["members"][1:] if not doc["members"][n].get("object"))


def _fake(doc: dict, name: str, slot: str) -> None:
    doc["members"][name] = {"size": 10, "blake3": "0" * 64, "object": True}
    doc["slots"][slot]["members"].append(name)


HOSTILE = {
    "object-not-true": (lambda d: d["members"][_object_name(d)].update(object=1), "expected true"),
    "object-in-version-2": (lambda d: d.update(version=2), "format version 2 does not have"),
    "object-also-in-archive": (lambda d: d["members"][_inline_name(d)].update(object=True), "also in the archive"),
    "object-in-a-json-slot": (lambda d: _fake(d, "meta/x.npy", "meta"), "only arrays slots"),
    "object-not-an-array-member": (lambda d: _fake(d, "x.txt", "main"), "not an array member"),
    "object-digest-is-a-path": (lambda d: d["members"][_object_name(d)].update(blake3="../../../etc/passwd"),
                                "not 64 lowercase hex"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_object_records_are_refused_naming_the_file(tmp_path, frozen, case):
    edit, match = HOSTILE[case]
    ck = ckpt.Checkpoint(str(tmp_path), incremental=True)
    path = ck.save(model(0, frozen), idx=0, extras={"meta": {"s": 0}})
    _rewrite(path, edit)
    with pytest.raises(FormatError, match=match) as e:
        ckpt.Pack(path).verify()
    assert path in str(e.value)
    with pytest.raises(FormatError):
        ck.load(0)


def test_incremental_saves_through_an_fsspec_url(frozen):
    """Object stores: objects are hashed, then committed through the storage; reads, retention and
    collection go through it too."""
    pytest.importorskip("fsspec")
    import uuid

    url = f"memory://incr-{uuid.uuid4().hex}"
    ck = ckpt.Checkpoint(url, incremental=True, keep_ckpts=2)
    for step in range(4):
        ck.save(model(step, frozen), idx=step)
    assert ck.incremental.stats.identical >= FROZEN * 4 and ck.incremental.stats.objects_written == 1
    assert ck.indices() == [2, 3]
    got = ck.load(2)
    assert got["adapter"][0, 0] == 2 and np.array_equal(got["base"], np.asarray(frozen))
    store = ckpt.incremental.ObjectStore(ck.storage)
    assert len(store.listing()) == 1 + 2
    with ckpt.Pack(ck.path(3)) as pack:
        pack.verify()


def test_ckpt_verify_of_a_directory_names_the_checkpoint_whose_shared_object_is_damaged(tmp_path, frozen, capsys):
    from ckpt._cli import main

    _saved_with_damage(tmp_path, frozen, 3, 1, "adapter", 300, b"XX")
    assert main(["verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    bad = [line for line in out.splitlines() if line.startswith("BAD")]
    assert len(bad) == 1 and "0000000001.npz" in bad[0] and "shared object" in bad[0]
    assert "1 damaged" in out


def test_compressed_members_are_shared_objects_too(tmp_path):
    pytest.importorskip("zstandard")
    ck = ckpt.Checkpoint(str(tmp_path), incremental=True, compression="zstd", keep_ckpts=2)
    base = jnp.asarray((np.random.default_rng(0).standard_normal(1 << 18) * 0.02).astype(np.float32))
    for step in range(3):
        ck.save({"base": base, "a": jnp.full((1 << 15,), float(step))}, idx=step)
    assert ck.incremental.stats.identical > 0 and ck.incremental.stats.objects_written == 1
    assert any(k.endswith(".ckz") for k in objects(ck)) and set(objects(ck)) == needed(ck)
    got = ck.load(2)
    assert np.array_equal(got["base"], np.asarray(base)) and got["a"][0] == 2.0
