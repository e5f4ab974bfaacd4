"""Issue 13, "never lose a run": exit, retention, fallback, aliasing, snapshots and damage.

Real files, real subprocesses, real mounts (tmpfs, read-only) where the machine allows them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import ckpt
from ckpt.errors import CorruptCheckpointWarning, SaveError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_py(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


@pytest.fixture
def mount(tmp_path):
    """mount(options) -> a fresh tmpfs mounted with those options (skips where mounting is not allowed)."""
    mounted = []

    def make(options: str, name: str = "mnt") -> str:
        where = tmp_path / name
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                           check=False)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")
        mounted.append(str(where))
        return str(where)

    yield make
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", where], capture_output=True, check=False)


# -- 1. the last async save survives interpreter exit --------------------------
ASYNC_LAST_SAVE = """
import sys, numpy as np, ckpt
ck = ckpt.Checkpoint(sys.argv[1], async_save=True)
w = np.arange(8 << 20, dtype=np.float32)  # 32 MiB
ck.save({"w": w}, idx=7)
# no wait(), no close(): the script just ends
"""


def _codec_available(name: str) -> bool:
    try:
        ckpt._codec.Compression.parse(name)
    except (ImportError, ValueError, ModuleNotFoundError):
        return False
    return True


@pytest.mark.parametrize("variant", ["plain", "unreferenced", "zstd", "exception"])
def test_last_async_save_completes_at_normal_exit(tmp_path, variant):
    code = ASYNC_LAST_SAVE
    if variant == "unreferenced":  # nothing keeps the manager alive but its save
        code = code.replace('ck.save({"w": w}, idx=7)', 'del ck\nckpt.Checkpoint(sys.argv[1], async_save=True).save({"w": w}, idx=7)')
    elif variant == "zstd":  # compression runs on its own thread pool, which also refuses work at shutdown
        if not _codec_available("zstd"):
            pytest.skip("zstd codec not installed")
        code = code.replace("async_save=True)", 'async_save=True, compression="zstd")')
    elif variant == "exception":  # the script dies of an error right after saving: the save still lands
        code += "\nraise SystemExit(3)\n"
    r = run_py(code, str(tmp_path))
    assert r.returncode == (3 if variant == "exception" else 0), r.stderr
    ck = ckpt.Checkpoint(str(tmp_path))
    assert ck.indices() == [7]
    target = {"w": np.zeros(8 << 20, np.float32)}
    assert ck.restore(target)[0] == 7
    np.testing.assert_array_equal(target["w"], np.arange(8 << 20, dtype=np.float32))


def test_last_async_save_that_fails_at_exit_says_so_and_exits_nonzero(mount):
    small = mount("size=4m")  # 32 MiB cannot fit: ENOSPC in the background write
    r = run_py(ASYNC_LAST_SAVE, small)
    assert r.returncode != 0
    assert "background save of checkpoint 7" in r.stderr and "failed" in r.stderr
    assert not os.path.exists(os.path.join(small, "ckpt", "0000000007.npz"))


# -- 4. restored arrays never share memory --------------------------------------
def _adam_like():
    return {"m": np.zeros((64, 32), np.float32), "v": np.zeros((64, 32), np.float32),
            "count": np.zeros((), np.int32), "mu2": np.zeros((64, 32), np.float32)}


def _assert_independent(arrays):
    arrays = list(arrays)
    for i, a in enumerate(arrays):
        assert a.flags.writeable
        for b in arrays[i + 1:]:
            assert not np.shares_memory(a, b)
    arrays[0][...] = 1
    assert all(not np.any(b) for b in arrays[1:] if b.shape == arrays[0].shape)


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_identical_arrays_restore_into_separate_memory(tmp_path, compression):
    ck = ckpt.Checkpoint(str(tmp_path), compression=compression)
    ck.save({"w": np.zeros((64, 32), np.float32)}, idx=1, extras={"opt": _adam_like()})
    extras = {"opt": None}
    ck.restore({"w": np.ones((64, 32), np.float32)}, extras=extras)
    _assert_independent([extras["opt"]["m"], extras["opt"]["v"], extras["opt"]["mu2"]])
    _assert_independent(list(ck.load_extras(1)["opt"].values())[:2])
    with ckpt.Pack(ck.path(1)) as pack:
        loaded = pack.load("opt")
    _assert_independent([loaded["m"], loaded["v"], loaded["mu2"]])


def test_identical_arrays_in_a_pack_slot_and_a_tree_are_independent(tmp_path):
    path = str(tmp_path / "p.npz")
    z = np.zeros(1000, np.float64)
    with ckpt.Pack(path) as pack:
        pack.dump("a", {"x": z, "y": z.copy()})
        pack.dump("tree", {"layers": [{"b": np.zeros(1000)}, {"b": np.zeros(1000)}]})
    with ckpt.Pack(path) as pack:
        a = pack.load("a")
        tree = pack.load("tree")
    _assert_independent([a["x"], a["y"], tree["layers"][0]["b"], tree["layers"][1]["b"]])


# -- 5. async saves are a snapshot ------------------------------------------------
def test_async_save_snapshots_read_only_views_broadcasts_and_nested_metadata(tmp_path):
    base = np.arange(4096, dtype=np.float32)
    ro_view = base.view()
    ro_view.flags.writeable = False
    row = np.arange(256, dtype=np.float32)
    broadcast = np.broadcast_to(row, (64, 256))
    meta = {"config": {"layers": [1, 2, 3], "opt": {"lr": 0.1}}}
    extras = {"hist": {"loss": [1.0, 2.0]}, "sched": {"w": base}}
    with ckpt.Checkpoint(str(tmp_path), async_save=True) as ck:
        ck.save({"ro": ro_view, "bc": broadcast}, idx=1, metadata=meta, extras=extras,
                metrics={"loss": 0.5})
        base += 100  # the training loop goes on changing everything save() was given
        row += 100
        meta["config"]["layers"].append(4)
        meta["config"]["opt"]["lr"] = 9.0
        extras["hist"]["loss"].append(3.0)
        ck.wait()
        arrays = ck.load(1)
        np.testing.assert_array_equal(arrays["ro"], np.arange(4096, dtype=np.float32))
        np.testing.assert_array_equal(arrays["bc"], np.broadcast_to(np.arange(256, dtype=np.float32), (64, 256)))
        stored = ck.metadata(1)
        assert stored["config"] == {"layers": [1, 2, 3], "opt": {"lr": 0.1}}
        got = ck.load_extras(1)
        assert got["hist"] == {"loss": [1.0, 2.0]}
        np.testing.assert_array_equal(got["sched"]["w"], np.arange(4096, dtype=np.float32))


# -- 6/7. every load path skips the same damage, and extras follow the weights -------------
def _zip_with(path, members: dict[str, bytes]) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _npy_bytes(header: str, data: bytes = b"\0" * 12) -> bytes:
    head = header.encode("latin1")
    head += b" " * ((-(10 + len(head) + 1)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(head).to_bytes(2, "little") + head + data


def _damage(path: str, kind: str) -> None:
    if kind == "truncated":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif kind == "empty-file":
        open(path, "wb").close()
    elif kind == "empty-zip":
        _zip_with(path, {})
    elif kind == "no-main-slot":
        _zip_with(path, {"readme.txt": b"hello"})
    elif kind == "main-not-arrays":
        os.remove(path)
        with ckpt.Pack(path) as pack:
            pack.dump("main", {"w": "not arrays"}, serializer="json")
    elif kind == "broken-npy-header":
        good = _npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }")
        import io

        buf = io.BytesIO()
        np.save(buf, np.array(["w"]))
        _zip_with(path, {"names.npy": buf.getvalue(),
                         "0.npy": good.replace(b"'shape': (3,)", b"'shape': (3,;")})
    elif kind == "bad-hash":
        from helpers import flip_byte, npy_data_offset

        flip_byte(path, npy_data_offset(path, "0.npy"))
    else:
        raise AssertionError(kind)


DAMAGE = ["truncated", "empty-file", "empty-zip", "no-main-slot", "main-not-arrays", "broken-npy-header", "bad-hash"]


def _three_steps(tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path), keep_ckpts=None)
    for step in (100, 200, 300):
        ck.save({"w": np.full(3, step, np.float32)}, idx=step, extras={"opt": {"m": np.full(2, step, np.int64)},
                                                                      "config": {"step": step}})
    return ck


def _restore_and_read(ck):
    target = {"w": np.zeros(3, np.float32)}
    return ck.restore(target)[0], target["w"][0]


@pytest.mark.parametrize("kind", DAMAGE)
def test_every_load_path_falls_back_past_the_same_damage(tmp_path, kind):
    ck = _three_steps(tmp_path)
    _damage(ck.path(300), kind)
    paths = {
        "restore": _restore_and_read,
        "load": lambda c: (200, c.load()["w"][0]),
        "load-template": lambda c: (200, c.load(template={"w": np.zeros(3, np.float32)})["w"][0]),
        "load_extras": lambda c: (200, c.load_extras()["opt"]["m"][0]),
        "metadata": lambda c: (200, c.metadata()["ckpt"]["idx"]),
    }
    if kind == "bad-hash":
        del paths["metadata"]  # reads no array data, by design (documented)
    for name, call in paths.items():
        fresh = ckpt.Checkpoint(str(tmp_path), keep_ckpts=None)
        with pytest.warns(CorruptCheckpointWarning, match="0000000300.npz"):
            got = call(fresh)
        assert got == (200, 200), (name, got)


def test_an_explicit_index_of_a_damaged_file_still_raises(tmp_path):
    ck = _three_steps(tmp_path)
    _damage(ck.path(300), "truncated")
    with pytest.raises(ckpt.FormatError):
        ck.load(300)
    with pytest.raises(ckpt.FormatError):
        ck.load_extras(300)


def test_every_checkpoint_damaged_raises_and_names_each(tmp_path):
    ck = _three_steps(tmp_path)
    for step, kind in zip((100, 200, 300), ("truncated", "empty-zip", "no-main-slot")):
        _damage(ck.path(step), kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptCheckpointWarning)
        with pytest.raises(ckpt.FormatError, match="every checkpoint is damaged") as e:
            ck.load()
    assert all(str(i) in str(e.value) for i in (100, 200, 300))


def test_load_extras_defaults_to_the_step_restored_after_a_fallback(tmp_path):
    ck = _three_steps(tmp_path)
    _damage(ck.path(300), "bad-hash")  # the manifest still reads: only the hash check finds it
    target = {"w": np.zeros(3, np.float32)}
    with pytest.warns(CorruptCheckpointWarning):
        idx, _ = ck.restore(target)
    assert idx == 200
    extras = ck.load_extras()  # no warning needed: it reads the step restored
    assert extras["config"] == {"step": 200} and extras["opt"]["m"][0] == 200
    # after a new save, the default is the newest intact checkpoint again
    ck.save({"w": np.full(3, 400, np.float32)}, idx=400, extras={"config": {"step": 400}})
    assert ck.load_extras()["config"] == {"step": 400}


def test_extras_restored_with_the_weights_come_from_the_same_step(tmp_path):
    ck = _three_steps(tmp_path)
    _damage(ck.path(300), "broken-npy-header")
    extras = {"opt": {"m": np.zeros(2, np.int64)}, "config": None}
    with pytest.warns(CorruptCheckpointWarning):
        idx, _ = ck.restore({"w": np.zeros(3, np.float32)}, extras=extras)
    assert idx == 200 and extras["config"] == {"step": 200} and extras["opt"]["m"][0] == 200


# -- 2/3. retention never deletes the good ones, and a mistyped metric deletes nothing -----------
def ckpt_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_py("import sys; from ckpt.cli import run; sys.argv[0] = 'ckpt'; run()", *args, timeout=timeout)


def _run_with(tmp_path, steps=(100, 200, 300), metrics=True):
    ck = ckpt.Checkpoint(str(tmp_path), keep_ckpts=None, verbose=False)
    for step in steps:
        ck.save({"w": np.full(4, step, np.float32)}, idx=step,
                metrics={"loss": 1.0 / step} if metrics else None)
    return ck


def _restorable(ck):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptCheckpointWarning)
        return ck.restore({"w": np.zeros(4, np.float32)})[0]


@pytest.mark.parametrize("how", ["library", "cli"])
def test_prune_keeps_the_newest_intact_checkpoint_and_skips_a_truncated_one(tmp_path, how, caplog):
    ck = _run_with(tmp_path)
    _damage(ck.path(300), "truncated")
    if how == "cli":
        r = ckpt_cli("prune", str(tmp_path), "--keep", "1")
        assert r.returncode == 0, r.stderr
        assert "skipped damaged" in r.stderr and "0000000300.npz" in r.stderr
        assert "skip" in r.stdout
    else:
        with caplog.at_level("WARNING", logger="ckpt"):
            assert ckpt.Checkpoint(str(tmp_path), keep_ckpts=1).prune() == [100]
        assert "skipped damaged checkpoint" in caplog.text and "0000000300.npz" in caplog.text
    assert ck.indices() == [200, 300]  # the damaged file is left for a person; 200 still restores
    assert _restorable(ck) == 200


@pytest.mark.parametrize("junk", [b"junk", b"", b"PK\x05\x06" + b"\0" * 18])
def test_a_junk_file_named_like_a_step_is_never_counted_as_kept(tmp_path, junk):
    ck = _run_with(tmp_path, steps=(1, 2))
    with open(ck.path(9), "wb") as f:
        f.write(junk)
    mgr = ckpt.Checkpoint(str(tmp_path), keep_ckpts=1, verbose=False)
    plan = mgr.plan_prune()
    assert 9 in plan.damaged and [e.idx for e in plan.entries] == [1, 2]
    assert mgr.prune() == [1]
    assert ck.indices() == [2, 9] and _restorable(ck) == 2


def test_a_newest_with_a_bad_hash_is_not_the_one_kept(tmp_path):
    """The structure opens, only the hash pass finds the damage: the newest that verifies stays."""
    ck = _run_with(tmp_path)
    _damage(ck.path(300), "bad-hash")
    mgr = ckpt.Checkpoint(str(tmp_path), keep_ckpts=1, verbose=False)
    assert mgr.prune() == [100]
    assert ck.indices() == [200, 300] and _restorable(ck) == 200
    plan = mgr.plan_prune()
    assert plan.newest_verified is None and 300 in plan.damaged  # nothing left to delete: cached as damaged


def test_an_older_file_with_a_broken_npy_header_is_not_counted(tmp_path):
    ck = _run_with(tmp_path, steps=(100, 200, 300))
    _damage(ck.path(200), "broken-npy-header")
    mgr = ckpt.Checkpoint(str(tmp_path), keep_ckpts=2, verbose=False)
    assert 200 in mgr.plan_prune().damaged
    assert mgr.prune() == []  # 100 and 300 are the two newest good ones
    assert ck.indices() == [100, 200, 300]


def test_saving_rotation_skips_damaged_files_and_keeps_count_of_good_ones(tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path), keep_ckpts=2, verbose=False)
    for step in (1, 2, 3):
        ck.save({"w": np.full(4, step, np.float32)}, idx=step)
    _damage(ck.path(3), "empty-zip")
    for step in (4, 5):
        ck.save({"w": np.full(4, step, np.float32)}, idx=step)
    assert ck.indices() == [3, 4, 5]


def test_protected_indices_are_never_deleted(tmp_path):
    ck = _run_with(tmp_path, steps=(1, 2, 3, 4))
    mgr = ckpt.Checkpoint(str(tmp_path), keep_ckpts=1, verbose=False)
    assert mgr.prune(protected={2}) == [1, 3]
    assert ck.indices() == [2, 4]


@pytest.mark.parametrize("how", ["library", "cli"])
def test_a_metric_no_checkpoint_records_is_an_error_and_deletes_nothing(tmp_path, how):
    ck = _run_with(tmp_path)
    if how == "cli":
        r = ckpt_cli("prune", str(tmp_path), "--keep-best", "1", "--metric", "los")
        assert r.returncode == 1
        assert "'los'" in r.stderr and "loss" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    else:
        mgr = ckpt.Checkpoint(str(tmp_path), keep_ckpts=1, keep_best=1, metric="los", verbose=False)
        with pytest.raises(ckpt.errors.UnknownMetricError, match="recorded: loss") as e:
            mgr.prune()
        assert isinstance(e.value, ValueError) and e.value.recorded == ["loss"]
        with pytest.raises(ckpt.errors.UnknownMetricError):
            mgr.prune(dry_run=True)
    assert ck.indices() == [100, 200, 300]


def test_a_save_with_a_mistyped_metric_deletes_nothing_and_warns(tmp_path, caplog):
    ck = ckpt.Checkpoint(str(tmp_path), keep_ckpts=1, keep_best=1, metric="los", verbose=False)
    with caplog.at_level("WARNING", logger="ckpt"):
        for step in (1, 2, 3):
            ck.save({"w": np.zeros(2)}, idx=step, metrics={"loss": float(step)})
    assert ck.indices() == [1, 2, 3]
    assert "no checkpoint records the metric 'los'" in caplog.text


@pytest.mark.parametrize("how", ["library", "cli"])
def test_a_metric_missing_from_some_checkpoints_is_a_warning(tmp_path, how, caplog):
    ck = ckpt.Checkpoint(str(tmp_path), keep_ckpts=None, verbose=False)
    for step, m in ((1, None), (2, {"loss": 0.1}), (3, {"acc": 0.5}), (4, {"loss": 0.9})):
        ck.save({"w": np.zeros(2)}, idx=step, metrics=m)
    if how == "cli":
        r = ckpt_cli("prune", str(tmp_path), "--keep-best", "1", "--metric", "loss")
        assert r.returncode == 0, r.stderr
        assert "warning" in r.stderr and "1, 3" in r.stderr and "do not record the metric 'loss'" in r.stderr
    else:
        with caplog.at_level("WARNING", logger="ckpt"):
            ckpt.Checkpoint(str(tmp_path), keep_ckpts=None, keep_best=1, metric="loss").prune()
        assert "[1, 3]" in caplog.text and "do not record the metric 'loss'" in caplog.text
    assert ck.indices() == [2, 4]


# -- 8. a read-only file system or an unwritable lock file is a SaveError ------------------------
def test_a_read_only_file_system_gives_save_error_and_still_restores(mount):
    where = mount("size=16m")
    ck = ckpt.Checkpoint(os.path.join(where, "run"), keep_ckpts=1)
    ck.save({"w": np.ones(3)}, idx=1)
    r = subprocess.run(["mount", "-o", "remount,ro", where], capture_output=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot remount read-only: {r.stderr!r}")
    ro = ckpt.Checkpoint(os.path.join(where, "run"), keep_ckpts=1)
    with pytest.raises(SaveError, match="read-only|Read-only") as e:
        ro.save({"w": np.zeros(3)}, idx=2)
    assert isinstance(e.value, OSError) and e.value.errno == 30 and ".ckpt.lock" in str(e.value)
    with pytest.raises(SaveError):
        ro.prune()
    with pytest.raises(SaveError, match="makedir=False"):
        ckpt.Checkpoint(os.path.join(where, "other"))
    target = {"w": np.zeros(3)}
    assert ro.restore(target)[0] == 1 and target["w"].tolist() == [1, 1, 1]


def test_an_immutable_lock_file_gives_save_error(tmp_path):
    """chattr +i: even root cannot open the lock file for writing (EPERM)."""
    ck = ckpt.Checkpoint(str(tmp_path), keep_ckpts=1)
    ck.save({"w": np.ones(3)}, idx=1)
    lock = os.path.join(ck.directory, ".ckpt.lock")
    r = subprocess.run(["chattr", "+i", lock], capture_output=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot make the lock file immutable here: {r.stderr!r}")
    try:
        with pytest.raises(SaveError, match="cannot take the writer lock") as e:
            ck.save({"w": np.zeros(3)}, idx=2)
        assert e.value.errno in (1, 13) and ck.indices() == [1]
    finally:
        subprocess.run(["chattr", "-i", lock], capture_output=True, check=False)


def test_a_lock_file_that_cannot_be_opened_gives_save_error(tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path), keep_ckpts=1)
    ck.save({"w": np.ones(3)}, idx=1)
    lock = os.path.join(ck.directory, ".ckpt.lock")
    os.remove(lock)
    os.mkdir(lock)  # root ignores permissions; a directory in its place cannot be opened either
    with pytest.raises(SaveError, match="cannot take the writer lock") as e:
        ck.save({"w": np.zeros(3)}, idx=2)
    assert isinstance(e.value, OSError)
    assert ck.indices() == [1]
    with ckpt.Checkpoint(str(tmp_path), async_save=True) as bg:
        bg.save({"w": np.zeros(3)}, idx=3)
        with pytest.raises(SaveError):
            bg.wait()


# -- 11. what a new user hits -------------------------------------------------------------------
def test_verify_of_a_directory_without_checkpoints_fails(tmp_path):
    r = ckpt_cli("verify", str(tmp_path))
    assert r.returncode == 1 and "no checkpoints" in r.stderr and "Traceback" not in r.stderr
    r = ckpt_cli("verify", str(tmp_path), "--json")
    assert r.returncode == 1 and '"ok": false' in r.stdout


def test_a_zip_holding_only_a_readme_is_not_a_checkpoint(tmp_path):
    path = str(tmp_path / "notes.npz")
    _zip_with(path, {"readme.txt": b"hello"})
    r = ckpt_cli("verify", path)
    assert r.returncode == 1 and "not a ckpt file/npz" in r.stdout and "readme.txt" in r.stdout
    with pytest.raises(ckpt.NotAPackError, match="not a ckpt file/npz"):
        ckpt.Pack(path)


def test_npz_with_object_arrays_is_refused_not_damaged(tmp_path):
    path = str(tmp_path / "obj.npz")
    np.savez(path, a=np.array([{"x": 1}, None], dtype=object), b=np.zeros(3))
    r = ckpt_cli("verify", path)
    assert r.returncode == 1
    assert "holds pickled object arrays; refused unless trusted" in r.stdout
    assert "damaged" not in r.stdout and "BAD" not in r.stdout
    r = ckpt_cli("info", path)
    assert "holds pickled object arrays; refused unless trusted" in r.stdout
    r = ckpt_cli("export", path, "--to", "npz", str(tmp_path / "out.npz"))
    assert r.returncode == 1 and "holds pickled object arrays; refused unless trusted" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _wait_for_mapping(pid: int, needle: str, timeout: float = 60.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/maps") as f:
                if needle in f.read():
                    return True
        except OSError:
            return False
        time.sleep(0.001)
    return False


def test_ctrl_c_during_ckpt_start_up_prints_no_traceback(tmp_path):
    import signal

    if not os.path.exists("/proc/self/maps"):
        pytest.skip("needs /proc to see when the command is importing numpy")
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, "-m", "ckpt", "ls", str(tmp_path)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path))
    # SIGINT once numpy's core library is mapped: the command is inside its imports
    assert _wait_for_mapping(p.pid, "_multiarray_umath"), "the command never imported numpy"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, (p.returncode, err)
    assert "Traceback" not in err and "interrupted" in err


# -- 9. another program truncating an open checkpoint: an error, never SIGBUS --------------------
TRUNCATE_WHILE_OPEN = """
import os, sys, numpy as np, ckpt
from ckpt.varfile import open_reader

