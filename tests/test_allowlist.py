"""The pickle allow-list never reaches code execution: globals are judged by what they can do.

Each exploit is live (a control shows plain ``pickle.loads`` runs it and creates a sentinel);
under every allow-list a user could plausibly write it is refused before anything runs,
and the refusal never suggests an allow-list that would admit it.
"""

from __future__ import annotations

import collections
import contextlib
import io
import pickle
import subprocess
import sys

import numpy as np
import pytest
from test_untrusted_pickle import call, poison, proto4, stack_global, touch_cmd, u

import ckpt
from ckpt import _pickle_policy as policy
from ckpt.errors import UntrustedPickleError


def _evil_npy(tmp_path, sentinel):
    """An .npy whose object array unpickles to os.system(touch sentinel)."""

    class Touch:
        def __reduce__(self):
            import os

            return (os.system, (touch_cmd(sentinel),))

    path = tmp_path / "evil.npy"
    arr = np.empty(1, dtype=object)
    arr[0] = Touch()
    np.save(path, arr, allow_pickle=True)
    return str(path)


def _exploits(tmp_path, sentinel):
    """name -> (pickle bytes, allow-lists that a careless user might pass)."""
    evil = _evil_npy(tmp_path, sentinel)
    code = f"import os; os.system({touch_cmd(sentinel)!r})"
    txt = str(tmp_path / "written.txt")
    return {
        "numpy_testing_runstring": (
            proto4(call(stack_global("numpy.testing", "runstring"), u(code), pickle.EMPTY_DICT)),
            [["numpy.*"], ["numpy.testing.runstring"], ["*"]]),
        "numpy_load_allow_pickle": (
            proto4(call(stack_global("numpy", "load"), u(evil), pickle.NONE, pickle.NEWTRUE)),
            [["numpy.*"], ["numpy.load"]]),
        "numpy_savetxt_then_load": (
            proto4(call(stack_global("numpy", "savetxt"), u(txt), pickle.MARK + u("x") + pickle.LIST,
                        u("%s")) + pickle.POP
                   + call(stack_global("numpy", "load"), u(evil), pickle.NONE, pickle.NEWTRUE)),
            [["numpy.*"]]),
        "jax_numpy_load": (
            proto4(call(stack_global("jax.numpy", "load"), u(evil), pickle.NONE, pickle.NEWTRUE)),
            [["jax.*"], ["jax.numpy.load"]]),
        "pydoc_locate": (
            proto4(call(call(stack_global("pydoc", "locate"), u("os.system")), u(touch_cmd(sentinel)))),
            [["pydoc.locate"], ["pydoc.*"]]),
        "pkgutil_resolve_name": (
            proto4(call(call(stack_global("pkgutil", "resolve_name"), u("os:system")), u(touch_cmd(sentinel)))),
            [["pkgutil.resolve_name"]]),
        "timeit_timeit": (
            proto4(call(stack_global("timeit", "timeit"), u("pass"), u(code))),
            [["timeit.timeit"], ["timeit.*"]]),
        "map_drives_a_function": (
            proto4(call(stack_global("builtins", "list"),
                        call(stack_global("builtins", "map"), stack_global("os", "system"),
                             pickle.MARK + u(touch_cmd(sentinel)) + pickle.LIST))),
            [["builtins.*"], ["builtins.list", "builtins.map", "os.system"]]),
    }


@pytest.mark.parametrize("name", ["numpy_testing_runstring", "numpy_load_allow_pickle", "numpy_savetxt_then_load",
                                  "jax_numpy_load", "pydoc_locate", "pkgutil_resolve_name", "timeit_timeit",
                                  "map_drives_a_function"])
def test_exploit_is_refused_by_every_allow_list(tmp_path, name):
    sentinel = tmp_path / "pwned"
    data, allow_lists = _exploits(tmp_path, sentinel)[name]
    if name == "jax_numpy_load":
        pytest.importorskip("jax")
    # Control: the standard unpickler runs it.
    control = tmp_path / "control"
    control.mkdir()
    control_data, _ = _exploits(control, control / "pwned")[name]
    with contextlib.suppress(Exception):  # some exploits fail after they ran
        pickle.loads(control_data)
    assert (control / "pwned").exists(), f"{name} is not a live exploit"

    files = poison(tmp_path, data)
    for trusted in [False, *allow_lists]:
        with pytest.raises(UntrustedPickleError) as info:
            ckpt.load(files.pack, trusted=trusted)
        message = str(info.value)
        assert "nothing was executed" in message or "unpickling runs code" in message
        # Never a suggestion that would admit the exploit.
        assert "To accept exactly these" not in message
        assert not sentinel.exists(), (name, trusted)


