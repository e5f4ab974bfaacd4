"""Conversions: ``ckpt.export`` (a checkpoint's arrays to safetensors or a plain .npz) and
``ckpt.import_file`` (a .npz, objax, ckpt or safetensors file to a ckpt file with hashes).

Outputs are written through the library's atomic write (temp beside the target, fsync, rename,
directory fsync), so a killed conversion never leaves a half-written file under the output name.
Nothing is written when the input cannot be converted: the checks come first.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Optional

import numpy as np

from . import _locations as _loc, _npy, _zip
from ._locations import Location
from ._packfile import DEFAULT_SLOT, sniff
from .distributed import record as _dist_record
from .distributed.consolidate import ConsolidatedView
from .errors import CkptError, ConversionError, FormatError, MissingDependencyError
from .integrity import _one_line
from .varfile import open_reader, save_var_collection

__all__ = ["Conversion", "export", "import_file", "EXPORT_FORMATS", "IMPORT_FORMATS"]

EXPORT_FORMATS = ("safetensors", "npz")
IMPORT_FORMATS = ("npz", "safetensors")
Progress = Optional[Callable[[int], None]]

_SAFETENSORS_DTYPES = {"float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint64",
                       "uint32", "uint16", "uint8", "bool", "complex64", "float8_e4m3fn", "float8_e5m2"}


@dataclass(frozen=True)
class Conversion:
    """What a conversion wrote: ``location``, its ``format``, how many ``arrays`` and ``nbytes`` of array
    data, the ``source`` kind (``ckpt``, ``objax``, ``npz``, ``safetensors``), the output's ``size`` in
    bytes and ``notes`` for the user."""

    location: str
    format: str
    arrays: int
    nbytes: int
    source: str
    size: Optional[int] = None
    notes: list[str] = field(default_factory=list)


def _safetensors(what: str) -> Any:
    try:
        import safetensors.numpy as st
    except ImportError:
        raise MissingDependencyError(f"safetensors is not installed: pip install safetensors (needed to {what})",
                                     package="safetensors") from None
    return st


def _bad_npz_name(name: str, names: set[str]) -> bool:
    """True if ``name`` + ``.npy`` is a member name ckpt's reader refuses (export writes only what it reads)."""
    return (_zip.member_name_problem(name + ".npy") is not None or name.endswith(".npy") and name[:-4] in names
            or name == "names")


def _export_format(out: Location, to: Optional[str]) -> str:
    if to is not None:
        if to not in EXPORT_FORMATS:
            raise ValueError(f"to must be one of {EXPORT_FORMATS}, not {to!r}")
        return to
    name = _loc.basename(out).lower()
    for fmt in EXPORT_FORMATS:
        if name.endswith("." + fmt):
            return fmt
    raise ConversionError(f"{_loc.text(out)}: cannot tell the format from the name; pass --to safetensors or "
                          "--to npz (to=...)", file=_loc.text(out))


def export(file: Location, out: Location, *, to: Optional[str] = None, slot: str = DEFAULT_SLOT,
           force: bool = False, progress: Progress = None) -> Conversion:
    """Write the arrays of ``file``'s slot ``slot`` to ``out`` as safetensors or as a plain numpy .npz
    whose members carry the arrays' real names (``numpy.load(out)['dense/w']``).

    ``to`` defaults to ``out``'s extension. bfloat16 and other ml_dtypes arrays keep their dtype in
    safetensors; a plain .npz stores them as raw bytes (a note says so). ``progress(n)`` gets bytes.
    """
    _loc.require_file(file)
    src = _loc.text(file)
    fmt = _export_format(out, to)
    _loc.check_output(out, force)
    notes: list[str] = []
    with open_reader(file) as reader:
        # a multi-process checkpoint is consolidated from its shard files
        view = ConsolidatedView(_dist_record.read(reader), slot) if _dist_record.is_record(reader) else \
            reader.arrays(slot)
        names = list(view.names)
        dtypes = {n: view.shape_dtype(n)[1] for n in names}
        sizes = {n: math.prod(view.shape_dtype(n)[0]) * dtypes[n].itemsize for n in names}
        if fmt == "safetensors":
            bad = sorted({_npy.dtype_name(d) for d in dtypes.values()} - _SAFETENSORS_DTYPES)
            if bad:
                which = [n for n in names if _npy.dtype_name(dtypes[n]) in bad]
                raise ConversionError(f"{src}: safetensors cannot hold dtype {', '.join(bad)} "
                                      f"(arrays {', '.join(which[:5])}); export to npz instead", file=src, slot=slot)
            if "__metadata__" in names:
                raise ConversionError(f"{src}: safetensors reserves the name '__metadata__'; export to npz instead",
                                      file=src, slot=slot)
            st = _safetensors("export to safetensors")
        else:
            bad_names = [n for n in names if _bad_npz_name(n, set(names))]
            if bad_names:
                raise ConversionError(f"{src}: array names {bad_names[:5]} cannot be .npz member names that numpy, "
                                      "objax and ckpt all read back; export to safetensors instead", file=src, slot=slot)
            ext = [n for n in names if _npy.is_extension_dtype(dtypes[n])]
            if ext:
                notes.append(f"{len(ext)} arrays ({', '.join(ext[:3])}) have ml_dtypes dtypes; numpy stores them as "
                             "raw void bytes (restore with arr.view(ml_dtypes.bfloat16) or similar)")

        def step(name: str) -> None:
            if progress is not None:
                progress(sizes[name])

        if fmt == "npz":
            _loc.commit(out, lambda f: _write_npz(f, view, names, step))
        else:
            arrays = {}
            for n in names:
                arrays[n] = np.require(view.read(n, copy=False), requirements="C")
                step(n)
            meta: dict[str, str] = {}
            if reader.metadata:
                meta["ckpt.metadata"] = json.dumps(reader.metadata, ensure_ascii=False, default=str)
            data = st.save(arrays, metadata=meta or None)
            del arrays
            _loc.commit(out, lambda f: f.write(data))
        kind = _kind(reader, slot)
    return Conversion(_loc.text(out), fmt, len(names), sum(sizes.values()), kind, _loc.size(out), notes)


