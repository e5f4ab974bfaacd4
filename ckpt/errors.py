"""The exceptions and warnings ckpt raises.

Every error subclasses :class:`CkptError` and also the builtin it refines, so
``except ValueError`` keeps working for callers that do not know ckpt. Each
carries the file (and slot or variable where there is one) as attributes and
says what was expected, what was found, and where it helps, how to fix it.
"""

from __future__ import annotations

import contextlib
import pickle
from typing import Iterator, Optional, Sequence

__all__ = [
    "CkptError",
    "FormatError",
    "NotAPackError",
    "ChecksumError",
    "SlotNotFoundError",
    "SlotExistsError",
    "MismatchError",
    "UntrustedPickleError",
    "DependencyError",
    "DependencyWarning",
    "CheckpointNotFoundError",
    "ReadOnlyPackError",
    "SaveError",
    "SlotKindError",
    "LockedError",
    "UnknownMetricError",
    "CorruptCheckpointWarning",
    "MissingDependencyError",
    "StorageError",
    "UnknownSlotKindError",
    "InternalError",
    "DistributedError",
    "CoordinationTimeoutError",
    "PreflightError",
    "OutputExistsError",
    "ConversionError",
]


class CkptError(Exception):
    """Base class of every error ckpt raises on purpose."""

    def __init__(self, message: str, *, file: Optional[str] = None, slot: Optional[str] = None):
        self.file = file
        self.slot = slot
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:  # KeyError subclasses would otherwise repr() the message
        return self.message


@contextlib.contextmanager
def attach(file: Optional[str], slot: Optional[str] = None) -> Iterator[None]:
    """Give every ckpt error raised inside the block the file (and slot) it concerns, where the
    code that raised it (a parser of bytes, which knows no file) left them unset."""
    try:
        yield
    except CkptError as e:
        if e.file is None:
            e.file = file
        if e.slot is None:
            e.slot = slot
        raise


class FormatError(CkptError, ValueError):
    """A file is not a well-formed ckpt pack (or npz) file; nothing was loaded from it."""


class NotAPackError(FormatError):
    """A file's leading bytes show it is not a zip archive at all (pickle, 7z, empty, ...)."""


class ChecksumError(FormatError):
    """Data read back does not match the digest (blake3 or sha256, or CRC) recorded when it was written."""

    def __init__(
        self,
        message: str,
        *,
        file: Optional[str] = None,
        slot: Optional[str] = None,
        member: Optional[str] = None,
        expected: Optional[str] = None,
        found: Optional[str] = None,
    ):
        super().__init__(message, file=file, slot=slot)
        self.member = member
        self.expected = expected
        self.found = found


class SlotNotFoundError(CkptError, KeyError):
    """A pack has no slot of the requested name."""


class SlotKindError(CkptError, TypeError):
    """A slot holds another kind of data than the call needs (e.g. JSON where arrays are restored)."""


class UnknownSlotKindError(SlotKindError):
    """A slot was written by a slot kind (serializer) this process has not registered.

    The file is not damaged and nothing was imported: register the kind named in ``kind``
    (``ckpt.register_serializer(..., name=kind, ...)``) in the reading process and load again.
    """

    def __init__(self, message: str, *, kind: str, file: Optional[str] = None, slot: Optional[str] = None):
        super().__init__(message, file=file, slot=slot)
        self.kind = kind


class InternalError(CkptError, RuntimeError):
    """An invariant of ckpt's own code failed (a bug to report), not a problem of the file or the call."""


class SlotExistsError(CkptError, ValueError):
    """``dump`` to a slot that already holds data; ``remove`` it first to replace it."""


class ReadOnlyPackError(CkptError, PermissionError):
    """A change was asked of a pack opened over a file object that cannot be written."""


class MismatchError(CkptError, ValueError):
    """Stored arrays do not fit the collection they are restored into.

    Raised before anything is assigned. ``missing`` are names the target needs
    that the file lacks, ``unused`` are names in the file that nothing in the
    target took, ``mismatched`` are ``(name, expected, found)`` triples where
    expected/found describe shape and dtype.
    """

    def __init__(
        self,
        message: str,
        *,
        file: Optional[str] = None,
        slot: Optional[str] = None,
        missing: Sequence[str] = (),
        unused: Sequence[str] = (),
        mismatched: Sequence[tuple[str, str, str]] = (),
    ):
        super().__init__(message, file=file, slot=slot)
        self.missing = list(missing)
        self.unused = list(unused)
        self.mismatched = list(mismatched)


class UntrustedPickleError(CkptError, pickle.UnpicklingError):
    """A pickle slot would be unpickled without the caller saying the file is trusted.

    ``globals`` lists the ``module.qualname`` names the pickle would import,
    found by reading its opcodes without executing anything.
    """

    def __init__(
        self,
        message: str,
        *,
        file: Optional[str] = None,
        slot: Optional[str] = None,
        globals: Sequence[str] = (),
    ):
        super().__init__(message, file=file, slot=slot)
        self.globals = list(globals)


class DependencyError(CkptError, RuntimeError):
    """Installed packages do not satisfy what a slot recorded (raised with ``deps="strict"``)."""

    def __init__(
        self,
        message: str,
        *,
        file: Optional[str] = None,
        slot: Optional[str] = None,
        mismatches: Sequence[tuple[str, str, str]] = (),
    ):
        super().__init__(message, file=file, slot=slot)
        self.mismatches = list(mismatches)


