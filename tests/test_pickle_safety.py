"""Pickle slots load only when trusted; crafted payloads never run."""

from __future__ import annotations

import collections
import os
import pickle
import shlex
import struct

import numpy as np
import pytest

import ckpt
from ckpt.errors import UntrustedPickleError
from helpers import os_system_pickle, os_system_pickle_v5, rewrite_pack


@pytest.fixture
def ordered_pack(tmp_path):
    path = tmp_path / "od.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("state", collections.OrderedDict(a=1, b=[2, 3]))
        assert pack.slots_info["state"].serializer == "pickle"
    return path


def test_untrusted_pickle_is_refused_listing_its_globals(ordered_pack):
    with ckpt.Pack(ordered_pack) as pack:
        with pytest.raises(UntrustedPickleError) as info:
            pack.load("state")
    err = info.value
    assert isinstance(err, pickle.UnpicklingError)
    assert err.globals == ["collections.OrderedDict"]
    assert "collections.OrderedDict" in str(err)
    assert err.slot == "state" and err.file == str(ordered_pack)


@pytest.mark.parametrize("trusted",
                         [True, ["collections.*"], ["collections.OrderedDict"], ("numpy.*", "collections.*")],
                         ids=["true", "glob", "exact", "tuple_of_patterns"])
def test_trusted_pickle_loads(ordered_pack, trusted):
    with ckpt.Pack(ordered_pack) as pack:
        value = pack.load("state", trusted=trusted)
    assert value == collections.OrderedDict(a=1, b=[2, 3])
    assert type(value) is collections.OrderedDict


@pytest.mark.parametrize("trusted", [False, None, [], ["numpy.*"], ["collections.Counter"], "collections.*"],
                         ids=["false", "none", "empty_list", "other_package", "other_class", "bare_string"])
def test_pickle_outside_the_allow_list_is_refused(ordered_pack, trusted):
    with ckpt.Pack(ordered_pack) as pack:
        with pytest.raises(UntrustedPickleError) as info:
            pack.load("state", trusted=trusted)
    assert "collections.OrderedDict" in info.value.globals


def test_pickle_of_builtins_only_needs_no_globals(tmp_path):
    path = tmp_path / "p.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("t", (1, "a", 2.5), serializer="pickle")  # a tuple is tagged JSON by default
        # A pickle that imports nothing cannot reach any callable: it loads without trust.
        assert pack.slots_info["t"].info["globals"] == []
        assert pack.load("t") == (1, "a", 2.5)
        assert pack.load("t", trusted=[]) == (1, "a", 2.5)


def _pack_with_pickle_bytes(tmp_path, payload: bytes, slot: str = "evil"):
    """A self-consistent pack (hashes recomputed) whose pickle slot holds ``payload``."""
    honest = tmp_path / "honest.npz"
    with ckpt.Pack(honest) as pack:
        pack.dump("main", {"w": np.ones(2)})
        pack.dump(slot, ("placeholder",), serializer="pickle")
        member = pack.slots_info[slot].members[0]
    crafted = tmp_path / "crafted.npz"
    rewrite_pack(honest, crafted, replace_members={member: payload})
    with ckpt.Pack(crafted) as pack:
        pack.verify()  # the hashes are right: only the trust check stands in the way
    return crafted


def _dynamic_global_pickle(sentinel) -> bytes:
    """Protocol 4: the module name of os.system is computed by a call at unpickling time."""
    cmd = ("touch " + shlex.quote(os.fspath(sentinel))).encode()

    def unicode(s: bytes) -> bytes:
        return b"X" + struct.pack("<I", len(s)) + s

    return (b"\x80\x04" + unicode(b"builtins") + unicode(b"str") + b"\x93"
            + unicode(b"os") + b"\x85R" + unicode(b"system") + b"\x93"
            + unicode(cmd) + b"\x85R.")


PAYLOADS = {
    "protocol0_os_system": (os_system_pickle, "os.system"),
    "protocol5_reduce": (os_system_pickle_v5, f"{os.system.__module__}.system"),
    "protocol4_dynamic_module": (_dynamic_global_pickle, "<dynamic>"),
}


@pytest.mark.parametrize("make_payload,global_name", list(PAYLOADS.values()), ids=list(PAYLOADS))
def test_payloads_are_live(tmp_path, make_payload, global_name):
    """Control: unpickled by plain pickle, each payload does create its sentinel file."""
    sentinel = tmp_path / "ran"
    pickle.loads(make_payload(sentinel))
    assert sentinel.exists()


@pytest.mark.parametrize("make_payload,global_name", list(PAYLOADS.values()), ids=list(PAYLOADS))
@pytest.mark.parametrize("trusted", [False, ["collections.*"], ["builtins.*"]],
                         ids=["untrusted", "collections", "builtins"])
def test_crafted_payload_in_a_slot_never_runs(tmp_path, make_payload, global_name, trusted):
    sentinel = tmp_path / "pwned"
    crafted = _pack_with_pickle_bytes(tmp_path, make_payload(sentinel))
    with ckpt.Pack(crafted) as pack:
        with pytest.raises(UntrustedPickleError) as info:
            pack.load("evil", trusted=trusted)
    assert global_name in info.value.globals
    assert global_name in str(info.value)
    assert not sentinel.exists()


@pytest.mark.parametrize("make_payload", [os_system_pickle, os_system_pickle_v5], ids=["protocol0", "protocol5"])
def test_crafted_payload_in_main_refused_by_compat_load(tmp_path, make_payload):
    sentinel = tmp_path / "pwned"
    honest = tmp_path / "honest.npz"
    ckpt.dump(collections.OrderedDict(placeholder=1), honest)  # pickled: not an everyday (tagged JSON) value
    crafted = tmp_path / "crafted.npz"
    with ckpt.Pack(honest) as pack:
        member = pack.slots_info["main"].members[0]
    rewrite_pack(honest, crafted, replace_members={member: make_payload(sentinel)})
    with pytest.raises(UntrustedPickleError):
        ckpt.load(crafted)
    with pytest.raises(UntrustedPickleError):
        ckpt.load(crafted, trusted=["collections.*"])
    assert not sentinel.exists()


def test_crafted_payload_in_checkpoint_extras_never_runs(tmp_path):
    sentinel = tmp_path / "pwned"
    ck = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=2)
    path = ck.save({"w": np.ones(2)}, 1, extras={"state": collections.OrderedDict(placeholder=1)})
    with ckpt.Pack(path) as pack:
        member = pack.slots_info["state"].members[0]
    rewrite_pack(path, path + ".crafted", replace_members={member: os_system_pickle(sentinel)})
    os.replace(path + ".crafted", path)
    with pytest.raises(UntrustedPickleError):
        ck.load_extras(1)
    extras = {"state": None}
    target = {"w": np.zeros(2)}
    with pytest.raises(UntrustedPickleError):
        ck.restore(target, extras=extras)
    assert extras == {"state": None}
    assert not target["w"].any(), "nothing may be assigned when an extra is refused"
    assert not sentinel.exists()
