"""The commit record of a multi-process checkpoint: what it says, and checking shards against it.

A step is committed if and only if its record exists and every shard file it lists has the
recorded size and digest. The record is written last, by process 0, after every shard is durable.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Optional

from .. import _digest
from ..errors import ChecksumError, FormatError
from . import layout

_READ = 4 << 20


def is_record(reader: Any) -> bool:
    """True when an open pack is a multi-process commit record."""
    info = reader.slots.get(layout.RECORD_SLOT)
    return info is not None and info.serializer == "json"


def file_digest(path: str, algorithm: str) -> tuple[int, str]:
    """Size and digest of a whole file, read in 4 MiB pieces."""
    h = _digest.new(algorithm, path)
    size = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(_READ)
            if not block:
                break
            size += len(block)
            h.update(block)
    return size, h.hexdigest()


class Record:
    """A parsed, structurally checked commit record."""

    def __init__(self, data: Any, path: str):
        self.path = path
        where = f"{path}: commit record"
        if not isinstance(data, dict) or data.get("format") != layout.FORMAT:
            raise FormatError(f"{where} is not a {layout.FORMAT} record", file=path, slot=layout.RECORD_SLOT)
        if data.get("version") != layout.VERSION:
            raise FormatError(f"{where} has version {data.get('version')!r}; this ckpt reads version "
                              f"{layout.VERSION} (upgrade ckpt)", file=path, slot=layout.RECORD_SLOT)
        try:
            self.step = int(data["step"])
            self.process_count = int(data["process_count"])
            self.save_id = str(data["save_id"])
            self.algorithm = str(data["algorithm"])
            self.shards: list[dict[str, Any]] = list(data["shards"])
            self.slots: dict[str, dict[str, Any]] = dict(data["slots"])
            for s in self.shards:
                s["file"], s["size"], s["digest"], s["process"] = str(s["file"]), int(s["size"]), str(
                    s["digest"]), int(s["process"])
                if os.path.isabs(s["file"]) or ".." in s["file"].replace("\\", "/").split("/"):
                    raise ValueError(f"shard path {s['file']!r} leaves the checkpoint folder")
            for desc in self.slots.values():
                for a in desc["arrays"]:
                    a["shape"] = [int(n) for n in a["shape"]]
                    for c in a["chunks"]:
                        c["shard"] = int(c["shard"])
                        if not 0 <= c["shard"] < len(self.shards):
                            raise ValueError(f"chunk of {a['name']!r} names shard {c['shard']}")
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{where} is malformed: {e}", file=path, slot=layout.RECORD_SLOT) from None
        self.data = data

    def shard_path(self, i: int) -> str:
        return os.path.join(os.path.dirname(self.path), self.shards[i]["file"])

    def check_sizes(self) -> None:
        """Every shard exists with its recorded size (a stat each: cheap enough for every restore)."""
        for i, s in enumerate(self.shards):
            p = self.shard_path(i)
            try:
                size = os.stat(p).st_size
            except FileNotFoundError:
                raise FormatError(f"{self.path}: shard file {p} of process {s['process']} is missing; step "
                                  f"{self.step} is not committed", file=p) from None
            if size != s["size"]:
                raise FormatError(f"{self.path}: shard file {p} has {size} bytes, the commit record says "
                                  f"{s['size']} (truncated or replaced)", file=p)

    def verify(self, which: Optional[Iterable[int]] = None) -> None:
        """Sizes and whole-file digests of the shards (all, or ``which``)."""
        self.check_sizes()
        for i in (range(len(self.shards)) if which is None else which):
            s = self.shards[i]
            p = self.shard_path(i)
            _, found = file_digest(p, self.algorithm)
            if found != s["digest"]:
                raise ChecksumError(f"{p}: shard file of process {s['process']} is corrupt ({self.algorithm} "
                                    f"mismatch with the commit record {self.path})", file=p)


def read(reader: Any) -> Record:
    return Record(reader.load(layout.RECORD_SLOT), reader.label)


def describe(record: Record) -> Mapping[str, Any]:
    """A summary for ``ckpt info``: processes, shard files with sizes, arrays with global shapes."""
    return {
        "step": record.step,
        "process_count": record.process_count,
        "shards": [{"file": s["file"], "process": s["process"], "size": s["size"]} for s in record.shards],
        "arrays": {slot: [{"name": a["name"], "shape": a["shape"], "dtype": a["dtype"],
                           "sharding": a.get("sharding"), "chunks": len(a["chunks"])} for a in desc["arrays"]]
                   for slot, desc in record.slots.items()},
    }
