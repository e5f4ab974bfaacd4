"""``ckpt verify``: :func:`ckpt.verify` printed one line per file, or as JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional

from ..integrity import verify
from ._args import Add, add_json
from ._format import ProgressBar, dump_json, progress, render_verify, say, short_name


def _on_file(bar: ProgressBar) -> Callable[[str, Optional[int]], None]:
    def on_file(location: str, size: Optional[int]) -> None:
        bar.add_total(size)
        bar.set_description(f"verifying {short_name(location)}")
    return on_file


def run(args: argparse.Namespace) -> int:
    with progress(0, "verifying") as bar:
        report = verify(args.path, progress=bar.update, on_file=_on_file(bar))
    if not report.files:  # `ckpt verify WRONG_DIR && echo intact` must not pass
        if args.json:
            dump_json(report.to_dict())
        else:
            say(f"ckpt verify: no checkpoints in {args.path} (nor in {args.path.rstrip('/')}/ckpt): nothing "
                "was verified", file=sys.stderr)
        return 1
    doc = report.to_dict()
    if args.json:
        dump_json(doc)
    else:
        say(render_verify(doc["files"]))
    return 0 if report.ok else 1


def register(add: Add) -> None:
    p = add("verify", run, "check every hash and structure of a file or a log directory",
            "Check every member of FILE (or of every checkpoint in LOGDIR) against its digest (zip CRCs\n"
            "for files without a manifest), and that every array header, JSON slot and pickle opcode\n"
            "stream is well formed. Prints one line per file; a damaged file's line names the problem\n"
            "(an npz with object arrays is REFUSED: numpy pickled them). Exit status 0 only if every\n"
            "file is intact, and 1 for a directory without checkpoints (nothing verified).\n"
            "Library: ckpt.verify(FILE_OR_DIR).ok.",
            """\
            ckpt verify runs/exp1/ckpt/0000001000.npz
            ckpt verify runs/exp1 && echo all intact""")
    p.add_argument("path", metavar="FILE|LOGDIR", help="a checkpoint file, or a directory whose checkpoints are all "
                   "checked")
    add_json(p)
