"""Checkpoints on an S3-compatible store: ckpt's S3 backend vs np.savez / safetensors through s3fs.

A local S3 server (moto, in its own process) behind a loopback proxy that counts requests and
can add a per-request latency (``--latency-ms``, 20 by default; every size runs at 0 ms and at
that latency, side by side). Each save and each restore runs in a fresh worker process, which
reports its seconds and its peak RSS growth (the data it was given excluded). Restores check
the arrays they read. ``--big`` adds 1 GiB to the default 256 MiB; ``--quick`` runs 32 MiB only.

    python benchmarks/object_store.py [--quick] [--big] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

MiB = 1 << 20
TOOLS = ("ckpt", "np.savez+s3fs", "safetensors+s3fs")


def make_arrays(total: int) -> dict:
    import numpy as np

    n = 64
    rng = np.random.default_rng(0)
    return {f"layer{i:02d}": rng.standard_normal(total // n // 4).astype(np.float32) for i in range(n)}


def worker(tool: str, op: str, endpoint: str, bucket: str, total: int) -> dict:
    """One save or restore in this (fresh) process; returns seconds and peak RSS growth."""
    import numpy as np
    from _measure import PeakRSS

    opts = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    arrays = make_arrays(total)
    expect = {k: float(v[:16].sum()) for k, v in arrays.items()}
    if op == "restore":
        del arrays
    key = f"{tool.split('+')[0]}-{total // MiB}.bin"
    peak = PeakRSS()
    peak.start()
    t0 = time.perf_counter()
    if tool == "ckpt":
        from ckpt import load, varfile
        from ckpt.storage.s3 import S3Storage

        st = S3Storage(f"s3://{bucket}/bench", {**opts, "conditional_writes": True})
        if op == "save":
            st.commit(key, lambda f: varfile.write_file(f, {"main": arrays}), exclusive=False)
        else:
            out = load(st.open_read(key))
    else:
        import s3fs

        fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": endpoint})
        path = f"{bucket}/bench/{key}"
        if tool.startswith("np.savez"):
            if op == "save":
                with fs.open(path, "wb") as f:
                    np.savez(f, **arrays)
            else:
                with fs.open(path, "rb") as f, np.load(f) as z:
                    out = {k: z[k] for k in z.files}
        else:
            from safetensors.numpy import load as st_load
            from safetensors.numpy import save as st_save

            if op == "save":
                with fs.open(path, "wb") as f:
                    f.write(st_save(arrays))
            else:
                with fs.open(path, "rb") as f:
                    out = st_load(f.read())
    seconds = time.perf_counter() - t0
    growth = peak.growth()
    if op == "restore":
        bad = [k for k in expect if abs(float(out[k][:16].sum()) - expect[k]) > 1e-3]
        if bad or len(out) != len(expect):
            raise SystemExit(f"{tool}: restored arrays differ: {bad[:3]}")
    return {"seconds": seconds, "rss_growth": growth, "rss_method": peak.method}


def start_moto() -> tuple[subprocess.Popen, str]:
    from s3_server import free_port

    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    import urllib.request

    for _ in range(300):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
            return p, endpoint
        except OSError:
            time.sleep(0.1)
    p.kill()
    raise SystemExit("the moto server did not start")


class CountingProxy:
    """The test suite's loopback proxy, counting the requests that pass."""

    def __init__(self, upstream: str, latency: float):
        from s3_server import Proxy

        self.proxy = Proxy(upstream, latency=latency)
        self.requests = 0
        original = self.proxy._pump
        proxy = self

        def pump(src, dst, to_server, state):  # noqa: ANN001
            if to_server:
                real_recv = src.recv

                class Counted:
                    def __getattr__(self, name):  # noqa: ANN001
                        return getattr(src, name)

                    def recv(self, n):  # noqa: ANN001
                        data = real_recv(n)
                        if data and (state.get("new", "1") == "1" or state["turn"] == "response"):
                            proxy.requests += 1
                        return data

                return original(Counted(), dst, to_server, state)
            return original(src, dst, to_server, state)

        self.proxy._pump = pump  # type: ignore[method-assign]
        self.endpoint = self.proxy.endpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--big", action="store_true", help="also 1 GiB")
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--worker", nargs=5, metavar=("TOOL", "OP", "ENDPOINT", "BUCKET", "BYTES"), help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args()  # tox -e bench passes run.py's options to every script
    if args.worker:
        tool, op, endpoint, bucket, total = args.worker
        print(json.dumps(worker(tool, op, endpoint, bucket, int(total))))
        return
    sizes = [32 * MiB] if args.quick else [256 * MiB] + ([1024 * MiB] if args.big else [])
    server, endpoint = start_moto()
    rows = []
    try:
        from ckpt.storage import _s3client

        client, _ = _s3client.make_client({"endpoint_url": endpoint, "key": "testing", "secret": "testing"})
        for latency in (0.0, args.latency_ms / 1000):
            proxy = CountingProxy(endpoint, latency)
            for total in sizes:
                for tool in TOOLS:
                    bucket = f"bench-{int(latency * 1000)}-{total // MiB}-{TOOLS.index(tool)}"
                    client.create_bucket(Bucket=bucket)
                    row = {"tool": tool, "size_mib": total // MiB, "latency_ms": int(latency * 1000)}
                    for op in ("save", "restore"):
                        before = proxy.requests
                        r = subprocess.run([sys.executable, __file__, "--worker", tool, op, proxy.endpoint, bucket,
                                            str(total)], capture_output=True, text=True, timeout=1800)
                        if r.returncode != 0:
                            row[op] = {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
                            continue
                        res = json.loads(r.stdout.strip().splitlines()[-1])
                        res["requests"] = proxy.requests - before
                        row[op] = res
                    rows.append(row)
                    print(_line(row), flush=True)
                    for o in client.list_objects_v2(Bucket=bucket).get("Contents", []):
                        client.delete_object(Bucket=bucket, Key=o["Key"])
            proxy.proxy.close()
    finally:
        server.kill()
        server.wait(30)
    print()
    print("| tool | size | latency | save s | save requests | save peak RSS | restore s | restore requests | "
          "restore peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(_line(row))


def _cell(r: dict, what: str) -> str:
    if "error" in r:
        return r["error"][:40] if what == "seconds" else ""
    if what == "rss_growth":
        return f"{r['rss_growth'] / MiB:.0f} MiB"
    if what == "seconds":
        return f"{r['seconds']:.2f}"
    return str(r[what])


def _line(row: dict) -> str:
    s, r = row.get("save", {"error": "-"}), row.get("restore", {"error": "-"})
    return (f"| {row['tool']} | {row['size_mib']} MiB | {row['latency_ms']} ms | {_cell(s, 'seconds')} | "
            f"{_cell(s, 'requests')} | {_cell(s, 'rss_growth')} | {_cell(r, 'seconds')} | {_cell(r, 'requests')} | "
            f"{_cell(r, 'rss_growth')} |")


if __name__ == "__main__":
    main()
