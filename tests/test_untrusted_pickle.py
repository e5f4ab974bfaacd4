"""Hostile files: pickles are never run unless the caller trusts them, and not even then
when the file's hashes, dependencies or format are wrong.

Every payload here is live: a control test shows that the standard ``pickle.loads``
runs it (it creates a sentinel file). The attacker controls the whole file, so the
payloads are placed in consistent packs (members, sizes, sha256s and slot digests all
recomputed, written with the standard library's zipfile) and the recorded
``info.globals`` of the slot is left saying the pickle imports nothing.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shlex
import struct
import subprocess
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from helpers import content_digest, rehash

import ckpt
from ckpt.errors import (
    ChecksumError,
    CkptError,
    DependencyError,
    FormatError,
    NotAPackError,
    UntrustedPickleError,
)

MANIFEST = "__ckpt__/manifest.json"
HARMLESS = {"note": "a harmless pickled value", "pair": (1, 2), "pad": "x" * 400}


# -- building hostile files ------------------------------------------------------------------------
def rewrite_pack(src, dst, *, replace=None, edit_manifest=None, update_hashes=True):
    """Rewrite the pack ``src`` to ``dst`` with zipfile, replacing member contents.

    With ``update_hashes`` the manifest is made consistent again (member size and
    digest, slot digest and size), as an attacker who controls the whole file would;
    without it the manifest is left as it was (a file damaged or tampered after writing).
    """
    with zipfile.ZipFile(src) as zin:
        contents = {i.filename: zin.read(i.filename) for i in zin.infolist()}
    doc = json.loads(contents.pop(MANIFEST))
    for name, data in (replace or {}).items():
        assert name in contents, (name, sorted(contents))
        contents[name] = data
    if update_hashes:
        rehash(doc, replace or {})
    if edit_manifest is not None:
        edit_manifest(doc)
    tmp = str(dst) + ".building"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zout:
        for name, data in contents.items():
            zout.writestr(name, data)
        zout.writestr(MANIFEST, json.dumps(doc))
    os.replace(tmp, dst)


def read_manifest(path):
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read(MANIFEST))


def pickle_member(path, slot):
    members = read_manifest(path)["slots"][slot]["members"]
    assert members[0].endswith("data.pkl"), members
    return members[0]


# -- hand-assembled pickle opcodes -----------------------------------------------------------------
def u(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) < 256:
        return pickle.SHORT_BINUNICODE + bytes([len(b)]) + b
    return pickle.BINUNICODE + struct.pack("<I", len(b)) + b


def stack_global(module: str, name: str) -> bytes:
    return u(module) + u(name) + pickle.STACK_GLOBAL


def call(fn: bytes, *args: bytes) -> bytes:
    return fn + pickle.MARK + b"".join(args) + pickle.TUPLE + pickle.REDUCE


def proto4(body: bytes, stop: bool = True) -> bytes:
    return pickle.PROTO + b"\x04" + body + (pickle.STOP if stop else b"")


def touch_cmd(sentinel) -> str:
    return "touch " + shlex.quote(os.fspath(sentinel))


class Touch:
    """Pickles (with the real pickler) to a call of os.system, which pickle names posix.system."""

    def __init__(self, sentinel):
        self.cmd = touch_cmd(sentinel)

    def __reduce__(self):
        return (os.system, (self.cmd,))


def _proto0_os_system(sentinel):
    cmd = touch_cmd(sentinel)
    assert "'" not in cmd and "\\" not in cmd
    return b"cos\nsystem\n(S'" + cmd.encode() + b"'\ntR."


def _os_system_body(sentinel):
    return call(stack_global("os", "system"), u(touch_cmd(sentinel)))


@dataclass
class Payload:
    build: Callable[[Any], bytes]
    #: each entry: names of which at least one must be among the refused globals
    names: list[tuple[str, ...]] = field(default_factory=list)
    #: "untrusted": refused by trust (UntrustedPickleError); "format": not a valid pickle stream
    error: str = "untrusted"
    #: the payload starts a process that finishes later
    is_async: bool = False


OS_SYSTEM = ("os.system", "posix.system")

PAYLOADS = {
    "proto0_GLOBAL_REDUCE_os_system": Payload(_proto0_os_system, [OS_SYSTEM]),
    "proto4_STACK_GLOBAL_os_system": Payload(lambda s: proto4(_os_system_body(s)), [OS_SYSTEM]),
    "proto0_INST_os_system": Payload(
        lambda s: b"(V" + touch_cmd(s).encode() + b"\nios\nsystem\n.", [OS_SYSTEM]),
    "builtins_eval": Payload(
        lambda s: proto4(call(stack_global("builtins", "eval"), u(f"open({os.fspath(s)!r}, 'w').close()"))),
        [("builtins.eval",)]),
    "getattr_import_chain": Payload(
        lambda s: proto4(call(
            call(stack_global("builtins", "getattr"), call(stack_global("builtins", "__import__"), u("os")),
                 u("system")),
            u(touch_cmd(s)))),
        [("builtins.getattr",), ("builtins.__import__",)]),
    "importlib_import_module": Payload(
        lambda s: proto4(call(
            call(stack_global("operator", "methodcaller"), u("system"), u(touch_cmd(s))),
            call(stack_global("importlib", "import_module"), u("os")))),
        [("importlib.import_module",), ("operator.methodcaller",)]),
    "subprocess_Popen": Payload(
        lambda s: proto4(call(stack_global("subprocess", "Popen"),
                              pickle.EMPTY_LIST + pickle.MARK + u("touch") + u(os.fspath(s)) + pickle.APPENDS)),
        [("subprocess.Popen",)], is_async=True),
    "reduce_class_real_pickler_proto5": Payload(lambda s: pickle.dumps(Touch(s), protocol=5), [OS_SYSTEM]),
    "reduce_class_real_pickler_proto2": Payload(lambda s: pickle.dumps(Touch(s), protocol=2), [OS_SYSTEM]),
    "memoized_module_name": Payload(
        lambda s: proto4(u("os") + pickle.MEMOIZE + pickle.POP + pickle.BINGET + b"\x00" + u("system")
                         + pickle.STACK_GLOBAL + u(touch_cmd(s)) + pickle.TUPLE1 + pickle.REDUCE),
        [OS_SYSTEM]),
    "dynamic_STACK_GLOBAL_operands": Payload(
        # The real unpickler sees ('os', 'system') once "junk" is popped; so does the scan, which
        # shadows the stack exactly.
        lambda s: proto4(u("os") + u("system") + u("junk") + pickle.POP + pickle.STACK_GLOBAL
                         + u(touch_cmd(s)) + pickle.TUPLE1 + pickle.REDUCE),
        [OS_SYSTEM]),
    "STOP_then_garbage_tail": Payload(
        lambda s: proto4(_os_system_body(s)) + b"\xff\xfe not a pickle \x00" * 4, [OS_SYSTEM]),
    "corrupt_tail_without_STOP": Payload(
        # The real unpickler runs os.system, then fails on the garbage.
        lambda s: proto4(_os_system_body(s), stop=False) + b"\xff\xfe garbage", error="format"),
}


def run_control(payload: Payload, sentinel) -> None:
    """Unpickle with the standard library, as a careless loader would."""
    try:
        result = pickle.loads(payload.build(sentinel))
    except Exception:
        if payload.error != "format":
            raise
        result = None
    if isinstance(result, subprocess.Popen):
        result.wait(timeout=30)


def assert_not_run(sentinel, payload: Payload | None = None) -> None:
    if payload is not None and payload.is_async:
        time.sleep(0.05)  # a started process would have touched the file by now
    assert not os.path.exists(sentinel), "the payload ran"


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_control_the_payload_runs_under_plain_pickle(tmp_path, name):
    sentinel = tmp_path / "control"
    run_control(PAYLOADS[name], sentinel)
    assert sentinel.exists()


# -- poisoned files --------------------------------------------------------------------------------
@dataclass
class Poisoned:
    pack: str  # a pack whose default slot is the payload
    checkpoint: ckpt.Checkpoint  # checkpoint 1 with the payload in its module slot
    checkpoint_file: str
    weights: np.ndarray


def poison(tmp_path, data: bytes) -> Poisoned:
    pack = str(tmp_path / "model.npz")
    with ckpt.Pack(pack) as p:
        p.dump("main", HARMLESS, serializer="pickle")
    rewrite_pack(pack, pack, replace={pickle_member(pack, "main"): data})

    weights = np.arange(3, dtype=np.float32) + 1
    ck = ckpt.Checkpoint(str(tmp_path / "run"), keep_ckpts=3, verbose=False)
    path = ck.save({"w": weights}, 1, module=HARMLESS)
    rewrite_pack(path, path, replace={pickle_member(path, "module"): data})

    # The files are consistent packs, and their recorded globals say nothing is imported.
    for file, slot in ((pack, "main"), (path, "module")):
        doc = read_manifest(file)
        assert doc["slots"][slot]["info"]["globals"] == []
        with zipfile.ZipFile(file) as zf:
            assert zf.read(doc["slots"][slot]["members"][0]) == data
        with ckpt.Pack(file) as p:
            p.verify()
    return Poisoned(pack, ck, path, weights)


def _pack_load(path, slot, **kw):
    with ckpt.Pack(path) as p:
        return p.load(slot, **kw)


def _pack_load_with(path, slot, pack_kwargs, **kw):
    with ckpt.Pack(path, **pack_kwargs) as p:
        return p.load(slot, **kw)


LOADERS: dict[str, Callable[..., Any]] = {
    "ckpt.load": lambda f, **kw: ckpt.load(f.pack, **kw),
    "Pack.load": lambda f, **kw: _pack_load(f.checkpoint_file, "module", **kw),
    "Checkpoint.load_module": lambda f, **kw: f.checkpoint.load_module(**kw),
    "Checkpoint.load_extras": lambda f, **kw: f.checkpoint.load_extras(names=["module"], **kw),
    "Checkpoint.restore_extras": lambda f, **kw: f.checkpoint.restore(
        {"w": np.zeros(3, np.float32)}, idx=1, extras={"module": None}, **kw),
}

#: keyword arguments of a load that must refuse a pickle it does not trust
REFUSING_TRUST = {
    "default": {},
    "trusted_False": {"trusted": False},
    "allow_objax": {"trusted": ["objax.*"]},
    "allow_frameworks": {"trusted": ["objax.*", "jax.*", "numpy.*", "ckpt.*"]},
}


def _check_names(payload: Payload, refused: list[str]) -> None:
    for alternatives in payload.names:
        assert any(n in refused for n in alternatives), (alternatives, refused)


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """The poisoned files of each payload, built once: (files, sentinel) by payload name."""
    cache: dict[str, tuple[Poisoned, Any]] = {}

    def get(name):
        if name not in cache:
            directory = tmp_path_factory.mktemp(name)
            sentinel = directory / "pwned"
            cache[name] = (poison(directory, PAYLOADS[name].build(sentinel)), sentinel)
        return cache[name]

    return get


@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize("name", list(PAYLOADS))
def test_malicious_pickle_slot_is_refused(poisoned, name, loader):
    payload = PAYLOADS[name]
    files, sentinel = poisoned(name)

    expected = UntrustedPickleError if payload.error == "untrusted" else FormatError
    for trust, kwargs in REFUSING_TRUST.items():
        with pytest.raises(expected) as info:
            LOADERS[loader](files, **kwargs)
        assert_not_run(sentinel, payload)

        err = info.value
        if payload.error == "untrusted":
            assert isinstance(err, pickle.UnpicklingError)
            _check_names(payload, err.globals)
            for g in err.globals:
                assert g in str(err), trust
            assert "nothing was executed" in str(err) or "trusted=True" in str(err), trust
            assert err.file in (files.pack, files.checkpoint_file), trust
            assert err.slot in ("main", "module"), trust
        else:
            assert "pickle" in str(err), trust


@pytest.mark.parametrize("name", [n for n, p in PAYLOADS.items() if p.error == "format"])
def test_unreadable_pickle_is_refused_even_when_trusted(poisoned, name):
    """A stream the opcode reader cannot parse is never handed to the unpickler."""
    payload = PAYLOADS[name]
    files, sentinel = poisoned(name)
    for loader in LOADERS.values():
        with pytest.raises(FormatError):
            loader(files, trusted=True)
    assert_not_run(sentinel, payload)


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_inspect_lists_the_globals_without_running_anything(poisoned, name):
    payload = PAYLOADS[name]
    files, sentinel = poisoned(name)
    for file, slot in ((files.pack, "main"), (files.checkpoint_file, "module")):
        report = ckpt.inspect(file)["slots"][slot]
        assert report["serializer"] == "pickle"
        if payload.error == "untrusted":
            _check_names(payload, report["globals"])
        else:
            assert report["globals"] is None
            assert "pickle" in report["error"]
    assert_not_run(sentinel, payload)


def test_failed_restore_assigns_nothing(tmp_path):
    sentinel = tmp_path / "pwned"
    files = poison(tmp_path, PAYLOADS["proto4_STACK_GLOBAL_os_system"].build(sentinel))
    target = {"w": np.zeros(3, np.float32)}
    with pytest.raises(UntrustedPickleError):
        files.checkpoint.restore(target, extras={"module": None})
    np.testing.assert_array_equal(target["w"], np.zeros(3, np.float32))
    assert_not_run(sentinel)
    # The arrays alone are safe to restore from the same file.
    idx, _ = files.checkpoint.restore(target)
    assert idx == 1
    np.testing.assert_array_equal(target["w"], files.weights)
    assert_not_run(sentinel)


def test_popped_stack_global_operands_are_resolved_and_refused_by_match_all(tmp_path):
    sentinel = tmp_path / "pwned"
    files = poison(tmp_path, PAYLOADS["dynamic_STACK_GLOBAL_operands"].build(sentinel))
    with pytest.raises(UntrustedPickleError) as info:
        ckpt.load(files.pack, trusted=["*"])
    assert info.value.globals == ["os.system"]
    assert_not_run(sentinel)


def test_copyreg_extension_is_refused_even_when_its_object_is_cached(tmp_path):
    """EXT1 resolves through copyreg's registry, and a cached object skips find_class entirely."""
    import copyreg

    code = 0xF0
    if code in copyreg._inverted_registry:
        pytest.skip("extension code already in use")
    sentinel = tmp_path / "pwned"
    control = tmp_path / "control"
    copyreg.add_extension("os", "system", code)
    try:
        data = proto4(pickle.EXT1 + bytes([code]) + u(touch_cmd(sentinel)) + pickle.TUPLE1 + pickle.REDUCE)
        # Control: a plain unpickler runs it, and caches os.system under the code.
        pickle.loads(proto4(pickle.EXT1 + bytes([code]) + u(touch_cmd(control)) + pickle.TUPLE1 + pickle.REDUCE))
        assert control.exists()
        files = poison(tmp_path, data)
        for trusted in (False, ["objax.*"], ["*"]):
            for load in (lambda t=trusted: ckpt.load(files.pack, trusted=t),
                         lambda t=trusted: files.checkpoint.load_module(trusted=t)):
                with pytest.raises(UntrustedPickleError) as info:
                    load()
                assert info.value.globals == [f"<copyreg extension {code}>"], info.value.globals
        assert ckpt.inspect(files.pack)["slots"]["main"]["globals"] == [f"<copyreg extension {code}>"]
    finally:
        copyreg.remove_extension("os", "system", code)
    assert_not_run(sentinel)


