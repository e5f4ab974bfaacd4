"""The full manager on a bucket: ckpt.Checkpoint("s3://bucket/run", storage_options=...) and the CLI."""

from __future__ import annotations

import io
import os
import subprocess
import sys
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


def _ckpt_command(*argv: str, endpoint: str) -> subprocess.CompletedProcess[str]:
    """The real ``ckpt`` command in a child process that knows the store only from AWS variables."""
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "ckpt", *argv], capture_output=True, text=True, env=env,
                          timeout=120)


def test_the_ckpt_command_on_a_bucket(s3_root, s3_endpoint):
    """ls, info, verify, export and prune on s3:// URLs with only the usual AWS environment variables."""
    import json

    root, opts = s3_root
    ck = ckpt.Checkpoint(root, keep_ckpts=None, storage_options=opts, verbose=False)
    for i in (1, 2, 3):
        ck.save(state(i), i, metrics={"loss": 1.0 / i})
    done = _ckpt_command("ls", root, "--json", endpoint=s3_endpoint)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert [r["step"] for r in doc["checkpoints"]] == [1, 2, 3]
    assert [r["metrics"]["loss"] for r in doc["checkpoints"]] == [1.0, 0.5, 1.0 / 3]
    file = f"{root}/ckpt/{3:010d}.npz"
    done = _ckpt_command("verify", root, endpoint=s3_endpoint)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    done = _ckpt_command("info", file, endpoint=s3_endpoint)
    assert done.returncode == 0 and "float64" in done.stdout and "(64, 64)" in done.stdout, done.stderr
    done = _ckpt_command("export", file, f"{root}/exported.npz", endpoint=s3_endpoint)
    assert done.returncode == 0, done.stderr
    back = ckpt.load(f"{root}/exported.npz", storage_options=opts)
    for k, v in state(3).items():
        np.testing.assert_array_equal(back[k], v)
    done = _ckpt_command("prune", root, "--keep", "1", endpoint=s3_endpoint)
    assert done.returncode == 0, done.stderr
    assert ckpt.Checkpoint(root, storage_options=opts, verbose=False).indices() == [3]


def test_the_ckpt_command_on_a_missing_bucket_prints_one_line(s3_endpoint):
    done = _ckpt_command("ls", "s3://no-such-bucket-ckpt/run", endpoint=s3_endpoint)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "no-such-bucket-ckpt" in done.stderr


def test_a_second_save_of_a_committed_step_is_refused_not_overwritten(s3_root):
    """On a bucket a step is committed create-only: another writer of the same step (here a second
    manager, after the first released the lease) gets ObjectExistsError and the first one's data stays."""
    from ckpt.errors import ObjectExistsError

    root, opts = s3_root
    first = ckpt.Checkpoint(root, storage_options=opts, verbose=False)
    first.save(state(1), 3)
    first.close()
    second = ckpt.Checkpoint(root, storage_options=opts, verbose=False)
    with pytest.raises(ObjectExistsError, match="0000000003.npz") as info:
        second.save(state(2), 3)
    assert isinstance(info.value, FileExistsError) and info.value.file.endswith("0000000003.npz")
    back = second.load(3)
    np.testing.assert_array_equal(back["w"], state(1)["w"])
    assert second.indices() == [3]
    second.save(state(4), 4)  # the next step saves as usual
    assert second.indices() == [3, 4]
