"""How a slot's value becomes members, and back: arrays (.npy), json, raw bytes, pickle.

The serializer is chosen by the value's type (:func:`choose`): arrays and
collections of arrays go to ``.npy`` members, JSON-able values to JSON, bytes
to a raw member, and anything else only to pickle, which is never loaded
unless the caller trusts the file.
"""

from __future__ import annotations

import functools
import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, TypeVar, Union

import numpy as np

from . import _codec, _json, _limits, _module_pickle, _npy, _pickle_policy as _policy, _snapshot, _tagged, collections as _coll
from ._members import Buffer, Encoded, MemberSource
from ._pickle_scan import PickleScan, scan, scan_globals, top_level_packages
from .errors import FormatError, UntrustedPickleError, attach

__all__ = ["Buffer", "Encoded", "MemberSource", "Trusted", "ArraysView", "choose", "is_jsonable"]
Trusted = Union[bool, Sequence[str]]


# -- choosing -------------------------------------------------------------
def is_jsonable(obj: Any, _depth: int = 0) -> bool:
    """True if JSON round-trips ``obj`` exactly (exact types only: a tuple is not a list)."""
    if _depth > 200:
        return False
    t = type(obj)
    if obj is None or t in (bool, str):
        return True
    if t is int:
        return True
    if t is float:
        return True  # NaN and infinities are written as NaN/Infinity (see docs/FORMAT.md)
    if t is list:
        return all(is_jsonable(x, _depth + 1) for x in obj)
    if t is dict:
        return all(type(k) is str and is_jsonable(v, _depth + 1) for k, v in obj.items())
    return False


