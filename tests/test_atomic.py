"""Atomic, durable writes: a save that fails midway leaves the previous file intact and no temp file.

Failures are real: an I/O error injected by subclassing ckpt's own FileOps (the
one place that touches the filesystem), or a value whose data cannot be produced
once the write has started.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

import ckpt
from ckpt import _io
from ckpt.errors import SaveError
from helpers import assert_dicts_identical, temp_leftovers


class FailingOps(_io.FileOps):
    """The real file operations, with one of them failing."""

    def __init__(self, fail: str, exc: BaseException):
        self.fail = fail
        self.exc = exc
        self.calls: list[str] = []

    def _maybe_fail(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fail:
            raise self.exc

    def fsync(self, f):
        self._maybe_fail("fsync")
        super().fsync(f)

    def replace(self, src, dst):
        self._maybe_fail("replace")
        super().replace(src, dst)

    def fsync_dir(self, directory):
        self._maybe_fail("fsync_dir")
        super().fsync_dir(directory)


class RecordingOps(_io.FileOps):
    def __init__(self):
        self.calls: list[tuple[str, str]] = []

    def open_temp(self, path):
        self.calls.append(("open_temp", os.path.basename(path)))
        return super().open_temp(path)

    def fsync(self, f):
        self.calls.append(("fsync", os.path.basename(f.name)))
        super().fsync(f)

    def replace(self, src, dst):
        self.calls.append(("replace", os.path.basename(dst)))
        super().replace(src, dst)

    def fsync_dir(self, directory):
        self.calls.append(("fsync_dir", directory))
        super().fsync_dir(directory)

    def unlink(self, path):
        self.calls.append(("unlink", os.path.basename(path)))
        super().unlink(path)


OLD = {"w": np.arange(1000.0), "b": np.ones(3)}
NEW = {"w": np.arange(1000.0) * 2, "b": np.zeros(3)}

FAILURES = {
    "fsync_EIO": ("fsync", OSError(errno.EIO, "Input/output error")),
    "replace_ENOSPC": ("replace", OSError(errno.ENOSPC, "No space left on device")),
    "fsync_KeyboardInterrupt": ("fsync", KeyboardInterrupt()),
}


@pytest.fixture(params=list(FAILURES), ids=list(FAILURES))
def failure(request):
    op, exc = FAILURES[request.param]
    ops = FailingOps(op, exc)
    return ops, type(exc), getattr(exc, "errno", None)


def _arm(monkeypatch, ops):
    monkeypatch.setattr(_io, "ops", ops)


def test_save_var_collection_failure_keeps_the_old_file(tmp_path, monkeypatch, failure):
    ops, exc_type, code = failure
    path = tmp_path / "vars.npz"
    ckpt.save_var_collection(path, OLD)
    before = path.read_bytes()
    _arm(monkeypatch, ops)
    with pytest.raises(exc_type) as info:
        ckpt.save_var_collection(path, NEW)
    if code is not None:
        assert info.value.errno == code
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert_dicts_identical(ckpt.load(path), OLD)
    assert sorted(os.listdir(tmp_path)) == ["vars.npz"]


def test_compat_dump_failure_creates_nothing(tmp_path, monkeypatch, failure):
    ops, exc_type, _ = failure
    _arm(monkeypatch, ops)
    with pytest.raises(exc_type):
        ckpt.dump({"a": 1}, tmp_path / "new.npz")
    assert os.listdir(tmp_path) == []


def test_pack_change_failure_keeps_the_old_pack(tmp_path, monkeypatch, failure):
    ops, exc_type, _ = failure
    path = tmp_path / "p.npz"
    with ckpt.Pack(path) as pack:
        pack.dump("main", OLD)
    before = path.read_bytes()
    with ckpt.Pack(path) as pack:
        _arm(monkeypatch, ops)
        with pytest.raises(exc_type):
            pack.dump("cfg", {"lr": 0.1})
        monkeypatch.undo()
        assert "cfg" not in pack
        assert_dicts_identical(pack.load("main"), OLD)
    assert path.read_bytes() == before
    assert temp_leftovers(tmp_path) == []


def test_checkpoint_save_failure_keeps_earlier_checkpoints(tmp_path, monkeypatch, failure):
    ops, exc_type, code = failure
    ck = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=2)
    ck.save(OLD, 1)
    ck.save(OLD, 2)
    before = {i: Path(ck.path(i)).read_bytes() for i in (1, 2)}
    _arm(monkeypatch, ops)
    expected = SaveError if issubclass(exc_type, OSError) else exc_type
    with pytest.raises(expected) as info:
        ck.save(NEW, 3)
    monkeypatch.undo()
    if code is not None:
        assert isinstance(info.value, OSError) and info.value.errno == code
        assert "intact" in str(info.value)
    assert ck.indices() == [1, 2], "a failed save must not rotate anything away"
    assert not os.path.exists(ck.path(3))
    for i in (1, 2):
        assert Path(ck.path(i)).read_bytes() == before[i]
    assert temp_leftovers(ck.directory) == []
    target = {k: np.zeros_like(v) for k, v in OLD.items()}
    assert ck.restore(target)[0] == 2
    assert_dicts_identical(target, OLD)


def test_a_value_that_fails_while_being_written(tmp_path, jnp):
    """The data of a deleted JAX array can only be fetched once writing has begun: a real mid-write failure."""
    path = tmp_path / "vars.npz"
    ckpt.save_var_collection(path, OLD)
    before = path.read_bytes()
    gone = jnp.ones(10_000)
    gone.delete()
    with pytest.raises(RuntimeError, match="deleted"):
        ckpt.save_var_collection(path, {"first": np.ones(100_000), "gone": gone})
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["vars.npz"]

    ck = ckpt.Checkpoint(tmp_path / "run")
    ck.save(OLD, 1)
    with pytest.raises(RuntimeError, match="deleted"):
        ck.save({"first": np.ones(100_000), "gone": gone}, 2)
    assert ck.indices() == [1]
    assert temp_leftovers(ck.directory) == []


def test_write_fsyncs_before_rename_and_the_directory_after(tmp_path, monkeypatch):
    ops = RecordingOps()
    monkeypatch.setattr(_io, "ops", ops)
    path = tmp_path / "vars.npz"
    ckpt.save_var_collection(path, OLD)
    kinds = [c[0] for c in ops.calls]
    assert kinds == ["open_temp", "fsync", "replace", "fsync_dir"]
    temp_name = ops.calls[0][1]
    assert temp_name.startswith(".vars.npz.") and temp_name.endswith(".tmp")
    assert ops.calls[1][1] == temp_name, "the temp file itself is fsynced"
    assert ops.calls[2][1] == "vars.npz"
    assert ops.calls[3][1] == str(tmp_path)


def test_rotation_removes_durably(tmp_path, monkeypatch):
    ck = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=1)
    ck.save(OLD, 1)
    ops = RecordingOps()
    monkeypatch.setattr(_io, "ops", ops)
    ck.save(OLD, 2)
    kinds = [c for c in ops.calls if c[0] in ("unlink", "fsync_dir", "replace")]
    assert ("replace", "0000000002.npz") in kinds
    unlink = kinds.index(("unlink", "0000000001.npz"))
    assert kinds.index(("replace", "0000000002.npz")) < unlink, "the old file goes only after the new one is in place"
    assert kinds[unlink + 1] == ("fsync_dir", ck.directory)
