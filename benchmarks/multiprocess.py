#!/usr/bin/env python3
"""Multi-process sharded checkpoints: ckpt vs orbax CheckpointManager, same job, same data.

    python benchmarks/multiprocess.py [--size 512M] [--processes 2] [--devices 2] [--quick]

Launches one jax.distributed job per tool (processes on 127.0.0.1, gloo CPU collectives, each
process with ``--devices`` CPU devices) holding ``--size`` of float32 arrays row-sharded over
every device. Each job: a blocking save, an async save (time blocked in ``save`` and until
durable), a restore into a column sharding (so every process needs slices of every shard), and
reports per process: seconds, files per step, bytes read on the resharded restore (ckpt: the
chunk bytes it read; both: ``rchar`` from /proc/self/io, every byte read through read(2)), and
peak RSS. Prints a table; never asserts on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def _rchar() -> int:
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def _peak_rss() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _files(path: str) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


def worker(args: argparse.Namespace) -> None:
    import jax

    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", args.devices)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.addr, args.processes, args.pid, initialization_timeout=120)
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()), ("x",))
    rows = 4096
    n_arrays = 4
    cols = max(jax.device_count(), args.size // (4 * rows * n_arrays))
    cols -= cols % jax.device_count()
    row, col = NamedSharding(mesh, P("x", None)), NamedSharding(mesh, P(None, "x"))
    state = {f"w{i}": jax.make_array_from_callback(
        (rows, cols), row, lambda idx, i=i: np.full((idx[0].stop - idx[0].start, cols), i, np.float32)[:, idx[1]])
        for i in range(n_arrays)}
    template = {k: jax.ShapeDtypeStruct((rows, cols), np.float32, sharding=col) for k in state}
    out: dict[str, Any] = {"process": args.pid, "bytes": rows * cols * 4 * n_arrays}
    logdir = args.dir

    if args.tool == "ckpt":
        import ckpt

        ck = ckpt.Checkpoint(logdir, keep_ckpts=2)
        t = time.perf_counter()
        ck.save(state, idx=1)
        out["save_s"] = time.perf_counter() - t
        t = time.perf_counter()
        ck.save(state, idx=2, block=False)
        out["async_blocked_s"] = time.perf_counter() - t
        ck.wait()
        out["async_total_s"] = time.perf_counter() - t
        step_dir = os.path.join(logdir, "ckpt")
        out["files_per_step"] = 1 + len([n for n in os.listdir(step_dir) if n.startswith("0000000002.shards-")
                                         for _ in os.listdir(os.path.join(step_dir, n))])
        r0 = _rchar()
        t = time.perf_counter()
        restored = ck.load(2, template=template)
        jax.block_until_ready(restored)
        out["restore_s"] = time.perf_counter() - t
        out["rchar"] = _rchar() - r0
        out["chunk_bytes_read"] = ckpt.distributed.last_restore_stats()["bytes_read"]
        ck.close()
    else:
        import orbax.checkpoint as ocp

        mgr = ocp.CheckpointManager(os.path.abspath(logdir), options=ocp.CheckpointManagerOptions(
            max_to_keep=2, enable_async_checkpointing=True))
        t = time.perf_counter()
        mgr.save(1, args=ocp.args.StandardSave(state))
        mgr.wait_until_finished()
        out["save_s"] = time.perf_counter() - t
        t = time.perf_counter()
        mgr.save(2, args=ocp.args.StandardSave(state))
        out["async_blocked_s"] = time.perf_counter() - t
        mgr.wait_until_finished()
        out["async_total_s"] = time.perf_counter() - t
        out["files_per_step"] = _files(os.path.join(logdir, "2"))
        r0 = _rchar()
        t = time.perf_counter()
        restored = mgr.restore(2, args=ocp.args.StandardRestore(template))
        jax.block_until_ready(restored)
        out["restore_s"] = time.perf_counter() - t
        out["rchar"] = _rchar() - r0
        mgr.close()
    ok = all(np.array_equal(np.asarray(s.data), np.full(s.data.shape, i, np.float32))
             for i, k in enumerate(state) for s in restored[k].addressable_shards)
    out["restored_ok"] = bool(ok)
    out["peak_rss"] = _peak_rss()
    print("@@" + json.dumps(out), flush=True)


def run_job(tool: str, args: argparse.Namespace, base: str) -> list[dict[str, Any]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = os.path.join(base, tool)
    os.makedirs(d)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", "--tool", tool, "--addr", f"127.0.0.1:{port}",
                               "--pid", str(p), "--processes", str(args.processes), "--devices", str(args.devices),
                               "--size", str(args.size), "--dir", d], stdout=subprocess.PIPE, text=True, env=env)
             for p in range(args.processes)]
    results = []
    for p in procs:
        stdout, _ = p.communicate(timeout=args.timeout)
        lines = [ln for ln in stdout.splitlines() if ln.startswith("@@")]
        results.append(json.loads(lines[-1][2:]) if p.returncode == 0 and lines else {"failed": p.returncode})
    return results


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=_size, default=512 << 20, help="total array bytes (default 512M)")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--devices", type=int, default=2, help="CPU devices per process")
    p.add_argument("--quick", action="store_true", help="smoke test: 32M")
    p.add_argument("--tools", default="ckpt,orbax")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tool", help=argparse.SUPPRESS)
    p.add_argument("--addr", help=argparse.SUPPRESS)
    p.add_argument("--pid", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args, _ = p.parse_known_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.size = 32 << 20
    base = tempfile.mkdtemp(prefix="ckpt-mp-bench-", dir=os.environ.get("CKPT_BENCH_TMP"))
    try:
        print(f"# multi-process checkpoints: {args.size / 2**20:.0f} MiB float32, {args.processes} processes x "
              f"{args.devices} CPU devices, row-sharded; restore into a column sharding\n")
        cols = ["save_s", "async_blocked_s", "async_total_s", "restore_s", "files_per_step", "rchar",
                "chunk_bytes_read", "peak_rss", "restored_ok"]
        print("| tool | process | " + " | ".join(cols) + " |")
        print("|" + "---|" * (len(cols) + 2))
        for tool in args.tools.split(","):
            if tool == "orbax":
                try:
                    import orbax.checkpoint  # noqa: F401
                except ImportError:
                    print("| orbax | - | skipped: orbax-checkpoint is not installed |")
                    continue
            for r in run_job(tool, args, base):
                if "failed" in r:
                    print(f"| {tool} | - | failed (exit status {r['failed']}) |")
                    continue
                cells = []
                for c in cols:
                    v = r.get(c)
                    if v is None:
                        cells.append("-")
                    elif c in ("rchar", "chunk_bytes_read", "peak_rss"):
                        cells.append(f"{v / 2**20:.1f} MiB")
                    elif isinstance(v, float):
                        cells.append(f"{v:.3f}")
                    else:
                        cells.append(str(v))
                print(f"| {tool} | {r['process']} | " + " | ".join(cells) + " |")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