# -- hardened allow-list: names that match "objax.*" but lead elsewhere -----------------------------
def _reaching(module, name, sentinel, *, protocol0=False):
    """A pickle importing ``module``/``name`` and calling the result with a shell command."""
    if protocol0:
        return (b"c" + module.encode() + b"\n" + name.encode() + b"\n(V" + touch_cmd(sentinel).encode()
                + b"\ntR.")
    return proto4(call(stack_global(module, name), u(touch_cmd(sentinel))))


HOSTILE_NAMES = {
    # module, qualname, why it is refused
    "os_through_objax_io_checkpoint": ("objax.io.checkpoint", "os.system", "can run any code"),
    "jax_numpy_through_objax_variable": ("objax.variable", "jax.numpy", "module"),
    "jax_numpy_alias_through_objax_nn_layers": ("objax.nn.layers", "jn.load", "can run any code"),
    "package_through_attribute": ("objax", "io.checkpoint.os.system", "can run any code"),
    "module_as_final_target": ("objax.io", "checkpoint", "module"),
    "dunder_globals_of_a_method": ("objax.nn.layers", "Linear.__init__.__globals__", "dunder"),
    "dunder_builtins_of_a_module": ("objax.nn.layers", "__builtins__", "dunder"),
    "dunder_class_chain": ("objax.nn.layers", "Linear.__class__.__subclasses__", "dunder"),
}