def _kind(reader: Any, slot: str) -> str:
    if reader.has_manifest:
        return "ckpt"
    return "objax" if reader.slot(slot).info.get("layout") == "objax" else "npz"


def _write_npz(f: BinaryIO, view: Any, names: list[str], step: Callable[[str], None]) -> None:
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name in names:
            arr = view.read(name, copy=False)
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)
            del arr
            step(name)


def detect_source(file: Location) -> str:
    """``"npz"`` for a zip (.npz, objax, ckpt), ``"safetensors"`` for a safetensors file; else FormatError."""
    head = _loc.read_head(file, 9)
    if sniff(head[:8]) is None:
        return "npz"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 32):
        return "safetensors"
    path = _loc.text(file)
    raise FormatError(f"{path}: {sniff(head[:8])}; import reads .npz, objax, ckpt and safetensors files", file=path)


def _st_fix_dtype(arr: np.ndarray, st_dtype: str) -> np.ndarray:
    """safetensors builds without ml_dtypes hand bfloat16/float8 back as raw integers; view them as the real dtype."""
    want = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}.get(st_dtype)
    if want is None or arr.dtype.name == want:
        return arr
    return arr.view(_npy.dtype_from_name(want, where="safetensors"))


def _read_safetensors(file: Location, progress: Progress) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    _safetensors("import safetensors files")
    import safetensors

    path = _loc.text(file)
    try:  # safetensors maps the file itself: a foreign format, not one of ckpt's readers
        with safetensors.safe_open(path, framework="np") as f:
            meta = f.metadata() or {}
            arrays = {}
            for n in f.keys():
                arrays[n] = _st_fix_dtype(f.get_tensor(n), f.get_slice(n).get_dtype())
                if progress is not None:
                    progress(1)
    except CkptError:
        raise
    except Exception as e:  # safetensors raises its own SafetensorError for malformed files
        raise FormatError(f"{path}: not a readable safetensors file ({_one_line(str(e))})", file=path) from None
    return arrays, meta


def import_file(file: Location, out: Location, *, from_format: Optional[str] = None, slot: str = DEFAULT_SLOT,
                force: bool = False, progress: Progress = None) -> Conversion:
    """Read the arrays of ``file`` (a numpy .npz, an objax var-collection file, a ckpt file or a
    safetensors file; detected from its first bytes unless ``from_format``) and write them to ``out``
    as a ckpt file whose manifest records where they came from. ``progress(1)`` per array read."""
    _loc.require_file(file)
    src = _loc.text(file)
    if from_format is not None and from_format not in IMPORT_FORMATS:
        raise ValueError(f"from_format must be one of {IMPORT_FORMATS}, not {from_format!r}")
    fmt = from_format or detect_source(file)
    _loc.check_output(out, force)
    imported: dict[str, Any] = {"file": _loc.basename(file)}
    if fmt == "safetensors":
        arrays, st_meta = _read_safetensors(file, progress)
        imported["format"] = "safetensors"
        if st_meta:
            imported["metadata"] = st_meta
        return _save_imported(src, out, arrays, imported)
    with open_reader(file) as reader:
        if slot == DEFAULT_SLOT and not reader.slots:
            raise ConversionError(f"{src}: holds no arrays; nothing to import", file=src)
        view = reader.arrays(slot)
        arrays = {}
        for n in view.names:
            arrays[n] = view.read(n, copy=False)
            if progress is not None:
                progress(1)
        imported["format"] = _kind(reader, slot)
        return _save_imported(src, out, arrays, imported)


def _save_imported(src: str, out: Location, arrays: dict[str, np.ndarray], imported: dict[str, Any]) -> Conversion:
    if not arrays:
        raise ConversionError(f"{src}: holds no arrays; nothing to import", file=src)
    save_var_collection(_loc.text(out), arrays, metadata={"imported_from": imported})
    total = sum(int(a.nbytes) for a in arrays.values())
    return Conversion(_loc.text(out), "ckpt", len(arrays), total, imported["format"], _loc.size(out))

