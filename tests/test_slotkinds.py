"""Slot kinds register themselves; users add theirs (a scipy sparse matrix saved by scipy's own method),
which load only where the reading process registered them; users' own dependency descriptors."""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
import textwrap
import warnings
import zipfile

import numpy as np
import pytest
import scipy.sparse

import ckpt
from ckpt.errors import DependencyError, DependencyWarning, UnknownSlotKindError

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _dump_sparse(m) -> bytes:
    buf = io.BytesIO()
    scipy.sparse.save_npz(buf, m, compressed=False)
    return buf.getvalue()


def _load_sparse(data: bytes):
    return scipy.sparse.load_npz(io.BytesIO(data))


@pytest.fixture
def sparse_kind():
    ckpt.register_serializer(scipy.sparse.csr_matrix, name="scipy.sparse", dump=_dump_sparse, load=_load_sparse,
                             requires=["scipy"])
    yield "scipy.sparse"
    ckpt.unregister_serializer("scipy.sparse")


def _matrix():
    return scipy.sparse.random(40, 30, density=0.1, format="csr", random_state=np.random.default_rng(3),
                               dtype=np.float32)


def _manifest(path):
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("__ckpt__/manifest.json"))


def test_registered_type_is_saved_by_its_own_method_and_loads_back(tmp_path, sparse_kind):
    m = _matrix()
    path = tmp_path / "p.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("main", {"w": np.ones(2)})
        pack.dump("adjacency", m)
    slot = _manifest(path)["slots"]["adjacency"]
    assert slot["serializer"] == "scipy.sparse"
    assert slot["members"] == ["adjacency/data.bin"]
    assert slot["dependencies"]["scipy"]["version"] == scipy.__version__
    assert slot["dependencies"]["scipy"]["requires"].startswith(">=")
    with zipfile.ZipFile(path) as z:  # the member holds exactly what scipy wrote
        assert z.read("adjacency/data.bin") == _dump_sparse(m)
    with ckpt.Pack(path) as pack:
        got = pack.load("adjacency")
        pack.verify()
    assert isinstance(got, scipy.sparse.csr_matrix) and got.dtype == np.float32
    assert (got != m).nnz == 0


def test_registered_kind_in_checkpoint_extras(tmp_path, sparse_kind):
    ck = ckpt.Checkpoint(str(tmp_path), verbose=False)
    m = _matrix()
    ck.save({"w": np.ones(3)}, 5, extras={"graph": m})
    target = {"w": np.zeros(3)}
    extras = {"graph": None}
    ck.restore(target, extras=extras)
    assert (extras["graph"] != m).nnz == 0


_CHILD = textwrap.dedent("""
    import sys, warnings
    import ckpt
    warnings.simplefilter("error")
    try:
        ckpt.Pack(sys.argv[1]).load("adjacency")
    except ckpt.UnknownSlotKindError as e:
        print("REFUSED", e.kind, e.slot, e.file == sys.argv[1], "scipy" in sys.modules)
        print(e)
    with ckpt.Pack(sys.argv[1]) as pack:  # the other slots of the file still load
        print("MAIN", sorted(pack.load("main")))
""")


def test_a_process_that_did_not_register_the_kind_refuses_it_and_imports_nothing(tmp_path, sparse_kind):
    path = tmp_path / "p.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("main", {"w": np.ones(2)})
        pack.dump("adjacency", _matrix())
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, timeout=300,
                         cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "REFUSED scipy.sparse adjacency True False"  # scipy was never imported
    assert "register_serializer" in lines[1] and "'scipy.sparse'" in lines[1]
    assert lines[-1] == "MAIN ['w']"


