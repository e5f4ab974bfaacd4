"""The ``ckpt`` command: list, inspect, verify, compare, convert, average and prune checkpoints.

A thin layer over the library: each subcommand parses its arguments, calls
ckpt, and prints a table (or JSON with ``--json``). Expected failures (a
damaged or missing file, a bad argument) print one line on stderr and exit 1;
usage errors exit 2. ``main(argv)`` returns the exit status, so tests call it
in-process; ``run()`` is the console-script entry point.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import errno as _errno
import json
import math
import os
import sys
import textwrap
import warnings
import zipfile
from typing import Any, Callable, Optional, Sequence

import numpy as np

from . import __version__, _cli_recipes, _npy, _zip, aliases as _aliases, deps as _deps
from ._cli_format import (dump_json, human_size, parse_size, progress, render_diff, render_info, render_ls,
                          render_prune, render_sources, render_verify, say)
from ._inspect import inspect as _inspect_file
from ._packfile import DEFAULT_SLOT, PackReader, sniff
from .averaging import average as _average, ema as _ema
from .checkpoint import Checkpoint
from .distributed import record as _dist_record
from .distributed.consolidate import ConsolidatedView
from .errors import CkptError, DependencyWarning, FormatError
from .manifest import MANIFEST_MEMBER
from .retention import Entry, best as best_entry
from .varfile import open_reader, save_var_collection

__all__ = ["main", "run", "build_parser"]


class CliError(Exception):
    """An expected failure: printed as one line on stderr, exit status 1."""


# -- shared helpers -----------------------------------------------------------
def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _problem(e: BaseException, path: Optional[str] = None) -> str:
    """An exception as one line that names the file once."""
    if isinstance(e, OSError) and not isinstance(e, CkptError) and e.strerror:
        where = e.filename if e.filename is not None else path
        msg = e.strerror[0].lower() + e.strerror[1:]
        return f"{where}: {msg}" if where else msg
    where = path or getattr(e, "file", None)
    if isinstance(e, FormatError) and isinstance(where, str) and os.path.isfile(where) and \
            _holds_object_arrays(where):
        return f"{where}: {PICKLED_ARRAYS}"  # not damaged: numpy pickled the objects, ckpt will not unpickle
    msg = _one_line(str(e) or type(e).__name__)
    if isinstance(e, KeyError) and not isinstance(e, CkptError) and len(e.args) == 1:
        msg = _one_line(str(e.args[0]))
    if path and not msg.startswith(str(path)):
        msg = f"{path}: {msg}"
    return msg


def _strip_path(msg: str, path: str) -> str:
    prefix = f"{path}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


def _require_file(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(_errno.ENOENT, "No such file or directory", path)
    if os.path.isdir(path):
        raise IsADirectoryError(_errno.EISDIR, "Is a directory (expected a checkpoint file)", path)


def _check_output(path: str, force: bool) -> None:
    if os.path.isdir(path):
        raise IsADirectoryError(_errno.EISDIR, "Is a directory (expected an output file name)", path)
    if os.path.exists(path) and not force:
        raise CliError(f"{path}: already exists; pass --force to overwrite it")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(_errno.ENOENT, "No such directory for the output file", parent)


def _manager(logdir: str, **policy: Any) -> Checkpoint:
    """The checkpoint manager for LOGDIR (its ``ckpt/`` subdirectory), or for a bare directory of checkpoints."""
    if not os.path.exists(logdir):
        raise FileNotFoundError(_errno.ENOENT, "No such file or directory", logdir)
    if not os.path.isdir(logdir):
        raise NotADirectoryError(_errno.ENOTDIR, "Not a directory (expected a log directory)", logdir)
    ck = Checkpoint(logdir, makedir=False, verbose=False, **policy)
    if not os.path.isdir(ck.directory):
        bare = Checkpoint(logdir, makedir=False, verbose=False, **policy)
        bare.DIR_NAME = ""  # type: ignore[misc]  # checkpoints directly in the given directory
        if bare.indices():
            return bare
    return ck


def _is_bare(ck: Checkpoint) -> bool:
    return vars(ck).get("DIR_NAME") == ""


def _list_checkpoints(logdir: str) -> tuple[Checkpoint, list[tuple[int, str]]]:
    ck = _manager(logdir)
    return ck, [(i, ck.path(i)) for i in ck.indices()]


def _arrays_view(reader: PackReader, slot: str, *, verify: bool = True) -> Any:
    info = reader.slot(slot)
    if info.serializer != "arrays":
        raise CliError(f"{reader.label}: slot {slot!r} holds {info.serializer} data, not arrays")
    return reader.arrays(slot, verify=verify)


def _mtime_iso(path: str) -> Optional[str]:
    try:
        t = _dt.datetime.fromtimestamp(os.path.getmtime(path), tz=_dt.timezone.utc)
    except OSError:
        return None
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _metrics(reader: PackReader) -> dict[str, Any]:
    """Metrics recorded with a checkpoint: manifest metadata ``ckpt.metrics``, else a small JSON ``metrics`` slot."""
    meta = reader.metadata.get("ckpt") if isinstance(reader.metadata, dict) else None
    found = meta.get("metrics") if isinstance(meta, dict) else None
    if not isinstance(found, dict):
        info = reader.slots.get("metrics")
        if info is None or info.serializer != "json" or info.size > (1 << 20):
            return {}
        try:
            found = reader.load("metrics")
        except CkptError:
            return {}
        if not isinstance(found, dict):
            return {}
    return {str(k): v for k, v in found.items() if _is_number(v) or isinstance(v, str)}


PICKLED_ARRAYS = "holds pickled object arrays; refused unless trusted"


def _holds_object_arrays(path: str) -> bool:
    """Whether a file's ``.npy`` members include object arrays (numpy pickles those), read with numpy's
    own header parser; such a file is not damaged, only refused."""
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist()[:10000]:
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = {(1, 0): np.lib.format.read_array_header_1_0,
                            (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if read is None:
                        continue
                    _shape, _fortran, dtype = read(f)
                if dtype.hasobject:
                    return True
    except Exception:  # a best-effort diagnosis of a file already refused: any failure here means "no"
        return False
    return False


def _verify_file(path: str, bar: Any = None) -> Optional[str]:
    """None if every hash and structure in ``path`` checks out, else one line naming the problem."""
    done = 0
    try:
        with open_reader(path) as reader:
            seen: set[str] = set()
            for slot, info in reader.slots.items():
                for member in info.members:
                    if member in seen:
                        continue
                    seen.add(member)
                    size = reader.member_size(member)
                    reader.verify_member(member, slot=slot)
                    done += size
                    if bar is not None:
                        bar.update(size)
            if reader.has_manifest:
                extra = sorted(set(reader.zip.members) - set(reader.members) - {MANIFEST_MEMBER})
                if extra:
                    return f"{path}: members not listed in the manifest: {', '.join(extra[:5])}"
            for slot, info in reader.slots.items():
                where = f"{path}: slot {slot!r}"
                if info.serializer == "arrays":
                    view = reader.arrays(slot, verify=False)
                    for name in view.names:
                        view.shape_dtype(name)
                elif info.serializer == "pickle":
                    reader.pickle_globals(slot)
                    for member in info.members[1:]:
                        _npy.parse_header(reader.read_head(member), reader.member_size(member),
                                          where=f"{where} member {member!r}")
                elif info.serializer == "json":
                    reader.load(slot, verify=False)
            if _dist_record.is_record(reader):  # a multi-process checkpoint: every shard's size and digest
                _dist_record.read(reader).verify()
    except (CkptError, OSError, ValueError) as e:
        return _problem(e, path)
    finally:
        if bar is not None:
            try:
                bar.update(max(0, os.path.getsize(path) - done))
            except OSError:
                pass
    return None


def _file_size(path: str) -> Optional[int]:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


# -- ls -----------------------------------------------------------------------
def cmd_ls(args: argparse.Namespace) -> int:
    ck, entries = _list_checkpoints(args.logdir)
    records: list[dict[str, Any]] = []
    status = 0
    with progress(sum(_file_size(p) or 0 for _, p in entries) if args.verify else None, "verifying") as bar:
        for idx, path in entries:
            rec: dict[str, Any] = {"step": idx, "path": path, "size": _file_size(path), "created_at": None,
                                   "updated_at": None, "metrics": {}, "verified": None, "error": None,
                                   "newest": False, "best": False}
            try:
                with open_reader(path) as reader:
                    rec["created_at"] = reader.created_at
                    rec["updated_at"] = reader.updated_at or _mtime_iso(path)
                    rec["metrics"] = _metrics(reader)
            except FileNotFoundError:
                continue  # rotated away since the listing
            except (CkptError, OSError, ValueError) as e:
                rec["error"] = _problem(e, path)
                rec["updated_at"] = _mtime_iso(path)
            if args.verify and rec["error"] is None:
                rec["error"] = _verify_file(path, bar)
            if args.verify or rec["error"] is not None:
                rec["verified"] = rec["error"] is None
            records.append(rec)
    if records:
        records[-1]["newest"] = True
    aliased = _aliases.by_index(ck.directory)
    for rec in records:
        rec["aliases"] = aliased.get(rec["step"], [])
    best = None
    if args.metric:
        scored = [Entry(r["step"], r["size"] or 0, r["metrics"]) for r in records if r["error"] is None]
        found = best_entry(scored, args.metric, args.mode)
        if found is not None:
            best = next(r for r in records if r["step"] == found.idx)
            best["best"] = True
    for rec in records:
        if rec["error"] is not None:
            say(f"ckpt ls: error: {rec['error']}", file=sys.stderr)
            status = 1
    if args.json:
        dump_json({"directory": ck.directory, "checkpoints": records,
                   "newest": records[-1]["step"] if records else None,
                   "best": best["step"] if best else None, "metric": args.metric, "mode": args.mode})
        return status
    if not records:
        say(f"no checkpoints in {args.logdir} (looked in {ck.directory})")
        return status
    say(render_ls(records, metric=args.metric, local=args.local))
    if args.metric and best is None:
        say(f"(no checkpoint records metric {args.metric!r})")
    return status


# -- info ---------------------------------------------------------------------
def _array_records(reader: PackReader, slot: str) -> list[dict[str, Any]]:
    view = _arrays_view(reader, slot, verify=False)
    out = []
    for name in view.names:
        shape, dtype = view.shape_dtype(name)
        encoding, stored = view.stored(name)
        out.append({"name": name, "shape": list(shape), "dtype": _npy.dtype_name(dtype),
                    "bytes": math.prod(shape) * dtype.itemsize, "encoding": encoding, "stored": stored,
                    # incremental checkpoints: "file" (stored in it) or "shared" (refers to a shared object)
                    "where": "shared" if reader.is_shared(view.member(name)) else "file"})
    return out


def _deps_records(deps: dict[str, dict[str, str]], where: str) -> dict[str, dict[str, Any]]:
    out = {}
    for pkg, desc in deps.items():
        mismatch = _deps.find_mismatches({pkg: desc}, where)
        out[pkg] = {"version": desc.get("version"), "requires": desc.get("requires", ""),
                    "installed": _deps.installed_version(pkg), "ok": not mismatch}
    return out


def cmd_info(args: argparse.Namespace) -> int:
    _require_file(args.file)
    doc = _inspect_file(args.file)
    doc["size"] = _file_size(args.file)
    with open_reader(args.file) as reader:
        if _dist_record.is_record(reader):
            doc["sharded"] = _dist_record.describe(_dist_record.read(reader))
        for name, slot in doc["slots"].items():
            slot["dependencies"] = _deps_records(slot.get("dependencies") or {}, f"slot {name!r}")
            if slot["serializer"] == "arrays":
                try:
                    slot["arrays"] = _array_records(reader, name)
                except (CkptError, ValueError) as e:
                    slot["arrays"] = None
                    slot["error"] = _strip_path(_problem(e, args.file), args.file)
            elif slot["serializer"] == "pickle":
                recorded = reader.slot(name).info.get("arrays")
                slot["arrays"] = [
                    {"name": f"[{i}]", "shape": a.get("shape"), "dtype": a.get("dtype"),
                     "bytes": _nbytes(a.get("shape"), a.get("dtype"))}
                    for i, a in enumerate(recorded if isinstance(recorded, list) else []) if isinstance(a, dict)]
    recipe_error = None
    try:
        doc["recipe"] = _cli_recipes.recipe_record(doc["metadata"], f"{args.file}: recipe")
    except FormatError as e:
        doc["recipe"], recipe_error = None, _problem(e)
    if args.json:
        dump_json(doc)
        return 0
    say(render_info(doc, limit=None if args.all else args.max_arrays))
    if doc.get("sharded"):  # a multi-process checkpoint: its arrays live in the shard files
        sh = doc["sharded"]
        say(f"\nmulti-process checkpoint: {sh['process_count']} processes, {len(sh['shards'])} shard files, "
            f"{human_size(sum(s['size'] for s in sh['shards']))}; arrays: "
            + ", ".join(f"{a['name']} {a['shape']} {a['dtype']}" for a in sh["arrays"].get("main", [])[:10]))
    say("\n" + _cli_recipes.render_recipe(doc["recipe"], recipe_error))
    return 0


def _nbytes(shape: Any, dtype: Any) -> Optional[int]:
    try:
        return math.prod(shape) * _npy.dtype_from_name(dtype).itemsize
    except (TypeError, ValueError, CkptError):
        return None


# -- verify -------------------------------------------------------------------
def cmd_verify(args: argparse.Namespace) -> int:
    target = args.path
    if os.path.isdir(target):
        _, entries = _list_checkpoints(target)
        files = [p for _, p in entries]
        if not files:  # a directory of exported or hand-made files
            files = sorted(os.path.join(target, n) for n in os.listdir(target)
                           if n.endswith(".npz") and not n.startswith(".") and
                           os.path.isfile(os.path.join(target, n)))
        if not files:  # `ckpt verify WRONG_DIR && echo intact` must not pass
            if args.json:
                dump_json({"path": target, "files": [], "ok": False})
            else:
                say(f"ckpt verify: no checkpoints in {target} (nor in {os.path.join(target, 'ckpt')}): nothing "
                      "was verified", file=sys.stderr)
            return 1
    else:
        _require_file(target)
        files = [target]
    results = []
    with progress(sum(_file_size(p) or 0 for p in files), "verifying") as bar:
        for path in files:
            bar.set_description(f"verifying {os.path.basename(path)}")
            problem = _verify_file(path, bar)
            results.append({"path": path, "ok": problem is None,
                            "problem": None if problem is None else _strip_path(problem, path),
                            "refused": problem is not None and problem.endswith(PICKLED_ARRAYS)})
    bad = [r for r in results if not r["ok"]]
    if args.json:
        dump_json({"path": target, "files": results, "ok": not bad})
    else:
        say(render_verify(results))
    return 1 if bad else 0


# -- diff ---------------------------------------------------------------------
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


def cmd_diff(args: argparse.Namespace) -> int:
    _require_file(args.a)
    _require_file(args.b)
    with open_reader(args.a) as ra, open_reader(args.b) as rb:
        va, vb = _arrays_view(ra, args.slot), _arrays_view(rb, args.slot)
        names_b = set(vb.names)
        only_a = [n for n in va.names if n not in names_b]
        only_b = [n for n in vb.names if n not in set(va.names)]
        changed, compared = [], []
        common = [n for n in va.names if n in names_b]
        with progress(len(common), "comparing", unit="array") as bar:
            for name in common:
                (sa, da), (sb, db) = va.shape_dtype(name), vb.shape_dtype(name)
                if sa != sb or da != db:
                    changed.append({"name": name, "a": {"shape": list(sa), "dtype": _npy.dtype_name(da)},
                                    "b": {"shape": list(sb), "dtype": _npy.dtype_name(db)}})
                else:
                    stats = compare_arrays(va.read(name, copy=False), vb.read(name, copy=False))
                    compared.append({"name": name, "shape": list(sa), "dtype": _npy.dtype_name(da), **stats})
                bar.update(1)
    differ = bool(only_a or only_b or changed or any(not c["equal"] for c in compared))
    if args.json:
        dump_json({"a": args.a, "b": args.b, "slot": args.slot, "only_in_a": only_a, "only_in_b": only_b,
                   "changed": changed, "arrays": compared, "identical": not differ})
    else:
        say(render_diff(args.a, args.b, only_a, only_b, changed, compared, show_all=args.all))
    return 1 if (args.exit_code and differ) else 0


# -- export / import ----------------------------------------------------------
_SAFETENSORS_DTYPES = {"float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint64",
                       "uint32", "uint16", "uint8", "bool", "complex64", "float8_e4m3fn", "float8_e5m2"}


def _need_safetensors() -> Any:
    try:
        import safetensors.numpy as st
    except ImportError:
        raise CliError("safetensors is not installed: pip install safetensors") from None
    return st


def _bad_npz_name(name: str, names: set[str]) -> bool:
    """True if ``name`` + ``.npy`` is a member name ckpt's reader refuses (export writes only what it reads)."""
    return (_zip.member_name_problem(name + ".npy") is not None or name.endswith(".npy") and name[:-4] in names
            or name == "names")


