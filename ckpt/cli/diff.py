"""``ckpt diff``: :func:`ckpt.diff` printed as sections or JSON."""

from __future__ import annotations

import argparse

from .. import DEFAULT_SLOT
from ..compare import diff
from ._args import Add, add_json
from ._format import dump_json, progress, render_diff, say


def run(args: argparse.Namespace) -> int:
    with progress(None, "comparing", unit="array") as bar:
        result = diff(args.a, args.b, slot=args.slot, progress=bar.update)
    if args.json:
        dump_json(result.to_dict())
    else:
        say(render_diff(result.a, result.b, result.only_in_a, result.only_in_b, result.changed, result.arrays,
                        show_all=args.all))
    return 1 if (args.exit_code and not result.identical) else 0


def register(add: Add) -> None:
    p = add("diff", run, "compare the arrays of two checkpoint files",
            "Compare the arrays of A and B: names only in A, names only in B, arrays whose shape or\n"
            "dtype changed, and for the others the largest absolute difference (max_abs), that divided\n"
            "by the largest magnitude in either array (rel), and how many elements differ. NaN equals\n"
            "NaN. Arrays are read (and verified) one at a time. Library: ckpt.diff(A, B).",
            """\
            ckpt diff runs/exp1/ckpt/0000001000.npz runs/exp1/ckpt/0000002000.npz
            ckpt diff a.npz b.npz --json | jq '.arrays[] | select(.rel > 1e-3) | .name'""")
    p.add_argument("a", metavar="A", help="first checkpoint file")
    p.add_argument("b", metavar="B", help="second checkpoint file")
    p.add_argument("--slot", default=DEFAULT_SLOT, help=f"arrays slot to compare (default: {DEFAULT_SLOT})")
    p.add_argument("--all", action="store_true", help="list identical arrays too")
    p.add_argument("--exit-code", action="store_true",
                   help="exit with status 1 when the files differ (like git diff --exit-code)")
    add_json(p)
