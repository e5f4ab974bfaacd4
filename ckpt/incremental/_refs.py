"""References recomputed from the committed files, garbage collection, and standalone export.

There is no reference count or index to go stale: the objects a checkpoint directory needs are
exactly those named by the manifests of its committed checkpoint files, read again (cached per
file by size, mtime and inode) whenever objects are collected. Collection runs under the writer
lock after retention deleted files, so a save (which writes its objects before its checkpoint
file, under the same lock) never loses an object it refers to; a process killed anywhere leaves,
at worst, objects that nothing refers to, which the next collection removes.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Iterable, Optional

from ..errors import CkptError
from ..storage import Storage
from ._objects import OBJECTS_DIR, ObjectStore, ext_of, object_key

log = logging.getLogger("ckpt")


def shared_members(reader: Any) -> dict[str, str]:
    """Member name -> object key (below the checkpoint directory), for every shared member of an open file."""
    return {name: object_key(m.algorithm, m.digest, ext_of(name)) for name, m in reader.members.items()
            if m.shared and m.digest}


def file_references(location: str, storage: Optional[Storage] = None) -> set[str]:
    """The object keys one checkpoint file (a path, or a key of ``storage``) refers to (reads its manifest)."""
    from ..varfile import open_reader

    with open_reader(location, storage=storage) as reader:
        return set(shared_members(reader).values())


class References:
    """Object keys per checkpoint file, cached by the storage's token (which changes when a file is replaced)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[str, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def of(self, storage: Storage, key: str) -> frozenset[str]:
        info = storage.stat(key)
        if info is None:
            raise FileNotFoundError(key)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and cached[0] == info.token:
            return cached[1]
        refs = frozenset(file_references(key, storage))
        with self._lock:
            self._cache[key] = (info.token, refs)
        return refs


def collect(storage: Storage, checkpoint_keys: Iterable[str], references: Optional[References] = None,
            *, dry_run: bool = False) -> list[str]:
    """Delete the objects that no committed checkpoint refers to; returns their keys.

    ``storage`` is rooted at the checkpoint directory and ``checkpoint_keys`` are all its committed
    checkpoint files. When one exists but its manifest cannot be read (a damaged file), what it
    refers to is unknown, so nothing is deleted (the file is left for a person to inspect, as
    retention leaves it) and a warning says so. Must run under the directory's writer lock.
    """
    store = ObjectStore(storage)
    if not storage.isdir(OBJECTS_DIR):
        return []
    if not dry_run:
        store.remove_stale_temps()
    references = references or References()
    needed: set[str] = set()
    for key in checkpoint_keys:
        try:
            needed |= references.of(storage, key)
        except FileNotFoundError:
            continue
        except (CkptError, OSError) as e:
            log.warning("kept every shared object in %s: the checkpoint %s cannot be read (%s), so what it refers "
                        "to is unknown; repair or remove it to let unreferenced objects be deleted",
                        storage.label(OBJECTS_DIR), storage.label(key), " ".join(str(e).split()))
            return []
    unused = sorted(k for k in store.listing() if k not in needed)
    if dry_run or not unused:
        return unused
    removed = store.delete(unused)
    log.info("removed %d shared objects of %s that no kept checkpoint refers to", len(removed), storage.url)
    return removed


def export_standalone(path: str, out: str) -> str:
    """Write ``out``: checkpoint ``path`` with every shared object copied in, a file that stands alone.

    The result holds the same slots, metadata and digests (each copied byte is checked against
    them), refers to nothing, and is a plain pack: ``numpy.load`` and objax open it. ``path`` and
    ``out`` are paths or URLs; ``out`` is committed atomically. Returns ``out``.
    """
    from .._packfile import write_pack
    from ..storage import open_file
    from ..varfile import open_reader

    store, key = open_file(out)
    with open_reader(path) as reader:
        store.commit(key, lambda f: write_pack(f, new={}, source=reader, keep=list(reader.slots),
                                               metadata=reader.metadata, created_at=reader.created_at))
    return out
