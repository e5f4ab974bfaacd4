"""objax compatibility both ways, with real objax models, optimizers, TrainRefs and shared variables."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

objax = pytest.importorskip("objax")
jnp = pytest.importorskip("jax.numpy")

import ckpt  # noqa: E402
from ckpt.errors import MismatchError  # noqa: E402
from helpers import assert_arrays_identical, assert_dicts_identical, snapshot  # noqa: E402

pytestmark = pytest.mark.objax

CASES = [
    "linear",
    "conv_bn",
    "conv_bn+adam",
    "conv_bn+momentum",
    "shared_seq",
    "shared_seq+adam",
    "two_parents",
    "two_parents+momentum",
]


@pytest.fixture
def build(make_model):
    """build(case) -> (model, optimizer or None, VarCollection of both)."""
    def build(case):
        kind, _, opt_name = case.partition("+")
        model = make_model(kind)
        opt = None
        vc = model.vars()
        if opt_name == "adam":
            opt = objax.optimizer.Adam(model.vars())
        elif opt_name == "momentum":
            opt = objax.optimizer.Momentum(model.vars())
        if opt is not None:
            vc = vc + opt.vars()
        return model, opt, vc

    return build


def distinct_vars(vc):
    """(first name, variable) per distinct variable, TrainRefs resolved: what objax stores."""
    seen, out = set(), []
    for name, v in vc.items():
        if isinstance(v, objax.TrainRef):
            v = v.ref
        if id(v) not in seen:
            seen.add(id(v))
            out.append((name, v))
    return out


def assert_vc_equal(actual_vc, expected_vc):
    assert list(actual_vc.keys()) == list(expected_vc.keys())
    for v, w in zip(actual_vc.values(), expected_vc.values(), strict=True):
        assert_arrays_identical(np.asarray(v.value), np.asarray(w.value))


@pytest.mark.parametrize("case", CASES)
def test_ckpt_roundtrip_restores_every_variable(tmp_path, build, randomize, case):
    _, _, vc = build(case)
    randomize(vc, seed=1)
    path = tmp_path / "model.npz"
    ckpt.save_var_collection(path, vc)

    _, _, fresh = build(case)
    randomize(fresh, seed=2)
    result = ckpt.load_var_collection(path, fresh)

    assert result is fresh
    assert_vc_equal(fresh, vc)


@pytest.mark.parametrize("case", CASES)
def test_ckpt_file_has_objax_layout_readable_by_numpy(tmp_path, build, randomize, case):
    _, _, vc = build(case)
    randomize(vc, seed=3)
    path = tmp_path / "model.npz"
    ckpt.save_var_collection(path, vc)

    expected = distinct_vars(vc)
    with np.load(path) as z:
        names = [str(n) for n in z["names"]]
        assert names == [name for name, _ in expected]
        for i, (_, var) in enumerate(expected):
            assert_arrays_identical(z[str(i)], np.asarray(var.value))
        array_members = [f for f in z.files if f != "names" and not f.startswith("__ckpt__/")]
    assert array_members == [str(i) for i in range(len(expected))]


@pytest.mark.parametrize("case", CASES)
def test_ckpt_names_and_values_match_objax_own_file(tmp_path, build, randomize, case):
    _, _, vc = build(case)
    randomize(vc, seed=4)
    ours, theirs = tmp_path / "ckpt.npz", tmp_path / "objax.npz"
    ckpt.save_var_collection(ours, vc)
    objax.io.save_var_collection(str(theirs), vc)
    with np.load(ours) as a, np.load(theirs) as b:
        assert list(a["names"]) == list(b["names"])
        for i in range(len(b["names"])):
            assert_arrays_identical(a[str(i)], b[str(i)])


@pytest.mark.parametrize("case", CASES)
def test_objax_loads_a_ckpt_file(tmp_path, build, randomize, case):
    _, _, vc = build(case)
    randomize(vc, seed=5)
    path = tmp_path / "model.npz"
    ckpt.save_var_collection(path, vc)

    _, _, fresh = build(case)
    objax.io.load_var_collection(str(path), fresh)
    assert_vc_equal(fresh, vc)


@pytest.mark.parametrize("case", CASES)
def test_ckpt_loads_an_objax_file_written_with_data_descriptors(tmp_path, build, randomize, case):
    _, _, vc = build(case)
    randomize(vc, seed=6)
    path = tmp_path / "objax.npz"
    objax.io.save_var_collection(str(path), vc)
    with zipfile.ZipFile(path) as zf:
        # objax disables seek(), so zipfile streams with data descriptors (flag bit 3).
        assert all(info.flag_bits & 0x08 for info in zf.infolist())

    _, _, fresh = build(case)
    randomize(fresh, seed=7)
    ckpt.load_var_collection(path, fresh)
    assert_vc_equal(fresh, vc)


def test_ckpt_loads_an_objax_file_object(build, randomize):
    _, _, vc = build("conv_bn+adam")
    randomize(vc, seed=8)
    buf = io.BytesIO()
    objax.io.save_var_collection(buf, vc)
    buf.seek(0)
    _, _, fresh = build("conv_bn+adam")
    ckpt.load_var_collection(buf, fresh)
    assert not buf.closed
    assert_vc_equal(fresh, vc)


def test_objax_loads_a_ckpt_file_object(build, randomize):
    _, _, vc = build("shared_seq+adam")
    randomize(vc, seed=9)
    buf = io.BytesIO()
    ckpt.save_var_collection(buf, vc)
    buf.seek(0)
    _, _, fresh = build("shared_seq+adam")
    objax.io.load_var_collection(buf, fresh)
    assert_vc_equal(fresh, vc)


def test_batchnorm_running_stats_are_restored(tmp_path, make_model, randomize):
    model = make_model("conv_bn")
    randomize(model.vars(), seed=10)
    bn = model[1]
    stats = {"mean": np.asarray(bn.running_mean.value), "var": np.asarray(bn.running_var.value)}
    assert stats["mean"].any() and stats["var"].any()
    path = tmp_path / "bn.npz"
    ckpt.save_var_collection(path, model.vars())

    fresh = make_model("conv_bn")
    assert not np.asarray(fresh[1].running_mean.value).any()
    ckpt.load_var_collection(path, fresh.vars())
    assert_arrays_identical(np.asarray(fresh[1].running_mean.value), stats["mean"])
    assert_arrays_identical(np.asarray(fresh[1].running_var.value), stats["var"])


@pytest.mark.parametrize("kind", ["shared_seq", "two_parents"])
def test_shared_variable_is_stored_once(tmp_path, make_model, randomize, kind):
    model = make_model(kind)
    randomize(model.vars(), seed=11)
    vc = model.vars()
    assert len(vc) > len(distinct_vars(vc)), "the model must really share a variable"
    path = tmp_path / "shared.npz"
    ckpt.save_var_collection(path, vc)
    with ckpt.Pack(path) as pack:
        arrays = pack.load("main")
    assert list(arrays) == [name for name, _ in distinct_vars(vc)]

    fresh = make_model(kind)
    ckpt.load_var_collection(path, fresh.vars())
    assert_vc_equal(fresh.vars(), vc)


def test_trainref_restores_the_model_variable_it_points_to(tmp_path, make_model, randomize):
    """An optimizer's vars() alone (TrainRefs + state) restores the model weights behind the refs."""
    model = make_model("conv_bn")
    opt = objax.optimizer.Adam(model.vars())
    randomize(model.vars() + opt.vars(), seed=12)
    path = tmp_path / "opt.npz"
    ckpt.save_var_collection(path, opt.vars())
    with np.load(path) as z:
        assert any("train_vars" in str(n) for n in z["names"])

    model2 = make_model("conv_bn")
    opt2 = objax.optimizer.Adam(model2.vars())
    ckpt.load_var_collection(path, opt2.vars())
    # TrainRefs resolved to model2's trainable variables, which now hold model's values.
    for v, w in zip(model2.vars().subset(objax.TrainVar).values(),
                    model.vars().subset(objax.TrainVar).values(), strict=True):
        assert_arrays_identical(np.asarray(v.value), np.asarray(w.value))
    assert_vc_equal(opt2.vars(), opt.vars())


