"""The whole training state in one atomic save: model, optimizer, RNG key, data-loader position, step, metrics, config."""

from __future__ import annotations

import numpy as np

import ckpt
from helpers import assert_arrays_identical, read_manifest

CONFIG = {"lr": 3e-3, "batch": 16, "layers": [4, 8, 2], "activation": "relu", "seed": 0, "notes": None}


def make(objax, seed):
    objax.random.DEFAULT_GENERATOR.seed(seed)
    net = objax.nn.Sequential([objax.nn.Linear(4, 8), objax.functional.relu, objax.nn.Linear(8, 2)])
    opt = objax.optimizer.Adam(net.vars())
    return net, opt


_compiled = {}


def compiled_step(objax, net, opt):
    """One jitted Adam step per (model, optimizer), compiled once."""
    if id(net) not in _compiled:
        grad = objax.GradValues(lambda x: (net(x) ** 2).mean(), net.vars())

        def step(x):
            g, (loss,) = grad(x)
            opt(CONFIG["lr"], g)
            return loss

        _compiled[id(net)] = (net, objax.Jit(step, grad.vars() + opt.vars()))
    return _compiled[id(net)][1]


def train_steps(objax, jax, net, opt, key, loader, n):
    """n steps of Adam on noisy random data; the noise uses ``key``, the batch order ``loader``."""
    data = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    step = compiled_step(objax, net, opt)
    loss = None
    for _ in range(n):
        perm = np.random.default_rng([CONFIG["seed"], loader["epoch"]]).permutation(len(data))
        idx = perm[loader["offset"]:loader["offset"] + CONFIG["batch"]]
        loader["offset"] += CONFIG["batch"]
        if loader["offset"] >= len(data):
            loader["epoch"], loader["offset"] = loader["epoch"] + 1, 0
        key, sub = jax.random.split(key)
        x = data[idx] + 0.1 * np.asarray(jax.random.normal(sub, (len(idx), 4)))
        loss = step(x)
    return key, float(loss)


def values(vc):
    return {k: np.array(v.value) for k, v in vc.items()}


def test_full_training_state_roundtrip_and_resume(tmp_path, objax, jax):
    net, opt = make(objax, 1)
    key = jax.random.PRNGKey(42)
    loader = {"epoch": 0, "offset": 0}
    key, loss = train_steps(objax, jax, net, opt, key, loader, 7)
    step = 7

    ck = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=2, metric="loss", verbose=False)
    path = ck.save(net.vars(), idx=step, extras={
        "opt": opt.vars(), "rng": key, "loader": dict(loader), "step": step, "config": CONFIG,
        "metrics": {"loss": loss},
    }, metrics={"loss": loss})

    # the reference run continues; a fresh process restores and continues the same way
    ref_key, ref_loss = train_steps(objax, jax, net, opt, key, loader, 5)
    ref_weights, ref_opt = values(net.vars()), values(opt.vars())

    net2, opt2 = make(objax, 99)  # different initial weights: everything must come from the file
    extras = {"opt": opt2.vars(), "rng": None, "loader": None, "step": None, "config": None, "metrics": None}
    idx, restored_path = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=2, verbose=False).restore(net2.vars(),
                                                                                                   extras=extras)
    assert (idx, restored_path) == (step, path)
    assert extras["step"] == step and extras["loader"] == {"epoch": 1, "offset": 48}
    assert extras["config"] == CONFIG and extras["metrics"] == {"loss": loss}
    assert extras["rng"].dtype == np.uint32 and extras["rng"].shape == (2,)
    assert_arrays_identical(extras["rng"], np.asarray(key))
    assert int(opt2.vars()["(Adam).step"].value) == 7
    assert ck.best() == (step, {"loss": loss})

    key2, loss2 = train_steps(objax, jax, net2, opt2, jax.numpy.asarray(extras["rng"]), extras["loader"], 5)
    assert loss2 == ref_loss
    assert_arrays_identical(np.asarray(key2), np.asarray(ref_key))
    for name, value in ref_weights.items():
        assert_arrays_identical(values(net2.vars())[name], value)
    for name, value in ref_opt.items():
        assert_arrays_identical(values(opt2.vars())[name], value)


def test_one_file_holds_every_slot(tmp_path, objax, jax):
    net, opt = make(objax, 0)
    path = ckpt.Checkpoint(tmp_path, verbose=False).save(
        net.vars(), 3, extras={"opt": opt.vars(), "rng": jax.random.PRNGKey(0), "loader": {"epoch": 0, "offset": 8},
                               "step": 3, "config": CONFIG}, metrics={"loss": 0.5})
    doc = read_manifest(path)
    serializers = {name: slot["serializer"] for name, slot in doc["slots"].items()}
    assert serializers == {"main": "arrays", "opt": "arrays", "rng": "arrays", "loader": "json", "step": "json",
                           "config": "json"}
    assert doc["metadata"]["ckpt"] == {"idx": 3, "metrics": {"loss": 0.5}}
    extras = ckpt.Checkpoint(tmp_path, verbose=False).load_extras(3)
    assert extras["config"] == CONFIG and extras["step"] == 3
    assert_arrays_identical(extras["rng"], np.asarray(jax.random.PRNGKey(0)))


def test_raw_key_restores_in_place_into_a_jax_array(tmp_path, jax):
    ck = ckpt.Checkpoint(tmp_path, verbose=False)
    key = jax.random.split(jax.random.PRNGKey(7))[1]
    ck.save({"w": np.zeros(2)}, 1, extras={"rng": key})
    extras = {"rng": jax.random.PRNGKey(0)}  # a template: restored as a jax array of the same kind
    ck.restore({"w": np.zeros(2)}, extras=extras)
    assert isinstance(extras["rng"], jax.Array)
    assert_arrays_identical(np.asarray(extras["rng"]), np.asarray(key))
    assert_arrays_identical(np.asarray(jax.random.normal(extras["rng"], (3,))), np.asarray(jax.random.normal(key, (3,))))


def test_typed_prng_key_roundtrip(tmp_path, jax):
    ck = ckpt.Checkpoint(tmp_path, verbose=False)
    key = jax.random.split(jax.random.key(0))[1]
    ck.save({"w": np.zeros(2)}, 1, extras={"rng": key})
    extras = {"rng": jax.random.key(1)}
    ck.restore({"w": np.zeros(2)}, extras=extras)
    restored = extras["rng"]
    assert jax.dtypes.issubdtype(restored.dtype, jax.dtypes.prng_key)
    assert_arrays_identical(np.asarray(jax.random.key_data(restored)), np.asarray(jax.random.key_data(key)))
    assert_arrays_identical(np.asarray(jax.random.normal(restored, (3,))), np.asarray(jax.random.normal(key, (3,))))