@pytest.mark.parametrize("protocol0", [False, True], ids=["STACK_GLOBAL", "GLOBAL"])
@pytest.mark.parametrize("case", list(HOSTILE_NAMES))
def test_allow_list_is_not_escaped_through_attributes(tmp_path, case, protocol0):
    pytest.importorskip("objax")
    module, name, why = HOSTILE_NAMES[case]
    sentinel = tmp_path / "pwned"
    files = poison(tmp_path, _reaching(module, name, sentinel, protocol0=protocol0))
    full = f"{module}.{name}"

    for load in (lambda: ckpt.load(files.pack, trusted=["objax.*"]),
                 lambda: files.checkpoint.load_module(trusted=["objax.*"])):
        with pytest.raises(UntrustedPickleError) as info:
            load()
        assert info.value.globals == [full]
        assert full in str(info.value)
        assert why in str(info.value)
    assert_not_run(sentinel)
    # Without an allow-list it is refused before anything is imported, naming the same global.
    with pytest.raises(UntrustedPickleError) as info:
        ckpt.load(files.pack)
    assert info.value.globals == [full]
    assert_not_run(sentinel)


def test_allow_listed_cloudpickle_does_not_reach_os(tmp_path):
    """cloudpickle's helpers rebuild functions from bytecode and import modules by name: no allow-list
    admits them, even one that names them, so a by-value function only loads with trusted=True."""
    cloudpickle = pytest.importorskip("cloudpickle")
    sentinel = tmp_path / "pwned"
    cmd = touch_cmd(sentinel)

    def evil():
        def f():
            return os.system(cmd)

        class Evil:
            def __reduce__(self):
                return (f, ())

        return Evil()

    files = poison(tmp_path, cloudpickle.dumps(evil(), protocol=5))
    globals_ = ckpt.inspect(files.pack)["slots"]["main"]["globals"]
    assert not [g for g in globals_ if not g.startswith("cloudpickle.")], globals_  # os is named nowhere
    try:
        with pytest.raises(UntrustedPickleError, match="only trusted=True"):
            ckpt.load(files.pack, trusted=["objax.*", "cloudpickle.*"])
        with pytest.raises(UntrustedPickleError):
            ckpt.load(files.pack, trusted=["*"])
    finally:
        assert_not_run(sentinel)