def test_unshared_file_into_shared_model_reports_unused(tmp_path, objax):
    lin_a, lin_b = objax.nn.Linear(3, 3), objax.nn.Linear(3, 3)
    unshared = objax.nn.Sequential([lin_a, objax.functional.relu, lin_b])
    path = tmp_path / "unshared.npz"
    ckpt.save_var_collection(path, unshared.vars())

    shared_lin = objax.nn.Linear(3, 3)
    shared = objax.nn.Sequential([shared_lin, objax.functional.relu, shared_lin])
    before = snapshot(shared.vars())
    with pytest.raises(MismatchError) as info:
        ckpt.load_var_collection(path, shared.vars())
    assert sorted(info.value.unused) == ["(Sequential)[2](Linear).b", "(Sequential)[2](Linear).w"]
    assert info.value.missing == []
    assert_dicts_identical(snapshot(shared.vars()), before)


def test_shared_file_into_unshared_model(tmp_path, make_model, randomize, objax):
    model = make_model("shared_seq")
    randomize(model.vars(), seed=13)
    path = tmp_path / "shared.npz"
    ckpt.save_var_collection(path, model.vars())

    unshared = objax.nn.Sequential([objax.nn.Linear(3, 3), objax.functional.relu, objax.nn.Linear(3, 3)])
    before = snapshot(unshared.vars())
    with pytest.raises(MismatchError) as info:
        ckpt.load_var_collection(path, unshared.vars())
    assert sorted(info.value.missing) == ["(Sequential)[2](Linear).b", "(Sequential)[2](Linear).w"]
    assert_dicts_identical(snapshot(unshared.vars()), before)

    ckpt.load_var_collection(path, unshared.vars(), strict=False)
    after = snapshot(unshared.vars())
    assert_arrays_identical(after["(Sequential)[0](Linear).w"], np.asarray(model[0].w.value))
    assert_arrays_identical(after["(Sequential)[2](Linear).w"], before["(Sequential)[2](Linear).w"])


