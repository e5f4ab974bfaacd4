"""SIGKILL a saving process at random moments; the checkpoint directory must stay consistent.

``crash_saver.py`` runs a training-like loop (one ~4-16 MB checkpoint per step,
``keep_ckpts=2``, each returned save logged with fsync). This test starts it,
kills it with SIGKILL after a random delay spread over several save cycles,
and checks after every kill that:

(a) ``restore()`` returns the newest checkpoint whose save returned, or the one
    after it (renamed into place, killed before it was logged), never an older
    one: rotation never deleted the last committed checkpoint;
(b) the restored arrays and extras are exactly the step's deterministic content
    and the file passes ``Pack.verify()``;
(c) every final-named file in ``<logdir>/ckpt`` verifies fully (sha256 of every
    member) and is its step's (never a partial final-named file); rotation
    leaves a contiguous run of the newest and had run by the last logged save;
(d) no ``CorruptCheckpointWarning`` was needed;
(e) temp files are never listed or restored, and once a later saver has
    completed a save, no temp file of a dead writer is left.

The same logdir is reused across kills (each saver resumes at ``latest() + 1``),
so later savers meet the stale temp files of earlier ones.

It runs uncompressed and with ``compression="zstd"`` (whose saves write ``.ckz``
members through the codec threads). The number of kills is ``CKPT_KILLS``
(default 25; the full run uses 200; the zstd run makes a third as many), the
seed of the kill delays ``CKPT_KILL_SEED``. Run with ``-rP`` to see the report
(kills survived, checkpoints saved, where the kills landed).
"""

from __future__ import annotations

import itertools
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
import warnings

import crash_saver
import numpy as np
import pytest

import ckpt
from ckpt import _io
from ckpt.errors import CorruptCheckpointWarning

SAVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crash_saver.py")
KILLS = int(os.environ.get("CKPT_KILLS", "25"))
SEED = int(os.environ.get("CKPT_KILL_SEED", "20261121"))
READY_TIMEOUT = 60.0


def is_final(name: str) -> bool:
    """A final checkpoint name as Checkpoint.path() makes it ('0000000007.npz')."""
    m = re.fullmatch(r"(\d+)\.npz", name)
    return m is not None and name == ckpt.Checkpoint.FILE_FORMAT % int(m.group(1))


pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")


