"""Shared by tests/test_fuzz.py and benchmarks/fuzz_hostile.py: seed files, mutators, reader entry points.

Seeds are real files (ckpt packs with arrays, JSON, raw, pickle and compressed slots, plain
``np.savez``/``np.savez_compressed`` files). A mutation either damages bytes anywhere, or edits one
member's content and rebuilds a self-consistent pack (CRCs, sizes and sha256s recomputed), so the
damage reaches the parsers behind the integrity checks. Every entry point must end in a value or a
:class:`ckpt.errors.CkptError`, and never run code: the seed pickles call :func:`canary`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import tempfile
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

import ckpt
from ckpt import _zip, cli as _cli

MANIFEST = "__ckpt__/manifest.json"
CANARY: list[str] = []


def canary(*args: Any) -> None:
    """Called by the seed pickles: if this ever runs, a pickle ran code it should not have."""
    CANARY.append(repr(args))


class _Canary:
    def __reduce__(self) -> Any:
        return (canary, ("ran",))


def _pack(build: Callable[[ckpt.Pack], None]) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "seed.npz")
        with ckpt.Pack(path) as p:
            build(p)
        with open(path, "rb") as f:
            return f.read()


def _savez(compressed: bool, **arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)

    def full(p: ckpt.Pack) -> None:
        p.dump("main", {"w": w, "b": np.arange(3, dtype=np.int64)})
        p.dump("cfg", {"lr": 0.1, "name": "x", "layers": [1, 2]})
        p.dump("raw", b"\x00\x01raw bytes")
        p.dump("state", {"step": 3, "pair": (1, 2), "arr": w})  # a pickle that imports nothing
        p.dump("evil", [_Canary()], serializer="pickle")  # a pickle that would run canary()

    out = [_pack(full), _savez(False, w=w, v=np.zeros(5)), _savez(True, w=w, m=np.zeros(1000, np.float32))]
    try:
        out.append(_pack(lambda p: p.dump("main", {"w": w, "z": np.zeros(4096, np.float32)},
                                          compression="zstd")))
    except Exception:  # zstandard missing: the other seeds still cover the rest
        pass
    return out


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {i.filename: zf.read(i.filename) for i in zf.infolist()}


def rebuild(members: dict[str, bytes], *, deflate: bool = False) -> bytes:
    """A pack whose manifest hashes and sizes match ``members`` again (as an attacker would write it)."""
    members = dict(members)
    manifest = members.pop(MANIFEST, None)
    if manifest is not None:
        try:
            doc = json.loads(manifest)
            for name, data in members.items():
                if isinstance(doc.get("members"), dict) and name in doc["members"]:
                    doc["members"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for slot in (doc.get("slots") or {}).values():
                h = hashlib.sha256()
                for m in slot.get("members", []):
                    h.update(bytes.fromhex(doc["members"][m]["sha256"]))
                slot["sha256"] = h.hexdigest()
            manifest = json.dumps(doc).encode()
        except Exception:  # a damaged manifest stays damaged
            pass
        members[MANIFEST] = manifest
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


_INTERESTING = [b"\x00", b"\xff", b"\xff\xff", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x80",
                b"PK\x05\x06", b"PK\x01\x02", b"PK\x03\x04", b"PK\x06\x06", b"PK\x06\x07", b"{", b"[", b"\"",
                b"(", b")", b",", b"9" * 30, b"-1", b"1e999", b"NaN", b"\x1b[2J", b"../", b"\\u0000"]


def mutate_bytes(data: bytes, r: random.Random, n: int) -> bytes:
    out = bytearray(data)
    for _ in range(n):
        if not out:
            out += r.choice(_INTERESTING)
            continue
        pos = r.randrange(len(out))
        op = r.randrange(5)
        if op == 0:
            out[pos] ^= 1 << r.randrange(8)
        elif op == 1:
            val = r.choice(_INTERESTING)
            out[pos:pos + len(val)] = val
        elif op == 2:
            out[pos:pos] = r.choice(_INTERESTING) * r.randint(1, 4)
        elif op == 3:
            del out[pos:pos + r.randint(1, 16)]
        else:
            del out[pos:]
    return bytes(out)


def mutate(seed: bytes, r: random.Random) -> bytes:
    """One hostile variant of ``seed``: raw damage, or a member's content damaged and the pack rebuilt."""
    if r.random() < 0.35:
        return mutate_bytes(seed, r, r.randint(1, 6))
    members = _members(seed)
    name = r.choice(sorted(members))
    members[name] = mutate_bytes(members[name], r, r.randint(1, 4))
    if r.random() < 0.1 and len(members) > 1:  # or list a member under a second name
        other = r.choice(sorted(members))
        members[other + "x"] = members[other]
    return rebuild(members, deflate=r.random() < 0.3)


def entry_points(path: str, out_dir: str) -> dict[str, Callable[[], Any]]:
    """Every reader path a user reaches with a file they were handed."""

    def pack_all() -> None:
        with ckpt.Pack(path) as p:
            for slot in list(p.slots_info):
                for trusted in (False, ["collections.*", "numpy.*", "builtins.*"]):
                    try:
                        p.load(slot, trusted=trusted)
                    except ckpt.CkptError:
                        pass

    def zip_reader() -> None:
        with open(path, "rb") as f:
            r = _zip.ZipReader(f, file=path)
            for m in r.members.values():
                if m.size < (64 << 20):
                    r.read(m)

    return {
        "ZipReader": zip_reader,
        "ckpt.load": lambda: ckpt.load(path),
        "Pack.load": pack_all,
        "inspect": lambda: ckpt.inspect(path),
        "average": lambda: ckpt.average([path, path]),
        "cli": lambda: [_cli.main(["info", path]), _cli.main(["verify", path]),
                        _cli.main(["export", path, os.path.join(out_dir, "x.npz"), "--force"])],
    }


def check_file(data: bytes, directory: str, *, cli: bool = True) -> dict[str, str]:
    """Run every entry point on ``data``; return entry -> outcome ('ok' or the CkptError's class).

    Raises AssertionError for anything else: another exception type, or the canary having run."""
    path = os.path.join(directory, "fuzz.npz")
    with open(path, "wb") as f:
        f.write(data)
    outcomes = {}
    for entry, fn in entry_points(path, directory).items():
        if entry == "cli" and not cli:
            continue
        try:
            fn()
            outcomes[entry] = "ok"
        except ckpt.CkptError as e:
            outcomes[entry] = type(e).__name__
        except Exception as e:
            raise AssertionError(f"{entry} raised {type(e).__name__}: {e}") from e
        if CANARY:
            raise AssertionError(f"{entry} ran code from the file: {CANARY}")
    return outcomes


def pickle_canary_is_live() -> bool:
    """The control: the standard unpickler does run the seed's pickle."""
    pickle.loads(pickle.dumps([_Canary()]))
    ran = bool(CANARY)
    CANARY.clear()
    return ran
