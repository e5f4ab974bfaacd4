"""Every library call that takes a location, on URLs: memory:// (fsspec) and file:// (local, exactly).

Checkpoint (sync and async saves, restore past a damaged checkpoint, prune, wait_for_new,
aliases), average/ema with an out= URL, save/load_var_collection, ckpt.dump/load and Pack; plus
what a URL must never do (create a local folder named "memory:") and what it says without fsspec.
"""

from __future__ import annotations

import os
import sys
import threading
import uuid

import numpy as np
import pytest

import ckpt
from ckpt.errors import CorruptCheckpointWarning, MissingDependencyError, StorageError
from ckpt.storage import LocalStorage, open_file, open_storage

from storage_backends import URL_BACKENDS


@pytest.fixture(params=URL_BACKENDS, ids=[b.name for b in URL_BACKENDS])
def url(request, tmp_path, monkeypatch):
    """A fresh URL folder; the test runs in an empty cwd, which must stay empty."""
    backend = request.param
    if backend.needs:
        pytest.importorskip(backend.needs)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    location = backend.location(tmp_path)
    yield location
    assert os.listdir(cwd) == []  # a URL never lands in a local folder named after its scheme
    if location.startswith("memory://"):
        import fsspec

        fs = fsspec.filesystem("memory")
        if fs.exists(location[len("memory://"):]):
            fs.rm(location[len("memory://"):], recursive=True)


def weights(seed=0):
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(4)}


