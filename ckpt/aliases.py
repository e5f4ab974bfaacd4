"""Aliases: durable names for checkpoints of one log directory (``ck.alias("best", 1000)``).

Stored as ``<logdir>/ckpt/aliases.json``, written like a checkpoint (temp file,
fsync, rename, directory fsync) under the directory's writer lock, so a crash
leaves the old or the new table, never half of one. Each alias names exactly
one checkpoint; setting it again moves it. Retention never deletes an aliased
checkpoint, and keeps everything when the table cannot be read.
"""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Any, Iterable, Optional, Union

from .errors import CheckpointNotFoundError, FormatError
from .manifest import utc_now
from .storage import Storage, open_storage

if TYPE_CHECKING:
    from .checkpoint import Checkpoint

log = logging.getLogger("ckpt")

__all__ = ["ALIASES_NAME", "read", "set_alias", "resolve", "protected_indices", "check_name"]

ALIASES_NAME = "aliases.json"
FORMAT_NAME = "ckpt.aliases"
VERSION = 1
MAX_BYTES = 1 << 20
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+@-]{0,99}$")


def check_name(name: Any) -> str:
    if type(name) is not str or not _NAME.match(name):
        raise ValueError(f"alias {name!r:.120} must be 1-100 characters of letters, digits and _ . + @ -, not "
                         "starting with a punctuation mark")
    return name


#: A checkpoint directory: its path or URL, or its storage.
Directory = Union[str, Storage]


def _store(directory: Directory) -> Storage:
    return directory if isinstance(directory, Storage) else open_storage(directory)


def _label(directory: Directory) -> str:
    return directory.url if isinstance(directory, Storage) else directory


def _path(directory: Directory) -> str:
    return _store(directory).label(ALIASES_NAME)


def read_records(directory: Directory) -> dict[str, dict[str, Any]]:
    """Alias name -> its record (``idx``, ``digest``, ``set_at``); ``{}`` without a table; FormatError if malformed."""
    store = _store(directory)
    path = store.label(ALIASES_NAME)
    try:
        with store.open_read(ALIASES_NAME) as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return {}
    if len(data) > MAX_BYTES:
        raise FormatError(f"{path}: alias table is over {MAX_BYTES} bytes", file=path)
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FormatError(f"{path}: alias table is not valid JSON ({e})", file=path) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME or not isinstance(doc.get("aliases"), dict):
        raise FormatError(f"{path}: not a ckpt alias table (expected {{'format': {FORMAT_NAME!r}, "
                          "'aliases': {...}})", file=path)
    version = doc.get("version")
    if type(version) is not int or version > VERSION:
        raise FormatError(f"{path}: alias table version {version!r:.20}; this ckpt reads up to {VERSION}", file=path)
    out = {}
    for name, rec in doc["aliases"].items():
        idx = rec.get("idx") if isinstance(rec, dict) else None
        if not _NAME.match(name) or type(idx) is not int or idx < 0:
            raise FormatError(f"{path}: alias {name!r:.80} has no valid checkpoint index", file=path)
        out[name] = dict(rec)
    return out


def read(directory: Directory) -> dict[str, int]:
    """Alias name -> checkpoint index for the checkpoint directory ``directory``."""
    return {name: rec["idx"] for name, rec in read_records(directory).items()}


def by_index(directory: Directory) -> dict[int, list[str]]:
    """Checkpoint index -> its aliases (sorted); ``{}`` (logged) when the table cannot be read."""
    try:
        table = read(directory)
    except (FormatError, OSError) as e:
        log.warning("ignoring the alias table of %s: %s", _label(directory), e)
        return {}
    out: dict[int, list[str]] = {}
    for name, idx in sorted(table.items()):
        out.setdefault(idx, []).append(name)
    return out


def _write(store: Storage, records: dict[str, dict[str, Any]]) -> None:
    store.cleanup("", ALIASES_NAME.__eq__)  # from writers killed mid-write (we hold the lock)
    doc = {"format": FORMAT_NAME, "version": VERSION, "aliases": dict(sorted(records.items()))}
    data = json.dumps(doc, indent=1, sort_keys=True).encode("utf-8") + b"\n"
    store.commit(ALIASES_NAME, lambda f: f.write(data))


def set_alias(ck: "Checkpoint", name: str, idx: Optional[int]) -> None:
    """Point ``name`` at checkpoint ``idx`` of ``ck`` (None removes it), durably, under the writer lock."""
    from .varfile import open_reader

    check_name(name)
    ck._finish_pending(raise_error=False)  # an alias of the checkpoint an async save is writing
    store = ck.storage
    if not store.isdir():
        raise CheckpointNotFoundError(f"cannot alias {name!r}: no checkpoint directory {ck.directory}",
                                      file=ck.directory)
    with ck._lock():
        records = read_records(store)
        if idx is None:
            if records.pop(name, None) is None:
                return
        else:
            path = ck.path(idx)
            if store.stat(ck.key(idx)) is None:
                have = ck.indices()
                raise CheckpointNotFoundError(f"cannot alias {name!r} to checkpoint {idx}: no such checkpoint in "
                                              f"{ck.directory} (have: {have[-10:] if have else 'none'})", file=path)
            with open_reader(ck.key(idx), storage=store) as reader:
                main = reader.slots.get("main")
                digest = None if main is None else {"algorithm": main.algorithm, "value": main.digest}
            records[name] = {"idx": int(idx), "digest": digest, "set_at": utc_now()}
        _write(store, records)
    log.info("alias %r -> %s in %s", name, idx, ck.directory)


def resolve(directory: Directory, name: str) -> int:
    """The index alias ``name`` points at; CheckpointNotFoundError when there is no such alias."""
    check_name(name)
    table = read(directory)
    if name not in table:
        raise CheckpointNotFoundError(f"{_label(directory)}: no alias {name!r} (aliases: {', '.join(sorted(table)) or 'none'})",
                                      file=_path(directory))
    return table[name]


def protected_indices(directory: Directory, indices: Iterable[int]) -> set[int]:
    """The indices retention must keep because an alias names them: all of ``indices`` if the table is unreadable."""
    try:
        return set(read(directory).values())
    except (FormatError, OSError) as e:
        log.warning("cannot read the alias table of %s (%s): no checkpoint is deleted until it is fixed",
                    _label(directory), e)
        return set(indices)
