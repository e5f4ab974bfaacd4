"""The manifest: the JSON member that makes a zip a pack, and its validation.

Schema (format version 2, see docs/FORMAT.md; version 1 is the same with sha256 digests only)::

    {"format": "ckpt.pack", "version": 2,
     "created_at": "2026-11-21T22:00:00.000000Z", "updated_at": "...",
     "metadata": {...},
     "members": {"0.npy": {"size": 128, "blake3": "<64 hex>"}, ...},
     "slots": {"main": {"serializer": "arrays", "members": ["names.npy", "0.npy"],
                        "size": 256, "blake3": "<64 hex>", "created_at": "...",
                        "dependencies": {"numpy": {"version": "2.1.0", "requires": ">=2,<3"}},
                        "info": {...serializer specific...}}}}
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from . import _digest, _json, _limits, _slotnames
from .errors import FormatError

MANIFEST_MEMBER = "__ckpt__/manifest.json"
FORMAT_NAME = "ckpt.pack"
#: What a ``serializer`` value may be: a built-in kind, or a registered one (``mylib.sparse``); a reader
#: opens a file naming a kind it does not know, and refuses only to load that slot.
KIND_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def utc_now() -> str:
    """The current UTC time as ISO 8601 with a Z; honours SOURCE_DATE_EPOCH for reproducible files."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch and epoch.isascii() and epoch.isdigit():
        now = _dt.datetime.fromtimestamp(int(epoch), tz=_dt.timezone.utc)
    else:
        now = _dt.datetime.now(tz=_dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> _dt.datetime:
    return _dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=_dt.timezone.utc)


def slot_digest(member_hashes: list[str], algorithm: str = "sha256", file: Optional[str] = None) -> str:
    """A slot's digest: ``algorithm`` over its members' raw digests, concatenated in order."""
    return _digest.slot_digest(member_hashes, algorithm, file)


#: The oldest format version that can record a digest algorithm (version 1 knows sha256 only).
_VERSION_FOR = {"sha256": 1, "blake3": 2}


@dataclass
class SlotInfo:
    """What the manifest records about one slot."""

    serializer: str
    members: list[str]
    size: int
    digest: Optional[str]
    created_at: Optional[str]
    dependencies: dict[str, dict[str, str]]
    info: dict[str, Any] = field(default_factory=dict)
    algorithm: str = "sha256"  #: what :attr:`digest` is: ``"sha256"`` or ``"blake3"``

    @property
    def sha256(self) -> Optional[str]:
        """The slot's digest when it is a sha256 (files written before BLAKE3, or with sha256 chosen)."""
        return self.digest if self.algorithm == "sha256" else None

    @property
    def serialized_sha256_hash(self) -> Optional[str]:
        """MLIO's name for :attr:`sha256`."""
        return self.sha256

    def to_json(self) -> dict[str, Any]:
        return {
            "serializer": self.serializer,
            "members": list(self.members),
            "size": self.size,
            self.algorithm: self.digest,
            "created_at": self.created_at,
            "dependencies": self.dependencies,
            "info": self.info,
        }


@dataclass
class ManifestInfo:
    """Pack-wide facts: format version, creation and update times (UTC), user metadata."""

    format_version: int
    created_at: Optional[_dt.datetime]
    updated_at: Optional[_dt.datetime]
    metadata: dict[str, Any]


def encode(
    *,
    created_at: str,
    updated_at: str,
    metadata: Mapping[str, Any],
    members: Mapping[str, Mapping[str, Any]],
    slots: Mapping[str, SlotInfo],
) -> bytes:
    used = {a for m in members.values() for a in _digest.ALGORITHMS if a in m}
    used.update(s.algorithm for s in slots.values())
    doc = {
        "format": FORMAT_NAME,
        # The oldest version that holds these digests, so older readers open sha256-only files.
        "version": max([1, *(_VERSION_FOR[a] for a in used),
                        *(OBJECTS_VERSION for m in members.values() if m.get("object"))]),
        "created_at": created_at,
        "updated_at": updated_at,
        "metadata": dict(metadata),
        "members": {k: dict(v) for k, v in members.items()},
        "slots": {k: v.to_json() for k, v in slots.items()},
    }
    try:
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise TypeError(f"pack metadata must be JSON-serialisable: {e}") from None


