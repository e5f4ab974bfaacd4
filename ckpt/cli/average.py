"""``ckpt average``: :func:`ckpt.average_into` and the sources it combined."""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from .. import DEFAULT_SLOT
from ..averaged import average_into
from ._args import Add, decay, float_list, int_list, positive_int
from ._format import human_size, one_line, render_sources, say


def run(args: argparse.Namespace) -> int:
    done = average_into(args.sources, args.out, last=args.last, indices=args.indices, weights=args.weights,
                        decay=args.ema, slot=args.slot, force=args.force)
    for warning in done.warnings:
        say(f"ckpt average: warning: {one_line(warning)}", file=sys.stderr)
    how = f"EMA (decay {args.ema:g})" if args.ema is not None else "mean"
    n = len(done.sources)
    say(f"wrote {args.out}: {how} of {n} checkpoint{'s' if n != 1 else ''}, "
        f"{done.arrays} arrays, {human_size(done.nbytes)} of data")
    say(render_sources(done.sources))
    return 0


def _check(args: argparse.Namespace) -> Optional[str]:
    if args.weights is not None and args.ema is not None:
        return "--weights applies to the plain mean; --ema sets its own weights"
    return None


def register(add: Add) -> None:
    p = add("average", run, "average (or EMA) the weights of several checkpoints into a new file",
            "Average the arrays of several checkpoints (the last K of LOGDIR, the given steps, or the\n"
            "listed files) or take their exponential moving average with --ema, and write the result\n"
            "to OUT as a checkpoint file whose manifest records the files, steps, digests and weights\n"
            "it came from. Floating-point arrays are accumulated in float64 and cast back; integer and\n"
            "boolean arrays (step counters, masks) are taken from the newest checkpoint. Without --last\n"
            "or --indices, every checkpoint of LOGDIR is averaged.\n"
            "Library: ckpt.average_into(SOURCES, OUT, last=..., decay=...), or ckpt.average / ckpt.ema.",
            """\
            ckpt average runs/exp1 --last 5 -o averaged.npz
            ckpt average runs/exp1 --indices 8000,9000,10000 --weights 1,2,3 -o averaged.npz
            ckpt average runs/exp1 --last 10 --ema 0.9 -o ema.npz
            ckpt average a.npz b.npz c.npz -o abc.npz""")
    p.add_argument("sources", metavar="LOGDIR|FILE", nargs="+",
                   help="one log directory, or checkpoint files oldest first")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--last", metavar="K", type=positive_int, help="average the K newest checkpoints")
    which.add_argument("--indices", metavar="STEPS", type=int_list,
                       help="comma-separated steps of LOGDIR to average, e.g. 1000,2000,3000")
    p.add_argument("--ema", metavar="DECAY", type=decay,
                   help="exponential moving average, oldest to newest: e = DECAY*e + (1-DECAY)*x, no bias "
                        "correction (0 <= DECAY <= 1), instead of the mean")
    p.add_argument("--weights", metavar="W1,W2,...", type=float_list,
                   help="weights of a weighted mean, one per checkpoint (ascending step order; the order given "
                        "for --indices and for files)")
    p.add_argument("--slot", default=DEFAULT_SLOT, help=f"arrays slot to average (default: {DEFAULT_SLOT})")
    p.add_argument("-o", "--output", dest="out", metavar="OUT", required=True, help="checkpoint file to write")
    p.add_argument("-f", "--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(check=_check)
