"""``ckpt.dump``/``load``/``dumps``/``loads``: drop-ins for pickle's on a pack's default slot.

Unlike pickle, arrays and JSON-able values are stored without pickling, every
load is checked against its digest, and a value that does need pickle is only
unpickled when the caller trusts the file. The result is a normal pack.
"""

from __future__ import annotations

import io
from typing import Any, Mapping, Optional

from . import deps as _deps, serializers as _ser
from ._packfile import DEFAULT_SLOT
from .varfile import PathOrFile, open_reader, write_file

__all__ = ["dump", "load", "dumps", "loads"]


def dump(obj: Any, file: PathOrFile, *, serializer: Optional[str] = None,
         metadata: Optional[Mapping[str, Any]] = None, storage_options: Optional[dict[str, Any]] = None) -> None:
    """Write ``obj`` as a new pack's default slot (a path or URL is replaced atomically)."""
    write_file(file, {DEFAULT_SLOT: obj}, metadata=metadata,
               serializers={DEFAULT_SLOT: serializer} if serializer else None, storage_options=storage_options)


def load(file: PathOrFile, *, trusted: _ser.Trusted = False, deps: str = "warn", verify: bool = True,
         storage_options: Optional[dict[str, Any]] = None) -> Any:
    """Read the default slot of a pack (or the arrays of a plain ``.npz``/objax file) at a path, fsspec URL
    (``storage_options`` go to its filesystem) or in a file object."""
    mode = _deps.check_mode(deps)
    # Read with a reader, not a Pack: a Pack treats an empty file as a new pack, but for
    # ``load`` an empty file is not a pack at all (NotAPackError, like any other non-zip).
    with open_reader(file, storage_options=storage_options) as reader:
        _deps.report(reader.dependency_mismatches([DEFAULT_SLOT]), mode, reader.label)
        return reader.load(DEFAULT_SLOT, trusted=trusted, verify=verify)


def dumps(obj: Any, *, serializer: Optional[str] = None, metadata: Optional[Mapping[str, Any]] = None) -> bytes:
    """``obj`` as the bytes of a new pack (MLIO's and pickle's ``dumps``)."""
    buf = io.BytesIO()
    dump(obj, buf, serializer=serializer, metadata=metadata)
    return buf.getvalue()


def loads(data: bytes, *, trusted: _ser.Trusted = False, deps: str = "warn", verify: bool = True) -> Any:
    """The default slot of a pack held in ``data`` (the inverse of :func:`dumps`)."""
    return load(io.BytesIO(bytes(data)), trusted=trusted, deps=deps, verify=verify)
