"""Disk full, I/O errors, stale temp files and damaged newest checkpoints.

Errors are injected through :data:`ckpt._io.ops` (a :class:`ckpt._io.FileOps`
subclass that fails the Nth write with ENOSPC, or fsync/rename/directory fsync
with EIO). A failed ``Checkpoint.save`` must raise :class:`ckpt.errors.SaveError`
(an OSError carrying the errno) naming the checkpoint path, remove its temp
file, leave every earlier checkpoint byte-for-byte intact and restorable, and
not retry behind the caller's back.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest
from helpers import data_offsets, flip_byte, npy_data_offset

import ckpt
from ckpt import _io
from ckpt.errors import ChecksumError, CorruptCheckpointWarning, FormatError, SaveError


# -- injection layer ------------------------------------------------------------------
class CountingFile:
    """A temp file that counts writes and raises ``OSError(write_errno)`` on write number ``fail_at``."""

    def __init__(self, f, ops: FaultyOps):
        self._f = f
        self._ops = ops

    def write(self, data):
        self._ops.writes += 1
        if self._ops.fail_write_at is not None and self._ops.writes == self._ops.fail_write_at:
            raise OSError(self._ops.write_errno, os.strerror(self._ops.write_errno))
        return self._f.write(data)

    def close(self):
        self._f.close()
        self._ops._enter("close")  # e.g. NFS reports a failed write-back at close

    def __getattr__(self, name):
        return getattr(self._f, name)


class FaultyOps(_io.FileOps):
    """Counts every operation; fails the chosen one with the chosen errno."""

    def __init__(self, *, fail_write_at=None, write_errno=errno.ENOSPC, fail=None, fail_errno=errno.EIO):
        self.fail_write_at = fail_write_at
        self.write_errno = write_errno
        self.fail = fail  # "close", "fsync", "replace", "fsync_dir" or "unlink"
        self.fail_errno = fail_errno
        self.writes = 0
        self.calls = {"open_temp": 0, "close": 0, "fsync": 0, "replace": 0, "fsync_dir": 0, "unlink": 0}
        self.temps: list[str] = []

    def _enter(self, op):
        self.calls[op] += 1
        if self.fail == op:
            raise OSError(self.fail_errno, os.strerror(self.fail_errno))

    def open_temp(self, path):
        self.calls["open_temp"] += 1
        self.temps.append(path)
        return CountingFile(super().open_temp(path), self)

    def fsync(self, f):
        self._enter("fsync")
        super().fsync(f)

    def replace(self, src, dst):
        self._enter("replace")
        super().replace(src, dst)

    def fsync_dir(self, directory):
        self._enter("fsync_dir")
        super().fsync_dir(directory)

    def unlink(self, path):
        if self.fail == "unlink" and os.path.basename(path).startswith("."):
            self.calls["unlink"] += 1  # removing a temp file never fails here: only the rotation's unlink
            return super().unlink(path)
        self._enter("unlink")
        super().unlink(path)


# -- fixtures ---------------------------------------------------------------------------
def arrays_for(step: int) -> dict[str, np.ndarray]:
    return {"w": np.full((64, 64), step, np.float32), "b": np.arange(300, dtype=np.int64) * step - 5,
            "e": np.array(step * 0.25)}


def save_step(ck, step):
    return ck.save(arrays_for(step), idx=step, extras={"meta": {"step": step}})


def target() -> dict[str, np.ndarray]:
    return {n: np.zeros_like(a) for n, a in arrays_for(0).items()}


def snapshot(directory) -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(directory)):
        if name != ckpt.Checkpoint.LOCK_NAME:
            with open(os.path.join(directory, name), "rb") as f:
                out[name] = f.read()
    return out


def assert_restores(ck, step, **kw):
    tgt, extras = target(), {"meta": None}
    idx, path = ck.restore(tgt, extras=extras, **kw)
    assert (idx, path) == (step, ck.path(step))
    assert extras["meta"] == {"step": step}
    for n, a in arrays_for(step).items():
        assert np.array_equal(tgt[n], a), n


def temps_in(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if _io.parse_temp_name(n) or n.endswith(".tmp"))


@pytest.fixture
def run3(tmp_path):
    """Checkpoints 1..3 with keep_ckpts=3 (so saving 4 would rotate 1 away), and their bytes."""
    ck = ckpt.Checkpoint(str(tmp_path / "run"), keep_ckpts=3, verbose=False)
    for step in (1, 2, 3):
        save_step(ck, step)
    return ck, snapshot(ck.directory)


def count_writes_of_one_save(tmp_path, monkeypatch) -> int:
    ck = ckpt.Checkpoint(str(tmp_path / "count"), keep_ckpts=3, verbose=False)
    counter = FaultyOps()
    monkeypatch.setattr(_io, "ops", counter)
    save_step(ck, 4)
    monkeypatch.setattr(_io, "ops", _io.FileOps())
    assert counter.calls == {"open_temp": 1, "close": 1, "fsync": 1, "replace": 1, "fsync_dir": 1, "unlink": 0}
    return counter.writes


def assert_failed_cleanly(ck, before, err, expected_errno):
    """The SaveError contract plus: nothing changed on disk, the last good checkpoint restores."""
    path = ck.path(4)
    assert isinstance(err, SaveError) and isinstance(err, OSError)
    assert err.errno == expected_errno, (err.errno, err)
    assert path in str(err), str(err)
    assert err.file == path
    assert isinstance(err.__cause__, OSError) and err.__cause__.errno == expected_errno
    assert temps_in(ck.directory) == [], "the temp file of the failed save was left behind"
    assert snapshot(ck.directory) == before, "a failed save changed the earlier checkpoints"
    assert ck.indices() == [1, 2, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_restores(ck, 3)
    for step in (1, 2):
        with ckpt.Pack(ck.path(step)) as pack:
            pack.verify()


# -- ENOSPC and EIO ------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["first", "second", "middle", "last"])
def test_enospc_on_a_write_raises_save_error_and_keeps_earlier_checkpoints(where, run3, tmp_path, monkeypatch):
    total = count_writes_of_one_save(tmp_path, monkeypatch)
    assert total > 4
    n = {"first": 1, "second": 2, "middle": total // 2, "last": total}[where]
    ck, before = run3
    faulty = FaultyOps(fail_write_at=n, write_errno=errno.ENOSPC)
    monkeypatch.setattr(_io, "ops", faulty)
    with pytest.raises(SaveError) as info:
        save_step(ck, 4)
    monkeypatch.setattr(_io, "ops", _io.FileOps())
    # No retry: one temp file, writing stopped at the failure, never synced or renamed.
    assert faulty.calls["open_temp"] == 1
    assert faulty.writes == n
    assert faulty.calls["fsync"] == 0 and faulty.calls["replace"] == 0
    assert faulty.calls["unlink"] == 1, "the temp file must be removed"
    assert not os.path.exists(faulty.temps[0])
    assert_failed_cleanly(ck, before, info.value, errno.ENOSPC)
    # The next save, with space again, works and rotates normally.
    save_step(ck, 4)
    assert ck.indices() == [2, 3, 4]
    assert_restores(ck, 4)


def test_eio_on_fsync_raises_once_without_retry(run3, monkeypatch):
    ck, before = run3
    faulty = FaultyOps(fail="fsync", fail_errno=errno.EIO)
    monkeypatch.setattr(_io, "ops", faulty)
    with pytest.raises(SaveError) as info:
        save_step(ck, 4)
    monkeypatch.setattr(_io, "ops", _io.FileOps())
    # A failed fsync is not retried (the kernel may have dropped the dirty pages: a second fsync could
    # "succeed" over lost data), and the file is never renamed into place.
    assert faulty.calls["fsync"] == 1
    assert faulty.calls["open_temp"] == 1
    assert faulty.calls["replace"] == 0
    assert not os.path.exists(faulty.temps[0])
    assert_failed_cleanly(ck, before, info.value, errno.EIO)


def test_eio_on_close_raises_save_error(run3, monkeypatch):
    ck, before = run3
    faulty = FaultyOps(fail="close", fail_errno=errno.EIO)
    monkeypatch.setattr(_io, "ops", faulty)
    with pytest.raises(SaveError) as info:
        save_step(ck, 4)
    monkeypatch.setattr(_io, "ops", _io.FileOps())
    assert faulty.calls["close"] == 1 and faulty.calls["replace"] == 0, "renamed a file whose close failed"
    assert not os.path.exists(faulty.temps[0])
    assert_failed_cleanly(ck, before, info.value, errno.EIO)


def test_eio_on_rename_raises_save_error(run3, monkeypatch):
    ck, before = run3
    faulty = FaultyOps(fail="replace", fail_errno=errno.EIO)
    monkeypatch.setattr(_io, "ops", faulty)
    with pytest.raises(SaveError) as info:
        save_step(ck, 4)
    monkeypatch.setattr(_io, "ops", _io.FileOps())
    assert faulty.calls["replace"] == 1 and faulty.calls["fsync"] == 1 and faulty.calls["open_temp"] == 1
    assert_failed_cleanly(ck, before, info.value, errno.EIO)


def test_eio_on_directory_fsync_raises_and_does_not_rotate(run3, monkeypatch):
    """The rename happened but could not be made durable: the caller is told, nothing old is deleted."""
    ck, before = run3
    faulty = FaultyOps(fail="fsync_dir", fail_errno=errno.EIO)
    monkeypatch.setattr(_io, "ops", faulty)
    with pytest.raises(SaveError) as info:
        save_step(ck, 4)
    monkeypatch.setattr(_io, "ops", _io.FileOps())
    err = info.value
    assert err.errno == errno.EIO and ck.path(4) in str(err)
    assert faulty.calls["fsync_dir"] == 1 and faulty.calls["unlink"] == 0, "rotated after a failed save"
    assert temps_in(ck.directory) == []
    after = snapshot(ck.directory)
    assert {k: v for k, v in after.items() if k in before} == before, "earlier checkpoints changed"
    assert set(ck.indices()) <= {1, 2, 3, 4} and {1, 2, 3} <= set(ck.indices())
    for idx in ck.indices():  # checkpoint 4, if present, is complete (its data were synced)
        with ckpt.Pack(ck.path(idx)) as pack:
            pack.verify()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_restores(ck, ck.latest())


def test_eio_on_rotation_keeps_the_new_checkpoint(run3, monkeypatch):
    """Deleting an old checkpoint fails after the new one is committed: the new one must survive."""
    ck, before = run3
    faulty = FaultyOps(fail="unlink", fail_errno=errno.EIO)
    monkeypatch.setattr(_io, "ops", faulty)
    try:
        save_step(ck, 4)
    except OSError as e:  # reporting the failed deletion is allowed; losing data is not
        assert e.errno == errno.EIO
    monkeypatch.setattr(_io, "ops", _io.FileOps())
    assert ck.indices() == [1, 2, 3, 4]
    assert {k: v for k, v in snapshot(ck.directory).items() if k in before} == before
    assert temps_in(ck.directory) == []
    assert_restores(ck, 4)
    save_step(ck, 5)  # the next save rotates both old ones away
    assert ck.indices() == [3, 4, 5]


def test_enospc_in_a_background_save_is_raised_by_wait(run3, monkeypatch):
    """With async_save the write fails in the save thread; wait() raises the same SaveError."""
    ck, before = run3
    bg = ckpt.Checkpoint(ck.logdir, keep_ckpts=3, verbose=False, async_save=True)
    faulty = FaultyOps(fail_write_at=2, write_errno=errno.ENOSPC)
    monkeypatch.setattr(_io, "ops", faulty)
    try:
        assert save_step(bg, 4) == ck.path(4)  # returns once the snapshot is taken
        with pytest.raises(SaveError) as info:
            bg.wait()
    finally:
        monkeypatch.setattr(_io, "ops", _io.FileOps())
    assert faulty.calls["open_temp"] == 1 and faulty.writes == 2 and faulty.calls["fsync"] == 0
    assert_failed_cleanly(ck, before, info.value, errno.ENOSPC)
    bg.wait()  # the error was raised once; the manager is usable again
    save_step(bg, 4)
    bg.close()
    assert ck.indices() == [2, 3, 4]
    assert_restores(ck, 4)


def test_enospc_in_save_var_collection_leaves_the_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "vars.npz")
    ckpt.save_var_collection(path, arrays_for(1))
    with open(path, "rb") as f:
        old = f.read()
    counting = FaultyOps()  # how many writes the save makes (small members take one each)
    monkeypatch.setattr(_io, "ops", counting)
    ckpt.save_var_collection(str(tmp_path / "count.npz"), arrays_for(2))
    monkeypatch.setattr(_io, "ops", _io.FileOps())
    os.unlink(tmp_path / "count.npz")
    assert counting.writes >= 4
    for n in sorted({1, 3, counting.writes // 2, counting.writes}):  # first, early, middle and last write
        faulty = FaultyOps(fail_write_at=n, write_errno=errno.ENOSPC)
        monkeypatch.setattr(_io, "ops", faulty)
        with pytest.raises(OSError) as info:
            ckpt.save_var_collection(path, arrays_for(2))
        monkeypatch.setattr(_io, "ops", _io.FileOps())
        assert info.value.errno == errno.ENOSPC
        assert faulty.writes == n and faulty.calls["replace"] == 0
        with open(path, "rb") as f:
            assert f.read() == old, "the old file was changed by a failed save"
        assert os.listdir(tmp_path) == ["vars.npz"], "a temp file was left behind"
    restored = ckpt.load_var_collection(path, target())
    assert all(np.array_equal(restored[k], v) for k, v in arrays_for(1).items())


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_real_enospc_from_dev_full(run3, monkeypatch):
    """The temp file exists on disk, but its writes go to /dev/full, which fails them with ENOSPC."""
    ck, before = run3

    class DevFullOps(_io.FileOps):
        def open_temp(self, path):
            super().open_temp(path).close()  # the real temp path exists, so its removal is real too
            self.temp = path
            return open("/dev/full", "wb")

    devfull = DevFullOps()
    monkeypatch.setattr(_io, "ops", devfull)
    with pytest.raises(SaveError) as info:
        save_step(ck, 4)
    monkeypatch.setattr(_io, "ops", _io.FileOps())
    assert not os.path.exists(devfull.temp)
    assert_failed_cleanly(ck, before, info.value, errno.ENOSPC)


# -- stale temp files ---------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    try:
        os.kill(proc.pid, 0)
    except ProcessLookupError:
        return proc.pid
    pytest.skip("the pid of an exited child was reused at once")


def _temp_name(ck, idx, pid, tag="0123abcd"):
    return f".{os.path.basename(ck.path(idx))}.{pid}.{tag}.tmp"


def test_stale_temp_of_a_dead_writer_is_ignored_then_removed(run3, tmp_path):
    ck, _ = run3
    pid = _dead_pid()
    # A complete, valid checkpoint 9 under a temp name: it must still never be listed or restored.
    other = ckpt.Checkpoint(str(tmp_path / "other"), verbose=False)
    with open(save_step(other, 9), "rb") as f:
        complete = f.read()
    stale_complete = _temp_name(ck, 9, pid)
    stale_partial = _temp_name(ck, 4, pid, "89abcdef")
    foreign = f".notes.txt.{pid}.0123abcd.tmp"  # a temp of some other file: not the manager's to delete
    for name, data in [(stale_complete, complete), (stale_partial, complete[:1000]), (foreign, b"x")]:
        with open(os.path.join(ck.directory, name), "wb") as f:
            f.write(data)

    assert ck.indices() == [1, 2, 3] and ck.latest() == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing damaged is even looked at
        assert_restores(ck, 3)
    assert ck.wait_for_new(after=3, timeout=0) is None

    save_step(ck, 4)
    names = os.listdir(ck.directory)
    assert stale_complete not in names and stale_partial not in names, "stale temps survived a save"
    assert foreign in names
    assert ck.indices() == [2, 3, 4]
    assert_restores(ck, 4)


def test_temp_of_a_live_writer_is_not_removed(run3):
    ck, _ = run3
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = {
            "sleeping child": _temp_name(ck, 4, sleeper.pid),
            "parent process": _temp_name(ck, 4, os.getppid(), "00000001"),
            "this process": _temp_name(ck, 4, os.getpid(), "00000002"),
        }
        for name in live.values():
            with open(os.path.join(ck.directory, name), "wb") as f:
                f.write(b"PK\x03\x04 being written")
        save_step(ck, 4)
        names = os.listdir(ck.directory)
        for who, name in live.items():
            assert name in names, f"the temp file of a live writer ({who}) was deleted"
        assert ck.indices() == [2, 3, 4]
        assert_restores(ck, 4)
    finally:
        sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()
    # Once its writer is gone, the next save removes it.
    save_step(ck, 5)
    names = os.listdir(ck.directory)
    assert live["sleeping child"] not in names
    assert live["this process"] in names and live["parent process"] in names


# -- damaged newest checkpoint ----------------------------------------------------------------
def _damage(path, how):
    size = os.path.getsize(path)
    if how.startswith("truncate"):
        cut = {"truncate_empty": 0, "truncate_1": 1, "truncate_header": 30, "truncate_half": size // 2,
               "truncate_before_cd": data_offsets(path)["__ckpt__/manifest.json"] + 10,
               "truncate_eocd": size - 22, "truncate_last_byte": size - 1}[how]
        with open(path, "r+b") as f:
            f.truncate(cut)
    elif how == "flip_array_byte":
        flip_byte(path, npy_data_offset(path, "0.npy") + 17)
    elif how == "flip_manifest_byte":
        flip_byte(path, data_offsets(path)["__ckpt__/manifest.json"] + 40, 0x02)
    elif how == "flip_extras_byte":
        flip_byte(path, data_offsets(path)["meta/data.json"] + 2, 0x04)
    elif how == "garbage":
        with open(path, "wb") as f:
            f.write(os.urandom(size))
    else:
        raise AssertionError(how)


DAMAGE = ["truncate_empty", "truncate_1", "truncate_header", "truncate_half", "truncate_before_cd",
          "truncate_eocd", "truncate_last_byte", "flip_array_byte", "flip_manifest_byte", "flip_extras_byte",
          "garbage"]


@pytest.mark.parametrize("how", DAMAGE)
def test_restore_skips_a_damaged_newest_checkpoint(how, run3):
    ck, before = run3
    _damage(ck.path(3), how)
    assert ck.indices() == [1, 2, 3]  # still listed: it is final-named; only reading finds the damage
    with pytest.warns(CorruptCheckpointWarning) as record:
        assert_restores(ck, 2)
    messages = [str(w.message) for w in record if issubclass(w.category, CorruptCheckpointWarning)]
    assert len(messages) == 1 and ck.path(3) in messages[0], messages
    # Asked for by index, the damaged file raises instead of falling back.
    with pytest.raises(FormatError) as info:
        ck.restore(target(), idx=3, extras={"meta": None})
    assert ck.path(3) in str(info.value)
    if how.startswith(("flip_array", "flip_extras")):
        assert isinstance(info.value, ChecksumError)
    # Nothing was changed by reading: the good checkpoints are untouched.
    after = snapshot(ck.directory)
    assert after["0000000001.npz"] == before["0000000001.npz"] and after["0000000002.npz"] == before["0000000002.npz"]


def test_restore_falls_back_past_several_damaged_checkpoints(run3):
    ck, _ = run3
    _damage(ck.path(3), "truncate_half")
    _damage(ck.path(2), "flip_array_byte")
    with pytest.warns(CorruptCheckpointWarning) as record:
        assert_restores(ck, 1)
    messages = [str(w.message) for w in record if issubclass(w.category, CorruptCheckpointWarning)]
    assert len(messages) == 2 and ck.path(3) in messages[0] and ck.path(2) in messages[1], messages


def test_restore_raises_when_every_checkpoint_is_damaged(run3):
    ck, _ = run3
    for idx, how in [(1, "truncate_empty"), (2, "flip_manifest_byte"), (3, "truncate_eocd")]:
        _damage(ck.path(idx), how)
    tgt = target()
    with pytest.warns(CorruptCheckpointWarning) as record, pytest.raises(FormatError) as info:
        ck.restore(tgt)
    assert len([w for w in record if issubclass(w.category, CorruptCheckpointWarning)]) == 3
    assert ck.directory in str(info.value)
    assert all(not a.any() for a in tgt.values()), "a failed restore assigned something"


def test_a_save_after_a_damaged_newest_goes_on_past_it(run3):
    """Training resumes from the fallback and saves again: the damaged file is never restored, never
    counted by retention, and never deleted (left for a person to look at)."""
    ck, _ = run3
    _damage(ck.path(3), "truncate_half")
    with pytest.warns(CorruptCheckpointWarning):
        assert_restores(ck, 2)
    save_step(ck, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_restores(ck, 4)
    save_step(ck, 5)
    save_step(ck, 6)
    assert ck.indices() == [3, 4, 5, 6]
