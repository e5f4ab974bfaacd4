"""Multi-process (``jax.distributed``) checkpoints: per-process shard files and one hashed commit record.

``Checkpoint.save``/``load``/``restore`` use this package by themselves when a job has more than
one process; the functions here are for tools (``ckpt info/verify/export``) and tests.
"""

from __future__ import annotations

from .consolidate import ConsolidatedView, consolidate, info, is_record_file, verify_file
from .coord import DEFAULT_TIMEOUT, active
from .reader import last_restore_stats

__all__ = ["active", "consolidate", "info", "is_record_file", "verify_file", "ConsolidatedView",
           "last_restore_stats", "DEFAULT_TIMEOUT"]
