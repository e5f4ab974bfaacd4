"""Checkpoint directories shared by real processes: the writer lock, SIGKILL, readers racing rotation.

The other processes run ``tests/concurrent_writer.py`` with this interpreter
(numpy and ckpt only). Every wait has a timeout and every child is killed in
teardown, so a broken lock fails a test instead of hanging the suite.
"""

from __future__ import annotations

import itertools
import os
import select
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest
from concurrent_writer import check, content, target

import ckpt
from ckpt.errors import LockedError

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "concurrent_writer.py")
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes and signals")


class Child:
    """A helper process; ``ready()`` waits for its "ready" line."""

    def __init__(self, *args: object, tmp_path) -> None:
        self.err_path = tmp_path / f"child-{time.monotonic_ns()}.err"
        self._err = open(self.err_path, "w")
        self.proc = subprocess.Popen([sys.executable, HELPER, *map(str, args)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err, text=True, bufsize=1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        self._err.flush()
        return self.err_path.read_text()[-3000:]

    def ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if r:
                line = self.proc.stdout.readline()
                if line.strip() == "ready":
                    return
                if not line:
                    break
            elif self.proc.poll() is not None:
                break
        pytest.fail(f"helper {self.proc.args[2:]} never got ready (exit {self.proc.poll()}): {self.stderr()}")

    def send(self, line: str = "go") -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float = 60.0) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"helper {self.proc.args[2:]} did not finish in {timeout} s: {self.stderr()}")
        assert rc == 0, f"helper {self.proc.args[2:]} failed with exit code {rc}: {self.stderr()}"
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except (OSError, ValueError):
                pass
        self._err.close()


@pytest.fixture
def spawn(tmp_path):
    children: list[Child] = []

    def make(*args: object) -> Child:
        child = Child(*args, tmp_path=tmp_path)
        children.append(child)
        return child

    yield make
    for child in children:
        child.close()


def temp_files(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith(".") and n.endswith(".tmp"))


def lock_path(ck: ckpt.Checkpoint) -> str:
    return os.path.join(ck.directory, ck.LOCK_NAME)


def verify_checkpoint(ck: ckpt.Checkpoint, idx: int) -> None:
    with ckpt.Pack(ck.path(idx)) as pack:
        pack.verify()
    t = target()
    assert ck.restore(t, idx=idx)[0] == idx
    check(t, idx)


# -- the writer lock ---------------------------------------------------------------------------------
def test_a_held_lock_times_out_with_locked_error_then_waiting_succeeds(tmp_path, spawn):
    ck = ckpt.Checkpoint(str(tmp_path), verbose=False, lock_timeout=0.2)
    holder = spawn("hold-lock", lock_path(ck))
    holder.ready()

    t0 = time.monotonic()
    with pytest.raises(LockedError) as info:
        ck.save(content(1), 1)
    elapsed = time.monotonic() - t0
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, ckpt.CkptError)
    assert ck.directory in str(info.value)
    assert 0.15 <= elapsed < 5, elapsed
    assert ck.indices() == [] and temp_files(ck.directory) == []

    # lock_timeout=None waits for the holder, however long, then saves.
    waiting = ckpt.Checkpoint(str(tmp_path), verbose=False, lock_timeout=None)
    outcome: dict[str, object] = {}

    def save() -> None:
        try:
            outcome["path"] = waiting.save(content(2), 2)
        except BaseException as e:  # noqa: BLE001 - reported below
            outcome["error"] = e

    thread = threading.Thread(target=save, daemon=True)
    thread.start()
    time.sleep(0.6)
    assert thread.is_alive(), f"save did not wait for the lock: {outcome}"
    assert not os.path.exists(ck.path(2))
    holder.send("release")
    thread.join(30)
    assert not thread.is_alive(), "save still waiting after the holder released the lock"
    assert "error" not in outcome, outcome.get("error")
    assert outcome["path"] == ck.path(2)
    holder.wait()
    verify_checkpoint(ck, 2)
    assert ck.indices() == [2] and temp_files(ck.directory) == []


def test_a_lock_holder_killed_with_sigkill_does_not_block_the_next_writer(tmp_path, spawn):
    ck = ckpt.Checkpoint(str(tmp_path), verbose=False, lock_timeout=1.0)
    holder = spawn("hold-lock", lock_path(ck))
    holder.ready()
    with pytest.raises(LockedError):
        ckpt.Checkpoint(str(tmp_path), verbose=False, lock_timeout=0.1).save(content(1), 1)
    holder.kill()

    t0 = time.monotonic()
    ck.save(content(1), 1)
    assert time.monotonic() - t0 < 1.0
    verify_checkpoint(ck, 1)


