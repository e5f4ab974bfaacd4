"""Restore speed of reading a checkpoint (the default since issue 13) against mapping it.

Readers copy with pread by default, so another program truncating an open checkpoint gives a
FormatError instead of SIGBUS; this prints what that costs for ``Checkpoint.restore`` into numpy
arrays and ``Checkpoint.load``, against the zero-copy mapped read (``open_reader(path, mmap=True)``).
Warm page cache, medians of --repeat runs. Not a test: it only prints figures.

    python benchmarks/restore_read_vs_map.py --mib 256 --repeat 7
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import numpy as np

import ckpt
from ckpt.varfile import open_reader


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=256, help="checkpoint size in MiB (arrays of 4 MiB)")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--tmpdir", default=None)
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="ckpt-read-vs-map-", dir=args.tmpdir)
    try:
        ck = ckpt.Checkpoint(root, keep_ckpts=None, verbose=False)
        rng = np.random.default_rng(0)
        state = {f"a{i}": rng.standard_normal((1024, 1024), dtype=np.float32) for i in range(max(1, args.mib // 4))}
        ck.save(state, idx=1)
        target = {k: np.zeros_like(v) for k, v in state.items()}

        def mapped() -> None:
            with open_reader(ck.path(1), mmap=True) as r:
                v = r.arrays("main")
                v.verify(v.names)
                for n in v.names:
                    np.copyto(target[n], v.read(n, copy=False))

        runs = {"restore (read, default)": lambda: ck.restore(target),
                "load (read, default)": lambda: ck.load(),
                "mapped views copied into the target": mapped}
        for label, fn in runs.items():
            fn()  # warm the page cache
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            print(f"{label:38s} median {statistics.median(times):.3f} s  min {min(times):.3f} s  "
                  f"({args.mib} MiB, {args.repeat} runs)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
