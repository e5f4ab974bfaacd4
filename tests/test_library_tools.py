"""The library calls behind the ``ckpt`` command, used without the CLI (issue 15): listing with metrics and
state, verification of a file or a directory, describe, diff, export/import, average_into, prune_run."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ckpt
from ckpt.errors import (CheckpointNotFoundError, ConversionError, MissingDependencyError, OutputExistsError,
                         SlotKindError, UnknownMetricError)
from helpers import data_offsets, flip_byte, npy_data_offset, temp_leftovers

STEPS = [10, 20, 30, 40]
LOSSES = [0.9, 0.2, 0.4, 0.3]


def params(step):
    rng = np.random.default_rng(step)
    return {"dense/w": rng.standard_normal((4, 3)).astype(np.float32), "count": np.array(step, np.int64)}


@pytest.fixture
def run(tmp_path):
    d = tmp_path / "run"
    ck = ckpt.Checkpoint(str(d), keep_ckpts=None, verbose=False)
    for step, loss in zip(STEPS, LOSSES):
        ck.save(params(step), idx=step, metrics={"loss": loss})
    ck.alias("best", 20)
    return d


def test_list_checkpoints_records(run):
    listing = ckpt.list_checkpoints(run, metric="loss")  # a PathLike passes through
    assert listing.directory == str(run / "ckpt")
    assert [r.idx for r in listing.records] == STEPS and listing.newest == 40 and listing.best == 20
    r = listing.records[1]
    assert r.location == str(run / "ckpt" / "0000000020.npz") and r.size == os.path.getsize(r.location)
    assert r.metrics == {"loss": 0.2} and r.state == "unverified" and r.verified is None
    assert r.aliases == ["best"] and r.best and not r.newest and r.created_at.endswith("Z")
    assert ckpt.list_checkpoints(str(run), metric="loss", mode="max").best == 10
    assert ckpt.list_checkpoints(str(run), metric="nosuch").best is None
    doc = listing.to_dict()
    assert doc["best"] == 20 and doc["checkpoints"][1]["state"] == "unverified"
    with pytest.raises(ValueError, match="mode"):
        ckpt.list_checkpoints(run, mode="median")


def test_list_checkpoints_verify_finds_a_flipped_array_byte(run):
    bad = run / "ckpt" / "0000000030.npz"
    flip_byte(bad, npy_data_offset(bad, "0.npy") + 3)
    quick = ckpt.list_checkpoints(run)
    assert [r.state for r in quick.records] == ["unverified"] * 4  # only the manifest was read
    seen = []
    full = ckpt.list_checkpoints(run, verify=True, metric="loss", progress=seen.append)
    assert [r.state for r in full.records] == ["ok", "ok", "damaged", "ok"]
    assert str(bad) in full.records[2].problem and "corrupt" in full.records[2].problem
    assert sum(seen) >= sum(os.path.getsize(r.location) for r in full.records)  # every file is reported
    assert [r.idx for r in full.damaged] == [30]


def test_list_checkpoints_of_a_bare_directory_and_errors(run, tmp_path):
    assert [r.idx for r in ckpt.list_checkpoints(run / "ckpt").records] == STEPS
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ckpt.list_checkpoints(empty).records == []
    with pytest.raises(FileNotFoundError):
        ckpt.list_checkpoints(tmp_path / "nosuch")
    with pytest.raises(NotADirectoryError):
        ckpt.list_checkpoints(run / "ckpt" / "0000000010.npz")


def test_verify_file_and_directory(run, tmp_path):
    report = ckpt.verify(run)
    assert report.ok and [pathlib.Path(f.location).name for f in report.files] == [
        f"{s:010d}.npz" for s in STEPS]
    bad = run / "ckpt" / "0000000020.npz"
    flip_byte(bad, data_offsets(bad)["__ckpt__/manifest.json"] + 5)
    report = ckpt.verify(str(run))
    assert not report.ok and [f.ok for f in report.files] == [True, False, True, True]
    assert report.files[1].problem and not report.files[1].problem.startswith(str(bad))
    one = ckpt.verify(run / "ckpt" / "0000000010.npz")
    assert one.ok and len(one.files) == 1
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert not ckpt.verify(empty).ok and ckpt.verify(empty).files == []  # nothing verified is not "intact"
    with pytest.raises(FileNotFoundError):
        ckpt.verify(tmp_path / "nosuch.npz")
    loose = tmp_path / "loose"  # a directory of exported files, not checkpoints
    loose.mkdir()
    np.savez(loose / "a.npz", x=np.arange(3))
    (loose / ".hidden.npz").write_bytes(b"junk")
    assert [pathlib.Path(f.location).name for f in ckpt.verify(loose).files] == ["a.npz"]


def test_verify_refuses_object_arrays_without_calling_them_damaged(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    check = ckpt.verify(path).files[0]
    assert not check.ok and check.refused and "pickled object arrays" in check.problem


def test_describe(run):
    doc = ckpt.describe(run / "ckpt" / "0000000020.npz")
    assert doc["metrics"] == {"loss": 0.2} and doc["has_manifest"]
    main = doc["slots"]["main"]
    assert {a["name"]: a["shape"] for a in main["arrays"]} == {"dense/w": [4, 3], "count": []}
    assert main["dependencies"]["numpy"]["ok"] and doc["recipe"] is None and doc["recipe_error"] is None
    with pytest.raises(IsADirectoryError):
        ckpt.describe(run)


def test_diff(run, tmp_path):
    a, b = run / "ckpt" / "0000000010.npz", run / "ckpt" / "0000000020.npz"
    same = ckpt.diff(a, a)
    assert same.identical and all(c["equal"] for c in same.arrays)
    d = ckpt.diff(a, b)
    assert not d.identical and {c["name"] for c in d.arrays if not c["equal"]} == {"dense/w", "count"}
    count = next(c for c in d.arrays if c["name"] == "count")
    assert count["max_abs"] == 10 and count["differing"] == 1
    other = tmp_path / "other.npz"
    ckpt.save_var_collection(str(other), {"dense/w": np.zeros((2, 2), np.float32), "extra": np.zeros(1)})
    d = ckpt.diff(a, other)
    assert d.only_in_a == ["count"] and d.only_in_b == ["extra"]
    assert d.changed == [{"name": "dense/w", "a": {"shape": [4, 3], "dtype": "float32"},
                          "b": {"shape": [2, 2], "dtype": "float32"}}]
    with ckpt.Pack(str(other)) as p:
        p.dump("config", {"lr": 0.1})
    with pytest.raises(SlotKindError, match="holds 'json' data, not arrays"):
        ckpt.diff(other, other, slot="config")


def test_export_npz_and_import_back(run, tmp_path):
    src = run / "ckpt" / "0000000020.npz"
    out = tmp_path / "plain.npz"
    done = ckpt.export(src, out)
    assert done.format == "npz" and done.arrays == 2 and done.source == "ckpt" and done.size == out.stat().st_size
    with np.load(out) as z:
        np.testing.assert_array_equal(z["dense/w"], params(20)["dense/w"])
    assert temp_leftovers(tmp_path) == []
    with pytest.raises(OutputExistsError, match="already exists"):
        ckpt.export(src, out)
    before = out.read_bytes()
    with pytest.raises(ConversionError, match="cannot tell the format"):
        ckpt.export(src, tmp_path / "x.bin")
    assert out.read_bytes() == before
    back = tmp_path / "back.npz"
    imported = ckpt.import_file(out, back)
    assert imported.source == "npz" and imported.arrays == 2 and imported.format == "ckpt"
    restored = ckpt.load_var_collection(str(back), {"dense/w": np.zeros((4, 3), np.float32),
                                                     "count": np.zeros((), np.int64)})
    np.testing.assert_array_equal(restored["dense/w"], params(20)["dense/w"])
    with ckpt.Pack(str(back)) as p:
        assert p.metadata["imported_from"] == {"file": "plain.npz", "format": "npz"}
    assert ckpt.verify(back).ok


def test_export_safetensors_round_trip(run, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    src = run / "ckpt" / "0000000030.npz"
    out = tmp_path / "m.safetensors"
    assert ckpt.export(src, out).format == "safetensors"
    np.testing.assert_array_equal(st.load_file(str(out))["dense/w"], params(30)["dense/w"])
    back = tmp_path / "m.npz"
    assert ckpt.import_file(out, back).source == "safetensors"
    with ckpt.Pack(str(back)) as p:
        assert p.metadata["imported_from"]["format"] == "safetensors"


def test_export_refuses_what_the_target_cannot_hold_and_writes_nothing(tmp_path):
    src = tmp_path / "s.npz"
    ckpt.save_var_collection(str(src), {"names": np.zeros(2), "ok": np.ones(2)})
    with pytest.raises(ConversionError, match="cannot be .npz member names"):
        ckpt.export(src, tmp_path / "o.npz")
    assert not (tmp_path / "o.npz").exists() and temp_leftovers(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        ckpt.export(tmp_path / "nosuch.npz", tmp_path / "o.npz")
    with pytest.raises(FileNotFoundError):
        ckpt.export(src, tmp_path / "no" / "dir" / "o.npz")


def test_import_without_safetensors_is_a_missing_dependency(tmp_path, monkeypatch):
    path = tmp_path / "x.safetensors"
    header = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0\0\0\0")
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(MissingDependencyError, match="pip install safetensors") as e:
        ckpt.import_file(path, tmp_path / "o.npz")
    assert isinstance(e.value, ImportError) and e.value.package == "safetensors"
    assert not (tmp_path / "o.npz").exists()


def test_export_killed_mid_write_leaves_no_output(tmp_path):
    """The output goes through the atomic write: SIGKILL while writing leaves nothing under OUT."""
    src = tmp_path / "big.npz"
    ckpt.save_var_collection(str(src), {f"a{i}": np.random.default_rng(i).standard_normal(1 << 18)
                                        for i in range(24)})
    out = tmp_path / "out.npz"
    marker = tmp_path / "started"
    code = textwrap.dedent(f"""
        import pathlib, time, zipfile, ckpt
        real = zipfile.ZipFile.open
        def slow(self, name, mode="r", **kw):
            if mode == "w":
                pathlib.Path({str(marker)!r}).touch()
                time.sleep(0.2)
            return real(self, name, mode, **kw)
        zipfile.ZipFile.open = slow
        ckpt.export({str(src)!r}, {str(out)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, JAX_PLATFORMS="cpu"))
    try:
        for _ in range(600):
            if marker.exists() or proc.poll() is not None:
                break
            subprocess.run(["sleep", "0.05"])
        assert marker.exists(), "the export never started writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()


