"""Multi-process save: snapshot and preflight (blocking), then shards, then one commit (maybe in the background).

Every process calls this with the same arguments. Each unique slice of a global ``jax.Array``
is written once, by the process holding its ``replica_id == 0`` copy, into that process's own
shard file (an ordinary pack). Host values (numpy leaves, non-array slots) are written by process 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from typing import Any, Callable, Mapping, Optional

import numpy as np

from .. import _digest, _io, _npy, collections as _coll
from ..errors import CkptError, PreflightError, SaveError
from ..varfile import encode_slots, write_encoded
from . import layout
from .coord import Coordinator, next_name

log = logging.getLogger("ckpt")

#: Device shards are stored as pieces of at most this many bytes (split along their longest
#: dimension), so a restore into another sharding reads (and checks the hash of) only the pieces
#: its own slices overlap.
PIECE_BYTES = 4 << 20


def split_box(box: layout.Box, itemsize: int, limit: Optional[int] = None) -> list[layout.Box]:
    """``box`` cut in halves along its longest dimension until each piece holds at most ``limit`` bytes."""
    limit = PIECE_BYTES if limit is None else limit
    extents = [b - a for a, b in box]
    if not box or int(np.prod(extents, dtype=np.int64)) * itemsize <= limit or max(extents) < 2:
        return [box]
    d = int(np.argmax(extents))
    mid = box[d][0] + extents[d] // 2
    lo = [list(x) for x in box]
    hi = [list(x) for x in box]
    lo[d][1] = hi[d][0] = mid
    return split_box(lo, itemsize, limit) + split_box(hi, itemsize, limit)


def is_global(leaf: Any) -> bool:
    return _coll.is_jax_array(leaf) and not getattr(leaf, "is_fully_addressable", True)


def sharded_slots(slots: Mapping[str, Any], serializers: Mapping[str, str]) -> list[str]:
    """The slots stored as shards: the main arrays, and every extra holding a global jax.Array."""
    out = []
    for name, value in slots.items():
        if serializers.get(name) == "pickle":
            continue
        flat = _coll.flatten(value)
        if flat is not None and (serializers.get(name) == "arrays" or any(is_global(x) for x in flat.leaves)):
            out.append(name)
    return out


def sharding_of(leaf: Any) -> dict[str, Any]:
    """A JSON description of where a global array lives (and a digest of its device -> slice map)."""
    s = leaf.sharding
    out: dict[str, Any] = {"type": type(s).__name__}
    mesh = getattr(s, "mesh", None)
    spec = getattr(s, "spec", None)
    if mesh is not None and spec is not None:
        out["mesh"] = {str(k): int(v) for k, v in zip(mesh.axis_names, mesh.devices.shape)}
        out["spec"] = [None if p is None else (list(p) if isinstance(p, tuple) else str(p)) for p in spec]
    boxes = sorted((int(d.id), layout.box_of(idx, leaf.shape)) for d, idx in s.devices_indices_map(leaf.shape).items())
    out["map"] = hashlib.sha256(json.dumps(boxes).encode()).hexdigest()[:16]
    return out


class _Slot:
    """One sharded slot: its global description and this process's chunks to write."""

    def __init__(self, name: str, value: Any, process: int, *, copy: bool):
        flat = _coll.flatten(value)
        if flat is None:
            raise TypeError(f"slot {name!r}: a {type(value).__name__} is not a collection of arrays")
        self.name = name
        self.info: dict[str, Any] = {"kind": flat.kind, "names": list(flat.names)}
        if flat.tree is not None:
            self.info["tree"] = flat.tree
        self.arrays: list[dict[str, Any]] = []
        self.pieces: list[tuple[int, str, layout.Box, Any]] = []  # this process's unique slices, by reference
        for i, (aname, leaf) in enumerate(zip(flat.names, flat.leaves)):
            extra = flat.leaf_info(i)
            stored = _coll.storable(leaf)
            shape, dtype = _coll.shape_dtype(stored)
            rec: dict[str, Any] = {"name": aname, "shape": list(shape), "dtype": _npy.dtype_name(dtype), **extra}
            if is_global(stored):
                rec["sharding"] = sharding_of(stored)
                for shard in stored.addressable_shards:
                    if shard.replica_id != 0:
                        continue
                    box = layout.box_of(shard.index, shape)
                    self._add(i, aname, box, shard.data)
            else:
                rec["sharding"] = {"type": "host"}
                if process == 0:
                    host = np.asarray(_coll.to_host(stored))
                    self._add(i, aname, [[0, n] for n in shape], np.array(host) if copy else host)
            self.arrays.append(rec)

    def _add(self, i: int, aname: str, box: layout.Box, data: Any) -> None:
        self.pieces.append((i, aname, box, data))

    def chunks(self) -> tuple[dict[str, Any], list[tuple[int, dict[str, Any]]]]:
        """Chunk key -> host array view (cut by :func:`split_box`), and each chunk's record."""
        arrays: dict[str, Any] = {}
        records = []
        for i, aname, box, data in self.pieces:
            host = _coll.to_host(data)
            for sub in split_box(box, host.dtype.itemsize):
                key = layout.chunk_key(aname, sub)
                arrays[key] = host[tuple(slice(a - b0, b - b0) for (a, b), (b0, _) in zip(sub, box))]
                records.append((i, {"box": sub, "key": key}))
        return arrays, records

    def fingerprint(self) -> list[Any]:
        return [[a["name"], a["shape"], a["dtype"], a["sharding"]] for a in self.arrays]


