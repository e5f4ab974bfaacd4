"""A training-like loop that saves a checkpoint every step; test_crash_kill.py SIGKILLs it.

Usage: ``python crash_saver.py LOGDIR COMMITTED_LOG [--steps N] [--keep K] [--compression zstd] [--incremental]``

Resumes at ``latest() + 1`` (like a training job restarting), and for each
step saves arrays whose content is a deterministic function of the step
(:func:`make_arrays`), then appends ``"<step> <seconds since ready>\\n"`` to
COMMITTED_LOG with one write + fsync, so the parent knows which saves returned
(and how long saves take in a fresh process, to spread its kill times). Prints
``ready <first step>`` on stdout once imports are done, so the parent can time
its kill relative to the start of the loop rather than interpreter start-up.

numpy only (no jax import), so each start takes a fraction of a second. The
module is also imported by the tests for :func:`make_arrays` and
:func:`expected_meta`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

MIB = 1 << 20
KEEP = 2


def big_elements(step: int) -> int:
    """Number of uint32 elements of the large array: 1, 2, 3 or 4 Mi (4 to 16 MB), varied by step."""
    return (1 + (step * 7919) % 4) * MIB


#: Saved unchanged at every step by ``--incremental`` runs (a frozen base: one shared object).
FROZEN = np.arange(1 << 19, dtype=np.uint32) * np.uint32(2246822519)


def make_arrays(step: int, incremental: bool = False) -> dict[str, np.ndarray]:
    """The arrays saved at ``step``: every byte depends on the step, sizes vary with it (and with
    ``incremental``, a frozen 2 MiB array that never changes)."""
    n = big_elements(step)
    big = np.arange(n, dtype=np.uint32)
    big *= np.uint32(2654435761)
    big ^= np.uint32(step * 40503 + 1)
    return {
        "step": np.full((3, 4), step, np.int64),
        "w": np.full((7, 5), step * 0.5, np.float32),
        "noise": (np.arange(step % 13 + 1, dtype=np.float64) + step),
        "big": big,
        # Trained-like float32 weights (1 MiB): the part a compressed save actually compresses.
        "weights": np.random.default_rng(step).standard_normal(1 << 18, dtype=np.float32) * np.float32(0.02),
        **({"frozen": FROZEN} if incremental else {}),
    }


def expected_meta(step: int) -> dict:
    return {"step": step}


def target_for(step: int, incremental: bool = False) -> dict[str, np.ndarray]:
    """A zero-filled restore target with the shapes and dtypes saved at ``step``."""
    return {k: np.zeros_like(v) for k, v in make_arrays(step, incremental).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("logdir")
    parser.add_argument("committed")
    parser.add_argument("--steps", type=int, default=10**6)
    parser.add_argument("--keep", type=int, default=KEEP)
    parser.add_argument("--compression", default=None)
    parser.add_argument("--incremental", action="store_true")
    args = parser.parse_args(argv)

    import ckpt  # after argparse so --help is fast; numpy and ckpt only

    ck = ckpt.Checkpoint(args.logdir, keep_ckpts=args.keep, verbose=False, compression=args.compression,
                         incremental=args.incremental)
    start = (ck.latest() or 0) + 1
    log_fd = os.open(args.committed, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    print(f"ready {start}", flush=True)
    t0 = time.perf_counter()
    for step in range(start, start + args.steps):
        arrays = make_arrays(step, args.incremental)
        ck.save(arrays, idx=step, extras={"meta": expected_meta(step)})
        os.write(log_fd, f"{step} {time.perf_counter() - t0:.6f}\n".encode())
        os.fsync(log_fd)
    os.close(log_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
