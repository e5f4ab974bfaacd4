"""SIGKILL during incremental saves and their collection: every committed checkpoint stays restorable.

The saver of test_crash_kill.py (``crash_saver.py --incremental``) saves a frozen 2 MiB array
(one shared object for the whole run) beside arrays that change every step (new objects), with
``keep_ckpts=2``, so each save also deletes a checkpoint and the objects only it referred to. It is
killed at random points; after each kill the newest committed checkpoint restores exactly without
a fallback, every committed file verifies (its shared objects included), and the objects folder
holds every object a committed checkpoint refers to, plus at most the objects of the one save the
kill interrupted (the next completed save's collection removes those).
"""

from __future__ import annotations

import os
import random
import signal
import time
import warnings

import crash_saver
import numpy as np
import pytest
from test_crash_kill import SEED, KillTimer, _read_committed, _start_saver

import ckpt
from ckpt.errors import CorruptCheckpointWarning
from ckpt.incremental._refs import file_references

KILLS = max(4, int(os.environ.get("CKPT_KILLS", "25")) // 3)
CHANGING = 2  # arrays over the object threshold that change every step ("big", "weights")

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")


def test_sigkill_during_incremental_saves_never_loses_a_checkpoint_or_an_object_it_needs(tmp_path):
    timer = KillTimer(random.Random(SEED + 18))
    calibration = str(tmp_path / "calibration.log")
    proc, _ = _start_saver(str(tmp_path / "calibration"), calibration, "--steps", "4", "--incremental")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode(errors="replace")
    timer.observe([t for _, t in _read_committed(calibration)])

    logdir, committed = str(tmp_path / "run"), str(tmp_path / "committed.log")
    ck = ckpt.Checkpoint(logdir, keep_ckpts=crash_saver.KEEP, verbose=False)
    store = ckpt.incremental.ObjectStore(ck.storage)
    prev_latest, orphans_seen = 0, 0
    for kill in range(1, KILLS + 1):
        proc, first_step = _start_saver(logdir, committed, "--incremental")
        assert first_step == prev_latest + 1
        time.sleep(timer.delay())
        assert proc.poll() is None, proc.communicate()[1].decode(errors="replace")
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        log = _read_committed(committed)
        timer.observe([t for step, t in log if step >= first_step])
        max_logged = max((s for s, _ in log), default=0)
        indices = ck.indices()
        where = f"kill {kill} (steps {first_step}..; logged up to {max_logged}; checkpoints {indices})"
        if not indices:
            assert max_logged == 0, where
            continue
        latest = indices[-1]
        assert latest >= max(max_logged, prev_latest), where
        target = crash_saver.target_for(latest, True)
        extras = {"meta": None}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            idx, _ = ck.restore(target, extras=extras)
        assert not [w for w in caught if issubclass(w.category, CorruptCheckpointWarning)], where
        assert idx == latest and extras["meta"] == crash_saver.expected_meta(latest), where
        for name, arr in crash_saver.make_arrays(latest, True).items():
            assert np.array_equal(target[name], arr), f"{where}: {name!r}"
        needed: set[str] = set()
        for i in indices:
            with ckpt.Pack(ck.path(i)) as pack:
                pack.verify()  # every member, shared objects included
                assert pack.load("meta") == crash_saver.expected_meta(i), where
            needed |= file_references(ck.path(i))
        present = set(store.listing())
        assert needed <= present, f"{where}: objects lost: {sorted(needed - present)}"
        orphans = present - needed
        assert len(orphans) <= CHANGING, f"{where}: {len(orphans)} unreferenced objects survived a collection"
        orphans_seen += bool(orphans)
        frozen = [k for k in needed if k.endswith(".npy")]
        assert frozen, where
        prev_latest = latest
    assert (ck.latest() or 0) >= KILLS // 2, "the savers made too little progress"
    print(f"incremental SIGKILL harness: {KILLS} kills, {ck.latest()} checkpoints, kills that left the objects "
          f"of an interrupted save: {orphans_seen}")
