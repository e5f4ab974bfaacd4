"""The Checkpoint manager with objax models and optimizers, and interoperation with objax.io.Checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

objax = pytest.importorskip("objax")
jax = pytest.importorskip("jax")

import ckpt  # noqa: E402
from helpers import assert_arrays_identical, snapshot  # noqa: E402

pytestmark = pytest.mark.objax


@pytest.fixture
def trained(make_model, randomize):
    """A conv+batchnorm model with an Adam optimizer, every variable given random values."""
    model = make_model("conv_bn")
    opt = objax.optimizer.Adam(model.vars())
    randomize(model.vars() + opt.vars(), seed=21)
    return model, opt


@pytest.fixture
def fresh(make_model):
    model = make_model("conv_bn")
    return model, objax.optimizer.Adam(model.vars())


def assert_same_values(actual_vc, expected_vc):
    expected = snapshot(expected_vc)
    actual = snapshot(actual_vc)
    assert list(actual) == list(expected)
    for k in expected:
        assert_arrays_identical(actual[k], expected[k])


def test_save_and_restore_model_with_optimizer_extras(tmp_path, trained, fresh):
    model, opt = trained
    ck = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=2)
    key = jax.random.PRNGKey(0)
    path = ck.save(model.vars(), 100, extras={"opt": opt.vars(), "rng": key, "metrics": {"loss": 0.5}, "step": 3})
    assert path.endswith("0000000100.npz")

    model2, opt2 = fresh
    extras = {"opt": opt2.vars(), "metrics": None, "rng": None}
    assert ck.restore(model2.vars(), extras=extras) == (100, path)

    assert_same_values(model2.vars(), model.vars())
    assert_same_values(opt2.vars(), opt.vars())          # Adam's step, m and v
    assert int(np.asarray(opt2.step.value)) == int(np.asarray(opt.step.value))
    assert extras["metrics"] == {"loss": 0.5}
    assert_arrays_identical(np.asarray(extras["rng"]), np.asarray(key))

    stored = ck.load_extras(100)
    assert stored["step"] == 3
    assert "(Adam).m(ModuleList)[1]" in stored["opt"]
    assert_arrays_identical(stored["opt"]["(Adam).m(ModuleList)[1]"], np.asarray(opt.m[1].value))


def test_optimizer_extra_shares_the_model_arrays(tmp_path, trained):
    """The optimizer's TrainRefs point at the model's variables: their data is stored once, in main."""
    model, opt = trained
    ck = ckpt.Checkpoint(tmp_path / "run")
    path = ck.save(model.vars(), 1, extras={"opt": opt.vars()})
    with ckpt.Pack(path) as pack:
        main = set(pack.slots_info["main"].members)
        opt_members = pack.slots_info["opt"].members
    n_trainable = len(model.vars().subset(objax.TrainVar))
    shared = [m for m in opt_members if m in main]
    assert len(shared) == n_trainable
    assert len(opt_members) == 1 + n_trainable + 1 + 2 * n_trainable  # names, refs, step, m, v


def test_restore_into_a_mismatched_model_raises_and_keeps_values(tmp_path, trained, make_model):
    model, _ = trained
    ck = ckpt.Checkpoint(tmp_path / "run")
    ck.save(model.vars(), 1)
    other = make_model("linear")
    before = snapshot(other.vars())
    with pytest.raises(ckpt.errors.MismatchError):
        ck.restore(other.vars())
    after = snapshot(other.vars())
    for k in before:
        assert_arrays_identical(after[k], before[k])


def test_objax_checkpoint_restores_what_ckpt_saved(tmp_path, trained, fresh):
    model, opt = trained
    vc = model.vars() + opt.vars()
    ck = ckpt.Checkpoint(str(tmp_path / "run"), keep_ckpts=3)
    ck.save(vc, 1)
    ck.save(vc, 2)

    model2, opt2 = fresh
    vc2 = model2.vars() + opt2.vars()
    theirs = objax.io.Checkpoint(str(tmp_path / "run"), keep_ckpts=3, verbose=False)
    idx, path = theirs.restore(vc2)
    assert (idx, path) == (2, ck.path(2))
    assert_same_values(vc2, vc)


def test_ckpt_restores_what_objax_checkpoint_saved(tmp_path, trained, fresh):
    model, opt = trained
    vc = model.vars() + opt.vars()
    theirs = objax.io.Checkpoint(str(tmp_path / "run"), keep_ckpts=3, verbose=False)
    theirs.save(vc, 1)
    theirs.save(vc, 7)

    ck = ckpt.Checkpoint(str(tmp_path / "run"), keep_ckpts=3)
    assert ck.indices() == [1, 7]
    model2, opt2 = fresh
    vc2 = model2.vars() + opt2.vars()
    assert ck.restore(vc2) == (7, ck.path(7))
    assert_same_values(vc2, vc)
