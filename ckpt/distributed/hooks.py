"""What ``Checkpoint`` calls when a checkpoint is (or is to be) a multi-process one.

Kept apart so the manager gains one line per hook: saving through :mod:`.writer`, reading
records through :mod:`.reader`, and the record-aware retention and verification.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping, Optional, TypeVar

from ..errors import CkptError, DistributedError, FormatError
from . import coord, layout, reader as _reader, record as _record
from . import writer as _writer

log = logging.getLogger("ckpt")
T = TypeVar("T")


def active() -> bool:
    return coord.active()


def prepare_save(manager: Any, idx: int, path: str, slots: Mapping[str, Any], serializers: Mapping[str, str],
                 metadata: Mapping[str, Any], *, compression: Any, background: bool) -> Callable[[], None]:
    """The blocking part of a multi-process save (snapshot, preflight); returns the commit to run."""
    if "://" in manager.directory and not manager.directory.startswith("file://"):
        error = ValueError(f"{manager.directory}: multi-process saves write shard files on a local or shared file "
                           "system path; a URL checkpoint directory is not supported for them yet")
        save_failed(manager, idx, error)
        raise error
    return _writer.prepare(manager, idx, path, slots, serializers, metadata, compression=compression,
                           background=background)


def save_failed(manager: Any, idx: int, error: BaseException) -> None:
    """This process refused a save before it began (bad input): in a multi-process job, tell the
    others through the save's preflight, so that they raise too instead of waiting for it."""
    if not coord.active():
        return
    c = coord.Coordinator(coord.next_name("save", manager.directory), manager.coordination_timeout)
    try:
        c.exchange("preflight", error=f"{type(error).__name__}: {error}", what=f"preflight of checkpoint {idx}")
    except DistributedError as e:
        log.debug("%s", e)  # this process raises its own error; the others raise this one


def is_record(reader: Any) -> bool:
    return _record.is_record(reader)


def _agree(manager: Any, what: str, read: Callable[[], T]) -> T:
    """Run one process's part of a multi-process read; every process then raises if any failed.

    A damaged checkpoint (FormatError) anywhere is a FormatError everywhere, so restore-latest
    falls back to the same older step on every process."""
    if not coord.active():
        return read()
    result: Any = None
    mine: dict[str, Optional[str]] = {"format": None, "other": None}
    caught: Optional[BaseException] = None
    try:
        result = read()
    except FormatError as e:
        caught, mine["format"] = e, str(e)
    except (CkptError, OSError, ValueError, TypeError) as e:
        caught, mine["other"] = e, f"{type(e).__name__}: {e}"
    c = coord.Coordinator(coord.next_name("read", manager.directory), manager.coordination_timeout)
    outcomes = c.exchange("read", mine, what=what)
    for kind, cls in (("format", FormatError), ("other", DistributedError)):
        bad = {p: o[kind] for p, o in enumerate(outcomes) if o[kind]}
        if bad:
            if len(bad) == 1 and caught is not None and mine[kind]:
                raise caught
            detail = "; ".join(f"process {p}: {m}" for p, m in sorted(bad.items()))
            if cls is FormatError:
                raise FormatError(f"{what}: {detail}", file=manager.directory) from caught
            raise DistributedError(f"{what} failed: {detail}", file=manager.directory, processes=sorted(bad)) from caught
    return result


def load(manager: Any, reader: Any, slot: str, template: Any, *, strict: bool, cast: bool,
         renamer: Any = None) -> tuple[Any, dict[str, Any]]:
    """``load``/``restore`` of one sharded slot of the record open in ``reader``, agreed across processes."""
    rec = _record.read(reader)
    return _agree(manager, f"restore of {reader.label}",
                  lambda: _reader.restore(rec, slot, template, strict=strict, cast=cast, verify=manager.verify,
                                          renamer=renamer))


def load_extras(manager: Any, reader: Any, names: Optional[list[str]], trusted: Any,
                reserved: Any) -> dict[str, Any]:
    """``load_extras`` of a record: sharded extras gathered to numpy, the others from the record."""
    sharded = sharded_slots(reader)
    every = [s for s in [*reader.slots, *sharded] if s not in reserved and s != layout.RECORD_SLOT]
    wanted = list(names) if names is not None else every
    for n in wanted:
        if n not in sharded:
            reader.slot(n)  # SlotNotFoundError naming the slots there are
    return {n: load(manager, reader, n, None, strict=True, cast=False)[0] if n in sharded
            else reader.load(n, trusted=trusted, verify=manager.verify) for n in wanted}


def sharded_slots(reader: Any) -> list[str]:
    return sorted(_record.read(reader).slots)


def verify(reader: Any) -> None:
    """The record's shards: sizes and whole-file digests (FormatError/ChecksumError naming the shard)."""
    _record.read(reader).verify()


def remove_orphans(manager: Any, keep: Mapping[str, str]) -> None:
    """Shard folders no record refers to (failed or superseded saves); a damaged record's are kept."""
    for stem, ids in layout.shard_dirs(manager.directory).items():
        record_path = os.path.join(manager.directory, stem + os.path.splitext(manager.FILE_FORMAT)[1])
        live = keep.get(stem)
        if live is None:
            try:
                with _reader.open_record(record_path) as (_, rec):
                    live = rec.save_id
            except FileNotFoundError:
                live = None
            except (CkptError, OSError):
                continue  # unreadable record: leave its shards for a person to inspect
        for save_id in ids:
            if save_id != live:
                log.debug("removing orphan shard folder %s", layout.shard_dir(record_path, save_id))
                layout.remove_tree(layout.shard_dir(record_path, save_id))


def removed(path: str) -> None:
    """A record was rotated away: its shard folders go too."""
    layout.remove_shards(path)
