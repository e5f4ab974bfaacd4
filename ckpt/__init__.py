"""ckpt: checkpoints for JAX, objax and numpy training loops.

One line to save, ``ck.save(net.vars(), idx=step)``, one to resume,
``idx, path = ck.restore(net.vars())``. Files are ``.npz`` archives that numpy
and objax open, and at the same time packs of named, hashed slots.
"""

from __future__ import annotations

__version__ = "0.1.0"

import os as _os
import signal as _signal
import sys as _sys


def _quiet_interrupt(signum: int, frame: object) -> None:
    """Ctrl-C while the ``ckpt`` command is still importing: one line and status 130, no traceback."""
    _os.write(2, b"ckpt: interrupted\n")
    _os._exit(130)


def _is_ckpt_command() -> bool:
    """Whether this process is the ``ckpt`` command (console script or ``python -m ckpt``), not a
    program that imports ckpt (``python -m mytrainer`` also shows ``-m`` in ``sys.argv`` here)."""
    orig = list(getattr(_sys, "orig_argv", []))
    if any(orig[i] == "-m" and orig[i + 1] in ("ckpt", "ckpt.__main__") for i in range(len(orig) - 1)):
        return True
    return bool(_sys.argv) and _os.path.basename(_sys.argv[0]) in ("ckpt", "ckpt.exe")


# Only in the ``ckpt`` command: its main() puts Python's handler back once start-up is over, so an
# interrupt later is still a KeyboardInterrupt it reports itself.
if _is_ckpt_command() and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
    _signal.signal(_signal.SIGINT, _quiet_interrupt)

import logging as _logging

# A library adds no output of its own: applications decide where "ckpt" logs go.
_logging.getLogger("ckpt").addHandler(_logging.NullHandler())

from . import errors
from ._digest import set_default as set_digest
from ._inspect import inspect
from ._packfile import DEFAULT_SLOT
from .averaging import average, ema
from .checkpoint import Checkpoint
from .compat import dump, dumps, load, loads
from .incremental._refs import export_standalone
from .errors import (
    ChecksumError,
    CkptError,
    DependencyError,
    DependencyWarning,
    FormatError,
    MismatchError,
    NotAPackError,
    SlotNotFoundError,
    UntrustedPickleError,
)
from .manifest import ManifestInfo, SlotInfo
from .pack import Pack
from .retention import RetentionPolicy
from .varfile import load_var_collection, save_var_collection

__all__ = [
    "__version__",
    "Checkpoint",
    "RetentionPolicy",
    "average",
    "ema",
    "Pack",
    "SlotInfo",
    "ManifestInfo",
    "DEFAULT_SLOT",
    "set_digest",
    "save_var_collection",
    "load_var_collection",
    "dump",
    "dumps",
    "load",
    "loads",
    "inspect",
    "export_standalone",
    "errors",
    "CkptError",
    "FormatError",
    "NotAPackError",
    "ChecksumError",
    "SlotNotFoundError",
    "MismatchError",
    "UntrustedPickleError",
    "DependencyError",
    "DependencyWarning",
]

# Recipes, search and aliases: record how a model was built, rebuild it, find checkpoints by what they are.
from .build import build
from .index import Entry, find
from .recipes import Recipe, recipe_of, recorded
from .selector import Selector

__all__ += ["recorded", "recipe_of", "Recipe", "build", "find", "Entry", "Selector"]

# Slot kinds: the registry every kind of slot goes through, and users' own serializers.
from . import slotkinds
from ._userkinds import register_serializer, unregister_serializer
from .errors import MissingDependencyError, UnknownSlotKindError
from .slotkinds import with_deps

__all__ += ["slotkinds", "register_serializer", "unregister_serializer", "with_deps", "MissingDependencyError",
            "UnknownSlotKindError"]

# What the ``ckpt`` command does, as library calls (each command is one of these plus printing).
from .averaged import average_into
from .compare import compare_arrays, diff
from .convert import export, import_file
from .fileinfo import describe
from .integrity import verify
from .listing import list_checkpoints, prune_run
from .metrics import metrics_of

__all__ += ["list_checkpoints", "prune_run", "verify", "describe", "diff", "compare_arrays", "export", "import_file",
            "average_into", "metrics_of"]
