"""Whole-module pickles: ``Checkpoint.save(..., module=net)`` / ``Pack.dump`` of objax objects.

What is checked, on real objax modules written to real files:

* modules plain ``pickle`` cannot store (lambdas, closures, partials, jax functions,
  nested modules, optimizer state, BatchNorm statistics, ``objax.Jit``) come back
  computing exactly the same outputs, with variables of their own;
* an unpicklable attribute is reported by its path, and the failed save changes nothing;
* arrays are stored once, shared with the arrays slot, not a second time in the pickle;
* the module slot records the packages its pickle imports, bound to their minor version;
* nothing is unpickled without ``trusted=True`` or an allow-list covering every global.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import pickle
import threading

import numpy as np
import pytest

objax = pytest.importorskip("objax")

import ckpt
from ckpt.errors import UntrustedPickleError

pytestmark = pytest.mark.objax


# -- modules under test (module level: pickled by reference, as a user's package would be) ---------
class WithFn(objax.Module):
    """A Linear layer followed by an arbitrary callable attribute."""

    def __init__(self, fn, nin=4, nout=3):
        self.lin = objax.nn.Linear(nin, nout)
        self.fn = fn

    def __call__(self, x):
        return self.fn(self.lin(x))


def make_closure(scale):
    offset = scale / 2  # a local variable captured by the returned function

    def f(y):
        return y * scale + offset

    return f


class Nested(objax.Module):
    """A module holding a ModuleList of Sequentials, and a head."""

    def __init__(self):
        self.blocks = objax.ModuleList(
            [objax.nn.Sequential([objax.nn.Linear(4, 4), objax.functional.relu]) for _ in range(2)])
        self.head = objax.nn.Linear(4, 2)

    def __call__(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class Trainer(objax.Module):
    """A model and its Adam optimizer, whose TrainRefs point at the model's variables."""

    def __init__(self):
        self.model = objax.nn.Sequential([objax.nn.Linear(4, 8), objax.functional.relu, objax.nn.Linear(8, 2)])
        self.opt = objax.optimizer.Adam(self.model.vars())

    def train(self, x, y, steps=3, lr=0.01):
        def loss(x, y):
            return ((self.model(x) - y) ** 2).mean()

        gv = objax.GradValues(loss, self.model.vars())
        for _ in range(steps):
            g, _ = gv(x, y)
            self.opt(lr, g)


class Holder(objax.Module):
    """Holds an unpicklable value somewhere below a Linear layer."""

    def __init__(self, value):
        self.lin = objax.nn.Linear(2, 2)
        self.inner = objax.Module()
        self.inner.lock = value


def _inputs(n, shape_tail, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape_tail)).astype(np.float32)


def _docs_example():
    # The example from objax's documentation of objax.nn.Sequential.
    return objax.nn.Sequential([objax.nn.Linear(768, 1), objax.functional.sigmoid])


def _case(kind):
    """(module, input, forward(module, x)) for one kind of module."""
    x4 = _inputs(8, (4,))

    def call(m, x):
        return np.asarray(m(x))

    if kind == "docs_sequential_sigmoid":
        return _docs_example(), _inputs(4, (768,)), call
    if kind == "lambda":
        return WithFn(lambda y: y * 2 - 1), x4, call
    if kind == "closure":
        return WithFn(make_closure(3.5)), x4, call
    if kind == "partial":
        return WithFn(functools.partial(objax.functional.leaky_relu, negative_slope=0.3)), x4, call
    if kind == "nested_module_list":
        return Nested(), x4, call
    if kind == "adam_after_training":
        t = Trainer()
        t.train(x4, _inputs(8, (2,), seed=1))
        return t, x4, lambda m, x: np.asarray(m.model(x))
    if kind == "batchnorm_after_training":
        m = objax.nn.Sequential([objax.nn.Linear(4, 6), objax.nn.BatchNorm0D(6), objax.functional.relu])
        m(x4 * 3 + 1, training=True)
        assert np.any(np.asarray(m[1].running_mean.value) != 0), "training forward must move the running mean"
        return m, x4, lambda m, x: np.asarray(m(x, training=False))
    if kind == "objax_jit":
        m = objax.Jit(objax.nn.Sequential([objax.nn.Linear(4, 3), objax.functional.tanh]))
        return m, x4, call
    raise ValueError(kind)


KINDS = ["docs_sequential_sigmoid", "lambda", "closure", "partial", "nested_module_list", "adam_after_training",
         "batchnorm_after_training", "objax_jit"]