class SaveJob:
    """A multi-process save after its blocking part; :meth:`commit` writes shards and the record."""

    def __init__(self, manager: Any, idx: int, path: str, slots: Mapping[str, Any], serializers: Mapping[str, str],
                 metadata: Mapping[str, Any], *, compression: Any, background: bool):
        self.manager = manager
        self.idx = idx
        self.path = path
        self.metadata = metadata
        self.compression = compression
        self.coord = Coordinator(next_name("save", manager.directory),
                                 manager.coordination_timeout)
        self.process = self.coord.process
        names = sharded_slots(slots, serializers)
        error: Optional[str] = None
        fp: Any = None
        self.sharded: dict[str, _Slot] = {}
        self.other: Any = None
        caught: Optional[BaseException] = None
        try:
            if layout.RECORD_SLOT in slots:
                raise ValueError(f"slot name {layout.RECORD_SLOT!r} is reserved for multi-process checkpoints")
            for n in names:
                self.sharded[n] = _Slot(n, slots[n], self.process, copy=background)
            others = {n: v for n, v in slots.items() if n not in self.sharded}
            if self.process == 0:
                self.other = encode_slots(others, {n: s for n, s in serializers.items() if n in others},
                                          snapshot=background, compression=compression)
            fp = {"step": idx, "slots": {n: s.fingerprint() for n, s in self.sharded.items()},
                  "other": sorted(others), "save_id": secrets.token_hex(6) if self.process == 0 else None}
        except (CkptError, TypeError, ValueError, OSError) as e:
            caught, error = e, f"{type(e).__name__}: {e}"
        try:
            prints = self.coord.exchange("preflight", fp, error=error, what=f"preflight of checkpoint {idx}")
        except CkptError as e:
            raise e from caught
        self.save_id = str(prints[0]["save_id"])
        _check_agree(prints, idx)

    def commit(self) -> None:
        """Write this process's shard file, then (process 0) the record; every process sees every error."""
        info: Any = None
        error: Optional[str] = None
        caught: Optional[BaseException] = None
        shard = layout.shard_file(self.path, self.save_id, self.process)
        try:
            info = self._write_shard(shard)
        except (CkptError, OSError, ValueError, TypeError) as e:
            caught, error = e, f"{type(e).__name__}: {e}"
        what = f"save of checkpoint {self.idx}"
        try:
            written = self.coord.exchange("written", info, error=error, what=what)
            result: Any = None
            error = None
            if self.process == 0:
                try:
                    self._write_record(written)
                except (CkptError, OSError, ValueError) as e:
                    caught, error = e, f"{type(e).__name__}: {e}"
            self.coord.exchange("committed", result, error=error, from_processes=[0], post=self.process == 0,
                                what=f"commit of checkpoint {self.idx}")
        except CkptError as e:
            raise e from caught

    def _write_shard(self, shard: str) -> dict[str, Any]:
        _io.makedirs(os.path.dirname(shard))
        built = {n: s.chunks() for n, s in self.sharded.items()}
        slots = {n: arrays for n, (arrays, _) in built.items() if arrays}
        meta = {"ckpt": {"shard": {"step": self.idx, "process": self.process, "process_count": self.coord.count,
                                   "save_id": self.save_id}}}
        if slots:
            encoded = encode_slots(slots, {n: "arrays" for n in slots}, compression=self.compression)
        else:
            encoded = {}
        try:
            write_encoded(shard, encoded, metadata=meta)
        except OSError as e:
            raise SaveError(f"could not write shard file {shard}: {e.strerror or e}; the earlier checkpoints are "
                            "intact", errno=e.errno, file=shard) from e
        algorithm = _digest.default()
        from .record import file_digest

        size, digest = file_digest(shard, algorithm)
        chunks = {n: [[i, c] for i, c in records] for n, (_, records) in built.items()}
        return {"file": os.path.relpath(shard, os.path.dirname(self.path)), "size": size, "digest": digest,
                "algorithm": algorithm, "chunks": chunks}

    def _write_record(self, written: list[dict[str, Any]]) -> None:
        shards = []
        slots: dict[str, Any] = {}
        for n, s in self.sharded.items():
            slots[n] = dict(s.info, arrays=[dict(a, chunks=[]) for a in s.arrays])
        for p, w in enumerate(written):
            if w["algorithm"] != written[0]["algorithm"]:
                raise SaveError(f"process {p} hashed its shard with {w['algorithm']}, process 0 with "
                                f"{written[0]['algorithm']}; set the same digest on every process", file=self.path)
            shards.append({"file": w["file"], "process": p, "size": w["size"], "digest": w["digest"]})
            for n, chunks in w["chunks"].items():
                for i, c in chunks:
                    slots[n]["arrays"][i]["chunks"].append(dict(c, shard=p))
        for n, desc in slots.items():
            for a in desc["arrays"]:
                _check_cover(a, n, self.path)
        record = {"format": layout.FORMAT, "version": layout.VERSION, "step": self.idx,
                  "process_count": self.coord.count, "save_id": self.save_id, "algorithm": written[0]["algorithm"],
                  "shards": shards, "slots": slots}
        encoded = dict(self.other or {})
        encoded.update(encode_slots({layout.RECORD_SLOT: record}, {layout.RECORD_SLOT: "json"}))
        self.manager._commit_record(self.idx, encoded, self.metadata, self.save_id)