def test_control_os_through_objax_is_a_live_payload(tmp_path):
    pytest.importorskip("objax")
    sentinel = tmp_path / "control"
    pickle.loads(_reaching("objax.io.checkpoint", "os.system", sentinel))
    assert sentinel.exists()


def test_nonexistent_attribute_under_an_allowed_module_runs_nothing(tmp_path):
    """('objax.nn.layers', 'jax.numpy'): objax.nn.layers has no attribute ``jax``.

    The name matches "objax.*" and is not refused by trust; resolving it fails, which
    ckpt reports as a malformed pickle. Either way nothing runs.
    """
    pytest.importorskip("objax")
    sentinel = tmp_path / "pwned"
    files = poison(tmp_path, _reaching("objax.nn.layers", "jax.numpy", sentinel))
    with pytest.raises((UntrustedPickleError, FormatError)) as info:
        ckpt.load(files.pack, trusted=["objax.*"])
    assert "objax.nn.layers" in str(info.value) and "jax" in str(info.value)
    assert_not_run(sentinel)


# -- D: hashes and dependencies are checked before unpickling --------------------------------------
def _same_size_payload(sentinel, size):
    data = PAYLOADS["proto4_STACK_GLOBAL_os_system"].build(sentinel)
    assert len(data) <= size, (len(data), size)
    return data + b" " * (size - len(data))  # after STOP: ignored by the unpickler


