"""``ckpt import``: :func:`ckpt.import_file` and one line saying what was written."""

from __future__ import annotations

import argparse

from .. import DEFAULT_SLOT
from ..convert import IMPORT_FORMATS, import_file
from ._args import Add
from ._format import human_size, progress, say, short_name


def run(args: argparse.Namespace) -> int:
    with progress(None, f"reading {short_name(args.src)}", unit="array") as bar:
        done = import_file(args.src, args.out, from_format=args.from_format, slot=args.slot, force=args.force,
                           progress=bar.update)
    say(f"wrote {args.out}: {done.arrays} arrays, {human_size(done.nbytes)} of data, from "
        f"{done.source} file {args.src}")
    return 0


def register(add: Add) -> None:
    p = add("import", run, "make a ckpt file from a .npz, objax or safetensors file",
            "Read the arrays of SRC (a numpy .npz, an objax var-collection file, a ckpt file or a\n"
            "safetensors file; the kind is detected from its first bytes) and write them to OUT as a\n"
            "ckpt file with hashes and a manifest recording where they came from.\n"
            "Library: ckpt.import_file(SRC, OUT).",
            """\
            ckpt import model.safetensors -o model.npz
            ckpt import objax_weights.npz -o weights.npz""")
    p.add_argument("src", metavar="SRC", help="file to import")
    p.add_argument("-o", "--output", dest="out", metavar="OUT", required=True, help="ckpt file to write")
    p.add_argument("--from", dest="from_format", choices=IMPORT_FORMATS,
                   help="source format (default: detected; 'npz' covers objax and ckpt files too)")
    p.add_argument("--slot", default=DEFAULT_SLOT,
                   help=f"arrays slot to read from a zip source (default: {DEFAULT_SLOT})")
    p.add_argument("-f", "--force", action="store_true", help="overwrite OUT if it exists")