def _replace_via_temp(out: str, write: Callable[[str], None]) -> None:
    """Write ``out`` through a temp file beside it and rename it into place."""
    from ._io import temp_path_for

    tmp = temp_path_for(out)
    try:
        write(tmp)
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def cmd_export(args: argparse.Namespace) -> int:
    _require_file(args.file)
    fmt = args.to or {".npz": "npz", ".safetensors": "safetensors"}.get(os.path.splitext(args.out)[1].lower())
    if fmt is None:
        raise CliError(f"{args.out}: cannot tell the format from the name; pass --to safetensors or --to npz")
    _check_output(args.out, args.force)
    with open_reader(args.file) as reader:
        view = _arrays_view(reader, args.slot) if not _dist_record.is_record(reader) else \
            ConsolidatedView(_dist_record.read(reader), args.slot)  # a multi-process checkpoint: consolidated
        names = list(view.names)
        sizes = {n: math.prod(view.shape_dtype(n)[0]) * view.shape_dtype(n)[1].itemsize for n in names}
        if fmt == "safetensors":
            bad = sorted({_npy.dtype_name(view.shape_dtype(n)[1]) for n in names} - _SAFETENSORS_DTYPES)
            if bad:
                which = [n for n in names if _npy.dtype_name(view.shape_dtype(n)[1]) in bad]
                raise CliError(f"{args.file}: safetensors cannot hold dtype {', '.join(bad)} "
                               f"(arrays {', '.join(which[:5])}); export to npz instead")
            if "__metadata__" in names:
                raise CliError(f"{args.file}: safetensors reserves the name '__metadata__'; export to npz instead")
            st = _need_safetensors()
        else:
            bad_names = [n for n in names if _bad_npz_name(n, set(names))]
            if bad_names:
                raise CliError(f"{args.file}: array names {bad_names[:5]} cannot be .npz member names that numpy, "
                               "objax and ckpt all read back; export to safetensors instead")
            ext = [n for n in names if _npy.is_extension_dtype(view.shape_dtype(n)[1])]
            if ext:
                say(f"ckpt export: note: {len(ext)} arrays ({', '.join(ext[:3])}) have ml_dtypes dtypes; numpy "
                      "stores them as raw void bytes (restore with arr.view(ml_dtypes.bfloat16) or similar)",
                      file=sys.stderr)
        with progress(sum(sizes.values()), f"exporting {os.path.basename(args.file)}") as bar:
            if fmt == "npz":
                _replace_via_temp(args.out, lambda tmp: _write_npz(tmp, view, names, bar, sizes))
            else:
                arrays = {}
                for n in names:
                    arrays[n] = np.require(view.read(n, copy=False), requirements="C")
                    bar.update(sizes[n])
                meta: dict[str, str] = {}
                if reader.metadata:
                    meta["ckpt.metadata"] = json.dumps(reader.metadata, ensure_ascii=False, default=str)
                _replace_via_temp(args.out, lambda tmp: st.save_file(arrays, tmp, metadata=meta or None))
                del arrays
    say(f"wrote {args.out}: {len(names)} arrays, {human_size(_file_size(args.out))} ({fmt})")
    return 0


