"""``ckpt.describe``: everything ``ckpt info`` shows about one file, as plain data.

:func:`ckpt.inspect` plus the file's size, its metrics (:func:`ckpt.metrics.metrics_of`), each arrays slot's arrays (name, shape, dtype, bytes,
stored size and encoding), each slot's recorded dependencies against the installed versions, and the
validated recipe. Read without executing anything: pickle slots by their opcodes only.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from . import _locations as _loc, _npy, deps as _deps
from ._inspect import inspect
from ._locations import Location
from ._packfile import PackReader
from .distributed import record as _dist_record
from .errors import CkptError, FormatError
from .metrics import metrics_of
from .recipes import Recipe
from .varfile import open_reader
from .integrity import explain

__all__ = ["describe", "recipe_record"]


def _array_records(reader: PackReader, slot: str) -> list[dict[str, Any]]:
    view = reader.arrays(slot, verify=False)
    out = []
    for name in view.names:
        shape, dtype = view.shape_dtype(name)
        encoding, stored = view.stored(name)
        out.append({"name": name, "shape": list(shape), "dtype": _npy.dtype_name(dtype),
                    "bytes": math.prod(shape) * dtype.itemsize, "encoding": encoding, "stored": stored,
                    # incremental checkpoints: "file" (stored in it) or "shared" (refers to a shared object)
                    "where": "shared" if reader.is_shared(view.member(name)) else "file"})
    return out


def _nbytes(shape: Any, dtype: Any) -> Optional[int]:
    try:
        return math.prod(shape) * _npy.dtype_from_name(dtype).itemsize
    except (TypeError, ValueError, CkptError):
        return None


def _deps_records(deps: dict[str, dict[str, str]], where: str) -> dict[str, dict[str, Any]]:
    out = {}
    for pkg, desc in deps.items():
        mismatch = _deps.find_mismatches({pkg: desc}, where)
        out[pkg] = {"version": desc.get("version"), "requires": desc.get("requires", ""),
                    "installed": _deps.installed_version(pkg), "ok": not mismatch}
    return out


def recipe_record(metadata: dict[str, Any], where: str) -> Optional[dict[str, Any]]:
    """The recipe recorded in a manifest's metadata, validated, or None; an invalid one raises FormatError."""
    own = metadata.get("ckpt") if isinstance(metadata, dict) else None
    doc = own.get("recipe") if isinstance(own, dict) else None
    if doc is None:
        return None
    return Recipe.from_dict(doc, where).to_dict()


def describe(file: Location) -> dict[str, Any]:
    """What ``file`` holds (see the module docstring). An array slot whose headers do not parse gets
    ``arrays: None`` and ``error``; an invalid recipe gives ``recipe: None`` and ``recipe_error``."""
    _loc.require_file(file)
    path = _loc.text(file)
    doc = inspect(path)
    doc["size"] = _loc.size(path)
    with open_reader(path) as reader:
        if _dist_record.is_record(reader):  # a multi-process checkpoint: its arrays live in shard files
            doc["sharded"] = _dist_record.describe(_dist_record.read(reader))
        try:
            doc["metrics"] = metrics_of(reader)
        except (CkptError, ValueError):  # a damaged metrics slot: its slot row says so
            doc["metrics"] = {}
        for name, slot in doc["slots"].items():
            slot["dependencies"] = _deps_records(slot.get("dependencies") or {}, f"slot {name!r}")
            if slot["serializer"] == "arrays":
                try:
                    slot["arrays"] = _array_records(reader, name)
                except (CkptError, ValueError) as e:
                    slot["arrays"] = None
                    problem = explain(e, path)
                    slot["error"] = problem[len(path) + 2:] if problem.startswith(f"{path}: ") else problem
            elif slot["serializer"] == "pickle":
                recorded = reader.slot(name).info.get("arrays")
                slot["arrays"] = [
                    {"name": f"[{i}]", "shape": a.get("shape"), "dtype": a.get("dtype"),
                     "bytes": _nbytes(a.get("shape"), a.get("dtype"))}
                    for i, a in enumerate(recorded if isinstance(recorded, list) else []) if isinstance(a, dict)]
    doc["recipe_error"] = None
    try:
        doc["recipe"] = recipe_record(doc["metadata"], f"{path}: recipe")
    except FormatError as e:
        doc["recipe"], doc["recipe_error"] = None, explain(e)
    return doc
