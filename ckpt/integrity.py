"""``ckpt.verify``: check every hash and structure of a checkpoint file or of a directory of them.

The same pass as ``ckpt verify`` and ``ckpt ls --verify``: every member against its digest (zip CRCs
for files without a manifest), every array header, JSON slot and pickle opcode stream parsed, and no
member the manifest does not list. Nothing is unpickled or imported. A problem is reported as one
line naming the file, never raised, so one damaged file does not hide the others.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from . import _locations as _loc, _npy
from ._locations import Location
from .distributed import record as _dist_record
from .errors import CkptError, FormatError
from .manifest import MANIFEST_MEMBER
from .varfile import open_reader

__all__ = ["FileCheck", "VerifyReport", "verify", "verify_file", "files_to_verify", "explain", "holds_object_arrays",
           "PICKLED_ARRAYS"]

Progress = Optional[Callable[[int], None]]

#: The problem of an .npz whose arrays numpy pickled: refused, not damaged.
PICKLED_ARRAYS = "holds pickled object arrays; refused unless trusted"


@dataclass(frozen=True)
class FileCheck:
    """One file's verdict: ``ok``, else ``problem`` (one line, without the location) and whether the
    file is only ``refused`` (numpy pickled its object arrays) rather than damaged."""

    location: str
    ok: bool
    problem: Optional[str] = None
    refused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.location, "ok": self.ok, "problem": self.problem, "refused": self.refused}


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify` checked: the ``files`` (empty for a directory without checkpoints)."""

    location: str
    files: list[FileCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True only when something was checked and every file is intact."""
        return bool(self.files) and all(f.ok for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.location, "files": [f.to_dict() for f in self.files], "ok": self.ok}


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def holds_object_arrays(location: Location) -> bool:
    """Whether a file's ``.npy`` members include object arrays (numpy pickles those), read with numpy's
    own header parser; such a file is not damaged, only refused."""
    try:
        with open_reader(location) as reader:
            for name in list(reader.members)[:10000]:
                if not name.endswith(".npy"):
                    continue
                f = io.BytesIO(reader.read_head(name))
                read = {(1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(f))
                if read is not None and read(f)[2].hasobject:
                    return True
    except Exception:  # a best-effort diagnosis of a file already refused: any failure here means "no"
        return False
    return False


def explain(error: BaseException, location: Optional[Location] = None) -> str:
    """An exception as one line that names the file once (``location``, else the error's ``file``)."""
    path = None if location is None else _loc.text(location)
    if isinstance(error, OSError) and not isinstance(error, CkptError) and error.strerror:
        where = error.filename if error.filename is not None else path
        msg = error.strerror[0].lower() + error.strerror[1:]
        return f"{where}: {msg}" if where else msg
    where = path or getattr(error, "file", None)
    if isinstance(error, FormatError) and isinstance(where, str) and _loc.is_file(where) and \
            holds_object_arrays(where):
        return f"{where}: {PICKLED_ARRAYS}"  # not damaged: numpy pickled the objects, ckpt will not unpickle
    msg = _one_line(str(error) or type(error).__name__)
    if isinstance(error, KeyError) and not isinstance(error, CkptError) and len(error.args) == 1:
        msg = _one_line(str(error.args[0]))
    if path and not msg.startswith(path):
        msg = f"{path}: {msg}"
    return msg


def _strip(msg: str, path: str) -> str:
    prefix = f"{path}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


def _check(location: Location, progress: Progress) -> int:
    """Verify one file; returns the bytes verified (for progress), raises on the first problem."""
    done = 0
    path = _loc.text(location)
    with open_reader(location) as reader:
        seen: set[str] = set()
        for slot, info in reader.slots.items():
            for member in info.members:
                if member in seen:
                    continue
                seen.add(member)
                size = reader.member_size(member)
                reader.verify_member(member, slot=slot)
                done += size
                if progress is not None:
                    progress(size)
        if reader.has_manifest:
            extra = sorted(set(reader.zip.members) - set(reader.members) - {MANIFEST_MEMBER})
            if extra:
                raise FormatError(f"{path}: members not listed in the manifest: {', '.join(extra[:5])}", file=path)
        for slot, info in reader.slots.items():
            where = f"{path}: slot {slot!r}"
            if info.serializer == "arrays":
                view = reader.arrays(slot, verify=False)
                for name in view.names:
                    view.shape_dtype(name)
            elif info.serializer == "pickle":
                reader.pickle_globals(slot)
                for member in info.members[1:]:
                    _npy.parse_header(reader.read_head(member), reader.member_size(member),
                                      where=f"{where} member {member!r}")
            elif info.serializer == "json":
                reader.load(slot, verify=False)
        if _dist_record.is_record(reader):  # a multi-process checkpoint: every shard's size and digest
            _dist_record.read(reader).verify()
    return done


def verify_file(location: Location, *, progress: Progress = None) -> FileCheck:
    """Check one file (see the module docstring); ``progress(n)`` is called with bytes as they are checked."""
    path = _loc.text(location)
    done = 0
    try:
        done = _check(location, progress)
    except (CkptError, OSError, ValueError) as e:
        problem = explain(e, path)
        return FileCheck(path, False, _strip(problem, path), problem.endswith(PICKLED_ARRAYS))
    finally:
        if progress is not None:
            progress(max(0, (_loc.size(location) or 0) - done))
    return FileCheck(path, True)


def files_to_verify(location: Location) -> list[str]:
    """The files :func:`verify` checks: ``location`` itself, or a directory's checkpoints (those of a
    log directory, else its ``.npz`` files)."""
    if not _loc.is_dir(location):
        _loc.require_file(location)
        return [_loc.text(location)]
    from .listing import open_run

    ck = open_run(location)
    files = [ck.path(i) for i in ck.indices()]
    return files or _loc.npz_files(location)  # a directory of exported or hand-made files


def verify(location: Location, *, progress: Progress = None,
           on_file: Optional[Callable[[str, Optional[int]], None]] = None) -> VerifyReport:
    """Verify a checkpoint file, or every checkpoint of a log directory (or every ``.npz`` in a
    directory). A missing file raises (FileNotFoundError); damage is reported, not raised.

    ``on_file(location, size)`` is called before each file, ``progress(n)`` as its bytes are checked.
    """
    checks = []
    for path in files_to_verify(location):
        if on_file is not None:
            on_file(path, _loc.size(path))
        checks.append(verify_file(path, progress=progress))
    return VerifyReport(_loc.text(location), checks)