def test_tampered_pickle_member_raises_checksum_error_even_when_trusted(tmp_path):
    sentinel = tmp_path / "pwned"
    path = str(tmp_path / "model.npz")
    with ckpt.Pack(path) as p:
        p.dump("main", HARMLESS, serializer="pickle")
    member = pickle_member(path, "main")
    size = read_manifest(path)["members"][member]["size"]
    payload = _same_size_payload(sentinel, size)
    rewrite_pack(path, path, replace={member: payload}, update_hashes=False)
    assert read_manifest(path)["members"][member]["size"] == len(payload)

    for load in (lambda: ckpt.load(path, trusted=True), lambda: _pack_load(path, "main", trusted=True)):
        with pytest.raises(ChecksumError) as info:
            load()
        assert info.value.member == member
        assert info.value.found == content_digest(payload, "blake3")
    with ckpt.Pack(path) as p, pytest.raises(ChecksumError):
        p.verify()
    report = ckpt.inspect(path)["slots"]["main"]
    assert report["globals"] is None and "blake3" in report["error"]
    assert_not_run(sentinel)

    # Control: the same bytes with the hashes made consistent do run when trusted.
    rewrite_pack(path, path, replace={member: payload})
    ckpt.load(path, trusted=True)
    assert sentinel.exists()


