"""Which checkpoints to keep: the pure selection logic behind ``Checkpoint`` rotation.

Policies compose by union: a checkpoint stays if *any* active policy keeps it,
and the newest checkpoint (and the one just written) always stays. Everything
here works on :class:`Entry` records (index, size, metrics), never on files, so
it is testable without a disk and gives the same answer after a restart, when
the entries are rebuilt from what is on disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

__all__ = ["RetentionPolicy", "Entry", "Plan", "select", "kept_by", "rank", "best", "metric_value",
           "normalize_metrics"]

MODES = ("min", "max")


def _check_count(name: str, value: Any, *, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be None or an integer >= {minimum}, not {value!r}")


@dataclass(frozen=True)
class RetentionPolicy:
    """What ``Checkpoint`` keeps when it rotates; ``None`` turns a policy off.

    - ``keep_last``: the ``k`` checkpoints with the largest indices;
    - ``keep_every``: every checkpoint whose index is divisible by ``N``, forever;
    - ``keep_best``: the ``k`` best by ``metric`` (``mode`` ``"min"`` or ``"max"``);
      a NaN, infinite, missing or non-numeric value is never among the best, and
      ties go to the newer checkpoint;
    - ``max_bytes``: the newest checkpoints whose sizes, added from the newest
      down, fit in the budget (stopping at the first that does not fit).

    With no policy active nothing is deleted.
    """

    keep_last: Optional[int] = 5
    keep_every: Optional[int] = None
    keep_best: Optional[int] = None
    metric: Optional[str] = None
    mode: str = "min"
    max_bytes: Optional[int] = None

    def __post_init__(self) -> None:
        _check_count("keep_last (keep_ckpts)", self.keep_last, minimum=1)
        _check_count("keep_every", self.keep_every, minimum=1)
        _check_count("keep_best", self.keep_best, minimum=1)
        _check_count("max_bytes", self.max_bytes, minimum=0)
        if self.mode not in MODES:
            raise ValueError(f"mode must be 'min' or 'max', not {self.mode!r}")
        if self.metric is not None and (not isinstance(self.metric, str) or not self.metric):
            raise ValueError(f"metric must be a non-empty string, not {self.metric!r}")
        if self.keep_best is not None and self.metric is None:
            raise ValueError("keep_best needs metric= (the name of a value given to save(..., metrics={...}))")

    @property
    def active(self) -> bool:
        """Whether any policy would delete something."""
        return any(v is not None for v in (self.keep_last, self.keep_every, self.keep_best, self.max_bytes))


@dataclass(frozen=True)
class Entry:
    """One checkpoint as the policies see it: its index, size in bytes, and stored metrics."""

    idx: int
    size: int = 0
    metrics: Mapping[str, Any] = field(default_factory=dict)


def metric_value(entry: Entry, metric: str) -> Optional[float]:
    """The entry's value of ``metric`` if it can rank (a finite real number), else None."""
    value = entry.metrics.get(metric) if isinstance(entry.metrics, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def rank(entries: Iterable[Entry], metric: str, mode: str = "min") -> list[Entry]:
    """Entries with a rankable ``metric``, best first; equal values rank the newer (larger index) first."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
    scored = [(v, e) for e in entries if (v := metric_value(e, metric)) is not None]
    sign = 1.0 if mode == "min" else -1.0
    scored.sort(key=lambda ve: (sign * ve[0], -ve[1].idx))
    return [e for _, e in scored]


def best(entries: Iterable[Entry], metric: str, mode: str = "min") -> Optional[Entry]:
    """The best entry by ``metric``, or None when no entry has a rankable value."""
    ranked = rank(entries, metric, mode)
    return ranked[0] if ranked else None


def kept_by(entries: Iterable[Entry], policy: RetentionPolicy) -> dict[str, set[int]]:
    """For each active policy, the indices it keeps on its own (before the union)."""
    by_idx = {e.idx: e for e in entries}  # one entry per index; a later duplicate wins
    ordered = sorted(by_idx.values(), key=lambda e: e.idx)
    out: dict[str, set[int]] = {}
    if policy.keep_last is not None:
        out["keep_last"] = {e.idx for e in ordered[-policy.keep_last:]}
    if policy.keep_every is not None:
        out["keep_every"] = {e.idx for e in ordered if e.idx % policy.keep_every == 0}
    if policy.keep_best is not None and policy.metric is not None:
        out["keep_best"] = {e.idx for e in rank(ordered, policy.metric, policy.mode)[:policy.keep_best]}
    if policy.max_bytes is not None:
        fits: set[int] = set()
        total = 0
        for e in reversed(ordered):
            total += max(0, int(e.size))
            if total > policy.max_bytes:
                break
            fits.add(e.idx)
        out["max_bytes"] = fits
    return out


def select(entries: Iterable[Entry], policy: RetentionPolicy, newest: Optional[int],
           just_written: Optional[int] = None, *, protected: Iterable[int] = ()) -> set[int]:
    """The indices to keep: the union of every active policy's, plus ``newest``, ``just_written``
    and every ``protected`` index.

    With no active policy every entry is kept. ``newest``, ``just_written`` and
    ``protected`` are kept even when they are not among ``entries``' indices.
    """
    entries = list(entries)
    if not policy.active:
        kept = {e.idx for e in entries}
    else:
        kept = set().union(*kept_by(entries, policy).values())
    kept.update(i for i in (newest, just_written) if i is not None)
    kept.update(protected)
    return kept


@dataclass
class Plan:
    """What a prune would do: the readable ``entries`` and the ``damaged`` files (index -> why) it
    skipped, what it keeps (and which policy keeps what), what it deletes, and the newest
    checkpoint that verified (None when nothing had to be deleted, so none was checked)."""

    entries: list[Entry] = field(default_factory=list)
    damaged: dict[int, str] = field(default_factory=dict)
    keep: set[int] = field(default_factory=set)
    kept_by_policy: set[int] = field(default_factory=set)
    kept_by: dict[str, set[int]] = field(default_factory=dict)
    delete: list[int] = field(default_factory=list)
    newest_verified: Optional[int] = None
    missing_metric: list[int] = field(default_factory=list)

    def entries_by_idx(self) -> dict[int, Entry]:
        return {e.idx: e for e in self.entries}


def normalize_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics as plain JSON values (numpy and JAX scalars become Python numbers), for the manifest."""
    from .serializers import is_jsonable  # serializers imports numpy; keep this module import-light

    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping of name -> value, not {type(metrics).__name__}")
    out: dict[str, Any] = {}
    for name, value in metrics.items():
        if type(name) is not str:
            raise TypeError(f"metric names must be strings, not {type(name).__name__} ({name!r})")
        if type(value) not in (bool, int, float, str, type(None)) and hasattr(value, "__array__"):
            import numpy as np

            arr = np.asarray(value)
            if arr.shape == () and arr.dtype.kind in "biuf":
                value = arr.item()
        if not is_jsonable(value):
            raise TypeError(f"metric {name!r} is a {type(value).__name__}; metrics are stored as JSON in the "
                            "manifest: give numbers, strings, booleans, None, or lists/dicts of them")
        out[name] = value
    return out