path, mode = sys.argv[1], sys.argv[2]
ck = ckpt.Checkpoint(path, keep_ckpts=None)
big = np.arange(8 << 20, dtype=np.float32)  # 32 MiB
ck.save({"w": big, "b": np.ones(3)}, idx=1)
f = ck.path(1)
if mode == "view":  # a zero-copy read asked for, then the file is cut under it
    with open_reader(f) as r:
        v = r.arrays("main")
        arr = v.read("w", copy=False)
    os.truncate(f, 4096)
    print("sum", float(arr[-1000:].sum()))
elif mode == "read":  # the file is cut between opening and reading
    with open_reader(f) as r:
        v = r.arrays("main")
        os.truncate(f, 4096)
        try:
            v.read_all()
        except ckpt.FormatError as e:
            print("error", type(e).__name__)
elif mode == "restore":
    with ckpt.Pack(f) as pack:
        os.truncate(f, os.path.getsize(f) // 2)
        try:
            pack.load("main")
        except ckpt.FormatError as e:
            print("error", type(e).__name__)
"""


@pytest.mark.parametrize("mode", ["view", "read", "restore"])
def test_truncating_an_open_checkpoint_is_contained(tmp_path, mode):
    import signal

    r = run_py(TRUNCATE_WHILE_OPEN, str(tmp_path), mode)
    assert r.returncode != -signal.SIGBUS, "killed by SIGBUS"
    assert r.returncode == 0, r.stderr[-2000:]
    if mode == "view":
        expected = float(np.arange(8 << 20, dtype=np.float32)[-1000:].sum())
        assert r.stdout.split() == ["sum", repr(expected)]
    else:
        assert r.stdout.startswith("error "), r.stdout


def test_the_demo_keeps_its_checkpoints_and_says_where_unless_asked_to_clean(tmp_path):
    pytest.importorskip("objax")
    demo = os.path.join(ROOT, "examples", "train_resume.py")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, TMPDIR=str(tmp_path))
    r = subprocess.run([sys.executable, demo, "--steps", "12", "--every", "4"], capture_output=True, text=True,
                       env=env, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    kept = [line for line in r.stdout.splitlines() if line.startswith("Checkpoints kept in ")]
    assert kept, r.stdout[-2000:]
    root = kept[0][len("Checkpoints kept in "):].split(" (")[0]
    assert root.startswith(str(tmp_path))
    assert ckpt.Checkpoint(os.path.join(root, "reference"), makedir=False).latest() == 12
    assert f"ckpt ls {os.path.join(root, 'reference')}" in r.stdout  # the README's CLI tour, ready to paste
    assert ckpt_cli("verify", os.path.join(root, "crashed")).returncode == 0
    r = subprocess.run([sys.executable, demo, "--steps", "12", "--every", "4", "--clean"], capture_output=True,
                       text=True, env=env, timeout=600, check=False)
    assert r.returncode == 0 and "Checkpoints kept" not in r.stdout
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(root)])  # only the first run's directory


def test_an_async_save_of_cpu_jax_arrays_survives_buffer_donation(tmp_path):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    step = jax.jit(lambda p: jax.tree_util.tree_map(lambda a: a * 0 - 1, p), donate_argnums=0)
    params = {"w": jnp.arange(1 << 20, dtype=jnp.float32), "key": jax.random.key(3)}
    import filelock

    with ckpt.Checkpoint(str(tmp_path), async_save=True) as ck:
        held = filelock.FileLock(os.path.join(ck.directory, ".ckpt.lock"))
        with held:  # the background write waits for this lock: the loop runs on first, as on a busy disk
            ck.save({"w": params["w"]}, idx=1, extras={"rng": params["key"]})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Some donated buffers were not usable": the snapshot holds them
                params = {"w": step(params["w"]), "key": params["key"]}
                np.asarray(params["w"])  # the step has run
        ck.wait()
        back = ck.load(1)
        np.testing.assert_array_equal(back["w"], np.arange(1 << 20, dtype=np.float32))
        assert jax.dtypes.issubdtype(ck.load_extras(1)["rng"].dtype, jax.dtypes.prng_key)


def test_a_program_run_with_dash_m_that_imports_ckpt_keeps_its_own_ctrl_c(tmp_path):
    pkg = tmp_path / "mytrainer"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import signal, ckpt\n"
                                     "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n")
    (pkg / "__main__.py").write_text("")
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}")
    r = subprocess.run([sys.executable, "-m", "mytrainer"], capture_output=True, text=True, env=env, timeout=120,
                       check=False, cwd=str(tmp_path))
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr
