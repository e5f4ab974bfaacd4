"""Hostile files built byte by byte: every reader path refuses them with a ckpt error, cheaply.

Each case is a small file (< 1 MB). Through every entry point (ckpt.load, Pack, inspect,
average, and the CLI's info/verify/diff/export) it must either load or raise a
:class:`ckpt.errors.CkptError` naming the file; peak RSS growth stays under 100 MB
(measured by resetting the kernel's high-water mark, /proc/self/clear_refs).
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from test_malformed import _set

import ckpt
from ckpt import _limits, cli as _cli
from ckpt.errors import CkptError, FormatError

MANIFEST = "__ckpt__/manifest.json"
RSS_LIMIT = 100 * 1024 * 1024


# -- measuring -------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def peak_rss_growth(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn``; (its result or exception, growth of peak RSS over the RSS before, in bytes)."""
    gc.collect()
    before = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pytest.skip("cannot reset the RSS high-water mark here")
    try:
        result: Any = fn()
    except Exception as e:  # the caller judges the exception
        result = e
    return result, (_status_kib("VmHWM") - before) * 1024


# -- building files --------------------------------------------------------------------------------
def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _slot_digest(hashes: list[str]) -> str:
    h = hashlib.sha256()
    for x in hashes:
        h.update(bytes.fromhex(x))
    return h.hexdigest()


def _npy(arr: np.ndarray) -> bytes:
    f = io.BytesIO()
    np.save(f, arr)
    return f.getvalue()


def _raw_npy(header: dict, data: bytes = b"") -> bytes:
    text = repr(header).encode("latin1")
    pad = (-(10 + len(text) + 1)) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data


def pack_bytes(members: dict[str, bytes], slots: dict[str, dict], *, deflate: frozenset = frozenset(),
               manifest_edit: Callable[[dict], Any] | None = None, raw_manifest: bytes | None = None,
               deflate_manifest: bool = False) -> bytes:
    """A self-consistent pack (hashes right) holding ``members`` and a manifest listing ``slots``."""
    doc = {"format": "ckpt.pack", "version": 1, "created_at": "2026-01-01T00:00:00.000000Z",
           "updated_at": "2026-01-01T00:00:00.000000Z", "metadata": {},
           "members": {n: {"size": len(b), "sha256": _sha(b)} for n, b in members.items()}, "slots": {}}
    for name, s in slots.items():
        mem = s["members"]
        doc["slots"][name] = {"serializer": s.get("serializer", "arrays"), "members": mem,
                              "size": sum(len(members[m]) for m in mem),
                              "sha256": _slot_digest([_sha(members[m]) for m in mem]),
                              "created_at": doc["created_at"], "dependencies": s.get("dependencies", {}),
                              "info": s.get("info", {})}
    if manifest_edit is not None:
        manifest_edit(doc)
    manifest = raw_manifest if raw_manifest is not None else json.dumps(doc).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b, zipfile.ZIP_DEFLATED if n in deflate else zipfile.ZIP_STORED)
        zf.writestr(MANIFEST, manifest, zipfile.ZIP_DEFLATED if deflate_manifest else zipfile.ZIP_STORED)
    return buf.getvalue()


W = np.arange(6, dtype=np.float32)
NAMES = _npy(np.array(["w"]))


def _main_pack(**kw: Any) -> bytes:
    return pack_bytes({"names.npy": NAMES, "0.npy": _npy(W)},
                      {"main": {"members": ["names.npy", "0.npy"],
                                "info": {"kind": "dict", "layout": "objax",
                                         "arrays": [{"name": "w", "shape": [6], "dtype": "float32"}]}}}, **kw)


def _manifest_of(doc_edit: Callable[[dict], Any]) -> bytes:
    base = json.loads(zipfile.ZipFile(io.BytesIO(_main_pack())).read(MANIFEST))
    doc_edit(base)
    return json.dumps(base).encode()