def test_average_into(run, tmp_path):
    out = tmp_path / "avg.npz"
    done = ckpt.average_into([run], out, last=2)
    assert done.method == "mean" and [s["idx"] for s in done.sources] == [30, 40] and done.arrays == 2
    expected = (params(30)["dense/w"].astype(np.float64) + params(40)["dense/w"]) / 2
    got = ckpt.load_var_collection(str(out), {"dense/w": np.zeros((4, 3), np.float32),
                                              "count": np.zeros((), np.int64)})
    np.testing.assert_allclose(got["dense/w"], expected.astype(np.float32))
    with pytest.raises(OutputExistsError):
        ckpt.average_into([run], out, last=2)
    ema = ckpt.average_into([run / "ckpt"], out, indices=[10, 20], decay=0.5, force=True)  # a bare directory
    assert ema.method == "ema" and ema.decay == 0.5 and [s["idx"] for s in ema.sources] == [10, 20]
    with pytest.raises(CheckpointNotFoundError, match=r"no checkpoint \[15\]"):
        ckpt.average_into([run / "ckpt"], out, indices=[15], force=True)
    files = [run / "ckpt" / "0000000010.npz", run / "ckpt" / "0000000040.npz"]
    assert len(ckpt.average_into(files, out, weights=[1, 3], force=True).sources) == 2
    with pytest.raises(ValueError, match="--indices picks steps"):
        ckpt.average_into(files, out, indices=[10], force=True)


