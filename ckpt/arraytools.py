"""Array helpers that make checkpoint data smaller and storable as plain arrays (after modelforge).

- :func:`merge_strings` / :func:`split_strings`: many strings as one byte buffer plus lengths,
  instead of a pickled list (strings ending in NUL round-trip exactly, unlike numpy's ``S`` dtype).
- :func:`squeeze_bits`: an integer array in the narrowest dtype that holds it losslessly.
- :func:`disassemble_sparse_matrix` / :func:`assemble_sparse_matrix`: scipy sparse matrices
  (CSR, CSC, COO) as their component arrays, so they go to ``.npy`` members, not pickle.

Every function returns dicts of numpy arrays only, so the result is an ``arrays`` slot.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

import numpy as np

__all__ = ["merge_strings", "split_strings", "squeeze_bits", "disassemble_sparse_matrix", "assemble_sparse_matrix"]

_INT_DTYPES: list[Any] = [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64]


def squeeze_bits(arr: Any) -> np.ndarray:
    """The same integers in the smallest dtype that holds them all (unsigned when none is negative)."""
    a = np.asarray(arr)
    if a.dtype == np.bool_:
        return a
    if a.dtype.kind not in "iu":
        raise TypeError(f"squeeze_bits needs an integer array, not {a.dtype}")
    if a.size == 0:
        return a.astype(np.uint8)
    lo, hi = int(a.min()), int(a.max())
    for dt in _INT_DTYPES:
        info = np.iinfo(dt)
        if lo >= 0 and info.min < 0:
            continue  # prefer the unsigned type of the same width when nothing is negative
        if info.min <= lo and hi <= info.max:
            return a.astype(dt)
    return a


def merge_strings(strings: Sequence[Union[str, bytes]]) -> dict[str, np.ndarray]:
    """``{"strings": uint8 buffer, "lengths": byte lengths, "is_bytes": bool}`` for a list of str or bytes."""
    items = list(strings)
    is_bytes = bool(items) and isinstance(items[0], (bytes, bytearray))
    if any(isinstance(s, (bytes, bytearray)) != is_bytes for s in items):
        raise TypeError("merge_strings takes all str or all bytes, not a mix")
    encoded = [bytes(s) if isinstance(s, (bytes, bytearray)) else str(s).encode("utf-8") for s in items]
    buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    lengths = squeeze_bits(np.array([len(e) for e in encoded], dtype=np.int64))
    return {"strings": buffer, "lengths": lengths, "is_bytes": np.array(is_bytes)}


def split_strings(merged: Mapping[str, Any]) -> Union[list[str], list[bytes]]:
    """The list :func:`merge_strings` was given."""
    buffer = np.asarray(merged["strings"], dtype=np.uint8).tobytes()
    lengths = np.asarray(merged["lengths"]).astype(np.int64)
    if lengths.ndim != 1 or (lengths < 0).any() or int(lengths.sum()) != len(buffer):
        raise ValueError(f"lengths (sum {int(lengths.sum())}) do not match the {len(buffer)}-byte buffer")
    ends = np.cumsum(lengths)
    starts = ends - lengths
    pieces = [buffer[s:e] for s, e in zip(starts.tolist(), ends.tolist())]
    if bool(np.asarray(merged.get("is_bytes", False))):
        return pieces
    return [p.decode("utf-8") for p in pieces]


def disassemble_sparse_matrix(matrix: Any) -> dict[str, np.ndarray]:
    """A scipy sparse matrix (or sparse array) in CSR, CSC or COO format as its component arrays."""
    fmt = getattr(matrix, "format", None)
    out: dict[str, np.ndarray] = {
        "format": np.array(fmt),
        "shape": np.array(matrix.shape, dtype=np.int64),
        "data": np.asarray(matrix.data),
        "is_array": np.array(type(matrix).__name__.endswith("_array")),
    }
    if fmt in ("csr", "csc"):
        out["indices"] = np.asarray(matrix.indices)
        out["indptr"] = np.asarray(matrix.indptr)
    elif fmt == "coo":
        out["row"] = np.asarray(matrix.row)
        out["col"] = np.asarray(matrix.col)
    else:
        raise TypeError(f"only CSR, CSC and COO sparse matrices are supported, not {type(matrix).__name__}")
    return out


def assemble_sparse_matrix(parts: Mapping[str, Any]) -> Any:
    """The scipy sparse matrix :func:`disassemble_sparse_matrix` took apart (needs scipy)."""
    try:
        import scipy.sparse as sp
    except ImportError:
        raise ImportError("assemble_sparse_matrix needs scipy: pip install 'ckpt[sparse]'") from None
    fmt = str(np.asarray(parts["format"]))
    shape = tuple(int(x) for x in np.asarray(parts["shape"]))
    as_array = bool(np.asarray(parts.get("is_array", False)))
    data = np.asarray(parts["data"])
    if fmt in ("csr", "csc"):
        cls = {"csr": sp.csr_array if as_array else sp.csr_matrix, "csc": sp.csc_array if as_array else sp.csc_matrix}[fmt]
        return cls((data, np.asarray(parts["indices"]), np.asarray(parts["indptr"])), shape=shape)
    if fmt == "coo":
        cls = sp.coo_array if as_array else sp.coo_matrix
        return cls((data, (np.asarray(parts["row"]), np.asarray(parts["col"]))), shape=shape)
    raise ValueError(f"unknown sparse format {fmt!r}")
