"""Tools' view of a multi-process checkpoint: describe it, verify it, consolidate it into one file.

``consolidate`` writes an ordinary single-file checkpoint (every sharded slot gathered to full
arrays, every other slot copied); ``ConsolidatedView`` lets ``ckpt export`` read one array at a time.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .. import _npy, _packfile
from ..storage import open_file
from ..errors import FormatError
from ..varfile import encode_slots, open_reader
from . import layout, record as _record
from .reader import ShardSet


def is_record_file(path: str) -> bool:
    """True when ``path`` is a multi-process commit record (False for any other file, readable or not)."""
    try:
        with open_reader(path) as reader:
            return _record.is_record(reader)
    except (OSError, FormatError):
        return False


class ConsolidatedView:
    """The arrays of one sharded slot, read (and checked) one full array at a time."""

    def __init__(self, rec: _record.Record, slot: str):
        if slot not in rec.slots:
            raise FormatError(f"{rec.path}: no sharded slot {slot!r} (have {sorted(rec.slots)})", file=rec.path,
                              slot=slot)
        rec.check_sizes()
        self.record = rec
        self.slot = slot
        self.info = rec.slots[slot]
        self._by_name = {a["name"]: a for a in self.info["arrays"]}
        self.names = list(self._by_name)
        self.where = f"{rec.path} slot {slot!r}"

    def shape_dtype(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        a = self._by_name[name]
        return tuple(a["shape"]), _npy.dtype_from_name(a["dtype"], where=self.where)

    def read(self, name: str, *, copy: bool = True) -> np.ndarray:
        with ShardSet(self.record) as shards:
            return shards.full(self.slot, self._by_name[name])


def info(path: str) -> Mapping[str, Any]:
    """Processes, shard files and global arrays of the record at ``path``."""
    with open_reader(path) as reader:
        return _record.describe(_record.read(reader))


def verify_file(path: str) -> None:
    """Every shard of the record at ``path`` has its recorded size and digest (else FormatError/ChecksumError)."""
    with open_reader(path) as reader:
        _record.read(reader).verify()


def consolidate(path: str, out: str) -> str:
    """Write the multi-process checkpoint whose record is ``path`` as one ordinary checkpoint file ``out``."""
    with open_reader(path) as reader:
        rec = _record.read(reader)
        rec.check_sizes()
        with ShardSet(rec) as shards:
            values = {slot: shards.value(slot) for slot in rec.slots}
        encoded = encode_slots(values, {slot: "arrays" for slot in values})
        keep = [s for s in reader.slots if s != layout.RECORD_SLOT]
        metadata = dict(reader.metadata)

        def write(f: Any) -> Any:
            return _packfile.write_pack(f, new=encoded, source=reader, keep=keep, metadata=metadata)

        storage, key = open_file(out)
        storage.commit(key, write)
    return out
