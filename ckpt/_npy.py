"""The .npy member encoding: headers written with numpy's own format code, read with checks.

Reading validates the header (magic, length, dtype, shape) and that the shape
fits the member's size exactly, before any array is allocated. Dtypes numpy
does not know natively (ml_dtypes' bfloat16, float8, int4, ...) are stored as
opaque ``|V<itemsize>`` so ``numpy.load`` still opens them; their real name is
recorded in the manifest and restored on load.
"""

from __future__ import annotations

import ast
import functools
import io
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Literal, Optional

import numpy as np

from . import _limits
from .errors import FormatError, MissingDependencyError

MAGIC = b"\x93NUMPY"
#: What numpy raises for a malformed dtype description (it parses comma strings with ast.literal_eval).
_DTYPE_ERRORS = (TypeError, ValueError, KeyError, IndexError, SyntaxError, OverflowError, RecursionError,
                 MemoryError, DeprecationWarning)  # a deprecated alias ('<a8') is never written: refused


def is_extension_dtype(dtype: np.dtype) -> bool:
    """True for dtypes from ml_dtypes (bfloat16, float8_*, int4, ...)."""
    return getattr(dtype.type, "__module__", "").startswith("ml_dtypes")


def dtype_name(dtype: np.dtype) -> str:
    """A stable, readable name for a dtype, as recorded in the manifest."""
    if is_extension_dtype(dtype):
        return str(dtype.name)
    if dtype.isbuiltin and dtype.byteorder in ("=", "|") and dtype.names is None:
        return str(dtype.name)
    return str(dtype.str) if dtype.names is None else str(dtype.descr)


def dtype_from_name(name: str, *, where: str = "") -> np.dtype:
    """The dtype a manifest name stands for; ml_dtypes names need ml_dtypes installed.

    The name comes from the file, so anything that is not a plain numpy or ml_dtypes
    dtype (an object dtype, an attribute of the ml_dtypes module that is not a dtype,
    a malformed or oversized dtype string) is refused with a FormatError.
    """
    known = _plain_dtype(name) if len(name) <= 64 else None
    if known is not None:
        return known
    try:
        dt: Optional[np.dtype] = np.dtype(name)
    except _DTYPE_ERRORS:
        dt = None
    if dt is None:
        try:
            import ml_dtypes
        except ImportError:
            raise MissingDependencyError(
                f"{where}: arrays of dtype {name!r:.200} need the ml_dtypes package, which is not installed "
                "(pip install ml_dtypes); the file is not damaged", package="ml_dtypes") from None
        found = getattr(ml_dtypes, name, None) if name.isidentifier() else None
        try:
            dt = np.dtype(found) if isinstance(found, type) else None
        except (TypeError, ValueError):
            dt = None
        if dt is None or not is_extension_dtype(dt):
            raise FormatError(f"{where}: unknown dtype {name!r:.200} (not numpy's, not ml_dtypes')")
    if dt.hasobject:
        raise FormatError(f"{where}: dtype {name!r:.200} holds Python objects; object arrays are refused")
    return dt


@functools.lru_cache(maxsize=256)
def _plain_dtype(name: str) -> Optional[np.dtype]:
    """The numpy dtype a short manifest name stands for when numpy knows it and it holds no objects
    (cached: every array of a model records one of a few names); None sends it the long way."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            dt = np.dtype(name)
    except _DTYPE_ERRORS:
        return None
    return None if dt.hasobject else dt


@functools.lru_cache(maxsize=4096)
def header_bytes(shape: tuple[int, ...], dtype: np.dtype, fortran_order: bool = False) -> bytes:
    """The .npy magic and header for an array of this shape and dtype (length a multiple of 64).

    Cached: models repeat a few shapes many times, and numpy's writer costs ~20 us a call."""
    if dtype.hasobject:
        raise TypeError(f"arrays of dtype {dtype} hold Python objects and cannot be stored as .npy data")
    descr: Any = f"|V{dtype.itemsize}" if is_extension_dtype(dtype) else np.lib.format.dtype_to_descr(dtype)
    header = {"descr": descr, "fortran_order": bool(fortran_order), "shape": tuple(int(s) for s in shape)}
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, header)
    except ValueError:
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue()