def test_restore_latest_does_not_call_an_unregistered_kind_damage(tmp_path, sparse_kind):
    ck = ckpt.Checkpoint(str(tmp_path), verbose=False)
    ck.save({"w": np.ones(3)}, 1, extras={"graph": _matrix()})
    ck.save({"w": np.ones(3) * 2}, 2, extras={"graph": _matrix()})
    ckpt.unregister_serializer("scipy.sparse")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no CorruptCheckpointWarning: nothing is skipped
            with pytest.raises(UnknownSlotKindError, match="scipy.sparse") as info:
                ck.restore({"w": np.zeros(3)}, extras={"graph": None})
        assert info.value.file.endswith("0000000002.npz")
    finally:
        ckpt.register_serializer(scipy.sparse.csr_matrix, name="scipy.sparse", dump=_dump_sparse,
                                 load=_load_sparse)


def test_predicates_and_explicit_kinds(tmp_path):
    class Blob:
        def __init__(self, text: str):
            self.text = text

    ckpt.register_serializer(lambda v: isinstance(v, Blob), name="tests.blob", dump=lambda b: b.text.encode(),
                             load=lambda data: Blob(data.decode()))
    ckpt.register_serializer(None, name="tests.upper", dump=lambda s: s.upper().encode(),
                             load=lambda data: data.decode())
    try:
        path = tmp_path / "p.npz"
        with ckpt.Pack(path) as pack:
            pack.dump("b", Blob("hé"))
            pack.dump("plain", "text")  # no user kind claims a str: the built-in choice stays
            pack.dump("u", "shout", serializer="tests.upper")
        kinds = {k: v["serializer"] for k, v in _manifest(path)["slots"].items()}
        assert kinds == {"b": "tests.blob", "plain": "json", "u": "tests.upper"}
        with ckpt.Pack(path) as pack:
            assert pack.load("b").text == "hé" and pack.load("plain") == "text" and pack.load("u") == "SHOUT"
    finally:
        ckpt.unregister_serializer("tests.blob")
        ckpt.unregister_serializer("tests.upper")


@pytest.mark.parametrize("kwargs,error,match", [
    ({"name": "sparse"}, ValueError, "must contain a dot"),
    ({"name": "json"}, ValueError, "must contain a dot"),
    ({"name": "a b.c"}, ValueError, "invalid slot kind name"),
    ({"name": "x.y", "dump": 3}, TypeError, "callables"),
    ({"name": "x.y", "requires": "scipy"}, TypeError, "list of package names"),
])
def test_register_serializer_refuses_bad_arguments(kwargs, error, match):
    args = {"dump": bytes, "load": bytes, **kwargs}
    with pytest.raises(error, match=match):
        ckpt.register_serializer(int, **args)
    assert "x.y" not in ckpt.slotkinds.registered()


def test_a_name_is_registered_once_and_built_ins_stay(sparse_kind):
    with pytest.raises(ValueError, match="already registered"):
        ckpt.register_serializer(list, name="scipy.sparse", dump=bytes, load=bytes)
    ckpt.register_serializer(scipy.sparse.csr_matrix, name="scipy.sparse", dump=_dump_sparse, load=_load_sparse,
                             replace=True)
    with pytest.raises(ValueError, match="built in"):
        ckpt.slotkinds.unregister("pickle")
    with pytest.raises(ValueError, match="already registered"):
        ckpt.slotkinds.register(ckpt.slotkinds.SlotKind("json", bytes, bytes), replace=True)


def test_dump_that_returns_no_bytes_is_refused_before_writing(tmp_path):
    ckpt.register_serializer(complex, name="tests.bad", dump=lambda v: [v.real], load=bytes)
    try:
        path = tmp_path / "p.npz"
        with ckpt.Pack(path) as pack:
            pack.dump("a", 1)
            before = path.read_bytes()
            with pytest.raises(TypeError, match="tests.bad.*must return bytes"):
                pack.dump("c", 1j)
        assert path.read_bytes() == before
    finally:
        ckpt.unregister_serializer("tests.bad")