def test_a_writer_killed_mid_save_leaves_nothing_that_counts(tmp_path, spawn):
    """Killed with the temp file half written and the lock held: nothing is listed, the lock is freed,
    and the next writer removes the dead writer's temp file."""
    ck = ckpt.Checkpoint(str(tmp_path), verbose=False, lock_timeout=1.0)
    ck.save(content(4), 4)
    writer = spawn("hang-mid-save", str(tmp_path), 5)
    writer.ready()
    stale = temp_files(ck.directory)
    assert len(stale) == 1 and str(writer.pid) in stale[0], stale

    assert ck.indices() == [4] and ck.latest() == 4
    assert ck.wait_for_new(after=4, timeout=0.3) is None  # a temp file is not a checkpoint
    with pytest.raises(LockedError):
        ckpt.Checkpoint(str(tmp_path), verbose=False, lock_timeout=0.2).save(content(6), 6)

    writer.kill()
    t0 = time.monotonic()
    ck.save(content(6), 6)
    assert time.monotonic() - t0 < 1.0
    assert temp_files(ck.directory) == [], "the dead writer's temp file was not cleaned up"
    assert ck.indices() == [4, 6]
    verify_checkpoint(ck, 6)


# -- two writers -------------------------------------------------------------------------------------
def _intervals(oplog: str) -> list[tuple[int, int, int]]:
    """(pid, start, end) of each save: from its temp file's creation to its directory fsync after the rename."""
    out = []
    open_at: dict[int, int] = {}
    with open(oplog) as f:
        for line in f:
            pid_s, op, t_s = line.split()
            pid, t = int(pid_s), int(t_s)
            if op == "open_temp":
                assert pid not in open_at, "a process started a second save before finishing the first"
                open_at[pid] = t
            elif op == "fsync_dir" and pid in open_at:
                out.append((pid, open_at.pop(pid), t))
    assert not open_at, f"saves that never finished: {open_at}"
    return out


def test_two_writer_processes_never_interleave(tmp_path, spawn):
    logdir = str(tmp_path)
    oplog = str(tmp_path / "ops.log")
    n = 20
    a = spawn("save", logdir, 2, 2, n, 1000, oplog)  # 2, 4, ..., 40
    b = spawn("save", logdir, 1, 2, n, 1000, oplog)  # 1, 3, ..., 39
    a.ready()
    b.ready()
    a.wait(120)
    b.wait(120)

    ck = ckpt.Checkpoint(logdir, verbose=False)
    assert ck.indices() == list(range(1, 2 * n + 1))
    for idx in ck.indices():
        verify_checkpoint(ck, idx)
    assert temp_files(ck.directory) == []

    saves = sorted(_intervals(oplog), key=lambda s: s[1])
    assert len(saves) == 2 * n
    assert {pid for pid, _, _ in saves} == {a.pid, b.pid}
    for (pid1, _s1, e1), (pid2, s2, _e2) in itertools.pairwise(saves):
        assert e1 <= s2, f"save of process {pid2} started while process {pid1}'s was in progress"


# -- a reader racing a writer's rotation -------------------------------------------------------------
def test_a_reader_only_sees_complete_checkpoints_while_a_writer_rotates(tmp_path, spawn):
    logdir = str(tmp_path)
    n = 200
    reader = ckpt.Checkpoint(logdir, keep_ckpts=2, verbose=False)
    writer = spawn("save", logdir, 1, 1, n, 2)
    writer.ready()

    seen_first = False
    last_restored = 0
    restores = 0
    latest_calls = 0
    deadline = time.monotonic() + 120
    while True:
        finished = writer.proc.poll() is not None
        latest: int | None = reader.latest()
        latest_calls += 1
        if latest is None:
            assert not seen_first, "latest() found no checkpoint after one was committed"
        else:
            seen_first = True
        t = target()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            idx, path = reader.restore(t)
        assert not caught, [str(w.message) for w in caught]
        if idx == 0:
            assert path == "" and not seen_first, "restore() found no checkpoint after one was committed"
        else:
            seen_first = True
            check(t, idx)
            assert idx >= last_restored, f"restored {idx} after {last_restored}"
            assert latest is None or idx >= latest
            last_restored = idx
            restores += 1
        if finished:
            break
        assert time.monotonic() < deadline, "the writer did not finish"
    writer.wait()

    assert last_restored == n
    assert restores >= 10, f"only {restores} restores overlapped the writer: the race was not exercised"
    assert reader.indices() == [n - 1, n]
    assert temp_files(reader.directory) == []


# -- an evaluator following a trainer -----------------------------------------------------------------
def test_wait_for_new_returns_the_next_committed_index_or_none(tmp_path, spawn):
    logdir = str(tmp_path)
    ck = ckpt.Checkpoint(logdir, verbose=False)
    ck.save(content(3), 3)

    t0 = time.monotonic()
    assert ck.wait_for_new(after=3, timeout=0.3) is None
    assert 0.25 <= time.monotonic() - t0 < 5
    assert ck.wait_for_new(after=2, timeout=0.3) == 3

    trainer = spawn("save", logdir, 4, 1, 3, 10, "", 0.3)  # commits 4, 5, 6 after 0.3 s
    trainer.ready()
    got = ck.wait_for_new(after=3, timeout=60)
    assert got == 4, got
    t = target()
    assert ck.restore(t, idx=got)[0] == 4  # what it announced is complete and verified
    check(t, 4)
    trainer.wait()
    assert ck.wait_for_new(after=4, timeout=5) == 5
    assert ck.wait_for_new(after=6, timeout=0.2) is None
    assert ck.indices() == [3, 4, 5, 6]
