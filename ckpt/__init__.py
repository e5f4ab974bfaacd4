"""ckpt: checkpoints for JAX, objax and numpy training loops.

One line to save, ``ck.save(net.vars(), idx=step)``, one to resume,
``idx, path = ck.restore(net.vars())``. Files are ``.npz`` archives that numpy
and objax open, and at the same time packs of named, hashed slots.
"""

from __future__ import annotations

__version__ = "0.1.0"

import logging as _logging

# A library adds no output of its own: applications decide where "ckpt" logs go.
_logging.getLogger("ckpt").addHandler(_logging.NullHandler())

from . import errors
from ._digest import set_default as set_digest
from ._inspect import inspect
from ._packfile import DEFAULT_SLOT
from .averaging import average, ema
from .checkpoint import Checkpoint
from .compat import dump, load
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
    "load",
    "inspect",
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
