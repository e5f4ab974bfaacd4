#!/usr/bin/env python3
"""Benchmark ckpt against the tools users would otherwise pick, on one synthetic model.

    python benchmarks/run.py [--sizes 64M,1G] [--repeat 3] [--out benchmarks/results] [--quick]

Every save and every restore runs in a fresh process (see _worker.py); this
process only orchestrates, aggregates medians, checks the targets and writes a
Markdown report to <out>/<date>-<host>.md and <out>/latest.md (and prints it).
See benchmarks/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _measure
import _model
import _peers

MiB = 1 << 20
#: Tools that write a checkpoint, in the order of the first repeat (later repeats rotate it).
SAVERS = ["raw", "ckpt", "ckpt-nohash", "ckpt-sha256", "raw-1core", "ckpt-1core", "ckpt-jax-sync", "ckpt-jax-async",
          "ckpt-np-sync", "ckpt-np-async", "npz", "objax", "orbax", "safetensors", "pickle"]
#: Rows of the table, in order; the async savers give two rows each (blocked, durable).
ROWS = ["raw", "raw-alloc", "ckpt", "ckpt-views", "ckpt-objax", "ckpt-noverify", "ckpt-nohash", "ckpt-sha256",
        "raw-1core", "ckpt-1core", "ckpt-jax-sync", "ckpt-jax-async:blocked", "ckpt-jax-async", "ckpt-np-sync",
        "ckpt-np-async:blocked", "ckpt-np-async", "npz", "objax", "orbax", "safetensors", "pickle"]
#: Savers timed at sizes over 1 GiB (``--large-repeat`` runs each): issue 20's table, not every variant.
LARGE_SAVERS = ["raw", "ckpt", "ckpt-nohash", "ckpt-sha256", "ckpt-jax-async", "ckpt-np-sync", "ckpt-np-async",
                "npz", "safetensors", "pickle"]
LARGE = 1 << 30
#: Savers timed on the many-tiny-arrays model (``--tiny``).
TINY_SAVERS = ["raw", "ckpt", "ckpt-sha256", "npz", "safetensors", "pickle"]
COLD_MAX_RESIDENT = 0.01  # a restore counts as cold when at most 1% of the file's pages were cached
WARM_MIN_RESIDENT = 0.99


def restorers_of(key: str) -> list[str]:
    """Restore rows that read the file written by ``key``: its own, then restore-only rows."""
    out = [key] if "restore" in _peers.BY_KEY[key].ops else []
    out += [t.key for t in _peers.TOOLS if t.source == key]
    return out


class Runner:
    def __init__(self, run_dir: str, timeout: float, verbose: bool, refill: bool):
        self.run_dir = run_dir
        self.refill = refill
        self.timeout = timeout
        self.verbose = verbose
        self.env = dict(os.environ)
        self.env.setdefault("JAX_PLATFORMS", "cpu")
        self.env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.env["PYTHONDONTWRITEBYTECODE"] = "1"
        self.count = 0

    def run(self, **req: Any) -> dict[str, Any]:
        self.count += 1
        result_path = os.path.join(self.run_dir, f"result-{self.count}.json")
        req = {**req, "result": result_path, "scratch": os.path.join(self.run_dir, f"scratch-{self.count}"),
               "seed": 0, "refill": self.refill}
        cmd = [sys.executable, os.path.join(HERE, "_worker.py"), json.dumps(req)]
        try:
            proc = subprocess.run(cmd, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=self.timeout,
                                  check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {self.timeout:.0f} s"}
        try:
            with open(result_path) as f:
                result: dict[str, Any] = json.load(f)
            os.unlink(result_path)
        except (OSError, ValueError):
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:]
            return {"error": f"worker exited with status {proc.returncode}: {' | '.join(tail)[:400]}"}
        if self.verbose and "traceback" in result:
            print(result["traceback"], file=sys.stderr)
        return result


def fmt(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "–"
    if x == 0:
        return "0"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}" if digits > 1 else f"{x:.0f}"
    return f"{x:.{digits}f}" if x >= 0.1 else f"{x:.{digits + 1}f}" if x >= 0.01 else f"{x:.4f}"


def mib(x: float | None) -> str:
    return "–" if x is None else f"{x / MiB:.1f}"


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


class Stats:
    """Samples of one row at one size."""

    def __init__(self) -> None:
        self.samples: dict[str, list[dict[str, Any]]] = {"save": [], "cold": [], "warm": []}
        self.skipped = ""
        self.errors: list[str] = []

    def add(self, op: str, result: dict[str, Any]) -> None:
        if "skipped" in result:
            self.skipped = result["skipped"]
        elif "error" in result:
            self.errors.append(f"{op}: {result['error']}")
        else:
            self.samples[op].append(result)

    def seconds(self, op: str, key: str = "seconds") -> list[float]:
        out = []
        for s in self.samples[op]:
            v = s.get("extra", {}).get(key) if key != "seconds" else s["seconds"]
            if v is not None:
                out.append(float(v))
        return out

    def median(self, op: str, field: str = "seconds") -> float | None:
        if field in ("seconds", "blocked_s"):
            return med(self.seconds(op, field))
        return med([float(s[field]) for s in self.samples[op] if s.get(field) is not None])

    def correct(self) -> tuple[int, int, str]:
        checked = [s for op in self.samples.values() for s in op if "correct" in s]
        bad = [s for s in checked if not s["correct"]]
        return len(checked) - len(bad), len(checked), bad[0]["why"] if bad else ""


def run_size(runner: Runner, size: int, repeat: int, results: dict[str, Stats], log: Any) -> None:
    spec = _model.spec(size)
    model_bytes = _model.total_bytes(spec)
    label = _model.size_label(size)
    savers = SAVERS if size <= LARGE else [k for k in SAVERS if k in LARGE_SAVERS]
    for r in range(repeat):
        shift = (r * len(savers)) // max(1, repeat)
        for key in savers[shift:] + savers[:shift]:
            tool = _peers.BY_KEY[key]
            if results[key].skipped:
                continue
            work = tempfile.mkdtemp(dir=runner.run_dir, prefix=f"{key}-")
            path = os.path.join(work, tool.name)
            try:
                res = runner.run(tool=key, op="save", size=size, path=path)
                results[key].add("save", res)
                log(label, r, key, "save", res, model_bytes)
                if "seconds" not in res:
                    if res.get("skipped"):
                        for k in restorers_of(key):
                            results[k].skipped = res["skipped"]
                    continue
                for rk in restorers_of(key):
                    if results[rk].skipped:
                        continue
                    for cache in ("cold", "warm"):
                        res = runner.run(tool=rk, op="restore", cache=cache, size=size, path=path)
                        results[rk].add(cache, res)
                        log(label, r, rk, cache, res, model_bytes)
                        if res.get("skipped"):
                            break
            finally:
                shutil.rmtree(work, ignore_errors=True)


def make_logger(t_start: float) -> Any:
    def log(label: str, r: int, key: str, op: str, res: dict[str, Any], model_bytes: int) -> None:
        elapsed = time.perf_counter() - t_start
        head = f"[{elapsed:6.0f}s] {label:>4} #{r + 1} {key:15s} {op:5s}"
        if "skipped" in res:
            print(f"{head} skipped: {res['skipped']}", flush=True)
        elif "error" in res:
            print(f"{head} ERROR: {res['error']}", flush=True)
        else:
            s = res["seconds"]
            extra = ""
            if "blocked_s" in res.get("extra", {}):
                extra = f" (blocked {res['extra']['blocked_s']:.3f} s)"
            ok = "" if res.get("correct", True) else f"  WRONG: {res.get('why')}"
            ph = res.get("phases", {})
            phases = " ".join(f"{k} {v:.1f}" for k, v in ph.items())
            print(f"{head} {s:8.3f} s {model_bytes / s / MiB:8.0f} MiB/s  dRSS {res['rss_growth'] / MiB:7.1f} MiB"
                  f"{extra}{ok}  [{phases}; process {res.get('process_s', 0):.1f} s]", flush=True)
    return log


# -- the report ---------------------------------------------------------------
ROW_LABELS = {
    "raw": "raw disk limit (os.write+fsync / readinto)",
    "raw-alloc": "raw readinto, buffer allocated in timed region",
    "ckpt": "**ckpt** save_var_collection / ckpt.load (a)",
    "ckpt-views": "**ckpt** zero-copy verified views (b)",
    "ckpt-objax": "**ckpt** load_var_collection → objax/JAX (c)",
    "ckpt-noverify": "**ckpt** ckpt.load(verify=False)",
    "ckpt-nohash": "**ckpt** save, digest patched out",
    "ckpt-sha256": "**ckpt** save, sha256 digests (`set_digest`)",
    "raw-1core": "raw write+fsync, 1 core",
    "ckpt-1core": "**ckpt** save_var_collection, 1 core",
    "ckpt-jax-sync": "**ckpt** Checkpoint.save, JAX, sync",
    "ckpt-jax-async:blocked": "**ckpt** Checkpoint.save, JAX, async: blocked",
    "ckpt-jax-async": "**ckpt** Checkpoint.save, JAX, async: durable",
    "ckpt-np-sync": "**ckpt** Checkpoint.save, writable numpy, sync (2nd save)",
    "ckpt-np-async:blocked": "**ckpt** Checkpoint.save, writable numpy, async: blocked (2nd save)",
    "ckpt-np-async": "**ckpt** Checkpoint.save, writable numpy, async: durable (2nd save)",
    "npz": "np.savez / np.load",
    "objax": "objax.io save/load_var_collection",
    "orbax": "orbax StandardCheckpointer",
    "safetensors": "safetensors.numpy save_file/load_file",
    "pickle": "pickle dump/load (protocol 5)",
}


def table(results: dict[str, Stats], model_bytes: int) -> list[str]:
    raw = results["raw"]
    raw_save, raw_cold, raw_warm = raw.median("save"), raw.median("cold"), raw.median("warm")

    def tput(s: float | None) -> float | None:
        return model_bytes / s / MiB if s else None

    def ratio(base: float | None, s: float | None) -> str:
        return f"{base / s:.2f}x" if base and s else "–"

    lines = [("| tool | save s | save MiB/s | save ×raw | file MiB | save peak ΔRSS MiB | cold restore s | cold MiB/s "
             "| cold ×raw | warm restore s | warm MiB/s | warm ×raw | restore peak ΔRSS MiB | correct |"),
             "|---|" + "---:|" * 12 + "---|"]
    for row in ROWS:
        key, _, variant = row.partition(":")
        st = results[key]
        name = ROW_LABELS[row]
        if st.skipped:
            lines.append(f"| {name} | skipped: {st.skipped} |" + " |" * 12)
            continue
        if not any(st.samples.values()) and not st.errors:
            lines.append(f"| {name} | not run |" + " |" * 12)
            continue
        save = st.median("save", "blocked_s" if variant == "blocked" else "seconds")
        cold, warm = st.median("cold"), st.median("warm")
        file_mib = st.median("save", "file_bytes")
        save_rss = st.median("save", "rss_growth")
        rest_rss = [x for x in (st.median("cold", "rss_growth"), st.median("warm", "rss_growth")) if x is not None]
        good, checked, why = st.correct()
        if checked == 0:
            correct = "–" if variant == "blocked" or not (st.samples["save"] or st.samples["cold"]) else "unchecked"
        elif good == checked:
            correct = f"yes ({good}/{checked})"
        else:
            correct = f"**NO** ({checked - good}/{checked} wrong: {why})"
        if variant == "blocked":
            correct = "see durable row"
        if st.errors:
            correct += f"; errors: {'; '.join(st.errors[:2])[:200]}"
        cells = [
            fmt(save, 3), fmt(tput(save), 0), ratio(raw_save, save),
            fmt(file_mib / MiB if file_mib else None, 1), mib(save_rss),
            fmt(cold, 3), fmt(tput(cold), 0), ratio(raw_cold, cold),
            fmt(warm, 3), fmt(tput(warm), 0), ratio(raw_warm, warm),
            mib(max(rest_rss) if rest_rss else None), correct,
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def cache_line(results: dict[str, Stats]) -> str:
    cold_all = [s.get("resident_before") for st in results.values() for s in st.samples["cold"]]
    warm_all = [s.get("resident_before") for st in results.values() for s in st.samples["warm"]]
    if not cold_all and not warm_all:
        return "Page cache: no restore ran."
    cold = [float(x) for x in cold_all if x is not None]
    warm = [float(x) for x in warm_all if x is not None]
    if len(cold) + len(warm) < len(cold_all) + len(warm_all):
        return ("Page cache: mincore(2) unavailable, residency not verified; cold restores ran right after "
                "fsync + posix_fadvise(DONTNEED) on every file.")
    cold_ok = sum(1 for x in cold if x <= COLD_MAX_RESIDENT)
    warm_ok = sum(1 for x in warm if x >= WARM_MIN_RESIDENT)
    verdict = "achieved" if cold_ok == len(cold) else "NOT achieved for every run"
    return (f"Page cache (mincore): cold {verdict}: {cold_ok}/{len(cold)} cold restores started with "
            f"<= {COLD_MAX_RESIDENT:.0%} of the file cached (max {max(cold, default=0):.1%} after fsync + "
            f"posix_fadvise(DONTNEED)); {warm_ok}/{len(warm)} warm restores started with >= "
            f"{WARM_MIN_RESIDENT:.0%} cached (min {min(warm, default=1):.1%}).")


def targets(results: dict[str, Stats], spec: _model.Spec, label: str) -> list[str]:
    model_bytes = _model.total_bytes(spec)
    out = []

    def line(name: str, ok: bool | None, text: str) -> None:
        verdict = "n/a" if ok is None else ("PASS" if ok else "FAIL")
        out.append(f"- **{verdict}** [{label}] {name}: {text}")

    def mbps(s: float | None) -> str:
        return f"{model_bytes / s / MiB:.0f} MiB/s" if s else "–"

    ck, raw = results["ckpt"], results["raw"]
    ck_save, raw_save = ck.median("save"), raw.median("save")
    if ck_save and raw_save:
        r = ck_save / raw_save
        line("sync save <= 1.10x the time of raw write+fsync", r <= 1.10,
             f"ckpt {ck_save:.3f} s ({mbps(ck_save)}) = {r:.2f}x raw {raw_save:.3f} s ({mbps(raw_save)})")
    else:
        line("sync save <= 1.10x the time of raw write+fsync", None, "missing measurements")
    pk_save, pk_warm = results["pickle"].median("save"), results["pickle"].median("warm")
    if ck_save and pk_save:
        line("sync save no slower than pickle", ck_save <= pk_save,
             f"ckpt {ck_save:.3f} s, pickle {pk_save:.3f} s: {ck_save / pk_save:.2f}x pickle's time")
    else:
        line("sync save no slower than pickle", None, "missing measurements")

    peers: dict[str, float] = {}
    for k in _peers.PEERS:
        v = results[k].median("save")
        if v:
            peers[k] = v
    if ck_save and peers:
        slower = {k: v for k, v in peers.items() if v <= ck_save}
        fastest = min(peers, key=lambda k: peers[k])
        line("sync save faster than every peer", not slower,
             f"ckpt {ck_save:.3f} s; " + ", ".join(f"{k} {v:.3f} s" for k, v in peers.items())
             + f" (fastest peer: {fastest}, ckpt is {peers[fastest] / ck_save:.2f}x its speed)")
    else:
        line("sync save faster than every peer", None, "missing measurements")

    views = results["ckpt-views"]
    ck_warm, st_warm, np_warm = ck.median("warm"), results["safetensors"].median("warm"), results["npz"].median("warm")
    v_warm = views.median("warm")
    if ck_warm and st_warm and np_warm:
        line("warm restore faster than safetensors.load_file and np.load", ck_warm < st_warm and ck_warm < np_warm,
             f"ckpt.load (a) {ck_warm:.3f} s ({mbps(ck_warm)}) vs safetensors {st_warm:.3f} s ({mbps(st_warm)}), "
             f"np.load {np_warm:.3f} s ({mbps(np_warm)}); zero-copy views (b) {fmt(v_warm, 3)} s ({mbps(v_warm)}), "
             f"{'faster' if v_warm and v_warm < min(st_warm, np_warm) else 'not faster'} than both")
    else:
        line("warm restore faster than safetensors.load_file and np.load", None, "missing measurements")

    ck_cold, fresh_cold, v_cold = ck.median("cold"), results["raw-alloc"].median("cold"), views.median("cold")
    if ck_cold and fresh_cold:
        r = ck_cold / fresh_cold
        vr = f"{v_cold / fresh_cold:.2f}x" if v_cold else "–"
        line("cold restore <= 1.10x the time of raw readinto fresh arrays", r <= 1.10,
             f"ckpt.load (a) {ck_cold:.3f} s ({mbps(ck_cold)}) = {r:.2f}x raw readinto a fresh np.empty "
             f"{fresh_cold:.3f} s ({mbps(fresh_cold)}); views (b) {fmt(v_cold, 3)} s = {vr}")
    else:
        line("cold restore <= 1.10x the time of raw readinto fresh arrays", None, "missing measurements")
    if ck_warm and pk_warm:
        line("warm restore no slower than pickle", ck_warm <= pk_warm,
             f"ckpt.load (a) {ck_warm:.3f} s, pickle.load {pk_warm:.3f} s: {ck_warm / pk_warm:.2f}x pickle's time")
    else:
        line("warm restore no slower than pickle", None, "missing measurements")

    asy, sync = results["ckpt-jax-async"], results["ckpt-jax-sync"]
    blocked, durable, sync_s = asy.median("save", "blocked_s"), asy.median("save"), sync.median("save")
    if blocked is not None and sync_s:
        r = blocked / sync_s
        line("async blocked time <= 10% of the sync save (JAX model)", r <= 0.10,
             f"save() returned after {blocked:.4f} s = {r:.1%} of the sync Checkpoint.save {sync_s:.3f} s; durable "
             f"(wait() returned) after {fmt(durable, 3)} s")
    else:
        line("async blocked time <= 10% of the sync save (JAX model)", None, "missing measurements")

    nasy, nsync = results["ckpt-np-async"], results["ckpt-np-sync"]
    nblocked, nsync_s = nasy.median("save", "blocked_s"), nsync.median("save")
    first = med(nasy.seconds("save", "first_blocked_s"))
    if nblocked is not None and nsync_s:
        r = nblocked / nsync_s
        line("async blocked time <= 10% of the sync save from the 2nd save on (writable numpy)", r <= 0.10,
             f"2nd save() returned after {nblocked:.4f} s = {r:.1%} of the sync 2nd Checkpoint.save {nsync_s:.3f} s "
             f"(1st save blocked {fmt(first, 3)} s, allocating its buffers); durable after "
             f"{fmt(nasy.median('save'), 3)} s")
    else:
        line("async blocked time <= 10% of the sync save from the 2nd save on (writable numpy)", None,
             "missing measurements")

    one, two, raw1 = results["ckpt-1core"].median("save"), ck_save, results["raw-1core"].median("save")
    if one and two and raw1 and raw_save:
        line("scaling with cores (reported)", None,
             f"ckpt save {one:.3f} s on 1 core, {two:.3f} s on 2 ({one / two:.2f}x faster with 2); raw write+fsync "
             f"{raw1:.3f} s on 1 core, {raw_save:.3f} s on 2; ckpt over raw: {one / raw1:.2f}x on 1 core, "
             f"{two / raw_save:.2f}x on 2")

    limit = max(64 * MiB, _model.largest_bytes(spec))
    rss = {k: results[k].median("save", "rss_growth") for k in ("ckpt", "ckpt-jax-sync", "ckpt-jax-async")}
    have = {k: v for k, v in rss.items() if v is not None}
    if "ckpt" in have:
        line("peak RSS growth during save <= max(64 MiB, largest array)", all(v <= limit for v in have.values()),
             ", ".join(f"{k} +{v / MiB:.1f} MiB" for k, v in have.items())
             + f"; limit {limit / MiB:.1f} MiB (largest array {_model.largest_bytes(spec) / MiB:.1f} MiB)")
    else:
        line("peak RSS growth during save <= max(64 MiB, largest array)", None, "missing measurements")

    nohash, sha = results["ckpt-nohash"].median("save"), results["ckpt-sha256"].median("save")
    if ck_save and nohash:
        r = ck_save / nohash
        line("digest overhead on save <= 15%", r <= 1.15,
             f"with BLAKE3 {ck_save:.3f} s, without a digest {nohash:.3f} s: ratio {r:.3f} ({(r - 1):+.1%}); "
             f"with sha256 {fmt(sha, 3)} s" + (f" ({sha / nohash - 1:+.1%})" if sha else ""))
    else:
        line("digest overhead on save <= 15%", None, "missing measurements")
    return out


#: The issue's summary table: (label, save row, cold-restore row).
SUMMARY = [
    ("raw `os.write`+fsync / `readinto` fresh `np.empty`", "raw", "raw-alloc"),
    ("pickle protocol 5 (+fsync)", "pickle", "pickle"),
    ("safetensors.numpy (+fsync)", "safetensors", "safetensors"),
    ("np.savez", "npz", "npz"),
    ("**ckpt** save_var_collection / ckpt.load (BLAKE3)", "ckpt", "ckpt"),
    ("**ckpt** save_var_collection, sha256 digests", "ckpt-sha256", ""),
    ("**ckpt** Checkpoint, writable numpy, sync", "ckpt-np-sync", ""),
    ("**ckpt** Checkpoint, JAX, sync", "ckpt-jax-sync", ""),
]


def summary(results: dict[str, Stats]) -> list[str]:
    """Times over the raw limit's (lower is better), as the issue's table puts them."""
    raw_save, fresh_cold = results["raw"].median("save"), results["raw-alloc"].median("cold")
    pk_warm = results["pickle"].median("warm")

    def times(x: float | None, base: float | None) -> str:
        return f"{x / base:.2f}" if x and base else "–"

    lines = ["| | save s | × raw | cold restore s | × raw (fresh arrays) | warm restore s | × pickle |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, save_key, cold_key in SUMMARY:
        st = results[save_key]
        if st.skipped or not st.samples["save"]:
            continue
        save = st.median("save")
        cold = results[cold_key].median("cold") if cold_key else None
        warm = results[save_key].median("warm") if cold_key and save_key != "raw" else None
        if save_key == "raw":
            warm = results["raw-alloc"].median("warm")
        lines.append(f"| {label} | {fmt(save, 3)} | {times(save, raw_save)} | {fmt(cold, 3)} | "
                     f"{times(cold, fresh_cold)} | {fmt(warm, 3)} | {times(warm, pk_warm)} |")
    return lines


def run_tiny(runner: Runner, count: int, repeat: int, log: Any) -> dict[str, Stats]:
    """Saves of ``count`` tiny arrays, each tool in a fresh process (as for the model sizes)."""
    results = {k: Stats() for k in TINY_SAVERS}
    spec = _model.tiny_spec(count)
    for r in range(repeat):
        shift = (r * len(TINY_SAVERS)) // max(1, repeat)
        for key in TINY_SAVERS[shift:] + TINY_SAVERS[:shift]:
            if results[key].skipped:
                continue
            work = tempfile.mkdtemp(dir=runner.run_dir, prefix=f"tiny-{key}-")
            try:
                res = runner.run(tool=key, op="save", size=0, tiny=count,
                                 path=os.path.join(work, _peers.BY_KEY[key].name))
                results[key].add("save", res)
                log(f"{count}x", r, key, "save", res, _model.total_bytes(spec))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return results


def tiny_table(results: dict[str, Stats], count: int) -> list[str]:
    raw, npz = results["raw"].median("save"), results["npz"].median("save")
    npz_over = (npz - raw) / count if npz and raw else None
    lines = ["| tool | save s | µs per array | overhead µs per array (over raw) | × np.savez's overhead | file MiB |",
             "|---|---:|---:|---:|---:|---:|"]
    for key in TINY_SAVERS:
        st = results[key]
        name = ROW_LABELS.get(key, key).split(" / ")[0]
        if st.skipped:
            lines.append(f"| {name} | skipped: {st.skipped} | | | | |")
            continue
        t = st.median("save")
        if t is None:
            lines.append(f"| {name} | {'; '.join(st.errors)[:200] or 'not run'} | | | | |")
            continue
        over = (t - raw) / count if raw is not None else None
        size = st.median("save", "file_bytes")
        lines.append(f"| {name} | {fmt(t, 3)} | {t / count * 1e6:.1f} | "
                     f"{'–' if over is None else f'{over * 1e6:.1f}'} | "
                     f"{f'{over / npz_over:.2f}x' if over is not None and npz_over else '–'} | "
                     f"{fmt(size / MiB if size else None, 2)} |")
    ck = results["ckpt"].median("save")
    if ck and npz and raw and npz_over:
        r = ((ck - raw) / count) / npz_over
        verdict = "PASS" if r <= 2 else "FAIL"
        lines += ["", f"- **{verdict}** [{count} arrays] per-array overhead <= 2x np.savez's: ckpt "
                  f"{(ck - raw) / count * 1e6:.1f} µs, np.savez {npz_over * 1e6:.1f} µs per array ({r:.2f}x)"]
    samples = [f"- {k}: " + ", ".join(f"{x:.3f}" for x in results[k].seconds("save")) for k in TINY_SAVERS
               if results[k].seconds("save")]
    return lines + ["", "<details><summary>all samples (seconds)</summary>", "", *samples, "", "</details>"]


def samples_block(results: dict[str, Stats]) -> list[str]:
    lines = []
    for key in ["raw", "raw-alloc", "raw-1core", "ckpt", "ckpt-views", "ckpt-objax", "ckpt-noverify", "ckpt-nohash",
                "ckpt-sha256", "ckpt-1core", "ckpt-jax-sync", "ckpt-jax-async", "ckpt-np-sync", "ckpt-np-async",
                *_peers.PEERS]:
        st = results[key]
        if st.skipped:
            continue
        parts = []
        for op in ("save", "cold", "warm"):
            xs = st.seconds(op)
            if xs:
                parts.append(f"{op} " + ", ".join(f"{x:.3f}" for x in xs))
        blocked = st.seconds("save", "blocked_s")
        if blocked:
            parts.append("blocked " + ", ".join(f"{x:.4f}" for x in blocked))
        first = st.seconds("save", "first_blocked_s")
        if first:
            parts.append("first save blocked " + ", ".join(f"{x:.4f}" for x in first))
        if parts:
            lines.append(f"- {key}: " + "; ".join(parts))
    return lines


def report(machine: dict[str, str], all_results: dict[int, dict[str, Stats]], args: argparse.Namespace,
           wall: float, load_start: str, load_end: str, rss_method: str,
           tiny: tuple[int, dict[str, Stats]] | None = None) -> str:
    out = [f"# ckpt benchmark — {machine['date'][:10]} on {machine['host']}", ""]
    out += [f"- **{k}**: {v}" for k, v in machine.items() if k not in ("date", "host")]
    large = ""
    if any(s > LARGE for s in all_results):
        large = (f" at sizes up to 1 GiB; over 1 GiB only {', '.join(LARGE_SAVERS)} (and the restores of their "
                 f"files), repeat {args.large_repeat}")
    out += [(f"- **run**: `{' '.join(args.argv)}`; sizes {', '.join(_model.size_label(s) for s in all_results)}, "
            f"repeat {args.repeat} (medians){large}; started {machine['date']}, took {wall / 60:.1f} min; load average "
            f"{load_start} at start, {load_end} at end"),
            (f"- **peak RSS**: {rss_method}, in a fresh process per tool and operation, growth over the RSS after "
            "the model (or restore target) was built"), ""]
    for size, results in all_results.items():
        spec = _model.spec(size)
        mb = _model.total_bytes(spec)
        out += [f"## {_model.size_label(size)} model ({mb / MiB:.1f} MiB of array data; {_model.describe(spec)})", ""]
        out += ["Issue 20's view (times over the raw limit's, lower is better; cold = page cache dropped, the raw "
                "cold restore reads into a freshly allocated `np.empty` as every real restore must):", ""]
        out += summary(results)
        out += ["", "Every row:", ""]
        out += table(results, mb)
        out += ["", cache_line(results), "", "Targets:", ""]
        out += targets(results, spec, _model.size_label(size))
        out += ["", "<details><summary>all samples (seconds)</summary>", ""]
        out += samples_block(results)
        out += ["", "</details>", ""]
    if tiny is not None:
        count, tiny_results = tiny
        spec = _model.tiny_spec(count)
        out += [f"## {count} tiny arrays ({_model.total_bytes(spec) / MiB:.2f} MiB: 16 to 64 float32 or bfloat16 "
                "values each; durable saves)", ""]
        out += tiny_table(tiny_results, count)
        out += [""]
    out += ["## Notes", "",
            ("- MiB = 2^20 bytes. Throughput is the model's array bytes divided by the time, for every tool (file "
            "sizes differ: headers, zip directories, manifests, orbax's compression). ×raw is the tool's throughput "
            "over the raw disk limit's, measured in the same run."),
            ("- Saves are durable for every tool: ckpt fsyncs the temp file, renames it and fsyncs the directory; "
            "orbax (tensorstore) fsyncs its files; for np.savez, objax, safetensors and pickle the benchmark fsyncs "
            "the file and its directory inside the timed region."),
            ("- Cold: every file of the checkpoint is fsynced and evicted with posix_fadvise(POSIX_FADV_DONTNEED) "
            "right before the timed restore, and mincore(2) confirms the eviction. The host of a virtual machine "
            "may still cache the disk below the guest: cold here means 'not in this kernel's page cache'."),
            "- Warm: every file is read once before the timed restore.",
            ("- Each measurement process first runs the same tool on a tiny model (imports, thread pools, first-call "
            "set-up excluded), then is timed once."),
            ]
    out += [f"- `{t.key}`: {t.note}" for t in _peers.TOOLS if t.note]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="64M,1G,4G", help="model sizes, comma-separated (default 64M,1G,4G)")
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement; medians are reported (default 3)")
    p.add_argument("--large-repeat", type=int, default=1,
                   help="runs per measurement at sizes over 1 GiB, which time only issue 20's savers (default 1)")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="where the Markdown report goes")
    p.add_argument("--quick", action="store_true", help="smoke test: sizes 16M,64M, repeat 1")
    p.add_argument("--tmpdir", default=os.path.join(ROOT, ".bench-tmp"),
                   help="where checkpoints are written (deleted afterwards; default <repo>/.bench-tmp)")
    p.add_argument("--tools", default="", help="only these savers (comma-separated keys; raw is always run)")
    p.add_argument("--tiny", type=int, default=10000,
                   help="also time saves of this many tiny arrays (default 10000; 0 to skip)")
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed for one measurement process")
    p.add_argument("--no-refill", action="store_true",
                   help="on a VM with free page reporting, do not refill memory before each timed operation")
    p.add_argument("-v", "--verbose", action="store_true", help="print workers' tracebacks")
    args = p.parse_args(argv)
    args.argv = ["benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]
    if args.quick:
        args.sizes, args.repeat = "16M,64M", 1
    sizes = [_model.parse_size(s) for s in args.sizes.split(",") if s.strip()]
    if args.repeat < 1 or args.large_repeat < 1 or not sizes:
        p.error("need at least one size, --repeat >= 1 and --large-repeat >= 1")
    if args.tools:
        wanted = {"raw", *(t.strip() for t in args.tools.split(","))}
        unknown = wanted - set(SAVERS)
        if unknown:
            p.error(f"unknown tools {sorted(unknown)}; choose from {SAVERS}")
        SAVERS[:] = [k for k in SAVERS if k in wanted]
        TINY_SAVERS[:] = [k for k in TINY_SAVERS if k in wanted or k in ("raw", "npz")]

    os.makedirs(args.tmpdir, exist_ok=True)
    run_dir = tempfile.mkdtemp(dir=args.tmpdir, prefix="run-")
    machine = _measure.machine(run_dir)
    load_start = _measure.loadavg()
    print(f"ckpt benchmark: sizes {args.sizes}, repeat {args.repeat}, files in {run_dir}", flush=True)
    for k, v in machine.items():
        print(f"  {k}: {v}", flush=True)
    t_start = time.perf_counter()
    memory = _measure.memory_behaviour()
    machine["memory"] = memory
    print(f"  memory: {memory}", flush=True)
    refill = _measure.page_reporting_on() and not args.no_refill
    machine["refill"] = ("yes: each process touches and frees the memory its operation will allocate right before "
                         "timing it (see Notes)" if refill else "no")
    runner = Runner(run_dir, args.timeout, args.verbose, refill)
    log = make_logger(t_start)
    all_results: dict[int, dict[str, Stats]] = {}
    try:
        for size in sizes:
            all_results[size] = {t.key: Stats() for t in _peers.TOOLS}
            run_size(runner, size, args.repeat if size <= LARGE else args.large_repeat, all_results[size], log)
        tiny = (args.tiny, run_tiny(runner, args.tiny, args.repeat, log)) if args.tiny > 0 else None
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        try:
            os.rmdir(args.tmpdir)  # only if empty: another run may be using it
        except OSError:
            pass
    wall = time.perf_counter() - t_start
    rss_method = _rss_method(all_results)
    text = report(machine, all_results, args, wall, load_start, _measure.loadavg(), rss_method, tiny)
    os.makedirs(args.out, exist_ok=True)
    host = re.sub(r"[^A-Za-z0-9_.-]+", "-", machine["host"]) or "host"
    name = f"{datetime.date.today().isoformat()}-{host}.md"
    for target in (os.path.join(args.out, name), os.path.join(args.out, "latest.md")):
        tmp = target + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, target)
    print()
    print(text)
    print(f"written to {os.path.join(args.out, name)} and {os.path.join(args.out, 'latest.md')}")
    return 0


def _rss_method(all_results: dict[int, dict[str, Stats]]) -> str:
    methods = {s.get("rss_method") for res in all_results.values() for st in res.values()
               for op in st.samples.values() for s in op}
    methods.discard(None)
    if methods == {"clear_refs+VmHWM"}:
        return ("exact: the kernel's high-water mark (VmHWM, what ru_maxrss reports) reset through "
                "/proc/self/clear_refs after the model was built, read after the operation")
    return ", ".join(sorted(m for m in methods if m)) or "not measured"


if __name__ == "__main__":
    sys.exit(main())
