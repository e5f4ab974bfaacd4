"""Where the pieces of a multi-process checkpoint live, and how chunks are named.

``<dir>/<stem>.npz`` is the commit record (a pack with a ``sharded`` slot); each process's shard
file is ``<dir>/<stem>.shards-<save id>/<process>.npz``. A fresh save id per save means a step saved
again never overwrites the shards an existing record hashes.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Optional, Sequence

from .. import _io

#: The record's slot that describes the sharded arrays and lists the shard files.
RECORD_SLOT = "sharded"
FORMAT = "ckpt-sharded"
VERSION = 1

Box = list[list[int]]  # [[start, stop], ...] per dimension


def stem(record_path: str) -> str:
    return os.path.splitext(os.path.basename(record_path))[0]


def shard_dir(record_path: str, save_id: str) -> str:
    return os.path.join(os.path.dirname(record_path), f"{stem(record_path)}.shards-{save_id}")


def shard_file(record_path: str, save_id: str, process: int) -> str:
    return os.path.join(shard_dir(record_path, save_id), f"{process:05d}.npz")


def box_of(index: Sequence[slice], shape: Sequence[int]) -> Box:
    """A shard's index (slices, as ``jax`` gives them) as explicit [start, stop] pairs."""
    out = []
    for sl, n in zip(index, shape):
        start, stop, step = sl.indices(int(n))
        if step != 1:
            raise ValueError(f"strided shard index {sl} is not supported")
        out.append([start, stop])
    return out


def chunk_key(name: str, box: Box) -> str:
    """A chunk's array name inside a shard file: ``<name>@<start>:<stop>,...`` (``@`` alone for a scalar)."""
    return f"{name}@" + ",".join(f"{a}:{b}" for a, b in box)


_SHARDS_DIR = re.compile(r"^(?P<stem>.+)\.shards-(?P<id>[0-9a-f]+)$")


def shard_dirs(directory: str) -> dict[str, list[str]]:
    """Stem -> save ids of the shard folders in ``directory``."""
    out: dict[str, list[str]] = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return out
    for name in names:
        m = _SHARDS_DIR.match(name)
        if m and os.path.isdir(os.path.join(directory, name)):
            out.setdefault(m.group("stem"), []).append(m.group("id"))
    return out


def remove_tree(path: str) -> None:
    """Remove one shard folder (its files, then the folder), durably."""
    shutil.rmtree(path, ignore_errors=True)
    try:
        _io.ops.fsync_dir(os.path.dirname(path))
    except OSError:
        pass


def remove_shards(record_path: str, keep: Optional[str] = None) -> None:
    """Remove the shard folders of one step (all but save id ``keep``)."""
    directory = os.path.dirname(record_path)
    for save_id in shard_dirs(directory).get(stem(record_path), []):
        if save_id != keep:
            remove_tree(shard_dir(record_path, save_id))
