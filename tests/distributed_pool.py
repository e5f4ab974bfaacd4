"""A pool of real worker processes forming one jax.distributed job, driven case by case."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pool:
    def __init__(self, nproc: int, ndev: int, *, env: dict[str, str] | None = None, start_timeout: float = 120):
        self.nproc = nproc
        addr = f"127.0.0.1:{free_port()}"
        full_env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **(env or {}))
        full_env.pop("XLA_FLAGS", None)
        self.procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "dist_worker.py"), addr, str(nproc),
                                        str(p), str(ndev)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, env=full_env)
                      for p in range(nproc)]
        self.queues: list[queue.Queue[Any]] = [queue.Queue() for _ in range(nproc)]
        self.stderr: list[list[str]] = [[] for _ in range(nproc)]
        for p, proc in enumerate(self.procs):
            threading.Thread(target=self._pump, args=(p, proc), daemon=True).start()
            threading.Thread(target=self._drain, args=(p, proc), daemon=True).start()
        ready = self._collect(range(nproc), start_timeout)
        for r in ready:
            if "ready" not in r:
                raise RuntimeError(f"worker failed to start: {r}\n{self.log()}")

    def _pump(self, p: int, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("@@"):
                self.queues[p].put(json.loads(line[2:]))
        self.queues[p].put({"exited": proc.wait()})

    def _drain(self, p: int, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.stderr[p].append(line)
            del self.stderr[p][:-200]

    def log(self) -> str:
        return "\n".join(f"--- worker {p} ---\n" + "".join(lines[-40:]) for p, lines in enumerate(self.stderr))

    def _collect(self, which: Any, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        out = []
        for p in which:
            try:
                out.append(self.queues[p].get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                out.append({"timeout": True})
        return out

    def send(self, case: str, procs: Any = None, **kw: Any) -> None:
        for p in (range(self.nproc) if procs is None else procs):
            stdin = self.procs[p].stdin
            assert stdin is not None
            stdin.write(json.dumps({"case": case, "kw": kw}) + "\n")
            stdin.flush()

    def run(self, case: str, wait: float = 90, **kw: Any) -> list[Any]:
        """Run one case on every process; returns each one's result (the case's return value)."""
        self.send(case, **kw)
        results = self._collect(range(self.nproc), wait)
        bad = [r for r in results if "ok" not in r]
        if bad:
            raise AssertionError(f"case {case} failed: {bad}\n{self.log()}")
        return [r["ok"] for r in results]

    def run_raw(self, case: str, wait: float = 90, **kw: Any) -> list[Any]:
        self.send(case, **kw)
        return self._collect(range(self.nproc), wait)

    def kill(self, p: int) -> None:
        self.procs[p].send_signal(signal.SIGKILL)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait(timeout=30)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    try:
                        pipe.close()
                    except (OSError, ValueError):
                        pass
