"""Weight averaging over checkpoints: uniform or weighted means, and exponential moving averages.

Averaging the last few checkpoints of a run (as in stochastic weight averaging
or "checkpoint averaging") often evaluates better than the final weights. The
checkpoints are read one at a time through the lazy, verified reader, so memory
stays at about one accumulator (float64) plus one array being added, however
many checkpoints are averaged. Floating-point arrays (float16, bfloat16 and the
other ml_dtypes floats included) are accumulated in float64 (complex in
complex128) and cast back to their stored dtype once at the end; integer and
boolean arrays (step counters, masks) are not averaged but taken from the
newest checkpoint.

With ``out=path`` the result is also written as a checkpoint file (numpy and
objax open it) whose manifest records what it was averaged from::

    metadata["ckpt"] = {"averaged_from": [{"file", "idx", "blake3" or "sha256", "weight"}, ...],
                        "method": "mean" | "ema", "decay": None | float, "slot": "main"}
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np

from . import _npy, deps as _deps
from ._packfile import DEFAULT_SLOT, PackReader
from .errors import CheckpointNotFoundError, MismatchError
from .varfile import open_reader, save_var_collection

log = logging.getLogger("ckpt")

__all__ = ["average", "ema"]

PathLike = Union[str, "os.PathLike[str]"]
Sources = Union[PathLike, Sequence[PathLike]]

#: Elements added per step, so the float64 temporary stays small whatever the array's size.
_CHUNK = 1 << 20


@dataclass
class _Source:
    path: str
    idx: Optional[int]
    weight: float = 1.0
    digest: Optional[str] = None
    algorithm: str = "sha256"


def average(logdir_or_paths: Sources, *, last: Optional[int] = None, indices: Optional[Sequence[int]] = None,
            weights: Optional[Sequence[float]] = None, slot: str = DEFAULT_SLOT, out: Optional[PathLike] = None,
            verify: bool = True, deps: str = "warn",
            storage_options: Optional[dict[str, Any]] = None) -> dict[str, np.ndarray]:
    """The (weighted) mean of the arrays of several checkpoints, as a dict name -> numpy array.

    ``logdir_or_paths`` is a ``Checkpoint`` log directory (choose with ``last=k``
    or ``indices=[...]``; default: every checkpoint, ascending by index) or a list
    of checkpoint files, oldest first (``last=k`` takes the last k). ``weights``
    (one per checkpoint: ascending index order for ``last``, the order given for
    ``indices`` and for paths) must be finite and non-negative with a positive
    sum; the result is ``sum(w_i * x_i) / sum(w_i)``, both sums taken left to
    right in index order in float64 (as ``numpy.average`` does for a few
    checkpoints), then cast to the stored dtype. Integer and boolean arrays come
    from the newest checkpoint. ``out`` also writes the result as a checkpoint
    that records the files averaged, their ``slot`` digest (blake3 or sha256) and normalised weights.

    Raises :class:`~ckpt.errors.MismatchError` (naming the variable and both files)
    when the checkpoints do not hold the same names, shapes and dtypes, and
    :class:`~ckpt.errors.ChecksumError` naming a corrupt file.

    Inputs and ``out`` may be local paths or fsspec URLs; ``storage_options`` go to the URLs' filesystem.
    """
    sources = _select(logdir_or_paths, last, indices, weights, storage_options)
    total = 0.0
    for s in sources:  # left to right, as numpy sums a few weights
        total += s.weight
    result = _combine(sources, slot=slot, verify=verify, deps=deps, method="mean", decay=0.0, total=total,
                      storage_options=storage_options)
    for s in sources:
        s.weight = s.weight / total
    if out is not None:
        _write(out, result, sources, slot=slot, method="mean", decay=None, storage_options=storage_options)
    return result


def ema(logdir_or_paths: Sources, decay: float, *, last: Optional[int] = None,
        indices: Optional[Sequence[int]] = None, slot: str = DEFAULT_SLOT, out: Optional[PathLike] = None,
        verify: bool = True, deps: str = "warn",
        storage_options: Optional[dict[str, Any]] = None) -> dict[str, np.ndarray]:
    """The exponential moving average of the arrays of several checkpoints, oldest to newest.

    With ``x_1 ... x_n`` the checkpoints in ascending index order (the order
    given for a list of paths), in float64::

        e_1 = x_1
        e_k = decay * e_{k-1} + (1 - decay) * x_k        (k = 2 ... n)

    and the result is ``e_n`` cast to the stored dtype (no bias correction: the
    oldest checkpoint carries weight ``decay**(n-1)``, checkpoint k
    ``(1 - decay) * decay**(n-k)``). ``decay`` is in [0, 1]; 0 gives the newest,
    1 the oldest. Selection, integer handling, errors and ``out`` are as for
    :func:`average`; the record's weights are these effective weights.
    """
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= float(decay) <= 1.0:
        raise ValueError(f"decay must be a number in [0, 1], not {decay!r}")
    decay = float(decay)
    sources = _select(logdir_or_paths, last, indices, None, storage_options)
    n = len(sources)
    for k, s in enumerate(sources):
        s.weight = decay ** (n - 1) if k == 0 else (1.0 - decay) * decay ** (n - 1 - k)
    result = _combine(sources, slot=slot, verify=verify, deps=deps, method="ema", decay=decay, total=1.0,
                      storage_options=storage_options)
    if out is not None:
        _write(out, result, sources, slot=slot, method="ema", decay=decay, storage_options=storage_options)
    return result


# -- choosing the checkpoints -----------------------------------------------------------------
def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, not {value!r}")
    return value


def _select(logdir_or_paths: Sources, last: Optional[int], indices: Optional[Sequence[int]],
            weights: Optional[Sequence[float]], storage_options: Optional[dict[str, Any]] = None) -> list[_Source]:
    if last is not None and indices is not None:
        raise ValueError("give last= or indices=, not both")
    if isinstance(logdir_or_paths, (str, os.PathLike)):
        sources = _from_logdir(os.fspath(logdir_or_paths), last, indices, storage_options)
    else:
        paths = [os.fspath(p) for p in logdir_or_paths]
        if indices is not None:
            raise ValueError("indices= selects checkpoints of a log directory; with a list of paths, pass the "
                             "paths you want")
        if not paths:
            raise ValueError("no checkpoint files to average")
        if last is not None:
            if _check_count("last", last) > len(paths):
                raise ValueError(f"last={last}, but only {len(paths)} paths were given")
            paths = paths[-last:]
        sources = [_Source(p, None) for p in paths]
    if weights is not None:
        ws = [float(w) for w in weights]
        if len(ws) != len(sources):
            raise ValueError(f"{len(ws)} weights for {len(sources)} checkpoints")
        if not all(math.isfinite(w) and w >= 0.0 for w in ws) or math.fsum(ws) <= 0.0:
            raise ValueError(f"weights must be finite and non-negative with a positive sum, not {ws}")
        for s, w in zip(sources, ws):
            s.weight = w
    if indices is not None:  # weights go with the indices as given; the sum runs in index order
        sources.sort(key=lambda s: s.idx if s.idx is not None else -1)
    return sources


def _from_logdir(logdir: str, last: Optional[int], indices: Optional[Sequence[int]],
                 storage_options: Optional[dict[str, Any]] = None) -> list[_Source]:
    from .checkpoint import Checkpoint  # checkpoint.py imports this package's modules; import late

    ck = Checkpoint(logdir, makedir=False, storage_options=storage_options)
    have = ck.indices()
    if not have:
        raise CheckpointNotFoundError(f"no checkpoints to average in {ck.directory}", file=ck.directory)
    if indices is not None:
        chosen = [int(i) for i in indices]
        if not chosen:
            raise ValueError("indices= is empty")
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"indices {chosen} name a checkpoint twice")
        absent = [i for i in chosen if i not in set(have)]
        if absent:
            raise CheckpointNotFoundError(f"no checkpoint {absent} in {ck.directory} (have: {have[-10:]})",
                                          file=ck.directory)
    elif last is not None:
        if _check_count("last", last) > len(have):
            raise ValueError(f"last={last}, but {ck.directory} holds only {len(have)} checkpoints: {have}")
        chosen = have[-last:]
    else:
        chosen = have
    return [_Source(ck.path(i), i) for i in chosen]


# -- reading and adding ----------------------------------------------------------------------
def _accumulator_dtype(dtype: np.dtype) -> Optional[np.dtype]:
    """The dtype to accumulate an array of ``dtype`` in, or None when it is not averaged."""
    if dtype.kind == "f":
        return np.dtype(np.longdouble) if dtype.itemsize > 8 else np.dtype(np.float64)
    if dtype.kind == "c":
        return np.dtype(np.clongdouble) if dtype.itemsize > 16 else np.dtype(np.complex128)
    if _npy.is_extension_dtype(dtype):
        import ml_dtypes

        try:
            ml_dtypes.finfo(dtype)  # bfloat16, float8_*, ...: floats; int4 and friends are not
        except (TypeError, ValueError):
            return None
        return np.dtype(np.float64)
    return None


def _describe(shape: tuple[int, ...], dtype: np.dtype) -> str:
    return f"{_npy.dtype_name(dtype)}{list(shape)}"


def _combine(sources: list[_Source], *, slot: str, verify: bool, deps: str, method: str, decay: float,
             total: float, storage_options: Optional[dict[str, Any]] = None) -> dict[str, np.ndarray]:
    mode = _deps.check_mode(deps)
    with contextlib.ExitStack() as stack:
        # Every file stays open from the checks to the end, so a trainer rotating the
        # directory meanwhile cannot take a checkpoint away half-way.
        readers: list[PackReader] = []
        names: list[str] = []
        layout: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        for k, s in enumerate(sources):
            reader = stack.enter_context(open_reader(s.path, storage_options=storage_options))
            info = reader.slot(slot)
            _deps.report(reader.dependency_mismatches([slot]), mode, reader.label)
            view = reader.arrays(slot, verify=verify)
            s.digest, s.algorithm = info.digest, info.algorithm
            if s.idx is None:
                s.idx = _recorded_idx(reader)
            found = {n: view.shape_dtype(n) for n in view.names}
            if k == 0:
                names, layout = list(view.names), found
            else:
                _check_same(sources[0].path, layout, s.path, found, slot)
            readers.append(reader)

        acc: dict[str, np.ndarray] = {}
        kept: dict[str, np.ndarray] = {}
        for k, (s, reader) in enumerate(zip(sources, readers)):
            view = reader.arrays(slot, verify=verify)
            newest = k == len(sources) - 1
            for name in names:
                shape, dtype = layout[name]
                acc_dtype = _accumulator_dtype(dtype)
                if acc_dtype is None:
                    if newest:
                        kept[name] = view.read(name)  # its own, writable copy
                    continue
                x = view.read(name, copy=False)
                if k == 0:
                    acc[name] = np.empty(x.size, acc_dtype)
                    _add(acc[name], x, 1.0 if method == "ema" else s.weight, first=True)
                elif method == "ema":
                    acc[name] *= decay
                    _add(acc[name], x, 1.0 - decay, first=False)
                else:
                    _add(acc[name], x, s.weight, first=False)
                del x
        result: dict[str, np.ndarray] = {}
        for name in names:
            shape, dtype = layout[name]
            if name in kept:
                result[name] = kept.pop(name)
                continue
            a = acc.pop(name)
            if method == "mean":
                a /= total
            result[name] = a.astype(dtype).reshape(shape)
            del a
    log.info("averaged %d checkpoints (%s) into %d arrays", len(sources), method, len(result))
    return result


def _add(acc: np.ndarray, x: np.ndarray, weight: float, *, first: bool) -> None:
    """``acc (+)= weight * x`` in ``acc``'s precision, a bounded chunk at a time (``acc`` is flat)."""
    flat = x.reshape(-1) if x.flags.c_contiguous else np.ravel(x)
    with np.errstate(invalid="ignore"):  # a signalling NaN stored in the file widens to a NaN: no warning
        _add_chunks(acc, flat, weight, first=first)