def _save_and_load(tmp_path, module, via):
    """Store ``module`` with a real file and read it back trusted; returns (loaded, path)."""
    if via == "checkpoint":
        ck = ckpt.Checkpoint(str(tmp_path / "run"), keep_ckpts=2)
        path = ck.save(module.vars(), 7, module=module)
        return ck.load_module(trusted=True), path
    path = str(tmp_path / "module.npz")
    with ckpt.Pack(path) as pack:
        pack.dump("net", module)
        assert pack.slots_info["net"].serializer == "pickle"
    with ckpt.Pack(path) as pack:
        return pack.load("net", trusted=True), path


def _pack_load(path, slot, **kwargs):
    with ckpt.Pack(path) as pack:
        return pack.load(slot, **kwargs)


def _train_vars(module):
    return [v for v in module.vars().values() if isinstance(v, objax.TrainVar)]


# -- A: whole modules round-trip -------------------------------------------------------------------
def test_plain_pickle_fails_on_the_docs_example():
    """The docs example is a real case for the fallback: the stdlib pickler cannot store it."""
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pickle.dumps(_docs_example())


@pytest.mark.parametrize("via", ["checkpoint", "pack"])
@pytest.mark.parametrize("kind", KINDS)
def test_module_roundtrips_with_same_outputs_and_own_variables(tmp_path, kind, via):
    module, x, forward = _case(kind)
    expected = forward(module, x)

    loaded, _ = _save_and_load(tmp_path, module, via)

    assert type(loaded) is type(module)
    np.testing.assert_array_equal(forward(loaded, x), expected)
    # Same variable names, same values, but new objects.
    orig_vars, new_vars = module.vars(), loaded.vars()
    assert list(new_vars.keys()) == list(orig_vars.keys())
    for (name, a), b in zip(orig_vars.items(), new_vars.values()):
        assert b is not a, name
        np.testing.assert_array_equal(np.asarray(b.value), np.asarray(a.value), err_msg=name)
    assert not {id(v) for v in new_vars.values()} & {id(v) for v in orig_vars.values()}

    # Changing the original does not change the loaded copy.
    var = _train_vars(module)[0]
    var.assign(var.value + 0.5, check=False)
    changed = forward(module, x)
    assert not np.array_equal(changed, expected), "the change must be visible on the original"
    after = forward(loaded, x)
    np.testing.assert_array_equal(after, expected)
    assert not np.array_equal(after, changed)


def test_adam_state_roundtrips_and_still_drives_the_loaded_model(tmp_path):
    x, y = _inputs(8, (4,)), _inputs(8, (2,), seed=1)
    trainer = Trainer()
    trainer.train(x, y, steps=3)
    moments = [np.asarray(v.value) for v in list(trainer.opt.m) + list(trainer.opt.v)]
    assert all(np.any(m != 0) for m in moments), "moments must be non-zero after training"
    assert int(trainer.opt.step.value) == 3

    loaded, _ = _save_and_load(tmp_path, trainer, "checkpoint")

    assert int(loaded.opt.step.value) == 3
    for a, b in zip(list(trainer.opt.m) + list(trainer.opt.v), list(loaded.opt.m) + list(loaded.opt.v)):
        assert b is not a
        np.testing.assert_array_equal(np.asarray(b.value), np.asarray(a.value))
    # The optimizer's TrainRefs point at the loaded model's own variables (sharing kept inside the pickle).
    model_vars = _train_vars(loaded.model)
    assert len(loaded.opt.train_vars) == len(model_vars)
    for ref, var in zip(loaded.opt.train_vars, model_vars):
        assert ref.ref is var
    # Training both by one more identical step gives identical parameters.
    trainer.train(x, y, steps=1)
    loaded.train(x, y, steps=1)
    for a, b in zip(_train_vars(trainer.model), _train_vars(loaded.model)):
        np.testing.assert_array_equal(np.asarray(b.value), np.asarray(a.value))
    np.testing.assert_array_equal(np.asarray(loaded.model(x)), np.asarray(trainer.model(x)))


