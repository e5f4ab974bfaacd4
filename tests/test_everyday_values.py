"""Issue 13: everyday training values round-trip without pickle (tagged JSON, values in array trees).

``{"epoch": 2, "perm": array}``, configs with tuples, dicts with int keys, a JAX state with a plain
``int`` step: stored as JSON with type tags (docs/FORMAT.md 3.1), loaded back equal, with their types,
without ``trusted=``.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
import pytest

import ckpt
from helpers import read_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = {
    "layers": (64, 32, 10), "lr": 3e-4, "betas": (0.9, 0.999), "schedule": {0: 1e-3, 1000: 3e-4},
    "name": "exp1", "tags": frozenset({"a", "b"}), "seen": {1, 2, 3}, "blob": b"\x00\xffraw", "z": 1 - 2j,
    "eps": float("inf"), "missing": None, "nested": [(1, "x"), {"k": (True, None)}], "$ckpt": "a user key",
    (1, 2): "tuple key", None: "none key", 2.5: "float key", False: "bool key",
}


def same(a, b):
    """Equal with the same types all the way down (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict):
        # key order may differ (JAX sorts dict keys when it rebuilds a template), key types may not
        return (set(a) == set(b) and all(same(a[k], b[k]) for k in a)
                and {(type(k), k) for k in a} == {(type(k), k) for k in b})
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def slot_record(path, slot):
    return read_manifest(path)["slots"][slot]


@pytest.mark.parametrize("value", [
    CONFIG,
    (1, 2, 3),
    {1: "a", 2: "b"},
    [1, (2, 3), {4: {5: (6,)}}],
    {"nan": float("nan"), "-inf": float("-inf"), "neg0": -0.0},
    b"bytes",
    {"x": {"$ckpt": "tuple", "v": [1]}},  # looks like a tag: still a plain dict after the round trip
], ids=["config", "tuple", "int-keys", "nested", "non-finite", "bytes", "tag-lookalike"])
def test_values_pickle_cannot_avoid_today_are_tagged_json(tmp_path, value):
    path = str(tmp_path / "p.npz")
    with ckpt.Pack(path) as pack:
        pack.dump("cfg", value)
        assert pack.slots_info["cfg"].serializer in ("json", "raw")
    with ckpt.Pack(path) as pack:
        back = pack.load("cfg")  # no trusted=
    assert same(back, value)


def test_plain_json_is_written_as_before(tmp_path):
    path = str(tmp_path / "p.npz")
    with ckpt.Pack(path) as pack:
        pack.dump("cfg", {"lr": 0.1, "layers": [1, 2]})
    assert slot_record(path, "cfg")["info"] == {}
    import zipfile

    with zipfile.ZipFile(path) as zf:
        assert zf.read("cfg/data.json") == b'{"lr":0.1,"layers":[1,2]}'


def test_epoch_and_permutation_extras_round_trip_without_pickle(tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path))
    perm = np.random.default_rng(0).permutation(1000)
    loader = {"epoch": 2, "perm": perm, "offset": 640, "name": "train", "shuffle": True, "seed": (0, 1)}
    ck.save({"w": np.ones(3, np.float32)}, idx=7, extras={"loader": loader, "config": CONFIG})
    rec = slot_record(ck.path(7), "loader")
    assert rec["serializer"] == "arrays"
    assert slot_record(ck.path(7), "config")["serializer"] == "json"
    got = ck.load_extras(7)
    assert same(got["loader"], loader) and same(got["config"], CONFIG)
    extras = {"loader": None, "config": None}
    ck.restore({"w": np.zeros(3, np.float32)}, extras=extras)
    assert same(extras["loader"], loader)
    # restored into a template: the stored epoch/offset win over the template's
    extras = {"loader": {"epoch": 0, "perm": np.zeros(1000, np.int64), "offset": 0, "name": "", "shuffle": False,
                         "seed": (9, 9)}}
    ck.restore({"w": np.zeros(3, np.float32)}, extras=extras)
    assert extras["loader"]["epoch"] == 2 and extras["loader"]["offset"] == 640
    assert extras["loader"]["seed"] == (0, 1) and np.array_equal(extras["loader"]["perm"], perm)


