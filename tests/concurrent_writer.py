"""A second process for tests/test_concurrency.py: holds the writer lock, saves, or dies mid-save.

Run as ``python tests/concurrent_writer.py MODE ARGS...``; numpy and ckpt only (no jax).
Each mode prints ``ready`` (flushed) once it reached the state the test waits for.

Modes:
  hold-lock LOCKFILE          take the directory's writer lock, print "ready", hold it until a line
                              (or EOF) arrives on stdin, then release it and exit.
  save LOGDIR START STEP COUNT KEEP [OPLOG [DELAY]]
                              after DELAY seconds, save COUNT checkpoints START, START+STEP, ... (content a
                              function of the index, see ``content``) with keep_ckpts=KEEP; with OPLOG,
                              append "pid op t_ns" for every file operation (through ckpt._io.ops).
  hang-mid-save LOGDIR IDX    start saving IDX, and inside the write (temp file open, lock held) print
                              "ready" and sleep until killed.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

SHAPE = (64, 128)  # 64 KiB of float64 per checkpoint: small, but each save takes a moment


def content(idx: int) -> dict[str, np.ndarray]:
    """What checkpoint ``idx`` holds; readers check a restored value against this."""
    return {
        "w": np.arange(SHAPE[0] * SHAPE[1], dtype=np.float64).reshape(SHAPE) + idx,
        "step": np.array(idx, dtype=np.int64),
    }


def target() -> dict[str, np.ndarray]:
    return {"w": np.zeros(SHAPE, np.float64), "step": np.zeros((), np.int64)}


def check(values: dict[str, np.ndarray], idx: int) -> None:
    want = content(idx)
    if not (np.array_equal(values["w"], want["w"]) and int(values["step"]) == idx):
        raise AssertionError(f"checkpoint {idx} holds the values of step {int(values['step'])}")


def _ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()


def hold_lock(lockfile: str) -> None:
    import filelock

    lock = filelock.FileLock(lockfile)
    lock.acquire()
    _ready()
    sys.stdin.readline()
    lock.release()


class _LoggingOps:
    """Wraps ckpt._io.ops: records when each file operation of a save starts (open_temp) and ends."""

    def __init__(self, inner, log_path: str, slow_s: float = 0.005):
        self.inner = inner
        self.log = open(log_path, "a", buffering=1)
        self.slow_s = slow_s

    def __getattr__(self, name):  # operations this wrapper does not time
        return getattr(self.inner, name)

    def _note(self, op: str) -> None:
        self.log.write(f"{os.getpid()} {op} {time.monotonic_ns()}\n")

    def open_temp(self, path):
        self._note("open_temp")
        return self.inner.open_temp(path)

    def fsync(self, f):
        time.sleep(self.slow_s)  # widen the window in which an unlocked second writer would interleave
        return self.inner.fsync(f)

    def replace(self, src, dst):
        out = self.inner.replace(src, dst)
        self._note("replace")
        return out

    def fsync_dir(self, directory):
        out = self.inner.fsync_dir(directory)
        self._note("fsync_dir")
        return out

    def unlink(self, path):
        self._note("unlink")
        return self.inner.unlink(path)


def save(logdir: str, start: int, step: int, count: int, keep: int, oplog: str = "", delay: float = 0.0) -> None:
    import ckpt
    from ckpt import _io

    if oplog:
        _io.ops = _LoggingOps(_io.ops, oplog)
    time.sleep(delay)
    ck = ckpt.Checkpoint(logdir, keep_ckpts=keep, verbose=False, lock_timeout=None)
    _ready()
    for k in range(count):
        idx = start + k * step
        ck.save(content(idx), idx)


class _HangOps:
    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def fsync(self, f):
        _ready()
        while True:
            time.sleep(60)


def hang_mid_save(logdir: str, idx: int) -> None:
    import ckpt
    from ckpt import _io

    _io.ops = _HangOps(_io.ops)
    ckpt.Checkpoint(logdir, verbose=False).save(content(idx), idx)


def main(argv: list[str]) -> None:
    mode, args = argv[0], argv[1:]
    if mode == "hold-lock":
        hold_lock(args[0])
    elif mode == "save":
        logdir, start, step, count, keep = args[0], int(args[1]), int(args[2]), int(args[3]), int(args[4])
        oplog = args[5] if len(args) > 5 else ""
        delay = float(args[6]) if len(args) > 6 else 0.0
        save(logdir, start, step, count, keep, oplog, delay)
    elif mode == "hang-mid-save":
        hang_mid_save(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
