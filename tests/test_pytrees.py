"""JAX pytrees: flax (linen and nnx), optax, equinox, dataclasses, abstract targets, typed keys.

Each test saves real framework state, restores it into a fresh or abstract template and compares
leaves exactly. Frameworks that are not installed skip their tests (the objax env has no flax).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ckpt
from ckpt.errors import MismatchError

jax = pytest.importorskip("jax")
jnp = jax.numpy


def _raw(x):
    """Comparable data of a leaf (typed keys compared by their key data)."""
    if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(x))
    return np.asarray(x)


def assert_trees_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(_raw(x), _raw(y))


def test_nested_containers_roundtrip_and_numpy_names(tmp_path):
    tree = {"a": [jnp.ones(3), (jnp.zeros((2, 2)), jnp.arange(4))], "b": {"c": jnp.float32(2.0) * jnp.ones(())}}
    path = tmp_path / "t.npz"
    ckpt.save_var_collection(path, tree)
    assert list(np.load(path)["names"]) == ["a/0", "a/1/0", "a/1/1", "b/c"]
    # Without a template: the same nesting, numpy leaves, tuples kept as tuples.
    plain = ckpt.load(path)
    assert isinstance(plain["a"][1], tuple) and isinstance(plain["a"][1][0], np.ndarray)
    np.testing.assert_array_equal(plain["a"][1][1], np.arange(4))
    restored = ckpt.load_var_collection(path, jax.tree_util.tree_map(jnp.zeros_like, tree))
    assert_trees_equal(tree, restored)
    assert isinstance(restored["a"][0], jax.Array)


def test_abstract_template_builds_arrays_from_shape_dtype_structs(tmp_path):
    state = {"w": jnp.arange(12.0).reshape(3, 4), "step": jnp.array(7, jnp.int32)}
    path = tmp_path / "s.npz"
    ckpt.save_var_collection(path, state)
    abstract = jax.eval_shape(lambda: state)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(abstract))
    restored = ckpt.load_var_collection(path, abstract)
    assert_trees_equal(state, restored)
    assert all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(restored))


def test_checkpoint_load_with_template_and_without(tmp_path):
    ck = ckpt.Checkpoint(tmp_path, keep_ckpts=2)
    state = {"params": {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}}}
    ck.save(state, 10)
    nested = ck.load()
    assert set(nested["params"]["dense"]) == {"kernel", "bias"}
    assert isinstance(nested["params"]["dense"]["kernel"], np.ndarray)
    restored = ck.load(10, template=jax.eval_shape(lambda: state))
    assert_trees_equal(state, restored)


def test_strict_reports_everything_before_building(tmp_path):
    path = tmp_path / "s.npz"
    ckpt.save_var_collection(path, {"a": jnp.ones(3), "b": jnp.ones(2), "c": jnp.ones(4, jnp.float32)})
    template = {"a": jax.ShapeDtypeStruct((3,), jnp.float32), "c": jax.ShapeDtypeStruct((4,), jnp.int32),
                "d": jax.ShapeDtypeStruct((1,), jnp.float32)}
    with pytest.raises(MismatchError) as err:
        ckpt.load_var_collection(path, template)
    assert err.value.missing == ["d"]
    assert err.value.unused == ["b"]
    assert [m[0] for m in err.value.mismatched] == ["c"]
    # Non-strict: the intersection, and what was skipped.
    restored, skipped = ckpt.load_var_collection(path, template, strict=False)
    np.testing.assert_array_equal(restored["a"], np.ones(3))
    assert isinstance(restored["c"], jax.ShapeDtypeStruct)  # skipped leaves stay as given
    assert skipped["missing"] == ["d"] and skipped["unused"] == ["b"]
    # cast=True converts only when asked.
    only_c = {"a": jax.ShapeDtypeStruct((3,), jnp.float32), "b": jax.ShapeDtypeStruct((2,), jnp.float32),
              "c": jax.ShapeDtypeStruct((4,), jnp.int32)}
    restored = ckpt.load_var_collection(path, only_c, cast=True)
    assert restored["c"].dtype == jnp.int32
    np.testing.assert_array_equal(restored["c"], np.ones(4, np.int32))


def test_typed_and_raw_prng_keys_roundtrip(tmp_path):
    state = {"typed": jax.random.key(42), "raw": jax.random.PRNGKey(7), "split": jax.random.split(jax.random.key(1), 3)}
    path = tmp_path / "k.npz"
    ckpt.save_var_collection(path, state)
    restored = ckpt.load_var_collection(path, jax.eval_shape(lambda: state))
    assert jnp.issubdtype(restored["typed"].dtype, jax.dtypes.prng_key)
    assert restored["split"].shape == (3,)
    assert_trees_equal(state, restored)
    # The restored key draws the same numbers.
    np.testing.assert_array_equal(jax.random.normal(state["typed"], (4,)), jax.random.normal(restored["typed"], (4,)))
    # Without a template the typed key comes back typed, from the recorded implementation.
    plain = ckpt.load(path)
    assert jnp.issubdtype(plain["typed"].dtype, jax.dtypes.prng_key)
    assert plain["raw"].dtype == np.uint32


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float8_e4m3fn", "float8_e5m2", "int4"])
def test_ml_dtypes_roundtrip_exactly_and_open_in_numpy(tmp_path, dtype_name):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    dt = np.dtype(getattr(ml_dtypes, dtype_name))
    values = np.arange(-4, 4).astype(dt)
    path = tmp_path / "m.npz"
    ckpt.save_var_collection(path, {"x": jnp.asarray(values)})
    back = ckpt.load(path)["x"]
    assert back.dtype == dt
    np.testing.assert_array_equal(back.view(np.uint8), values.view(np.uint8))
    raw = np.load(path)["0"]
    assert raw.dtype.kind == "V" and raw.dtype.itemsize == dt.itemsize
    np.testing.assert_array_equal(raw.view(dt).view(np.uint8), values.view(np.uint8))


def test_registered_dataclass_keeps_static_fields_from_template(tmp_path):
    @jax.tree_util.register_dataclass
    @dataclasses.dataclass
    class State:
        w: jax.Array
        b: jax.Array
        name: str = dataclasses.field(metadata=dict(static=True), default="net")

    s = State(jnp.ones((2, 2)), jnp.arange(2.0))
    path = tmp_path / "d.npz"
    ckpt.save_var_collection(path, s)
    assert set(np.load(path)["names"]) == {"w", "b"}
    restored = ckpt.load_var_collection(path, State(jnp.zeros((2, 2)), jnp.zeros(2), name="other"))
    assert isinstance(restored, State) and restored.name == "other"
    np.testing.assert_array_equal(restored.b, np.arange(2.0))


def test_flax_linen_cnn_with_optax_adam_state(tmp_path):
    nn = pytest.importorskip("flax.linen")
    optax = pytest.importorskip("optax")

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(8, (3, 3))(x))
            x = nn.avg_pool(x, (2, 2), (2, 2)).reshape((x.shape[0], -1))
            return nn.Dense(10)(x)

    model = CNN()
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    y = jnp.arange(4) % 10
    params = model.init(jax.random.key(1), x)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()
        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for _ in range(3):
        params, opt_state = step(params, opt_state)
    state = {"params": params, "opt": opt_state, "step": jnp.array(3)}
    ck = ckpt.Checkpoint(tmp_path, keep_ckpts=1)
    path = ck.save(state, 3)
    names = list(np.load(path)["names"])
    assert "params/params/Conv_0/kernel" in names and "opt/1/0/mu/params/Dense_0/bias" in names
    restored = ck.load(template=jax.eval_shape(lambda: state))
    assert_trees_equal(state, restored)
    # Training continues identically from the restored state.
    p1, o1 = step(state["params"], state["opt"])
    p2, o2 = step(restored["params"], restored["opt"])
    assert_trees_equal((p1, o1), (p2, o2))


def test_flax_nnx_state(tmp_path):
    nnx = pytest.importorskip("flax.nnx")

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(3, 4, rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)

        def __call__(self, x):
            return self.bn(self.lin(x))

    a = Net(nnx.Rngs(0))
    b = Net(nnx.Rngs(1))
    path = tmp_path / "n.npz"
    ckpt.save_var_collection(path, nnx.state(a))
    assert "lin/kernel/value" in set(np.load(path)["names"])
    nnx.update(b, ckpt.load_var_collection(path, nnx.state(b)))
    x = jnp.ones((2, 3))
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x), b(x))


def test_equinox_mlp_non_array_leaves_from_template(tmp_path):
    eqx = pytest.importorskip("equinox")
    mlp = eqx.nn.MLP(4, 2, 8, 2, activation=jax.nn.tanh, key=jax.random.key(1))
    path = tmp_path / "e.npz"
    ckpt.save_var_collection(path, mlp)
    names = set(np.load(path)["names"])
    assert names == {f"layers/{i}/{p}" for i in range(3) for p in ("weight", "bias")}
    other = eqx.nn.MLP(4, 2, 8, 2, activation=jax.nn.tanh, key=jax.random.key(2))
    restored = ckpt.load_var_collection(path, other)
    x = jnp.linspace(-1, 1, 4)
    np.testing.assert_array_equal(mlp(x), restored(x))
    assert restored.activation is jax.nn.tanh


_SHARDING_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np, ckpt
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    path = sys.argv[1]
    assert len(jax.devices()) == 8
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    w = jax.device_put(jnp.arange(256.0).reshape(16, 16), NamedSharding(mesh, P("data", "model")))
    b = jax.device_put(jnp.arange(16.0), NamedSharding(mesh, P("model")))
    ckpt.save_var_collection(path, {"w": w, "b": b})
    # Restore into another sharding (and another mesh shape), from abstract targets.
    mesh2 = Mesh(np.array(jax.devices()).reshape(2, 4), ("x", "y"))
    target = {"w": jax.ShapeDtypeStruct((16, 16), jnp.float32, sharding=NamedSharding(mesh2, P(None, "y"))),
              "b": jax.ShapeDtypeStruct((16,), jnp.float32, sharding=NamedSharding(mesh2, P("x")))}
    out = ckpt.load_var_collection(path, target)
    assert out["w"].sharding == target["w"].sharding, out["w"].sharding
    assert out["b"].sharding == target["b"].sharding
    assert len(out["w"].addressable_shards) == 8
    np.testing.assert_array_equal(np.asarray(out["w"]), np.arange(256.0).reshape(16, 16))
    np.testing.assert_array_equal(np.asarray(out["b"]), np.arange(16.0))
    # A concrete template on one device: restored there.
    dev = jax.devices()[5]
    single = ckpt.load_var_collection(path, {"w": jax.device_put(jnp.zeros((16, 16)), dev),
                                             "b": jax.device_put(jnp.zeros(16), dev)})
    assert single["w"].devices() == {dev}
    print("OK")
    """
)


