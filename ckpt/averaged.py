"""``ckpt.average_into``: average (or EMA) checkpoints named the way a user names them, into a file.

:func:`ckpt.average` / :func:`ckpt.ema` take a log directory or a list of files; this also takes a
directory that holds checkpoint files directly (choosing ``last``/``indices`` there), refuses to
overwrite ``out`` without ``force``, and returns what the written file records it came from.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from . import _locations as _loc
from ._locations import Location
from ._packfile import DEFAULT_SLOT
from .averaging import average, ema
from .errors import CheckpointNotFoundError, DependencyWarning
from .listing import is_bare, open_run
from .varfile import open_reader

__all__ = ["Averaged", "average_into", "average_sources"]


@dataclass(frozen=True)
class Averaged:
    """What :func:`average_into` wrote: ``location``, ``method`` ("mean" or "ema"), ``decay``, the number
    of ``arrays`` and ``nbytes`` of data, the ``sources`` record (file, idx, digest, weight, oldest first)
    and the dependency ``warnings`` raised while reading the sources."""

    location: str
    method: str
    decay: Optional[float]
    arrays: int
    nbytes: int
    sources: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def average_sources(sources: Sequence[Location], last: Optional[int] = None,
                    indices: Optional[Sequence[int]] = None) -> tuple[Any, Optional[int], Optional[list[int]]]:
    """What to hand :func:`ckpt.average`: a log directory with ``last``/``indices``, or a list of files
    (a directory of checkpoint files is resolved to its files here)."""
    if len(sources) == 1 and _loc.is_dir(sources[0]):
        ck = open_run(sources[0])
        if not is_bare(ck):
            return _loc.text(sources[0]), last, None if indices is None else list(indices)
        have = ck.indices()
        if indices is not None:
            absent = [i for i in indices if i not in set(have)]
            if absent:
                raise CheckpointNotFoundError(f"{ck.directory}: no checkpoint {absent} (have: {have[-10:]})",
                                              file=ck.directory)
            return [ck.path(i) for i in indices], None, None
        if last is not None and last > len(have):
            raise ValueError(f"{ck.directory}: --last {last}, but it holds only {len(have)} checkpoints")
        return [ck.path(i) for i in (have[-last:] if last else have)], None, None
    for path in sources:
        _loc.require_file(path)
    if indices is not None:
        raise ValueError("--indices picks steps of a LOGDIR; with files, list the files to average")
    return [_loc.text(s) for s in sources], last, None


def average_into(sources: Sequence[Location], out: Location, *, last: Optional[int] = None,
                 indices: Optional[Sequence[int]] = None, weights: Optional[Sequence[float]] = None,
                 decay: Optional[float] = None, slot: str = DEFAULT_SLOT, force: bool = False) -> Averaged:
    """The mean (``weights`` for a weighted one) or, with ``decay``, the EMA of ``sources`` (one log
    directory, or files oldest first) written to ``out``; see :func:`ckpt.average` for the rules."""
    _loc.check_output(out, force)
    source, last, picked = average_sources(sources, last, indices)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DependencyWarning)
        if decay is not None:
            result = ema(source, decay, last=last, indices=picked, slot=slot, out=out)
        else:
            result = average(source, last=last, indices=picked, weights=weights, slot=slot, out=out)
    notes = []
    for w in caught:
        if issubclass(w.category, DependencyWarning):
            notes.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    with open_reader(out) as reader:
        record = reader.metadata.get("ckpt", {})
    return Averaged(_loc.text(out), "ema" if decay is not None else "mean", decay, len(result),
                    sum(int(a.nbytes) for a in result.values()), list(record.get("averaged_from", [])), notes)
