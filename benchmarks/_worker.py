"""One measurement in a fresh process: ``python _worker.py '<json request>'``.

A request names a tool, an operation (``save`` or ``restore``), the cache state
for a restore (``cold`` or ``warm``), the model size and the checkpoint path; the
result (a JSON object) is written to the request's ``result`` path.

The order inside the process is fixed: import what the tool needs, build the
model (or the restore target), run the tool once on a tiny model (so one-time
costs — imports, thread pools, JIT, first-call set-up — stay out of the
timing), set the page-cache state, reset the peak-RSS mark, time the operation,
read the peak, and only then check the result against a freshly built model.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import shutil
import sys
import time
import traceback
import warnings
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _measure
import _model
import _peers

TINY = 256 << 10


def _imports(tool: _peers.Tool, *more: _peers.Tool) -> str:
    """'' when every module the tools need imports, else the reason it does not."""
    for t in (tool, *more):
        for mod in t.needs:
            try:
                importlib.import_module(mod)
            except Exception as e:  # noqa: BLE001 - ImportError, or a broken install raising anything
                return f"{mod} does not import ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return ""


def _phase(phases: dict[str, float], name: str, since: float) -> float:
    now = time.perf_counter()
    phases[name] = now - since
    return now


def _warmup(save_tool: _peers.Tool, restore_tool: Any, scratch: str) -> None:
    spec = _model.spec(TINY)
    tiny = _model.build(spec, seed=1)
    saver = type(save_tool)(spec)
    path = os.path.join(scratch, saver.name)
    saver.save(path, saver.prepare(tiny))
    if restore_tool is not None:
        r = type(restore_tool)(spec)
        r.as_numpy(r.restore(path, r.template()))


def _save(req: dict[str, Any], tool: _peers.Tool, spec: _model.Spec) -> dict[str, Any]:
    phases: dict[str, float] = {}
    mark = time.perf_counter()
    model = _model.build(spec, seed=req["seed"])
    # Kept until after the save even when the tool holds its own copy (JAX arrays, objax variables): memory
    # freed just before the timed region would make that tool's page-cache allocations cheaper than others'
    # on a VM that returns free memory to its host (see README).
    obj = tool.prepare(model)
    _warmup(tool, None, req["scratch"])
    gc.collect()
    mark = _phase(phases, "setup", mark)
    if req.get("refill"):
        _measure.refill(int(1.15 * _model.total_bytes(spec)) + (64 << 20))  # the page cache of the new file
    mark = _phase(phases, "refill", mark)
    peak = _measure.PeakRSS()
    peak.start()
    t0 = time.perf_counter()
    extra = tool.save(req["path"], obj)
    seconds = time.perf_counter() - t0
    seconds = float(extra.pop("seconds", seconds))  # a tool that times one part of what it ran says which
    out: dict[str, Any] = {"seconds": seconds, "rss_growth": peak.growth(), "rss_method": peak.method,
                           "rss_baseline": peak.baseline, "extra": extra}
    del obj, model
    gc.collect()
    out["file_bytes"] = _measure.size_of(req["path"])
    out["files"] = len(_measure.files_of(req["path"]))
    if "restore" not in tool.ops:  # nothing else reads this file back: check it here
        ok, why = _model.compare(tool.as_numpy(tool.check_saved(req["path"])), spec, req["seed"])
        out["correct"], out["why"] = ok, why
    _measure.evict(req["path"])
    out["resident_after_evict"] = _measure.resident_fraction(req["path"])
    _phase(phases, "check", t0 + seconds)
    out["phases"] = phases
    return out


def _restore(req: dict[str, Any], tool: _peers.Tool, source: _peers.Tool, spec: _model.Spec) -> dict[str, Any]:
    phases: dict[str, float] = {}
    mark = time.perf_counter()
    _warmup(source, tool, req["scratch"])
    template = tool.template()
    if req["cache"] == "cold":
        _measure.evict(req["path"])
    else:
        _measure.warm(req["path"])
    resident = _measure.resident_fraction(req["path"])
    gc.collect()
    mark = _phase(phases, "setup", mark)
    if req.get("refill"):  # the restored arrays, and for a cold restore the page cache too
        scale = 2.15 if req["cache"] == "cold" else 1.15
        _measure.refill(int(scale * _model.total_bytes(spec)) + (64 << 20))
    mark = _phase(phases, "refill", mark)
    peak = _measure.PeakRSS()
    peak.start()
    t0 = time.perf_counter()
    restored = tool.restore(req["path"], template)
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"seconds": seconds, "rss_growth": peak.growth(), "rss_method": peak.method,
                           "rss_baseline": peak.baseline, "resident_before": resident}
    ok, why = _model.compare(tool.as_numpy(restored), spec, req["seed"])
    out["correct"], out["why"] = ok, why
    _phase(phases, "check", t0 + seconds)
    out["phases"] = phases
    return out


def main() -> None:
    started = time.perf_counter()
    req = json.loads(sys.argv[1])
    warnings.simplefilter("ignore")
    spec = _model.tiny_spec(req["tiny"]) if req.get("tiny") else _model.spec(req["size"])
    tool = _peers.BY_KEY[req["tool"]](spec)
    source = _peers.BY_KEY[tool.source or tool.key](spec)
    os.makedirs(req["scratch"], exist_ok=True)
    try:
        reason = _imports(tool, source)
        if reason:
            result: dict[str, Any] = {"skipped": reason}
        elif req["op"] == "save":
            result = _save(req, tool, spec)
        else:
            result = _restore(req, tool, source, spec)
    except Exception as e:  # noqa: BLE001 - reported as an error row, never a crash
        result = {"error": f"{type(e).__name__}: {e}"[:500], "traceback": traceback.format_exc()[-3000:]}
    finally:
        shutil.rmtree(req["scratch"], ignore_errors=True)
    result["process_s"] = time.perf_counter() - started
    with open(req["result"], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