@dataclass(frozen=True)
class NpyHeader:
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    header_len: int

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize


def header_prefix_len(prefix: bytes, *, where: str) -> int:
    """Total header length (magic included) from the first 12 bytes of a member."""
    if len(prefix) < 10 or prefix[:6] != MAGIC:
        raise FormatError(f"{where}: not a .npy member (bad magic {prefix[:6]!r})")
    major = prefix[6]
    if major == 1:
        n = int.from_bytes(prefix[8:10], "little")
        total = 10 + n
    elif major in (2, 3):
        if len(prefix) < 12:
            raise FormatError(f"{where}: .npy header truncated")
        n = int.from_bytes(prefix[8:12], "little")
        total = 12 + n
    else:
        raise FormatError(f"{where}: unsupported .npy format version {major}.{prefix[7]}")
    if total > _limits.MAX_NPY_HEADER_BYTES:
        raise FormatError(
            f"{where}: .npy header of {total} bytes is over the limit of {_limits.MAX_NPY_HEADER_BYTES}"
        )
    return total


def parse_header(head: bytes, member_size: int, *, where: str) -> NpyHeader:
    """Validate a complete .npy header and that its shape fills the member exactly."""
    total = header_prefix_len(head[:12], where=where)
    if len(head) < total or total > member_size:
        raise FormatError(f"{where}: .npy header of {total} bytes is cut short (member is {member_size} bytes)")
    text_start = 10 if head[6] == 1 else 12
    known = _canonical(bytes(head[text_start:total]))
    if known is not None:
        header = NpyHeader(known[0], known[1], known[2], total)
    else:
        header = _parse_text(head, text_start, total, where=where)
    if total + header.nbytes != member_size:
        raise FormatError(
            f"{where}: .npy header claims shape {header.shape} of {header.dtype} ({header.nbytes} bytes) but the "
            f"member holds {member_size - total} bytes of data"
        )
    return header


def header_of(data: Any, *, where: str) -> NpyHeader:
    """The checked header of a whole member already in memory (``data``: its complete bytes)."""
    total = header_prefix_len(bytes(data[:12]), where=where)
    return parse_header(bytes(data[:total]), len(data), where=where)


#: The header text numpy (and so ckpt) writes: keys sorted, a plain descr string, a tuple of plain ints,
#: padded with spaces to a newline. Anything else goes through ast.literal_eval and every check below.
_INT = rb"(?:0|[1-9][0-9]{0,18})"
_CANONICAL = re.compile(
    rb"\{'descr': '([<>|=]?[A-Za-z][0-9]{0,9}(?:\[[A-Za-z0-9]{1,8}\])?)', 'fortran_order': (True|False), "
    rb"'shape': \((|" + _INT + rb",|" + _INT + rb"(?:, " + _INT + rb")+)\), \}")
_CANONICAL_MAX = 2048  # longer than any canonical text of MAX_NDIM dimensions: keeps the cache small


def _canonical(text: bytes) -> Optional[tuple[np.dtype, tuple[int, ...], bool]]:
    """dtype, shape and order of a canonical header text that passes every check ``parse_header`` makes
    (but the member size); None for any other text, which then takes the general path (same errors)."""
    if not text.endswith(b"\n"):
        return None
    core = text[:-1].rstrip(b" ")
    return _canonical_core(core) if len(core) <= _CANONICAL_MAX else None