def test_mismatched_objax_model_is_untouched(tmp_path, make_model, randomize):
    model = make_model("conv_bn")
    randomize(model.vars(), seed=14)
    path = tmp_path / "conv.npz"
    ckpt.save_var_collection(path, model.vars())

    other = objax.nn.Sequential([
        objax.nn.Conv2D(3, 8, 3),            # different channel count: shape mismatch
        objax.nn.BatchNorm2D(8),
        objax.functional.relu,
        objax.nn.Linear(8, 2),
    ])
    before = snapshot(other.vars())
    with pytest.raises(MismatchError) as info:
        ckpt.load_var_collection(path, other.vars())
    mismatched = {name for name, _, _ in info.value.mismatched}
    assert "(Sequential)[0](Conv2D).w" in mismatched
    assert "(Sequential)[1](BatchNorm2D).running_mean" in mismatched
    assert info.value.missing == [] and info.value.unused == []
    assert_dicts_identical(snapshot(other.vars()), before)


@pytest.mark.parametrize("renamer_kind", ["lambda", "dict", "objax.util.Renamer"])
def test_renamer_with_objax_names(tmp_path, make_model, randomize, renamer_kind):
    lin = make_model("linear")
    randomize(lin.vars(), seed=15)
    path = tmp_path / "linear.npz"
    ckpt.save_var_collection(path, lin.vars())

    wrapped = objax.nn.Sequential([objax.nn.Linear(4, 3)])
    if renamer_kind == "lambda":
        renamer = lambda n: n.replace("(Linear)", "(Sequential)[0](Linear)")  # noqa: E731
    elif renamer_kind == "dict":
        renamer = {"(Linear).w": "(Sequential)[0](Linear).w", "(Linear).b": "(Sequential)[0](Linear).b"}
    else:
        renamer = objax.util.Renamer({"(Linear)": "(Sequential)[0](Linear)"})
    ckpt.load_var_collection(path, wrapped.vars(), renamer=renamer)
    assert_arrays_identical(np.asarray(wrapped[0].w.value), np.asarray(lin.w.value))
    assert_arrays_identical(np.asarray(wrapped[0].b.value), np.asarray(lin.b.value))


def test_objax_collection_records_framework_versions(tmp_path, make_model):
    path = tmp_path / "m.npz"
    ckpt.save_var_collection(path, make_model("linear").vars())
    with ckpt.Pack(path) as pack:
        deps = pack.slots_info["main"].dependencies
    for name in ("python", "numpy", "ckpt", "jax", "jaxlib", "objax"):
        assert set(deps[name]) == {"version", "requires"}, name
    assert deps["objax"]["version"] == objax.__version__
