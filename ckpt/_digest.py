"""Content digests of members and slots: BLAKE3 by default, sha256 readable and selectable.

Why BLAKE3: a save hashes every byte it writes, and sha256 (about 2 GB/s per core with SHA-NI)
made hashing the largest cost of a save; BLAKE3 is as collision resistant for this purpose, runs
about three to four times faster on one core and spreads one digest over every core. The manifest
names the algorithm of each digest (docs/FORMAT.md, section 3), so files hashed with sha256
(every file written before BLAKE3, and MLIO's) keep verifying.

The algorithm new files use: :func:`set_default` (``ckpt.set_digest``), else the ``CKPT_DIGEST``
environment variable, else ``blake3`` when the ``blake3`` package imports, else ``sha256``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Optional, Protocol, Union

from .errors import DependencyError

log = logging.getLogger("ckpt")

Buffer = Union[bytes, bytearray, memoryview]

#: The algorithms a manifest may name, in order of preference for new files.
ALGORITHMS = ("blake3", "sha256")

_blake3: Any
try:
    import blake3 as _blake3
except ImportError:  # a dependency in pyproject; without it new files get sha256
    _blake3 = None

# sha256 in slices: hashlib releases the GIL on large updates, so other threads keep writing.
_SLICE = 64 << 20

_chosen: Optional[str] = None


class Hasher(Protocol):
    def update(self, data: Any, /) -> Any: ...
    def hexdigest(self) -> str: ...


def available(algorithm: str) -> bool:
    return algorithm == "sha256" or (algorithm == "blake3" and _blake3 is not None)


def _check(algorithm: str, what: str) -> str:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown digest {algorithm!r} ({what}); choose one of {', '.join(ALGORITHMS)}")
    if not available(algorithm):
        raise ValueError(f"digest {algorithm!r} ({what}) needs the 'blake3' package: pip install blake3")
    return algorithm


def set_default(algorithm: Optional[str]) -> None:
    """Choose the digest new files record (``"blake3"`` or ``"sha256"``); ``None`` restores the default.

    Files already written keep theirs; every reader verifies both.
    """
    global _chosen
    if algorithm is not None and not isinstance(algorithm, str):
        raise TypeError(f"set_digest takes 'blake3', 'sha256' or None, not {type(algorithm).__name__}")
    _chosen = None if algorithm is None else _check(algorithm.strip().lower(), "set_digest")


def default() -> str:
    """The algorithm a writer uses now (see the module docstring)."""
    if _chosen is not None:
        return _chosen
    env = os.environ.get("CKPT_DIGEST")
    if env:
        return _check(env.strip().lower(), "CKPT_DIGEST")
    return "blake3" if _blake3 is not None else "sha256"


#: BLAKE3 spreads over every core only for data at least this large: below it, handing 1 KiB chunks
#: to other threads costs more than it saves (64 KiB hashed at 3.4 GB/s on every core against 5.4 on one
#: on the 2-core VM; 1 MiB at 10.6 against 6.0).
_PARALLEL_MIN = 1 << 20


def new(algorithm: str, file: Optional[str] = None, size: Optional[int] = None) -> Hasher:
    """An incremental hasher for about ``size`` bytes (unknown: large); large BLAKE3 updates run on every core."""
    if algorithm == "sha256":
        return _Sha256()
    if algorithm == "blake3" and _blake3 is not None:
        return _Blake3(size is None or size >= _PARALLEL_MIN)
    if algorithm == "blake3":
        raise DependencyError(f"{file or 'this file'}: its digests are BLAKE3, which needs the 'blake3' package "
                              "(pip install blake3)", file=file)
    raise ValueError(f"unknown digest algorithm {algorithm!r}")


class _Sha256:
    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), _SLICE):
            self._h.update(view[start:start + _SLICE])

    def hexdigest(self) -> str:
        return self._h.hexdigest()


class _Blake3:
    def __init__(self, parallel: bool = True) -> None:
        # BLAKE3 is a tree of 1 KiB chunks: hashing them on every core gives the one-thread digest.
        self._h = _blake3.blake3(max_threads=_blake3.blake3.AUTO if parallel else 1)  # type: ignore[union-attr]

    def update(self, data: Buffer) -> None:
        self._h.update(data)  # large updates: split over every core inside (Rayon), GIL released

    def hexdigest(self) -> str:
        return str(self._h.hexdigest())


def hexdigest(algorithm: str, data: Buffer, file: Optional[str] = None) -> str:
    h = new(algorithm, file)
    h.update(data)
    return h.hexdigest()


def slot_digest(member_digests: list[str], algorithm: str = "sha256", file: Optional[str] = None) -> str:
    """A slot's digest: ``algorithm`` over its members' raw digests, concatenated in order."""
    h = new(algorithm, file)
    h.update(b"".join(bytes.fromhex(hx) for hx in member_digests))
    return h.hexdigest()


def of(record: Any) -> Optional[tuple[str, Any]]:
    """The (algorithm, value) a manifest record (member or slot) holds; None without exactly one."""
    if not isinstance(record, dict):
        return None
    found = [(a, record[a]) for a in ALGORITHMS if a in record]
    return found[0] if len(found) == 1 else None
