"""save_var_collection / load_var_collection with dicts of numpy or JAX arrays and JAX pytrees."""

from __future__ import annotations

import collections
import io

import numpy as np
import pytest

import ckpt
from ckpt.errors import MismatchError
from helpers import assert_arrays_identical, assert_dicts_identical, snapshot


def zeros_like(d):
    return {k: np.zeros_like(v) for k, v in d.items()}


# -- dicts of numpy arrays -------------------------------------------------
def test_dict_of_numpy_is_restored_in_place(tmp_path, arrays):
    path = tmp_path / "vars.npz"
    ckpt.save_var_collection(path, arrays)

    target = zeros_like(arrays)
    objects = {k: id(v) for k, v in target.items()}
    result = ckpt.load_var_collection(path, target)

    assert result is target
    assert {k: id(v) for k, v in target.items()} == objects, "arrays must be filled in place, not replaced"
    assert_dicts_identical(target, arrays)


def test_str_path_and_pathlike_give_the_same_file(tmp_path, arrays):
    ckpt.save_var_collection(str(tmp_path / "a.npz"), arrays)
    ckpt.save_var_collection(tmp_path / "b.npz", arrays)
    for name in ("a.npz", "b.npz"):
        out = ckpt.load(str(tmp_path / name))
        assert_dicts_identical(out, arrays)


@pytest.mark.parametrize("kind", ["bytesio", "open_w+b", "open_wb_then_rb"])
def test_file_objects_are_left_open(tmp_path, arrays, kind):
    path = tmp_path / "vars.npz"
    target = zeros_like(arrays)
    if kind == "bytesio":
        f = io.BytesIO()
        ckpt.save_var_collection(f, arrays)
        assert not f.closed
        f.seek(0)
        ckpt.load_var_collection(f, target)
        assert not f.closed
    elif kind == "open_w+b":
        with open(path, "w+b") as f:
            ckpt.save_var_collection(f, arrays)
            assert not f.closed
            f.seek(0)
            ckpt.load_var_collection(f, target)
            assert not f.closed
    else:
        with open(path, "wb") as f:
            ckpt.save_var_collection(f, arrays)
            assert not f.closed
            assert f.tell() == path.stat().st_size > 0  # written and flushed, handle still open
        with open(path, "rb") as f:
            ckpt.load_var_collection(f, target)
            assert not f.closed
            f.seek(0)
            assert f.read(4) == b"PK\x03\x04"  # the handle is still usable
    assert_dicts_identical(target, arrays)


def test_file_object_at_an_offset(arrays):
    """Like numpy and objax, the file is read from the object's current position."""
    f = io.BytesIO()
    f.write(b"preamble")
    ckpt.save_var_collection(f, arrays)
    f.seek(len(b"preamble"))
    target = zeros_like(arrays)
    ckpt.load_var_collection(f, target)
    assert_dicts_identical(target, arrays)
    assert f.getvalue().startswith(b"preamble")


def test_save_refuses_values_that_are_not_collections(tmp_path):
    for bad in ("a string", 5, {"lr": 0.1}, [1, 2, 3], None):
        with pytest.raises(TypeError, match="variable collection"):
            ckpt.save_var_collection(tmp_path / "bad.npz", bad)
    assert list(tmp_path.iterdir()) == [], "a refused save must not leave a file behind"


def test_load_into_a_non_arrays_slot_is_refused(tmp_path, arrays):
    path = tmp_path / "config.npz"
    ckpt.dump({"lr": 0.1}, path)
    target = zeros_like(arrays)
    with pytest.raises(TypeError, match="json"):
        ckpt.load_var_collection(path, target)
    assert all(not v.any() for v in target.values())


def test_metadata_is_stored_with_the_collection(tmp_path, arrays):
    path = tmp_path / "vars.npz"
    ckpt.save_var_collection(path, arrays, metadata={"epoch": 7, "note": "warm start"})
    with ckpt.Pack(path) as pack:
        assert pack.manifest_info.metadata == {"epoch": 7, "note": "warm start"}


# -- mismatches --------------------------------------------------------------
def _mismatching_target(arrays):
    target = zeros_like(arrays)
    del target["embed"]                                   # on disk, unused by the target
    target["extra/bias"] = np.zeros(2, np.float32)        # missing from the file
    target["dense/w"] = np.zeros((3, 4), np.float32)      # shape differs
    target["scale"] = np.zeros((), np.float32)            # dtype differs (file has float64)
    return target