def test_bare_adam_optimizer_roundtrips_with_its_referenced_variables(tmp_path):
    x, y = _inputs(8, (4,)), _inputs(8, (2,), seed=1)
    trainer = Trainer()
    trainer.train(x, y, steps=2)
    opt = trainer.opt
    ck = ckpt.Checkpoint(str(tmp_path / "run"), keep_ckpts=2)
    ck.save(opt.vars(), 1, module=opt)
    # objax's Adam keeps a lambda (its step counter's reduce), which only cloudpickle can store by value.
    with pytest.raises(UntrustedPickleError) as info:
        ck.load_module(trusted=["objax.*", "jax.*"])
    assert info.value.globals and all(g.startswith("cloudpickle.") for g in info.value.globals)
    loaded = ck.load_module(trusted=True)

    assert type(loaded) is objax.optimizer.Adam
    assert list(loaded.vars().keys()) == list(opt.vars().keys())
    for (name, a), b in zip(opt.vars().items(), loaded.vars().values()):
        assert b is not a, name
        np.testing.assert_array_equal(np.asarray(b.value), np.asarray(a.value), err_msg=name)
    # The TrainRefs came back pointing at copies of the model's variables, not at the originals.
    model_vars = _train_vars(trainer.model)
    for ref, original in zip(loaded.train_vars, model_vars):
        assert ref.ref is not original
        np.testing.assert_array_equal(np.asarray(ref.value), np.asarray(original.value))


def test_batchnorm_running_stats_are_those_after_training(tmp_path):
    module, _, _ = _case("batchnorm_after_training")
    bn = module[1]
    loaded, _ = _save_and_load(tmp_path, module, "pack")
    np.testing.assert_array_equal(np.asarray(loaded[1].running_mean.value), np.asarray(bn.running_mean.value))
    np.testing.assert_array_equal(np.asarray(loaded[1].running_var.value), np.asarray(bn.running_var.value))
    assert np.any(np.asarray(loaded[1].running_mean.value) != 0)


def test_jit_keeps_its_variable_collection_bound_to_the_loaded_module(tmp_path):
    module, x, forward = _case("objax_jit")
    loaded, _ = _save_and_load(tmp_path, module, "pack")
    assert isinstance(loaded, objax.Jit)
    inner_vars = list(loaded.__wrapped__.vars().values())
    jit_vars = list(loaded.vc.values())
    assert len(jit_vars) == len(inner_vars) > 0
    for a, b in zip(jit_vars, inner_vars):
        assert a is b
    # A change to the loaded module's variable is seen by the loaded Jit (and not by the original).
    before = forward(loaded, x)
    var = _train_vars(loaded.__wrapped__)[0]
    var.assign(var.value * 2 + 1, check=False)
    assert not np.array_equal(forward(loaded, x), before)
    np.testing.assert_array_equal(forward(module, x), before)


# -- A: unpicklable objects ------------------------------------------------------------------------
@pytest.mark.parametrize("value, reason", [
    pytest.param(threading.Lock(), "lock", id="threading_lock"),
    pytest.param((i for i in range(3)), "generator", id="generator"),
])
def test_unpicklable_attribute_is_named_and_save_changes_nothing(tmp_path, value, reason):
    good = objax.nn.Linear(2, 2)
    ck = ckpt.Checkpoint(str(tmp_path / "run"), keep_ckpts=3)
    first = ck.save(good.vars(), 1, module=good)
    with open(first, "rb") as f:
        first_bytes = f.read()
    listing = sorted(os.listdir(ck.directory))

    bad = Holder(value)
    with pytest.raises(TypeError) as info:
        ck.save(bad.vars(), 2, module=bad)
    message = str(info.value)
    assert "Holder.inner.lock" in message, message
    assert reason in message, message

    assert sorted(os.listdir(ck.directory)) == listing, "no new file and no temp file may remain"
    assert not [n for n in os.listdir(ck.directory) if n.endswith(".tmp")]
    assert ck.indices() == [1]
    with open(first, "rb") as f:
        assert f.read() == first_bytes
    restored = ck.load_module(trusted=True)
    np.testing.assert_array_equal(np.asarray(restored.w.value), np.asarray(good.w.value))


def test_unpicklable_attribute_in_pack_dump_leaves_the_pack_as_it_was(tmp_path):
    path = str(tmp_path / "p.npz")
    with ckpt.Pack(path) as pack:
        pack.dump("config", {"lr": 0.1})
    with open(path, "rb") as f:
        before = f.read()
    with ckpt.Pack(path) as pack:
        with pytest.raises(TypeError, match=r"\.inner\.lock"):
            pack.dump("net", Holder(threading.Lock()))
        assert list(pack) == ["config"]
    with open(path, "rb") as f:
        assert f.read() == before
    assert sorted(os.listdir(tmp_path)) == ["p.npz"]