def _write_npz(path: str, view: Any, names: list[str], bar: Any, sizes: dict[str, int]) -> None:
    with open(path, "xb") as f:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name in names:
                arr = view.read(name, copy=False)
                with zf.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)
                del arr
                bar.update(sizes[name])
        f.flush()
        os.fsync(f.fileno())


def _detect_source(path: str) -> str:
    with open(path, "rb") as f:
        head = f.read(9)
    if sniff(head[:8]) is None:
        return "npz"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 32):
        return "safetensors"
    raise FormatError(f"{path}: {sniff(head[:8])}; import reads .npz, objax, ckpt and safetensors files",
                      file=path)


def cmd_import(args: argparse.Namespace) -> int:
    _require_file(args.src)
    fmt = args.from_format or _detect_source(args.src)
    _check_output(args.out, args.force)
    if fmt == "safetensors":
        st = _need_safetensors()
        import safetensors

        try:
            with safetensors.safe_open(args.src, framework="np") as f:
                st_meta = f.metadata() or {}
                names = list(f.keys())
                arrays = {}
                with progress(len(names), f"reading {os.path.basename(args.src)}", unit="array") as bar:
                    for n in names:
                        arrays[n] = _st_fix_dtype(f.get_tensor(n), f.get_slice(n).get_dtype())
                        bar.update(1)
        except (CliError, CkptError):
            raise
        except Exception as e:  # safetensors raises its own SafetensorError for malformed files
            raise FormatError(f"{args.src}: not a readable safetensors file ({_one_line(str(e))})",
                              file=args.src) from None
        del st
        meta: dict[str, Any] = {"imported_from": {"file": os.path.basename(args.src), "format": "safetensors"}}
        if st_meta:
            meta["imported_from"]["metadata"] = st_meta
        _save_imported(args, arrays, meta)
        return 0
    with open_reader(args.src) as reader:
        if args.slot == DEFAULT_SLOT and not reader.slots:
            raise CliError(f"{args.src}: holds no arrays; nothing to import")
        view = _arrays_view(reader, args.slot)
        kind = "ckpt" if reader.has_manifest else ("objax" if reader.slot(args.slot).info.get("layout") == "objax"
                                                   else "npz")
        arrays = {}
        with progress(len(view.names), f"reading {os.path.basename(args.src)}", unit="array") as bar:
            for n in view.names:
                arrays[n] = view.read(n, copy=False)
                bar.update(1)
        meta = {"imported_from": {"file": os.path.basename(args.src), "format": kind}}
        _save_imported(args, arrays, meta)
    return 0


