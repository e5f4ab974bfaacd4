"""Recipes: recording constructor arguments, tagged JSON, stable hashes, and ckpt.build round trips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

import ckpt
from ckpt.errors import (FormatError, MismatchError, RecipeArgumentError, RecipeNotFoundError,
                         UntrustedClassError)

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS)
from recipe_models import plain  # noqa: E402

TRUST = ["recipe_models.*"]


def _run(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter that can import the tests' model package; returns stdout."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]),
                "JAX_PLATFORMS": "cpu", **env}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# -- recording ------------------------------------------------------------------
def test_recorded_binds_arguments_with_defaults_canonically():
    a = plain.Linear(3, 2, seed=5)
    b = plain.Linear(n_out=2, n_in=3, seed=5)  # same call spelled differently
    ra, rb = ckpt.recipe_of(a), ckpt.recipe_of(b)
    assert ra.cls == "recipe_models.plain.Linear"
    assert ra.mro == ("recipe_models.plain.Linear", "builtins.object")
    assert ra.args == ()
    assert ra.kwargs == {"n_in": 3, "n_out": 2, "seed": 5, "dtype": np.dtype("float32"), "scale": 0.1}
    assert ra.hash == rb.hash  # defaults filled in, positional vs keyword makes no difference
    assert ra.id != rb.id and len(ra.id) == 32  # each instance has its own id


def test_subclass_super_init_does_not_overwrite_the_outer_call():
    w = plain.Wide(4, factor=3)
    r = ckpt.recipe_of(w)
    assert r.cls == "recipe_models.plain.Wide"
    assert r.kwargs == {"n": 4, "factor": 3}  # not Linear's (4, 12, seed=7)
    assert r.mro[:2] == ("recipe_models.plain.Wide", "recipe_models.plain.Linear")
    assert r.build().w.shape == (4, 12)


def test_undecorated_subclass_with_own_init_is_not_misrecorded():
    class Sub(plain.Linear):
        def __init__(self):
            super().__init__(2, 2)

    with pytest.raises(RecipeNotFoundError, match="Sub defines its own __init__"):
        ckpt.recipe_of(Sub())


def test_subclass_inheriting_init_is_recorded_as_itself():
    class Same(plain.Linear):
        pass

    r = ckpt.recipe_of(Same(2, 3))
    assert r.cls.endswith("Same") and r.kwargs["n_out"] == 3
    assert isinstance(r.build(), Same)


def test_unrecorded_object_and_recipe_of_for_plain_classes():
    class Free:
        def __init__(self, a, *rest, k=1, **extra):
            self.a = a

    with pytest.raises(RecipeNotFoundError, match="@ckpt.recorded"):
        ckpt.recipe_of(Free(1))
    r = ckpt.Recipe.of(Free, 1, 2, 3, k=4, z=5)
    assert r.args == (1, 2, 3) and r.kwargs == {"k": 4, "z": 5}  # named params before *rest stay positional
    built = r.build()
    assert isinstance(built, Free) and built.a == 1
    with pytest.raises(TypeError, match="Free"):
        ckpt.Recipe.of(Free)  # missing 'a', as the constructor itself would say


def test_a_class_constructed_through_new_only_is_recorded():
    @ckpt.recorded
    class Pair(tuple):
        def __new__(cls, a, b=2):
            return super().__new__(cls, (a, b))

    p = Pair(1)
    assert p == (1, 2)
    r = ckpt.recipe_of(p)
    assert r.kwargs == {"a": 1, "b": 2} and r.build() == (1, 2)


def test_lone_surrogates_are_refused_with_their_path():
    with pytest.raises(RecipeArgumentError, match=r"dict.kwargs\['s'\]: the string .* not valid Unicode"):
        ckpt.Recipe.of(dict, s="a\ud800")
    with pytest.raises(RecipeArgumentError, match="not valid Unicode"):
        ckpt.Recipe.of(dict, d={"\udfff": 1})


def test_tagged_json_round_trips_every_tag():
    r = ckpt.Recipe.of(plain.Stack, [plain.Linear(2, 2)], activation="tanh", shape=(3, (4, 5)))
    other = ckpt.Recipe.of(dict, spec={1: "one", (2, 3): [float("nan"), float("-inf")], "$ckpt": None},
                           scalar=np.float32(0.25), flag=np.bool_(True), dt=np.int8, n=None)
    for recipe in (r, other):
        doc = json.loads(json.dumps(recipe.to_dict(), allow_nan=False))  # pure JSON, no NaN tokens
        back = ckpt.Recipe.from_dict(doc)
        assert back.hash == recipe.hash and back.id == recipe.id
    back = ckpt.Recipe.from_dict(json.loads(json.dumps(other.to_dict())))
    spec = back.kwargs["spec"]
    assert spec[1] == "one" and spec["$ckpt"] is None
    assert np.isnan(spec[(2, 3)][0]) and spec[(2, 3)][1] == -np.inf
    assert type(back.kwargs["scalar"]) is np.float32 and back.kwargs["scalar"] == 0.25
    assert type(back.kwargs["flag"]) is np.bool_ and back.kwargs["dt"] == np.dtype("int8")
    nested = ckpt.Recipe.from_dict(json.loads(json.dumps(r.to_dict()))).kwargs["layers"][0]
    assert isinstance(nested, ckpt.Recipe) and nested.cls == "recipe_models.plain.Linear"
    assert ckpt.Recipe.from_dict(r.to_dict()).kwargs["shape"] == (3, (4, 5))


def test_jax_scalar_types_record_as_dtypes(jnp):
    r = ckpt.Recipe.of(dict, dtype=jnp.bfloat16, other=jnp.float32)
    assert r.to_dict()["kwargs"]["dtype"] == {"$ckpt": "dtype", "v": "bfloat16"}
    assert r.hash == ckpt.Recipe.of(dict, dtype=np.dtype(jnp.bfloat16), other=np.float32).hash


@pytest.mark.parametrize("bad, path", [
    (lambda x: x, "Stack.kwargs['activation']"),
    ({1, 2}, "Stack.kwargs['activation']"),
    ([1, object()], "Stack.kwargs['activation'][1]"),
    ({"ok": {"deep": np.zeros(3)}}, "Stack.kwargs['activation']['ok']['deep']"),
    ({"k": b"bytes"}, "Stack.kwargs['activation']['k']"),
])
def test_unstorable_argument_is_refused_at_save_with_its_path(tmp_path, bad, path):
    s = plain.Stack([], activation=bad)  # constructing works: recording never breaks user code
    ck = ckpt.Checkpoint(str(tmp_path))
    with pytest.raises(RecipeArgumentError) as info:
        ck.save({"w": np.zeros(2)}, idx=1, recipe=s)
    assert info.value.path == path and path in str(info.value)
    assert isinstance(info.value, TypeError) and "never pickled" in str(info.value)
    assert ck.indices() == []  # nothing written


def test_nested_unstorable_argument_names_the_outer_path():
    inner = plain.Stack([], activation=print)
    with pytest.raises(RecipeArgumentError, match=r"Stack.kwargs\['layers'\]\[0\] is a Stack whose own recipe"):
        ckpt.recipe_of(plain.Stack([inner]))


def test_parent_is_lineage_not_identity():
    r = ckpt.recipe_of(plain.Linear(2, 2))
    child = r.with_parent("ab" * 32)
    assert child.parent == "ab" * 32 and child.hash == r.hash and r.parent is None
    assert ckpt.recipe_of(plain.Linear(2, 2), parent="x").parent == "x"
    with pytest.raises(TypeError):
        r.with_parent(123)  # type: ignore[arg-type]


# -- hashes -----------------------------------------------------------------------
HASH_CODE = """
    import numpy as np, ckpt
    from recipe_models import plain
    r = ckpt.Recipe.of(plain.Stack, [plain.Linear(3, 4, seed=1)], activation="relu",
                       shape=(2, {"b": 1, "a": [1.5, None, True]}))
    d = ckpt.Recipe.of(dict, z={"y": 1, "x": 2, "w": {"v": np.float16(1)}}, s=frozenset and "t")
    print(r.hash, d.hash)
