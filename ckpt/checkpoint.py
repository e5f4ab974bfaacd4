"""``ckpt.checkpoint.Checkpoint``: kept importable; the manager lives in :mod:`ckpt.manager`."""

from .manager import Checkpoint
from .manager.restoring import RESERVED_SLOTS

__all__ = ["Checkpoint", "RESERVED_SLOTS"]