def same(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


def test_checkpoint_save_restore_and_rotate(url):
    ck = ckpt.Checkpoint(url, keep_ckpts=2, verbose=False)
    for i in (1, 2, 3):
        path = ck.save(weights(i), i, metrics={"loss": 1.0 / i})
        assert path == f"{url}/ckpt/{i:010d}.npz"
    assert ck.indices() == [2, 3]
    target = {k: np.zeros_like(v) for k, v in weights().items()}
    assert ck.restore(target) == (3, f"{url}/ckpt/{3:010d}.npz")
    same(target, weights(3))
    same(ck.load(2), weights(2))
    assert ck.best(metric="loss", mode="min")[0] == 3
    assert ck.metadata(3)["ckpt"]["metrics"] == {"loss": pytest.approx(1 / 3)}
    again = ckpt.Checkpoint(url, makedir=False, verbose=False)  # a second process's view
    assert again.indices() == [2, 3]


def test_async_save_to_a_url(url):
    with ckpt.Checkpoint(url, keep_ckpts=None, async_save=True, verbose=False) as ck:
        for i in range(4):
            ck.save(weights(i), i)
        ck.wait()
        assert ck.indices() == [0, 1, 2, 3]
    same(ckpt.Checkpoint(url, makedir=False).load(), weights(3))


def test_restore_falls_back_past_a_damaged_newest_checkpoint(url):
    ck = ckpt.Checkpoint(url, keep_ckpts=None, verbose=False)
    ck.save(weights(1), 1)
    ck.save(weights(2), 2)
    store = ck.storage
    with store.open_read(ck.key(2)) as f:
        data = bytearray(f.read())
    data[len(data) // 3] ^= 0xFF  # inside an array: the hash no longer matches
    store.commit(ck.key(2), lambda f: f.write(bytes(data)))
    target = {k: np.zeros_like(v) for k, v in weights().items()}
    with pytest.warns(CorruptCheckpointWarning, match="0000000002"):
        idx, _ = ck.restore(target)
    assert idx == 1
    same(target, weights(1))


def test_prune_and_aliases_on_a_url(url):
    ck = ckpt.Checkpoint(url, keep_ckpts=None, verbose=False)
    for i in range(5):
        ck.save(weights(i), i)
    ck.alias("best", 1)
    assert ck.aliases() == {"best": 1}
    ck.keep_ckpts = 2
    ck.retention = ckpt.RetentionPolicy(keep_last=2)
    assert ck.prune(dry_run=True) == [0, 2]
    assert ck.prune() == [0, 2]
    assert ck.indices() == [1, 3, 4]  # the aliased one stays


def test_wait_for_new_sees_a_save_from_another_thread(url):
    ck = ckpt.Checkpoint(url, verbose=False)
    ck.save(weights(), 1)
    watcher = ckpt.Checkpoint(url, makedir=False)
    t = threading.Timer(0.2, lambda: ckpt.Checkpoint(url, verbose=False).save(weights(), 5))
    t.start()
    try:
        assert watcher.wait_for_new(after=1, timeout=60, poll_interval=0.02) == 5
    finally:
        t.join()
    assert watcher.wait_for_new(after=5, timeout=0.05) is None


def test_average_and_ema_read_a_url_logdir_and_write_out_to_a_url(url):
    ck = ckpt.Checkpoint(url, keep_ckpts=None, verbose=False)
    for i in (1, 2, 3):
        ck.save(weights(i), i)
    out = f"{url}/avg.npz"
    mean = ckpt.average(url, out=out)
    np.testing.assert_allclose(mean["w"], np.mean([weights(i)["w"] for i in (1, 2, 3)], axis=0), rtol=1e-6)
    same(ckpt.load(out), mean)
    record = ckpt.Pack(out).metadata["ckpt"]
    assert [s["file"] for s in record["averaged_from"]] == [ck.path(i) for i in (1, 2, 3)]
    ema = ckpt.ema([ck.path(1), ck.path(3)], 0.5, out=f"{url}/ema.npz")
    same(ckpt.load(f"{url}/ema.npz"), ema)


def test_var_collection_dump_load_and_pack_on_urls(url):
    open_storage(url).makedirs()  # a file's folder must exist, as for a local path
    path = f"{url}/vc.npz"
    ckpt.save_var_collection(path, weights(7))
    target = {k: np.zeros_like(v) for k, v in weights().items()}
    ckpt.load_var_collection(path, target)
    same(target, weights(7))
    ckpt.dump({"lr": 0.1, "steps": [1, 2]}, f"{url}/cfg.npz")
    assert ckpt.load(f"{url}/cfg.npz") == {"lr": 0.1, "steps": [1, 2]}
    with ckpt.Pack(f"{url}/pack.npz") as pack:
        pack.dump("main", weights(1))
        pack.dump("config", {"a": 1})
    with ckpt.Pack(f"{url}/pack.npz") as pack:
        assert sorted(pack) == ["config", "main"]
        assert pack.load("config") == {"a": 1}
        pack.remove("config")
    assert sorted(ckpt.Pack(f"{url}/pack.npz")) == ["main"]


def test_a_missing_url_file_is_file_not_found(url):
    with pytest.raises(FileNotFoundError):
        ckpt.load(f"{url}/nothing.npz")
    assert ckpt.Checkpoint(url, makedir=False).indices() == []


def test_memory_url_creates_no_local_folder(tmp_path, monkeypatch):
    pytest.importorskip("fsspec")
    monkeypatch.chdir(tmp_path)
    name = f"memory://run-{uuid.uuid4().hex}"
    ck = ckpt.Checkpoint(name, verbose=False)
    ck.save(weights(), 1)
    ckpt.save_var_collection(f"{name}/x.npz", weights())
    assert os.listdir(tmp_path) == []
    assert not os.path.exists("memory:")


def test_a_name_without_double_slash_stays_a_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = open_storage("memory:run")
    assert isinstance(store, LocalStorage)
    ckpt.Checkpoint("memory:run", verbose=False).save(weights(), 1)
    assert os.path.isfile(os.path.join("memory:run", "ckpt", "0000000001.npz"))


def test_file_urls_map_to_the_local_backend_exactly(tmp_path):
    store = open_storage((tmp_path / "a b").as_uri())  # percent-encoded space
    assert isinstance(store, LocalStorage)
    assert store.root == str(tmp_path / "a b")
    parent, key = open_file((tmp_path / "x.npz").as_uri())
    assert isinstance(parent, LocalStorage) and key == "x.npz"


def test_storage_options_are_refused_for_a_local_path(tmp_path):
    with pytest.raises(ValueError, match="storage_options"):
        ckpt.Checkpoint(tmp_path, storage_options={"anon": True})
    with pytest.raises(ValueError, match="storage_options"):
        ckpt.save_var_collection(tmp_path / "x.npz", weights(), storage_options={"anon": True})


def test_storage_options_reach_the_fsspec_filesystem(tmp_path):
    pytest.importorskip("fsspec")
    # with options, a file:// URL goes to fsspec's local filesystem, which takes auto_mkdir
    ck = ckpt.Checkpoint((tmp_path / "r").as_uri(), storage_options={"auto_mkdir": True}, verbose=False)
    assert type(ck.storage).__name__ == "FsspecStorage"
    ck.save(weights(), 3)
    same(ckpt.load(str(tmp_path / "r" / "ckpt" / "0000000003.npz")), weights())


def test_a_url_without_fsspec_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fsspec", None)  # `import fsspec` now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"ckpt\[fsspec\]") as info:
        ckpt.Checkpoint("memory://run", verbose=False)
    assert info.value.package == "fsspec" and info.value.extra == "fsspec"
    assert isinstance(info.value, ImportError)
    with pytest.raises(MissingDependencyError):
        ckpt.load("memory://run/x.npz")
    # local paths (and file:// URLs) still work without it
    ckpt.Checkpoint(tmp_path, verbose=False).save(weights(), 1)
    ckpt.Checkpoint((tmp_path / "u").as_uri(), verbose=False).save(weights(), 1)


def test_an_unknown_scheme_is_a_clear_error(tmp_path):
    pytest.importorskip("fsspec")
    with pytest.raises((MissingDependencyError, StorageError, ValueError)) as info:
        ckpt.Checkpoint("nosuchscheme://bucket/run")
    assert "nosuchscheme" in str(info.value)


@pytest.fixture
def memory_store():
    pytest.importorskip("fsspec")
    from ckpt.storage.fsspec import FsspecStorage

    store = FsspecStorage(f"memory://locks-{uuid.uuid4().hex}", lock_ttl=0.3)
    store.makedirs()
    yield store
    store.fs.rm(store.path(""), recursive=True)


def _plant_lock(store, owner, expires):
    import json
    import time

    doc = json.dumps({"owner": owner, "expires": time.time() + expires}).encode()
    store.commit(".lock", lambda f: f.write(doc))


def _lock_owner(store):
    import json

    return json.loads(store.read_range(".lock", 0, 4096).decode())["owner"]


def _this_host():
    from ckpt.storage import fsspec as backend

    return backend._HOST


def test_an_expired_lock_object_of_another_host_is_taken_over(memory_store):
    _plant_lock(memory_store, "deadbeef-123-1-00000000", expires=-5)
    with memory_store.lock(".lock", timeout=5):
        assert _lock_owner(memory_store).startswith(f"{_this_host()}-{os.getpid()}-")  # taken over: ours now


def test_a_live_lease_of_another_host_is_respected(memory_store):
    from ckpt.errors import LockedError

    _plant_lock(memory_store, "deadbeef-123-1-00000000", expires=60)
    with pytest.raises(LockedError):
        with memory_store.lock(".lock", timeout=0.3):
            pass


def test_a_dead_process_on_this_host_loses_its_lock_at_once(memory_store):
    import subprocess

    from ckpt.storage import fsspec as backend

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    _plant_lock(memory_store, f"{backend._HOST}-{p.pid}-1-00000000", expires=60)
    with memory_store.lock(".lock", timeout=5):
        assert _lock_owner(memory_store).startswith(f"{backend._HOST}-{os.getpid()}-")  # the dead pid's is gone


def test_a_held_lock_is_refreshed_past_its_lease(memory_store):
    import time

    from ckpt.errors import LockedError

    with memory_store.lock(".lock"):
        time.sleep(1.0)  # three leases of 0.3 s: the holder's heartbeat keeps it
        with pytest.raises(LockedError):
            with memory_store.lock(".lock", timeout=0.2):
                pass
    with memory_store.lock(".lock", timeout=5):
        pass


def test_a_file_at_the_root_of_a_scheme(tmp_path):
    pytest.importorskip("fsspec")
    name = f"memory://root-{uuid.uuid4().hex}.npz"
    ckpt.dump({"a": 1}, name)
    store, key = open_file(name)
    assert store.url == "memory://" and store.label(key) == name
    assert ckpt.load(name) == {"a": 1}
    store.delete([key])


def test_inspect_and_build_take_urls(url):
    ckpt.Checkpoint(url, verbose=False).save(weights(), 4, metrics={"loss": 0.5})
    path = f"{url}/ckpt/0000000004.npz"
    report = ckpt.inspect(path)
    assert report["file"] == path and "main" in report["slots"]
    from ckpt.build import resolve_path

    assert resolve_path(url) == path  # the latest checkpoint of a URL log directory
    assert resolve_path(f"{url}/ckpt") == path  # a bare directory of checkpoints
    assert resolve_path(path) == path
    with pytest.raises(FileNotFoundError):
        resolve_path(f"{url}/nothing-here")


def test_a_jax_pytree_round_trips_through_a_url(url, jax, jnp):
    tree = {"params": {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.zeros(3)}}, "step": 7}
    ck = ckpt.Checkpoint(url, verbose=False)
    ck.save(tree, 7)
    restored = ck.load(template=jax.eval_shape(lambda: tree))
    np.testing.assert_array_equal(np.asarray(restored["params"]["dense"]["kernel"]), np.arange(6.0).reshape(2, 3))
    assert int(restored["step"]) == 7


def test_a_scheme_whose_fsspec_backend_is_missing_names_the_package():
    pytest.importorskip("fsspec")
    try:
        import s3fs  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("s3fs is installed")
    with pytest.raises(MissingDependencyError, match="s3fs") as info:
        ckpt.Checkpoint("s3://bucket/run")
    assert info.value.package == "s3fs" and info.value.file == "s3://bucket/run"


def test_a_checkpoint_on_an_open_storage(tmp_path):
    store = open_storage(tmp_path / "run")
    ck = ckpt.Checkpoint(store, verbose=False)
    assert ck.logdir == str(tmp_path / "run") and ck.key(12) == "0000000012.npz"
    ck.save(weights(), 12)
    assert ck.path(12) == str(tmp_path / "run" / "ckpt" / "0000000012.npz")
    assert [i.key for i in store.list("ckpt") if i.key.endswith(".npz")] == ["ckpt/0000000012.npz"]
    with pytest.raises(ValueError, match="storage_options"):
        ckpt.Checkpoint(store, storage_options={"x": 1})


def test_find_walks_a_tree_of_runs_at_a_url(url):
    for run, loss in (("a", 0.5), ("b", 0.25)):
        ck = ckpt.Checkpoint(f"{url}/{run}", keep_ckpts=None, verbose=False)
        ck.save(weights(), 1, metrics={"loss": loss * 2})
        ck.save(weights(), 2, metrics={"loss": loss})
    ckpt.Checkpoint(f"{url}/b", verbose=False).alias("best", 2)
    found = ckpt.find(url, order_by="loss")
    assert [(e.run, e.idx) for e in found] == [(f"{url}/b", 2), (f"{url}/a", 2), (f"{url}/b", 1), (f"{url}/a", 1)]
    assert found[0].path == f"{url}/b/ckpt/0000000002.npz" and found[0].aliases == ("best",)
    assert [e.idx for e in ckpt.find(url, alias="best")] == [2]
    assert open_storage(url).stat(".ckpt-index.json") is not None  # the cache went through the storage too
    again = ckpt.find(url, order_by="loss")  # from the cache
    assert [(e.run, e.idx) for e in again] == [(e.run, e.idx) for e in found]
    one = ckpt.find(f"{url}/a/ckpt/0000000001.npz")
    assert [e.idx for e in one] == [1]


def run_cli(capsys, *argv):
    from ckpt import cli

    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_every_cli_command_takes_a_url(url, capsys):
    """ls, info, verify (file and run), export, diff, average and prune on a URL: the same library calls."""
    ck = ckpt.Checkpoint(url, keep_ckpts=None, verbose=False)
    for i in (1, 2, 3):
        ck.save(weights(i), i, metrics={"loss": 1.0 / i})
    rc, out, err = run_cli(capsys, "ls", url)
    assert rc == 0 and err == ""
    rc, out, _ = run_cli(capsys, "ls", url, "--json")
    import json

    doc = json.loads(out)
    assert [r["step"] for r in doc["checkpoints"]] == [1, 2, 3] and doc["directory"] == f"{url}/ckpt"
    assert [r["path"] for r in doc["checkpoints"]] == [f"{url}/ckpt/{i:010d}.npz" for i in (1, 2, 3)]
    file = f"{url}/ckpt/{3:010d}.npz"
    rc, out, _ = run_cli(capsys, "info", file)
    assert rc == 0 and "w" in out and "float32" in out
    rc, out, _ = run_cli(capsys, "verify", url)
    assert rc == 0
    out_npz = f"{url}/exported.npz"
    rc, _, err = run_cli(capsys, "export", file, out_npz)
    assert rc == 0, err
    same(ckpt.load(out_npz), weights(3))
    rc, out, _ = run_cli(capsys, "diff", f"{url}/ckpt/{1:010d}.npz", file)
    assert rc in (0, 1) and "w" in out
    rc, _, err = run_cli(capsys, "prune", url, "--keep", "1")
    assert rc == 0, err
    assert ckpt.Checkpoint(url, verbose=False).indices() == [3]


def test_cli_on_a_damaged_url_prints_one_line(url, capsys):
    ck = ckpt.Checkpoint(url, verbose=False)
    ck.save(weights(), 1)
    storage, key = open_file(f"{url}/ckpt/{1:010d}.npz")
    data = bytearray(storage.read_range(key, 0, 1 << 30))
    data[len(data) // 3] ^= 0xFF
    storage.commit(key, lambda f: f.write(bytes(data)))
    rc, out, err = run_cli(capsys, "verify", f"{url}/ckpt/{1:010d}.npz")
    assert rc == 1 and "Traceback" not in err and f"{1:010d}.npz" in out + err
