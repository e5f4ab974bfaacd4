"""``ckpt.inspect``: what a file holds, read without executing anything."""

from __future__ import annotations

from typing import Any, Optional

from ._packfile import PackReader
from .errors import CkptError
from .varfile import PathOrFile, open_reader

__all__ = ["inspect"]


def _slot_report(reader: PackReader, name: str) -> dict[str, Any]:
    info = reader.slot(name)
    out: dict[str, Any] = {
        "serializer": info.serializer,
        "size": info.size,
        "sha256": info.sha256,  # None for a BLAKE3 slot: "digest" and "algorithm" say what it has
        "digest": info.digest,
        "algorithm": info.algorithm if info.digest is not None else None,
        "members": list(info.members),
        "created_at": info.created_at,
        "dependencies": info.dependencies,
    }
    if info.serializer == "arrays":
        arrays = info.info.get("arrays")
        out["arrays"] = arrays if isinstance(arrays, list) else None
        out["kind"] = info.info.get("kind")
    if info.serializer == "pickle":
        try:
            out["globals"] = reader.pickle_globals(name)
        except CkptError as e:
            out["globals"] = None
            out["error"] = str(e)
    return out


def inspect(file: PathOrFile, *, storage_options: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """A description of a pack: format version, times, metadata, and per slot its serializer,
    size, digest (blake3 or sha256), dependencies, arrays, and for pickle slots the globals it would import.

    Pickle slots are read by their opcodes only (after their digest is checked); nothing in
    the file is imported or executed. ``file`` may be a path, an fsspec URL (``storage_options`` go to
    its filesystem) or a binary file object.
    """
    with open_reader(file, storage_options=storage_options) as reader:
        return {
            "file": reader.label,
            "format_version": reader.format_version,
            "has_manifest": reader.has_manifest,
            "created_at": reader.created_at,
            "updated_at": reader.updated_at,
            "metadata": dict(reader.metadata),
            "slots": {name: _slot_report(reader, name) for name in reader.slots},
        }
