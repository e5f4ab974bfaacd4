"""``ckpt ls``: :func:`ckpt.list_checkpoints` printed as a table or JSON."""

from __future__ import annotations

import argparse
import sys

from ..listing import list_checkpoints
from ._args import Add, add_json
from ._format import dump_json, progress, render_ls, say


def run(args: argparse.Namespace) -> int:
    with progress(None if not args.verify else 0, "verifying") as bar:
        listing = list_checkpoints(args.logdir, verify=args.verify, metric=args.metric, mode=args.mode,
                                   progress=bar.update if args.verify else None)
    for rec in listing.damaged:
        say(f"ckpt ls: error: {rec.problem}", file=sys.stderr)
    status = 1 if listing.damaged else 0
    if args.json:
        dump_json(listing.to_dict())
        return status
    if not listing.records:
        say(f"no checkpoints in {args.logdir} (looked in {listing.directory})")
        return status
    say(render_ls([r.to_dict() for r in listing.records], metric=args.metric, local=args.local))
    if args.metric and listing.best is None:
        say(f"(no checkpoint records metric {args.metric!r})")
    return status


def register(add: Add) -> None:
    p = add("ls", run, "list the checkpoints of a log directory",
            "List the checkpoints in LOGDIR, one line each: step, last write time, size, the metrics\n"
            "recorded with it, whether it was verified, and marks for the newest, (with --metric)\n"
            "the best, and its aliases (alias:NAME, set with Checkpoint.alias). A damaged file is listed\n"
            "as BAD and makes the exit status 1. Metrics are those of save(metrics=...), else of an\n"
            "extras slot named 'metrics' (the rule Checkpoint.best() and --keep-best use).\n"
            "Library: ckpt.list_checkpoints(LOGDIR, verify=..., metric=..., mode=...).",
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
    add_json(p)