def _st_fix_dtype(arr: np.ndarray, st_dtype: str) -> np.ndarray:
    """safetensors builds without ml_dtypes hand bfloat16/float8 back as raw integers; view them as the real dtype."""
    want = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}.get(st_dtype)
    if want is None or arr.dtype.name == want:
        return arr
    return arr.view(_npy.dtype_from_name(want, where="safetensors"))


def _save_imported(args: argparse.Namespace, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    if not arrays:
        raise CliError(f"{args.src}: holds no arrays; nothing to import")
    total = sum(int(a.nbytes) for a in arrays.values())
    with progress(None, f"writing {os.path.basename(args.out)}", unit="B") as bar:
        save_var_collection(args.out, arrays, metadata=meta)
        bar.update(total)
    say(f"wrote {args.out}: {len(arrays)} arrays, {human_size(total)} of data, from "
          f"{meta['imported_from']['format']} file {args.src}")


# -- average / prune (the library's averaging and retention) -----------------
def _average_sources(args: argparse.Namespace) -> tuple[Any, Optional[int], Optional[list[int]]]:
    """What to hand ckpt.average/ema: a log directory with last/indices, or a list of files."""
    if len(args.sources) == 1 and os.path.isdir(args.sources[0]):
        ck = _manager(args.sources[0])
        if not _is_bare(ck):
            return args.sources[0], args.last, args.indices
        have = ck.indices()  # a directory of checkpoint files: choose them here
        if args.indices is not None:
            absent = [i for i in args.indices if i not in set(have)]
            if absent:
                raise CliError(f"{ck.directory}: no checkpoint {absent} (have: {have[-10:]})")
            return [ck.path(i) for i in args.indices], None, None
        if args.last is not None and args.last > len(have):
            raise CliError(f"{ck.directory}: --last {args.last}, but it holds only {len(have)} checkpoints")
        return [ck.path(i) for i in (have[-args.last:] if args.last else have)], None, None
    for path in args.sources:
        _require_file(path)
    if args.indices is not None:
        raise CliError("--indices picks steps of a LOGDIR; with files, list the files to average")
    return list(args.sources), args.last, None


def cmd_average(args: argparse.Namespace) -> int:
    _check_output(args.out, args.force)
    source, last, indices = _average_sources(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DependencyWarning)
        if args.ema is not None:
            result = _ema(source, args.ema, last=last, indices=indices, slot=args.slot, out=args.out)
        else:
            result = _average(source, last=last, indices=indices, weights=args.weights, slot=args.slot,
                              out=args.out)
    for w in caught:
        if issubclass(w.category, DependencyWarning):
            say(f"ckpt average: warning: {_one_line(str(w.message))}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    with open_reader(args.out) as reader:
        record = reader.metadata.get("ckpt", {})
    sources = record.get("averaged_from", [])
    how = f"EMA (decay {args.ema:g})" if args.ema is not None else "mean"
    total = sum(int(a.nbytes) for a in result.values())
    say(f"wrote {args.out}: {how} of {len(sources)} checkpoint{'s' if len(sources) != 1 else ''}, "
          f"{len(result)} arrays, {human_size(total)} of data")
    say(render_sources(sources))
    return 0


def _prune_check(args: argparse.Namespace) -> Optional[str]:
    if all(v is None for v in (args.keep, args.keep_every, args.keep_best, args.max_bytes)):
        return "give at least one policy: --keep, --keep-every, --keep-best or --max-bytes"
    if args.keep_best is not None and not args.metric:
        return "--keep-best needs --metric NAME"
    return None


def _average_check(args: argparse.Namespace) -> Optional[str]:
    if args.weights is not None and args.ema is not None:
        return "--weights applies to the plain mean; --ema sets its own weights"
    return None


def cmd_prune(args: argparse.Namespace) -> int:
    ck = _manager(args.logdir, keep_ckpts=args.keep, keep_every=args.keep_every, keep_best=args.keep_best,
                  metric=args.metric, mode=args.mode, max_bytes=args.max_bytes)
    if not ck.indices():
        if args.json:
            dump_json({"directory": ck.directory, "dry_run": args.dry_run, "deleted": [], "kept": [],
                       "skipped": [], "freed_bytes": 0})
        else:
            say(f"no checkpoints in {args.logdir} (looked in {ck.directory}); nothing to prune")
        return 0
    plan = ck.plan_prune()  # a metric no checkpoint records raises here, before anything is deleted
    if plan.missing_metric:
        say(f"ckpt prune: warning: checkpoints {_short_list(plan.missing_metric)} do not record the metric "
              f"{args.metric!r}; --keep-best cannot rank them", file=sys.stderr)
    for idx, problem in sorted(plan.damaged.items()):
        say(f"ckpt prune: warning: skipped damaged {ck.path(idx)} ({problem}): neither counted nor deleted",
              file=sys.stderr)
    removed = set(ck.prune(dry_run=args.dry_run))
    aliased = _aliases.by_index(ck.directory)
    rows: list[dict[str, Any]] = []
    for entry in plan.entries:
        why = [name for name, kept in plan.kept_by.items() if entry.idx in kept]
        if entry.idx == plan.entries[-1].idx:
            why.append("newest")
        if entry.idx == plan.newest_verified and entry.idx not in plan.kept_by_policy:
            why.append("newest intact")
        why += [f"alias:{a}" for a in aliased.get(entry.idx, [])]  # retention never deletes these
        rows.append({"step": entry.idx, "size": entry.size, "kept": entry.idx not in removed, "kept_by": why,
                     "path": ck.path(entry.idx)})
    for idx, problem in plan.damaged.items():  # one row per damaged file: skipped, kept
        rows.append({"step": idx, "size": _file_size(ck.path(idx)) or 0, "kept": True,
                     "kept_by": [f"damaged, skipped: {problem}"], "path": ck.path(idx), "damaged": problem})
    rows.sort(key=lambda r: r["step"])
    if args.json:
        dump_json({"directory": ck.directory, "dry_run": args.dry_run,
                   "deleted": [r["step"] for r in rows if not r["kept"]],
                   "kept": [r["step"] for r in rows if r["kept"] and "damaged" not in r],
                   "skipped": [{"step": r["step"], "problem": r["damaged"]} for r in rows if "damaged" in r],
                   "freed_bytes": sum(r["size"] for r in rows if not r["kept"]), "checkpoints": rows})
    else:
        say(render_prune(rows, dry_run=args.dry_run))
    return 0


def _short_list(items: list[int]) -> str:
    return ", ".join(map(str, items[:10])) + (f" and {len(items) - 10} more" if len(items) > 10 else "")


# -- the parser ---------------------------------------------------------------
class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


def _int_list(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated steps like 1000,2000,3000, not {text!r}") from None
    if not out or any(i < 0 for i in out):
        raise argparse.ArgumentTypeError(f"expected non-negative steps like 1000,2000,3000, not {text!r}")
    return out


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, not {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _decay(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], not {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"EMA decay must be between 0 and 1, not {value}")
    return value


def _float_list(text: str) -> list[float]:
    try:
        out = [float(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 1,2,3, not {text!r}") from None
    if not out or not all(math.isfinite(w) and w >= 0 for w in out) or not sum(out) > 0:
        raise argparse.ArgumentTypeError(f"expected non-negative weights with a positive sum, not {text!r}")
    return out


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print standard JSON on stdout instead of a table (NaN and infinities as the strings "
                        "\"NaN\", \"Infinity\", \"-Infinity\")")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ckpt", formatter_class=_Formatter,
        description="Inspect, verify, compare, convert, average and prune ckpt checkpoint files and directories.\n"
                    "LOGDIR is a training log directory (checkpoints in LOGDIR/ckpt/) or a directory of\n"
                    "checkpoint files; FILE is one checkpoint (.npz) file.",
        epilog=textwrap.dedent("""\
            examples:
              ckpt ls runs/exp1 --metric loss          list checkpoints, mark the newest and the best
              ckpt info runs/exp1/ckpt/0000001000.npz  what one file holds
              ckpt verify runs/exp1                    check every hash (exit 1 if anything is damaged)
              ckpt diff a.npz b.npz                    compare two checkpoints array by array
              ckpt find runs --cls MLP --order-by loss find checkpoints by model class and metrics

            Exit status: 0 success, 1 an error or damaged file, 2 bad usage.
            Run 'ckpt COMMAND --help' for each command's options."""))
    parser.add_argument("--version", action="version", version=f"ckpt {__version__}",
                        help="print the ckpt version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True

    def add(name: str, func: Callable[[argparse.Namespace], int], summary: str, description: str,
            example: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=summary, description=description, formatter_class=_Formatter,
                           epilog="example:\n" + textwrap.indent(textwrap.dedent(example).strip(), "  "))
        p.set_defaults(func=func)
        return p

    p = add("ls", cmd_ls, "list the checkpoints of a log directory",
            "List the checkpoints in LOGDIR, one line each: step, last write time, size, the metrics\n"
            "recorded with it, whether it was verified, and marks for the newest, (with --metric)\n"
            "the best, and its aliases (alias:NAME, set with Checkpoint.alias). A damaged file is listed\n"
            "as BAD and makes the exit status 1.",
            """\
            ckpt ls runs/exp1
            ckpt ls runs/exp1 --verify --metric val_loss --mode min
            ckpt ls runs/exp1 --json | jq '.best'""")
    p.add_argument("logdir", metavar="LOGDIR",
                   help="log directory (checkpoints in LOGDIR/ckpt/) or a checkpoint directory")
    p.add_argument("--verify", action="store_true", help="hash every file (slow for big checkpoints); otherwise the "
                   "verified column shows '-'")
    p.add_argument("--metric", metavar="NAME", help="metric that picks the best checkpoint (e.g. loss)")
    p.add_argument("--mode", choices=("min", "max"), default="min",
                   help="whether the best checkpoint has the smallest or the largest --metric (default: min)")
    p.add_argument("--local", action="store_true", help="show times in the local time zone instead of UTC")
    _add_json(p)

    p = add("info", cmd_info, "describe what one checkpoint file holds",
            "Describe FILE: its slots (serializer, size, digest), the arrays of each arrays slot (name,\n"
            "shape, dtype, bytes; stored size and encoding where a slot is compressed), the package versions that wrote each slot against those installed\n"
            "here (mismatches marked), the metadata, the recipe the model was built from (if saved with\n"
            "recipe=), and for pickle slots the globals they would import.\n"
            "Nothing in the file is executed.",
            """\
            ckpt info runs/exp1/ckpt/0000001000.npz
            ckpt info model.npz --all
            ckpt info model.npz --json | jq '.slots.main.arrays[].name'""")
    p.add_argument("file", metavar="FILE", help="a ckpt, objax or numpy .npz file")
    p.add_argument("--max-arrays", metavar="N", type=_non_negative_int, default=30,
                   help="list at most N arrays per slot, then a summary line (default: 30)")
    p.add_argument("--all", action="store_true", help="list every array, however many")
    _add_json(p)

    p = add("verify", cmd_verify, "check every hash and structure of a file or a log directory",
            "Check every member of FILE (or of every checkpoint in LOGDIR) against its digest (zip CRCs\n"
            "for files without a manifest), and that every array header, JSON slot and pickle opcode\n"
            "stream is well formed. Prints one line per file; a damaged file's line names the problem\n"
            "(an npz with object arrays is REFUSED: numpy pickled them). Exit status 0 only if every\n"
            "file is intact, and 1 for a directory without checkpoints (nothing verified).",
            """\
            ckpt verify runs/exp1/ckpt/0000001000.npz
            ckpt verify runs/exp1 && echo all intact""")
    p.add_argument("path", metavar="FILE|LOGDIR", help="a checkpoint file, or a directory whose checkpoints are all "
                   "checked")
    _add_json(p)

    p = add("diff", cmd_diff, "compare the arrays of two checkpoint files",
            "Compare the arrays of A and B: names only in A, names only in B, arrays whose shape or\n"
            "dtype changed, and for the others the largest absolute difference (max_abs), that divided\n"
            "by the largest magnitude in either array (rel), and how many elements differ. NaN equals\n"
            "NaN. Arrays are read (and verified) one at a time.",
            """\
            ckpt diff runs/exp1/ckpt/0000001000.npz runs/exp1/ckpt/0000002000.npz
            ckpt diff a.npz b.npz --json | jq '.arrays[] | select(.rel > 1e-3) | .name'""")
    p.add_argument("a", metavar="A", help="first checkpoint file")
    p.add_argument("b", metavar="B", help="second checkpoint file")
    p.add_argument("--slot", default=DEFAULT_SLOT, help=f"arrays slot to compare (default: {DEFAULT_SLOT})")
    p.add_argument("--all", action="store_true", help="list identical arrays too")
    p.add_argument("--exit-code", action="store_true",
                   help="exit with status 1 when the files differ (like git diff --exit-code)")
    _add_json(p)

    p = add("average", cmd_average, "average (or EMA) the weights of several checkpoints into a new file",
            "Average the arrays of several checkpoints (the last K of LOGDIR, the given steps, or the\n"
            "listed files) or take their exponential moving average with --ema, and write the result\n"
            "to OUT as a checkpoint file whose manifest records the files, steps, digests and weights\n"
            "it came from. Floating-point arrays are accumulated in float64 and cast back; integer and\n"
            "boolean arrays (step counters, masks) are taken from the newest checkpoint. Without --last\n"
            "or --indices, every checkpoint of LOGDIR is averaged.",
            """\
            ckpt average runs/exp1 --last 5 -o averaged.npz
            ckpt average runs/exp1 --indices 8000,9000,10000 --weights 1,2,3 -o averaged.npz
            ckpt average runs/exp1 --last 10 --ema 0.9 -o ema.npz
            ckpt average a.npz b.npz c.npz -o abc.npz""")
    p.add_argument("sources", metavar="LOGDIR|FILE", nargs="+",
                   help="one log directory, or checkpoint files oldest first")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--last", metavar="K", type=_positive_int, help="average the K newest checkpoints")
    which.add_argument("--indices", metavar="STEPS", type=_int_list,
                       help="comma-separated steps of LOGDIR to average, e.g. 1000,2000,3000")
    p.add_argument("--ema", metavar="DECAY", type=_decay,
                   help="exponential moving average, oldest to newest: e = DECAY*e + (1-DECAY)*x, no bias "
                        "correction (0 <= DECAY <= 1), instead of the mean")
    p.add_argument("--weights", metavar="W1,W2,...", type=_float_list,
                   help="weights of a weighted mean, one per checkpoint (ascending step order; the order given "
                        "for --indices and for files)")
    p.add_argument("--slot", default=DEFAULT_SLOT, help=f"arrays slot to average (default: {DEFAULT_SLOT})")
    p.add_argument("-o", "--output", dest="out", metavar="OUT", required=True, help="checkpoint file to write")
    p.add_argument("-f", "--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(check=_average_check)

    p = add("export", cmd_export, "write a checkpoint's arrays as safetensors or a plain .npz",
            "Write the arrays of FILE (its main slot) to OUT as a safetensors file or as a plain numpy\n"
            ".npz whose members carry the arrays' real names (numpy.load(OUT)['dense/w']). bfloat16 and\n"
            "other ml_dtypes arrays keep their dtype in safetensors; a plain .npz stores them as raw bytes.",
            """\
            ckpt export runs/exp1/ckpt/0000001000.npz --to safetensors model.safetensors
            ckpt export model.npz --to npz plain.npz""")
    p.add_argument("file", metavar="FILE", help="checkpoint file to export")
    p.add_argument("out", metavar="OUT", help="file to write")
    p.add_argument("--to", choices=("safetensors", "npz"),
                   help="output format (default: from OUT's extension, .safetensors or .npz)")
    p.add_argument("--slot", default=DEFAULT_SLOT, help=f"arrays slot to export (default: {DEFAULT_SLOT})")
    p.add_argument("-f", "--force", action="store_true", help="overwrite OUT if it exists")

    p = add("import", cmd_import, "make a ckpt file from a .npz, objax or safetensors file",
            "Read the arrays of SRC (a numpy .npz, an objax var-collection file, a ckpt file or a\n"
            "safetensors file; the kind is detected from its first bytes) and write them to OUT as a\n"
            "ckpt file with hashes and a manifest recording where they came from.",
            """\
            ckpt import model.safetensors -o model.npz
            ckpt import objax_weights.npz -o weights.npz""")
    p.add_argument("src", metavar="SRC", help="file to import")
    p.add_argument("-o", "--output", dest="out", metavar="OUT", required=True, help="ckpt file to write")
    p.add_argument("--from", dest="from_format", choices=("npz", "safetensors"),
                   help="source format (default: detected; 'npz' covers objax and ckpt files too)")
    p.add_argument("--slot", default=DEFAULT_SLOT,
                   help=f"arrays slot to read from a zip source (default: {DEFAULT_SLOT})")
    p.add_argument("-f", "--force", action="store_true", help="overwrite OUT if it exists")

    p = add("prune", cmd_prune, "delete checkpoints a retention policy does not keep",
            "Apply a retention policy to LOGDIR once, as Checkpoint(...).prune() does, and delete the\n"
            "checkpoints it does not keep. Policies combine: a checkpoint stays if ANY given policy\n"
            "keeps it, and the newest one that verifies always stays. Damaged files (truncated, junk\n"
            "named like a step) are skipped: never counted, never deleted, listed as 'skip'. A --metric\n"
            "that no checkpoint records is an error and deletes nothing. Prints each checkpoint with the\n"
            "policies keeping it. With --dry-run nothing is deleted.",
            """\
            ckpt prune runs/exp1 --keep 3 --dry-run
            ckpt prune runs/exp1 --keep 3 --keep-every 10000 --keep-best 2 --metric val_loss --mode min
            ckpt prune runs/exp1 --max-bytes 20G --json""")
    p.add_argument("logdir", metavar="LOGDIR", help="log directory to prune")
    p.add_argument("--keep", metavar="N", type=_positive_int, help="keep the N newest checkpoints")
    p.add_argument("--keep-every", metavar="N", type=_positive_int,
                   help="keep every checkpoint whose step is a multiple of N")
    p.add_argument("--keep-best", metavar="K", type=_positive_int,
                   help="keep the K best checkpoints by --metric (NaN, infinite or missing values never count)")
    p.add_argument("--metric", metavar="NAME",
                   help="metric for --keep-best, as given to Checkpoint.save(metrics={...})")
    p.add_argument("--mode", choices=("min", "max"), default="min",
                   help="whether the best have the smallest or the largest --metric (default: min)")
    p.add_argument("--max-bytes", metavar="SIZE", type=_size_arg,
                   help="keep the newest checkpoints whose sizes add up to at most SIZE (e.g. 500M, 2GiB, 1.5GB; "
                        "K/M/G and KiB/MiB/GiB are powers of 1024, KB/MB/GB of 1000)")
    p.add_argument("-n", "--dry-run", action="store_true", help="print what would be deleted; delete nothing")
    p.set_defaults(check=_prune_check)
    _add_json(p)
    _cli_recipes.add_commands(add)
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the parser has no subcommands")


def _restore_interrupt() -> None:
    """Start-up is over: Ctrl-C raises KeyboardInterrupt again (reported by main as "interrupted")."""
    import signal

    from . import _quiet_interrupt

    if signal.getsignal(signal.SIGINT) is _quiet_interrupt:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``ckpt`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    _restore_interrupt()
    parser = build_parser()
    args = parser.parse_args(argv)
    check = getattr(args, "check", None)
    problem = check(args) if check is not None else None
    if problem:
        _subparsers(parser)[args.command].error(problem)  # exits 2, like every usage error
    try:
        return int(args.func(args))
    except BrokenPipeError:
        raise
    except (CliError, CkptError, OSError, ValueError) as e:
        files = [getattr(args, n, None) for n in ("file", "path", "src", "a", "b")]
        pickled = isinstance(e, FormatError) and not getattr(e, "file", None) and next(
            (f for f in files if isinstance(f, str) and os.path.isfile(f) and _holds_object_arrays(f)), None)
        say(f"ckpt {args.command}: error: {_problem(e, pickled or None)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        say(f"ckpt {args.command}: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """Console-script entry point."""
    try:
        status = main()
        sys.stdout.flush()
    except KeyboardInterrupt:  # between start-up and main's own handler
        print("ckpt: interrupted", file=sys.stderr)
        status = 130
    except BrokenPipeError:  # `ckpt ls ... | head`: the reader went away; not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        status = 1
    sys.exit(status)
