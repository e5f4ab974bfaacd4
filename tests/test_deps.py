"""Dependency descriptors recorded per slot, and the warn / strict / ignore paths on a mismatch."""

from __future__ import annotations

import os
import platform
import warnings

import numpy as np
import pytest

import ckpt
from ckpt.errors import DependencyError, DependencyWarning
from helpers import assert_dicts_identical, read_manifest, rewrite_pack

FAKE_NUMPY = "0.9.0"


def _set_dependency(doc, slot, package, requires, version):
    doc["slots"][slot]["dependencies"][package] = {"version": version, "requires": requires}


def doctored(src, dst, *, slots=("main",), package="numpy", requires="<1", version=FAKE_NUMPY):
    """A copy of pack ``src`` whose manifest says ``package`` must satisfy ``requires`` for ``slots``.

    Slot hashes cover members only, so the copy still verifies; zipfile writes the new manifest's CRC.
    """
    def edit(doc):
        for slot in slots:
            _set_dependency(doc, slot, package, requires, version)

    rewrite_pack(src, dst, edit_manifest=edit)
    return dst


@pytest.fixture
def state():
    return {"w": np.arange(6.0).reshape(2, 3), "step": np.array(10, np.int64)}


@pytest.fixture
def honest(tmp_path, state):
    path = tmp_path / "honest.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("main", state)
        pack.dump("cfg", {"lr": 0.1})
    return path


@pytest.fixture
def old_numpy_pack(tmp_path, honest):
    return doctored(honest, tmp_path / "old_numpy.npz")


# -- what is recorded --------------------------------------------------------------
@pytest.mark.parametrize("value", [np.ones(3), {"lr": 0.1}, b"raw", (1, 2)], ids=["arrays", "json", "raw", "pickle"])
def test_every_slot_records_python_numpy_and_ckpt(tmp_path, value):
    path = tmp_path / "p.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("x", value)
        deps = pack.slots_info["x"].dependencies
    assert {"python", "numpy", "ckpt"} <= set(deps)
    for desc in deps.values():
        assert set(desc) == {"version", "requires"}
    assert deps["python"]["version"] == platform.python_version()
    assert deps["numpy"]["version"] == np.__version__
    assert deps["ckpt"]["version"] == ckpt.__version__
    assert read_manifest(path)["slots"]["x"]["dependencies"] == deps


def test_arrays_need_the_same_numpy_major_and_pickles_the_same_minor(tmp_path):
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    path = tmp_path / "p.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("arrays", np.ones(3))
        pack.dump("pickled", np.random.default_rng(0))
        arrays, pickled = pack.slots_info["arrays"].dependencies, pack.slots_info["pickled"].dependencies
    installed = Version(np.__version__)
    next_minor = Version(f"{installed.major}.{installed.minor + 1}.0")
    next_major = Version(f"{installed.major + 1}.0.0")
    assert installed in SpecifierSet(arrays["numpy"]["requires"])
    assert next_minor in SpecifierSet(arrays["numpy"]["requires"])
    assert next_major not in SpecifierSet(arrays["numpy"]["requires"])
    assert installed in SpecifierSet(pickled["numpy"]["requires"])
    assert next_minor not in SpecifierSet(pickled["numpy"]["requires"])


def test_jax_arrays_record_jax_and_jaxlib(tmp_path, jax, jnp):
    path = tmp_path / "p.npz"
    ckpt.save_var_collection(path, {"w": jnp.ones(3)})
    with ckpt.Pack(path) as pack:
        deps = pack.slots_info["main"].dependencies
    assert deps["jax"]["version"] == jax.__version__
    assert set(deps["jaxlib"]) == {"version", "requires"}


def test_a_faithful_file_loads_silently(honest, state):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_dicts_identical(ckpt.load(honest), state)


# -- a recorded requirement the installed numpy does not meet ------------------------
def _one_dependency_warning(record):
    dep = [w for w in record if issubclass(w.category, DependencyWarning)]
    assert len(record) == len(dep) == 1, [str(w.message) for w in record]
    message = str(dep[0].message)
    for word in ("numpy", f"recorded {FAKE_NUMPY}", f"installed {np.__version__}", "<1"):
        assert word in message, (word, message)
    return message


LOADERS = ["Pack.load", "ckpt.load", "load_var_collection"]


def _load(loader, path, **kw):
    if loader == "Pack.load":
        with ckpt.Pack(path, **kw) as pack:
            return pack.load("main")
    if loader == "ckpt.load":
        return ckpt.load(path, **kw)
    target = {"w": np.zeros((2, 3)), "step": np.array(0, np.int64)}
    return ckpt.load_var_collection(path, target, **kw)


