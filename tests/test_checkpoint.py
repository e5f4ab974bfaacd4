"""The Checkpoint manager: naming, latest by integer step, rotation, temp files, extras, failed saves."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

import ckpt
from ckpt.errors import CheckpointNotFoundError, SlotNotFoundError
from helpers import assert_arrays_identical, assert_dicts_identical, temp_leftovers


def state_for(step):
    return {"w": np.full((2, 3), float(step)), "step": np.array(step, np.int64)}


def zeros():
    return {"w": np.zeros((2, 3)), "step": np.array(0, np.int64)}


def ckdir(tmp_path):
    return tmp_path / "run" / "ckpt"


# -- naming and basic save/restore --------------------------------------------------
def test_save_writes_a_numbered_npz_and_returns_its_path(tmp_path):
    ck = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=3)
    path = ck.save(state_for(5), 5)
    assert path == os.path.join(str(tmp_path / "run"), "ckpt", "0000000005.npz")
    assert os.path.isfile(path)
    assert ck.path(5) == path
    assert_dicts_identical(ckpt.load(path), state_for(5))
    assert ck.indices() == [5] and ck.latest() == 5


def test_restore_returns_the_latest_by_integer_step(tmp_path):
    ck = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=5)
    for step in (3, 10, 7):
        ck.save(state_for(step), step)
    target = zeros()
    idx, path = ck.restore(target)
    assert (idx, path) == (10, ck.path(10))
    assert_dicts_identical(target, state_for(10))
    assert ck.indices() == [3, 7, 10]


def test_restore_a_given_index(tmp_path):
    ck = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=5)
    for step in (1, 2, 3):
        ck.save(state_for(step), step)
    target = zeros()
    assert ck.restore(target, idx=2) == (2, ck.path(2))
    assert_dicts_identical(target, state_for(2))
    assert_dicts_identical(ck.load(1), state_for(1))


def test_restore_with_no_checkpoint_leaves_the_collection_untouched(tmp_path):
    ck = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=3)
    target = state_for(42)
    assert ck.restore(target) == (0, "")
    assert_dicts_identical(target, state_for(42))
    assert ck.latest() is None and ck.indices() == []


def test_restore_of_a_missing_index_raises(tmp_path):
    ck = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=3)
    ck.save(state_for(1), 1)
    target = zeros()
    with pytest.raises(CheckpointNotFoundError) as info:
        ck.restore(target, idx=2)
    assert isinstance(info.value, FileNotFoundError)
    assert "2" in str(info.value) and ck.directory in str(info.value)
    assert not target["w"].any()
    with pytest.raises(CheckpointNotFoundError):
        ck.load_extras(7)


def test_makedir(tmp_path):
    ckpt.Checkpoint(tmp_path / "made", makedir=True)
    assert (tmp_path / "made" / "ckpt").is_dir()
    ck = ckpt.Checkpoint(tmp_path / "absent", makedir=False)
    assert not (tmp_path / "absent").exists()
    with pytest.raises(FileNotFoundError):
        ck.save(state_for(1), 1)
    assert ck.restore(zeros()) == (0, "")


@pytest.mark.parametrize("keep", [0, -1, True, False, 1.5, "3"], ids=repr)
def test_keep_ckpts_must_be_a_positive_integer(tmp_path, keep):
    with pytest.raises(ValueError, match="keep_ckpts"):
        ckpt.Checkpoint(tmp_path / "run", keep_ckpts=keep)


@pytest.mark.parametrize("idx,error", [(-1, ValueError), (1.0, TypeError), (True, TypeError), ("3", TypeError)],
                         ids=["negative", "float", "bool", "str"])
def test_bad_indices_are_refused_before_writing(tmp_path, idx, error):
    ck = ckpt.Checkpoint(tmp_path / "run")
    with pytest.raises(error):
        ck.save(state_for(1), idx)
    assert os.listdir(ck.directory) == []


def test_numpy_integer_index_is_accepted(tmp_path):
    ck = ckpt.Checkpoint(tmp_path / "run")
    assert ck.save(state_for(4), np.int64(4)) == ck.path(4)


def test_save_refuses_a_non_collection(tmp_path):
    ck = ckpt.Checkpoint(tmp_path / "run")
    with pytest.raises(TypeError):
        ck.save({"lr": 0.1}, 1)
    assert ck.indices() == []


# -- rotation -------------------------------------------------------------------------
def test_rotation_keeps_the_newest(tmp_path):
    ck = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=3)
    for step in range(1, 7):
        ck.save(state_for(step), step)
    assert ck.indices() == [4, 5, 6]
    names = sorted(n for n in os.listdir(ck.directory) if not n.startswith("."))  # the lock file is a dot-file
    assert names == ["0000000004.npz", "0000000005.npz", "0000000006.npz"]


def test_order_is_by_integer_not_by_file_name(tmp_path):
    """objax sorts names: '10000000000.npz' < '9999999999.npz', so it deletes the newest."""
    ck = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=1)
    ck.save(state_for(1), 9_999_999_999)
    ck.save(state_for(2), 10**10)
    assert ck.indices() == [10**10]
    assert os.path.basename(ck.path(10**10)) == "10000000000.npz"
    assert os.path.exists(ck.path(10**10)) and not os.path.exists(ck.path(9_999_999_999))
    assert ck.latest() == 10**10
    target = zeros()
    assert ck.restore(target)[0] == 10**10
    assert_dicts_identical(target, state_for(2))


def test_rotation_across_a_digit_boundary(tmp_path):
    ck = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=2)
    for step in (9_999_999_998, 9_999_999_999, 10**10, 10**10 + 1):
        ck.save(state_for(1), step)
    assert ck.indices() == [10**10, 10**10 + 1]


def test_saving_a_lower_index_never_deletes_the_file_just_written(tmp_path):
    ck = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=1)
    ck.save(state_for(10), 10)
    path = ck.save(state_for(5), 5)
    assert os.path.exists(path)
    assert ck.indices() == [5, 10], "the newest and the one just written both stay"
    target = zeros()
    assert ck.restore(target, idx=5)[0] == 5
    assert_dicts_identical(target, state_for(5))
    assert ck.restore(target)[0] == 10
    ck.save(state_for(11), 11)
    assert ck.indices() == [11]


def test_lower_index_with_larger_keep(tmp_path):
    ck = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=2)
    for step in (10, 20, 30):
        ck.save(state_for(step), step)
    ck.save(state_for(15), 15)
    assert ck.indices() == [15, 20, 30]
    ck.save(state_for(40), 40)
    assert ck.indices() == [30, 40]


def test_stray_temp_files_are_never_listed_restored_or_counted(tmp_path):
    ck = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=2)
    ck.save(state_for(1), 1)
    ck.save(state_for(2), 2)
    # A complete, valid file under temp names: if it were listed it would win as index 7.
    good = Path(ckpt.Checkpoint(tmp_path / "elsewhere").save(state_for(7), 7)).read_bytes()
    stray = [".0000000007.npz.1234.abcdef01.tmp", "junk.npz.tmp", "0000000009.npz.tmp"]
    for name in stray:
        Path(ck.directory, name).write_bytes(good)
    assert ck.indices() == [1, 2] and ck.latest() == 2
    target = zeros()
    assert ck.restore(target)[0] == 2
    assert_dicts_identical(target, state_for(2))
    ck.save(state_for(3), 3)
    assert ck.indices() == [2, 3], "temp files must not take a place in the rotation"


@pytest.mark.parametrize("name", ["notes.npz", "0000000009.npz.bak", "abc.npz", "0000000011.NPZ",
                                  "model_0000000013.npz",
                                  "0000000014.npz~", "7.npz", "00000000015.npz"])
def test_files_not_matching_the_name_pattern_are_ignored(tmp_path, name):
    ck = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=2)
    ck.save(state_for(1), 1)
    ck.save(state_for(2), 2)
    stray = os.path.join(ck.directory, name)
    Path(stray).write_bytes(Path(ck.path(2)).read_bytes())
    assert ck.indices() == [1, 2]
    target = zeros()
    assert ck.restore(target) == (2, ck.path(2))
    ck.save(state_for(3), 3)
    assert ck.indices() == [2, 3]
    assert os.path.exists(stray), "rotation must not delete files it does not own"


def test_a_directory_named_like_a_checkpoint_is_ignored(tmp_path):
    ck = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=2)
    ck.save(state_for(1), 1)
    os.mkdir(ck.path(99))
    assert ck.indices() == [1]
    assert ck.restore(zeros())[0] == 1


# -- extras -------------------------------------------------------------------------
def test_extras_roundtrip(tmp_path, jax):
    ck = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=2)
    ema = {"w": np.full((2, 3), 0.5)}
    key = jax.random.PRNGKey(42)
    ck.save(state_for(3), 3, extras={"ema": ema, "rng": key, "metrics": {"loss": 0.5}, "step": 3})

    target = zeros()
    ema_target = {"w": np.zeros((2, 3))}
    ema_array = ema_target["w"]
    extras = {"ema": ema_target, "metrics": None, "rng": None}
    assert ck.restore(target, extras=extras) == (3, ck.path(3))

    assert_dicts_identical(target, state_for(3))
    assert extras["ema"] is ema_target and ema_target["w"] is ema_array, "array targets are restored in place"
    assert_arrays_identical(ema_array, ema["w"])
    assert extras["metrics"] == {"loss": 0.5}
    assert_arrays_identical(np.asarray(extras["rng"]), np.asarray(key))
    assert "step" not in extras, "only the extras asked for are restored"

    everything = ck.load_extras(3)
    assert sorted(everything) == ["ema", "metrics", "rng", "step"]
    assert everything["step"] == 3 and everything["metrics"] == {"loss": 0.5}
    assert_arrays_identical(everything["ema"]["w"], ema["w"])
    assert ck.load_extras(names=["step"]) == {"step": 3}


def test_extras_as_an_immutable_pytree_are_replaced(tmp_path, jax, jnp):
    ck = ckpt.Checkpoint(tmp_path / "run")
    opt_state = {"mu": (jnp.ones(3), jnp.arange(2.0)), "count": jnp.asarray(5)}
    ck.save(state_for(1), 1, extras={"opt": opt_state})
    extras = {"opt": jax.tree.map(jnp.zeros_like, opt_state)}
    ck.restore(zeros(), extras=extras)
    assert jax.tree.structure(extras["opt"]) == jax.tree.structure(opt_state)
    for got, want in zip(jax.tree.leaves(extras["opt"]), jax.tree.leaves(opt_state), strict=True):
        assert_arrays_identical(np.asarray(got), np.asarray(want))


# "../x" and "a/b" are slot names now (escaped into member prefixes: tests/test_slot_names.py).
@pytest.mark.parametrize("name", ["main", "module", "", "_private", "esc\x1b[0m"])
def test_reserved_or_invalid_extra_names_are_refused(tmp_path, name):
    ck = ckpt.Checkpoint(tmp_path / "run")
    with pytest.raises(ValueError):
        ck.save(state_for(1), 1, extras={name: {"a": 1}})
    assert ck.indices() == []


def test_restoring_an_absent_extra_assigns_nothing(tmp_path):
    ck = ckpt.Checkpoint(tmp_path / "run")
    ck.save(state_for(1), 1, extras={"metrics": {"loss": 1.0}})
    target = zeros()
    extras = {"metrics": None, "optimizer": None}
    with pytest.raises(SlotNotFoundError, match="optimizer"):
        ck.restore(target, idx=1, extras=extras)
    assert not target["w"].any()
    assert extras == {"metrics": None, "optimizer": None}


@pytest.mark.parametrize("bad", [lambda: (i for i in range(3)), threading.Lock], ids=["generator", "lock"])
def test_a_failed_save_leaves_earlier_checkpoints_intact(tmp_path, bad):
    ck = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=2)
    ck.save(state_for(1), 1)
    ck.save(state_for(2), 2)
    before = {i: Path(ck.path(i)).read_bytes() for i in (1, 2)}
    with pytest.raises(TypeError, match="pickle"):
        ck.save(state_for(3), 3, extras={"bad": bad()})
    assert ck.indices() == [1, 2]
    assert {i: Path(ck.path(i)).read_bytes() for i in (1, 2)} == before
    assert temp_leftovers(ck.directory) == []
    target = zeros()
    assert ck.restore(target)[0] == 2