def test_a_state_with_a_plain_int_step_is_a_checkpoint(tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path))
    state = {"params": {"w": np.ones((2, 2), np.float32)}, "step": 1234, "epoch": 3, "lr": 1e-3,
             "history": [0.5, 0.25], "layers": (2, 2)}
    ck.save(state, idx=1234)
    assert same(ck.load(), state)
    template = {"params": {"w": np.zeros((2, 2), np.float32)}, "step": 0, "epoch": 0, "lr": 0.0,
                "history": [0.0, 0.0], "layers": (0, 0)}
    assert same(ck.load(template=template), state)
    # numpy and objax still see only the arrays
    with np.load(ck.path(1234)) as npz:
        assert [n for n in npz.files if not n.startswith("__ckpt__")] == ["names", "0"]
        assert list(npz["names"]) == ["params/w"]


def test_save_var_collection_of_a_tree_with_values(tmp_path):
    path = str(tmp_path / "v.npz")
    tree = {"w": np.arange(4.0), "step": 10, "meta": {1: "one"}}
    ckpt.save_var_collection(path, tree)
    back = ckpt.load_var_collection(path, {"w": np.zeros(4), "step": 0, "meta": {1: ""}})
    assert same(back, tree)


def test_values_that_are_not_everyday_still_need_trust(tmp_path):
    import collections

    path = str(tmp_path / "p.npz")
    odd = collections.OrderedDict(a=1)  # the exact type matters: it would not come back as an OrderedDict
    with ckpt.Pack(path) as pack:
        pack.dump("x", odd)
        assert pack.slots_info["x"].serializer == "pickle"


def test_a_malformed_tag_is_a_format_error(tmp_path):
    from ckpt import _tagged

    for bad in ({"$ckpt": "tuple"}, {"$ckpt": "nope", "v": 1}, {"$ckpt": "bytes", "v": "***"},
                {"$ckpt": "dict", "v": [[[1], 2]]}, {"$ckpt": "complex", "v": [1]}):
        with pytest.raises(ckpt.FormatError):
            _tagged.decode(bad)


def test_an_extend_hook_sees_every_value_with_its_path_and_can_add_kinds():
    from ckpt import _tagged

    value = {"a": [1, (2.5, b"x")], 3: {frozenset({1}): None}, "n": float("nan")}
    seen: list[str] = []

    def watch(v, path, depth):
        seen.append(path)
        return _tagged.BASE

    assert _tagged.encode(value, watch, path="cfg") == _tagged.encode(value)  # BASE everywhere: the same JSON
    assert {"cfg", "cfg[3]", "cfg<key 3>", "cfg[3][frozenset({1})]", "cfg[3]<key frozenset({1})>"} <= set(seen)
    doc = _tagged.encode(value)
    back = _tagged.decode(doc, "f.npz: slot x", lambda d, w, depth: _tagged.BASE)
    assert back["a"] == [1, (2.5, b"x")] and back[3] == {frozenset({1}): None} and math.isnan(back["n"])

    def ranges(v, path, depth):  # a layer's own kind, through the same scheme
        return _tagged.tag("range", [v.start, v.stop]) if type(v) is range else _tagged.BASE

    def unranges(d, where, depth):
        if type(d) is dict and d.get("$ckpt") == "range":
            return range(*d["v"])
        return _tagged.BASE

    doc = _tagged.encode({1: (range(2, 5),)}, ranges)
    assert doc == {"$ckpt": "dict", "v": [[1, {"$ckpt": "tuple", "v": [{"$ckpt": "range", "v": [2, 5]}]}]]}
    assert _tagged.decode(doc, "x", unranges) == {1: (range(2, 5),)}
    with pytest.raises(ckpt.FormatError, match="unknown or malformed"):
        _tagged.decode(doc)  # without the hook the kind is unknown, refused
    with pytest.raises(ckpt.FormatError, match="exactly the keys"):
        _tagged.decode({"$ckpt": "range", "v": [1, 2], "x": 0}, "x", unranges)  # keys checked before the hook