def _read_committed(path: str) -> list[tuple[int, float]]:
    """(step, seconds after the saver's start) of every save that returned, in order."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    # The saver writes whole lines with one write(); a line cut by the kill was never logged as committed.
    out = []
    for line in text.split("\n")[:-1]:
        step, seconds = line.split()
        out.append((int(step), float(seconds)))
    return out


class KillTimer:
    """Spreads kill delays over a fresh saver's first save and a few more.

    A save in a newly started process is slower than in a warm one, and the load of a shared
    machine varies, so the estimates come from the savers' own logs: a calibration run first,
    then every killed run (the last ``window`` samples).
    """

    def __init__(self, rnd: random.Random, window: int = 15):
        self.rnd = rnd
        self.window = window
        self.first: list[float] = []  # from "ready" to the first save returned
        self.each: list[float] = []  # between two returned saves

    def observe(self, times: list[float]) -> None:
        if times:
            self.first = (self.first + [times[0]])[-self.window:]
        self.each = (self.each + [b - a for a, b in itertools.pairwise(times)])[-self.window:]

    @staticmethod
    def median(xs: list[float], default: float = 0.1) -> float:
        return sorted(xs)[len(xs) // 2] if xs else default

    @property
    def spread(self) -> float:
        each = self.median(self.each)
        return self.median(self.first, each) + 3 * each

    def delay(self) -> float:
        return self.rnd.uniform(0.0, self.spread)


def _start_saver(logdir: str, committed: str, *args: str) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ)
    env.pop("SOURCE_DATE_EPOCH", None)
    proc = subprocess.Popen([sys.executable, SAVER, logdir, committed, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
    line = proc.stdout.readline().decode() if ready else ""
    if not line.startswith("ready "):
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"saver did not start (got {line!r}); stderr:\n{err.decode(errors='replace')}")
    return proc, int(line.split()[1])


def _check_file(ck: ckpt.Checkpoint, idx: int, compression: str | None) -> None:
    """A final-named checkpoint file verifies fully (every member's sha256) and is step ``idx``'s.

    The big array's bytes are compared only for the restored checkpoint; here the hashes prove the
    file is what its writer wrote, and the small arrays, shapes and extras say which step wrote it.
    """
    path = ck.path(idx)
    expected = crash_saver.make_arrays(idx)
    with ckpt.Pack(path) as pack:
        pack.verify()
        assert pack.load("meta") == crash_saver.expected_meta(idx), path
        view = pack.arrays()
        assert sorted(view.names) == sorted(expected), path
        for name, arr in expected.items():
            shape, dtype = view.shape_dtype(name)
            assert (tuple(shape), np.dtype(dtype)) == (arr.shape, arr.dtype), (path, name)
        for name in ("step", "w", "noise", "weights"):
            assert np.array_equal(view.read(name), expected[name]), f"{path}: {name!r} is not step {idx}'s"
        weights = pack.slots_info["main"].members[1 + view.names.index("weights")]
        assert weights.endswith(".ckz" if compression else ".npy"), (path, weights)


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_sigkill_during_saves_never_loses_or_corrupts_a_checkpoint(tmp_path, compression):
    if compression:
        pytest.importorskip("zstandard")
    kills = KILLS if compression is None else max(5, KILLS // 3)  # the compressed path: a third as many
    options = ("--compression", compression) if compression else ()
    timer = KillTimer(random.Random(SEED))
    calibration = str(tmp_path / "calibration.log")
    proc, _ = _start_saver(str(tmp_path / "calibration"), calibration, "--steps", "4", *options)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode(errors="replace")
    assert [s for s, _ in _read_committed(calibration)] == [1, 2, 3, 4]
    timer.observe([t for _, t in _read_committed(calibration)])

    logdir = str(tmp_path / "run")
    committed = str(tmp_path / "committed.log")
    ck = ckpt.Checkpoint(logdir, keep_ckpts=crash_saver.KEEP, verbose=False)
    outcomes = {"before first save returned": 0, "temp file of the killed saver left": 0,
                "renamed but not logged": 0}
    prev_latest = 0
    started_kills = time.perf_counter()

    for kill in range(1, kills + 1):
        proc, first_step = _start_saver(logdir, committed, *options)
        assert first_step == prev_latest + 1, "the saver must resume at latest() + 1"
        time.sleep(timer.delay())
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"saver exited by itself with {proc.returncode} before kill {kill}:\n"
                        f"{err.decode(errors='replace')}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()  # reap it: its pid is now dead, as after a real crash
        assert proc.returncode == -signal.SIGKILL

        log = _read_committed(committed)
        logged = [step for step, _ in log]
        max_logged = max(logged, default=0)
        this_run = [step for step in logged if step >= first_step]
        timer.observe([t for step, t in log if step >= first_step])
        indices = ck.indices()
        names = sorted(os.listdir(ck.directory))
        where = f"kill {kill} (saver pid {proc.pid}, steps {first_step}..; logged up to {max_logged}; files {names})"
        assert this_run == list(range(first_step, first_step + len(this_run))), f"{where}: log {this_run}"

        # Everything in the directory is a final-named checkpoint, the lock, or a well-formed temp
        # file of a checkpoint, which indices() never lists.
        temps = []
        for name in names:
            if name == ckpt.Checkpoint.LOCK_NAME or is_final(name):
                continue
            parsed = _io.parse_temp_name(name)
            assert parsed is not None, f"{where}: unexpected file {name!r}"
            assert is_final(parsed[0]), f"{where}: temp {name!r} of a non-checkpoint"
            temps.append(parsed)
        assert [os.path.basename(ck.path(i)) for i in indices] == [n for n in names if is_final(n)]

        # (e) a saver that completed a save removed every temp file of the dead savers before it.
        if this_run:
            stale = [f".{target}.{pid}.*" for target, pid in temps if pid != proc.pid]
            assert not stale, f"{where}: temp files of dead savers survived a completed save: {stale}"

        if any(pid == proc.pid for _, pid in temps):
            outcomes["temp file of the killed saver left"] += 1
        if not this_run:
            outcomes["before first save returned"] += 1

        if not indices:  # only possible before any save ever returned
            assert max_logged == 0 and prev_latest == 0, f"{where}: no checkpoint left"
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                assert ck.restore({}) == (0, ""), f"{where}: restored a temp file"
            assert not caught, where
            continue

        # (a) the newest committed checkpoint survives, and nothing newer than one unlogged save appears.
        latest = indices[-1]
        assert latest >= max_logged, f"{where}: latest {latest} is older than the last returned save {max_logged}"
        assert latest >= prev_latest, f"{where}: latest went back from {prev_latest} to {latest}"
        assert latest <= max(max_logged, prev_latest) + 1, f"{where}: latest {latest} was never saved"
        # Rotation keeps a contiguous run of the newest, and it had finished when the last logged save
        # returned (a kill between a rename and its rotation may leave more, never fewer).
        assert indices == list(range(indices[0], latest + 1)), f"{where}: rotation left a gap"
        if max_logged:
            assert indices[0] >= max_logged - crash_saver.KEEP + 1, f"{where}: rotation did not run"
        if latest == max(max_logged, prev_latest) + 1:
            outcomes["renamed but not logged"] += 1

        # (b) + (d): restore() picks the newest without any fallback; content and hashes are exact.
        target = crash_saver.target_for(latest)
        extras = {"meta": None}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            idx, path = ck.restore(target, extras=extras)
        corrupt = [w for w in caught if issubclass(w.category, CorruptCheckpointWarning)]
        assert not corrupt, f"{where}: restore needed a fallback: {[str(w.message) for w in corrupt]}"
        assert not caught, f"{where}: unexpected warnings {[str(w.message) for w in caught]}"
        assert (idx, path) == (latest, ck.path(latest)), where
        assert extras["meta"] == crash_saver.expected_meta(latest), where
        for name, arr in crash_saver.make_arrays(latest).items():
            assert np.array_equal(target[name], arr), f"{where}: restored {name!r} is not step {latest}'s"

        # (c) every final-named file verifies fully and holds its step's content.
        for i in indices:
            _check_file(ck, i, compression)
        prev_latest = latest

    elapsed = time.perf_counter() - started_kills
    total_saves = ck.latest() or 0
    report = (f"SIGKILL harness ({compression or 'uncompressed'}): {kills} kills survived, {total_saves} checkpoints saved, in {elapsed:.1f} s; "
              f"a fresh saver's first save returned after ~{timer.median(timer.first) * 1000:.0f} ms, then one every "
              f"~{timer.median(timer.each) * 1000:.0f} ms; last kill delays uniform in 0..{timer.spread * 1000:.0f} ms; "
              f"outcomes {outcomes}")
    print(report)
    # Not vacuous: the savers made progress, and kills landed inside saves (a temp file left behind).
    assert total_saves >= max(1, kills // 5), f"the savers made too little progress to test anything: {report}"
    assert outcomes["temp file of the killed saver left"] > 0 or kills < 10, f"no kill landed inside a save: {report}"
