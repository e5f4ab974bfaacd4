"""Restore anywhere: assemble any slice of a sharded array from the chunks that overlap it.

Each process reads only the chunks its own devices' slices overlap (whole chunk members, so
each is checked against its recorded hash), never whole shard files; without a sharded
template the full arrays come back as numpy.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Mapping, Optional

import numpy as np

from .. import _npy, collections as _coll
from ..errors import FormatError
from ..varfile import open_reader
from . import layout
from .record import Record

_stats = threading.local()


def last_restore_stats() -> dict[str, int]:
    """Bytes of chunk data and chunk count this thread's last multi-process restore read."""
    return dict(getattr(_stats, "value", {"bytes_read": 0, "chunks_read": 0, "shard_files": 0}))


def _overlap(a: layout.Box, b: layout.Box) -> Optional[layout.Box]:
    out = []
    for (s0, e0), (s1, e1) in zip(a, b):
        s, e = max(s0, s1), min(e0, e1)
        if s >= e:
            return None
        out.append([s, e])
    return out


class ShardSet:
    """The shard files of one record, opened on demand, with a count of the bytes read."""

    def __init__(self, record: Record, *, verify: bool = True):
        self.record = record
        self.verify = verify
        self._stack = contextlib.ExitStack()
        self._views: dict[tuple[int, str], Any] = {}
        self._cache: dict[tuple[int, str], np.ndarray] = {}
        self.bytes_read = 0
        self.chunks_read = 0

    def __enter__(self) -> "ShardSet":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()
        _stats.value = {"bytes_read": self.bytes_read, "chunks_read": self.chunks_read,
                        "shard_files": len({k[0] for k in self._views})}

    def _view(self, shard: int, slot: str) -> Any:
        key = (shard, slot)
        if key not in self._views:
            path = self.record.shard_path(shard)
            reader = self._stack.enter_context(open_reader(path))
            self._check_belongs(shard, reader)
            self._views[key] = reader.arrays(slot, verify=self.verify)
        return self._views[key]

    def _check_belongs(self, shard: int, reader: Any) -> None:
        """The shard file says it is this record's (step, process, save id): a shard of another save
        put in its place is refused even when its size happens to match."""
        meta = reader.metadata.get("ckpt")
        mine = meta.get("shard") if isinstance(meta, dict) else None
        want = {"step": self.record.step, "process": self.record.shards[shard]["process"],
                "save_id": self.record.save_id}
        found = {k: mine.get(k) for k in want} if isinstance(mine, dict) else None
        if found != want:
            path = self.record.shard_path(shard)
            raise FormatError(f"{path}: not the shard file the commit record {self.record.path} lists (it says "
                              f"{found}, the record expects {want})", file=path)

    def _chunk(self, shard: int, slot: str, key: str) -> np.ndarray:
        if (shard, key) not in self._cache:
            view = self._view(shard, slot)
            if key not in view.names:
                raise FormatError(f"{self.record.path}: shard file {self.record.shard_path(shard)} lacks chunk "
                                  f"{key!r} of slot {slot!r}", file=self.record.shard_path(shard), slot=slot)
            arr = view.read(key)
            self.bytes_read += view.stored(key)[1]
            self.chunks_read += 1
            self._cache[(shard, key)] = arr
        return self._cache[(shard, key)]

    def region(self, slot: str, rec: Mapping[str, Any], box: layout.Box) -> np.ndarray:
        """The slice ``box`` of one stored array, from every chunk that overlaps it."""
        dtype = _npy.dtype_from_name(rec["dtype"], where=f"{self.record.path} slot {slot!r}")
        out = np.empty([b - a for a, b in box], dtype=dtype)
        filled = 0
        for c in rec["chunks"]:
            part = _overlap(c["box"], box) if box else []
            if part is None:
                continue
            data = self._chunk(c["shard"], slot, c["key"])
            want = tuple(int(b - a) for a, b in c["box"])
            if data.shape != want:
                raise FormatError(f"{self.record.path}: chunk {c['key']!r} has shape {data.shape}, the record "
                                  f"says {want}", file=self.record.shard_path(c["shard"]), slot=slot)
            src = tuple(slice(s - c0, e - c0) for (s, e), (c0, _) in zip(part, c["box"]))
            dst = tuple(slice(s - b0, e - b0) for (s, e), (b0, _) in zip(part, box))
            out[dst] = data[src]
            filled += int(np.prod([e - s for s, e in part], dtype=np.int64)) if part else 1
        if filled != out.size:
            raise FormatError(f"{self.record.path}: slot {slot!r} array {rec['name']!r}: its chunks cover {filled} "
                              f"of the {out.size} elements asked for", file=self.record.path, slot=slot)
        self._forget_other(rec)
        return out

    def _forget_other(self, rec: Mapping[str, Any]) -> None:
        """Keep cached chunks of one array only (a device's neighbour reuses them; memory stays bounded)."""
        keys = {(c["shard"], c["key"]) for c in rec["chunks"]}
        for k in [k for k in self._cache if k not in keys]:
            del self._cache[k]

    def full(self, slot: str, rec: Mapping[str, Any]) -> np.ndarray:
        return self.region(slot, rec, [[0, n] for n in rec["shape"]])

    def value(self, slot: str) -> Any:
        """A stored sharded slot as numpy, shaped as it was saved (tree, dict, array, scalar)."""
        desc = self.record.slots[slot]
        where = f"{self.record.path} slot {slot!r}"
        arrays: dict[str, Any] = {}
        for rec in desc["arrays"]:
            arr = self.full(slot, rec)
            if isinstance(rec.get("key_impl"), str):
                arr = _coll.wrap_key(arr, rec["key_impl"], where=where)
            arrays[rec["name"]] = arr
        names = [r["name"] for r in desc["arrays"]]
        kind = desc.get("kind")
        if kind == "array" and len(names) == 1:
            return arrays[names[0]]
        if kind == "scalar" and len(names) == 1:
            return arrays[names[0]][()]
        if kind == "tree" and "tree" in desc:
            return _coll.unflatten_tree(desc["tree"], [arrays[n] for n in names], where=where)
        return arrays