def choose(obj: Any) -> str:
    """The serializer a value gets by default."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return "raw"
    if _coll.flatten(obj) is not None:
        return "arrays"
    if is_jsonable(obj) or _tagged.encodable(obj):
        return "json"  # plain JSON, or tagged JSON for tuples, int keys, bytes, ... (no pickle)
    return "pickle"


def snapshot_leaf(leaf: Any, buffers: Optional[_snapshot.Snapshot] = None) -> Any:
    """A leaf that later mutation cannot change: numpy arrays are copied (a read-only array may view
    memory the caller still writes, e.g. ``np.broadcast_to``; into reused ``buffers`` when given), JAX arrays are immutable and kept by reference (their
    device-to-host copy is started now)."""
    if isinstance(leaf, np.ndarray):
        if buffers is not None:  # every array, read-only ones too: one may view memory the caller writes
            return buffers.copy(leaf)
        return np.array(leaf, copy=True, order="K")
    if _coll.is_jax_array(leaf):
        if all(d.platform == "cpu" for d in getattr(leaf, "devices", lambda: [])()):
            # A host view now (no copy): while it lives JAX does not donate the buffer to a later
            # jit(donate_argnums=...), so the loop cannot reuse the memory under the writer.
            return np.asarray(_coll.storable(leaf))
        start = getattr(leaf, "copy_to_host_async", None)
        if start is not None:
            start()
    return leaf


# -- arrays ---------------------------------------------------------------
def _data_chunks(leaf: Any) -> Iterable[memoryview]:
    arr = _coll.to_host(leaf)
    if arr.flags.f_contiguous and not arr.flags.c_contiguous:
        arr = arr.T
    arr = np.ascontiguousarray(arr)
    flat = arr.reshape(-1).view(np.uint8)
    step = _limits.CHUNK_BYTES
    for start in range(0, flat.nbytes, step):
        yield flat[start:start + step].data


@dataclass
class _Planned:
    """An array that a sample says is worth compressing, and which of its byte planes to compress."""

    raw: memoryview
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    use: tuple[bool, ...]
    compression: _codec.Compression


def _plan_compression(leaf: Any, compression: _codec.Compression) -> Optional[_Planned]:
    arr = _coll.to_host(leaf)
    fortran = arr.ndim > 1 and arr.flags.f_contiguous and not arr.flags.c_contiguous
    data = np.ascontiguousarray(arr.T if fortran else arr)
    if data.nbytes < 4096:
        return None
    raw = data.reshape(-1).view(np.uint8).data
    shape, dtype = _coll.shape_dtype(leaf)
    use = _codec.plan(raw, dtype.itemsize, compression)
    return None if use is None else _Planned(raw, shape, dtype, fortran, use, compression)


def _compressed_source(index: int, leaf: Any, p: _Planned, encoder: _codec.Encoder) -> MemberSource:
    """The compressed member of an array whose sample showed compression pays."""
    head = _codec.header(p.shape, p.dtype, p.fortran, p.compression, p.raw.nbytes)
    job = encoder.add(head, p.raw, p.dtype.itemsize, p.use, p.compression)
    return MemberSource(f"{index}.ckz", _codec.max_size(p.raw.nbytes, p.dtype.itemsize), lambda: encoder.chunks(job),
                        id(leaf), exact=False)


def _npy_source(suffix: str, leaf: Any,
                shape_dtype: Optional[tuple[tuple[int, ...], np.dtype]] = None) -> MemberSource:
    shape, dtype = shape_dtype or _coll.shape_dtype(leaf)
    fortran = isinstance(leaf, np.ndarray) and leaf.ndim > 1 and leaf.flags.f_contiguous and not leaf.flags.c_contiguous
    header = _npy.header_bytes(shape, dtype, fortran)
    size = len(header) + math.prod(shape) * dtype.itemsize

    def chunks() -> Iterable[Buffer]:
        yield header
        yield from _data_chunks(leaf)

    return MemberSource(suffix, size, chunks, id(leaf))


def _names_array(names: list[str]) -> np.ndarray:
    return np.array(names, dtype=f"<U{max([1, *map(len, names)])}")


def encode_arrays(obj: Any, *, snapshot: bool = False,
                  compression: Optional[_codec.Compression] = None,
                  buffers: Optional[_snapshot.Snapshot] = None) -> Encoded:
    flat = _coll.flatten(obj)
    if flat is None:
        raise TypeError(f"cannot store a {type(obj).__name__} as arrays: expected an array, a dict of arrays, "
                        "an objax VarCollection or a pytree of arrays")
    bad = [n for n in flat.names if n.endswith("\x00")]
    if bad:  # names.npy is a numpy unicode array, which drops trailing NULs
        raise ValueError(f"array names cannot end with a NUL character: {bad[:5]!r}")
    names_arr = _names_array(flat.names)
    members = [_npy_source("names.npy", names_arr)]
    members[0].identity = None
    arrays_info = []
    leaves = [snapshot_leaf(x, buffers) for x in flat.leaves] if snapshot else flat.leaves
    encoder = _codec.Encoder()  # compresses ahead of the writer, across arrays
    plans: list[Optional[_Planned]] = [None] * len(leaves)
    if compression is not None:  # sample every array on the codec threads
        plans = _codec.parallel_map(lambda leaf: _plan_compression(leaf, compression), leaves)
    dtype_names: dict[np.dtype, str] = {}  # a model has few dtypes and many arrays: name each once
    for i, (name, leaf) in enumerate(zip(flat.names, leaves)):
        planned = plans[i]
        shape, dtype = _coll.shape_dtype(leaf)
        packed = None if planned is None else _compressed_source(i, leaf, planned, encoder)
        members.append(packed or _npy_source(f"{i}.npy", leaf, (shape, dtype)))
        if dtype not in dtype_names:
            dtype_names[dtype] = _npy.dtype_name(dtype)
        record = {"name": name, "shape": list(shape), "dtype": dtype_names[dtype], **flat.leaf_info(i)}
        if planned is not None:
            record["encoding"] = planned.compression.codec + ("+shuffle" if dtype.itemsize > 1 else "")
        arrays_info.append(record)
    info: dict[str, Any] = {"kind": flat.kind, "layout": "objax", "arrays": arrays_info}
    if flat.tree is not None:
        info["tree"] = flat.tree
    needed = set()
    if any(_npy.is_extension_dtype(dt) for dt in dtype_names):
        needed.add("ml_dtypes")
    return Encoded("arrays", members, info, needed=needed, informational=set(flat.frameworks))


_SMALL_HEAD = 4096


def _unshared(arrays: dict[str, np.ndarray], members: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Identical arrays are stored once; each name still gets its own writable memory."""
    seen: set[str] = set()
    for n, arr in list(arrays.items()):
        if members[n] in seen:
            arrays[n] = np.array(arr, copy=True)
        seen.add(members[n])
    return arrays


