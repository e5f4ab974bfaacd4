"""``ckpt.find``: search a tree of runs by what its checkpoints are, reading manifests only.

Every ``*.npz`` under the root is a candidate; a checkpoint's light
:class:`Entry` (path, run, index, recipe, metrics, times, hashes, aliases) comes
from its manifest alone, read through the ordinary pack reader (its limits
apply; arrays are never read, nothing is imported or unpickled).

The index cache, ``<root>/.ckpt-index.json``, remembers each file's entry keyed
by its relative name, size, mtime and inode. A file whose key changed (or that
is new) is read again; entries of files that are gone are dropped. The cache
is only ever a shortcut: it is safe to delete, a malformed one is ignored and
rebuilt, and it is never believed over the files' own keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from . import _recipe_json as _rj, aliases as _aliases
from .errors import CkptError, FormatError, SelectorError
from .recipes import Recipe
from .selector import Match, Selector
from .storage import Storage, is_url, kind_of, open_file, open_storage, split_location

log = logging.getLogger("ckpt")

__all__ = ["Entry", "find", "index", "INDEX_NAME"]

INDEX_NAME = ".ckpt-index.json"
FORMAT_NAME = "ckpt.index"
VERSION = 2  # 2: entries record the main slot's "digest" and "algorithm" (1 had "sha256")
MAX_INDEX_BYTES = 1 << 30
_STEP = re.compile(r"^(\d+)\.npz$")
_FIELD_ORDER = ("idx", "created_at", "size", "path", "run")


@dataclass(frozen=True)
class Entry:
    """One checkpoint found by :func:`find`, described from its manifest only."""

    path: str
    run: str
    idx: Optional[int]
    recipe: Optional[Recipe]
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: Optional[str] = None
    digest: Optional[str] = None  #: the main slot's digest (see ``algorithm``): the checkpoint's identity
    size: int = 0
    aliases: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    algorithm: str = "sha256"  #: what ``digest`` is: ``"blake3"`` or ``"sha256"``

    @property
    def sha256(self) -> Optional[str]:
        """The main slot's digest when it is a sha256 (as :attr:`ckpt.manifest.SlotInfo.sha256`)."""
        return self.digest if self.algorithm == "sha256" else None

    @property
    def id(self) -> Optional[str]:
        """The recipe's per-instance id (None without a recipe)."""
        return None if self.recipe is None else self.recipe.id

    @property
    def hash(self) -> Optional[str]:
        """The recipe's definition hash (None without a recipe)."""
        return None if self.recipe is None else self.recipe.hash

    @property
    def parent(self) -> Optional[str]:
        return None if self.recipe is None else self.recipe.parent

    @property
    def cls(self) -> Optional[str]:
        return None if self.recipe is None else self.recipe.cls

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "run": self.run, "idx": self.idx, "created_at": self.created_at,
                "digest": self.digest, "algorithm": self.algorithm, "size": self.size, "aliases": list(self.aliases), "metrics": self.metrics,
                "recipe": None if self.recipe is None else self.recipe.to_dict(), "metadata": self.metadata}