# -- users' own dependency descriptors -------------------------------------------
def test_user_dependency_descriptors_are_recorded_and_checked(tmp_path):
    path = tmp_path / "p.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("main", {"w": np.ones(2)}, deps={"ckpt-test-nonexistent-lib": "1.2"})
        pack.dump("vocab", {"words": ["a"]}, deps={"vocab-format": {"version": "7", "requires": ""}})
        pack.dump("np", [1, 2], deps={"numpy": {"version": np.__version__, "requires": ">=1"}})
    slots = _manifest(path)["slots"]
    assert slots["main"]["dependencies"]["ckpt-test-nonexistent-lib"] == {"version": "1.2", "requires": ">=1,<2"}
    assert slots["vocab"]["dependencies"]["vocab-format"] == {"version": "7", "requires": ""}
    assert slots["np"]["dependencies"]["numpy"]["requires"] == ">=1"  # the user's descriptor wins
    with ckpt.Pack(path) as pack:
        with pytest.warns(DependencyWarning, match="ckpt-test-nonexistent-lib: recorded 1.2, installed not installed"):
            pack.load("main")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert pack.load("vocab") == {"words": ["a"]}  # informational: nothing to check
            assert pack.load("np") == [1, 2]
        with pytest.raises(DependencyError, match="ckpt-test-nonexistent-lib"):
            pack.load("main", deps="strict")


def test_with_deps_goes_wherever_a_value_goes(tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path), verbose=False)
    ck.save({"w": np.ones(2)}, 1, extras={"tok": ckpt.with_deps({"v": 1}, {"numpy": np.__version__})})
    slot = _manifest(ck.path(1))["slots"]["tok"]
    assert slot["dependencies"]["numpy"]["version"] == np.__version__
    assert ck.load_extras(1, names=["tok"])["tok"] == {"v": 1}


@pytest.mark.parametrize("deps,error", [
    ({"x": 1.2}, TypeError), ({"x": {"version": "1"}, "": "1"}, TypeError), ({"x": {"requires": ">=1"}}, TypeError),
    ({"x": {"version": "1", "requires": "not a spec"}}, ValueError), ({"x": ""}, ValueError),
    ({f"p{i}": "1" for i in range(40)}, ValueError), ({"x": {"version": "1", "extra": "?"}}, TypeError),
])
def test_malformed_user_descriptors_are_refused_before_writing(tmp_path, deps, error):
    path = tmp_path / "p.npz"
    with ckpt.Pack(path) as pack:
        with pytest.raises(error):
            pack.dump("a", 1, deps=deps)
    assert not path.exists()


# -- the layers point down ---------------------------------------------------------
@pytest.mark.parametrize("module", ["_zip", "_npy", "_packfile", "_members", "_slotnames", "manifest"])
def test_the_file_layer_imports_no_slot_kind(module):
    """The file layer knows members and bytes: it imports neither the kinds nor the pickle machinery."""
    with open(os.path.join(ROOT, "ckpt", f"{module}.py")) as f:
        tree = ast.parse(f.read())
    imported = set()
    for node in tree.body:  # module level only: the reader's forwarding methods import lazily
        if isinstance(node, ast.ImportFrom) and node.level > 0:  # ckpt's own modules
            imported |= {node.module or ""} | {a.name for a in node.names}
    assert not imported & {"serializers", "slotkinds", "_pickle_scan", "_module_pickle", "_codec", "collections",
                           "_tagged"}, imported


def test_pickle_is_unpickled_in_one_place():
    """Only serializers.decode_pickle calls the unpickler; nothing else in ckpt reaches _module_pickle.loads."""
    callers = []
    for name in sorted(os.listdir(os.path.join(ROOT, "ckpt"))):
        if name.endswith(".py"):
            with open(os.path.join(ROOT, "ckpt", name)) as f:
                text = f.read()
            if "_module_pickle.loads(" in text or "pickle.loads(" in text.replace("_module_pickle.loads(", ""):
                callers.append(name)
    assert callers == ["serializers.py"]