@pytest.mark.parametrize("loader", LOADERS)
def test_mismatch_warns_once_and_loads(old_numpy_pack, state, loader):
    with pytest.warns(DependencyWarning) as record:
        value = _load(loader, old_numpy_pack)
    message = _one_dependency_warning(record)
    assert str(old_numpy_pack) in message
    assert_dicts_identical(value, state)


@pytest.mark.parametrize("loader", LOADERS)
def test_strict_raises(old_numpy_pack, loader):
    with pytest.raises(DependencyError) as info:
        _load(loader, old_numpy_pack, deps="strict")
    assert info.value.mismatches == [("numpy", FAKE_NUMPY, np.__version__)]
    assert "numpy" in str(info.value) and str(old_numpy_pack) in str(info.value)


@pytest.mark.parametrize("loader", LOADERS)
def test_ignore_is_silent(old_numpy_pack, state, loader):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        value = _load(loader, old_numpy_pack, deps="ignore")
    assert record == []
    assert_dicts_identical(value, state)


def test_strict_assigns_nothing(old_numpy_pack):
    target = {"w": np.zeros((2, 3)), "step": np.array(0, np.int64)}
    with pytest.raises(DependencyError):
        ckpt.load_var_collection(old_numpy_pack, target, deps="strict")
    assert not target["w"].any() and target["step"] == 0


def test_per_call_deps_overrides_the_pack_default(old_numpy_pack):
    with ckpt.Pack(old_numpy_pack, deps="strict") as pack:
        with pytest.raises(DependencyError):
            pack.load("main")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pack.load("main", deps="ignore")


def test_only_the_slot_that_records_the_mismatch_warns(old_numpy_pack):
    with ckpt.Pack(old_numpy_pack) as pack:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert pack.load("cfg") == {"lr": 0.1}


def test_missing_required_package_is_reported_as_not_installed(tmp_path, honest):
    path = doctored(honest, tmp_path / "needs.npz", package="ckpt-test-no-such-package", requires=">=1", version="1.2")
    with pytest.warns(DependencyWarning) as record:
        ckpt.load(path)
    assert len(record) == 1
    assert "ckpt-test-no-such-package: recorded 1.2, installed not installed" in str(record[0].message)


def test_missing_informational_package_is_ignored(tmp_path, honest, state):
    path = doctored(honest, tmp_path / "info.npz", package="ckpt-test-no-such-package", requires="", version="1.2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_dicts_identical(ckpt.load(path), state)


def test_invalid_deps_mode_is_refused(honest):
    with pytest.raises(ValueError, match="deps"):
        ckpt.load(honest, deps="loud")
    with pytest.raises(ValueError, match="deps"):
        ckpt.Pack(honest, deps="sometimes")


# -- the checkpoint manager --------------------------------------------------------
@pytest.fixture
def old_numpy_checkpoint(tmp_path, state):
    ck = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=2)
    path = ck.save(state, 4, extras={"ema": {"w": state["w"] * 2}, "cfg": {"lr": 0.1}})
    doctored(path, path + ".new", slots=("main", "ema"))
    os.replace(path + ".new", path)
    return tmp_path / "run"


def test_checkpoint_restore_warns_once_for_all_slots(old_numpy_checkpoint, state):
    ck = ckpt.Checkpoint(old_numpy_checkpoint)
    target = {"w": np.zeros((2, 3)), "step": np.array(0, np.int64)}
    extras = {"ema": {"w": np.zeros((2, 3))}, "cfg": None}
    with pytest.warns(DependencyWarning) as record:
        assert ck.restore(target, extras=extras)[0] == 4
    assert len(record) == 1
    message = str(record[0].message)
    assert "slot 'main'" in message and "slot 'ema'" in message
    assert_dicts_identical(target, state)
    assert extras["cfg"] == {"lr": 0.1}


def test_checkpoint_strict_raises_and_assigns_nothing(old_numpy_checkpoint):
    ck = ckpt.Checkpoint(old_numpy_checkpoint, deps="strict")
    target = {"w": np.zeros((2, 3)), "step": np.array(0, np.int64)}
    with pytest.raises(DependencyError) as info:
        ck.restore(target, idx=4)
    assert ("numpy", FAKE_NUMPY, np.__version__) in info.value.mismatches
    assert not target["w"].any()
    with pytest.raises(DependencyError):
        ck.load_extras(4, names=["ema"])