def test_mismatch_lists_everything_and_assigns_nothing(tmp_path, arrays):
    path = tmp_path / "vars.npz"
    ckpt.save_var_collection(path, arrays)
    target = _mismatching_target(arrays)
    before = snapshot(target)

    with pytest.raises(MismatchError) as info:
        ckpt.load_var_collection(path, target)
    err = info.value

    assert isinstance(err, ValueError)
    assert err.missing == ["extra/bias"]
    assert err.unused == ["embed"]
    assert sorted(name for name, _, _ in err.mismatched) == ["dense/w", "scale"]
    by_name = {name: (exp, found) for name, exp, found in err.mismatched}
    assert "[3, 4]" in by_name["dense/w"][0] and "[4, 3]" in by_name["dense/w"][1]
    assert "float32" in by_name["scale"][0] and "float64" in by_name["scale"][1]
    message = str(err)
    for name in ("extra/bias", "embed", "dense/w", "scale", str(path)):
        assert name in message
    # "dense/b" and "mask" matched, but nothing may be assigned before the whole plan is checked.
    assert_dicts_identical(target, before)


@pytest.mark.parametrize("problem", ["missing", "unused", "shape", "dtype"])
def test_each_single_problem_is_a_mismatch(tmp_path, arrays, problem):
    path = tmp_path / "vars.npz"
    ckpt.save_var_collection(path, arrays)
    target = zeros_like(arrays)
    if problem == "missing":
        target["new"] = np.zeros(1)
    elif problem == "unused":
        del target["mask"]
    elif problem == "shape":
        target["embed"] = np.zeros((2, 5), np.int64)
    else:
        target["embed"] = np.zeros((5, 2), np.int32)
    before = snapshot(target)
    with pytest.raises(MismatchError) as info:
        ckpt.load_var_collection(path, target)
    err = info.value
    assert bool(err.missing) == (problem == "missing")
    assert bool(err.unused) == (problem == "unused")
    assert bool(err.mismatched) == (problem in ("shape", "dtype"))
    assert_dicts_identical(target, before)


def test_strict_false_restores_the_intersection(tmp_path, arrays):
    path = tmp_path / "vars.npz"
    ckpt.save_var_collection(path, arrays)
    target = _mismatching_target(arrays)
    ckpt.load_var_collection(path, target, strict=False)

    assert_arrays_identical(target["dense/b"], arrays["dense/b"])
    assert_arrays_identical(target["mask"], arrays["mask"])
    # Names that did not fit keep their old values.
    assert not target["extra/bias"].any()
    assert not target["dense/w"].any() and target["dense/w"].shape == (3, 4)
    assert target["scale"].dtype == np.float32 and target["scale"] == 0


@pytest.mark.parametrize("renamer_kind", ["callable", "dict"])
def test_renamer_maps_file_names_to_target_names(tmp_path, arrays, renamer_kind):
    path = tmp_path / "vars.npz"
    ckpt.save_var_collection(path, arrays)
    target = {("model/" + k): np.zeros_like(v) for k, v in arrays.items()}
    if renamer_kind == "callable":
        renamer = lambda name: "model/" + name  # noqa: E731
    else:
        renamer = {k: "model/" + k for k in arrays}
    ckpt.load_var_collection(path, target, renamer=renamer)
    for k, v in arrays.items():
        assert_arrays_identical(target["model/" + k], v)


def test_partial_dict_renamer_keeps_other_names(tmp_path, arrays):
    path = tmp_path / "vars.npz"
    ckpt.save_var_collection(path, arrays)
    target = zeros_like(arrays)
    target["weights"] = target.pop("dense/w")
    ckpt.load_var_collection(path, target, renamer={"dense/w": "weights"})
    assert_arrays_identical(target["weights"], arrays["dense/w"])
    assert_arrays_identical(target["embed"], arrays["embed"])


def test_without_renamer_the_renamed_target_is_a_mismatch(tmp_path, arrays):
    path = tmp_path / "vars.npz"
    ckpt.save_var_collection(path, arrays)
    target = {("model/" + k): np.zeros_like(v) for k, v in arrays.items()}
    with pytest.raises(MismatchError) as info:
        ckpt.load_var_collection(path, target)
    assert sorted(info.value.missing) == sorted(target)
    assert sorted(info.value.unused) == sorted(arrays)


