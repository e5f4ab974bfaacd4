"""One contract suite for every storage backend (tests/storage_backends.py lists them).

Each test states a promise of ckpt.storage.base.Storage and checks it on a real location: a
local folder, a file:// URL, memory://, and fsspec's own local filesystem. Crash and lock tests
use real processes (killed with SIGKILL) where the backend is shared between processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from ckpt.errors import LockedError
from ckpt.storage import Storage

from storage_backends import BACKENDS, Backend


@pytest.fixture(params=BACKENDS, ids=[b.name for b in BACKENDS])
def backend(request) -> Backend:
    return request.param


@pytest.fixture
def store(backend, tmp_path) -> Storage:
    s = backend.make(tmp_path)
    s.makedirs()
    yield s
    fs = getattr(s, "fs", None)
    if fs is not None and s.url.startswith("memory://"):
        fs.rm(s.path(""), recursive=True)


def _put(store: Storage, key: str, data: bytes, **kw) -> int:
    return store.commit(key, lambda f: f.write(data), **kw)


def _get(store: Storage, key: str) -> bytes:
    with store.open_read(key) as f:
        return f.read()


class Boom(RuntimeError):
    pass


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# -- commit --------------------------------------------------------------------------------
def test_commit_then_read_back_and_stat(store):
    assert store.stat("a.bin") is None
    assert _put(store, "a.bin", b"hello world") == 11  # commit returns what write returned
    assert _get(store, "a.bin") == b"hello world"
    info = store.stat("a.bin")
    assert info is not None and info.key == "a.bin" and info.size == 11
    assert store.exists("a.bin") and not store.exists("b.bin")


def test_a_write_that_raises_leaves_the_old_object_and_no_leftovers(store, backend):
    _put(store, "a.bin", b"old contents")

    def half(f):
        f.write(b"new but cut")
        raise Boom("disk on fire")

    with pytest.raises(Boom):
        store.commit("a.bin", half)
    assert _get(store, "a.bin") == b"old contents"
    assert [i.key for i in store.list()] == ["a.bin"]
    assert backend.raw_names(store, "") == ["a.bin"]  # the temp object is gone too


def test_a_first_write_that_raises_creates_nothing(store, backend):
    def half(f):
        f.write(b"x" * 1000)
        raise Boom("no")

    with pytest.raises(Boom):
        store.commit("new.bin", half)
    assert store.stat("new.bin") is None
    assert backend.raw_names(store, "") == []


def test_exclusive_commit_refuses_an_existing_key(store, backend):
    _put(store, "a.bin", b"first")
    with pytest.raises(FileExistsError):
        _put(store, "a.bin", b"second", exclusive=True)
    assert _get(store, "a.bin") == b"first"
    assert backend.raw_names(store, "") == ["a.bin"]
    assert _put(store, "b.bin", b"fresh", exclusive=True) == 5
    assert _get(store, "b.bin") == b"fresh"


def test_exclusive_commits_racing_in_threads_let_exactly_one_win(store):
    wins, losses = [], []
    barrier = threading.Barrier(4)

    def racer(n):
        def write(f):
            barrier.wait()
            f.write(b"writer %d" % n)

        try:
            store.commit("race.bin", write, exclusive=True)
            wins.append(n)
        except FileExistsError:
            losses.append(n)

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 3
    assert _get(store, "race.bin") == b"writer %d" % wins[0]


def test_keys_may_not_escape_the_root(store):
    for bad in ("../x", "/abs", "a/../b", "a//b", "./a", ""):
        with pytest.raises(ValueError):
            store.commit(bad, lambda f: f.write(b"x"))
    with pytest.raises(ValueError):
        store.open_read("../../etc/passwd")


# -- listing -------------------------------------------------------------------------------
def test_list_shows_committed_objects_of_one_folder_only(store):
    store.makedirs("sub")
    _put(store, "a.bin", b"1")
    _put(store, "sub/b.bin", b"22")
    assert sorted(i.key for i in store.list()) == ["a.bin"]
    assert [(i.key, i.size) for i in store.list("sub")] == [("sub/b.bin", 2)]
    assert store.list("missing") == []


def test_list_skips_an_object_being_written(store):
    seen = []

    def write(f):
        f.write(b"partial")
        seen.append(sorted(i.key for i in store.list()))
        seen.append(store.stat("x.bin"))
        f.write(b" and the rest")

    _put(store, "done.bin", b"d")
    store.commit("x.bin", write)
    assert seen == [["done.bin"], None]
    assert sorted(i.key for i in store.list()) == ["done.bin", "x.bin"]


def test_list_skips_a_dead_writers_leftover_temp(store, backend):
    backend.plant_temp(store, "x.bin", _dead_pid())
    _put(store, "y.bin", b"y")
    assert [i.key for i in store.list()] == ["y.bin"]
    assert store.stat("x.bin") is None
    assert len(backend.raw_names(store, "")) == 2


def test_token_changes_when_an_object_is_replaced(store):
    _put(store, "a.bin", b"same size A")
    first = store.stat("a.bin")
    listed = {i.key: i for i in store.list()}["a.bin"]
    assert listed.token == first.token and listed.size == first.size
    _put(store, "a.bin", b"same size B")
    second = store.stat("a.bin")
    assert second.size == first.size
    assert second.token != first.token
    assert {i.key: i for i in store.list()}["a.bin"].token == second.token


# -- reading -------------------------------------------------------------------------------
def test_read_range_and_ranges(store):
    data = bytes(range(256)) * 40
    _put(store, "r.bin", data)
    assert store.read_range("r.bin", 0, 10) == data[:10]
    assert store.read_range("r.bin", 1000, 300) == data[1000:1300]
    assert store.read_range("r.bin", len(data) - 5, 100) == data[-5:]  # short only at the end
    ranges = [(0, 3), (5000, 17), (len(data) - 1, 1), (7, 0)]
    assert store.read_ranges("r.bin", ranges) == [data[s:s + n] for s, n in ranges]
    assert store.read_ranges("r.bin", []) == []


def test_open_read_of_a_missing_object_is_file_not_found(store):
    with pytest.raises(FileNotFoundError):
        store.open_read("nope.bin")


def test_open_read_is_seekable(store):
    _put(store, "s.bin", b"0123456789")
    with store.open_read("s.bin") as f:
        f.seek(4)
        assert f.read(3) == b"456"
        f.seek(0, 2)
        assert f.tell() == 10


# -- delete --------------------------------------------------------------------------------
def test_delete_removes_objects_and_ignores_missing_ones(store):
    for k in ("a.bin", "b.bin", "c.bin"):
        _put(store, k, k.encode())
    store.delete(["a.bin", "missing.bin", "c.bin"])
    assert [i.key for i in store.list()] == ["b.bin"]
    with pytest.raises(FileNotFoundError):
        store.open_read("a.bin")
    store.delete([])


# -- folders -------------------------------------------------------------------------------
def test_list_dirs_names_the_folders_of_one_level(store):
    store.makedirs("runs/a/ckpt")
    store.makedirs("runs/b")
    _put(store, "runs/b/x.npz", b"x")
    _put(store, "top.bin", b"t")
    assert store.list_dirs() == ["runs"]
    assert sorted(store.list_dirs("runs")) == ["runs/a", "runs/b"]
    assert store.list_dirs("runs/b") == []
    assert store.list_dirs("missing") == []


def test_child_storage_is_rooted_at_a_folder(store):
    store.makedirs("run/ckpt")
    child = store.child("run/ckpt")
    _put(child, "0.npz", b"zero")
    assert [i.key for i in store.list("run/ckpt")] == ["run/ckpt/0.npz"]
    assert _get(store, "run/ckpt/0.npz") == b"zero"
    assert child.isdir() and store.isdir("run") and not store.isdir("other")
    assert child.label("0.npz").endswith("run/ckpt/0.npz")


# -- writer exclusion ----------------------------------------------------------------------
def test_lock_excludes_another_thread_until_released(store):
    held = threading.Event()
    release = threading.Event()

    def holder():
        with store.lock(".lock"):
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(30)
    with pytest.raises(LockedError) as info:
        with store.lock(".lock", timeout=0.2):
            pass
    assert info.value.file and info.value.file.endswith(".lock")
    release.set()
    t.join()
    with store.lock(".lock", timeout=30):
        pass


def test_lock_gives_mutual_exclusion(store):
    inside = []
    overlaps = []

    def worker():
        for _ in range(5):
            with store.lock(".lock", timeout=60):
                inside.append(1)
                if len(inside) > 1:
                    overlaps.append(len(inside))
                time.sleep(0.002)
                inside.pop()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []


_HOLD = textwrap.dedent("""
    import sys, time
    from ckpt.storage import open_storage
    from ckpt.storage.fsspec import FsspecStorage
    url, kind = sys.argv[1], sys.argv[2]
    store = FsspecStorage(url) if kind == "fsspec-file" else open_storage(url)
    with store.lock(".lock"):
        print("held", flush=True)
        time.sleep(600)