def test_tampered_module_checkpoint_raises_checksum_error_even_when_trusted(tmp_path):
    sentinel = tmp_path / "pwned"
    ck = ckpt.Checkpoint(str(tmp_path / "run"), keep_ckpts=3, verbose=False)
    path = ck.save({"w": np.ones(3, np.float32)}, 1, module=HARMLESS)
    member = pickle_member(path, "module")
    payload = _same_size_payload(sentinel, read_manifest(path)["members"][member]["size"])
    rewrite_pack(path, path, replace={member: payload}, update_hashes=False)
    for load in (lambda: ck.load_module(trusted=True), lambda: ck.load_module(1, trusted=True),
                 lambda: ck.restore({"w": np.zeros(3, np.float32)}, idx=1, extras={"module": None}, trusted=True)):
        with pytest.raises(ChecksumError):
            load()
    assert_not_run(sentinel)


def test_resized_pickle_member_without_manifest_update_is_refused(tmp_path):
    sentinel = tmp_path / "pwned"
    path = str(tmp_path / "model.npz")
    with ckpt.Pack(path) as p:
        p.dump("main", ("tiny",), serializer="pickle")
    member = pickle_member(path, "main")
    rewrite_pack(path, path, replace={member: PAYLOADS["proto0_GLOBAL_REDUCE_os_system"].build(sentinel)},
                 update_hashes=False)
    with pytest.raises(FormatError):
        ckpt.load(path, trusted=True)
    with pytest.raises(FormatError):
        ckpt.inspect(path)
    assert_not_run(sentinel)


def _require_old_numpy(slot):
    def edit(doc):
        deps = doc["slots"][slot]["dependencies"]
        assert "numpy" in deps
        deps["numpy"]["requires"] = "<1"
    return edit


