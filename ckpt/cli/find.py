"""``ckpt find``: :func:`ckpt.find` printed as a table or JSON.

Like every search, it reads manifests only: nothing is imported from the recorded classes and
nothing is unpickled.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional

from ..errors import SelectorError
from ..index import find
from ..listing import display_location, display_root
from ..selector import Selector
from ._args import Add
from ._format import dump_json, format_number, format_time, say, table


def _kw_pair(text: str) -> tuple[str, Any]:
    """``key=value`` (value as JSON when it parses, else the string); ``a.b=1`` is the nested ``{"a": {"b": 1}}``."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. hidden=64 or encoder.depth=4), not {text!r}")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def _nest(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        *parents, last = key.split(".")
        node = out
        for p in parents:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise SelectorError(f"--kw {key}: {p} is given both a value and nested keys")
            node = child
        node[last] = value
    return out


def run(args: argparse.Namespace) -> int:
    selector = Selector(cls=args.cls or None, kwargs=_nest(args.kw) if args.kw else None, where=args.where or None)
    order_by = args.order_by
    if order_by is not None and args.desc and not order_by.startswith("-"):
        order_by = "-" + order_by
    if args.limit is not None and args.limit < 0:
        raise SelectorError(f"--limit must be >= 0, not {args.limit}")
    skipped: list[tuple[str, str]] = []
    entries = find(args.root, selector, order_by=order_by, limit=args.limit, alias=args.alias, skipped=skipped)
    root = display_root(args.root)
    for path, why in skipped:  # damaged files: searched around, reported like `ckpt ls` reports them
        say(f"ckpt find: error: {why if why.startswith(path) else f'{path}: {why}'}", file=sys.stderr)
    status = 1 if skipped else 0
    if args.json:
        dump_json({"root": root, "count": len(entries), "checkpoints": [e.to_dict() for e in entries],
                   "skipped": [{"path": p, "error": why} for p, why in skipped]})
        return status
    if not entries:
        say(f"no checkpoint under {args.root} matches")
        return status
    names = list(dict.fromkeys(k for e in entries for k in e.metrics))
    order = (args.order_by or "").lstrip("-")
    if order in names:
        names = [order] + [n for n in names if n != order]
    rows = []
    for e in entries:
        where = display_location(e.path, root)
        rows.append([where, "-" if e.idx is None else e.idx, "-" if e.recipe is None else e.recipe.name,
                     "-" if e.recipe is None else e.recipe.hash[:12], format_time(e.created_at),
                     *(format_number(e.metrics.get(n)) for n in names), ", ".join(e.aliases)])
    say(table(["checkpoint", "step", "class", "recipe", "created (UTC)", *names, "aliases"], rows,
                right=[1, *range(5, 5 + len(names))]))
    return status


def register(add: Add) -> None:
    p = add("find", run, "find checkpoints under a tree of runs by class, arguments and metrics",
            "Search every checkpoint under ROOT (a tree of runs, a log directory or one file) by what it\n"
            "records: the class that built the model (--cls matches subclasses too, through the recorded\n"
            "MRO), its constructor arguments (--kw, a subset match), metrics and fields (--where, e.g.\n"
            "'loss < 0.1 and (lr == 1e-3 or not depth in [2, 4])'), and aliases. Reads manifests only,\n"
            "through the index cache ROOT/.ckpt-index.json (safe to delete); imports and unpickles nothing.\n"
            "Library: ckpt.find(ROOT, ckpt.Selector(...), order_by=..., limit=...).",
            """\
            ckpt find runs --cls MLP --kw hidden=64 --order-by val_loss --limit 5
            ckpt find runs --where 'val_loss < 0.3 and not optimizer == "sgd"'
            ckpt find runs --kw shape=[20,20] --json | jq '.checkpoints[].path'
            ckpt find runs/exp1 --alias best""")
    p.add_argument("root", metavar="ROOT", help="directory tree of runs, a log directory, or a checkpoint file")
    p.add_argument("--cls", metavar="NAME", action="append",
                   help="class name (MLP) or full path (mypkg.models.MLP); subclasses match; repeat for any of several")
    p.add_argument("--kw", metavar="KEY=VALUE", action="append", type=_kw_pair, default=[],
                   help="constructor argument to match (VALUE as JSON when it parses, else a string; "
                        "a.b=1 matches a nested argument); repeat for more")
    p.add_argument("--where", metavar="EXPR", action="append",
                   help="condition on metrics, arguments and fields (idx, run, cls, hash, ...): comparisons, "
                        "in, and/or/not; repeat to require all")
    p.add_argument("--order-by", metavar="METRIC", help="sort by a metric or field (idx, created_at, size), ascending; "
                   "NaN and missing values last")
    p.add_argument("--desc", action="store_true", help="sort --order-by descending (also: --order-by=-METRIC)")
    p.add_argument("--limit", metavar="N", type=int, help="show at most N checkpoints")
    p.add_argument("--alias", metavar="A", help="only the checkpoints the alias A points at (one per run)")
    p.add_argument("--json", action="store_true", help="print standard JSON instead of a table")
    p.set_defaults(check=_find_check)


def _find_check(args: argparse.Namespace) -> Optional[str]:
    if args.desc and args.order_by is None:
        return "--desc needs --order-by"
    return None