def _require(cond: bool, file: Optional[str], what: str) -> None:
    if not cond:
        raise FormatError(f"{file}: invalid manifest: {what}", file=file)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_info(slot: str, serializer: str, info: dict[str, Any], file: Optional[str]) -> None:
    """The types of the ``info`` fields readers rely on (arrays and pickle slots, section 3)."""
    if serializer not in ("arrays", "pickle"):
        return
    arrays = info.get("arrays", [])
    _require(isinstance(arrays, list) and all(isinstance(a, dict) for a in arrays), file,
             f"slot {slot!r} info.arrays is not a list of objects")
    _require(len(arrays) <= _limits.MAX_MEMBERS, file,
             f"slot {slot!r} records {len(arrays)} arrays, more than the {_limits.MAX_MEMBERS} members a file may hold")
    for i, a in enumerate(arrays):  # messages are only built for a failing check (this runs per array)
        name, dtype, shape = a.get("name", ""), a.get("dtype", ""), a.get("shape", [])
        if (type(name) is str and type(dtype) is str and type(shape) is list and len(dtype) <= 256
                and len(name) <= _limits.MAX_NAME_BYTES and len(shape) <= _limits.MAX_NDIM
                and all(type(d) is int and 0 <= d < 1 << 63 for d in shape)):
            continue  # the common case, checked at once; anything else is told apart below
        for key, kind in (("name", str), ("dtype", str), ("shape", list)):
            if key in a and not isinstance(a[key], kind):
                _require(False, file, f"slot {slot!r} info.arrays[{i}].{key} is not a {kind.__name__}")
        shape = a.get("shape", [])
        if not (len(shape) <= _limits.MAX_NDIM and all(_is_int(d) and d < 1 << 63 for d in shape)):
            _require(False, file, f"slot {slot!r} info.arrays[{i}].shape is not at most {_limits.MAX_NDIM} "
                     "dimensions below 2**63")
        if not (len(a.get("dtype", "")) <= 256 and len(a.get("name", "")) <= _limits.MAX_NAME_BYTES):
            _require(False, file, f"slot {slot!r} info.arrays[{i}] has an over-long dtype or name")
    if serializer == "arrays":
        layout = info.get("layout", "objax")
        _require(layout in ("objax", "named"), file, f"slot {slot!r} has unknown arrays layout {layout!r:.80}")
        _require(isinstance(info.get("kind", "dict"), str), file, f"slot {slot!r} info.kind is not a string")
        if layout == "named":
            _require(all("name" in a for a in arrays), file, f"slot {slot!r} has a named layout without names")


def slot_name_problem(name: Any) -> Optional[str]:
    """Why ``name`` is not a valid slot name (FORMAT section 2.3), or None; writers and readers share it."""
    return _slotnames.problem(name)


def _check_dependencies(slot: str, deps: Any, file: Optional[str]) -> None:
    """Dependency records are bounded before any specifier is parsed (each costs a parse per load)."""
    _require(isinstance(deps, dict) and all(
        isinstance(v, dict) and isinstance(v.get("version"), str) and isinstance(v.get("requires", ""), str)
        for v in deps.values()), file, f"slot {slot!r} has malformed dependencies")
    _require(len(deps) <= _limits.MAX_DEPENDENCIES, file,
             f"slot {slot!r} records {len(deps)} dependencies, over the limit of {_limits.MAX_DEPENDENCIES}")
    for pkg, v in deps.items():
        req = v.get("requires", "")
        _require(len(pkg) <= 100 and len(v["version"]) <= 100, file,
                 f"slot {slot!r} dependency {pkg[:100]!r} has an over-long name or version")
        _require(len(req) <= _limits.MAX_REQUIRES_CHARS and req.count(",") < _limits.MAX_REQUIRES_CLAUSES, file,
                 f"slot {slot!r} dependency {pkg!r} requires {len(req)} characters / {req.count(',') + 1} clauses; "
                 f"the limits are {_limits.MAX_REQUIRES_CHARS} and {_limits.MAX_REQUIRES_CLAUSES}")


def _digest_field(what: str, record: dict[str, Any], version: int, file: Optional[str]) -> tuple[str, str]:
    """The one (algorithm, digest) of a member or slot record, in a form this version allows."""
    allowed = _allowed(version)
    present = [a for a in _digest.ALGORITHMS if a in record]
    if len(present) != 1:
        _require(False, file, f"{what} records {' and '.join(present) or 'no digest'}; expected exactly one of "
                 f"{', '.join(allowed)} (format version {version})")
    alg = present[0]
    if alg not in allowed:
        _require(False, file, f"{what} records a {alg} digest, which format version {version} does not have")
    value = record[alg]
    if not (isinstance(value, str) and _HEX64.fullmatch(value)):
        _require(False, file, f"{what} {alg} {value!r:.80} is not 64 lowercase hex digits")
    return alg, value


@functools.lru_cache(maxsize=None)
def _allowed(version: int) -> tuple[str, ...]:
    return tuple(a for a in _digest.ALGORITHMS if _VERSION_FOR[a] <= max(version, 1))  # 0: as before, like 1


#: The format version that introduced members stored as shared objects (``"object": true``).
OBJECTS_VERSION = 3