def _check_names_shape(shape: tuple[int, ...], dtype: np.dtype, count: int, where: str,
                       file: Optional[str] = None) -> None:
    """A names member is ``count`` unicode names, each at most MAX_NAME_BYTES characters (checked from
    the header, before the names are read or converted: a huge names member costs memory)."""
    if len(shape) != 1 or dtype.kind != "U":
        raise FormatError(f"{where}: names member is not a 1-D unicode array (found {dtype} with shape {shape})",
                          file=file)
    if shape[0] != count:
        raise FormatError(f"{where}: {shape[0]} names for {count} array members", file=file)
    if dtype.itemsize > 4 * _limits.MAX_NAME_BYTES:
        raise FormatError(f"{where}: names member holds names of up to {dtype.itemsize // 4} characters, over the "
                          f"limit of {_limits.MAX_NAME_BYTES}", file=file)


_F = TypeVar("_F", bound=Callable[..., Any])


def _about_slot(method: _F) -> _F:
    """Errors a view's method raises name the view's file and slot (the parsers below know neither)."""

    @functools.wraps(method)
    def wrapper(self: "ArraysView", *args: Any, **kwargs: Any) -> Any:
        with attach(self.file, self.slot):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class ArraysView:
    """Lazy, verified access to the arrays of one stored slot.

    ``read_member`` must return the member's complete, verified bytes.
    """

    def __init__(self, members: list[str], info: dict[str, Any], read_member: Callable[..., Any],
                 read_head: Callable[..., bytes], member_size: Callable[[str], int], where: str,
                 verify_members: Optional[Callable[[list[str]], None]] = None,
                 read_many: Optional[Callable[[list[str]], dict[str, Any]]] = None, *,
                 file: Optional[str] = None, slot: Optional[str] = None):
        self.file, self.slot = file, slot
        self._read_member = read_member
        self._read_many = read_many
        self._verify_members = verify_members
        self._read_head = read_head
        self._size = member_size
        self.where = where
        self.info = info
        layout = info.get("layout", "objax")
        if layout == "objax":
            if not members:
                raise FormatError(f"{where}: arrays slot has no names.npy member", file=self.file, slot=self.slot)
            if not members[0].endswith(".ckz"):
                # Checked from the header, before the member is read (or inflated).
                head = _npy.parse_header(read_head(members[0]), member_size(members[0]),
                                         where=f"{where} member {members[0]!r}")
                _check_names_shape(head.shape, head.dtype, len(members) - 1, where, file)
            names_arr = self._array(members[0])
            _check_names_shape(names_arr.shape, names_arr.dtype, len(members) - 1, where, file)
            codes = np.frombuffer(names_arr.astype("<U").tobytes(), dtype="<u4")
            if codes.size and (int(codes.max()) > 0x10FFFF or bool(((codes >= 0xD800) & (codes < 0xE000)).any())):
                raise FormatError(f"{where}: names member holds code points that are not Unicode characters", file=self.file, slot=self.slot)
            self.names = [str(n) for n in names_arr]
            self._members = list(members[1:])
        elif layout == "named":
            self.names = [str(a["name"]) for a in info.get("arrays", [])]
            self._members = list(members)
        else:
            raise FormatError(f"{where}: unknown arrays layout {layout!r}", file=self.file, slot=self.slot)
        if len(self.names) != len(self._members):
            raise FormatError(f"{where}: {len(self.names)} names for {len(self._members)} array members", file=self.file, slot=self.slot)
        if len(set(self.names)) != len(self.names):
            dup = sorted(n for n, c in Counter(self.names).items() if c > 1)
            raise FormatError(f"{where}: duplicate array names {dup[:10]}", file=self.file, slot=self.slot)
        recorded = info.get("arrays")
        self._dtypes: dict[str, Optional[np.dtype]] = {}
        if isinstance(recorded, list) and len(recorded) == len(self.names):
            for n, a in zip(self.names, recorded):
                dt = a.get("dtype") if isinstance(a, dict) else None
                self._dtypes[n] = _npy.dtype_from_name(dt, where=where) if isinstance(dt, str) else None
        self._index = {n: m for n, m in zip(self.names, self._members)}
        self._names_by_member = {m: n for n, m in self._index.items()}
        self._headers: dict[str, _npy.NpyHeader] = {}
        self._raw_headers: dict[str, tuple[bytes, _npy.NpyHeader]] = {}

    def _array(self, member: str, *, dtype: Optional[np.dtype] = None,
               copy: bool = True, known: Optional[tuple[bytes, _npy.NpyHeader]] = None,
               data: Any = None) -> np.ndarray:
        if data is None:
            data = self._read_member(member, copy and not member.endswith(".ckz"))
        if member.endswith(".ckz"):
            return _codec.decode_many([self._compressed(member, data, dtype)])[0]
        if known is not None and bytes(data[:len(known[0])]) == known[0]:
            header = known[1]  # the verified bytes hold the header already parsed: no second parse
        else:
            header = _npy.parse_header(bytes(data[:_limits.MAX_NPY_HEADER_BYTES]), len(data),
                                       where=f"{self.where} member {member!r}")
        return _npy.array_from_buffer(data, header, dtype=dtype)

    def _compressed(self, member: str, data: Any,
                    dtype: Optional[np.dtype]) -> tuple[Any, _codec.Header, str, Optional[np.dtype]]:
        name = self._names_by_member.get(member)
        where = f"{self.where} array {name!r} (member {member!r})" if name else f"{self.where} member {member!r}"
        return data, _codec.parse_header(data[:_limits.MAX_NPY_HEADER_BYTES + 8], where=where), where, dtype

    @_about_slot
    def verify(self, names: Iterable[str]) -> None:
        """Check the hashes of these arrays up front, in parallel where the file is mapped."""
        if self._verify_members is not None:
            self._verify_members([self._index[n] for n in names if n in self._index])

    def _head(self, member: str, size: int) -> bytes:
        """The start of a member holding its whole header: a small read first (headers are
        usually under 200 bytes), the reader's full header limit only when that cuts it short."""
        if member.endswith(".ckz"):
            return self._read_head(member)
        head = self._read_head(member, _SMALL_HEAD)
        if len(head) >= min(size, 12) and len(head) < size:
            try:
                _npy.parse_header(head, size, where=self.where)
            except FormatError:
                return self._read_head(member)  # a long (or broken) header: read all the limit allows
        return head

    @_about_slot
    def header(self, name: str) -> _npy.NpyHeader:
        """Shape and dtype of one array, from its .npy header (not yet verified by hash)."""
        if name not in self._headers:
            member = self._index[name]
            size = self._size(member)
            head = self._head(member, size)
            if member.endswith(".ckz"):
                c = _codec.parse_header(head, where=f"{self.where} array {name!r}")
                h = _npy.NpyHeader(c.dtype, c.shape, c.fortran_order, -1)
            else:
                h = _npy.parse_header(head, size, where=f"{self.where} array {name!r}")
                self._raw_headers[name] = (head[:h.header_len], h)
            self._headers[name] = self._recorded(name, h)
        return self._headers[name]

    def _recorded(self, name: str, h: _npy.NpyHeader) -> _npy.NpyHeader:
        """The header with the dtype the manifest records in place of its opaque void stand-in."""
        true = self._dtypes.get(name)
        if true is not None and true != h.dtype:
            if true.itemsize != h.dtype.itemsize or h.dtype.kind != "V":
                raise FormatError(f"{self.where}: array {name!r} is recorded as {true} but stored as {h.dtype}", file=self.file, slot=self.slot)
            h = _npy.NpyHeader(true, h.shape, h.fortran_order, h.header_len)
        return h

    @_about_slot
    def member(self, name: str) -> str:
        """The member that holds array ``name``."""
        return self._index[name]

    def shape_dtype(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        h = self.header(name)
        return h.shape, h.dtype

    @_about_slot
    def stored(self, name: str) -> tuple[Optional[str], int]:
        """How one array is stored: its encoding (None for plain .npy, else e.g. "zstd+shuffle")
        and its member's size in bytes."""
        member = self._index[name]
        encoding = None
        if member.endswith(".ckz"):
            records = self.info.get("arrays")
            i = self.names.index(name)
            rec = records[i] if isinstance(records, list) and i < len(records) else None
            encoding = str(rec.get("encoding")) if isinstance(rec, dict) and rec.get("encoding") else "ckz"
        return encoding, self._size(member)

    @_about_slot
    def read_all(self, names: Optional[Iterable[str]] = None) -> dict[str, np.ndarray]:
        """Every array (or those ``names``), verified, each in its own writable memory (read and
        hashed two at a time)."""
        wanted = list(self.names if names is None else dict.fromkeys(names))
        if self._read_many is None:
            return {n: self.read(n) for n in wanted}
        plain = [n for n in wanted if not self._index[n].endswith(".ckz")]
        packed = [n for n in wanted if n not in plain]
        self.verify(packed)  # compressed members: hashed in parallel, then decoded all at once
        decoded = dict(zip(packed, _codec.decode_many(
            [self._compressed(self._index[n], self._read_member(self._index[n], False), self.header(n).dtype)
             for n in packed])))
        # The members first, in one pass in file order; each header is then parsed from the bytes read
        # (no small read per header before the bulk read).
        buffers = self._read_many([self._index[n] for n in plain])
        out = {}
        for n in wanted:
            member = self._index[n]
            if n in decoded:
                out[n] = decoded[n]
                h = self.header(n)
            elif member in buffers:
                data = buffers[member]
                h = self._recorded(n, _npy.header_of(data, where=f"{self.where} array {n!r}"))
                known = self._headers.setdefault(n, h)
                out[n] = _npy.array_from_buffer(data, h, dtype=h.dtype)
                if known.shape != h.shape:
                    h = known  # read earlier from a header that has changed since: refused below
            else:
                h = self.header(n)
                out[n] = self.read(n)
            if out[n].shape != h.shape:
                raise FormatError(f"{self.where}: array {n!r} header changed between reads", file=self.file, slot=self.slot)
        return _unshared(out, self._index)

    @_about_slot
    def read(self, name: str, *, copy: bool = True) -> np.ndarray:
        """One array, verified: in its own writable memory, or with ``copy=False`` a read-only
        view of the memory-mapped file where possible (no copy until the caller assigns it)."""
        if name not in self._index:
            raise KeyError(name)
        h = self.header(name)
        arr = self._array(self._index[name], dtype=h.dtype, copy=copy, known=self._raw_headers.get(name))
        if arr.shape != h.shape:
            raise FormatError(f"{self.where}: array {name!r} header changed between reads", file=self.file, slot=self.slot)
        return arr

    @_about_slot
    def as_value(self) -> Any:
        """The slot's value as it was dumped: an array, a scalar, a dict, or a nested tree."""
        kind = self.info.get("kind", "dict")
        arrays: dict[str, Any] = self.read_all()  # copies: callers may write to them
        for n, rec in zip(self.names, self.info.get("arrays") or []):
            if isinstance(rec, dict) and isinstance(rec.get("key_impl"), str):
                arrays[n] = _coll.wrap_key(arrays[n], rec["key_impl"], where=self.where)
        if kind == "array" and len(self.names) == 1:
            return arrays[self.names[0]]
        if kind == "scalar" and len(self.names) == 1:
            return arrays[self.names[0]][()]
        if kind == "tree" and "tree" in self.info:
            return _coll.unflatten_tree(self.info["tree"], [arrays[n] for n in self.names], where=self.where)
        return arrays


# -- json / raw -----------------------------------------------------------
def encode_json(obj: Any) -> Encoded:
    """Plain JSON when it holds ``obj`` exactly; else tagged JSON (``info["encoding"] == "tagged"``)."""
    info: dict[str, Any] = {}
    if is_jsonable(obj):
        doc = obj
    elif _tagged.encodable(obj):
        doc, info = _tagged.encode(obj), {"encoding": "tagged"}
    else:
        raise TypeError(f"{type(obj).__name__} value is not JSON-serialisable exactly (only None, bool, int, "
                        "float, str, bytes, complex, and lists, tuples, sets and dicts of them are); use "
                        "serializer='pickle' or convert it")
    data = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Encoded("json", [MemberSource("data.json", len(data), lambda: [data])], info=info,
                   informational={"numpy"})


def decode_json(data: Any, where: str, info: Optional[Mapping[str, Any]] = None, *,
                stored_bytes: Optional[int] = None, file: Optional[str] = None) -> Any:
    """A JSON slot's value; ``stored_bytes`` (its size in the file) bounds how many values it may hold."""
    if len(data) > _limits.MAX_JSON_BYTES:
        raise FormatError(f"{where}: JSON slot of {len(data)} bytes is over the limit of {_limits.MAX_JSON_BYTES}",
                          file=file)
    doc = _json.parse(data, stored_bytes=stored_bytes, what=f"{where}: JSON slot", file=file)
    encoding = (info or {}).get("encoding")
    if encoding is None:
        return doc
    if encoding == "tagged":
        return _tagged.decode(doc, where)
    raise FormatError(f"{where}: unknown JSON encoding {encoding!r:.40} (this ckpt knows 'tagged')", file=file)


def encode_raw(obj: Any) -> Encoded:
    data = bytes(obj)
    return Encoded("raw", [MemberSource("data.bin", len(data), lambda: [data])], informational={"numpy"})


# -- pickle ---------------------------------------------------------------
def encode_pickle(obj: Any, *, snapshot: bool = False,
                  buffers: Optional[_snapshot.Snapshot] = None) -> Encoded:
    """A pickle member holding structure only, then one .npy member per array it referenced."""
    data, arrays = _module_pickle.dumps(obj)
    kinds = ["jax" if _coll.is_jax_array(a) else "numpy" for a in arrays]
    if snapshot:
        arrays = [snapshot_leaf(a, buffers) for a in arrays]
    globals_ = scan_globals(data)
    members = [MemberSource("data.pkl", len(data), lambda: [data])]
    arrays_info = []
    for i, arr in enumerate(arrays):
        members.append(_npy_source(f"{i}.npy", arr))
        shape, dtype = _coll.shape_dtype(arr)
        arrays_info.append({"shape": list(shape), "dtype": _npy.dtype_name(dtype),
                            "kind": kinds[i]})
    needed = top_level_packages(globals_)
    if any(_npy.is_extension_dtype(_coll.shape_dtype(a)[1]) for a in arrays):
        needed.add("ml_dtypes")
    return Encoded("pickle", members, info={"globals": globals_, "arrays": arrays_info}, needed=needed,
                   strictness="minor")


def check_trusted(trusted: Trusted, found: PickleScan, where: str, *, file: Optional[str] = None,
                  slot: Optional[str] = None) -> Trusted:
    """Raise UntrustedPickleError unless the pickle cannot run code or ``trusted`` admits all it imports.

    Returns the trust to unpickle with: ``True``, or the allow-list (``[]`` for a pickle that imports
    no globals: it loads without trust). ``found`` is the opcode scan of the pickle.
    """
    if trusted is True:
        return True
    globals_ = found.globals
    if trusted is False or trusted is None or isinstance(trusted, (str, bytes)):
        if not globals_ and not found.problems:
            return []  # it imports nothing, so nothing it calls can run code: no trust needed
        shown = ", ".join(globals_)
        primitives = [g for g in globals_ if _policy.name_denied(g)]
        exact = [g for g in globals_ if g not in _policy.ALWAYS]
        hint = (f" It uses {', '.join(primitives)}, which can run any code: only trusted=True loads it."
                if primitives else f" To accept exactly these, pass trusted={exact!r}."
                if all(g in _policy.VETTED for g in exact) and not found.problems else "")
        problems = f" It also {'; '.join(found.problems)}." if found.problems else ""
        raise UntrustedPickleError(
            f"{where} is a pickle, and unpickling runs code chosen by whoever wrote the file. It would import: "
            f"{shown}.{problems} Pass trusted=True if you trust this file, or trusted=[...] listing the classes "
            f"you have reviewed.{hint}",
            file=file, slot=slot, globals=globals_,
        )
    patterns = list(trusted)
    refused = [g for g in globals_ if not _policy.admitted(g, patterns)]
    if refused or found.problems:
        primitives = [g for g in refused if _policy.name_denied(g)]
        why = (f"; {', '.join(primitives)} can run any code, so no allow-list admits them (only trusted=True)"
               if primitives else "")
        what = (f"would import {', '.join(refused)}, not in the allow-list {patterns}{why}" if refused
                else f"{'; '.join(found.problems)}, which no allow-list admits (only trusted=True)")
        raise UntrustedPickleError(f"{where}: the pickle {what}; nothing was executed",
                                   file=file, slot=slot, globals=refused)
    return patterns


def decode_pickle(data: Any, trusted: Trusted, where: str, *, load_array: Optional[Callable[[int, str], Any]] = None,
                  file: Optional[str] = None, slot: Optional[str] = None) -> Any:
    """Unpickle only when ``trusted`` is True, or under an allow-list of ``module.qualname`` patterns.

    The opcodes are read first; nothing is imported or run unless the pickle cannot run
    code or the caller's trust covers everything it imports.
    """
    raw = bytes(data)
    found = scan(raw, where=where)
    trust = check_trusted(trusted, found, where, file=file, slot=slot)

    def no_arrays(i: int, kind: str) -> Any:
        raise FormatError(f"{where}: the pickle refers to array {i}, which the slot does not hold", file=file,
                          slot=slot)

    try:
        return _module_pickle.loads(raw, load_array or no_arrays, trust, where, frozenset(found.called))
    except UntrustedPickleError as e:
        e.file, e.slot = file, slot
        raise
    except (FormatError, RecursionError, MemoryError):
        raise
    except Exception as e:
        raise FormatError(f"{where}: unpickling failed ({type(e).__name__}: {e})", file=file, slot=slot) from e