def test_dependency_mismatch_is_raised_before_unpickling_in_strict_mode(tmp_path):
    sentinel = tmp_path / "pwned"
    files = poison(tmp_path, PAYLOADS["proto4_STACK_GLOBAL_os_system"].build(sentinel))
    rewrite_pack(files.pack, files.pack, edit_manifest=_require_old_numpy("main"))
    rewrite_pack(files.checkpoint_file, files.checkpoint_file, edit_manifest=_require_old_numpy("module"))

    strict_ck = ckpt.Checkpoint(files.checkpoint.logdir, keep_ckpts=3, verbose=False, deps="strict")
    loads = {
        "ckpt.load": lambda: ckpt.load(files.pack, trusted=True, deps="strict"),
        "Pack.load": lambda: _pack_load(files.checkpoint_file, "module", trusted=True, deps="strict"),
        "Pack(deps=strict)": lambda: _pack_load_with(files.pack, "main", {"deps": "strict"}, trusted=True),
        "load_module": lambda: strict_ck.load_module(trusted=True),
        "restore_extras": lambda: strict_ck.restore({"w": np.zeros(3, np.float32)}, idx=1,
                                                    extras={"module": None}, trusted=True),
    }
    for what, load in loads.items():
        with pytest.raises(DependencyError) as info:
            load()
        assert any(m[0] == "numpy" for m in info.value.mismatches), (what, info.value.mismatches)
        assert "numpy" in str(info.value)
        assert_not_run(sentinel)

    # Control: the dependency check was the only barrier left.
    ckpt.load(files.pack, trusted=True, deps="ignore")
    assert sentinel.exists()


def test_dependency_warning_mode_warns_before_refusing_an_untrusted_pickle(tmp_path):
    sentinel = tmp_path / "pwned"
    files = poison(tmp_path, PAYLOADS["proto4_STACK_GLOBAL_os_system"].build(sentinel))
    rewrite_pack(files.pack, files.pack, edit_manifest=_require_old_numpy("main"))
    with pytest.warns(ckpt.DependencyWarning, match="numpy"), pytest.raises(UntrustedPickleError):
        ckpt.load(files.pack)
    assert_not_run(sentinel)