"""


def test_hash_is_stable_across_processes_and_hash_seeds():
    seen = {_run(HASH_CODE, PYTHONHASHSEED=seed).strip() for seed in ("0", "1", "4242", "random")}
    assert len(seen) == 1
    local = ckpt.Recipe.of(plain.Stack, [plain.Linear(3, 4, seed=1)], activation="relu",
                           shape=(2, {"a": [1.5, None, True], "b": 1}))  # insertion order differs
    assert seen.pop().split()[0] == local.hash


def test_hash_is_sha256_of_canonical_json_golden():
    r = ckpt.Recipe.of(dict, b=(1, 2), a="x")
    # the one tagged-JSON scheme (FORMAT.md 3.1): a tuple is {"$ckpt": "tuple", "v": [...]}
    import hashlib

    canonical = ('{"args":[],"class":"builtins.dict","kwargs":{"a":"x","b":{"$ckpt":"tuple","v":[1,2]}}}')
    assert r.hash == hashlib.sha256(canonical.encode()).hexdigest()
    assert r.hash == "7ad19372fcde4d75f8ad23156f2c020c5817b754cbbc3495dcfd16e161f8ea15"
    assert r.hash == "%s" % r.to_dict()["hash"]


def test_hash_ignores_ids_parent_and_nested_mro():
    a, b = plain.Stack([plain.Linear(2, 2)]), plain.Stack([plain.Linear(2, 2)])
    ra, rb = ckpt.recipe_of(a), ckpt.recipe_of(b)
    assert ra.id != rb.id and ra.hash == rb.hash
    doc = ra.to_dict()
    doc["kwargs"]["layers"][0]["v"]["mro"] = ["somewhere.else"]
    assert ckpt.Recipe.from_dict(doc).hash == ra.hash
    assert ckpt.recipe_of(plain.Stack([plain.Linear(2, 3)])).hash != ra.hash


# -- stored recipes --------------------------------------------------------------------
def test_save_stores_the_recipe_in_the_manifest_and_old_readers_still_open_it(tmp_path):
    m = plain.Linear(3, 2, seed=1)
    ck = ckpt.Checkpoint(str(tmp_path))
    path = ck.save(m.state(), idx=7, recipe=m, metrics={"loss": 0.5})
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("__ckpt__/manifest.json"))
    stored = manifest["metadata"]["ckpt"]["recipe"]
    assert stored == ckpt.recipe_of(m).to_dict()
    assert manifest["metadata"]["ckpt"]["metrics"] == {"loss": 0.5}
    with np.load(path) as z:  # a plain numpy reader still reads the arrays
        stored_arrays = {str(n): z[str(i)] for i, n in enumerate(z["names"])}
    np.testing.assert_array_equal(stored_arrays["w"], m.w)
    assert ck.metadata(7)["ckpt"]["recipe"]["class"] == "recipe_models.plain.Linear"
    restored = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}
    ck.restore(restored)
    np.testing.assert_array_equal(restored["w"], m.w)


@pytest.mark.parametrize("mutate, match", [
    (lambda r: r.update({"class": 5}), "class is not"),
    (lambda r: r.update({"module": "other"}), "not a prefix"),
    (lambda r: r.update({"version": 99}), "newer than this ckpt"),
    (lambda r: r["kwargs"].update({"x": {"$ckpt": "pickle", "v": "gASV"}}), "unknown or malformed tag"),
    (lambda r: r["kwargs"].update({"x": {"$ckpt": "dtype", "v": "O"}}), "not a plain dtype|dtype"),
    (lambda r: r["kwargs"].update({"x": {"$ckpt": "scalar", "v": ["int8", 1000]}}), "fit"),
    (lambda r: r.update({"mro": "notalist"}), "mro"),
    (lambda r: r["kwargs"].update({"x": {"$ckpt": "dict", "v": [[[1], 2]]}}), "hashable"),
])
def test_malformed_stored_recipes_are_refused_clearly(mutate, match):
    doc = ckpt.recipe_of(plain.Linear(2, 2)).to_dict()
    mutate(doc)
    with pytest.raises(FormatError, match=match):
        ckpt.Recipe.from_dict(doc, "file.npz: recipe")


def test_deeply_nested_stored_recipe_is_refused_not_a_recursion_error():
    value: object = 1
    for _ in range(500):
        value = [value]
    doc = ckpt.recipe_of(plain.Linear(2, 2)).to_dict()
    doc["kwargs"]["x"] = value
    with pytest.raises(FormatError, match="levels deep"):
        ckpt.Recipe.from_dict(doc)


def test_a_constructor_that_changed_keeps_its_own_error_with_context(tmp_path):
    doc = ckpt.recipe_of(plain.Linear(2, 2)).to_dict()
    doc["kwargs"]["renamed_since"] = 1
    del doc["hash"]
    with pytest.raises(TypeError, match="renamed_since") as info:
        ckpt.Recipe.from_dict(doc).build(trusted=TRUST)
    assert any("while building recipe_models.plain.Linear" in n for n in getattr(info.value, "__notes__", [])) \
        or sys.version_info < (3, 11)


def test_a_nested_constructor_error_inside_a_tuple_is_its_own_not_a_format_error():
    doc = ckpt.recipe_of(plain.Stack((plain.Linear(2, 2),))).to_dict()
    assert doc["kwargs"]["layers"]["$ckpt"] == "tuple"
    doc["kwargs"]["layers"]["v"][0]["v"]["kwargs"]["renamed_since"] = 1
    del doc["hash"]
    with pytest.raises(TypeError, match="renamed_since") as info:
        ckpt.Recipe.from_dict(doc).build(trusted=TRUST)
    assert not isinstance(info.value, FormatError)


def test_build_without_recipe_names_the_file(tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path))
    path = ck.save({"w": np.zeros(2)}, idx=1)
    with pytest.raises(RecipeNotFoundError, match="saved without recipe="):
        ckpt.build(path, trusted=TRUST)


# -- trust ---------------------------------------------------------------------------------
REFUSAL_CODE = """
    import sys, ckpt
    from ckpt.errors import UntrustedClassError
    for trusted in (None, False, [], ["other.*"], "recipe_models.*", ["recipe_models.plain.Linear"]):
        try:
            ckpt.build(sys.argv[1] if len(sys.argv) > 1 else {path!r}, trusted=trusted)
        except UntrustedClassError as e:
            assert e.classes, e
            print("refused", e.classes)
        else:
            print("BUILT with", trusted)
    print("imported:", sorted(m for m in sys.modules if m.startswith("recipe_models")))
