"""Multi-process sharded saves on real jax.distributed jobs (processes on 127.0.0.1, gloo collectives).

One 2 x 2 job serves most cases (pools are reused); restores run in 1 x 4 and 4 x 1 jobs and in
this process (numpy). Every wait in the library is bounded, and so is every wait here.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

jax = pytest.importorskip("jax")  # both tox envs: jax 0.9 (objax) and 0.10 run multi-process CPU jobs

import ckpt  # noqa: E402
from ckpt import distributed as dist  # noqa: E402
from ckpt._cli import main as cli_main  # noqa: E402
from ckpt.errors import ChecksumError, FormatError  # noqa: E402

from distributed_pool import Pool  # noqa: E402
from dist_cases import expected  # noqa: E402


@pytest.fixture(scope="module")
def pool2x2():
    pool = Pool(2, 2)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def saved(pool2x2, tmp_path_factory):
    """Steps 1 (row-sharded), 2 (column-sharded, async) and 3 (fully replicated) saved by the 2 x 2 job."""
    logdir = str(tmp_path_factory.mktemp("dist"))
    results = {}
    for step, spec, block in ((1, "row", True), (2, "col", False), (3, "rep", True)):
        results[step] = pool2x2.run("save", logdir=logdir, step=step, spec=spec, block=block, keep=5)
    return logdir, results


def _records(logdir):
    return sorted(n for n in os.listdir(os.path.join(logdir, "ckpt")) if n.endswith(".npz"))


def test_layout_shards_and_record(saved):
    logdir, _ = saved
    d = os.path.join(logdir, "ckpt")
    assert _records(logdir) == ["0000000001.npz", "0000000002.npz", "0000000003.npz"]
    assert ckpt.Checkpoint(logdir, makedir=False).indices() == [1, 2, 3]
    for idx in (1, 2, 3):
        rec_path = os.path.join(d, f"{idx:010d}.npz")
        assert dist.is_record_file(rec_path)
        info = dist.info(rec_path)
        assert info["process_count"] == 2 and len(info["shards"]) == 2
        w = {a["name"]: a for a in info["arrays"]["main"]}["params/w"]
        assert w["shape"] == [8, 12] and w["dtype"] == "float32"
        # every shard file is an ordinary pack: numpy reads it, verify passes on its own
        for s in info["shards"]:
            path = os.path.join(d, s["file"])
            assert os.path.getsize(path) == s["size"]
            with np.load(path) as z:
                if idx == 3 and s["process"] == 1:  # fully replicated: process 0 holds every replica_id 0
                    assert z.files == ["__ckpt__/manifest.json"]
                    continue
                names = [str(n) for n in z["names"]]
                assert any(n.startswith("params/w@") for n in names)
                assert all(z[str(i)].size for i in range(len(names)))
            assert cli_main(["verify", path]) == 0
        dist.verify_file(rec_path)


def test_each_slice_written_once(saved):
    """Row sharding over 4 devices: 4 chunks of w, split 2 + 2 between the processes; replicated: 1 chunk."""
    logdir, _ = saved
    d = os.path.join(logdir, "ckpt")
    for idx, chunks in ((1, 4), (2, 4), (3, 1)):
        info = dist.info(os.path.join(d, f"{idx:010d}.npz"))
        w = {a["name"]: a for a in info["arrays"]["main"]}["params/w"]
        assert w["chunks"] == chunks
        b = {a["name"]: a for a in info["arrays"]["main"]}["params/b"]
        assert b["chunks"] == 1  # replicated: written by one process only


def test_restore_in_numpy_here(saved):
    logdir, _ = saved
    ck = ckpt.Checkpoint(logdir, makedir=False)
    for idx in (1, 2, 3):
        tree = ck.load(idx)
        e = expected(idx)
        np.testing.assert_array_equal(tree["params"]["w"], e["w"])
        np.testing.assert_array_equal(tree["params"]["b"], e["b"])
        assert int(tree["step"]) == idx
    extras = ck.load_extras(3)
    assert extras["config"] == {"lr": 0.5, "step": 3}
    np.testing.assert_array_equal(extras["opt"]["mu"], expected(3)["w"] * 2)
    assert ck.best("loss") is not None and ck.best("loss")[0] == 3


def test_restore_resharded_in_the_same_job(pool2x2, saved):
    logdir, _ = saved
    for idx in (1, 2, 3):
        out = pool2x2.run("restore", logdir=logdir, spec="grid", idx=idx)
        assert all(r["ok"] and r["step"] == idx for r in out)


def test_restore_into_one_process_four_devices(saved):
    logdir, _ = saved
    pool = Pool(1, 4)
    try:
        out = pool.run("restore", logdir=logdir, spec="col")
        assert out[0]["ok"] and out[0]["step"] == 3
        out = pool.run("restore", logdir=logdir, spec="grid", idx=1)
        assert out[0]["ok"]
    finally:
        pool.close()


def test_restore_into_four_processes_reads_only_its_part(saved):
    logdir, _ = saved
    pool = Pool(4, 1)
    try:
        out = pool.run("restore", logdir=logdir, spec="row", idx=1)
        assert all(r["ok"] and r["step"] == 1 for r in out)
        # row -> row over 4 processes: each reads its own quarter of w (plus b and step), not whole shards
        assert [r["chunks_read"] for r in out] == [3, 3, 3, 3], out
        shards = sum(s["size"] for s in dist.info(os.path.join(logdir, "ckpt", "0000000001.npz"))["shards"])
        assert all(r["bytes_read"] < shards / 4 for r in out), out
    finally:
        pool.close()


def test_consolidate_and_export(saved, tmp_path):
    logdir, _ = saved
    rec = os.path.join(logdir, "ckpt", "0000000002.npz")
    out = str(tmp_path / "one.npz")
    dist.consolidate(rec, out)
    assert not dist.is_record_file(out)
    with ckpt.Pack(out) as p:
        value = p.load()
        np.testing.assert_array_equal(value["params"]["w"], expected(2)["w"])
        assert p.load("config") == {"lr": 0.5, "step": 2}
    npz = str(tmp_path / "plain.npz")
    assert cli_main(["export", rec, npz, "--to", "npz"]) == 0
    with np.load(npz) as z:
        np.testing.assert_array_equal(z["params/w"], expected(2)["w"])


def test_preflight_disagreement_raises_everywhere(pool2x2, tmp_path):
    out = pool2x2.run_raw("save_disagree", logdir=str(tmp_path))
    assert all(r.get("error") == "PreflightError" for r in out), out
    assert out[0]["message"] == out[1]["message"]
    assert "params/b" in out[0]["message"] and "process 1" in out[0]["message"]
    assert not os.path.exists(os.path.join(tmp_path, "ckpt", "0000000099.npz"))


def _flip_inside(path, data: bytes) -> None:
    """Flip one byte inside the stored copy of ``data`` (an array's bytes) in ``path``."""
    with open(path, "r+b") as f:
        blob = f.read()
        at = blob.index(data) + len(data) // 2
        f.seek(at)
        f.write(bytes([blob[at] ^ 0xFF]))


def test_damaged_shard_found_by_verify_and_skipped(pool2x2, tmp_path, capsys):
    """Process 1's rows of step 2 are damaged: only process 1 reads them, yet both fall back to step 1."""
    logdir = str(tmp_path)
    for step in (1, 2):
        pool2x2.run("save", logdir=logdir, step=step, spec="row")
    rec = os.path.join(logdir, "ckpt", "0000000002.npz")
    shard = os.path.join(logdir, "ckpt", dist.info(rec)["shards"][1]["file"])
    _flip_inside(shard, expected(2)["w"][6:8].tobytes())
    with pytest.raises(ChecksumError):
        dist.verify_file(rec)
    assert cli_main(["verify", logdir]) == 1
    assert "0000000002" in capsys.readouterr().out
    assert cli_main(["verify", shard]) == 1  # the shard alone: its own member hash fails too
    out = pool2x2.run("restore", logdir=logdir, spec="row")
    assert [r["step"] for r in out] == [1, 1] and all(r["ok"] for r in out), out
    assert all(any("damaged" in w for w in r["warnings"]) for r in out), out
    with pytest.warns(ckpt.errors.CorruptCheckpointWarning):  # numpy restore here skips it too
        assert int(ckpt.Checkpoint(logdir, makedir=False).load()["step"]) == 1
    # retention never counts or deletes it
    plan = ckpt.Checkpoint(logdir, makedir=False, keep_ckpts=1).plan_prune()
    assert 2 in plan.damaged and 1 in plan.keep


def test_truncated_shard_is_not_committed(saved, tmp_path):
    src, _ = saved
    logdir = str(tmp_path / "copy")
    shutil.copytree(src, logdir)
    rec = os.path.join(logdir, "ckpt", "0000000003.npz")
    shard = os.path.join(logdir, "ckpt", dist.info(rec)["shards"][0]["file"])
    os.truncate(shard, os.path.getsize(shard) - 10)
    with pytest.raises(FormatError, match="bytes"):
        dist.verify_file(rec)
    with pytest.warns(ckpt.errors.CorruptCheckpointWarning):
        assert int(ckpt.Checkpoint(logdir, makedir=False).load()["step"]) == 2


def test_retention_rotates_records_and_shards(pool2x2, tmp_path):
    logdir = str(tmp_path)
    for step in (1, 2, 3):
        pool2x2.run("save", logdir=logdir, step=step, spec="row", keep=2)
    names = sorted(os.listdir(os.path.join(logdir, "ckpt")))
    assert [n for n in names if n.endswith(".npz")] == ["0000000002.npz", "0000000003.npz"]
    assert sorted(n.split(".")[0] for n in names if ".shards-" in n) == ["0000000002", "0000000003"]


def test_kill_one_process_mid_save(tmp_path):
    """SIGKILL of process 1 while it writes its shard: process 0 fails within the timeout naming it;
    a fresh job restores the previous step."""
    logdir = str(tmp_path)
    pool = Pool(2, 2)
    try:
        pool.run("save", logdir=logdir, step=1, spec="row")
        out = pool.run_raw("save_kill_one", logdir=logdir, step=2, timeout=8.0, wait=60)
    finally:
        pool.close()
    assert out[1].get("exited") is not None or out[1].get("timeout"), out
    assert out[0].get("error") in ("CoordinationTimeoutError", "DistributedError"), out
    assert "1" in out[0]["message"]
    assert not os.path.exists(os.path.join(logdir, "ckpt", "0000000002.npz"))
    pool = Pool(2, 2)
    try:
        res = pool.run("restore", logdir=logdir, spec="col")
        assert all(r["ok"] and r["step"] == 1 for r in res)
        pool.run("save", logdir=logdir, step=3, spec="row")  # cleans the orphan shards of step 2
    finally:
        pool.close()
    assert not [n for n in os.listdir(os.path.join(logdir, "ckpt")) if n.startswith("0000000002")]


def test_bad_input_on_one_process_raises_on_all(pool2x2, tmp_path):
    out = pool2x2.run_raw("save_bad_input", logdir=str(tmp_path))
    assert out[1].get("error") == "ValueError" and "reserved" in out[1]["message"], out
    assert out[0].get("error") == "DistributedError" and "process 1" in out[0]["message"], out
    assert "reserved" in out[0]["message"]
    assert ckpt.Checkpoint(str(tmp_path), makedir=False).indices() == []


@pytest.mark.parametrize("block", [True, False])
def test_disk_full_on_one_process_raises_on_all(pool2x2, tmp_path, block):
    logdir = str(tmp_path)
    pool2x2.run("save", logdir=logdir, step=1, spec="row")
    out = pool2x2.run_raw("save_disk_full", logdir=logdir, step=2, block=block)
    assert all(r.get("error") == "DistributedError" for r in out), out
    assert out[0]["message"] == out[1]["message"] and "process 1" in out[0]["message"], out
    ck = ckpt.Checkpoint(logdir, makedir=False)
    assert ck.indices() == [1]
    assert int(ck.load()["step"]) == 1
    pool2x2.run("save", logdir=logdir, step=3, spec="row")  # the failed step's shards are cleaned up
    assert sorted(n.split(".")[0] for n in os.listdir(os.path.join(logdir, "ckpt")) if ".shards-" in n) == [
        "0000000001", "0000000003"]


def test_split_box_tiles_exactly():
    from ckpt.distributed.writer import split_box

    pieces = split_box([[0, 16], [0, 256]], 4, limit=4096)
    assert len(pieces) == 4 and all(p[0] == [0, 16] for p in pieces)  # the longest dimension is cut
    assert sorted(p[1] for p in pieces) == [[0, 64], [64, 128], [128, 192], [192, 256]]
    assert split_box([], 4, limit=1) == [[]]
    assert split_box([[0, 1], [0, 1]], 8, limit=1) == [[[0, 1], [0, 1]]]  # one element cannot be cut


def test_resharded_restore_reads_only_overlapping_pieces(pool2x2, tmp_path):
    """Row-sharded save cut in 4 KiB pieces; a column-sharded restore reads about half of w per process."""
    logdir = str(tmp_path)
    shape = (64, 256)
    pool2x2.run("save", logdir=logdir, step=1, spec="row", shape=shape, piece_bytes=4096)
    out = pool2x2.run("restore", logdir=logdir, spec="col", shape=shape)
    w_bytes = 64 * 256 * 4
    assert all(r["ok"] for r in out), out
    assert all(r["bytes_read"] < 0.6 * w_bytes + 4096 for r in out), out


def test_cli_ls_info_on_multiprocess_checkpoints(saved, capsys):
    import json

    logdir, _ = saved
    assert cli_main(["ls", logdir]) == 0
    listed = capsys.readouterr().out
    assert "0000000003" in listed or " 3 " in listed or "3" in listed
    rec = os.path.join(logdir, "ckpt", "0000000003.npz")
    assert cli_main(["info", rec, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["sharded"]["process_count"] == 2
    assert {a["name"] for a in doc["sharded"]["arrays"]["main"]} == {"params/w", "params/b", "step"}
    assert cli_main(["info", rec]) == 0
    assert cli_main(["verify", rec]) == 0


def test_restore_in_place_keeps_shardings(pool2x2, saved):
    logdir, _ = saved
    out = pool2x2.run("restore_in_place", logdir=logdir, spec="col")
    assert all(r["ok"] and r["idx"] == 3 and r["config"] == {"lr": 0.5, "step": 3} for r in out), out


def test_coordination_keys_are_cleaned_up(pool2x2, tmp_path):
    """Preflight fingerprints (the largest values) do not pile up in the coordination service."""
    for step in (1, 2):
        pool2x2.run("save", logdir=str(tmp_path), step=step, spec="row")
    import hashlib

    token = hashlib.sha256(os.path.join(str(tmp_path), "ckpt").encode()).hexdigest()[:12]
    keys = [k for k in pool2x2.run("kv_keys")[0] if k.startswith(f"ckpt/save/{token}/")]
    assert [k for k in keys if "/written/" in k], keys  # the last exchanges of each save stay (small)
    assert not [k for k in keys if "/preflight/" in k], keys


def test_shard_of_another_save_is_refused(pool2x2, tmp_path):
    """Step 2's shard copied over step 1's (same shapes, so the same size): restore refuses it and
    falls back, verify reports it."""
    logdir = str(tmp_path)
    for step in (1, 2, 3):
        pool2x2.run("save", logdir=logdir, step=step, spec="row", keep=5)
    d = os.path.join(logdir, "ckpt")
    one, two = (os.path.join(d, dist.info(os.path.join(d, f"{i:010d}.npz"))["shards"][1]["file"]) for i in (2, 3))
    if os.path.getsize(one) != os.path.getsize(two):
        pytest.skip("the two shard files differ in size; the size check alone refuses the swap")
    shutil.copyfile(one, two)
    with pytest.raises(FormatError):
        dist.verify_file(os.path.join(d, "0000000003.npz"))
    with pytest.warns(ckpt.errors.CorruptCheckpointWarning, match="not the shard file"):
        assert int(ckpt.Checkpoint(logdir, makedir=False).load()["step"]) == 2