def test_allow_listed_function_may_be_referenced_but_not_called(tmp_path):
    referenced = proto4(pickle.MARK + u("act") + stack_global("numpy", "tanh") + pickle.DICT)
    files = poison(tmp_path, referenced)
    assert ckpt.load(files.pack, trusted=["numpy.*"]) == {"act": np.tanh}

    called = proto4(call(stack_global("numpy", "asarray"), u("x")))
    (tmp_path / "c").mkdir()
    files = poison(tmp_path / "c", called)
    with pytest.raises(UntrustedPickleError, match="calls with arguments of its choosing"):
        ckpt.load(files.pack, trusted=["numpy.*"])


def test_pickle_that_changes_a_global_in_place_is_refused(tmp_path):
    # BUILD on the class itself would set attributes on collections.OrderedDict for the whole process.
    data = proto4(stack_global("collections", "OrderedDict") + pickle.NONE + pickle.MARK + u("popitem")
                  + pickle.NONE + pickle.DICT + pickle.TUPLE2 + pickle.BUILD)
    files = poison(tmp_path, data)
    with pytest.raises(UntrustedPickleError, match="changes the global collections.OrderedDict in place"):
        ckpt.load(files.pack, trusted=["collections.*"])
    assert collections.OrderedDict.popitem is not None


def test_call_on_an_object_built_while_unpickling_is_refused(tmp_path):
    # OrderedDict is admitted, but calling the instance it returns is not (no named global to judge).
    data = proto4(call(call(stack_global("collections", "OrderedDict"))))
    files = poison(tmp_path, data)
    with pytest.raises(UntrustedPickleError, match="calls an object built while unpickling"):
        ckpt.load(files.pack, trusted=["collections.*"])


def test_dangerous_classes_are_refused_whatever_the_pattern(tmp_path):
    for i, (module, name) in enumerate([("functools", "partial"), ("numpy", "memmap"), ("numpy", "vectorize"),
                                        ("subprocess", "Popen"), ("weakref", "finalize")]):
        d = tmp_path / str(i)
        d.mkdir()
        files = poison(d, proto4(stack_global(module, name)))
        with pytest.raises(UntrustedPickleError):
            ckpt.load(files.pack, trusted=["*"])


def test_refusal_suggests_an_exact_list_only_of_vetted_globals(tmp_path):
    path = tmp_path / "od.npz"
    ckpt.dump(collections.OrderedDict(a=1), path)
    with pytest.raises(UntrustedPickleError, match=r"To accept exactly these, pass trusted=\['collections.OrderedDict'\]"):
        ckpt.load(path)
    assert ckpt.load(path, trusted=["collections.OrderedDict"]) == collections.OrderedDict(a=1)
    assert all(g in policy.VETTED for g in ["collections.OrderedDict"])


def test_vetted_set_holds_no_primitive():
    for g in policy.VETTED:
        _, _, qual = g.rpartition(".")
        assert qual not in policy.DENIED_NAMES, g


def test_a_dict_of_arrays_and_ints_loads_without_trust(tmp_path):
    value = {"w": np.arange(4.0), "step": 3, "pair": (1, 2), "name": "run"}
    path = tmp_path / "p.npz"
    ckpt.dump(value, path)
    # Arrays and everyday values are stored without pickle (arrays + tagged values), so nothing to trust.
    assert ckpt.inspect(str(path))["slots"]["main"]["serializer"] == "arrays"
    loaded = ckpt.load(path)
    np.testing.assert_array_equal(loaded["w"], value["w"])
    assert {k: v for k, v in loaded.items() if k != "w"} == {"step": 3, "pair": (1, 2), "name": "run"}
    f = io.BytesIO()
    ckpt.dump(value, f)
    f.seek(0)
    assert ckpt.load(f)["step"] == 3