"""


def test_build_refuses_untrusted_classes_and_imports_nothing(tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path))
    s = plain.Stack([plain.Linear(2, 2)], activation="tanh")
    ck.save({"w": np.zeros(2)}, idx=1, recipe=s)
    out = _run(REFUSAL_CODE.format(path=str(tmp_path)))
    lines = out.strip().splitlines()
    assert lines[:5] == ["refused ['recipe_models.plain.Linear', 'recipe_models.plain.Stack']"] * 5, out
    assert lines[5] == "refused ['recipe_models.plain.Stack']", out  # the nested class alone is not enough
    assert lines[6] == "imported: []", out


def test_trusted_patterns_reuse_the_pickle_allow_list_rules(tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path))
    m = plain.Linear(2, 3, seed=4)
    ck.save(m.state(), idx=1, recipe=m)
    for trusted in (True, ["recipe_models.*"], ["recipe_models.plain.Linear"], ["recipe_models.plain.*"]):
        built = ckpt.build(str(tmp_path), trusted=trusted)
        np.testing.assert_array_equal(built.w, m.w)
    with pytest.raises(UntrustedClassError) as info:
        ckpt.build(str(tmp_path), trusted=["recipe_models.plain.Lin"])
    assert isinstance(info.value, PermissionError) and str(tmp_path) in str(info.value)


@pytest.mark.parametrize("cls, module, match", [
    ("os.system", "os", "not a class|refused|admit"),  # NEVER_ALLOWED: no pattern admits it
    ("subprocess.Popen", "subprocess", "does not admit"),  # a class, but a code-execution primitive
    ("builtins.eval", "builtins", "does not admit"),
    ("recipe_models.plain.np", "recipe_models.plain", "reaches the module numpy"),  # a module, via an attribute
    ("recipe_models.plain.Linear.__init__", "recipe_models.plain", "not a plain importable path"),
    ("recipe_models.plain.Gone", "recipe_models.plain", "has no class"),
    ("recipe_models.absent.Model", "recipe_models.absent", "cannot import"),
])
def test_build_refuses_non_classes_even_when_trusted(tmp_path, cls, module, match):
    doc = ckpt.recipe_of(plain.Linear(2, 2)).to_dict()
    doc.update({"class": cls, "module": module, "mro": [cls]})
    del doc["hash"]
    recipe = ckpt.Recipe.from_dict(doc)
    for trusted in (["*"], True):
        with pytest.raises((UntrustedClassError, RecipeNotFoundError), match=match):
            recipe.build(trusted=trusted)


def test_a_nested_code_execution_class_is_refused_even_with_trusted_true():
    doc = ckpt.recipe_of(plain.Stack([])).to_dict()
    doc["kwargs"]["layers"] = [{"$ckpt": "recipe", "v": {"class": "subprocess.Popen", "module": "subprocess",
                                                   "args": [["touch", "/tmp/ckpt-owned"]], "kwargs": {}}}]
    del doc["hash"]
    with pytest.raises(UntrustedClassError) as info:
        ckpt.Recipe.from_dict(doc).build(trusted=True)
    assert info.value.classes == ["subprocess.Popen"] and not os.path.exists("/tmp/ckpt-owned")


# -- round trips ------------------------------------------------------------------------------
def test_plain_class_round_trip_record_save_build(tmp_path):
    m = plain.Linear(4, 3, seed=1)
    m.w = m.w * 3 + 1  # "trained": differs from an untrained twin
    m.b = m.b + 0.5
    ck = ckpt.Checkpoint(str(tmp_path))
    ck.save(m.state(), idx=100, recipe=m)
    twin = ckpt.recipe_of(m).build()
    assert not np.array_equal(twin.w, m.w)  # build() alone is untrained
    built = ckpt.build(str(tmp_path), trusted=TRUST)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    assert type(built) is plain.Linear and built is not m
    np.testing.assert_array_equal(built(x), m(x))
    assert built.config == {"n_in": 4}
    assert ckpt.recipe_of(built) == ckpt.recipe_of(m)  # the saved model itself: same id, parent, hash
    assert ckpt.recipe_of(twin).id != ckpt.recipe_of(m).id and ckpt.recipe_of(twin).hash == ckpt.recipe_of(m).hash
    fine_tuned = ckpt.recipe_of(built).with_parent(ckpt.find(str(tmp_path))[0].digest)
    ck.save(built.state(), idx=200, recipe=fine_tuned)
    assert ckpt.find(str(tmp_path), ckpt.Selector(where="parent != None"))[0].idx == 200


def test_plain_class_build_is_strict(tmp_path):
    m = plain.Linear(4, 3)
    ck = ckpt.Checkpoint(str(tmp_path))
    ck.save({"w": m.w}, idx=1, recipe=m)  # "b" missing from the file
    with pytest.raises(MismatchError, match="b"):
        ckpt.build(str(tmp_path), trusted=TRUST)
    ck.save({"w": m.w[:2], "b": m.b}, idx=2, recipe=m)
    with pytest.raises(MismatchError):
        ckpt.build(str(tmp_path), trusted=TRUST)


def test_objax_round_trip(tmp_path, objax, randomize):
    from recipe_models import objax_models

    net = objax_models.MLP(5, 16, 3, depth=2)
    randomize(net.vars(), seed=3)
    ck = ckpt.Checkpoint(str(tmp_path))
    ck.save(net.vars(), idx=10, recipe=net)
    built = ckpt.build(ck.path(10), trusted=TRUST)
    x = np.random.default_rng(1).standard_normal((7, 5)).astype(np.float32)
    assert type(built) is objax_models.MLP
    np.testing.assert_array_equal(np.asarray(built(x)), np.asarray(net(x)))
    assert ckpt.recipe_of(built).hash == ckpt.recipe_of(net).hash


def test_flax_linen_round_trip(tmp_path):
    pytest.importorskip("flax")
    import jax
    import jax.numpy as jnp
    from recipe_models import flax_models

    model = flax_models.MLP(hidden=16, n_out=3, dtype=jnp.float32)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 5))
    variables = model.init(jax.random.PRNGKey(0), x)
    assert "parent" not in ckpt.recipe_of(model).kwargs
    ck = ckpt.Checkpoint(str(tmp_path))
    ck.save(variables, idx=3, recipe=model, metrics={"loss": 0.2})
    bound = ckpt.build(str(tmp_path), trusted=TRUST)
    np.testing.assert_array_equal(np.asarray(bound(x)), np.asarray(model.apply(variables, x)))
    module, params = bound.unbind()
    assert type(module) is flax_models.MLP and module.hidden == 16


def test_equinox_round_trip(tmp_path):
    eqx = pytest.importorskip("equinox")
    import jax
    from recipe_models import eqx_models

    model = eqx_models.MLP(5, 16, 3, seed=2)
    recipe = ckpt.recipe_of(model)  # before training: tree maps make new instances
    model = jax.tree_util.tree_map(lambda a: a * 1.5 + 0.25 if eqx.is_array(a) else a, model)
    ck = ckpt.Checkpoint(str(tmp_path))
    ck.save(eqx.filter(model, eqx.is_array), idx=1, recipe=recipe)
    built = ckpt.build(str(tmp_path), trusted=TRUST)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
    assert type(built) is eqx_models.MLP and built.width == 16
    np.testing.assert_array_equal(np.asarray(jax.vmap(built)(x)), np.asarray(jax.vmap(model)(x)))


def test_recipes_share_no_state_with_the_documents_they_come_from_or_give_out():
    r = ckpt.recipe_of(plain.Stack([plain.Linear(2, 2)], shape=(1, 2)))
    before = json.dumps(r.to_dict(), sort_keys=True)
    doc = r.to_dict()
    doc["kwargs"]["layers"][0]["v"]["kwargs"]["n_in"] = 99
    doc["kwargs"]["activation"] = "changed"
    assert json.dumps(r.to_dict(), sort_keys=True) == before
    source = r.to_dict()
    back = ckpt.Recipe.from_dict(source)
    source["kwargs"]["activation"] = "changed"
    assert back.kwargs["activation"] == "tanh" and back.hash == r.hash


# -- one tagged-JSON scheme (docs/FORMAT.md 3.1) -----------------------------------------------------
def _tag_objects(doc):
    if type(doc) is list:
        for v in doc:
            yield from _tag_objects(v)
    elif type(doc) is dict:
        if "$ckpt" in doc:
            yield doc
        for v in doc.values():
            yield from _tag_objects(v)


def test_recipe_arguments_are_the_tagged_json_of_everyday_values_plus_recipe_kinds():
    from ckpt import _tagged

    inner = ckpt.Recipe.of(dict, a=(1,))
    value = {1: "a", "$ckpt": 2, (3, 4): [float("-inf")]}
    r = ckpt.Recipe.of(dict, t=(1, (2,)), m=value, x=float("nan"), dt=np.float32, s=np.int8(3),
                       f=np.float32("inf"), inner=inner)
    kw = json.loads(json.dumps(r.to_dict(), allow_nan=False))["kwargs"]
    assert all(set(t) == {"$ckpt", "v"} for t in _tag_objects(kw))  # no other tag syntax anywhere
    assert kw["t"] == _tagged.encode((1, (2,))) == {"$ckpt": "tuple", "v": [1, {"$ckpt": "tuple", "v": [2]}]}
    assert kw["m"] == _tagged.encode(value) and kw["x"] == {"$ckpt": "float", "v": "nan"}
    assert _tagged.decode(kw["t"]) == (1, (2,)) and _tagged.decode(kw["m"]) == {**value}
    assert kw["dt"] == {"$ckpt": "dtype", "v": "float32"} and kw["s"] == {"$ckpt": "scalar", "v": ["int8", 3]}
    assert kw["f"] == {"$ckpt": "scalar", "v": ["float32", {"$ckpt": "float", "v": "inf"}]}
    assert kw["inner"] == {"$ckpt": "recipe", "v": {"class": "builtins.dict", "module": "builtins",
                                                    "mro": ["builtins.dict", "builtins.object"], "args": [],
                                                    "kwargs": {"a": {"$ckpt": "tuple", "v": [1]}}}}
    back = ckpt.Recipe.from_dict(json.loads(json.dumps(r.to_dict()))).kwargs
    assert type(back["f"]) is np.float32 and back["f"] == np.inf and type(back["s"]) is np.int8
    assert back["inner"].kwargs == {"a": (1,)} and back["m"] == value
    with pytest.raises(FormatError, match="unknown or malformed"):
        _tagged.decode(kw["dt"])  # recipe kinds are not everyday values: a json slot refuses them


@pytest.mark.parametrize("bad, match", [
    ({"$ckpt": "set", "v": [1]}, "set"),  # base kinds recipes never write (a set's order follows the hash seed)
    ({"$ckpt": "frozenset", "v": []}, "frozenset"),
    ({"$ckpt": "bytes", "v": "AA=="}, "bytes"),
    ({"$ckpt": "complex", "v": [1.0, 2.0]}, "complex"),
    ({"$ckpt": "dtype"}, "exactly the keys"),
    ({"$ckpt": "tuple", "v": [1], "items": [1]}, "exactly the keys"),
    ({"$ckpt": "dtype", "v": 5}, "malformed"),
    ({"$ckpt": "scalar", "v": ["float32"]}, "malformed"),
    ({"$ckpt": "scalar", "v": ["float32", {"$ckpt": "scalar", "v": ["float32", 1.0]}]}, "malformed tagged"),
    ({"$ckpt": "scalar", "v": ["float32", float("nan")]}, "non-finite"),
    ({"$ckpt": "scalar", "v": ["float32", {"$ckpt": "tuple", "v": [1]}]}, "holds"),
    ({"$ckpt": "recipe", "v": [1]}, "malformed"),
    ({"$ckpt": "recipe", "v": {"class": 5}}, "class is not"),
    ({"$ckpt": "float", "v": "NaN"}, "malformed"),
])
def test_a_stored_recipe_refuses_tags_it_does_not_hold_and_names_where(bad, match):
    doc = ckpt.recipe_of(plain.Linear(2, 2)).to_dict()
    doc["kwargs"]["x"] = [0, {"k": bad}]
    with pytest.raises(FormatError, match=match) as info:
        ckpt.Recipe.from_dict(doc, "file.npz: recipe")
    assert "kwargs['x'][1]['k']" in str(info.value) or "class is not" in str(info.value)


def test_a_nested_record_without_module_builds_like_a_top_level_one():
    doc = ckpt.recipe_of(plain.Stack([])).to_dict()
    doc["kwargs"]["layers"] = [{"$ckpt": "recipe", "v": {"class": "recipe_models.plain.Linear", "args": [2, 3],
                                                         "kwargs": {}}}]  # module and mro are optional
    del doc["hash"]
    built = ckpt.Recipe.from_dict(doc).build(trusted=["recipe_models.*"])
    assert type(built.layers[0]) is plain.Linear and built.layers[0].w.shape == (2, 3)


def test_save_refuses_deep_or_odd_keyed_arguments_with_their_path():
    deep: object = 1
    for _ in range(70):
        deep = [deep]
    with pytest.raises(RecipeArgumentError, match="levels deep") as info:
        ckpt.Recipe.of(dict, x=deep)
    assert info.value.path.startswith("dict.kwargs['x'][0][0]")
    with pytest.raises(RecipeArgumentError, match="key of type bytes") as info:
        ckpt.Recipe.of(dict, m={1: {b"k": 1}})
    assert info.value.path == "dict.kwargs['m'][1]"
    with pytest.raises(RecipeArgumentError, match="not valid Unicode") as info:
        ckpt.Recipe.of(dict, m={(1, "\ud800"): 1})
    assert info.value.path.startswith("dict.kwargs['m']<key ")
    with pytest.raises(RecipeArgumentError, match="is a complex") as info:
        ckpt.Recipe.of(dict, t=(1, 2j))
    assert info.value.path == "dict.kwargs['t'][1]"


# -- property: tagged JSON round trips -----------------------------------------------------------------
from hypothesis import given, settings, strategies as st  # noqa: E402

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                     st.text(max_size=8), st.sampled_from([np.dtype("float32"), np.dtype("int8"), np.dtype("bool")]),
                     st.builds(np.float32, st.floats(-1e3, 1e3, width=32)), st.builds(np.int16, st.integers(-9, 9)))
_keys = st.one_of(st.text(max_size=5), st.integers(-5, 5), st.just("$ckpt"), st.tuples(st.integers(0, 3)))
_values = st.recursive(_scalars, lambda sub: st.one_of(st.lists(sub, max_size=3), st.tuples(sub, sub),
                                                        st.dictionaries(_keys, sub, max_size=3)), max_leaves=12)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and (a == b or (np.isnan(a) and np.isnan(b)))
    return a == b


@settings(max_examples=200, deadline=None)
@given(_values)
def test_tagged_json_round_trips_exactly_property(value):
    r = ckpt.Recipe.of(dict, v=value)
    text = json.dumps(r.to_dict(), allow_nan=False)  # always standard JSON
    back = ckpt.Recipe.from_dict(json.loads(text))
    assert _same(back.kwargs["v"], value)
    assert back.hash == r.hash == ckpt.Recipe.of(dict, v=back.kwargs["v"]).hash