def _check_cover(a: Mapping[str, Any], slot: str, path: str) -> None:
    """The chunks of an array tile it exactly (no gap, no overlap): else the record would lie."""
    total = int(np.prod(a["shape"], dtype=np.int64)) if a["shape"] else 1
    got = 0
    for c in a["chunks"]:
        got += int(np.prod([b - s for s, b in c["box"]], dtype=np.int64)) if c["box"] else 1
    if got != total:
        raise SaveError(f"{path}: slot {slot!r} array {a['name']!r}: the processes wrote {got} of its {total} "
                        "elements (some slice has no replica_id 0 copy, or two processes wrote the same one)",
                        file=path)


def _check_agree(prints: list[Any], idx: int) -> None:
    """The same PreflightError on every process when any fingerprint differs from process 0's."""
    ref = prints[0]
    problems: list[str] = []
    bad: set[int] = set()
    for p, fp in enumerate(prints[1:], start=1):
        before = len(problems)
        if fp["step"] != ref["step"]:
            problems.append(f"process {p} saves step {fp['step']}, process 0 step {ref['step']}")
            continue
        if fp["other"] != ref["other"] or sorted(fp["slots"]) != sorted(ref["slots"]):
            problems.append(f"process {p} has slots {sorted(fp['slots']) + fp['other']}, process 0 "
                            f"{sorted(ref['slots']) + ref['other']}")
            continue
        for slot, arrays in ref["slots"].items():
            mine = {a[0]: a for a in fp["slots"][slot]}
            theirs = {a[0]: a for a in arrays}
            if set(mine) != set(theirs):
                extra, lack = sorted(set(mine) - set(theirs)), sorted(set(theirs) - set(mine))
                problems.append(f"slot {slot!r}: process {p} has extra arrays {extra[:5]} and lacks {lack[:5]} "
                                "(tree structure differs from process 0)")
                continue
            for name, a in theirs.items():
                b = mine[name]
                for k, what in ((1, "shape"), (2, "dtype"), (3, "sharding")):
                    if a[k] != b[k]:
                        problems.append(f"slot {slot!r} array {name!r}: {what} {b[k]} on process {p}, {a[k]} on "
                                        "process 0")
                        break
        if len(problems) > before:
            bad.add(p)
    if problems:
        raise PreflightError(f"preflight of checkpoint {idx}: the processes disagree, nothing was written: "
                             + "; ".join(problems[:10]) + (f" (and {len(problems) - 10} more)" if len(problems) > 10
                                                            else ""),
                             processes=sorted(bad))


def prepare(manager: Any, idx: int, path: str, slots: Mapping[str, Any], serializers: Mapping[str, str],
            metadata: Mapping[str, Any], *, compression: Any, background: bool) -> Callable[[], None]:
    """The blocking part of a multi-process save (snapshot + preflight); returns the commit to run."""
    return SaveJob(manager, idx, path, slots, serializers, metadata, compression=compression,
                   background=background).commit
