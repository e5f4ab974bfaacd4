"""Cases run inside the workers of tests/dist_worker.py (every process runs the same function)."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import ckpt

SPECS = {"row": P("x", None), "col": P(None, "x"), "rep": P(), "grid": P("a", "b")}


def mesh(kind: str) -> Mesh:
    devs = np.array(jax.devices())
    if kind == "grid":
        return Mesh(devs.reshape(2, -1), ("a", "b"))
    return Mesh(devs, ("x",))


def expected(step: int, shape: tuple[int, ...] = (8, 12)) -> dict[str, np.ndarray]:
    w = (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + step)
    return {"w": w, "b": np.arange(shape[1], dtype=np.int32) * step}


def state(step: int, spec: str, shape: tuple[int, ...] = (8, 12)) -> dict[str, Any]:
    sh = NamedSharding(mesh(spec), SPECS[spec])
    e = expected(step, shape)
    w = jax.make_array_from_callback(e["w"].shape, sh, lambda idx: e["w"][idx])
    rep = NamedSharding(mesh(spec), P())
    b = jax.make_array_from_callback(e["b"].shape, rep, lambda idx: e["b"][idx])
    return {"params": {"w": w, "b": b}, "step": np.int64(step)}


def save(logdir: str, step: int, spec: str, block: bool = True, timeout: float = 20.0, keep: int = 3,
         shape: Any = (8, 12), piece_bytes: int = 4 << 20) -> dict[str, Any]:
    ckpt.distributed.writer.PIECE_BYTES = piece_bytes  # a setting: how finely shards are cut
    ck = ckpt.Checkpoint(logdir, keep_ckpts=keep, coordination_timeout=timeout)
    st = state(step, spec, tuple(shape))
    opt = {"mu": st["params"]["w"] * 2}
    t0 = time.perf_counter()
    ck.save(st, idx=step, extras={"opt": opt, "config": {"lr": 0.5, "step": step}}, metrics={"loss": 1.0 / (step + 1)},
            block=block)
    blocked = time.perf_counter() - t0
    ck.close()
    return {"blocked": blocked, "process": jax.process_index()}


def restore(logdir: str, spec: str, idx: Any = None, timeout: float = 20.0, shape: Any = (8, 12)) -> dict[str, Any]:
    """Load into ``spec`` sharding; compare each local shard with the expected values."""
    ck = ckpt.Checkpoint(logdir, coordination_timeout=timeout, makedir=False)
    sh = NamedSharding(mesh(spec), SPECS[spec])
    rep = NamedSharding(mesh(spec), P())
    shape = tuple(shape)
    template = {"params": {"w": jax.ShapeDtypeStruct(shape, np.float32, sharding=sh),
                           "b": jax.ShapeDtypeStruct((shape[1],), np.int32, sharding=rep)},
                "step": jax.ShapeDtypeStruct((), np.int64)}
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tree = ck.load(idx, template=template)
    stats = ckpt.distributed.last_restore_stats()
    step = int(np.asarray(tree["step"]))
    e = expected(step, shape)
    ok = all(np.array_equal(np.asarray(s.data), e["w"][s.index]) for s in tree["params"]["w"].addressable_shards)
    ok = ok and all(np.array_equal(np.asarray(s.data), e["b"][s.index]) for s in tree["params"]["b"].addressable_shards)
    assert tree["params"]["w"].sharding == sh
    extras = ck.load_extras(names=["config", "opt"])
    ok = ok and extras["config"] == {"lr": 0.5, "step": step}
    ok = ok and np.array_equal(extras["opt"]["mu"], e["w"] * 2)
    return {"step": step, "ok": bool(ok), "bytes_read": stats["bytes_read"], "chunks_read": stats["chunks_read"], "warnings": [str(w.message) for w in caught]}


def save_disagree(logdir: str, timeout: float = 20.0) -> str:
    """Process 1 saves a different shape: every process must raise the same PreflightError."""
    shape = (8, 12) if jax.process_index() == 0 else (8, 16)
    ck = ckpt.Checkpoint(logdir, coordination_timeout=timeout)
    st = state(3, "row", shape) if jax.process_index() == 0 else _local_state(shape)
    ck.save(st, idx=99)
    return "saved"


def _local_state(shape: tuple[int, ...]) -> dict[str, Any]:
    # A different shape cannot come from one global array; this process builds its own.
    return state(3, "row", (8, 12)) | {"params": {"w": state(3, "row", (8, 12))["params"]["w"],
                                                  "b": jax.numpy.zeros((shape[1],), np.int32)}}


def save_kill_one(logdir: str, step: int, victim: int = 1, timeout: float = 10.0) -> dict[str, Any]:
    """The victim SIGKILLs itself while its shard file is being written; the others must fail in time."""
    if jax.process_index() == victim:
        def watch() -> None:
            d = os.path.join(logdir, "ckpt")
            while True:
                for name in os.listdir(d) if os.path.isdir(d) else []:
                    if ".shards-" in name and os.path.isdir(os.path.join(d, name)):
                        os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(0.001)
        threading.Thread(target=watch, daemon=True).start()
    t0 = time.perf_counter()
    ck = ckpt.Checkpoint(logdir, keep_ckpts=3, coordination_timeout=timeout)
    ck.save(state(step, "row", (2048, 1024)), idx=step)
    return {"elapsed": time.perf_counter() - t0}


def save_bad_input(logdir: str, timeout: float = 20.0) -> str:
    """Process 1 passes a reserved extras name: both processes must raise (not process 0 hang)."""
    ck = ckpt.Checkpoint(logdir, coordination_timeout=timeout)
    extras = {"module": 1} if jax.process_index() == 1 else {"other": 1}
    ck.save(state(5, "row"), idx=5, extras=extras)
    return "saved"


def save_disk_full(logdir: str, step: int, block: bool = True, timeout: float = 20.0) -> str:
    """Process 1 may write only 4 KiB per file (RLIMIT_FSIZE: the kernel's EFBIG, like a full disk)."""
    import resource

    ck = ckpt.Checkpoint(logdir, coordination_timeout=timeout)
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if jax.process_index() == 1:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, old[1]))
    try:
        ck.save(state(step, "row", (256, 64)), idx=step, block=block)
        ck.wait()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)
        ck._finish_pending(raise_error=False)
    return "saved"


def restore_in_place(logdir: str, spec: str, timeout: float = 20.0) -> dict[str, Any]:
    """restore() into a dict of global arrays (and a sharded extra): updated in place, shardings kept."""
    ck = ckpt.Checkpoint(logdir, coordination_timeout=timeout, makedir=False)
    target = state(0, spec)["params"]
    flat = {"w": target["w"], "b": target["b"]}
    opt = {"mu": jax.numpy.zeros_like(target["w"])}
    extras: dict[str, Any] = {"opt": opt, "config": None}
    idx, _ = ck.restore(flat, extras=extras, renamer=lambda n: n.removeprefix("params/"), strict=False)
    e = expected(idx)
    checks = [all(np.array_equal(np.asarray(s.data), e["w"][s.index]) for s in flat["w"].addressable_shards),
              flat["w"].sharding == target["w"].sharding,
              all(np.array_equal(np.asarray(s.data), 2 * e["w"][s.index]) for s in extras["opt"]["mu"].addressable_shards)]
    return {"idx": idx, "ok": all(checks), "checks": checks, "config": extras["config"]}


def kv_keys() -> list[str]:
    """The keys ckpt left in the coordination service's store."""
    from jax._src import distributed

    return sorted(k for k, _ in distributed.global_state.client.key_value_dir_get("ckpt/"))