# -- E: files that are not packs -------------------------------------------------------------------
def _random_bytes():
    data = bytearray(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    data[:2] = b"\x01\x02"  # certainly not "PK"
    return bytes(data)


NOT_PACKS = {
    "bare_pickle_proto0": lambda s: PAYLOADS["proto0_GLOBAL_REDUCE_os_system"].build(s),
    "bare_pickle_proto5": lambda s: PAYLOADS["reduce_class_real_pickler_proto5"].build(s),
    "bare_pickle_proto2": lambda s: PAYLOADS["reduce_class_real_pickler_proto2"].build(s),
    "bare_pickle_mark_first": lambda s: b"(cos\nsystem\nV" + touch_cmd(s).encode() + b"\ntR.",
    "7z_header": lambda s: b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(range(256)) * 4,
    "random_bytes": lambda s: _random_bytes(),
    "empty": lambda s: b"",
    "single_npy_file": lambda s: _npy_bytes(np.arange(4)),
}


def _npy_bytes(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@pytest.mark.parametrize("kind", list(NOT_PACKS))
def test_file_that_is_not_a_pack_is_refused_everywhere(tmp_path, kind):
    sentinel = tmp_path / "pwned"
    data = NOT_PACKS[kind](sentinel)
    path = tmp_path / "model.npz"
    path.write_bytes(data)
    ck = ckpt.Checkpoint(str(tmp_path / "run"), keep_ckpts=3, verbose=False)
    with open(ck.path(1), "wb") as f:
        f.write(data)

    calls = {
        "ckpt.load": lambda: ckpt.load(path, trusted=True),
        "ckpt.load(str)": lambda: ckpt.load(str(path), trusted=True, deps="ignore", verify=False),
        "ckpt.load(fileobj)": lambda: ckpt.load(io.BytesIO(data), trusted=True),
        "inspect": lambda: ckpt.inspect(path),
        "load_var_collection": lambda: ckpt.load_var_collection(path, {"w": np.zeros(3)}),
        "restore(idx=1)": lambda: ck.restore({"w": np.zeros(3)}, idx=1, extras={"module": None}, trusted=True),
        "load_module": lambda: ck.load_module(trusted=True),
        "load_module(1)": lambda: ck.load_module(1, trusted=True),
    }
    if data:  # an empty path is a new, empty pack for Pack (tested below); for readers it is not a pack
        calls["Pack"] = lambda: ckpt.Pack(path)
    for what, call_ in calls.items():
        with pytest.raises(FormatError) as info:
            call_()
        assert isinstance(info.value, NotAPackError), (what, type(info.value), info.value)
    assert_not_run(sentinel)


@pytest.mark.parametrize("kind", list(NOT_PACKS))
def test_restore_latest_refuses_a_checkpoint_that_is_not_a_pack(tmp_path, kind):
    sentinel = tmp_path / "pwned"
    data = NOT_PACKS[kind](sentinel)
    ck = ckpt.Checkpoint(str(tmp_path / "run"), keep_ckpts=3, verbose=False)
    with open(ck.path(1), "wb") as f:
        f.write(data)
    target = {"w": np.zeros(3)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a damaged newest checkpoint may be reported as a warning first
        with pytest.raises(FormatError):
            ck.restore(target, extras={"module": None}, trusted=True)
    np.testing.assert_array_equal(target["w"], np.zeros(3))
    assert_not_run(sentinel)


def test_restore_latest_skips_a_bare_pickle_to_the_previous_good_checkpoint(tmp_path):
    corrupt_warning = getattr(ckpt.errors, "CorruptCheckpointWarning", None)
    if corrupt_warning is None:
        pytest.skip("this ckpt does not skip damaged checkpoints")
    sentinel = tmp_path / "pwned"
    ck = ckpt.Checkpoint(str(tmp_path / "run"), keep_ckpts=3, verbose=False)
    good = np.arange(3, dtype=np.float64)
    ck.save({"w": good}, 1)
    with open(ck.path(2), "wb") as f:
        f.write(PAYLOADS["reduce_class_real_pickler_proto5"].build(sentinel))
    target = {"w": np.zeros(3)}
    with pytest.warns(corrupt_warning):
        idx, _ = ck.restore(target, trusted=True)
    assert idx == 1
    np.testing.assert_array_equal(target["w"], good)
    assert_not_run(sentinel)


def test_empty_file_opens_as_an_empty_pack_and_loads_nothing(tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(b"")
    with ckpt.Pack(path) as p:
        assert list(p) == []
        with pytest.raises(CkptError):
            p.load(trusted=True)


def test_npz_without_manifest_holding_an_object_array_is_refused(tmp_path):
    """A plain objax/numpy-style file whose .npy member is a pickled object array."""
    sentinel = tmp_path / "pwned"
    obj = np.empty(1, dtype=object)
    obj[0] = Touch(sentinel)
    path = tmp_path / "objax.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("names.npy", _npy_bytes(np.array(["w"])))
        buf = io.BytesIO()
        np.save(buf, obj, allow_pickle=True)
        zf.writestr("0.npy", buf.getvalue())

    ck = ckpt.Checkpoint(str(tmp_path / "run"), keep_ckpts=3, verbose=False)
    with open(ck.path(1), "wb") as f:
        f.write(path.read_bytes())
    for call_ in (lambda: ckpt.load(path, trusted=True),
                  lambda: ckpt.load_var_collection(path, {"w": np.zeros(1)}),
                  lambda: ck.restore({"w": np.zeros(1)}, idx=1, trusted=True),
                  lambda: ck.load(1)):
        with pytest.raises(FormatError):
            call_()
    assert_not_run(sentinel)

    # Control: numpy with allow_pickle runs it.
    with np.load(path, allow_pickle=True) as npz:
        npz["0"]
    assert sentinel.exists()
