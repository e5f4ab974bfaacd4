"""Runs as the ``ckpt`` command and users see them: open a log directory, list its checkpoints with
their metrics and state, and plan or apply a prune with the reason each checkpoint stays.

``ckpt ls`` is :func:`list_checkpoints` plus printing; ``ckpt prune`` is :func:`prune_run`. Metrics
come from :func:`ckpt.metrics.metrics_of`, the definition retention and ``Checkpoint.best`` use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import _locations as _loc, aliases as _aliases, retention as _ret
from ._locations import Location
from .checkpoint import Checkpoint
from .errors import CkptError
from .metrics import metrics_of
from .varfile import open_reader
from .integrity import explain, verify_file

__all__ = ["open_run", "is_bare", "CheckpointRecord", "Listing", "list_checkpoints", "PruneRow", "PruneReport", "prune_run",
           "display_root", "display_location"]

#: A checkpoint's state in a listing: opened (hashes not checked), verified intact, or damaged.
STATES = ("unverified", "ok", "damaged")


def open_run(logdir: Location, **policy: Any) -> Checkpoint:
    """The read-only manager of ``logdir``: its ``ckpt/`` subdirectory, or ``logdir`` itself when the
    checkpoints are directly in it. ``policy`` is passed to :class:`Checkpoint` (keep_ckpts, metric, ...)."""
    _loc.require_dir(logdir)
    ck = Checkpoint(_loc.text(logdir), makedir=False, verbose=False, **policy)
    if not _loc.is_dir(ck.directory):
        bare = Checkpoint(_loc.text(logdir), makedir=False, verbose=False, **policy)
        bare.DIR_NAME = ""  # type: ignore[misc]  # checkpoints directly in the given directory
        if bare.indices():
            return bare
    return ck


def is_bare(ck: Checkpoint) -> bool:
    """Whether :func:`open_run` found the checkpoints directly in the given directory."""
    return vars(ck).get("DIR_NAME") == ""


@dataclass
class CheckpointRecord:
    """One checkpoint of a listing. ``state`` is one of :data:`STATES`; ``problem`` says why a damaged
    one is damaged (one line naming the file)."""

    idx: int
    location: str
    size: Optional[int]
    created_at: Optional[str] = None
    updated_at: Optional[str] = None
    metrics: dict[str, Any] = field(default_factory=dict)
    state: str = "unverified"
    problem: Optional[str] = None
    aliases: list[str] = field(default_factory=list)
    newest: bool = False
    best: bool = False
    keep: Optional[bool] = None
    kept_by: Optional[list[str]] = None

    @property
    def verified(self) -> Optional[bool]:
        """True/False once hashed (or found damaged), None when only opened."""
        return None if self.state == "unverified" else self.state == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.idx, "path": self.location, "size": self.size, "created_at": self.created_at,
                "updated_at": self.updated_at, "metrics": self.metrics, "verified": self.verified,
                "error": self.problem, "state": self.state, "newest": self.newest, "best": self.best,
                "aliases": self.aliases, **({} if self.kept_by is None else {"keep": self.keep, "kept_by": self.kept_by})}


@dataclass
class Listing:
    """What :func:`list_checkpoints` found in ``directory``: records ascending by index, the newest, and
    with a ``metric`` the best (None when no intact checkpoint records a rankable value)."""

    directory: str
    records: list[CheckpointRecord]
    metric: Optional[str] = None
    mode: str = "min"

    @property
    def newest(self) -> Optional[int]:
        return self.records[-1].idx if self.records else None

    @property
    def best(self) -> Optional[int]:
        return next((r.idx for r in self.records if r.best), None)

    @property
    def damaged(self) -> list[CheckpointRecord]:
        return [r for r in self.records if r.state == "damaged"]

    def to_dict(self) -> dict[str, Any]:
        return {"directory": self.directory, "checkpoints": [r.to_dict() for r in self.records],
                "newest": self.newest, "best": self.best, "metric": self.metric, "mode": self.mode}


def _record(idx: int, path: str) -> Optional[CheckpointRecord]:
    rec = CheckpointRecord(idx, path, _loc.size(path))
    try:
        with open_reader(path) as reader:
            rec.created_at = reader.created_at
            rec.updated_at = reader.updated_at or _loc.mtime_iso(path)
            rec.metrics = metrics_of(reader)
    except FileNotFoundError:
        return None  # rotated away since the listing
    except (CkptError, OSError, ValueError) as e:
        rec.state, rec.problem, rec.updated_at = "damaged", explain(e, path), _loc.mtime_iso(path)
    return rec


def list_checkpoints(logdir: Location, *, verify: bool = False, metric: Optional[str] = None, mode: str = "min",
                     retention: Optional[_ret.RetentionPolicy] = None,
                     progress: Optional[Callable[[int], None]] = None) -> Listing:
    """The checkpoints of ``logdir`` (see :func:`open_run`) with size, times, metrics, aliases and state.

    Each file's manifest is read (and with ``verify`` every hash, see :func:`ckpt.verify`); a file that
    does not open is listed as damaged, never raised. With ``metric`` the best intact checkpoint by it
    (``mode`` "min" or "max", as ``Checkpoint.best``) is marked. With ``retention`` (a
    :class:`~ckpt.RetentionPolicy`) each record also says whether a prune would ``keep`` it and why
    (``kept_by``, as :func:`prune_run`); nothing is deleted.
    """
    if mode not in _ret.MODES:
        raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
    ck = open_run(logdir)
    records = []
    for idx in ck.indices():
        rec = _record(idx, ck.path(idx))
        if rec is None:
            continue
        if verify and rec.state != "damaged":
            check = verify_file(rec.location, progress=progress)
            rec.state = "ok" if check.ok else "damaged"
            rec.problem = None if check.ok else f"{rec.location}: {check.problem}"
        records.append(rec)
    if records:
        records[-1].newest = True
    aliased = _aliases.by_index(ck.directory)
    for rec in records:
        rec.aliases = aliased.get(rec.idx, [])
    if metric:
        scored = [_ret.Entry(r.idx, r.size or 0, r.metrics) for r in records if r.state != "damaged"]
        found = _ret.best(scored, metric, mode)
        for rec in records:
            rec.best = found is not None and rec.idx == found.idx
    if retention is not None:
        kept = {r.idx: r for r in prune_run(logdir, dry_run=True, **_policy_args(retention)).rows}
        for rec in records:
            row = kept.get(rec.idx)
            rec.keep, rec.kept_by = (True, []) if row is None else (row.kept, row.kept_by)
    return Listing(ck.directory, records, metric, mode)


def _policy_args(policy: _ret.RetentionPolicy) -> dict[str, Any]:
    return {"keep": policy.keep_last, "keep_every": policy.keep_every, "keep_best": policy.keep_best,
            "metric": policy.metric, "mode": policy.mode, "max_bytes": policy.max_bytes}


@dataclass(frozen=True)
class PruneRow:
    """One checkpoint in a prune: whether it stays and which policies (or marks) keep it; ``damaged``
    (why) for a file retention skips: never counted, never deleted."""

    idx: int
    location: str
    size: int
    kept: bool
    kept_by: list[str]
    damaged: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        out = {"step": self.idx, "size": self.size, "kept": self.kept, "kept_by": self.kept_by, "path": self.location}
        if self.damaged is not None:
            out["damaged"] = self.damaged
        return out


@dataclass
class PruneReport:
    """What :func:`prune_run` did (or with ``dry_run`` would do) to ``directory``."""

    directory: str
    dry_run: bool
    rows: list[PruneRow] = field(default_factory=list)
    missing_metric: list[int] = field(default_factory=list)

    @property
    def deleted(self) -> list[int]:
        return [r.idx for r in self.rows if not r.kept]

    @property
    def skipped(self) -> list[PruneRow]:
        return [r for r in self.rows if r.damaged is not None]

    @property
    def freed_bytes(self) -> int:
        return sum(r.size for r in self.rows if not r.kept)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"directory": self.directory, "dry_run": self.dry_run, "deleted": self.deleted,
                               "kept": [r.idx for r in self.rows if r.kept and r.damaged is None],
                               "skipped": [{"step": r.idx, "problem": r.damaged} for r in self.skipped],
                               "freed_bytes": self.freed_bytes}
        if self.rows:
            doc["checkpoints"] = [r.to_dict() for r in self.rows]
        return doc


def prune_run(logdir: Location, *, keep: Optional[int] = None, keep_every: Optional[int] = None,
              keep_best: Optional[int] = None, metric: Optional[str] = None, mode: str = "min",
              max_bytes: Optional[int] = None, dry_run: bool = False) -> PruneReport:
    """Apply a retention policy to ``logdir`` once, as ``Checkpoint(...).prune()``, and say why each
    checkpoint stays. A ``keep_best`` metric no checkpoint records raises
    :class:`~ckpt.errors.UnknownMetricError` before anything is deleted."""
    ck = open_run(logdir, keep_ckpts=keep, keep_every=keep_every, keep_best=keep_best, metric=metric, mode=mode,
                  max_bytes=max_bytes)
    report = PruneReport(ck.directory, dry_run)
    if not ck.indices():
        return report
    plan = ck.plan_prune()  # a metric no checkpoint records raises here, before anything is deleted
    report.missing_metric = list(plan.missing_metric)
    removed = set(ck.prune(dry_run=dry_run))
    aliased = _aliases.by_index(ck.directory)
    for entry in plan.entries:
        why = [name for name, kept in plan.kept_by.items() if entry.idx in kept]
        if entry.idx == plan.entries[-1].idx:
            why.append("newest")
        if entry.idx == plan.newest_verified and entry.idx not in plan.kept_by_policy:
            why.append("newest intact")
        why += [f"alias:{a}" for a in aliased.get(entry.idx, [])]  # retention never deletes these
        report.rows.append(PruneRow(entry.idx, ck.path(entry.idx), entry.size, entry.idx not in removed, why))
    for idx, problem in plan.damaged.items():  # one row per damaged file: skipped, kept
        report.rows.append(PruneRow(idx, ck.path(idx), _loc.size(ck.path(idx)) or 0, True,
                                    [f"damaged, skipped: {problem}"], problem))
    report.rows.sort(key=lambda r: r.idx)
    return report


def display_root(root: Location) -> str:
    """The search root as ``ckpt find`` reports it (absolute for a local path)."""
    return _loc.absolute(root)


def display_location(location: Location, root: Location) -> str:
    """A found checkpoint's location relative to the search root, for tables."""
    return _loc.relative(location, root)