def _check_object_member(name: str, m: dict[str, Any], version: int, zip_members: Mapping[str, int],
                         file: Optional[str]) -> None:
    """A member stored outside the archive as a shared object: ``{"size", <digest>, "object": true}``."""
    _require(version >= OBJECTS_VERSION, file,
             f"member {name!r} is a shared object, which format version {version} does not have")
    _require(m["object"] is True, file, f"member {name!r} has object {m['object']!r:.40}; expected true")
    _require(name not in zip_members, file, f"member {name!r} is a shared object and also in the archive")
    _require(name.endswith((".npy", ".ckz")), file,
             f"member {name!r} is a shared object but not an array member (.npy or .ckz)")
    _require(_is_int(m.get("size")), file, f"member {name!r} has no valid size")


def decode(data: bytes, file: Optional[str], zip_members: Mapping[str, int], *,
           stored_bytes: Optional[int] = None) -> tuple[dict[str, Any], dict[str, SlotInfo]]:
    """Parse and validate a manifest against the zip's members (name -> size).

    ``stored_bytes`` is the manifest's size in the file (its compressed size when deflated)."""
    doc = _json.parse(data, stored_bytes=stored_bytes, what=f"{file}: manifest", file=file)
    _require(isinstance(doc, dict), file, "top level is not an object")
    _require(doc.get("format") == FORMAT_NAME, file, f"format is {doc.get('format')!r}, expected {FORMAT_NAME!r}")
    version = doc.get("version")
    _require(_is_int(version), file, f"version {version!r} is not a whole number")
    if version > _limits.FORMAT_VERSION:
        raise FormatError(
            f"{file}: written in pack format version {version}; this ckpt reads up to version "
            f"{_limits.FORMAT_VERSION}. Upgrade ckpt to read it.",
            file=file,
        )
    for key in ("created_at", "updated_at"):
        _require(isinstance(doc.get(key), str), file, f"{key} is missing or not a string")
        try:
            parse_time(doc[key])
        except ValueError:
            raise FormatError(f"{file}: invalid manifest: {key} {doc[key]!r} is not a UTC timestamp", file=file) from None
    _require(isinstance(doc.get("metadata"), dict), file, "metadata is not an object")
    members = doc.get("members")
    _require(isinstance(members, dict), file, "members is not an object")
    objects: set[str] = set()
    for name, m in members.items():
        if isinstance(m, dict) and "object" in m:  # a reference to a shared object (section 2.3)
            _check_object_member(name, m, version, zip_members, file)
            objects.add(name)
        elif not (name in zip_members and isinstance(m, dict) and _is_int(m.get("size"))
                  and m["size"] == zip_members[name]):  # messages built only for a failing member
            _require(name in zip_members, file, f"member {name!r} is listed but not in the archive")
            _require(isinstance(m, dict) and _is_int(m.get("size")), file, f"member {name!r} has no valid size")
            _require(m["size"] == zip_members[name], file,
                     f"member {name!r} is {zip_members[name]} bytes in the archive, manifest says {m['size']}")
        _digest_field(f"member {name!r}", m, version, file)
    slots_doc = doc.get("slots")
    _require(isinstance(slots_doc, dict), file, "slots is not an object")
    slots: dict[str, SlotInfo] = {}
    for name, s in slots_doc.items():
        problem = slot_name_problem(name)
        _require(problem is None, file, f"slot name {name!r:.80} {problem}")
        _require(isinstance(s, dict), file, f"slot {name!r} is not an object")
        ser = s.get("serializer")
        _require(isinstance(ser, str) and KIND_NAME.fullmatch(ser) is not None, file,
                 f"slot {name!r} serializer {ser!r:.80} is not a slot kind name")
        mem = s.get("members")
        _require(isinstance(mem, list) and all(isinstance(x, str) and x in members for x in mem), file,
                 f"slot {name!r} lists members missing from the member table")
        _require(name != "main" or ser != "arrays" or len(set(mem)) == len(mem), file,
                 f"the main arrays slot lists a member more than once ({len(mem)} entries, "
                 f"{len(set(mem))} members); its members must not be shared")
        _require(ser == "arrays" or not objects.intersection(mem), file,
                 f"slot {name!r} holds {ser} data; only arrays slots may refer to shared objects")
        alg, sha = _digest_field(f"slot {name!r}", s, version, file)
        _require(sha == slot_digest([_digest.of(members[x])[1] for x in mem], alg, file), file,  # type: ignore[index]
                 f"slot {name!r} {alg} does not match its members' hashes")
        _require(_is_int(s.get("size")), file, f"slot {name!r} has no valid size")
        deps = s.get("dependencies", {})
        _check_dependencies(name, deps, file)
        info = s.get("info", {})
        _require(isinstance(info, dict), file, f"slot {name!r} info is not an object")
        _check_info(name, ser, info, file)
        slots[name] = SlotInfo(ser, mem, s["size"], sha, s.get("created_at"), deps, info, alg)
    return doc, slots