def _objax_npz(arrays: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, b in arrays.items():
            zf.writestr(n, b)
    return buf.getvalue()


def _deflated_json_slot(text: bytes) -> bytes:
    return pack_bytes({"names.npy": NAMES, "0.npy": _npy(W), "cfg/data.json": text},
                      {"main": {"members": ["names.npy", "0.npy"],
                                "info": {"kind": "dict", "layout": "objax",
                                         "arrays": [{"name": "w", "shape": [6], "dtype": "float32"}]}},
                       "cfg": {"serializer": "json", "members": ["cfg/data.json"]}},
                      deflate=frozenset({"cfg/data.json"}))


def _rename_slot(new: str) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        doc["slots"][new] = doc["slots"].pop("main")
    return edit


def _ckz_claiming(nbytes: int, chunk: int) -> bytes:
    head = json.dumps({"codec": "zstd", "level": 3, "filter": "none", "descr": "|u1", "shape": [nbytes],
                       "fortran_order": False, "nbytes": nbytes, "chunk_bytes": chunk}).encode()
    body = b"CKZ2" + struct.pack("<I", len(head)) + head
    # One chunk table: CRC, then one packed plane of 4 bytes (enough for the frame walk to pass).
    return body + struct.pack("<I", 0) + struct.pack("<IB", 4, 1) + b"\x28\xb5\x2f\xfd"


HOSTILE: dict[str, Callable[[], bytes]] = {
    # A compressed manifest that inflates to megabytes of empty objects.
    "deflated-manifest-of-empty-objects": lambda: _main_pack(
        manifest_edit=_set(["metadata", "pad"], [[{}] * 900_000, os.urandom(50_000).hex()]), deflate_manifest=True),
    "deflated-json-slot-of-empty-objects": lambda: _deflated_json_slot(
        b"[" + b"{}," * 1_500_000 + b'"' + os.urandom(30_000).hex().encode() + b'"]'),
    "requires-with-a-million-clauses": lambda: _main_pack(manifest_edit=_set(
        ["slots", "main", "dependencies"], {"numpy": {"version": "2.0", "requires": ",".join([">=0"] * 1_000_000)}}),
        deflate_manifest=True),
    "requires-with-17-clauses": lambda: _main_pack(manifest_edit=_set(
        ["slots", "main", "dependencies"], {"numpy": {"version": "2.0", "requires": ",".join([">=0"] * 17)}})),
    "20000-dependency-entries": lambda: _main_pack(manifest_edit=_set(
        ["slots", "main", "dependencies"], {f"p{i}": {"version": "1", "requires": ""} for i in range(20_000)}),
        deflate_manifest=True),
    "main-slot-lists-one-array-under-many-names": lambda: pack_bytes(
        {"names.npy": _npy(np.array([f"w{i}" for i in range(2000)])), "0.npy": _npy(np.zeros(50_000, np.float32))},
        {"main": {"members": ["names.npy"] + ["0.npy"] * 2000,
                  "info": {"kind": "dict", "layout": "objax",
                           "arrays": [{"name": f"w{i}", "shape": [50_000], "dtype": "float32"}
                                      for i in range(2000)]}}}, deflate=frozenset({"0.npy"})),
    "duplicate-manifest-keys": lambda: _main_pack(raw_manifest=_manifest_of(lambda d: None)[:-1]
                                                  + b', "version": 1}'),
    "slot-name-dotdot-escape-sequence": lambda: _main_pack(manifest_edit=_rename_slot("../x\x1b[2J")),
    "slot-name-300-chars": lambda: _main_pack(manifest_edit=_rename_slot("a" * 300)),
    "slot-name-control-chars": lambda: _main_pack(manifest_edit=_rename_slot("a\x1b[2Jb")),
    "pickle-record-with-huge-shape": lambda: pack_bytes(
        {"p/data.pkl": b"\x80\x05K\x01.", "names.npy": NAMES, "0.npy": _npy(W)},
        {"main": {"members": ["names.npy", "0.npy"],
                  "info": {"kind": "dict", "layout": "objax",
                           "arrays": [{"name": "w", "shape": [6], "dtype": "float32"}]}},
         "p": {"serializer": "pickle", "members": ["p/data.pkl"],
               "info": {"globals": [], "arrays": [{"shape": [10 ** 4000] * 40, "dtype": "float32"}] * 2}}}),
    "npy-subarray-descr": lambda: _objax_npz({"w.npy": _raw_npy(
        {"descr": ("<f8", (2,)), "fortran_order": False, "shape": (3,)}, b"\0" * 48)}),
    "npy-one-element-tuple-descr": lambda: _objax_npz({"w.npy": _raw_npy(
        {"descr": ("<f8",), "fortran_order": False, "shape": (3,)}, b"\0" * 24)}),
    "npy-zero-size-with-overflowing-dims": lambda: _objax_npz({"w.npy": _raw_npy(
        {"descr": "<f8", "fortran_order": False, "shape": (0, 2 ** 62, 2 ** 62)})}),
    "npy-zero-itemsize-2**40-elements": lambda: _objax_npz({"w.npy": _raw_npy(
        {"descr": "|V0", "fortran_order": False, "shape": (2 ** 40,)})}),
    "ckz-member-claiming-1-TiB": lambda: pack_bytes(
        {"names.npy": NAMES, "0.ckz": _ckz_claiming(1 << 40, 1 << 40)},
        {"main": {"members": ["names.npy", "0.ckz"],
                  "info": {"kind": "dict", "layout": "objax",
                           "arrays": [{"name": "w", "shape": [1 << 40], "dtype": "uint8", "encoding": "zstd"}]}}}),
    "ckz-member-claiming-1-TiB-in-small-chunks": lambda: pack_bytes(
        {"names.npy": NAMES, "0.ckz": _ckz_claiming(1 << 40, 1 << 20)},
        {"main": {"members": ["names.npy", "0.ckz"],
                  "info": {"kind": "dict", "layout": "objax",
                           "arrays": [{"name": "w", "shape": [1 << 40], "dtype": "uint8", "encoding": "zstd"}]}}}),
    "deflated-npy-declaring-more-than-it-holds": lambda: _lying_deflate(),
    "manifest-nested-100000-deep": lambda: _main_pack(raw_manifest=b"[" * 100_000 + b"]" * 100_000),
    "manifest-with-a-5000-digit-size": lambda: _main_pack(
        raw_manifest=_manifest_of(lambda d: None).replace(b'"size": ', b'"size": ' + b"9" * 5000, 1)),
    "npy-header-nested-deep": lambda: _objax_npz({"w.npy": _raw_npy_text(
        b"{'descr': " + b"[" * 20_000 + b"]" * 20_000 + b", 'fortran_order': False, 'shape': (1,)}")}),
    "deflated-names-member-declaring-a-gigabyte": lambda: _objax_npz_deflated({
        "names.npy": _npy(np.array(["x" * 250_000] * 1000)), "0.npy": _npy(W)}),
    "names-member-with-more-names-than-arrays": lambda: _objax_npz({
        "names.npy": _npy(np.array(["a", "b", "c"])), "0.npy": _npy(W)}),
}


def _raw_npy_text(text: bytes) -> bytes:
    pad = (-(10 + len(text) + 1)) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


def _objax_npz_deflated(arrays: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for n, b in arrays.items():
            zf.writestr(n, b)
    return buf.getvalue()


def _lying_deflate() -> bytes:
    raw = _npy(np.zeros(100_000, np.float32))
    data = bytearray(_objax_npz({"w.npy": raw}))
    # Turn the member into deflate data of the same bytes but claiming ~1000x as much.
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    comp = c.compress(raw) + c.flush()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("w.npy", raw)
    data = bytearray(buf.getvalue())
    cd = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, cd + 24, len(comp) * 1000)  # uncompressed size in the directory
    struct.pack_into("<I", data, 22, len(comp) * 1000)
    return bytes(data)


def _entry_points(path: str, tmp: str) -> dict[str, Callable[[], Any]]:
    return {
        "ckpt.load": lambda: ckpt.load(path),
        "Pack.load": lambda: _pack_load_all(path),
        "inspect": lambda: ckpt.inspect(path),
        "average": lambda: ckpt.average([path, path]),
        "cli-info": lambda: _cli.main(["info", path]),
        "cli-verify": lambda: _cli.main(["verify", path]),
        "cli-diff": lambda: _cli.main(["diff", path, path]),
        "cli-export": lambda: _cli.main(["export", path, os.path.join(tmp, "out.npz"), "--force"]),
    }


def _pack_load_all(path: str) -> Any:
    with ckpt.Pack(path) as p:
        return {s: p.load(s) for s in p.slots_info}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_file_is_refused_cheaply_on_every_reader_path(tmp_path, case, capsys):
    data = HOSTILE[case]()
    assert len(data) < 1_000_000, len(data)
    path = str(tmp_path / f"{case}.npz")
    with open(path, "wb") as f:
        f.write(data)
    del data
    refused = 0
    for entry, fn in _entry_points(path, str(tmp_path)).items():
        result, growth = peak_rss_growth(fn)
        assert growth < RSS_LIMIT, f"{entry}: peak RSS grew {growth / 2**20:.0f} MiB"
        if isinstance(result, Exception):
            assert isinstance(result, CkptError), f"{entry}: {type(result).__name__}: {result}"
            assert os.path.basename(path) in str(result), f"{entry}: {result}"
            refused += 1
        elif entry.startswith("cli-"):
            out, err = capsys.readouterr()
            if result:
                assert "Traceback" not in err and err.count("\n") <= 1, f"{entry}: {err!r}"
                assert os.path.basename(path) in out + err
                refused += 1
            assert "\x1b" not in out + err
    assert refused, f"{case}: accepted everywhere"


def test_escape_sequences_in_names_never_reach_the_terminal(tmp_path, capsys):
    evil = "w\x1b[2J\x1b]0;pwned\x07\u202e\x9b"
    path = str(tmp_path / "e.npz")
    np.savez(path, **{evil: np.arange(3.0)})
    other = str(tmp_path / "f.npz")
    np.savez(other, **{evil: np.arange(3.0) + 1})
    for argv in (["info", path], ["diff", path, other], ["verify", path], ["ls", str(tmp_path)],
                 ["info", "--json", path]):
        _cli.main(argv)
        out, err = capsys.readouterr()
        for bad in ("\x1b", "\x07", "\u202e", "\x9b"):
            assert bad not in out and bad not in err, (argv, out, err)
    _cli.main(["info", path])
    assert "\\x1b[2J" in capsys.readouterr().out


def test_export_never_writes_names_ckpt_refuses_to_read(tmp_path, capsys):
    src = str(tmp_path / "src.npz")
    ckpt.dump({"a": np.arange(3.0), "a.npy": np.arange(2.0)}, src, serializer="arrays")
    out = str(tmp_path / "out.npz")
    assert _cli.main(["export", src, out]) == 1
    assert "cannot be .npz member names" in capsys.readouterr().err
    assert not os.path.exists(out)
    ok = str(tmp_path / "ok.npz")
    ckpt.dump({"a": np.arange(3.0), "b/c": np.arange(2.0)}, src, serializer="arrays")
    assert _cli.main(["export", src, ok]) == 0
    loaded = ckpt.load(ok)
    assert sorted(loaded) == ["a", "b/c"]


def test_average_of_a_file_named_with_superscript_digits(tmp_path):
    path = str(tmp_path / "²³.npz")
    np.savez(path, w=np.arange(4.0))
    avg = ckpt.average([path, path])
    np.testing.assert_array_equal(avg["w"], np.arange(4.0))


def test_zero_initialised_moments_from_savez_compressed_load_once(tmp_path):
    path = str(tmp_path / "adam.npz")
    zeros = np.zeros(8 << 20, np.float32)  # 32 MiB, deflates ~1000:1
    np.savez_compressed(path, m=zeros, v=zeros)
    assert os.path.getsize(path) < 100_000
    loaded, growth = peak_rss_growth(lambda: ckpt.load(path))
    assert not isinstance(loaded, Exception), loaded
    assert sorted(loaded) == ["m", "v"] and not loaded["m"].any() and not loaded["v"].any()
    declared = 2 * zeros.nbytes
    # Built once: the returned arrays plus bounded working memory (no second copy of either).
    assert growth < declared + 40 * 2**20, growth / 2**20
    np.testing.assert_array_equal(np.load(path)["m"], loaded["m"])


def test_legitimate_manifest_limits_are_generous():
    assert _limits.MAX_JSON_NODES >= 1_000_000
    assert _limits.JSON_NODES_FREE >= 65536


def test_deflated_npy_that_lies_about_its_size_is_refused(tmp_path):
    path = tmp_path / "lie.npz"
    path.write_bytes(_lying_deflate())
    with pytest.raises(FormatError, match="lie.npz"):
        ckpt.load(str(path))


def test_stored_manifest_of_empty_containers_stays_cheap(tmp_path):
    # Stored, a manifest cannot hold more JSON values than bytes: it parses within the limits.
    path = tmp_path / "big.npz"
    path.write_bytes(_main_pack(raw_manifest=_manifest_of(_set(["metadata", "pad"], [[], {}] * 110_000))))
    assert path.stat().st_size < 1_000_000
    for fn in (lambda: ckpt.load(str(path)), lambda: ckpt.inspect(str(path))):
        result, growth = peak_rss_growth(fn)
        assert not isinstance(result, Exception), result
        assert growth < RSS_LIMIT, growth / 2**20


@pytest.mark.parametrize("name", ["a" * 300, "a\x1b[2Jb", "_reserved", "", "x\u202e"])
def test_reader_enforces_the_writers_slot_name_rules(tmp_path, name):
    with pytest.raises(ValueError):
        ckpt.pack.check_slot_name(name)  # the writer refuses it...
    path = tmp_path / "bad.npz"
    path.write_bytes(_main_pack(manifest_edit=_rename_slot(name)))
    with pytest.raises(FormatError, match="slot name") as info:  # ...and so does the reader
        ckpt.Pack(str(path))
    assert "bad.npz" in str(info.value)


def test_names_member_with_invalid_code_points_is_a_format_error(tmp_path):
    # Found by the fuzzer: numpy raises SystemError converting a '<U' array holding code point 0x110000.
    names = bytearray(_npy(np.array(["w"])))
    names[-4:] = struct.pack("<I", 0x110000)
    path = tmp_path / "cp.npz"
    path.write_bytes(_objax_npz({"names.npy": bytes(names), "0.npy": _npy(W)}))
    with pytest.raises(FormatError, match="not Unicode characters"):
        ckpt.load(str(path))


@pytest.mark.parametrize("descr", ["(,)<f8", "<f8,(", "2,", "(2,)(3,)<f8"])
def test_dtype_strings_numpy_parses_with_literal_eval_are_format_errors(tmp_path, descr):
    # Found by the fuzzer: numpy's comma-string parser raises a raw SyntaxError.
    path = tmp_path / "d.npz"
    path.write_bytes(_objax_npz({"w.npy": _raw_npy({"descr": descr, "fortran_order": False, "shape": (1,)},
                                                   b"\0" * 8)}))
    with pytest.raises(FormatError, match="w.npy|'w'"):
        ckpt.load(str(path))
    with pytest.raises(FormatError):
        ckpt._npy.dtype_from_name(descr, where="x")