def _place(shards: ShardSet, slot: str, rec: Mapping[str, Any], target: _coll.Target) -> Any:
    """The value for one target: a global jax.Array built slice by slice where it has a sharding."""
    sharding = getattr(target, "sharding", None)
    if sharding is None:
        arr = shards.full(slot, rec)
        return arr if arr.dtype == target.dtype else arr.astype(target.dtype)
    import jax

    shape = tuple(rec["shape"])

    def piece(index: Any) -> np.ndarray:
        arr = shards.region(slot, rec, layout.box_of(index, shape))
        return arr if arr.dtype == target.dtype else arr.astype(target.dtype)

    return jax.make_array_from_callback(shape, sharding, piece)


def restore(record: Record, slot: str, template: Any, *, strict: bool = True, cast: bool = False,
            verify: bool = True, renamer: _coll.Renamer = None) -> tuple[Any, dict[str, Any]]:
    """``template`` (or numpy without one) filled from a sharded slot; everything is read before
    anything is assigned. Returns ``(value, report)``."""
    if slot not in record.slots:
        raise FormatError(f"{record.path}: slot {slot!r} is not a sharded slot of this checkpoint (have "
                          f"{sorted(record.slots)})", file=record.path, slot=slot)
    desc = record.slots[slot]
    record.check_sizes()
    with ShardSet(record, verify=verify) as shards:
        if template is None:
            return shards.value(slot), {}
        by_name = {r["name"]: r for r in desc["arrays"]}
        stored = {n: (tuple(r["shape"]), _npy.dtype_from_name(r["dtype"], where=record.path))
                  for n, r in by_name.items()}
        skeleton = desc.get("tree") if desc.get("kind") == "tree" else None
        values = _coll.tree_values(skeleton, where=record.path) if skeleton is not None else {}
        targets, rebuild = _coll.targets_of(template, values)
        pairs, report = _coll.plan(targets, stored, renamer=renamer, strict=strict, file=record.path, slot=slot,
                                   cast=cast)
        placed = [(t, _place(shards, slot, by_name[name], t)) for t, name in pairs]
    for t, value in placed:
        t.assign(value)
    return rebuild(), report


@contextlib.contextmanager
def open_record(path: str) -> Iterator[tuple[Any, Record]]:
    """The open record pack and its parsed record (FormatError if it is not one)."""
    with open_reader(path) as reader:
        from .record import is_record, read

        if not is_record(reader):
            raise FormatError(f"{path}: not a multi-process commit record", file=path)
        yield reader, read(reader)