# -- JAX arrays and pytrees ---------------------------------------------------
def test_dict_of_jax_arrays_is_updated_in_place(tmp_path, jax, jnp):
    original = {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3), "step": jnp.asarray(7, jnp.int32)}
    path = tmp_path / "jax.npz"
    ckpt.save_var_collection(path, original)

    target = {k: jnp.zeros_like(v) for k, v in original.items()}
    result = ckpt.load_var_collection(path, target)
    assert result is target
    for k in original:
        assert isinstance(target[k], jax.Array)
        assert_arrays_identical(np.asarray(target[k]), np.asarray(original[k]))


Params = collections.namedtuple("Params", ["kernel", "bias"])


@pytest.fixture
def pytree(jnp):
    return {
        "params": {
            "dense": {"kernel": jnp.arange(6.0, dtype=jnp.float32).reshape(3, 2), "bias": jnp.ones(2)},
            "blocks": [Params(jnp.full((2, 2), 3.0), jnp.zeros(2)), Params(jnp.eye(2), jnp.arange(2.0))],
        },
        "step": jnp.asarray(11, jnp.int32),
        "pair": (jnp.asarray([1, 2], jnp.int8), jnp.asarray([True, False])),
    }


EXPECTED_TREE_NAMES = [
    "params/dense/kernel", "params/dense/bias",
    "params/blocks/0/kernel", "params/blocks/0/bias", "params/blocks/1/kernel", "params/blocks/1/bias",
    "step", "pair/0", "pair/1",
]


def test_pytree_names_come_from_key_paths(tmp_path, pytree):
    path = tmp_path / "tree.npz"
    ckpt.save_var_collection(path, pytree)
    with np.load(path) as z:
        names = [str(n) for n in z["names"]]
    assert sorted(names) == sorted(EXPECTED_TREE_NAMES)
    assert "params/dense/kernel" in names


def test_pytree_restore_returns_a_new_tree_of_the_same_structure(tmp_path, jax, jnp, pytree):
    path = tmp_path / "tree.npz"
    ckpt.save_var_collection(path, pytree)
    template = jax.tree.map(jnp.zeros_like, pytree)

    restored = ckpt.load_var_collection(path, template)

    assert jax.tree.structure(restored) == jax.tree.structure(pytree)
    assert isinstance(restored["params"]["blocks"][0], Params)
    assert isinstance(restored["pair"], tuple)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(pytree), strict=True):
        assert isinstance(got, jax.Array)
        assert_arrays_identical(np.asarray(got), np.asarray(want))
    # The template is immutable: it still holds zeros.
    assert all(not np.asarray(leaf).any() for leaf in jax.tree.leaves(template))


def test_pytree_mismatch_names_the_key_path(tmp_path, jax, jnp, pytree):
    path = tmp_path / "tree.npz"
    ckpt.save_var_collection(path, pytree)
    template = jax.tree.map(jnp.zeros_like, pytree)
    template["params"]["dense"]["kernel"] = jnp.zeros((2, 3))
    with pytest.raises(MismatchError) as info:
        ckpt.load_var_collection(path, template)
    assert [m[0] for m in info.value.mismatched] == ["params/dense/kernel"]


def test_nested_dict_of_numpy_without_jax_types(tmp_path, rng):
    tree = {"params": {"dense": {"kernel": rng.standard_normal((3, 2)), "bias": np.zeros(2)}},
            "layers": [np.arange(3), np.arange(4.0)]}
    path = tmp_path / "tree.npz"
    ckpt.save_var_collection(path, tree)
    with np.load(path) as z:
        assert [str(n) for n in z["names"]] == ["params/dense/kernel", "params/dense/bias", "layers/0", "layers/1"]
    template = {"params": {"dense": {"kernel": np.zeros((3, 2)), "bias": np.ones(2)}},
                "layers": [np.zeros(3, np.int64), np.zeros(4)]}
    restored = ckpt.load_var_collection(path, template)
    assert_arrays_identical(restored["params"]["dense"]["kernel"], tree["params"]["dense"]["kernel"])
    assert_arrays_identical(restored["params"]["dense"]["bias"], tree["params"]["dense"]["bias"])
    assert_arrays_identical(restored["layers"][1], tree["layers"][1])
    assert isinstance(restored["layers"], list)