# -- A: arrays stored once -------------------------------------------------------------------------
def test_module_weights_are_stored_once(tmp_path):
    net = objax.nn.Linear(2500, 2500)  # 25 MB of float32 weights
    weight_bytes = sum(np.asarray(v.value).nbytes for v in net.vars().values())
    assert weight_bytes >= 25_000_000

    plain = ckpt.Checkpoint(str(tmp_path / "plain"), keep_ckpts=1).save(net.vars(), 1)
    with_module = ckpt.Checkpoint(str(tmp_path / "mod"), keep_ckpts=1).save(net.vars(), 1, module=net)

    plain_size, module_size = os.path.getsize(plain), os.path.getsize(with_module)
    assert plain_size >= weight_bytes
    assert module_size < 1.1 * plain_size, (module_size, plain_size)

    report = ckpt.inspect(with_module)
    main_members = report["slots"]["main"]["members"]
    module_members = report["slots"]["module"]["members"]
    assert module_members[0].endswith(".pkl")
    array_members = module_members[1:]
    assert len(array_members) == len(net.vars()) == 2
    assert set(array_members) <= set(main_members) - {"names.npy"}
    assert all(m.endswith(".npy") and "/" not in m for m in array_members), array_members
    # The pickle member itself holds structure only: far smaller than the weights.
    assert report["slots"]["module"]["size"] - report["slots"]["main"]["size"] < 1_000_000

    loaded = ckpt.Checkpoint(str(tmp_path / "mod"), keep_ckpts=1).load_module(trusted=True)
    np.testing.assert_array_equal(np.asarray(loaded.w.value), np.asarray(net.w.value))


def test_pack_module_slot_shares_members_with_an_arrays_slot(tmp_path):
    net = Nested()
    path = str(tmp_path / "p.npz")
    with ckpt.Pack(path) as pack:
        pack.dump("weights", net.vars())
        pack.dump("net", net)
        weights, module = pack.slots_info["weights"], pack.slots_info["net"]
    assert module.members[0].endswith("data.pkl")
    assert set(module.members[1:]) <= set(weights.members)


# -- A: dependency descriptors ---------------------------------------------------------------------
def _has_distribution(package):
    try:
        importlib.metadata.version(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _next_minor(version):
    from packaging.version import Version

    v = Version(version)
    return f"{v.major}.{v.minor + 1}.0", f"{v.major}.{v.minor}.9999"


@pytest.mark.parametrize("kind", ["docs_sequential_sigmoid", "lambda", "adam_after_training"])
def test_module_slot_depends_on_every_imported_package_at_its_minor_version(tmp_path, kind):
    from packaging.specifiers import SpecifierSet

    module, _, _ = _case(kind)
    path = str(tmp_path / "p.npz")
    with ckpt.Pack(path) as pack:
        pack.dump("net", module)
    with ckpt.Pack(path) as pack:
        deps = pack.slots_info["net"].dependencies
    report = ckpt.inspect(path)
    globals_ = report["slots"]["net"]["globals"]
    assert report["slots"]["net"]["dependencies"] == deps

    imported = {g.split(".", 1)[0] for g in globals_} - {"builtins", "copyreg"}
    assert "objax" in imported
    if kind == "docs_sequential_sigmoid":
        assert "jax" in imported  # jax.nn.sigmoid
    if kind == "lambda":
        assert "cloudpickle" in imported
    distributed = {p for p in imported if _has_distribution(p)}
    assert __name__ not in distributed  # this test file is imported by reference but is no distribution
    for package in distributed | {"numpy", "objax"}:
        assert package in deps, (package, deps)
        desc = deps[package]
        installed = importlib.metadata.version(package)
        assert desc["version"] == installed
        spec = SpecifierSet(desc["requires"])
        next_minor, same_minor = _next_minor(installed)
        assert installed in spec and same_minor in spec, (package, desc)
        assert next_minor not in spec, f"{package} must be bound to its minor version: {desc}"


# -- B: refusal unless trusted ---------------------------------------------------------------------
@pytest.fixture
def docs_checkpoint(tmp_path):
    net = _docs_example()
    ck = ckpt.Checkpoint(str(tmp_path / "run"), keep_ckpts=2)
    path = ck.save(net.vars(), 3, module=net)
    return ck, path, net


def _untrusted_calls(ck, path):
    return {
        "load_module": lambda **kw: ck.load_module(**kw),
        "load_module_idx": lambda **kw: ck.load_module(3, **kw),
        "load_extras": lambda **kw: ck.load_extras(names=["module"], **kw),
        "pack_load": lambda **kw: _pack_load(path, "module", **kw),
    }


@pytest.mark.parametrize("call", ["load_module", "load_module_idx", "load_extras", "pack_load"])
@pytest.mark.parametrize("trusted", [pytest.param({}, id="default"), pytest.param({"trusted": False}, id="False"),
                                     pytest.param({"trusted": None}, id="None"),
                                     pytest.param({"trusted": "objax.*"}, id="bare_string")])
def test_module_is_not_unpickled_unless_trusted(docs_checkpoint, call, trusted):
    ck, path, _ = docs_checkpoint
    with pytest.raises(UntrustedPickleError) as info:
        _untrusted_calls(ck, path)[call](**trusted)
    err = info.value
    assert isinstance(err, pickle.UnpicklingError)
    assert isinstance(err, ckpt.CkptError)
    assert "objax.nn.layers.Linear" in err.globals
    assert "objax.nn.layers.Sequential" in err.globals
    assert any(g.startswith("jax.") and g.endswith("sigmoid") for g in err.globals), err.globals
    for g in err.globals:
        assert g in str(err)
    assert err.slot == "module"
    assert err.file == path


def test_refusal_lists_the_same_globals_as_inspect(docs_checkpoint):
    ck, path, _ = docs_checkpoint
    with pytest.raises(UntrustedPickleError) as info:
        ck.load_module()
    assert info.value.globals == ckpt.inspect(path)["slots"]["module"]["globals"]


def test_allow_list_of_objax_and_jax_loads_the_docs_example(docs_checkpoint):
    ck, path, net = docs_checkpoint
    x = _inputs(4, (768,))
    loaded = ck.load_module(trusted=["objax.*", "jax.*"])
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(net(x)))
    loaded = _pack_load(path, "module", trusted=("objax.*", "jax.*"))
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(net(x)))


