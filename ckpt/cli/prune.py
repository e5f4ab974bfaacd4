"""``ckpt prune``: :func:`ckpt.prune_run` printed with the policies keeping each checkpoint."""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from ..listing import prune_run
from ._args import Add, add_json, positive_int, size_arg
from ._format import dump_json, render_prune, say


def _short_list(items: list[int]) -> str:
    return ", ".join(map(str, items[:10])) + (f" and {len(items) - 10} more" if len(items) > 10 else "")


def run(args: argparse.Namespace) -> int:
    report = prune_run(args.logdir, keep=args.keep, keep_every=args.keep_every, keep_best=args.keep_best,
                       metric=args.metric, mode=args.mode, max_bytes=args.max_bytes, dry_run=args.dry_run)
    if not report.rows and not args.json:
        say(f"no checkpoints in {args.logdir} (looked in {report.directory}); nothing to prune")
        return 0
    if report.missing_metric:
        say(f"ckpt prune: warning: checkpoints {_short_list(report.missing_metric)} do not record the metric "
            f"{args.metric!r}; --keep-best cannot rank them", file=sys.stderr)
    for row in report.skipped:
        say(f"ckpt prune: warning: skipped damaged {row.location} ({row.damaged}): neither counted nor deleted",
            file=sys.stderr)
    if args.json:
        dump_json(report.to_dict())
    else:
        say(render_prune([r.to_dict() for r in report.rows], dry_run=args.dry_run))
    return 0


def _check(args: argparse.Namespace) -> Optional[str]:
    if all(v is None for v in (args.keep, args.keep_every, args.keep_best, args.max_bytes)):
        return "give at least one policy: --keep, --keep-every, --keep-best or --max-bytes"
    if args.keep_best is not None and not args.metric:
        return "--keep-best needs --metric NAME"
    return None


def register(add: Add) -> None:
    p = add("prune", run, "delete checkpoints a retention policy does not keep",
            "Apply a retention policy to LOGDIR once, as Checkpoint(...).prune() does, and delete the\n"
            "checkpoints it does not keep. Policies combine: a checkpoint stays if ANY given policy\n"
            "keeps it, and the newest one that verifies always stays. Damaged files (truncated, junk\n"
            "named like a step) are skipped: never counted, never deleted, listed as 'skip'. A --metric\n"
            "that no checkpoint records is an error and deletes nothing. Prints each checkpoint with the\n"
            "policies keeping it. With --dry-run nothing is deleted.\n"
            "Library: ckpt.prune_run(LOGDIR, keep=..., dry_run=...), or Checkpoint.plan_prune().",
            """\
            ckpt prune runs/exp1 --keep 3 --dry-run
            ckpt prune runs/exp1 --keep 3 --keep-every 10000 --keep-best 2 --metric val_loss --mode min
            ckpt prune runs/exp1 --max-bytes 20G --json""")
    p.add_argument("logdir", metavar="LOGDIR", help="log directory to prune")
    p.add_argument("--keep", metavar="N", type=positive_int, help="keep the N newest checkpoints")
    p.add_argument("--keep-every", metavar="N", type=positive_int,
                   help="keep every checkpoint whose step is a multiple of N")
    p.add_argument("--keep-best", metavar="K", type=positive_int,
                   help="keep the K best checkpoints by --metric (NaN, infinite or missing values never count)")
    p.add_argument("--metric", metavar="NAME",
                   help="metric for --keep-best, as given to Checkpoint.save(metrics={...}) or stored in an "
                        "extras slot named 'metrics'")
    p.add_argument("--mode", choices=("min", "max"), default="min",
                   help="whether the best have the smallest or the largest --metric (default: min)")
    p.add_argument("--max-bytes", metavar="SIZE", type=size_arg,
                   help="keep the newest checkpoints whose sizes add up to at most SIZE (e.g. 500M, 2GiB, 1.5GB; "
                        "K/M/G and KiB/MiB/GiB are powers of 1024, KB/MB/GB of 1000)")
    p.add_argument("-n", "--dry-run", action="store_true", help="print what would be deleted; delete nothing")
    p.set_defaults(check=_check)
    add_json(p)
