"""``ckpt.diff``: compare the arrays of two checkpoint files, streamed one array at a time.

For each name in both files: a changed shape or dtype, or the largest absolute difference
(``max_abs``), that divided by the largest magnitude in either array (``rel``), and how many elements
differ. NaN equals NaN. Arrays are read (and verified) one at a time, so memory stays at about two
arrays, whatever the checkpoints' size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from . import _locations as _loc, _npy
from ._locations import Location
from ._packfile import DEFAULT_SLOT
from .varfile import open_reader

__all__ = ["compare_arrays", "Diff", "diff"]

_CHUNK_ELEMENTS = 1 << 22


def _numeric(dtype: np.dtype) -> bool:
    return dtype.kind in "biufc" or _npy.is_extension_dtype(dtype)


def compare_arrays(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """max |a-b|, that relative to max(|a|, |b|), and counts of differing elements, streamed in chunks.

    NaN equals NaN; a NaN against a number counts in ``nan_mismatches`` (and
    ``differing``) but not in ``max_abs``.
    """
    if not (_numeric(a.dtype) and _numeric(b.dtype)):
        equal = a.shape == b.shape and a.tobytes() == b.tobytes()
        return {"max_abs": None, "rel": None, "differing": None if not equal else 0, "nan_mismatches": 0,
                "equal": equal}
    complex_ = a.dtype.kind == "c" or b.dtype.kind == "c"
    work = np.complex128 if complex_ else np.float64
    x_all, y_all = a.reshape(1) if a.ndim == 0 else a, b.reshape(1) if b.ndim == 0 else b
    row = max(1, math.prod(x_all.shape[1:]))
    step = max(1, _CHUNK_ELEMENTS // row)
    max_abs = amax = bmax = 0.0
    differing = nan_mismatches = 0
    with np.errstate(invalid="ignore", over="ignore"):
        for start in range(0, x_all.shape[0], step):
            x = np.asarray(x_all[start:start + step]).astype(work)
            y = np.asarray(y_all[start:start + step]).astype(work)
            xn, yn = np.isnan(x), np.isnan(y)
            eq = (x == y) | (xn & yn)
            differing += int(np.count_nonzero(~eq))
            d = np.abs(x - y)
            d[eq] = 0
            dn = np.isnan(d)
            nan_mismatches += int(np.count_nonzero(dn))
            d[dn] = 0
            if d.size:
                max_abs = max(max_abs, float(d.max()))
                amax = max(amax, float(np.fmax.reduce(np.abs(x), axis=None, initial=0.0)))
                bmax = max(bmax, float(np.fmax.reduce(np.abs(y), axis=None, initial=0.0)))
    scale = max(amax, bmax)  # 0 only when both are all zeros, and then max_abs is 0 too
    if max_abs == 0:
        rel = 0.0
    elif math.isinf(scale):
        rel = math.nan if math.isinf(max_abs) else 0.0
    else:
        rel = max_abs / scale
    return {"max_abs": max_abs, "rel": rel, "differing": differing, "nan_mismatches": nan_mismatches,
            "equal": differing == 0}


@dataclass
class Diff:
    """The comparison of slot ``slot`` of ``a`` and ``b``: names only in one, ``changed`` (shape or
    dtype), and ``arrays`` (one :func:`compare_arrays` record per array compared, with name, shape, dtype)."""

    a: str
    b: str
    slot: str
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)
    arrays: list[dict[str, Any]] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not (self.only_in_a or self.only_in_b or self.changed or any(not c["equal"] for c in self.arrays))

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "slot": self.slot, "only_in_a": self.only_in_a, "only_in_b": self.only_in_b,
                "changed": self.changed, "arrays": self.arrays, "identical": self.identical}


def diff(a: Location, b: Location, *, slot: str = DEFAULT_SLOT,
         progress: Optional[Callable[[int], None]] = None) -> Diff:
    """Compare the arrays of slot ``slot`` in files ``a`` and ``b`` (every array read is verified);
    ``progress(1)`` after each array. A slot that holds no arrays raises SlotKindError."""
    _loc.require_file(a)
    _loc.require_file(b)
    out = Diff(_loc.text(a), _loc.text(b), slot)
    with open_reader(a) as ra, open_reader(b) as rb:
        va, vb = ra.arrays(slot), rb.arrays(slot)
        names_a, names_b = set(va.names), set(vb.names)
        out.only_in_a = [n for n in va.names if n not in names_b]
        out.only_in_b = [n for n in vb.names if n not in names_a]
        for name in (n for n in va.names if n in names_b):
            (sa, da), (sb, db) = va.shape_dtype(name), vb.shape_dtype(name)
            if sa != sb or da != db:
                out.changed.append({"name": name, "a": {"shape": list(sa), "dtype": _npy.dtype_name(da)},
                                    "b": {"shape": list(sb), "dtype": _npy.dtype_name(db)}})
            else:
                stats = compare_arrays(va.read(name, copy=False), vb.read(name, copy=False))
                out.arrays.append({"name": name, "shape": list(sa), "dtype": _npy.dtype_name(da), **stats})
            if progress is not None:
                progress(1)
    return out