def test_allow_list_missing_jax_is_refused_and_names_the_jax_global(docs_checkpoint):
    ck, path, _ = docs_checkpoint
    for load in (lambda: ck.load_module(trusted=["objax.*"]),
                 lambda: _pack_load(path, "module", trusted=["objax.*"])):
        with pytest.raises(UntrustedPickleError) as info:
            load()
        refused = info.value.globals
        assert refused, "the refusal must name what is missing"
        assert all(g.startswith("jax.") for g in refused), refused
        assert any(g.endswith(".sigmoid") for g in refused), refused
        assert refused[0] in str(info.value)
        assert "objax.nn.layers.Linear" not in refused


def test_allow_list_of_exact_names(docs_checkpoint):
    ck, path, net = docs_checkpoint
    globals_ = ckpt.inspect(path)["slots"]["module"]["globals"]
    exact = [g for g in globals_ if g != "ckpt._module_pickle.set_state"]
    x = _inputs(4, (768,))
    loaded = ck.load_module(trusted=exact)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(net(x)))

    missing = "objax.nn.layers.Linear"
    with pytest.raises(UntrustedPickleError) as info:
        ck.load_module(trusted=[g for g in exact if g != missing])
    assert info.value.globals == [missing]
    # A pattern is not a prefix: "objax.nn" does not allow "objax.nn.layers.Linear".
    with pytest.raises(UntrustedPickleError):
        ck.load_module(trusted=["objax.nn", "objax.variable.*", "jax.*"])


def test_user_class_and_closure_need_their_modules_in_the_allow_list(tmp_path):
    module = WithFn(make_closure(2.0))
    path = str(tmp_path / "p.npz")
    with ckpt.Pack(path) as pack:
        pack.dump("net", module)
    globals_ = ckpt.inspect(path)["slots"]["net"]["globals"]
    assert f"{__name__}.WithFn" in globals_  # an importable class is stored by reference
    assert any(g.startswith("cloudpickle.") for g in globals_)  # a local function is stored by value

    with pytest.raises(UntrustedPickleError) as info:
        _pack_load(path, "net", trusted=["objax.*", "jax.*"])
    assert f"{__name__}.WithFn" in info.value.globals
    assert not [g for g in info.value.globals if g.startswith("objax.")]
    with pytest.raises(UntrustedPickleError) as info:
        _pack_load(path, "net", trusted=["objax.*", f"{__name__}.*"])
    assert info.value.globals and all(g.startswith("cloudpickle.") for g in info.value.globals)

    # A function stored by value is code: no allow-list admits cloudpickle's rebuilders, only trust does.
    with pytest.raises(UntrustedPickleError, match="only trusted=True"):
        _pack_load(path, "net", trusted=["objax.*", "cloudpickle.*", f"{__name__}.*"])
    loaded = _pack_load(path, "net", trusted=True)
    x = _inputs(3, (4,))
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(module(x)))
