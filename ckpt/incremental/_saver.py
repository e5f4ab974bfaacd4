"""What one incremental save writes, and what it only refers to.

Each array member of at least ``min_bytes`` becomes a shared object (see :mod:`._objects`);
smaller ones stay in the checkpoint file, where writing them again costs less than a file of
their own. For every such member the saver decides, in this order:

1. **Same JAX array as last time** (identity fast path): the leaf is the very object saved last
   time under the same slot and name -- held by a weak reference, so ``ref() is leaf`` means it
   was never freed and its ``id`` cannot have been reused -- it is not deleted (a donated buffer),
   and its shape, dtype and member kind are unchanged. JAX arrays are immutable: the same live
   object holds the same bytes, so its digest is the one recorded then and it is neither copied
   to the host nor hashed. The object's existence is still checked (one ``stat``). numpy arrays
   are mutable and never take this path.
2. **Expected to be reused** (the name's content was found in the store last time, or this is the
   manager's first save into a non-empty store): hash first; refer to the object if it exists,
   else write it (hashing again on the way, refusing bytes that changed in between).
3. **Expected to be new** (it changed last time, or the store is empty): write the object while
   hashing, in one pass, and drop the copy if an object of that digest turns out to exist. This
   keeps a dense model, where nothing is reused, at one pass over its bytes, like a normal save.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import weakref
from typing import Any, Mapping, Optional

from .. import _digest, collections as _coll, serializers as _ser
from ..storage import Storage
from ._objects import ObjectStore, ext_of

log = logging.getLogger("ckpt")

#: Array members smaller than this stay in the checkpoint file (a file per tiny array costs more).
DEFAULT_MIN_BYTES = 64 * 1024


@dataclasses.dataclass
class _Seen:
    """One array member as the previous save stored it."""

    ref: Optional["weakref.ref[Any]"]  # the JAX array saved (None: a numpy array, never trusted by identity)
    shape: tuple[int, ...]
    dtype: Any
    algorithm: str
    digest: str
    ext: str
    size: int
    reused: bool  # its content was in the store already


@dataclasses.dataclass
class SaveStats:
    """What the last incremental save did, in bytes of array members (for logs and benchmarks)."""

    written: int = 0  # new objects written
    reused: int = 0  # found in the store by digest (hashed, not written)
    identical: int = 0  # same JAX array as last time: neither hashed nor written
    inline: int = 0  # small members kept in the checkpoint file
    objects_written: int = 0
    objects_referenced: int = 0


@dataclasses.dataclass
class _Leaf:
    slot: str
    name: str
    ref: Optional["weakref.ref[Any]"]
    shape: tuple[int, ...]
    dtype: Any
    same: Optional[_Seen]  # the identity fast path applies with this record


class PlannedSlots(dict):  # type: ignore[type-arg]
    """Encoded slots that carry their :class:`SavePlan` to the commit (which may run in the save thread)."""

    plan: "SavePlan"


@dataclasses.dataclass
class SavePlan:
    """The leaves of one save, matched against the previous save on the caller's thread."""

    leaves: dict[tuple[str, int], _Leaf]  # (slot, member index) -> leaf
    seen: dict[tuple[str, str], _Seen] = dataclasses.field(default_factory=dict)  # filled by store()


def _weak(leaf: Any) -> Optional["weakref.ref[Any]"]:
    if not _coll.is_jax_array(leaf):
        return None
    try:
        return weakref.ref(leaf)
    except TypeError:
        return None


def _deleted(leaf: Any) -> bool:
    check = getattr(leaf, "is_deleted", None)
    try:
        return bool(check()) if callable(check) else False
    except Exception:  # noqa: BLE001 - an array whose state cannot be read is not trusted
        return True


