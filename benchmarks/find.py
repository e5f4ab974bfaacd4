"""Search benchmark: ``ckpt.find`` over 10,000 synthetic checkpoints, cold, warm, and after one new checkpoint.

The tree has RUNS runs of STEPS checkpoints each; every checkpoint is a real
pack (a small arrays slot, a recipe, metrics) written by ckpt's own writer. The
figures:

- cold: no index cache, every manifest read (what a first search costs);
- warm: the cache is current; medians of REPEAT selective searches (class,
  kwargs, a where expression, order_by and limit);
- one new checkpoint: a save, then a search: how many manifests were read
  (expected: 1) and how many bytes of that file that is.

Results are checked against a brute-force filter of the full listing. Not a test,
never gates CI.

    python benchmarks/find.py            # 10,000 checkpoints (100 runs x 100)
    python benchmarks/find.py --quick    # 1,000 (smoke test)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import _measure  # noqa: E402

import ckpt  # noqa: E402
from ckpt import index as _index  # noqa: E402
from ckpt.varfile import write_file  # noqa: E402

WIDTHS = (64, 128, 256, 512)


def _recipe(run: int) -> ckpt.Recipe:
    return ckpt.Recipe.from_dict({
        "class": "bench.models.MLP" if run % 3 else "bench.models.ResMLP",
        "mro": ["bench.models.MLP", "bench.models.Base", "builtins.object"] if run % 3 else
               ["bench.models.ResMLP", "bench.models.MLP", "bench.models.Base", "builtins.object"],
        "args": [], "kwargs": {"width": WIDTHS[run % 4], "depth": 2 + run % 5, "lr": [1e-3, 3e-4][run % 2],
                               "shape": {"$ckpt": "tuple", "v": [32, 32]}, "act": "relu"},
        "id": f"{run:032x}"})


def write_tree(root: str, runs: int, steps: int) -> None:
    """Real packs, written without fsync (setup, not the measured part)."""
    w = {"w": np.arange(16, dtype=np.float32)}
    for run in range(runs):
        recipe = _recipe(run).to_dict()
        directory = os.path.join(root, f"run{run:03d}", "ckpt")
        os.makedirs(directory)
        for step in range(steps):
            loss = 1.0 / (1 + step) + run * 1e-4
            meta = {"ckpt": {"idx": step, "metrics": {"loss": loss if step % 17 else float("nan"), "step": step},
                             "recipe": recipe}}
            with open(os.path.join(directory, "%010d.npz" % step), "wb") as f:
                write_file(f, {"main": w}, metadata=meta)


def query() -> ckpt.Selector:
    return ckpt.Selector(cls="MLP", kwargs={"width": 256, "shape": [32, 32]}, where="loss < 0.05 and depth >= 3")


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1,000 checkpoints (10 runs x 100)")
    p.add_argument("--runs", type=int, default=None)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--tmpdir", default=os.path.join(os.path.dirname(HERE), ".bench-tmp"))
    args, _unknown = p.parse_known_args(argv)  # tox passes the other benchmarks' options too
    runs = args.runs or (10 if args.quick else 100)
    root = os.path.join(args.tmpdir, "find")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    try:
        t_write, _ = timed(lambda: write_tree(root, runs, args.steps))
        total = runs * args.steps
        lines = [f"# ckpt.find benchmark: {total} checkpoints ({runs} runs x {args.steps})", ""]
        lines += [f"- {k}: {v}" for k, v in _measure.machine(root).items()]
        lines.append(f"- setup: wrote {total} packs in {t_write:.1f} s")

        t_cold, everything = timed(lambda: ckpt.find(root, cache=False))
        assert len(everything) == total, len(everything)
        expected = [e for e in everything if query()(e)]
        expected = sorted(expected, key=lambda e: e.metrics["loss"])[:20]
        t_first, _ = timed(lambda: ckpt.find(root))  # builds the cache
        cache_bytes = os.path.getsize(os.path.join(root, _index.INDEX_NAME))
        warm = []
        for _ in range(args.repeat):
            t, found = timed(lambda: ckpt.find(root, query(), order_by="loss", limit=20))
            assert found == expected, "warm search disagrees with the brute-force filter"
            warm.append(t)
        t_all, listed = timed(lambda: ckpt.find(root))
        assert listed == everything

        reads: list[str] = []
        real = _index._record_of

        def counting(path: str):
            reads.append(path)
            return real(path)

        _index._record_of = counting
        try:
            ck = ckpt.Checkpoint(os.path.join(root, "run000"), keep_ckpts=None)
            path = ck.save({"w": np.zeros(1 << 18, np.float32)}, idx=10**6, metrics={"loss": 0.0}, recipe=_recipe(0))
            t_new, found = timed(lambda: ckpt.find(root, query() | ckpt.Selector(where="loss == 0"), order_by="loss",
                                                   limit=1))
        finally:
            _index._record_of = real
        assert [e.path for e in found] == [path] and reads == [path], reads
        with ckpt.varfile.open_reader(path) as reader:
            manifest = reader.zip.members["__ckpt__/manifest.json"].size

        lines += ["", "| measurement | figure |", "|---|---|",
                  f"| cold find, no cache ({total} manifests read) | {t_cold:.2f} s "
                  f"({t_cold / total * 1e6:.0f} us each) |",
                  f"| first find, building the cache | {t_first:.2f} s (cache {cache_bytes / 2**20:.1f} MiB) |",
                  f"| warm find, selective query + order_by + limit (median of {args.repeat}) | "
                  f"{statistics.median(warm):.3f} s (min {min(warm):.3f}, max {max(warm):.3f}) |",
                  f"| warm find, full listing of {total} entries | {t_all:.3f} s |",
                  f"| after one new checkpoint: find | {t_new:.3f} s, {len(reads)} manifest read "
                  f"({manifest} bytes of a {os.path.getsize(path)}-byte file) |",
                  "", f"warm target < 1 s: {'met' if statistics.median(warm) < 1 else 'MISSED'}"]
        report = "\n".join(lines) + "\n"
        print(report, end="")
        if not args.quick:
            out = os.path.join(HERE, "results", "find-latest.md")
            with open(out, "w") as f:
                f.write(report)
            print(f"(written to {os.path.relpath(out)})")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
