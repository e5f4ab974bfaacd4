"""``ckpt info``: :func:`ckpt.describe` printed as sections or JSON."""

from __future__ import annotations

import argparse

from ..fileinfo import describe
from ._args import Add, add_json, non_negative_int
from ._format import dump_json, render_info, render_recipe, render_sharded, say


def run(args: argparse.Namespace) -> int:
    doc = describe(args.file)
    if args.json:
        dump_json(doc)
        return 0
    say(render_info(doc, limit=None if args.all else args.max_arrays))
    if doc.get("sharded"):  # a multi-process checkpoint: its arrays live in the shard files
        say(render_sharded(doc["sharded"]))
    say("\n" + render_recipe(doc["recipe"], doc["recipe_error"]))
    return 0


def register(add: Add) -> None:
    p = add("info", run, "describe what one checkpoint file holds",
            "Describe FILE: its slots (serializer, size, digest), the arrays of each arrays slot (name,\n"
            "shape, dtype, bytes; stored size and encoding where a slot is compressed), the package versions that wrote each slot against those installed\n"
            "here (mismatches marked), the metadata, the recipe the model was built from (if saved with\n"
            "recipe=), and for pickle slots the globals they would import.\n"
            "Nothing in the file is executed. Library: ckpt.describe(FILE).",
            """\
            ckpt info runs/exp1/ckpt/0000001000.npz
            ckpt info model.npz --all
            ckpt info model.npz --json | jq '.slots.main.arrays[].name'""")
    p.add_argument("file", metavar="FILE", help="a ckpt, objax or numpy .npz file")
    p.add_argument("--max-arrays", metavar="N", type=non_negative_int, default=30,
                   help="list at most N arrays per slot, then a summary line (default: 30)")
    p.add_argument("--all", action="store_true", help="list every array, however many")
    add_json(p)