@functools.lru_cache(maxsize=1024)
def _canonical_core(core: bytes) -> Optional[tuple[np.dtype, tuple[int, ...], bool]]:
    """Cached: a model's members repeat a few headers, and ``ast.literal_eval`` costs ~40 us a call."""
    m = _CANONICAL.fullmatch(core)
    if m is None:
        return None
    shape = tuple(int(s) for s in m.group(3).split(b",") if s.strip())
    if len(shape) > _limits.MAX_NDIM:
        return None
    descr: Any = m.group(1).decode("ascii")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            dtype = np.lib.format.descr_to_dtype(descr)
    except _DTYPE_ERRORS:
        return None
    if dtype.hasobject or dtype.subdtype is not None:
        return None
    try:
        check_shape(shape, dtype, "")
    except FormatError:
        return None
    return dtype, shape, m.group(2) == b"True"


def _parse_text(head: bytes, text_start: int, total: int, *, where: str) -> NpyHeader:
    """Any header text: parsed as a Python literal and checked field by field."""
    encoding = "utf-8" if head[6] == 3 else "latin1"
    try:
        text = head[text_start:total].decode(encoding)
        d = ast.literal_eval(text)
    except (UnicodeDecodeError, SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as e:
        raise FormatError(f"{where}: .npy header is not a valid literal ({type(e).__name__})") from None
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise FormatError(f"{where}: .npy header must have exactly descr, fortran_order and shape; found {d!r:.200}")
    shape = d["shape"]
    if (
        not isinstance(shape, tuple)
        or len(shape) > _limits.MAX_NDIM
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
    ):
        raise FormatError(f"{where}: .npy header has an invalid shape {shape!r:.200}")
    if not isinstance(d["fortran_order"], bool):
        raise FormatError(f"{where}: .npy header fortran_order is not a bool")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            dtype = np.lib.format.descr_to_dtype(d["descr"])
    except _DTYPE_ERRORS as e:
        raise FormatError(f"{where}: .npy header has an invalid dtype {d['descr']!r:.200} "
                          f"({type(e).__name__}: {str(e)[:200]})") from None
    if dtype.hasobject:
        raise FormatError(f"{where}: object arrays are refused (they would need pickle); dtype {dtype}")
    if dtype.subdtype is not None:
        # numpy.load would append the subarray's dimensions to the shape: refuse rather than disagree.
        raise FormatError(f"{where}: .npy header has a subarray dtype {dtype!s:.200} (numpy would read shape "
                          f"{shape + dtype.shape!r:.200}); ckpt never writes one")
    check_shape(shape, dtype, where)
    return NpyHeader(dtype, shape, d["fortran_order"], total)


def check_shape(shape: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    """Shapes numpy can build: every dimension, and the product of the non-zero ones in bytes, fit an intp
    (a zero dimension does not excuse the others); zero-itemsize arrays are bounded in elements."""
    big = np.iinfo(np.intp).max
    nonzero = math.prod(s for s in shape if s)
    if any(s > big for s in shape) or nonzero * max(dtype.itemsize, 1) > big:
        raise FormatError(f"{where}: .npy header shape {shape!r:.200} has more elements than numpy can index")
    if dtype.itemsize == 0 and math.prod(shape) > _limits.MAX_EMPTY_ITEM_ELEMENTS:
        raise FormatError(f"{where}: shape {shape!r:.200} of zero-size items has {math.prod(shape)} "
                          f"elements, over the limit of {_limits.MAX_EMPTY_ITEM_ELEMENTS}")


def array_from_buffer(buf: Any, header: NpyHeader, *, dtype: Optional[np.dtype] = None) -> np.ndarray:
    """An array over ``buf`` (no copy). ``dtype`` replaces an opaque void dtype of equal size."""
    dt = header.dtype
    if dtype is not None and dtype != dt:
        if dtype.itemsize != dt.itemsize:
            raise FormatError(f"dtype {dtype} does not match the stored {dt} (itemsize differs)")
        dt = dtype
    order: Literal["F", "C"] = "F" if header.fortran_order else "C"
    if dt.itemsize == 0:  # nothing to read (np.frombuffer refuses these; numpy.load builds them like this)
        return np.ndarray(header.shape, dtype=dt, order=order)
    arr = np.frombuffer(buf, dtype=dt, count=header.count, offset=header.header_len)
    return arr.reshape(header.shape, order=order)
