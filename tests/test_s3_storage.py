"""The S3 backend against a real S3 server (moto's, on loopback): commits, leases, requests, faults."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

pytest.importorskip("botocore")
pytest.importorskip("moto")

import ckpt  # noqa: E402
from ckpt import varfile  # noqa: E402
from ckpt.errors import (  # noqa: E402
    ChecksumError,
    FormatError,
    LockedError,
    ObjectExistsError,
    SaveError,
    StorageError,
    StorageWarning,
)
from ckpt.storage import _s3client  # noqa: E402
from ckpt.storage.s3 import S3Storage, split_url  # noqa: E402

from s3_server import Proxy, counting, free_port, make_bucket, options  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MiB = 1 << 20


def storage(s3_root, **extra) -> S3Storage:
    url, opts = s3_root
    return S3Storage(url, {**opts, **extra})


def arrays(n: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"layer{i}": rng.standard_normal(size // 8) for i in range(n)}


def save(st: S3Storage, key: str, value, **kw) -> None:
    st.commit(key, lambda f: varfile.write_file(f, {"main": value}), exclusive=True, **kw)


def uploads(st: S3Storage) -> list[dict]:
    return st.client.list_multipart_uploads(Bucket=st.bucket).get("Uploads", [])


def in_flight(st: S3Storage, operation: str) -> dict[str, int]:
    """Tracks how many ``operation`` calls of ``st`` run at once (``["max"]``), by botocore event hooks."""
    live = {"now": 0, "max": 0}
    lock = threading.Lock()

    def up(**_):
        with lock:
            live["now"] += 1
            live["max"] = max(live["max"], live["now"])

    def down(**_):
        with lock:
            live["now"] -= 1

    st.client.meta.events.register(f"before-call.s3.{operation}", up)
    st.client.meta.events.register(f"after-call.s3.{operation}", down)
    return live


def run_writer(mode: str, endpoint: str, url: str, arg: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "s3_writer.py"), mode, endpoint, url, arg],
                         stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()  # type: ignore[union-attr]
    p.stdout.close()  # type: ignore[union-attr]
    if line.strip() != "ready":
        p.kill()
        p.wait(10)
        raise AssertionError(f"writer did not get ready: {line!r}")
    return p


# -- the storage contract --------------------------------------------------------------------
def test_commit_stat_list_read_delete(s3_root):
    st = storage(s3_root)
    st.makedirs()
    assert st.stat("ckpt/1.bin") is None and st.list("ckpt") == []
    assert st.commit("ckpt/1.bin", lambda f: f.write(b"hello world")) == 11
    st.commit("ckpt/sub/2.bin", lambda f: f.write(b"nested"))
    info = st.stat("ckpt/1.bin")
    assert info is not None and info.size == 11 and info.token
    assert [o.key for o in st.list("ckpt")] == ["ckpt/1.bin"]  # not recursive
    with st.open_read("ckpt/1.bin") as f:
        assert f.read() == b"hello world"
        f.seek(6)
        assert f.read(3) == b"wor"
    assert st.read_range("ckpt/1.bin", 6, 100) == b"world"
    assert st.read_ranges("ckpt/1.bin", [(0, 5), (6, 5), (3, 0)]) == [b"hello", b"world", b""]
    child = st.child("ckpt")
    assert child.url == st.url + "/ckpt" and [o.key for o in child.list()] == ["1.bin"]
    st.delete(["ckpt/1.bin", "ckpt/missing.bin"])
    assert st.stat("ckpt/1.bin") is None
    with pytest.raises(FileNotFoundError, match="1.bin"):
        st.open_read("ckpt/1.bin")


def test_replacing_commit_is_whole(s3_root):
    st = storage(s3_root)
    st.commit("a", lambda f: f.write(b"old"))
    token = st.stat("a").token
    st.commit("a", lambda f: f.write(b"new!"))
    assert st.read_range("a", 0, 10) == b"new!" and st.stat("a").token != token


def test_empty_object(s3_root):
    st = storage(s3_root)
    st.commit("empty", lambda f: None)
    with st.open_read("empty") as f:
        assert f.read() == b""


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a"])
def test_bad_keys_are_refused(s3_root, key):
    with pytest.raises(ValueError, match="storage key"):
        storage(s3_root).stat(key)


@pytest.mark.parametrize("url", ["gs://b/x", "s3://", "s3:///prefix"])
def test_bad_urls_are_refused(url):
    with pytest.raises(ValueError, match="s3"):
        split_url(url)


def test_unknown_option_is_refused(s3_root):
    with pytest.raises(TypeError, match="part_sise"):
        storage(s3_root, part_sise=1)


# -- a pack through the storage: whole, verified, in few requests ------------------------------
def test_pack_round_trip_in_few_requests(s3_root):
    st = storage(s3_root)
    value = arrays(64, 256 * 1024)  # 64 arrays, 16 MiB: 266 GETs through an s3fs file before
    with counting(st) as saved:
        save(st, "ckpt/10.npz", value)
    size = st.stat("ckpt/10.npz").size
    with counting(st) as opened:
        with st.open_read("ckpt/10.npz") as f:
            pack = ckpt.Pack(f)
            assert list(pack.slots_info) == ["main"]
            manifest_gets = opened["GetObject"]
            with counting(st) as restored:
                out = pack.load("main")
    assert set(out) == set(value) and all(np.array_equal(out[k], value[k]) for k in value)
    print(f"\n16 MiB / 64 arrays: save {dict(saved)}, open {manifest_gets} GET, restore +{dict(restored)}")
    assert manifest_gets <= 2
    assert opened["GetObject"] <= 3 + size // (64 * MiB)
    assert set(opened) == {"GetObject"}  # no HEAD, no LIST


def test_restore_reads_large_blocks_in_parallel(s3_root):
    """With 4 MiB blocks a 24 MiB pack is read in about size/block GETs, several in flight at once."""
    st = storage(s3_root, read_block=4 * MiB, readahead=2)
    value = arrays(6, 4 * MiB)
    save(st, "big.npz", value)
    size = st.stat("big.npz").size
    live = in_flight(st, "GetObject")
    with counting(st) as c:
        out = ckpt.load(st.open_read("big.npz"))
    assert all(np.array_equal(out[k], value[k]) for k in value)
    assert c["GetObject"] <= 3 + size // (4 * MiB)
    assert live["max"] >= 2  # the readahead overlaps the reader


def test_listing_metadata_reads_only_the_tail(s3_root):
    st = storage(s3_root)
    st.commit("m.npz", lambda f: varfile.write_file(f, {"main": arrays(8, MiB)}, metadata={"loss": 0.5}))
    with counting(st) as c, st.open_read("m.npz") as f:
        assert ckpt.Pack(f).metadata == {"loss": 0.5}
    assert c["GetObject"] <= 2
    print(f"\nmanifest of an 8 MiB pack: {c['GetObject']} GET")


def test_damaged_object_is_a_checksum_error(s3_root):
    st = storage(s3_root)
    buf = io.BytesIO()
    varfile.write_file(buf, {"main": arrays(2, MiB)})
    data = bytearray(buf.getvalue())
    data[len(data) // 3] ^= 0xFF
    st.commit("bad.npz", lambda f: f.write(bytes(data)))
    with pytest.raises(ChecksumError, match="bad.npz"):
        ckpt.load(st.open_read("bad.npz"))


def test_truncated_object_is_a_format_error(s3_root):
    st = storage(s3_root)
    buf = io.BytesIO()
    varfile.write_file(buf, {"main": arrays(2, MiB)})
    st.commit("cut.npz", lambda f: f.write(buf.getvalue()[: MiB]))
    with pytest.raises(FormatError, match="cut.npz"):
        ckpt.load(st.open_read("cut.npz"))


def test_object_replaced_while_reading_is_an_error(s3_root):
    st = storage(s3_root, tail_bytes=64 * 1024)
    save(st, "r.npz", arrays(4, MiB))
    f = st.open_read("r.npz")
    st.commit("r.npz", lambda w: varfile.write_file(w, {"main": arrays(4, MiB, seed=1)}))
    with pytest.raises(FormatError, match="replaced while it was being read"):
        f.seek(0)
        f.read(2 * MiB)


# -- streaming upload: bounded memory, whole or nothing -----------------------------------------
def test_multipart_upload_keeps_few_parts_in_flight(s3_root):
    st = storage(s3_root, part_size=5 * MiB, parts_in_flight=2)
    live = in_flight(st, "UploadPart")
    value = arrays(8, 4 * MiB)
    with counting(st) as c:
        save(st, "ckpt/1.npz", value)
    assert c["UploadPart"] >= 6 and c["CompleteMultipartUpload"] == 1 and c["PutObject"] <= 3
    assert 1 <= live["max"] <= 2
    out = ckpt.load(st.open_read("ckpt/1.npz"))
    assert all(np.array_equal(out[k], value[k]) for k in value)
    assert uploads(st) == []


def test_small_object_is_one_put(s3_root):
    st = storage(s3_root, conditional_writes=True)
    with counting(st) as c:
        save(st, "small.npz", {"w": np.arange(10)})
    assert dict(c) == {"PutObject": 1}


def test_failed_write_leaves_nothing(s3_root):
    st = storage(s3_root, part_size=5 * MiB)

    def write(f):
        f.write(b"x" * (12 * MiB))
        raise RuntimeError("the model blew up mid-save")

    with pytest.raises(RuntimeError, match="blew up"):
        st.commit("ckpt/2.npz", write, exclusive=True)
    assert st.stat("ckpt/2.npz") is None and uploads(st) == []


def test_second_writer_of_a_step_gets_a_clear_error(s3_root):
    st = storage(s3_root)
    save(st, "ckpt/5.npz", {"w": np.zeros(3)})
    before = st.stat("ckpt/5.npz")
    with pytest.raises(ObjectExistsError, match="ckpt/5.npz") as e:
        save(st, "ckpt/5.npz", {"w": np.ones(3)})
    assert isinstance(e.value, FileExistsError) and e.value.file.endswith("ckpt/5.npz")
    assert st.stat("ckpt/5.npz").token == before.token and uploads(st) == []


def test_two_concurrent_multipart_writers_one_wins_whole(s3_root):
    url, opts = s3_root
    results: dict[int, object] = {}
    values = {i: arrays(3, 4 * MiB, seed=i) for i in (1, 2)}
    barrier = threading.Barrier(2)
    # S3 decides between two racing completes atomically; moto's server checks If-None-Match and then
    # completes without a lock, so the two completes are serialised here (the uploads stay concurrent).
    serial = threading.Lock()

    def writer(i: int) -> None:
        st = S3Storage(url, {**opts, "part_size": 5 * MiB})
        # (a before-call handler that returns something replaces the request: these return None)
        st.client.meta.events.register("before-call.s3.CompleteMultipartUpload", lambda **_: [serial.acquire()] and None)
        st.client.meta.events.register("after-call.s3.CompleteMultipartUpload", lambda **_: serial.release())
        st.client.meta.events.register("after-call-error.s3.CompleteMultipartUpload", lambda **_: serial.release())

        def write(f):
            varfile.write_file(f, {"main": values[i]})
            barrier.wait(30)  # both have uploaded every part before either completes

        try:
            st.commit("ckpt/7.npz", write, exclusive=True)
            results[i] = "won"
        except ObjectExistsError as e:
            results[i] = e

    threads = [threading.Thread(target=writer, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(str(type(r).__name__) for r in results.values()) == ["ObjectExistsError", "str"]
    winner = next(i for i, r in results.items() if r == "won")
    out = ckpt.load(S3Storage(url, opts).open_read("ckpt/7.npz"))
    assert all(np.array_equal(out[k], values[winner][k]) for k in out)


def test_sigkilled_writer_leaves_nothing_and_is_cleaned_up_later(s3_root, s3_endpoint):
    url, _ = s3_root
    p = run_writer("hang-mid-upload", s3_endpoint, url, "ckpt/9.npz")
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    st = storage(s3_root)
    assert st.stat("ckpt/9.npz") is None and st.list("ckpt") == []
    left = uploads(st)
    assert len(left) == 1 and left[0]["Key"].endswith("ckpt/9.npz")
    # The next writer waits out the dead one's lease (1 s), then aborts what it left.
    with st.lock(".ckpt-lease", timeout=30):
        st.cleanup("ckpt", lambda k: k.endswith(".txt"))  # not ours: left alone
        assert len(uploads(st)) == 1
        st.cleanup("ckpt", lambda k: k.endswith(".npz"))
        assert uploads(st) == []
        save(st, "ckpt/9.npz", {"w": np.arange(4)})  # the step can be saved again
    assert np.array_equal(ckpt.load(st.open_read("ckpt/9.npz"))["w"], np.arange(4))


def test_cleanup_without_the_lease_spares_young_uploads(s3_root):
    st = storage(s3_root, abandoned_after=10 ** 10)  # moto dates every upload 2010: "young" needs a long limit
    st.client.create_multipart_upload(Bucket=st.bucket, Key=f"{st.prefix}/ckpt/3.npz")
    st.cleanup("ckpt", lambda k: True)
    assert len(uploads(st)) == 1
    storage(s3_root, abandoned_after=0).cleanup("ckpt", lambda k: True)
    assert uploads(st) == []


# -- conditional writes: a store that ignores them -----------------------------------------------
def test_store_ignoring_conditions_is_detected_once_with_a_warning(s3_root, s3_endpoint):
    url, opts = s3_root
    proxy = Proxy(s3_endpoint, strip_conditions=True)
    try:
        st = S3Storage(url, {**opts, "endpoint_url": proxy.endpoint})
        with pytest.warns(StorageWarning, match="ignores conditional writes"):
            save(st, "a.npz", {"w": np.zeros(2)})
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            save(st, "b.npz", {"w": np.zeros(2)})  # said once
            with pytest.raises(ObjectExistsError, match="a.npz"):
                save(st, "a.npz", {"w": np.ones(2)})  # the fallback still refuses a visible step
        assert np.array_equal(ckpt.load(st.open_read("a.npz"))["w"], np.zeros(2))
    finally:
        proxy.close()


def test_real_store_is_probed_once(s3_root):
    st = storage(s3_root)
    with counting(st) as first:
        save(st, "a.npz", {"w": np.zeros(2)})
    with counting(st) as second:
        save(st, "b.npz", {"w": np.zeros(2)})
    assert first["PutObject"] == 4 and first["DeleteObject"] == 1  # probe: create, 2 refused writes, delete
    assert dict(second) == {"PutObject": 1}


# -- the writer lease ----------------------------------------------------------------------------
def test_lease_excludes_a_second_writer(s3_root):
    a, b = storage(s3_root, lease_ttl=30), storage(s3_root, lease_ttl=30)
    with a.lock(".ckpt-lease"):
        t0 = time.monotonic()
        with pytest.raises(LockedError, match="lock_timeout=0.5"):
            with b.lock(".ckpt-lease", timeout=0.5):
                pass
        assert time.monotonic() - t0 >= 0.5
    with b.lock(".ckpt-lease", timeout=5):  # released: taken at once
        assert a.stat(".ckpt-lease") is not None
    assert a.stat(".ckpt-lease") is None


def test_lease_is_renewed_while_held(s3_root):
    st = storage(s3_root, lease_ttl=0.6)
    other = storage(s3_root, lease_ttl=0.6)
    with st.lock(".ckpt-lease"):
        token = st.stat(".ckpt-lease").token
        time.sleep(1.5)
        assert st.stat(".ckpt-lease").token != token  # rewritten by compare-and-swap
        with pytest.raises(LockedError):  # renewed, so never expired
            with other.lock(".ckpt-lease", timeout=1.5):
                pass


def test_dead_writers_lease_is_taken_over_after_expiry(s3_root, s3_endpoint, caplog):
    url, _ = s3_root
    p = run_writer("hold-lease", s3_endpoint, url, "1.0")
    try:
        st = storage(s3_root)
        with pytest.raises(LockedError):
            with st.lock(".ckpt-lease", timeout=0.3):
                pass
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="ckpt"):
        with st.lock(".ckpt-lease", timeout=20):
            took = time.monotonic() - t0
            save(st, "after.npz", {"w": np.zeros(1)})
    assert took >= 0.9  # waited out the dead writer's ttl
    assert "took over the writer lease" in caplog.text


def test_a_stalled_holder_that_lost_its_lease_cannot_commit(s3_root):
    st = storage(s3_root, lease_ttl=0.5)
    thief = storage(s3_root, lease_ttl=0.5)
    with st.lock(".ckpt-lease"):
        lease = st._leases[0]
        lease._stop.set()  # the holder stalls: no more renewals
        lease._thread.join()
        with thief.lock(".ckpt-lease", timeout=10):
            # the stalled holder wakes up: its next renewal fails the compare-and-swap
            lease._stop.clear()
            lease._thread = threading.Thread(target=lease._renew, daemon=True)
            lease._thread.start()
            deadline = time.monotonic() + 10
            while not lease.lost and time.monotonic() < deadline:
                time.sleep(0.05)
            assert lease.lost
            with pytest.raises(StorageError, match="lost its lease"):
                save(st, "late.npz", {"w": np.zeros(1)})
    assert st.stat("late.npz") is None


# -- faults: one clear error naming the URL -----------------------------------------------------
def test_missing_bucket(s3_endpoint):
    st = S3Storage("s3://no-such-bucket-ckpt/run", options(s3_endpoint))
    for op in (st.makedirs, lambda: st.list(), lambda: st.stat("x"), lambda: st.open_read("x")):
        with pytest.raises(StorageError, match="s3://no-such-bucket-ckpt/run.*does not exist"):
            op()
    with pytest.raises(SaveError, match="s3://no-such-bucket-ckpt/run"):
        st.commit("x", lambda f: f.write(b"1"))


def test_unreachable_endpoint_fails_fast_and_clearly():
    port = free_port()  # nothing listens there
    st = S3Storage("s3://bucket/run", {"endpoint_url": f"http://127.0.0.1:{port}", "key": "k", "secret": "s",
                                       "connect_timeout": 1, "retries": 1})
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=rf"s3://bucket/run.*cannot reach the S3 endpoint at http://127.0.0.1:{port}"):
        st.list()
    with pytest.raises(SaveError, match="s3://bucket/run/x: cannot reach"):
        st.commit("x", lambda f: f.write(b"1"))
    assert time.monotonic() - t0 < 60  # bounded (a hang would be the bug)


def test_bad_credentials(tmp_path):
    pytest.importorskip("flask")
    port = free_port()
    # Its own process: moto's authentication switch is global to a process.
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        endpoint = f"http://127.0.0.1:{port}"
        import urllib.request

        for _ in range(200):
            try:
                urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0",
                                                              method="POST"), timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        st = S3Storage("s3://bucket/run", options(endpoint, key="AKIAWRONG", secret="nope"))
        with pytest.raises(StorageError, match="s3://bucket/run: the store refused the credentials"):
            st.list()
    finally:
        server.kill()
        server.wait(30)


def test_network_cut_mid_save_is_a_save_error_and_nothing_is_visible(s3_root, s3_endpoint):
    url, opts = s3_root
    direct = storage(s3_root)
    save(direct, "ckpt/1.npz", {"w": np.arange(3)})
    proxy = Proxy(s3_endpoint)
    st = S3Storage(url, {**opts, "endpoint_url": proxy.endpoint, "part_size": 5 * MiB, "retries": 1,
                         "connect_timeout": 1, "read_timeout": 5, "conditional_writes": True})

    def write(f):
        f.write(b"x" * (11 * MiB))
        time.sleep(0.5)
        proxy.cut()
        f.write(b"y" * (11 * MiB))

    t0 = time.monotonic()
    with pytest.raises(SaveError, match="ckpt/2.npz.*nothing of this save is visible"):
        st.commit("ckpt/2.npz", write, exclusive=True)
    assert time.monotonic() - t0 < 120
    assert direct.stat("ckpt/2.npz") is None
    assert [o.key for o in direct.list("ckpt")] == ["ckpt/1.npz"]  # the earlier one untouched
    assert np.array_equal(ckpt.load(direct.open_read("ckpt/1.npz"))["w"], np.arange(3))


# -- deletes ------------------------------------------------------------------------------------
def test_delete_is_batched(s3_root):
    st = storage(s3_root)
    keys = [f"k/{i}" for i in range(2100)]
    client, _ = _s3client.make_client(options(s3_root[1]["endpoint_url"]))
    for k in keys[:5]:
        st.commit(k, lambda f: f.write(b"1"))
    with counting(st) as c:
        st.delete(keys)
    assert dict(c) == {"DeleteObjects": 3}
    assert st.list("k") == []
    assert client is not None


def test_aws_endpoint_url_environment_variable(s3_endpoint, monkeypatch):
    bucket = make_bucket(s3_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    st = S3Storage(f"s3://{bucket}/env")
    st.commit("x", lambda f: f.write(b"via env"))
    assert st.endpoint.rstrip("/") == s3_endpoint and st.read_range("x", 0, 7) == b"via env"


# -- the shared storage contract (tests/test_storage_backends.py) on S3 -------------------------
import inspect  # noqa: E402

import test_storage_backends as contract  # noqa: E402
from storage_backends import Backend  # noqa: E402

#: Local temp files carry a pid that cleanup checks; S3 uploads carry none, so S3 decides by the
#: writer lease and the upload's age instead (test_sigkilled_writer_... and test_cleanup_without_...).
# And a writer killed before its first full part (5+ MiB) has sent nothing at all, so the contract's
# killed-writer test (100 kB) finds no leftover to clean: test_sigkilled_writer_... kills one mid-upload.
_NOT_FOR_S3 = {"test_cleanup_removes_only_dead_writers_leftovers_for_matching_targets",
               "test_a_writer_killed_mid_commit_leaves_nothing_visible_and_cleanup_removes_its_temp"}
CONTRACT = sorted(n for n in dir(contract) if n.startswith("test_") and n not in _NOT_FOR_S3)


def _s3_plant(store, key, pid):
    store.client.create_multipart_upload(Bucket=store.bucket, Key=store._abs(key))


def _s3_raw(store, prefix):
    folder = store._abs(prefix) + "/" if prefix else store.prefix + "/"
    objects = store.client.list_objects_v2(Bucket=store.bucket, Prefix=folder, Delimiter="/").get("Contents", [])
    ups = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=folder).get("Uploads", [])
    names = [o["Key"][len(folder):] for o in objects] + [f".{u['Key'][len(folder):]}.upload" for u in ups]
    return sorted(n for n in names if not n.startswith(".ckpt-probe"))


@pytest.mark.parametrize("name", CONTRACT)
def test_storage_contract_on_s3(name, s3_root, s3_endpoint, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)  # child processes open the URL with no options
    url, opts = s3_root
    backend = Backend("s3", lambda tmp: url, _s3_plant, _s3_raw, open=lambda loc: S3Storage(loc, opts))
    store = backend.make(tmp_path)
    store.makedirs()
    fn = getattr(contract, name)
    given = {"store": store, "backend": backend, "tmp_path": tmp_path}
    fn(**{p: given[p] for p in inspect.signature(fn).parameters})
