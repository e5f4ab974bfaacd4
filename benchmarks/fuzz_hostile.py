"""Fuzz the reader entry points for a fixed time and print what it found (executions/s, outcomes, peak RSS).

    python benchmarks/fuzz_hostile.py [--seconds 60] [--cli]

Uses the harness of tests/test_fuzz.py (seeded with real files); any exception other than a
ckpt.errors one, a pickle canary that ran, or peak RSS growth over 100 MB is printed as a finding.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from fuzz_harness import check_file, mutate, seeds
from test_hostile import HOSTILE, peak_rss_growth


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--cli", action="store_true", help="also run ckpt info/verify/export on every file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    r = random.Random(args.seed)
    corpus = seeds()
    outcomes: collections.Counter[str] = collections.Counter()
    findings = []
    worst = (0, "")
    n = 0
    with tempfile.TemporaryDirectory() as d:
        start = time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            data = mutate(corpus[n % len(corpus)], r)
            result, growth = peak_rss_growth(lambda data=data: check_file(data, d, cli=args.cli))
            n += 1
            if isinstance(result, Exception):
                findings.append(str(result)[:300])
            else:
                outcomes.update(f"{k}={v}" for k, v in result.items())
            if growth > worst[0]:
                worst = (growth, f"mutation {n}")
        elapsed = time.perf_counter() - start
        hostile_worst = (0, "")
        slowest = (0.0, "")
        sizes = []
        for name, build in HOSTILE.items():
            data = build()
            sizes.append(len(data))
            t0 = time.perf_counter()
            _, growth = peak_rss_growth(lambda data=data: check_file(data, d, cli=True))
            took = (time.perf_counter() - t0) / 6  # six entry points
            if growth > hostile_worst[0]:
                hostile_worst = (growth, name)
            if took > slowest[0]:
                slowest = (took, name)
    print(f"fuzz: {n} files in {elapsed:.1f} s = {n / elapsed:.1f} files/s "
          f"({n * (5 + 3 * args.cli) / elapsed:.0f} entry-point executions/s)")
    print(f"peak RSS growth, worst mutated file: {worst[0] / 2**20:.1f} MiB ({worst[1]})")
    print(f"peak RSS growth, worst of {len(HOSTILE)} hand-built hostile files (all entry points): "
          f"{hostile_worst[0] / 2**20:.1f} MiB ({hostile_worst[1]})")
    print(f"hand-built hostile files: {len(HOSTILE)}, {min(sizes)}-{max(sizes)} bytes; slowest mean time per entry "
          f"point: {slowest[0] * 1000:.0f} ms ({slowest[1]})")
    print(f"findings: {len(findings)}")
    for f in findings[:20]:
        print("  ", f)
    print("outcomes:")
    for k, v in sorted(outcomes.items()):
        print(f"  {k}: {v}")


if __name__ == "__main__":
    main()