""")


def test_lock_excludes_another_process_and_is_freed_when_it_is_killed(store, backend):
    if not backend.shared_between_processes:
        pytest.skip(f"{backend.name} is private to one process")
    child = subprocess.Popen([sys.executable, "-c", _HOLD, store.url, backend.name], stdout=subprocess.PIPE,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        assert child.stdout.readline().strip() == b"held"
        with pytest.raises(LockedError):
            with store.lock(".lock", timeout=0.3):
                pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    with store.lock(".lock", timeout=60):  # a SIGKILLed holder leaves nothing that blocks
        pass


# -- cleanup -------------------------------------------------------------------------------
def test_cleanup_removes_only_dead_writers_leftovers_for_matching_targets(store, backend):
    _put(store, "0001.npz", b"committed")
    dead = _dead_pid()
    backend.plant_temp(store, "0002.npz", dead)          # dead writer: removed
    backend.plant_temp(store, "0003.npz", os.getpid())   # this process (maybe mid-write): kept
    backend.plant_temp(store, "0004.npz", os.getppid())  # a live process: kept
    backend.plant_temp(store, "other.json", dead)        # not a target: kept
    store.cleanup("", lambda name: name.endswith(".npz"))
    raw = backend.raw_names(store, "")
    assert "0001.npz" in raw
    assert not any(".0002.npz." in n for n in raw)
    for target in ("0003.npz", "0004.npz", "other.json"):
        assert any(f".{target}." in n for n in raw), (target, raw)
    assert [i.key for i in store.list()] == ["0001.npz"]


_KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from ckpt.storage import open_storage
    from ckpt.storage.fsspec import FsspecStorage
    url, kind = sys.argv[1], sys.argv[2]
    store = FsspecStorage(url) if kind == "fsspec-file" else open_storage(url)
    def write(f):
        f.write(b"x" * 100000)
        f.flush()
        print("writing", flush=True)
        time.sleep(600)
    store.commit("0007.npz", write)
""")


def test_a_writer_killed_mid_commit_leaves_nothing_visible_and_cleanup_removes_its_temp(store, backend):
    if not backend.shared_between_processes:
        pytest.skip(f"{backend.name} is private to one process")
    _put(store, "0007.npz", b"the old one")
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, store.url, backend.name], stdout=subprocess.PIPE,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        assert child.stdout.readline().strip() == b"writing"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert _get(store, "0007.npz") == b"the old one"
    assert [i.key for i in store.list()] == ["0007.npz"]
    assert len(backend.raw_names(store, "")) == 2  # the killed writer's temp
    store.cleanup("", lambda name: name == "0007.npz")
    assert backend.raw_names(store, "") == ["0007.npz"]
