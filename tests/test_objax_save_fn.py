"""objax.io.Checkpoint's SAVE_FN/LOAD_FN hooks, honoured by ckpt.Checkpoint subclasses.

A subclass ported from objax keeps its customisation: saves go through SAVE_FN (still committed
atomically and rotated) and restores through LOAD_FN (a damaged newest file is skipped).
"""

from __future__ import annotations

import os
import zipfile

import pytest

objax = pytest.importorskip("objax")

import ckpt  # noqa: E402
from ckpt.errors import CorruptCheckpointWarning  # noqa: E402
from helpers import assert_arrays_identical, snapshot  # noqa: E402

pytestmark = pytest.mark.objax

CALLS: list[str] = []


def recording_save(file, vc):
    CALLS.append("save")
    objax.io.save_var_collection(file, vc)


def recording_load(file, vc, renamer=None):
    CALLS.append("load")
    objax.io.load_var_collection(file, vc, renamer=renamer)


class ObjaxFormat(ckpt.Checkpoint):
    SAVE_FN = staticmethod(recording_save)
    LOAD_FN = staticmethod(recording_load)


@pytest.fixture(autouse=True)
def _clear():
    CALLS.clear()


def test_save_fn_and_load_fn_are_called_and_rotation_still_works(tmp_path, make_model, randomize):
    model = make_model("linear")
    ck = ObjaxFormat(tmp_path, keep_ckpts=2, verbose=False)
    saved = {}
    for i in (1, 2, 3):
        randomize(model.vars(), seed=i)
        path = ck.save(model.vars(), i)
        saved[i] = snapshot(model.vars())
        with zipfile.ZipFile(path) as z:  # SAVE_FN's own format: objax's plain npz, no ckpt manifest
            assert not any(n.startswith("__ckpt__") for n in z.namelist())
    assert CALLS == ["save"] * 3
    assert ck.indices() == [2, 3]  # rotated although the files are not ckpt packs
    fresh = make_model("linear")
    assert ck.restore(fresh.vars()) == (3, ck.path(3))
    assert CALLS[-1] == "load"
    for k, v in snapshot(fresh.vars()).items():
        assert_arrays_identical(v, saved[3][k])
    ck.restore(fresh.vars(), idx=2)
    for k, v in snapshot(fresh.vars()).items():
        assert_arrays_identical(v, saved[2][k])
    # objax's own manager reads what the subclass wrote
    other = make_model("linear")
    objax.io.Checkpoint(str(tmp_path), keep_ckpts=5).restore(other.vars())
    for k, v in snapshot(other.vars()).items():
        assert_arrays_identical(v, saved[3][k])


def test_a_save_fn_that_fails_leaves_no_file_and_the_older_ones_intact(tmp_path, make_model):
    class Failing(ckpt.Checkpoint):
        @staticmethod
        def SAVE_FN(file, vc):
            file.write(b"PK\x03\x04 half a zip")
            raise OSError(28, "No space left on device")

    model = make_model("linear")
    good = ObjaxFormat(tmp_path, verbose=False)
    good.save(model.vars(), 1)
    with pytest.raises(ckpt.errors.SaveError) as info:
        Failing(tmp_path, verbose=False).save(model.vars(), 2)
    assert info.value.errno == 28 and info.value.file == good.path(2)
    assert sorted(os.listdir(good.directory)) == [".ckpt.lock", "0000000001.npz"]


def test_load_fn_skips_a_damaged_newest_file(tmp_path, make_model, randomize):
    model = make_model("linear")
    ck = ObjaxFormat(tmp_path, keep_ckpts=None, verbose=False)
    randomize(model.vars(), seed=1)
    ck.save(model.vars(), 1)
    first = snapshot(model.vars())
    randomize(model.vars(), seed=2)
    ck.save(model.vars(), 2)
    with open(ck.path(2), "r+b") as f:
        f.truncate(40)
    fresh = make_model("linear")
    with pytest.warns(CorruptCheckpointWarning, match="LOAD_FN"):
        assert ck.restore(fresh.vars())[0] == 1
    for k, v in snapshot(fresh.vars()).items():
        assert_arrays_identical(v, first[k])


def test_what_save_fn_cannot_write_is_refused_before_anything_is_written(tmp_path, make_model):
    model = make_model("linear")
    ck = ObjaxFormat(tmp_path, verbose=False)
    for kwargs in ({"extras": {"opt": {"lr": 0.1}}}, {"metrics": {"loss": 1.0}}, {"module": model}):
        with pytest.raises(ValueError, match="SAVE_FN"):
            ck.save(model.vars(), 1, **kwargs)
    assert ck.indices() == [] and CALLS == []
    ck.save(model.vars(), 1)
    with pytest.raises(ValueError, match="LOAD_FN"):
        ck.restore(model.vars(), extras={"opt": None})


def test_a_plain_subclass_keeps_ckpts_own_format(tmp_path, make_model):
    class Plain(ckpt.Checkpoint):
        pass

    model = make_model("linear")
    path = Plain(tmp_path, verbose=False).save(model.vars(), 1, metrics={"loss": 0.5})
    assert "__ckpt__/manifest.json" in zipfile.ZipFile(path).namelist()
    assert ckpt.Checkpoint(tmp_path, makedir=False).best(metric="loss")[0] == 1