class MissingDependencyError(CkptError, ImportError):
    """An optional package that a file or a URL needs is not installed (ml_dtypes for bfloat16,
    zstandard for zstd members, fsspec/s3fs for URLs). The file is not damaged: install the
    package named in ``package`` (``extra`` is the ckpt extra that brings it) and read it again."""

    def __init__(self, message: str, *, package: str, extra: Optional[str] = None,
                 file: Optional[str] = None, slot: Optional[str] = None):
        super().__init__(message, file=file, slot=slot)
        self.package = package
        self.extra = extra


class StorageError(CkptError, OSError):
    """The storage behind a path or URL refused or failed an operation (missing bucket, bad
    credentials, unreachable endpoint, a store without the guarantees ckpt needs). ``file`` names
    the path or URL."""


class CheckpointNotFoundError(CkptError, FileNotFoundError):
    """A checkpoint index was asked for that is not in the checkpoint directory."""


class SaveError(CkptError, OSError):
    """Writing a checkpoint failed (disk full, I/O error, ...); earlier checkpoints are intact.

    ``errno`` is the failing operation's, so ``except OSError`` callers can test for ENOSPC.
    """

    def __init__(self, message: str, *, errno: Optional[int] = None, file: Optional[str] = None):
        CkptError.__init__(self, message, file=file)
        self.errno = errno  # type: ignore[misc]
        self.strerror = message  # type: ignore[misc]
        self.filename = file  # type: ignore[misc]


class LockedError(CkptError, TimeoutError):
    """Another writer holds the checkpoint directory's lock and ``lock_timeout`` ran out."""


class UnknownMetricError(CkptError, ValueError):
    """``keep_best`` ranks by a metric that no checkpoint records (a typo?); nothing was deleted.

    ``recorded`` lists the metric names the checkpoints do record.
    """

    def __init__(self, message: str, *, file: Optional[str] = None, metric: str = "",
                 recorded: Sequence[str] = ()):
        super().__init__(message, file=file)
        self.metric = metric
        self.recorded = list(recorded)


class CorruptCheckpointWarning(UserWarning):
    """A load without an index skipped a damaged newest checkpoint and read an older, intact one."""


class DependencyWarning(UserWarning):
    """Installed packages differ from those that wrote a slot (``deps="warn"``, the default)."""


# -- recipes, selectors, aliases (issue 19) ------------------------------------
__all__ += ["RecipeArgumentError", "RecipeNotFoundError", "UntrustedClassError", "SelectorError"]


class RecipeArgumentError(CkptError, TypeError):
    """A constructor argument cannot be recorded in a recipe (recipes are tagged JSON, never pickles).

    ``path`` names the argument, e.g. ``MLP.kwargs['activation']``.
    """

    def __init__(self, message: str, *, path: str = "", file: Optional[str] = None):
        super().__init__(message, file=file)
        self.path = path


class RecipeNotFoundError(CkptError, LookupError):
    """A checkpoint records no recipe (it was saved without ``recipe=``), or an object was not recorded."""


class UntrustedClassError(CkptError, PermissionError):
    """``build`` was asked to import a class that ``trusted`` does not admit; nothing was imported.

    ``classes`` lists every ``module.qualname`` the recipe would import that was refused.
    """

    def __init__(self, message: str, *, file: Optional[str] = None, classes: Sequence[str] = ()):
        CkptError.__init__(self, message, file=file)
        self.classes = list(classes)
        self.strerror = message  # type: ignore[misc]
        self.filename = file  # type: ignore[misc]


class SelectorError(CkptError, ValueError):
    """A ``Selector`` (or a ``where`` expression, or a ``ckpt find`` option) is malformed."""


class DistributedError(CkptError, RuntimeError):
    """A multi-process save or restore failed on some process; every process raises it.

    ``processes`` are the process indices the failure came from (or that did not answer)."""

    def __init__(self, message: str, *, file: Optional[str] = None, processes: Sequence[int] = ()):
        super().__init__(message, file=file)
        self.processes = list(processes)


class CoordinationTimeoutError(DistributedError, TimeoutError):
    """Some processes did not reach a multi-process save or restore step in time (killed, hung, or
    calling something else); ``processes`` names them."""


class PreflightError(DistributedError, ValueError):
    """The processes of a multi-process save disagree on the step, tree, shapes, dtypes or shardings."""


class OutputExistsError(CkptError, FileExistsError):
    """An export, import or average would overwrite an existing file and ``force`` was not given;
    nothing was written. ``file`` names the output."""


class ConversionError(CkptError, ValueError):
    """A checkpoint's arrays cannot be written in the requested format (a dtype or a name the target
    cannot hold, a slot that holds no arrays); nothing was written. ``file`` names the source."""


# -- object storage (issue 16) ---------------------------------------------------
__all__ += ["ObjectExistsError", "StorageWarning"]


class ObjectExistsError(CkptError, FileExistsError):
    """A create-only commit found the object already there (another writer saved that step first);
    nothing was replaced and nothing of this save is visible."""


class StorageWarning(UserWarning):
    """A store lacks a guarantee ckpt would use (e.g. it ignores conditional writes) and ckpt falls
    back to a weaker one; said once per store."""
