"""Rendering for the ``ckpt`` command: tables, sizes, times, JSON and progress bars.

Nothing here touches checkpoint files; the library gathers the facts (:mod:`ckpt.listing`,
:mod:`ckpt.verify`, ...) and these helpers only turn them into text.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import sys
from typing import Any, Iterable, Optional, Sequence, TextIO

from ..errors import FormatError
from ..recipes import Recipe

__all__ = ["human_size", "parse_size", "format_time", "format_number", "table", "dump_json", "strict_json",
           "progress", "ProgressBar", "escape_controls", "say", "short_name", "one_line", "render_recipe"]


def _escape_char(c: str) -> str:
    return c.encode("unicode_escape").decode("ascii")


def escape_controls(text: str, *, keep: str = "\n") -> str:
    """``text`` with every character a terminal could act on (C0/C1 controls, DEL, bidi overrides, other
    non-printables) written as a Python escape; names come from files, and escape sequences in them must
    never reach the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else _escape_char(c) for c in text)


def one_line(text: str) -> str:
    """A (multi-line) message as one line."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def short_name(location: str) -> str:
    """The last component of a path or URL, for progress bar labels."""
    return str(location).rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]


def say(*parts: Any, file: Optional[TextIO] = None) -> None:
    """``print`` for the CLI: everything written is escaped (see :func:`escape_controls`)."""
    print(escape_controls(" ".join(str(p) for p in parts)), file=file)

_UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
_JSON_UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u00ad\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]")


def human_size(n: Optional[int]) -> str:
    """``1536`` -> ``'1.5 KiB'``; exact bytes below 1 KiB."""
    if n is None:
        return "-"
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtp]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(text: str) -> int:
    """A byte count from ``'500M'``, ``'2GiB'``, ``'1.5GB'`` or ``'1000'``.

    ``K``, ``M``, ``G``, ``T``, ``P`` alone or with ``iB`` are powers of 1024;
    with a bare ``B`` (``KB``, ``MB``, ``GB``) they are powers of 1000.
    """
    m = _SIZE_RE.match(text)
    if m is None:
        raise ValueError(f"invalid size {text!r}: use a number of bytes with an optional unit, e.g. 500M, 2GiB, 1.5GB")
    number, prefix, binary, b = m.groups()
    power = _POWERS[prefix.lower()]
    base = 1000 if (b and not binary and power) else 1024
    value = float(number) * base ** power
    if not math.isfinite(value):
        raise ValueError(f"invalid size {text!r}")
    return int(round(value))


def format_time(iso: Optional[str], *, local: bool = False) -> str:
    """A manifest timestamp (``...ffffffZ``) to seconds precision, in UTC or local time."""
    if not iso:
        return "-"
    try:
        t = _dt.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        return iso
    if local:
        return t.astimezone().strftime("%Y-%m-%d %H:%M:%S%z")
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def format_number(x: Any) -> str:
    """Numbers to 6 significant digits; anything else as str."""
    if isinstance(x, bool) or x is None:
        return "-" if x is None else str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, right: Iterable[int] = (),
          indent: str = "") -> str:
    """A plain-text table: columns padded to their widest cell, ``right`` column indices right-aligned."""
    body = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    right_set = set(right)

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(widths[i]) if i in right_set else c.ljust(widths[i]) for i, c in enumerate(cells)]
        return (indent + "  ".join(parts)).rstrip()

    return "\n".join([line(list(headers)), *(line(r) for r in body)])


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    if isinstance(obj, _dt.datetime):
        return obj.isoformat()
    return str(obj)


_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def strict_json(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``,
    so the output is standard JSON that jq and JavaScript parse."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else _NON_FINITE[obj]
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and not isinstance(obj, (str, bytes)):
        return strict_json(obj.item())
    return obj


def dump_json(doc: Any, out: Optional[TextIO] = None) -> None:
    """Indented, standard JSON on stdout (non-finite numbers as strings, see :func:`strict_json`)."""
    out = out or sys.stdout
    text = json.dumps(strict_json(doc), indent=2, default=_jsonable, ensure_ascii=False, allow_nan=False)
    # Non-printables can only be inside strings here: JSON escapes keep them off the terminal.
    out.write(_JSON_UNSAFE.sub(lambda m: json.dumps(m.group())[1:-1], text) if not text.isprintable() else text)
    out.write("\n")


class ProgressBar:
    """A tqdm bar on stderr when stderr is a terminal, else a silent stand-in with the same methods."""

    def __init__(self, total: Optional[float], desc: str, unit: str = "B"):
        self._bar: Any = None
        if not _stderr_is_tty():
            return
        try:
            from tqdm import tqdm
        except ImportError:  # progress bars are a nicety
            return
        scale = unit == "B"
        self._bar = tqdm(total=total, desc=escape_controls(desc, keep=""), unit=unit, unit_scale=scale, unit_divisor=1024 if scale else 1000,
                         leave=False, file=sys.stderr, dynamic_ncols=True)

    def update(self, n: float = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def add_total(self, n: Optional[float]) -> None:
        """Grow the total by ``n`` (a file about to be processed); None leaves it as it is."""
        if self._bar is not None and n is not None:
            self._bar.total = (self._bar.total or 0) + n
            self._bar.refresh()

    def set_description(self, desc: str) -> None:
        if self._bar is not None:
            self._bar.set_description(escape_controls(desc, keep=""), refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress(total: Optional[float], desc: str, unit: str = "B") -> ProgressBar:
    return ProgressBar(total, desc, unit)


# -- per-command renderers ------------------------------------------------------
def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _shape(shape: Optional[Sequence[int]]) -> str:
    shape = list(shape or [])
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def render_ls(records: list[dict[str, Any]], *, metric: Optional[str], local: bool) -> str:
    names = list(dict.fromkeys(k for r in records for k in r["metrics"]))
    if metric:
        names = [metric] + [n for n in names if n != metric]
    headers = ["step", "updated (local)" if local else "updated (UTC)", "size", *names, "verified", ""]
    rows = []
    for r in records:
        marks = [m for m in ("newest", "best") if r[m]] + [f"alias:{a}" for a in r.get("aliases", ())]
        verified = "-" if r["verified"] is None else ("ok" if r["verified"] else "BAD")
        rows.append([r["step"], format_time(r["updated_at"], local=local), human_size(r["size"]),
                     *(format_number(r["metrics"].get(n)) for n in names), verified, ", ".join(marks)])
    return table(headers, rows, right=[0, 2, *range(3, 3 + len(names))])


def array_summary(arrays: list[dict[str, Any]]) -> str:
    """``'120 arrays, 1.2 MiB (1234567 bytes): float32 x100, float16 x20'``."""
    hist: dict[str, int] = {}
    for a in arrays:
        hist[str(a["dtype"])] = hist.get(str(a["dtype"]), 0) + 1
    kinds = ", ".join(f"{d} x{n}" for d, n in sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])))
    total = sum(a["bytes"] or 0 for a in arrays)
    return f"{_plural(len(arrays), 'array')}, {human_size(total)} ({total} bytes)" + (f": {kinds}" if kinds else "")


def _digest_cell(slot: dict[str, Any]) -> str:
    digest = slot.get("digest", slot.get("sha256"))
    return f"{slot.get('algorithm') or 'sha256'} {digest}" if digest else "-"


def render_info(doc: dict[str, Any], limit: Optional[int]) -> str:
    out: list[str] = []
    kind = (f"ckpt pack, format version {doc['format_version']}" if doc["has_manifest"] else
            "plain .npz / objax file (no manifest: checked by zip CRCs only)")
    out += [f"file:     {doc['file']} ({human_size(doc['size'])})", f"format:   {kind}"]
    if doc["has_manifest"]:
        out += [f"created:  {format_time(doc['created_at'])}", f"updated:  {format_time(doc['updated_at'])}"]
    slots = doc["slots"]
    out += ["", "slots:", table(["slot", "serializer", "size", "digest"],
                                [[n, s["serializer"], human_size(s["size"]), _digest_cell(s)]
                                 for n, s in slots.items()], right=[2], indent="  ")]
    for name, slot in slots.items():
        arrays = slot.get("arrays")
        if slot.get("error"):
            out += ["", f"slot {name!r}: {slot['error']}"]
        if not arrays:
            continue
        shown = arrays if limit is None else arrays[:limit]
        rows = [[a["name"], _shape(a["shape"]), a["dtype"], "-" if a["bytes"] is None else a["bytes"]] for a in shown]
        headers = ["name", "shape", "dtype", "bytes"]
        if any(a.get("encoding") for a in arrays):  # a compressed slot: how each array is stored
            headers += ["stored", "encoding"]
            for row, a in zip(rows, shown):
                row += [a.get("stored", "-"), a.get("encoding") or "raw"]
        shared = [a for a in arrays if a.get("where") == "shared"]
        if shared:  # an incremental checkpoint: which arrays this file stores and which it refers to
            headers.append("where")
            for row, a in zip(rows, shown):
                row.append("shared object" if a.get("where") == "shared" else "in this file")
        out += ["", f"arrays in slot {name!r}: {array_summary(arrays)}"]
        if shared:
            out.append(f"  {len(arrays) - len(shared)} arrays stored in this file, {len(shared)} arrays refer to "
                       f"shared objects ({human_size(sum(a['stored'] for a in shared))}, in objects/ beside it)")
        out.append(table(headers, rows, right=[3, 4], indent="  "))
        if len(shown) < len(arrays):
            out.append(f"  ... {len(arrays) - len(shown)} more (--all lists every array)")
    dep_rows = []
    for name, slot in slots.items():
        for pkg, d in slot["dependencies"].items():
            status = "ok" if d["ok"] else "MISMATCH"
            if d["ok"] and not d["requires"]:
                status = "ok (informational)" if d["installed"] == d["version"] else "differs (informational)"
            dep_rows.append([name, pkg, d["version"], d["requires"] or "-", d["installed"] or "not installed",
                             status])
    if dep_rows:
        out += ["", "dependencies (recorded by the writer vs installed here):",
                table(["slot", "package", "recorded", "requires", "installed", "status"], dep_rows, indent="  ")]
    for name, slot in slots.items():
        if slot["serializer"] != "pickle":
            continue
        if slot.get("globals") is None:
            out += ["", f"pickle slot {name!r}: globals unreadable: {slot.get('error')}"]
        else:
            out += ["", f"pickle slot {name!r} would import (nothing was executed):"]
            out += [f"  {g}" for g in slot["globals"] or ["(nothing)"]]
    out += ["", "metadata:"]
    if doc["metadata"]:
        text = json.dumps(doc["metadata"], indent=2, ensure_ascii=False, default=str)
        out += ["  " + line for line in text.splitlines()]
    else:
        out.append("  (none)")
    return "\n".join(out)


def render_verify(results: list[dict[str, Any]]) -> str:
    def line(r: dict[str, Any]) -> str:
        if r["ok"]:
            return f"ok   {r['path']}"
        return f"{'REFUSED' if r.get('refused') else 'BAD'}  {r['path']}: {r['problem']}"

    lines = [line(r) for r in results]
    refused = sum(1 for r in results if r.get("refused"))
    bad = sum(1 for r in results if not r["ok"]) - refused
    found = [f"{bad} damaged"] if bad else []
    found += [f"{refused} refused (pickled object arrays)"] if refused else []
    lines.append(f"{_plural(len(results), 'file')} checked, " + (", ".join(found) if found else "all intact"))
    return "\n".join(lines)


def render_diff(a: str, b: str, only_a: list[str], only_b: list[str], changed: list[dict[str, Any]],
                compared: list[dict[str, Any]], *, show_all: bool) -> str:
    out = [f"A: {a}", f"B: {b}"]
    for label, names in (("only in A", only_a), ("only in B", only_b)):
        if names:
            out += ["", f"{label} ({len(names)}):", *(f"  {n}" for n in names)]
    if changed:
        out += ["", f"shape or dtype changed ({len(changed)}):",
                table(["name", "A", "B"], [[c["name"], f"{_shape(c['a']['shape'])} {c['a']['dtype']}",
                                            f"{_shape(c['b']['shape'])} {c['b']['dtype']}"] for c in changed],
                      indent="  ")]
    same = sum(1 for c in compared if c["equal"])
    shown = compared if show_all else [c for c in compared if not c["equal"]]
    if shown:
        rows = []
        for c in shown:
            differing = format_number(c["differing"])
            if c["nan_mismatches"]:
                differing += f" ({c['nan_mismatches']} NaN)"
            rows.append([c["name"], format_number(c["max_abs"]), format_number(c["rel"]), differing,
                         math.prod(c["shape"])])
        out += ["", f"values ({len(compared) - same} of {len(compared)} compared arrays differ; "
                    "rel = max_abs / max(|A|, |B|)):",
                table(["name", "max_abs", "rel", "differing", "of"], rows, right=[1, 2, 3, 4], indent="  ")]
    if same and not show_all:
        out += ["", f"{_plural(same, 'array')} identical"]
    if not (only_a or only_b or changed or same < len(compared)):
        out += ["", "no differences"]
    return "\n".join(out)


def render_prune(rows: list[dict[str, Any]], *, dry_run: bool) -> str:
    verb = "would delete" if dry_run else "deleted"
    def action(r: dict[str, Any]) -> str:
        if r.get("damaged"):
            return "skip"
        return "keep" if r["kept"] else ("delete" if dry_run else "deleted")

    lines = table(["step", "size", "action", "kept by"],
                  [[r["step"], human_size(r["size"]), action(r), ", ".join(r["kept_by"]) or "-"] for r in rows],
                  right=[0, 1])
    gone = [r for r in rows if not r["kept"]]
    damaged = [r for r in rows if r.get("damaged")]
    good = len(rows) - len(damaged)
    freed = sum(r["size"] or 0 for r in gone)
    summary = (f"{verb} {_plural(len(gone), 'checkpoint')} ({human_size(freed)}), kept {good - len(gone)}"
               if gone else ("nothing to delete: no intact checkpoint" if good == 0 else
                     "nothing to delete: the checkpoint is kept" if good == 1 else
                     f"nothing to delete: all {good} checkpoints are kept"))
    if damaged:
        summary += (f"; skipped {_plural(len(damaged), 'damaged file')} (not counted, not deleted: "
                    f"steps {', '.join(str(r['step']) for r in damaged)})")
    return lines + "\n" + summary + (" (dry run: nothing was deleted)" if dry_run and gone else "")


def render_sources(sources: list[dict[str, Any]]) -> str:
    """The ``averaged_from`` record of an averaged checkpoint."""
    return table(["step", "weight", "file"], [["-" if s.get("idx") is None else s["idx"],
                                                format_number(s.get("weight")), s.get("file")] for s in sources],
                 right=[0, 1], indent="  ")


# -- the recipe section of ``ckpt info`` ------------------------------------------
def _value(v: Any) -> str:
    if isinstance(v, Recipe):
        args = [_value(a) for a in v.args] + [f"{k}={_value(x)}" for k, x in v.kwargs.items()]
        return f"{v.name}({', '.join(args)})"
    if isinstance(v, tuple):
        return "(" + ", ".join(_value(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k!r}: {_value(x)}" for k, x in v.items()) + "}"
    if hasattr(v, "kind") and hasattr(v, "itemsize"):  # a dtype
        return str(v)
    return repr(v)


def render_recipe(doc: Optional[dict[str, Any]], error: Optional[str] = None) -> str:
    """The recipe section of ``ckpt info``."""
    if error is not None:
        return f"recipe:   invalid ({error})"
    if doc is None:
        return "recipe:   (none: saved without recipe=)"
    try:
        r = Recipe.from_dict(doc)
    except FormatError as e:  # pragma: no cover - recipe_record validated it
        return f"recipe:   invalid ({e})"
    args = ", ".join([_value(a) for a in r.args] + [f"{k}={_value(v)}" for k, v in r.kwargs.items()])
    lines = [f"recipe:   {r.cls}({args})", f"  hash:   {r.hash}", f"  id:     {r.id or '-'}",
             f"  parent: {r.parent or '-'}", f"  mro:    {' < '.join(r.mro) or '-'}",
             "  (ckpt.build(FILE, trusted=[...]) rebuilds it; nothing was imported to show this)"]
    return "\n".join(lines)


def render_sharded(sh: dict[str, Any]) -> str:
    """The one line ``ckpt info`` adds for a multi-process checkpoint (its arrays are in shard files)."""
    arrays = ", ".join(f"{a['name']} {a['shape']} {a['dtype']}" for a in sh["arrays"].get("main", [])[:10])
    return (f"\nmulti-process checkpoint: {sh['process_count']} processes, {len(sh['shards'])} shard files, "
            f"{human_size(sum(s['size'] for s in sh['shards']))}; arrays: {arrays}")