# -- JAX: the README's flax/optax snippet exactly as written ---------------------------------------
def _readme_block(heading: str) -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_readme_flax_optax_snippet_runs_as_written(tmp_path, monkeypatch):
    jax = pytest.importorskip("jax")
    pytest.importorskip("flax")
    pytest.importorskip("optax")
    from flax import linen as nn

    monkeypatch.chdir(tmp_path)
    x = np.ones((2, 3), np.float32)
    scope = {"model": nn.Dense(4), "x": x, "step": 100}  # a plain Python int step, as a training loop has
    exec(compile(_readme_block("### JAX pytrees"), "README.md", "exec"), scope)  # noqa: S102 - the README itself
    state, plain = scope["state"], scope["plain"]
    assert state["step"] == 100
    assert plain["step"] == 100 and type(plain["step"]) is int
    np.testing.assert_array_equal(np.asarray(state["params"]["params"]["kernel"]),
                                  np.asarray(scope["params"]["params"]["kernel"]))
    assert jax.dtypes.issubdtype(state["key"].dtype, jax.dtypes.prng_key)


def test_a_flax_train_state_with_an_int_step_restores_the_stored_step(tmp_path):
    jax = pytest.importorskip("jax")
    pytest.importorskip("flax")
    optax = pytest.importorskip("optax")
    from flax import linen as nn
    from flax.training import train_state

    model = nn.Dense(3)
    params = model.init(jax.random.key(0), np.ones((1, 2), np.float32))
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(1e-3))
    state = state.replace(step=41)  # a plain int, as apply_gradients makes it in eager code
    ck = ckpt.Checkpoint(str(tmp_path))
    ck.save(state, idx=41)
    fresh = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(1e-3))
    back = ck.load(template=fresh)
    assert back.step == 41
    abstract = jax.eval_shape(lambda: fresh)
    back = ck.load(template=abstract)
    assert int(back.step) == 41


def test_an_equinox_module_with_int_fields_and_a_float_schedule_round_trip(tmp_path):
    jax = pytest.importorskip("jax")
    eqx = pytest.importorskip("equinox")
    optax = pytest.importorskip("optax")
    jnp = jax.numpy

    class Model(eqx.Module):
        w: jax.Array
        n_layers: int  # a plain int leaf of the pytree
        name: str = eqx.field(static=True)

    def make(w, n):
        model = Model(w, n, "mlp")
        opt = optax.chain(optax.clip(1.0), optax.adam(1e-3))
        return {"model": model, "opt": opt.init(model), "epoch": n, "sched": {0: 0.1, 100: 0.01}}

    ck = ckpt.Checkpoint(str(tmp_path))
    ck.save(make(jnp.ones(3), 7), idx=1)
    back = ck.load(template=make(jnp.zeros(3), 0))
    assert back["model"].n_layers == 7 and back["epoch"] == 7 and back["sched"] == {0: 0.1, 100: 0.01}
    np.testing.assert_array_equal(np.asarray(back["model"].w), np.ones(3))
    abstract = ck.load(template=jax.eval_shape(lambda: make(jnp.zeros(3), 0)))  # ints become 0-d structs
    assert int(abstract["model"].n_layers) == 7 and int(abstract["epoch"]) == 7
    assert float(abstract["sched"][100]) == pytest.approx(0.01)  # rounded to the template's float32


def test_keys_whose_names_collide_fall_back_as_before(tmp_path):
    path = str(tmp_path / "p.npz")
    with ckpt.Pack(path) as pack:
        pack.dump("arrays", {1: np.ones(2), "1": np.zeros(2)})  # array names "1" and "1": pickle, as before
        pack.dump("values", {1: "x", "1": "y"})  # no arrays to name: tagged JSON keeps both keys
        assert pack.slots_info["arrays"].serializer == "pickle"
        assert pack.slots_info["values"].serializer == "json"
        assert pack.load("values") == {1: "x", "1": "y"}