def test_dumps_and_loads_are_a_drop_in_for_pickle():
    value = {"w": np.ones((2, 3), np.float32), "epoch": 7}
    data = ckpt.dumps(value)
    assert isinstance(data, bytes) and data[:2] == b"PK"
    loaded = ckpt.loads(data)
    np.testing.assert_array_equal(loaded["w"], value["w"])
    assert loaded["epoch"] == 7
    od = ckpt.dumps(collections.OrderedDict(a=1))
    with pytest.raises(UntrustedPickleError):
        ckpt.loads(od)
    assert ckpt.loads(od, trusted=True) == collections.OrderedDict(a=1)


def test_extension_code_in_an_otherwise_global_free_pickle_needs_trust(tmp_path):
    files = poison(tmp_path, proto4(pickle.EXT1 + b"\x01"))
    with pytest.raises(UntrustedPickleError):
        ckpt.load(files.pack)


def test_ckpt_state_setter_cannot_change_a_global(tmp_path):
    # set_state is admitted by every allow-list (ckpt writes it): it must only fill in rebuilt objects.
    data = proto4(call(stack_global("ckpt._module_pickle", "set_state"), stack_global("numpy", "tanh"),
                       pickle.MARK + u("x") + u("y") + pickle.DICT))
    files = poison(tmp_path, data)
    with pytest.raises(ckpt.CkptError):
        ckpt.load(files.pack, trusted=["numpy.*"])
    assert not hasattr(np.tanh, "x")


def test_range_is_not_vetted_memory_amplifier():
    # list(range(10**9)) from a 40-byte pickle would take 8 GB: range is not a vetted global.
    assert "builtins.range" not in policy.VETTED and policy.name_denied("builtins.range")


@pytest.mark.parametrize("trusted", [False, True])
def test_memo_index_that_would_size_the_memo_to_gigabytes_is_refused(tmp_path, trusted):
    # Found by the fuzzer: LONG_BINPUT 791555694 in a pickle with no globals made the unpickler
    # allocate a 6 GB memo table (peak RSS +12 GB), even though nothing could run.
    from test_hostile import RSS_LIMIT, peak_rss_growth

    data = proto4(pickle.EMPTY_LIST + pickle.LONG_BINPUT + (791555694).to_bytes(4, "little"))
    files = poison(tmp_path, data)
    result, growth = peak_rss_growth(lambda: ckpt.load(files.pack, trusted=trusted))
    assert isinstance(result, ckpt.errors.FormatError) and "memo index" in str(result), result
    assert growth < RSS_LIMIT


def test_build_may_not_give_an_object_an_array_interface(tmp_path):
    # numpy reads __array_interface__ from the instance: a BUILD setting it on any admitted object, then
    # a numpy class converting that object (np.matrix), would make an array over an arbitrary address.
    iface = (pickle.MARK + u("data") + pickle.MARK + pickle.BININT1 + b"\x10" + pickle.NEWFALSE + pickle.TUPLE
             + u("shape") + pickle.MARK + pickle.BININT1 + b"\x08" + pickle.TUPLE + u("typestr") + u("|u1")
             + u("version") + pickle.BININT1 + b"\x03" + pickle.DICT)
    obj = (stack_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.NEWOBJ
           + pickle.NONE + pickle.MARK + u("__array_interface__") + iface + pickle.DICT + pickle.TUPLE2 + pickle.BUILD)
    data = proto4(call(stack_global("numpy", "matrix"), obj))
    # Control, in a child process: the standard unpickler builds a matrix over address 0x10 (and crashes).
    child = subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
                           input=data, capture_output=True, timeout=120)
    assert child.returncode != 0 and b"Error" not in child.stderr, child.stderr[-500:]
    files = poison(tmp_path, data)
    with pytest.raises(UntrustedPickleError, match="__array_interface__"):
        ckpt.load(files.pack, trusted=["numpy.*", "collections.*"])


def test_numpy_dummy_array_is_never_admitted():
    assert policy.name_denied("numpy.lib._stride_tricks_impl.DummyArray")
    assert policy.name_denied("numpy.lib.stride_tricks.DummyArray")