# -- reading one file -----------------------------------------------------------
def _record_of(path: str, storage_options: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The cacheable facts of one file, from its manifest; ``{"skip": why}`` for a file that is not a checkpoint."""
    from .varfile import open_reader

    with open_reader(path, storage_options=storage_options) as reader:
        if not reader.has_manifest:
            return {"skip": "no manifest (a plain .npz)", "plain": True}
        meta = reader.metadata
        main = reader.slots.get("main")
        created_at = reader.created_at
    found = meta.get("ckpt")
    own: dict[str, Any] = found if isinstance(found, dict) else {}
    metrics = own.get("metrics") if isinstance(own.get("metrics"), dict) else {}
    recipe = None
    if own.get("recipe") is not None:
        try:
            recipe = Recipe.from_dict(own["recipe"], f"{path}: recipe").to_dict()
        except FormatError as e:
            log.warning("%s; the checkpoint is listed without a recipe", e)
    return {"created_at": created_at, "digest": main.digest if main is not None else None,
            "algorithm": main.algorithm if main is not None else None, "metrics": metrics,
            "recipe": recipe, "metadata": {k: v for k, v in meta.items() if k != "ckpt"}}


def _entry(path: str, run: str, idx: Optional[int], size: int, record: dict[str, Any],
           aliases: tuple[str, ...], recipe: Optional[Recipe]) -> Optional[Entry]:
    if "skip" in record:
        return None
    metrics = record.get("metrics")
    metadata = record.get("metadata")
    created = record.get("created_at")
    digest, algorithm = record.get("digest"), record.get("algorithm")
    return Entry(path, run, idx, recipe, dict(metrics) if isinstance(metrics, dict) else {},
                 created if isinstance(created, str) else None, digest if isinstance(digest, str) else None, size,
                 aliases, dict(metadata) if isinstance(metadata, dict) else {},
                 algorithm if algorithm in ("blake3", "sha256") else "sha256")


# -- walking --------------------------------------------------------------------
@dataclass
class _File:
    rel: str
    path: str
    directory: str
    key: tuple[int, int, int]
    run: str
    idx: Optional[int]


def _run_of(directory: str) -> str:
    """The run a checkpoint directory belongs to: ``<run>/ckpt`` -> ``<run>``, a bare directory itself."""
    return os.path.dirname(directory) if os.path.basename(directory) == "ckpt" else directory


def _file(rel: str, path: str, name: str, directory: str, run: str, st: os.stat_result) -> _File:
    m = _STEP.match(name)
    # Only the names Checkpoint writes (%010d.npz) carry an index, as Checkpoint.indices() counts them.
    idx = int(m.group(1)) if m and name == "%010d.npz" % int(m.group(1)) else None
    return _File(rel, path, directory, (st.st_size, st.st_mtime_ns, st.st_ino), run, idx)


def _walk(root: str) -> tuple[list[_File], dict[str, dict[int, list[str]]]]:
    """Candidate files under ``root`` (hidden names and symlinked directories skipped), and each directory's aliases."""
    files: list[_File] = []
    aliases: dict[str, dict[int, list[str]]] = {}
    prefix = root if root.endswith(os.sep) else root + os.sep
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                found = list(it)
        except (FileNotFoundError, NotADirectoryError, PermissionError) as e:
            log.warning("find: cannot list %s: %s", directory, e)
            continue
        run = _run_of(directory)
        for de in found:
            name = de.name
            if name.startswith("."):
                continue
            try:
                if de.is_dir(follow_symlinks=False):
                    stack.append(de.path)
                    continue
                if name == _aliases.ALIASES_NAME:
                    aliases[directory] = _aliases.by_index(directory)
                    continue
                if not name.endswith(".npz") or not de.is_file():
                    continue
                st = de.stat()
            except FileNotFoundError:
                continue  # removed (rotated away) while we looked
            files.append(_file(de.path[len(prefix):], de.path, name, directory, run, st))
    return files, aliases


def _walk_storage(root: str, storage_options: Optional[dict[str, Any]]
                  ) -> tuple[list[_File], dict[str, dict[int, list[str]]]]:
    """:func:`_walk` over a URL: the same files (hidden names skipped), through the storage layer."""
    store = open_storage(root, storage_options)
    files: list[_File] = []
    aliases: dict[str, dict[int, list[str]]] = {}
    stack = [""]
    while stack:
        prefix = stack.pop()
        directory = store.label(prefix)
        run = _run_of(directory)
        stack.extend(d for d in store.list_dirs(prefix) if not d.rsplit("/", 1)[-1].startswith("."))
        for info in store.list(prefix):
            name = info.key.rsplit("/", 1)[-1]
            if name.startswith("."):
                continue
            if name == _aliases.ALIASES_NAME:
                aliases[directory] = _aliases.by_index(store.child(prefix) if prefix else store)
            elif name.endswith(".npz"):
                files.append(_storage_file(store, info.key, name, directory, run, info.size, info.mtime_ns,
                                           info.token))
    return files, aliases


def _storage_file(store: Storage, key: str, name: str, directory: str, run: str, size: int, mtime_ns: int,
                  token: str) -> _File:
    m = _STEP.match(name)
    idx = int(m.group(1)) if m and name == "%010d.npz" % int(m.group(1)) else None
    tag = int(hashlib.sha256(token.encode()).hexdigest()[:12], 16)  # the cache keeps three integers
    return _File(key, store.label(key), directory, (size, mtime_ns, tag), run, idx)


Table = dict[str, tuple[tuple[int, int, int], dict[str, Any]]]


def _load_cache(path: str, storage_options: Optional[dict[str, Any]] = None) -> tuple[Table, dict[str, Any]]:
    """(relative name -> (key, record), recipe table); both empty for a missing or malformed cache."""
    try:
        store, key = open_file(path, storage_options)
        with store.open_read(key) as f:
            data = f.read(MAX_INDEX_BYTES + 1)
    except FileNotFoundError:
        return {}, {}
    except OSError as e:
        log.info("find: cannot read the index %s (%s); rebuilding it", path, e)
        return {}, {}
    try:
        if len(data) > MAX_INDEX_BYTES:
            raise ValueError("over the size limit")
        doc = json.loads(data.decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME or doc.get("version") != VERSION:
            raise ValueError("not a ckpt index of this version")
        entries, recipes = doc["entries"], doc.get("recipes", {})
        if not isinstance(entries, dict) or not isinstance(recipes, dict):
            raise ValueError("entries or recipes is not an object")
    except (ValueError, KeyError, UnicodeDecodeError, RecursionError) as e:
        log.warning("find: ignoring the index %s (%s); rebuilding it from the manifests", path, e)
        return {}, {}
    valid = {}
    for key, doc in recipes.items():  # a malformed recipe makes its files be read again
        try:
            Recipe.from_dict(doc, path, check=False)
        except FormatError:
            continue
        valid[key] = doc
    recipes = valid
    out = {}
    for rel, value in entries.items():
        if (isinstance(value, list) and len(value) == 4 and all(type(v) is int for v in value[:3])
                and isinstance(value[3], dict)):
            ref = value[3].get("recipe")
            if ref is None or (type(ref) is str and isinstance(recipes.get(ref), dict)):
                out[rel] = ((value[0], value[1], value[2]), value[3])
    return out, recipes


def _save_cache(path: str, table: Table, recipes: dict[str, Any],
                storage_options: Optional[dict[str, Any]] = None) -> None:
    used = {r["recipe"] for _, r in table.values() if r.get("recipe") is not None}
    doc = {"format": FORMAT_NAME, "version": VERSION, "recipes": {k: recipes[k] for k in sorted(used)},
           "entries": {rel: [*key, record] for rel, (key, record) in sorted(table.items())}}
    try:
        data = json.dumps(doc, separators=(",", ":"), allow_nan=True).encode("utf-8")
        store, key = open_file(path, storage_options)
        store.cleanup("", INDEX_NAME.__eq__)
        store.commit(key, lambda f: f.write(data))
    except (OSError, TypeError, ValueError) as e:  # a read-only tree is searched without a cache
        log.info("find: cannot write the index %s: %s", path, e)


def index(root: Union[str, "os.PathLike[str]"], *, cache: bool = True,
          skipped: Optional[list[tuple[str, str]]] = None,
          storage_options: Optional[dict[str, Any]] = None) -> list[Entry]:
    """Every checkpoint under ``root`` (a tree of runs, a log directory or one file; a path or an fsspec URL),
    in (run, idx, path) order.

    Damaged files are left out (logged); with ``skipped``, ``(path, why)`` of each is appended to it.
    """
    if is_url(root):
        url = str(root).rstrip("/")
        kind = kind_of(url, storage_options)
        if kind is None:
            raise FileNotFoundError(2, "No such file or directory", url)
        if kind == "file":
            directory, name = split_location(url)
            store, key = open_file(url, storage_options)
            info = store.stat(key)
            if info is None:
                raise FileNotFoundError(2, "No such file or directory", url)
            files = [_storage_file(store, key, name, directory, _run_of(directory), info.size, info.mtime_ns,
                                   info.token)]
            return _index_files(url, files, {directory: _aliases.by_index(store)}, False, skipped,
                                storage_options)
        files, aliases = _walk_storage(url, storage_options)
        return _index_files(url, files, aliases, cache, skipped, storage_options)
    root = os.path.abspath(os.fspath(root))
    if os.path.isfile(root):
        directory, name = os.path.split(root)
        aliases = {directory: _aliases.by_index(directory)}
        files = [_file(name, root, name, directory, _run_of(directory), os.stat(root))]
        cache = False
    elif os.path.isdir(root):
        files, aliases = _walk(root)
    else:
        raise FileNotFoundError(2, "No such file or directory", root)
    return _index_files(root, files, aliases, cache, skipped, None)


def _index_files(root: str, files: list[_File], aliases: dict[str, dict[int, list[str]]], cache: bool,
                 skipped: Optional[list[tuple[str, str]]], storage_options: Optional[dict[str, Any]]) -> list[Entry]:
    """Entries of ``files`` (manifests read where the index cache at ``root`` is stale)."""
    cache_path = f"{root}/{INDEX_NAME}" if is_url(root) else os.path.join(root, INDEX_NAME)
    table, recipes = _load_cache(cache_path, storage_options) if cache else ({}, {})
    fresh: Table = {}
    built: dict[str, Optional[Recipe]] = {}  # one Recipe per distinct record: a run's checkpoints share it
    changed = False
    out = []
    for f in files:
        cached = table.get(f.rel)
        if cached is not None and cached[0] == f.key:
            record = cached[1]
        else:
            changed = True
            try:
                record = _record_of(f.path) if storage_options is None else _record_of(f.path, storage_options)
            except FileNotFoundError:
                continue
            except (CkptError, OSError, ValueError) as e:
                log.warning("find: skipping %s: %s", f.path, e)
                record = {"skip": str(e)}
            if isinstance(record.get("recipe"), dict):  # stored once in the cache's recipe table
                key = _rj.digest(record["recipe"])
                recipes[key] = record["recipe"]
                record = {**record, "recipe": key}
        fresh[f.rel] = (f.key, record)
        if skipped is not None and "skip" in record and not record.get("plain"):
            skipped.append((f.path, str(record["skip"])))
        ref = record.get("recipe")
        if ref is not None and ref not in built:
            try:
                built[ref] = Recipe.from_dict(recipes[ref], f.path, check=False)
            except FormatError as e:
                log.warning("%s; listed without a recipe", e)
                built[ref] = None
        entry = _entry(f.path, f.run, f.idx, f.key[0], record,
                       tuple(aliases.get(f.directory, {}).get(f.idx, ())) if f.idx is not None else (),
                       None if ref is None else built[ref])
        if entry is not None:
            out.append(entry)
    if cache and (changed or len(fresh) != len(table)):
        _save_cache(cache_path, fresh, recipes, storage_options)
    out.sort(key=lambda e: (e.run, -1 if e.idx is None else e.idx, e.path))
    return out


# -- find -------------------------------------------------------------------------
def _sort_value(entry: Entry, name: str) -> Optional[Any]:
    if name in _FIELD_ORDER:
        value = getattr(entry, name)
        return value
    value = entry.metrics.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return value


def _ordered(entries: list[Entry], order_by: str) -> list[Entry]:
    if type(order_by) is not str or not order_by.lstrip("-"):
        raise SelectorError(f"order_by must be a metric or field name (prefix '-' for descending), not {order_by!r}")
    descending = order_by.startswith("-")
    name = order_by[1:] if descending else order_by
    have = [(v, e) for e in entries if (v := _sort_value(e, name)) is not None]
    missing = [e for e in entries if _sort_value(e, name) is None]
    try:
        have.sort(key=lambda ve: ve[0], reverse=descending)  # stable: ties keep (run, idx) order
    except TypeError:
        raise SelectorError(f"order_by {name!r}: the values are not comparable (mixed types)") from None
    return [e for _, e in have] + missing


def find(root: Union[str, "os.PathLike[str]"], selector: Union[Match, Callable[[Entry], Any], str, None] = None, *,
         order_by: Optional[str] = None, limit: Optional[int] = None, alias: Optional[str] = None,
         cache: bool = True, skipped: Optional[list[tuple[str, str]]] = None,
         storage_options: Optional[dict[str, Any]] = None) -> list[Entry]:
    """The checkpoints under ``root`` (a path or fsspec URL) that ``selector`` (and ``alias``) match, as light :class:`Entry` records.

    ``root`` is a tree of runs, one log directory or one checkpoint file. ``selector`` is a
    :class:`~ckpt.Selector`, a callable taking an :class:`Entry`, a dict of Selector arguments,
    or a ``where`` string (``"loss < 0.1"``).
    ``order_by`` is a metric (or ``idx``, ``created_at``, ``size``, ``path``,
    ``run``), ascending, ``-name`` descending; NaN and missing values come last
    either way. ``limit`` keeps the first N. Reads manifests only (through the
    index cache, see the module docs); never imports model code or unpickles. Damaged files
    are left out and logged; pass a list as ``skipped`` to receive their ``(path, why)``.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise SelectorError(f"limit must be an integer >= 0 or None, not {limit!r}")
    match: Optional[Callable[[Entry], Any]]
    if selector is None or isinstance(selector, Match):
        match = selector
    elif isinstance(selector, dict):
        match = Selector(**selector)
    elif isinstance(selector, str):
        match = Selector(where=selector)
    elif callable(selector):
        match = selector
    else:
        raise SelectorError(f"selector must be a ckpt.Selector or a callable taking an Entry, not "
                            f"{type(selector).__name__}")
    if alias is not None:
        _aliases.check_name(alias)
    out = []
    for e in index(root, cache=cache, skipped=skipped, storage_options=storage_options):
        if alias is not None and alias not in e.aliases:
            continue
        if match is None or match(e):
            out.append(e)
    if order_by is not None:
        out = _ordered(out, order_by)
    return out if limit is None else out[:limit]

