"""Incremental checkpoints: bytes written and save time per step, incremental vs full vs orbax.

Two workloads, each saved every step into its own directory (``keep_ckpts=2``, so rotation and
object collection run as in training):

* **frozen base + adapter**: a frozen 1 GiB base (JAX arrays that stay the same objects, as in
  fine-tuning with a frozen encoder, LoRA, adapters) plus an 8 MiB adapter that changes every step;
* **dense**: every array changes every step (whole-array reuse is 0%): the overhead of
  ``incremental=True`` when it cannot help.

For each step: wall time of ``save()`` (durable when it returns: every tool fsyncs), and bytes
written, from ``/proc/self/io`` ``wchar`` (bytes handed to write calls by this process, the
writers' threads included). The first step of each run writes everything and is reported apart;
the per-step figures are medians of the steps after it.

    python benchmarks/incremental.py [--quick] [--steps N] [--dir DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _measure  # noqa: E402

MIB = 1 << 20


def wchar() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def frozen_model(base_bytes: int, adapter_bytes: int) -> tuple[dict[str, Any], Callable[[int], dict[str, Any]]]:
    import jax.numpy as jnp

    per = 64 * MIB if base_bytes >= 256 * MIB else max(MIB, base_bytes // 16)
    base = {f"base/layer{i:02d}": jnp.asarray(np.random.default_rng(i).standard_normal(per // 4, np.float32))
            for i in range(max(1, base_bytes // per))}
    rng = np.random.default_rng(99)
    adapter0 = rng.standard_normal(adapter_bytes // 4, np.float32)

    def step(s: int) -> dict[str, Any]:
        return {**base, "adapter/w": jnp.asarray(adapter0 + np.float32(s))}

    return base, step


def dense_model(total: int) -> Callable[[int], dict[str, Any]]:
    import jax.numpy as jnp

    per = 8 * MIB
    init = [np.random.default_rng(i).standard_normal(per // 4, np.float32) for i in range(max(1, total // per))]

    def step(s: int) -> dict[str, Any]:
        return {f"dense/{i:03d}": jnp.asarray(a + np.float32(s)) for i, a in enumerate(init)}

    return step


def run_ckpt(directory: str, make: Callable[[int], dict[str, Any]], steps: int, *, incremental: bool
             ) -> list[tuple[float, int]]:
    import ckpt

    ck = ckpt.Checkpoint(directory, keep_ckpts=2, incremental=incremental, verbose=False)
    out = []
    for s in range(steps):
        tree = make(s)
        tree[next(iter(tree))].block_until_ready()
        w0, t0 = wchar(), time.perf_counter()
        ck.save(tree, idx=s)
        out.append((time.perf_counter() - t0, wchar() - w0))
    ck.close()
    return out


def run_orbax(directory: str, make: Callable[[int], dict[str, Any]], steps: int) -> list[tuple[float, int]]:
    import orbax.checkpoint as ocp

    mngr = ocp.CheckpointManager(os.path.abspath(directory), options=ocp.CheckpointManagerOptions(max_to_keep=2))
    out = []
    for s in range(steps):
        tree = make(s)
        w0, t0 = wchar(), time.perf_counter()
        mngr.save(s, args=ocp.args.StandardSave(tree))
        mngr.wait_until_finished()
        out.append((time.perf_counter() - t0, wchar() - w0))
    mngr.close()
    return out


def summarize(rows: list[tuple[float, int]]) -> tuple[float, float, float, float]:
    """(first save s, first save bytes, median later save s, median later bytes)."""
    later = rows[1:] or rows
    return (rows[0][0], rows[0][1], statistics.median(t for t, _ in later), statistics.median(b for _, b in later))


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table (first column left-aligned, the others right), with blank lines around it."""
    return ["", "| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} GiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 MiB base, 1 MiB adapter, 3 steps (smoke test)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    parser.add_argument("--no-orbax", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    base_bytes, adapter_bytes, dense_bytes = (64 * MIB, MIB, 64 * MIB) if args.quick else (1024 * MIB, 8 * MIB,
                                                                                            512 * MIB)
    steps = args.steps or (3 if args.quick else 6)
    root = tempfile.mkdtemp(prefix="ckpt-bench-incr-", dir=args.dir)
    lines = []
    try:
        # Warm-up (imports, jit of the adapter update, first-use costs), not measured.
        _, tiny = frozen_model(4 * MIB, MIB)
        run_ckpt(os.path.join(root, "warm"), tiny, 2, incremental=True)
        _base, frozen = frozen_model(base_bytes, adapter_bytes)
        results: dict[str, list[tuple[float, int]]] = {}
        results["ckpt incremental=True"] = run_ckpt(os.path.join(root, "incr"), frozen, steps, incremental=True)
        results["ckpt full save"] = run_ckpt(os.path.join(root, "full"), frozen, steps, incremental=False)
        orbax_note = ""
        if not args.no_orbax:
            try:
                results["orbax CheckpointManager"] = run_orbax(os.path.join(root, "orbax"), frozen, steps)
            except ImportError as e:
                orbax_note = f"(orbax skipped: {e})"
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root, exist_ok=True)
        dense = dense_model(dense_bytes)
        dense_rows = {"ckpt full save": run_ckpt(os.path.join(root, "dfull"), dense, steps, incremental=False),
                      "ckpt incremental=True": run_ckpt(os.path.join(root, "dincr"), dense, steps,
                                                        incremental=True)}
        # A second pass in the opposite order: the shared machine's load drifts.
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root, exist_ok=True)
        dense_rows["ckpt incremental=True"] += run_ckpt(os.path.join(root, "dincr2"), dense, steps,
                                                        incremental=True)[1:]
        dense_rows["ckpt full save"] += run_ckpt(os.path.join(root, "dfull2"), dense, steps, incremental=False)[1:]
    finally:
        shutil.rmtree(root, ignore_errors=True)

    facts = _measure.machine(args.dir or tempfile.gettempdir())
    lines.append(f"## Incremental checkpoints ({facts.get('cpu', '?')}, {facts.get('filesystem', '?')})")
    lines.append("")
    lines.append(f"Frozen base {human(base_bytes)} (JAX arrays, the same objects every step) + adapter "
                 f"{human(adapter_bytes)} changed every step; {steps} saves, keep_ckpts=2; per-step figures are "
                 "medians of saves 2..N. {0}".format(orbax_note))
    full = summarize(results["ckpt full save"])
    lines += table(["tool", "first save", "first save bytes", "save per step", "bytes per step", "vs full: bytes",
                    "vs full: time"],
                   [[name, f"{first_t:.2f} s", human(first_b), f"{t * 1000:.0f} ms", human(b),
                     f"{full[3] / max(b, 1):.0f}x fewer", f"{full[2] / t:.1f}x faster"]
                    for name, (first_t, first_b, t, b) in ((n, summarize(r)) for n, r in results.items())])
    lines.append(f"Dense model {human(dense_bytes)} (every array changes every step: nothing to reuse); two runs "
                 "each, interleaved; medians of the saves after the first:")
    dfull = summarize(dense_rows["ckpt full save"])
    lines += table(["tool", "save per step", "bytes per step", "vs full save"],
                   [[name, f"{t * 1000:.0f} ms", human(b), f"{(t / dfull[2] - 1) * 100:+.1f}%"]
                    for name, (_, _, t, b) in ((n, summarize(r)) for n, r in dense_rows.items())])
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
