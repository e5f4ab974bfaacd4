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
import os
import threading
from typing import Any, Iterable, Optional

from .. import _io
from ..errors import CkptError
from ._objects import ObjectStore, ext_of, object_key

log = logging.getLogger("ckpt")


def shared_members(reader: Any) -> dict[str, str]:
    """Member name -> object key, for every member of an open file stored as a shared object."""
    return {name: object_key(m.algorithm, m.digest, ext_of(name)) for name, m in reader.members.items()
            if m.shared and m.digest}


def file_references(path: str) -> set[str]:
    """The object keys one checkpoint file refers to (reads its manifest only)."""
    from ..varfile import open_reader

    with open_reader(path) as reader:
        return set(shared_members(reader).values())


class References:
    """Object keys per checkpoint file, cached by (size, mtime, inode)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple[int, int, int], frozenset[str]]] = {}
        self._lock = threading.Lock()

    def of(self, path: str) -> frozenset[str]:
        st = os.stat(path)
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        with self._lock:
            cached = self._cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        refs = frozenset(file_references(path))
        with self._lock:
            self._cache[path] = (key, refs)
        return refs


def collect(directory: str, checkpoint_paths: Iterable[str], references: Optional[References] = None,
            *, dry_run: bool = False) -> list[str]:
    """Delete the objects that no committed checkpoint in ``directory`` refers to; returns their keys.

    ``checkpoint_paths`` are every committed checkpoint file of the directory. When one exists
    but its manifest cannot be read (a damaged file), what it refers to is unknown, so nothing is
    deleted (the file is left for a person to inspect, as retention leaves it) and a warning says so.
    Must run under the directory's writer lock.
    """
    store = ObjectStore(directory)
    if not os.path.isdir(store.root):
        return []
    if not dry_run:
        store.remove_stale_temps()
    references = references or References()
    needed: set[str] = set()
    for path in checkpoint_paths:
        try:
            needed |= references.of(path)
        except FileNotFoundError:
            continue
        except (CkptError, OSError) as e:
            log.warning("kept every shared object in %s: the checkpoint %s cannot be read (%s), so what it refers "
                        "to is unknown; repair or remove it to let unreferenced objects be deleted", store.root,
                        path, " ".join(str(e).split()))
            return []
    unused = sorted(k for k in store.listing() if k not in needed)
    if dry_run or not unused:
        return unused
    removed = store.delete(unused)
    if removed:
        log.info("removed %d shared objects of %s that no kept checkpoint refers to", len(removed), directory)
    return removed


def export_standalone(path: str, out: str) -> str:
    """Write ``out``: checkpoint ``path`` with every shared object copied in, a file that stands alone.

    The result holds the same slots, metadata and digests (each copied byte is checked against
    them), refers to nothing, and is a plain pack: ``numpy.load`` and objax open it.
    Written atomically; returns ``out``.
    """
    from .._packfile import write_pack
    from ..varfile import open_reader

    with open_reader(path) as reader:
        _io.atomic_write(out, lambda f: write_pack(f, new={}, source=reader, keep=list(reader.slots),
                                                   metadata=reader.metadata, created_at=reader.created_at))
    return out