def test_named_sharding_restores_into_a_different_sharding(tmp_path):
    script = tmp_path / "shard.py"
    script.write_text(_SHARDING_SCRIPT)
    env = dict(os.environ, PYTHONWARNINGS="error")
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "s.npz")], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("OK")
    # The file written from 8 shards restores in this process (one CPU device) without any sharding info.
    plain = ckpt.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(plain["w"], np.arange(256.0).reshape(16, 16))


def test_restore_refuses_an_immutable_pytree_instead_of_dropping_the_result(tmp_path):
    ck = ckpt.Checkpoint(tmp_path, keep_ckpts=1)
    state = {"params": {"w": jnp.ones(3)}, "opt": (jnp.zeros(3),)}
    ck.save(state, 1)
    template = jax.tree_util.tree_map(jnp.zeros_like, state)
    with pytest.raises(TypeError, match="template"):
        ck.restore(template)
    # The documented way returns the restored tree.
    restored = ck.load(1, template=template)
    np.testing.assert_array_equal(restored["params"]["w"], np.ones(3))
    # A flat dict of arrays is still restored in place, as objax users expect.
    flat = {"w": np.zeros(3, np.float32)}
    ck.save({"w": np.arange(3, dtype=np.float32)}, 2)
    assert ck.restore(flat) == (2, ck.path(2))
    np.testing.assert_array_equal(flat["w"], np.arange(3))
