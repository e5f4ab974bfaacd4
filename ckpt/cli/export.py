"""``ckpt export``: :func:`ckpt.export` and one line saying what was written."""

from __future__ import annotations

import argparse
import sys

from .. import DEFAULT_SLOT
from ..convert import EXPORT_FORMATS, export
from ._args import Add
from ._format import human_size, progress, say, short_name


def run(args: argparse.Namespace) -> int:
    with progress(None, f"exporting {short_name(args.file)}") as bar:
        done = export(args.file, args.out, to=args.to, slot=args.slot, force=args.force, progress=bar.update)
    for note in done.notes:
        say(f"ckpt export: note: {note}", file=sys.stderr)
    say(f"wrote {args.out}: {done.arrays} arrays, {human_size(done.size)} ({done.format})")
    return 0


def register(add: Add) -> None:
    p = add("export", run, "write a checkpoint's arrays as safetensors or a plain .npz",
            "Write the arrays of FILE (its main slot) to OUT as a safetensors file or as a plain numpy\n"
            ".npz whose members carry the arrays' real names (numpy.load(OUT)['dense/w']). bfloat16 and\n"
            "other ml_dtypes arrays keep their dtype in safetensors; a plain .npz stores them as raw bytes.\n"
            "Library: ckpt.export(FILE, OUT, to=...).",
            """\
            ckpt export runs/exp1/ckpt/0000001000.npz --to safetensors model.safetensors
            ckpt export model.npz --to npz plain.npz""")
    p.add_argument("file", metavar="FILE", help="checkpoint file to export")
    p.add_argument("out", metavar="OUT", help="file to write")
    p.add_argument("--to", choices=EXPORT_FORMATS,
                   help="output format (default: from OUT's extension, .safetensors or .npz)")
    p.add_argument("--slot", default=DEFAULT_SLOT, help=f"arrays slot to export (default: {DEFAULT_SLOT})")
    p.add_argument("-f", "--force", action="store_true", help="overwrite OUT if it exists")