def test_prune_run_says_why_each_checkpoint_stays(run):
    plan = ckpt.prune_run(run, keep=1, keep_best=1, metric="loss", dry_run=True)
    why = {r.idx: r.kept_by for r in plan.rows}
    assert why == {10: [], 20: ["keep_best", "alias:best"], 30: [], 40: ["keep_last", "newest"]}
    assert plan.deleted == [10, 30] and plan.freed_bytes > 0 and all(os.path.exists(r.location) for r in plan.rows)
    with pytest.raises(UnknownMetricError):
        ckpt.prune_run(run, keep_best=1, metric="los")
    assert len(ckpt.list_checkpoints(run).records) == 4  # nothing deleted by the typo
    done = ckpt.prune_run(run, keep=1)
    assert done.deleted == [10, 30] and [r.idx for r in ckpt.list_checkpoints(run).records] == [20, 40]


def test_prune_run_skips_damaged_files(run):
    junk = run / "ckpt" / "0000000025.npz"
    junk.write_bytes(b"not a zip")
    plan = ckpt.prune_run(run, keep=1, dry_run=True)
    assert [r.idx for r in plan.skipped] == [25] and plan.skipped[0].kept and 25 not in plan.deleted
    assert plan.to_dict()["skipped"][0]["step"] == 25


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_export_is_durable_and_all_or_nothing(run, tmp_path, monkeypatch, fmt):
    """export writes through the library's atomic write: the file and its directory are fsynced, and a
    failing rename (disk full) leaves the old output and no temp file."""
    if fmt == "safetensors":
        pytest.importorskip("safetensors")
    from ckpt import _io

    calls = []

    class Recording(_io.FileOps):
        def fsync(self, f):
            calls.append(("fsync", os.path.basename(f.name)))
            super().fsync(f)

        def fsync_dir(self, directory):
            calls.append(("fsync_dir", directory))
            super().fsync_dir(directory)

    monkeypatch.setattr(_io, "ops", Recording())
    src, out = run / "ckpt" / "0000000010.npz", tmp_path / f"o.{fmt}"
    ckpt.export(src, out)
    assert ("fsync_dir", str(tmp_path)) in calls and any(op == "fsync" and name.startswith(".o.") for op, name in calls)
    before = out.read_bytes()

    class FullDisk(_io.FileOps):
        def replace(self, src, dst):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(_io, "ops", FullDisk())
    with pytest.raises(OSError, match="No space"):
        ckpt.export(run / "ckpt" / "0000000020.npz", out, force=True)
    assert out.read_bytes() == before and temp_leftovers(tmp_path) == []


def test_list_checkpoints_with_a_retention_policy_says_what_a_prune_would_keep(run):
    policy = ckpt.RetentionPolicy(keep_last=1, keep_best=1, metric="loss")
    listing = ckpt.list_checkpoints(run, retention=policy)
    assert {r.idx: (r.keep, r.kept_by) for r in listing.records} == {
        10: (False, []), 20: (True, ["keep_best", "alias:best"]), 30: (False, []), 40: (True, ["keep_last", "newest"])}
    assert [r.idx for r in ckpt.list_checkpoints(run).records] == STEPS  # a plan only: nothing deleted
    assert "kept_by" not in ckpt.list_checkpoints(run).records[0].to_dict()
