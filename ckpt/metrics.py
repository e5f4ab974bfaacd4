"""The one definition of "the metrics of a checkpoint".

Retention (``keep_best``), :meth:`Checkpoint.best`, :meth:`Checkpoint.plan_prune`,
:func:`ckpt.list_checkpoints`, :func:`ckpt.find` and every ``ckpt`` command read metrics
through :func:`metrics_of`, so they can never disagree about which checkpoint is "best".

The rule (also in README.md and docs/FORMAT.md section 3):

1. the ``metrics=`` given to ``save`` (the manifest's ``metadata["ckpt"]["metrics"]``), exactly
   as recorded, when present;
2. otherwise an extras slot named ``metrics`` that holds a mapping of name -> value (the README's
   ``extras={"metrics": {"loss": loss}}``): a JSON slot (plain or tagged) or an arrays slot (what a
   dict holding JAX or numpy scalars is stored as). Its values that are real numbers (Python
   numbers, numpy or JAX scalars, 0-d arrays, bfloat16 included; not booleans) or strings are the metrics; anything
   else in it (lists, nested dicts, arrays with elements) is not a metric. A slot above
   :data:`MAX_SLOT_BYTES` is not read; a pickle slot is never unpickled for this.
3. otherwise no metrics (``{}``).

Reading a slot checks its digest; a damaged metrics slot raises, like any damaged member. A slot
that needs a package not installed here (bfloat16 scalars without ml_dtypes) gives no metrics; the
file is not damaged.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from . import _npy
from ._packfile import PackReader
from .errors import CkptError, MissingDependencyError

log = logging.getLogger("ckpt")

__all__ = ["METRICS_SLOT", "MAX_SLOT_BYTES", "metrics_of", "recorded_metrics"]

#: The extras slot read when ``save(metrics=)`` was not given.
METRICS_SLOT = "metrics"
#: A metrics slot larger than this is not read (it is data, not a few numbers).
MAX_SLOT_BYTES = 1 << 20


def recorded_metrics(metadata: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``metrics=`` of ``save`` as recorded in manifest ``metadata``, or None when none were."""
    own = metadata.get("ckpt") if isinstance(metadata, Mapping) else None
    found = own.get("metrics") if isinstance(own, Mapping) else None
    return dict(found) if isinstance(found, Mapping) else None


def _plain(value: Any) -> Any:
    """A Python number or string for a metric value, else None (not a metric)."""
    if isinstance(value, np.ndarray) or isinstance(value, np.generic):
        arr = np.asarray(value)
        if arr.shape != ():
            return None
        if _npy.is_extension_dtype(arr.dtype):  # bfloat16, float8, int4, ... (ml_dtypes)
            return float(arr)
        if arr.dtype.kind not in "iuf":
            return None
        value = arr.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    return value


def _dtypes_readable(records: Any) -> bool:
    """Whether every dtype an arrays slot records can be built here (bfloat16 needs ml_dtypes)."""
    for rec in records if isinstance(records, list) else []:
        name = rec.get("dtype") if isinstance(rec, dict) else None
        try:
            _npy.dtype_from_name(name if isinstance(name, str) else "")
        except (CkptError, ImportError, TypeError, ValueError):
            return False
    return True


def _from_slot(reader: PackReader) -> dict[str, Any]:
    info = reader.slots.get(METRICS_SLOT)
    if info is None or info.size > MAX_SLOT_BYTES:
        return {}
    if info.serializer not in ("json", "arrays"):  # raw bytes or pickle: not a mapping ckpt reads for metrics
        return {}
    if info.serializer == "arrays" and not _dtypes_readable(info.info.get("arrays")):
        log.debug("%s: metrics slot not read: a dtype it records cannot be read here", reader.label)
        return {}
    try:
        value = reader.load(METRICS_SLOT)  # verified; a small slot (at most MAX_SLOT_BYTES)
    except MissingDependencyError as e:  # e.g. bfloat16 scalars without ml_dtypes: not damage, just unreadable here
        log.debug("%s: metrics slot not read: %s", reader.label, e)
        return {}
    if not isinstance(value, Mapping):
        return {}
    out = {}
    for name, v in value.items():
        plain = _plain(v)
        if isinstance(name, str) and plain is not None:
            out[name] = plain
    return out


def metrics_of(reader: PackReader) -> dict[str, Any]:
    """The metrics of the checkpoint open in ``reader`` (see the module docstring for the rule)."""
    found = recorded_metrics(reader.metadata)
    if found is not None:
        return found
    return _from_slot(reader)