def _add_chunks(acc: np.ndarray, flat: np.ndarray, weight: float, *, first: bool) -> None:
    for start in range(0, flat.size, _CHUNK):
        end = min(flat.size, start + _CHUNK)
        if first:
            np.multiply(flat[start:end], weight, out=acc[start:end], dtype=acc.dtype)
        else:
            acc[start:end] += np.multiply(flat[start:end], weight, dtype=acc.dtype)


def _check_same(first: str, want: dict[str, tuple[tuple[int, ...], np.dtype]], other: str,
                found: dict[str, tuple[tuple[int, ...], np.dtype]], slot: str) -> None:
    missing = [n for n in want if n not in found]
    extra = [n for n in found if n not in want]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{other} lacks {missing[:10]}")
        if extra:
            parts.append(f"{other} has {extra[:10]}, which {first} lacks")
        raise MismatchError(
            f"cannot average {first} and {other}: slot {slot!r} holds different variables ({'; '.join(parts)})",
            file=other, slot=slot, missing=missing, unused=extra)
    mismatched = [(n, _describe(*want[n]), _describe(*found[n])) for n in want
                  if tuple(want[n][0]) != tuple(found[n][0]) or want[n][1] != found[n][1]]
    if mismatched:
        lines = [f"  {n}: {a} in {first}, {b} in {other}" for n, a, b in mismatched[:20]]
        if len(mismatched) > 20:
            lines.append(f"  ... and {len(mismatched) - 20} more")
        raise MismatchError(f"cannot average {first} and {other}: variables differ in shape or dtype:\n"
                            + "\n".join(lines), file=other, slot=slot, mismatched=mismatched)


def _recorded_idx(reader: PackReader) -> Optional[int]:
    """The checkpoint index a file records (``metadata["ckpt"]["idx"]``), else one read from its name."""
    record = reader.metadata.get("ckpt") if isinstance(reader.metadata, dict) else None
    idx = record.get("idx") if isinstance(record, dict) else None
    if isinstance(idx, int) and not isinstance(idx, bool) and idx >= 0:
        return idx
    stem = reader.label.replace("\\", "/").rsplit("/", 1)[-1].split(".")[0]
    return int(stem) if stem.isascii() and stem.isdigit() else None  # "²³".isdigit() is True, int() refuses it


def _write(out: PathLike, result: dict[str, np.ndarray], sources: list[_Source], *, slot: str, method: str,
           decay: Optional[float], storage_options: Optional[dict[str, Any]] = None) -> None:
    record = {
        "averaged_from": [{"file": s.path, "idx": s.idx, s.algorithm: s.digest, "weight": s.weight}
                          for s in sources],
        "method": method,
        "decay": decay,
        "slot": slot,
    }
    save_var_collection(os.fspath(out), result, metadata={"ckpt": record}, storage_options=storage_options)
    log.info("wrote the %s of %d checkpoints to %s", method, len(sources), os.fspath(out))
