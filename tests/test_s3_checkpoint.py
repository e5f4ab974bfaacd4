"""The full manager on a bucket: ckpt.Checkpoint("s3://bucket/run", storage_options=...) and the CLI."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest

pytest.importorskip("botocore")
pytest.importorskip("moto")

import ckpt  # noqa: E402
from ckpt import varfile  # noqa: E402
from ckpt.errors import LockedError, SaveError, StorageError  # noqa: E402
from ckpt.storage import open_storage  # noqa: E402
from ckpt.storage.s3 import S3Storage  # noqa: E402

from s3_server import counting  # noqa: E402


def state(step: int) -> dict[str, np.ndarray]:
    return {"w": np.full((64, 64), float(step)), "b": np.arange(8) * step}


def test_open_storage_picks_the_s3_backend(s3_root):
    url, opts = s3_root
    st = open_storage(url, opts)
    assert isinstance(st, S3Storage) and st.url == url


def test_checkpoint_on_a_bucket_saves_restores_rotates(s3_root):
    url, opts = s3_root
    c = ckpt.Checkpoint(url, keep_ckpts=2, storage_options=opts, lock_timeout=30)
    for step in (1, 2, 3):
        c.save(state(step), step, metrics={"loss": 1.0 / step})
    assert c.indices() == [2, 3] and c.latest() == 3
    target = {"w": np.zeros((64, 64)), "b": np.zeros(8, dtype=int)}
    c.restore(target)
    assert np.array_equal(target["w"], state(3)["w"])
    assert c.load(2)["b"].tolist() == state(2)["b"].tolist()
    assert c.metadata(3)["ckpt"]["metrics"] == {"loss": 1.0 / 3}
    assert [o.key for o in c.storage.list()] == ["0000000002.npz", "0000000003.npz"] or \
        sorted(o.key for o in c.storage.list() if not o.key.startswith(".")) == ["0000000002.npz", "0000000003.npz"]


def test_async_saves_and_wait_for_new(s3_root):
    url, opts = s3_root
    writer = ckpt.Checkpoint(url, async_save=True, storage_options=opts, lock_timeout=30)
    reader = ckpt.Checkpoint(url, storage_options=opts, makedir=False)
    got = {}

    def wait() -> None:
        got["idx"] = reader.wait_for_new(after=None, timeout=60)

    t = threading.Thread(target=wait)
    t.start()
    writer.save(state(5), 5)
    writer.wait()
    t.join(90)
    assert got["idx"] == 5 and reader.load(5)["w"][0, 0] == 5.0
    writer.close()


def test_restore_latest_skips_a_damaged_newest_object(s3_root):
    url, opts = s3_root
    c = ckpt.Checkpoint(url, storage_options=opts, lock_timeout=30)
    c.save(state(1), 1)
    st = c.storage  # the checkpoints' folder (logdir/ckpt)
    buf = io.BytesIO()
    varfile.write_file(buf, {"main": state(2)})
    data = bytearray(buf.getvalue())
    data[len(data) // 2] ^= 0xFF  # inside an array's data
    st.commit(c.key(2), lambda f: f.write(bytes(data)))
    target = {"w": np.zeros((64, 64)), "b": np.zeros(8, dtype=int)}
    with pytest.warns(ckpt.errors.CorruptCheckpointWarning, match="0000000002.npz"):
        c.restore(target)
    assert target["w"][0, 0] == 1.0


def test_second_manager_waits_for_the_lease(s3_root):
    url, opts = s3_root
    a = ckpt.Checkpoint(url, storage_options={**opts, "lease_ttl": 30}, lock_timeout=5)
    b = ckpt.Checkpoint(url, storage_options={**opts, "lease_ttl": 30}, lock_timeout=0.3)
    with a.storage.lock(a.LOCK_NAME):
        with pytest.raises(LockedError, match="another process is saving"):
            b.save(state(1), 1)
    b.save(state(1), 1)
    assert b.indices() == [1]


def test_average_and_ema_over_a_bucket(s3_root):
    url, opts = s3_root
    c = ckpt.Checkpoint(url, keep_ckpts=None, storage_options=opts, lock_timeout=30)
    for step in (1, 2, 3):
        c.save(state(step), step)
    avg = ckpt.average(url, last=3, storage_options=opts)
    assert avg["w"][0, 0] == pytest.approx(2.0)
    e = ckpt.ema(url, 0.5, last=3, storage_options=opts)
    assert e["w"].shape == (64, 64)


def test_restore_counts_requests(s3_root):
    url, opts = s3_root
    c = ckpt.Checkpoint(url, storage_options=opts, lock_timeout=30)
    big = {f"layer{i}": np.random.default_rng(i).standard_normal(32768) for i in range(64)}  # 16 MiB
    c.save(big, 1)
    fresh = ckpt.Checkpoint(url, storage_options=opts, makedir=False)
    with counting(fresh.storage) as n:
        out = fresh.load()
    assert all(np.array_equal(out[k], big[k]) for k in big)
    print(f"\nCheckpoint.load of 16 MiB / 64 arrays: {dict(n)}")
    assert n["GetObject"] <= 3 and sum(n.values()) <= 6  # + the listing that finds the latest


def test_missing_bucket_is_one_clear_error(s3_root):
    _, opts = s3_root
    # makedir=True checks the bucket at once: a SaveError (an OSError) saying the bucket is missing
    with pytest.raises((StorageError, SaveError), match="s3://no-such-bucket-16/run.*bucket 'no-such-bucket-16' does "
                                                         "not exist"):
        ckpt.Checkpoint("s3://no-such-bucket-16/run", storage_options=opts)
    reader = ckpt.Checkpoint("s3://no-such-bucket-16/run", storage_options=opts, makedir=False)
    with pytest.raises(StorageError, match="s3://no-such-bucket-16/run"):
        reader.indices()