class IncrementalSaver:
    """Turns encoded slots into a checkpoint that refers to shared objects; one per manager."""

    def __init__(self, storage: Storage, *, min_bytes: int = DEFAULT_MIN_BYTES):
        if isinstance(min_bytes, bool) or not isinstance(min_bytes, int) or min_bytes < 1:
            raise ValueError(f"incremental_min_bytes must be an integer >= 1, not {min_bytes!r}")
        self.objects = ObjectStore(storage)
        self.min_bytes = min_bytes
        self.stats = SaveStats()
        self._seen: dict[tuple[str, str], _Seen] = {}
        self._lock = threading.Lock()

    def planned(self, slots: Mapping[str, Any], encoded: Mapping[str, _ser.Encoded]) -> PlannedSlots:
        """``encoded`` with the plan of :meth:`plan` attached, for the manager's commit."""
        out = PlannedSlots(encoded)
        out.plan = self.plan(slots, encoded)
        return out

    def plan(self, slots: Mapping[str, Any], encoded: Mapping[str, _ser.Encoded]) -> SavePlan:
        """Match the original leaves (before any snapshot copy) against the previous save."""
        leaves: dict[tuple[str, int], _Leaf] = {}
        with self._lock:
            seen = dict(self._seen)
        for slot, enc in encoded.items():
            if enc.serializer != "arrays" or enc.info.get("layout") != "objax":
                continue
            flat = _coll.flatten(slots[slot])
            if flat is None or len(flat.leaves) != len(enc.members) - 1:
                continue
            for i, (name, leaf) in enumerate(zip(flat.names, flat.leaves), start=1):
                shape, dtype = _coll.shape_dtype(leaf)
                ref = _weak(leaf)
                before = seen.get((slot, name))
                same = None
                if (ref is not None and before is not None and before.ref is not None and before.ref() is leaf
                        and not _deleted(leaf) and before.shape == shape and before.dtype == dtype
                        and before.ext == ext_of(enc.members[i].suffix)):
                    same = before
                leaves[(slot, i)] = _Leaf(slot, name, ref, shape, dtype, same)
        return SavePlan(leaves)

    def store(self, plan: SavePlan, encoded: Mapping[str, _ser.Encoded]) -> dict[str, _ser.Encoded]:
        """Write the objects this save needs (durably) and return slots that refer to them.

        Runs under the directory lock, before the checkpoint file is written.
        """
        algorithm = _digest.default()
        stats = SaveStats()
        first = not self._seen and self.objects.is_empty()
        out: dict[str, _ser.Encoded] = {}
        for slot, enc in encoded.items():
            members = list(enc.members)
            for i, src in enumerate(members):
                leaf = plan.leaves.get((slot, i))
                if leaf is None or src.size < self.min_bytes or src.shared is not None:
                    if leaf is not None:
                        stats.inline += src.size
                    continue
                members[i] = self._member(src, leaf, algorithm, plan, stats, expect_new=first)
            out[slot] = dataclasses.replace(enc, members=members) if members != enc.members else enc
        self.objects.sync()
        self.stats = stats
        return out

    def _member(self, src: _ser.MemberSource, leaf: _Leaf, algorithm: str, plan: SavePlan, stats: SaveStats,
                *, expect_new: bool) -> _ser.MemberSource:
        ext = ext_of(src.suffix)
        same = leaf.same
        if (same is not None and same.algorithm == algorithm and (not src.exact or same.size == src.size)
                and self.objects.has(algorithm, same.digest, ext, same.size)):
            stats.identical += same.size
            return self._shared(src, leaf, plan, stats, same.digest, same.size, algorithm, reused=True)
        with self._lock:
            before = self._seen.get((leaf.slot, leaf.name))
        reuse_likely = before.reused if before is not None else not expect_new
        if reuse_likely and src.exact:
            hasher = _digest.new(algorithm)
            for chunk in src.chunks():
                hasher.update(chunk)
            digest = hasher.hexdigest()
            if self.objects.has(algorithm, digest, ext, src.size):
                stats.reused += src.size
                return self._shared(src, leaf, plan, stats, digest, src.size, algorithm, reused=True)
            _, size, written = self.objects.put(algorithm, ext, src.chunks(), expect=digest)
        else:
            digest, size, written = self.objects.put(algorithm, ext, src.chunks())
        if written:
            stats.written += size
            stats.objects_written += 1
        else:
            stats.reused += size
        return self._shared(src, leaf, plan, stats, digest, size, algorithm, reused=not written)

    @staticmethod
    def _shared(src: _ser.MemberSource, leaf: _Leaf, plan: SavePlan, stats: SaveStats, digest: str, size: int,
                algorithm: str, *, reused: bool) -> _ser.MemberSource:
        stats.objects_referenced += 1
        plan.seen[(leaf.slot, leaf.name)] = _Seen(leaf.ref, leaf.shape, leaf.dtype, algorithm, digest,
                                                  ext_of(src.suffix), size, reused)
        return _ser.MemberSource(src.suffix, size, lambda: (), None, True, (algorithm, digest))

    def committed(self, plan: SavePlan) -> None:
        """The checkpoint of ``plan`` is durable: its members are what the next save compares against."""
        with self._lock:
            self._seen = plan.seen
        s = self.stats
        log.debug("incremental save: %d bytes written in %d new objects, %d reused by digest, %d identical "
                  "JAX arrays (not hashed), %d bytes inline", s.written, s.objects_written, s.reused, s.identical,
                  s.inline)
