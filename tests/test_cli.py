"""The ``ckpt`` command line: every subcommand on real checkpoint directories, damaged files included."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import ckpt
from ckpt import cli as _cli
from ckpt.cli import _format as _cli_format
from helpers import (
    TouchOnUnpickle,
    assert_arrays_identical,
    assert_dicts_identical,
    flip_byte,
    npy_data_offset,
    rewrite_pack,
)

STEPS = [1000, 2000, 3000, 4000]
LOSSES = [0.9, 0.4, 0.2, 0.3]  # the best by min loss is 3000; the newest is 4000
ACCS = [0.5, 0.7, 0.8, 0.75]


def cli(capsys, *argv):
    """Run ``ckpt ARGV`` in-process: (exit status, stdout, stderr)."""
    rc = _cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def params_at(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {
        "dense/w": rng.standard_normal((8, 4)).astype(np.float32),
        "dense/b": rng.standard_normal(4).astype(np.float32),
        "embed": rng.integers(-50, 50, (6, 3)).astype(np.int64),
        "count": np.array(step, np.int64),
    }


@pytest.fixture
def logdir(tmp_path):
    d = tmp_path / "run"
    ck = ckpt.Checkpoint(str(d), keep_ckpts=10, verbose=False)
    for step, loss, acc in zip(STEPS, LOSSES, ACCS):
        ck.save(params_at(step), idx=step, extras={"config": {"lr": 0.1}},
                metrics={"loss": loss, "acc": acc})
    return d


def ckpt_path(logdir, step):
    return logdir / "ckpt" / f"{step:010d}.npz"


def damage_array(path, member="0.npy"):
    flip_byte(path, npy_data_offset(path, member) + 3)


def truncate(path, keep=0.6):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:int(len(data) * keep)])


def no_traceback(err):
    assert "Traceback" not in err
    return err


# -- ls -------------------------------------------------------------------------
def test_ls_table_marks_newest_and_best(capsys, logdir):
    rc, out, err = cli(capsys, "ls", logdir, "--metric", "loss")
    assert rc == 0 and err == ""
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["step", "updated", "(UTC)"]
    rows = {int(line.split()[0]): line for line in lines[1:]}
    assert sorted(rows) == STEPS
    assert rows[4000].rstrip().endswith("newest") and "best" not in rows[4000]
    assert rows[3000].rstrip().endswith("best")
    assert not any(w in rows[s] for s in (1000, 2000) for w in ("best", "newest"))
    # metrics and the unverified marker are shown
    assert "0.2" in rows[3000].split() and "0.8" in rows[3000].split()
    assert all(line.split()[-1] == "-" for s, line in rows.items() if s in (1000, 2000))


def test_ls_best_with_max_mode_and_json(capsys, logdir):
    rc, out, _ = cli(capsys, "ls", logdir, "--metric", "acc", "--mode", "max", "--json")
    assert rc == 0
    doc = json.loads(out)
    assert [c["step"] for c in doc["checkpoints"]] == STEPS
    assert doc["newest"] == 4000 and doc["best"] == 3000
    assert [c["best"] for c in doc["checkpoints"]] == [False, False, True, False]
    assert [c["newest"] for c in doc["checkpoints"]] == [False, False, False, True]
    for c, loss, acc in zip(doc["checkpoints"], LOSSES, ACCS):
        assert c["metrics"] == {"loss": loss, "acc": acc}
        assert c["size"] == os.path.getsize(c["path"])
        assert c["verified"] is None and c["error"] is None
        with ckpt.Pack(c["path"]) as pack:
            updated = pack.manifest_info.updated_at
        assert c["updated_at"] == updated.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_ls_verify_flags_a_damaged_checkpoint(capsys, logdir):
    damage_array(ckpt_path(logdir, 2000))
    rc, out, err = cli(capsys, "ls", logdir, "--verify")
    assert rc == 1
    rows = {int(line.split()[0]): line for line in out.strip().splitlines()[1:]}
    assert " BAD" in rows[2000]
    assert all(" ok" in rows[s] for s in (1000, 3000, 4000))
    err_lines = no_traceback(err).strip().splitlines()
    assert len(err_lines) == 1 and str(ckpt_path(logdir, 2000)) in err_lines[0] and "corrupt" in err_lines[0]

    rc, out, _ = cli(capsys, "ls", logdir, "--verify", "--json")
    doc = json.loads(out)
    assert rc == 1
    assert [c["verified"] for c in doc["checkpoints"]] == [True, False, True, True]
    assert "0.npy" in doc["checkpoints"][1]["error"]


def test_ls_truncated_checkpoint_is_bad_without_verify(capsys, logdir):
    truncate(ckpt_path(logdir, 4000))
    rc, out, err = cli(capsys, "ls", logdir, "--json")
    assert rc == 1
    doc = json.loads(out)
    last = doc["checkpoints"][-1]
    assert last["step"] == 4000 and last["verified"] is False and "zip" in last["error"]
    assert [c["verified"] for c in doc["checkpoints"][:3]] == [None, None, None]
    assert str(ckpt_path(logdir, 4000)) in no_traceback(err)


def test_ls_best_ignores_nan_and_missing_metrics(capsys, tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path), keep_ckpts=10, verbose=False)
    ck.save(params_at(1), idx=1, metrics={"loss": float("nan")})
    ck.save(params_at(2), idx=2, metrics={"loss": 5.0})
    ck.save(params_at(3), idx=3)
    rc, out, _ = cli(capsys, "ls", tmp_path, "--metric", "loss", "--json")
    assert rc == 0 and json.loads(out)["best"] == 2
    rc, out, _ = cli(capsys, "ls", tmp_path, "--metric", "nosuch")
    assert rc == 0 and "no checkpoint records metric 'nosuch'" in out


def test_ls_empty_directories(capsys, tmp_path):
    rc, out, err = cli(capsys, "ls", tmp_path)
    assert rc == 0 and err == "" and out.startswith(f"no checkpoints in {tmp_path}")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / ".0000000005.npz.123.abcdef01.tmp").write_bytes(b"partial")
    rc, out, _ = cli(capsys, "ls", tmp_path, "--json")
    assert rc == 0 and json.loads(out)["checkpoints"] == [] and json.loads(out)["newest"] is None


def test_ls_accepts_the_ckpt_directory_itself(capsys, logdir):
    rc, out, _ = cli(capsys, "ls", logdir / "ckpt", "--json")
    assert rc == 0 and [c["step"] for c in json.loads(out)["checkpoints"]] == STEPS


def test_ls_missing_directory_is_one_line_exit_1(capsys, tmp_path):
    rc, out, err = cli(capsys, "ls", tmp_path / "nope")
    assert rc == 1 and out == ""
    assert no_traceback(err).strip() == f"ckpt ls: error: {tmp_path / 'nope'}: no such file or directory"
    rc, _, err = cli(capsys, "ls", ckpt_path_in(tmp_path))
    assert rc == 1 and "not a directory" in err


def ckpt_path_in(tmp_path):
    p = tmp_path / "file.npz"
    p.write_bytes(b"x")
    return p


# -- info -----------------------------------------------------------------------
def test_info_human_output(capsys, logdir):
    path = ckpt_path(logdir, 3000)
    rc, out, err = cli(capsys, "info", path)
    assert rc == 0 and err == ""
    with ckpt.Pack(str(path)) as pack:
        slots = pack.slots_info
    for name, info in slots.items():
        assert any(line.split()[:2] == [name, info.serializer] and line.split()[-2:] == [info.algorithm, info.digest]
                   for line in out.splitlines()), name
    total = sum(a.nbytes for a in params_at(3000).values())
    assert f"arrays in slot 'main': 4 arrays, {total} B ({total} bytes): float32 x2, int64 x2" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  ") and line.split()}
    assert rows["dense/w"] == ["dense/w", "(8,", "4)", "float32", "128"]
    assert rows["dense/b"] == ["dense/b", "(4,)", "float32", "16"]
    assert rows["count"] == ["count", "()", "int64", "8"]
    assert '"loss": 0.2' in out  # metadata
    assert "MISMATCH" not in out
    assert any(line.split()[:3] == ["main", "numpy", np.__version__] and line.split()[-1] == "ok"
               for line in out.splitlines())


def test_info_json(capsys, logdir):
    path = ckpt_path(logdir, 1000)
    rc, out, _ = cli(capsys, "info", path, "--json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["has_manifest"] and doc["format_version"] == 2 and doc["size"] == os.path.getsize(path)
    main = doc["slots"]["main"]
    expected = params_at(1000)
    assert [a["name"] for a in main["arrays"]] == list(expected)
    for a in main["arrays"]:
        arr = expected[a["name"]]
        assert (tuple(a["shape"]), a["dtype"], a["bytes"]) == (arr.shape, arr.dtype.name, arr.nbytes)
    assert main["dependencies"]["numpy"] == {"version": np.__version__, "requires": main["dependencies"]["numpy"][
        "requires"], "installed": np.__version__, "ok": True}
    assert doc["slots"]["config"]["serializer"] == "json"
    assert doc["metadata"]["ckpt"]["metrics"] == {"loss": 0.9, "acc": 0.5}


def test_info_many_arrays_are_summarised(capsys, tmp_path):
    arrays = {f"layer{i:03d}/w": np.zeros((i % 5) + 1, np.float32 if i % 3 else np.float16) for i in range(120)}
    path = tmp_path / "many.npz"
    ckpt.save_var_collection(str(path), arrays)
    rc, out, _ = cli(capsys, "info", path, "--max-arrays", "7")
    assert rc == 0
    listed = [line for line in out.splitlines() if line.strip().startswith("layer")]
    assert [line.split()[0] for line in listed] == list(arrays)[:7]
    assert "... 113 more (--all lists every array)" in out
    total = sum(a.nbytes for a in arrays.values())
    n16 = sum(1 for a in arrays.values() if a.dtype == np.float16)
    assert f"120 arrays, {_cli_format.human_size(total)} ({total} bytes): float32 x{120 - n16}, float16 x{n16}" in out
    rc, out, _ = cli(capsys, "info", path, "--all")
    assert len([line for line in out.splitlines() if line.strip().startswith("layer")]) == 120
    rc, out, _ = cli(capsys, "info", path, "--json", "--max-arrays", "3")
    assert len(json.loads(out)["slots"]["main"]["arrays"]) == 120  # JSON is never cut short


def test_info_marks_dependency_mismatches(capsys, logdir, tmp_path):
    src, dst = ckpt_path(logdir, 1000), tmp_path / "old.npz"

    def edit(doc):
        doc["slots"]["main"]["dependencies"]["numpy"] = {"version": "1.20.0", "requires": ">=1,<2"}
        doc["slots"]["main"]["dependencies"]["somepkg"] = {"version": "3.1", "requires": ">=3.1,<3.2"}

    rewrite_pack(src, dst, edit_manifest=edit)
    rc, out, _ = cli(capsys, "info", dst)
    assert rc == 0
    rows = {tuple(line.split()[:2]): line.split() for line in out.splitlines() if line.startswith("  main ")}
    assert rows[("main", "numpy")][2:] == ["1.20.0", ">=1,<2", np.__version__, "MISMATCH"]
    assert rows[("main", "somepkg")][-3:] == ["not", "installed", "MISMATCH"]
    doc = json.loads(cli(capsys, "info", dst, "--json")[1])
    assert doc["slots"]["main"]["dependencies"]["numpy"]["ok"] is False
    assert doc["slots"]["main"]["dependencies"]["python"]["ok"] is True


def test_info_lists_pickle_globals_without_running_them(capsys, tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "p.npz"
    with ckpt.Pack(str(path)) as pack:
        pack.dump("main", {"w": np.ones(3)})
        pack.dump("evil", TouchOnUnpickle(sentinel), serializer="pickle")
    rc, out, _ = cli(capsys, "info", path)
    assert rc == 0 and not sentinel.exists()
    assert "pickle slot 'evil' would import (nothing was executed):" in out
    assert f"  {os.system.__module__}.system" in out.splitlines()
    doc = json.loads(cli(capsys, "info", path, "--json")[1])
    assert doc["slots"]["evil"]["globals"] == [f"{os.system.__module__}.system"]
    assert not sentinel.exists()


def test_info_on_plain_npz_and_errors(capsys, tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.arange(3.0), b=np.ones((2, 2), np.int8))
    doc = json.loads(cli(capsys, "info", plain, "--json")[1])
    assert doc["has_manifest"] is False
    assert [(a["name"], a["shape"], a["dtype"]) for a in doc["slots"]["main"]["arrays"]] == [
        ("a", [3], "float64"), ("b", [2, 2], "int8")]
    assert "no manifest" in cli(capsys, "info", plain)[1]
    for target, words in ((tmp_path / "missing.npz", "no such file"), (tmp_path, "is a directory")):
        rc, out, err = cli(capsys, "info", target)
        assert rc == 1 and out == "" and words in err.lower() and str(target) in err
        assert len(no_traceback(err).strip().splitlines()) == 1
    pkl = tmp_path / "x.pkl"
    pkl.write_bytes(b"\x80\x05K\x01.")
    rc, _, err = cli(capsys, "info", pkl)
    assert rc == 1 and "pickle" in err and str(pkl) in no_traceback(err)


# -- verify ---------------------------------------------------------------------
def test_verify_good_file_and_logdir(capsys, logdir):
    rc, out, err = cli(capsys, "verify", ckpt_path(logdir, 1000))
    assert rc == 0 and err == ""
    assert out.splitlines() == [f"ok   {ckpt_path(logdir, 1000)}", "1 file checked, all intact"]
    rc, out, _ = cli(capsys, "verify", logdir, "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["ok"] is True
    assert [f["path"] for f in doc["files"]] == [str(ckpt_path(logdir, s)) for s in STEPS]


@pytest.mark.parametrize("damage", ["flip", "truncate", "flip_names", "flip_json"])
def test_verify_finds_damage(capsys, logdir, damage):
    bad = ckpt_path(logdir, 3000)
    if damage == "flip":
        damage_array(bad, "2.npy")
    elif damage == "truncate":
        truncate(bad)
    elif damage == "flip_names":
        damage_array(bad, "names.npy")
    else:
        from helpers import data_offsets

        flip_byte(bad, data_offsets(bad)["config/data.json"] + 2)
    rc, out, err = cli(capsys, "verify", logdir)
    assert rc == 1 and no_traceback(err) == ""
    lines = out.strip().splitlines()
    bad_lines = [line for line in lines if line.startswith("BAD")]
    assert len(bad_lines) == 1 and bad_lines[0].startswith(f"BAD  {bad}: ")
    expect = {"flip": "'2.npy' is corrupt", "truncate": "truncated", "flip_names": "'names.npy' is corrupt",
              "flip_json": "'config/data.json' is corrupt"}[damage]
    assert expect in bad_lines[0]
    assert sum(line.startswith("ok ") for line in lines) == 3 and lines[-1] == "4 files checked, 1 damaged"
    doc = json.loads(cli(capsys, "verify", bad, "--json")[1])
    assert doc["ok"] is False and expect in doc["files"][0]["problem"]


def test_verify_checks_array_headers_as_well_as_hashes(capsys, logdir, tmp_path):
    # A self-consistent pack (hashes recomputed) whose .npy header lies about the shape.
    src, dst = ckpt_path(logdir, 1000), tmp_path / "lying.npz"
    with zipfile.ZipFile(src) as zf:
        member = zf.read("0.npy")
    lying = member.replace(b"(8, 4)", b"(8, 5)")
    assert lying != member
    rewrite_pack(src, dst, replace_members={"0.npy": lying})
    rc, out, _ = cli(capsys, "verify", dst)
    assert rc == 1 and "shape (8, 5)" in out and "BAD" in out


def test_verify_plain_npz_uses_crc(capsys, tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.arange(100.0))
    assert cli(capsys, "verify", plain)[0] == 0
    with zipfile.ZipFile(plain) as zf:
        info = zf.getinfo("a.npy")
    flip_byte(plain, info.header_offset + 30 + len("a.npy") + 200)
    rc, out, _ = cli(capsys, "verify", plain)
    assert rc == 1 and "CRC" in out


def test_verify_empty_and_missing(capsys, tmp_path):
    rc, out, err = cli(capsys, "verify", tmp_path)  # `verify WRONG_DIR && echo intact` must not pass
    assert rc == 1 and out == "" and "nothing was verified" in no_traceback(err)
    rc, out, err = cli(capsys, "verify", tmp_path / "nope.npz")
    assert rc == 1 and out == "" and "no such file" in no_traceback(err)


# -- diff -----------------------------------------------------------------------
def _expected_stats(a, b):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    max_abs = float(np.max(np.abs(a64 - b64)))
    scale = max(float(np.max(np.abs(a64))), float(np.max(np.abs(b64))))
    return max_abs, max_abs / scale, int(np.count_nonzero(a64 != b64))


def test_diff_numbers_match_numpy(capsys, tmp_path):
    rng = np.random.default_rng(0)
    a = {"w": rng.standard_normal((50, 7)).astype(np.float32), "same": np.arange(5), "n": np.arange(4, dtype=np.int32),
         "gone": np.ones(2), "reshaped": np.zeros((2, 3)), "retyped": np.zeros(3, np.float32)}
    b = {"w": a["w"] + rng.standard_normal((50, 7)).astype(np.float32) * 1e-3, "same": np.arange(5),
         "n": np.array([0, 1, 7, 3], np.int32), "new": np.ones(1), "reshaped": np.zeros((3, 2)),
         "retyped": np.zeros(3, np.float64)}
    b["w"][3, 4] = a["w"][3, 4]  # one equal element
    pa, pb = tmp_path / "a.npz", tmp_path / "b.npz"
    ckpt.save_var_collection(str(pa), a)
    ckpt.save_var_collection(str(pb), b)
    rc, out, _ = cli(capsys, "diff", pa, pb, "--json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["only_in_a"] == ["gone"] and doc["only_in_b"] == ["new"]
    assert {c["name"]: (c["a"], c["b"]) for c in doc["changed"]} == {
        "reshaped": ({"shape": [2, 3], "dtype": "float64"}, {"shape": [3, 2], "dtype": "float64"}),
        "retyped": ({"shape": [3], "dtype": "float32"}, {"shape": [3], "dtype": "float64"})}
    stats = {c["name"]: c for c in doc["arrays"]}
    assert set(stats) == {"w", "same", "n"} and doc["identical"] is False
    for name in ("w", "n"):
        max_abs, rel, differing = _expected_stats(a[name], b[name])
        assert stats[name]["max_abs"] == pytest.approx(max_abs, rel=1e-12, abs=0)
        assert stats[name]["rel"] == pytest.approx(rel, rel=1e-12)
        assert stats[name]["differing"] == differing and not stats[name]["equal"]
    assert stats["w"]["differing"] == 349 and stats["n"]["max_abs"] == 5.0 and stats["n"]["rel"] == 5.0 / 7.0
    assert stats["same"] == {**stats["same"], "max_abs": 0.0, "rel": 0.0, "differing": 0, "equal": True}

    rc, out, _ = cli(capsys, "diff", pa, pb)
    assert rc == 0
    assert "only in A (1):\n  gone" in out and "only in B (1):\n  new" in out
    section = out.split("shape or dtype changed (2):")[1].splitlines()[2:4]
    changed = {line.split()[0]: line.split()[1:] for line in section}
    assert changed == {"reshaped": ["(2,", "3)", "float64", "(3,", "2)", "float64"],
                       "retyped": ["(3,)", "float32", "(3,)", "float64"]}
    row = next(line.split() for line in out.splitlines() if line.split()[:1] == ["n"])
    assert row == ["n", "5", "0.714286", "1", "4"]
    assert "1 array identical" in out
    assert cli(capsys, "diff", pa, pb, "--exit-code")[0] == 1


def test_diff_identical_files_and_nan(capsys, tmp_path):
    a = {"x": np.array([1.0, np.nan, 3.0]), "y": np.array([np.nan, 2.0])}
    b = {"x": np.array([1.0, np.nan, 3.0]), "y": np.array([1.0, 2.5])}
    pa, pb = tmp_path / "a.npz", tmp_path / "b.npz"
    ckpt.save_var_collection(str(pa), a)
    ckpt.save_var_collection(str(pb), b)
    rc, out, _ = cli(capsys, "diff", pa, pa, "--exit-code")
    assert rc == 0 and "no differences" in out and "2 arrays identical" in out
    doc = json.loads(cli(capsys, "diff", pa, pb, "--json")[1])
    stats = {c["name"]: c for c in doc["arrays"]}
    assert stats["x"]["equal"] and stats["x"]["max_abs"] == 0.0
    assert stats["y"]["nan_mismatches"] == 1 and stats["y"]["differing"] == 2 and stats["y"]["max_abs"] == 0.5


def test_json_output_is_standard_json(capsys, tmp_path):
    pa, pb = tmp_path / "a.npz", tmp_path / "b.npz"
    ckpt.save_var_collection(str(pa), {"z": np.array([np.inf, 0.0])})
    ckpt.save_var_collection(str(pb), {"z": np.array([-np.inf, 0.0])})
    ck = ckpt.Checkpoint(str(tmp_path / "run"), verbose=False)
    ck.save({"x": np.zeros(1)}, idx=1, metrics={"loss": float("nan"), "gain": float("-inf")})
    for argv in (["diff", pa, pb, "--json"], ["ls", tmp_path / "run", "--json"]):
        out = cli(capsys, *argv)[1]

        def refuse(name):
            raise AssertionError(f"non-standard JSON constant {name}")

        doc = json.loads(out, parse_constant=refuse)
        if argv[0] == "diff":
            assert doc["arrays"][0]["max_abs"] == "Infinity" and doc["arrays"][0]["rel"] == "NaN"
        else:
            assert doc["checkpoints"][0]["metrics"] == {"loss": "NaN", "gain": "-Infinity"}


def test_diff_checkpoints_of_a_logdir_and_damaged_input(capsys, logdir):
    a, b = ckpt_path(logdir, 1000), ckpt_path(logdir, 2000)
    doc = json.loads(cli(capsys, "diff", a, b, "--json")[1])
    pa, pb = params_at(1000), params_at(2000)
    for c in doc["arrays"]:
        max_abs, rel, differing = _expected_stats(pa[c["name"]], pb[c["name"]])
        assert (c["max_abs"], c["differing"]) == (pytest.approx(max_abs), differing)
        assert c["rel"] == pytest.approx(rel)
    damage_array(b, "1.npy")
    rc, out, err = cli(capsys, "diff", a, b)
    assert rc == 1 and out == "" and str(b) in err and "corrupt" in no_traceback(err)
    rc, _, err = cli(capsys, "diff", a, b, "--slot", "config")
    assert rc == 1 and "holds 'json' data, not arrays" in err


def test_compare_arrays_handles_infinities_complex_and_strings():
    inf = np.array([np.inf, 1.0])
    assert ckpt.compare_arrays(inf, inf)["equal"]
    r = ckpt.compare_arrays(np.array([np.inf, 1.0]), np.array([-np.inf, 1.0]))
    assert r["max_abs"] == math.inf and r["differing"] == 1
    r = ckpt.compare_arrays(np.array([1 + 1j]), np.array([1 - 1j]))
    assert r["max_abs"] == 2.0 and r["rel"] == pytest.approx(2 / math.sqrt(2))
    r = ckpt.compare_arrays(np.array(["a", "b"]), np.array(["a", "c"]))
    assert r["equal"] is False and r["max_abs"] is None
    big = np.arange(3 * (1 << 21), dtype=np.float32).reshape(-1, 3)  # several chunks
    other = big.copy()
    other[-1, -1] += 4
    r = ckpt.compare_arrays(big, other)
    assert r["differing"] == 1 and r["max_abs"] == 4.0 and r["rel"] == pytest.approx(4.0 / float(other.max()))


# -- export / import ------------------------------------------------------------
def test_export_npz_round_trip(capsys, logdir, tmp_path):
    src, out = ckpt_path(logdir, 2000), tmp_path / "plain.npz"
    rc, stdout, _ = cli(capsys, "export", src, "--to", "npz", out)
    assert rc == 0 and f"wrote {out}: 4 arrays" in stdout
    expected = params_at(2000)
    with np.load(out) as z:  # plain numpy users get the real names
        assert list(z.keys()) == list(expected)
        assert_dicts_identical({k: z[k] for k in z.keys()}, expected)
        assert "names" not in z.files and all(not f.startswith("__ckpt__") for f in z.files)
    back = tmp_path / "back.npz"
    assert cli(capsys, "import", out, "-o", back)[0] == 0
    with ckpt.Pack(str(back)) as pack:
        assert_dicts_identical(pack.load("main"), expected)
        assert pack.metadata["imported_from"] == {"file": "plain.npz", "format": "npz"}
    assert cli(capsys, "verify", back)[0] == 0


def test_export_safetensors_round_trip_with_bfloat16(capsys, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    arrays = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
        "bf": (np.arange(6, dtype=np.float32) / 3).astype(ml_dtypes.bfloat16).reshape(2, 3),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
        "scalar": np.array(3.5, np.float64),
        "mask": np.array([True, False]),
        "u8": np.arange(4, dtype=np.uint8),
    }
    src = tmp_path / "src.npz"
    ckpt.save_var_collection(str(src), arrays, metadata={"note": "hi"})
    out = tmp_path / "model.safetensors"
    rc, stdout, _ = cli(capsys, "export", src, out)  # format from the extension
    assert rc == 0 and "(safetensors)" in stdout
    loaded = st.load_file(str(out))
    assert set(loaded) == set(arrays)
    for k, v in arrays.items():
        assert_arrays_identical(loaded[k], np.ascontiguousarray(v).reshape(v.shape))
    assert loaded["bf"].dtype == ml_dtypes.bfloat16
    back = tmp_path / "back.npz"
    rc, stdout, _ = cli(capsys, "import", out, "-o", back)
    assert rc == 0 and "from safetensors file" in stdout
    with ckpt.Pack(str(back)) as pack:
        restored = pack.load("main")
        meta = pack.metadata["imported_from"]
    assert sorted(restored) == sorted(arrays)
    for k, v in arrays.items():
        assert_arrays_identical(restored[k], v)
    assert meta["format"] == "safetensors" and json.loads(meta["metadata"]["ckpt.metadata"]) == {"note": "hi"}


def test_import_safetensors_written_by_safetensors(capsys, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    arrays = {"a.weight": np.arange(10, dtype=np.float16), "b": np.ones((2, 2), np.int64)}
    src = tmp_path / "x.safetensors"
    st.save_file(arrays, str(src), metadata={"format": "np"})
    out = tmp_path / "x.npz"
    assert cli(capsys, "import", src, "-o", out)[0] == 0
    with ckpt.Pack(str(out)) as pack:
        restored = pack.load("main")
        assert pack.metadata["imported_from"]["metadata"] == {"format": "np"}
    assert sorted(restored) == sorted(arrays)
    for k in arrays:
        assert_arrays_identical(restored[k], arrays[k])


def test_import_objax_file(capsys, tmp_path):
    objax = pytest.importorskip("objax")
    import jax.numpy as jnp

    model = objax.nn.Linear(3, 2)
    model.w.assign(jnp.arange(6.0).reshape(3, 2))
    src, out = tmp_path / "objax.npz", tmp_path / "ck.npz"
    objax.io.save_var_collection(str(src), model.vars())
    rc, stdout, _ = cli(capsys, "import", src, "-o", out)
    assert rc == 0 and "from objax file" in stdout
    with ckpt.Pack(str(out)) as pack:
        restored = pack.load("main")
    assert list(restored) == list(model.vars().keys())
    for k, v in model.vars().items():
        assert_arrays_identical(restored[k], np.asarray(v.value))


def test_export_import_refusals(capsys, logdir, tmp_path, monkeypatch):
    src = ckpt_path(logdir, 1000)
    out = tmp_path / "o.npz"
    out.write_bytes(b"keep me")
    rc, _, err = cli(capsys, "export", src, "--to", "npz", out)
    assert rc == 1 and "already exists; pass --force" in err and out.read_bytes() == b"keep me"
    assert cli(capsys, "export", src, "--to", "npz", out, "--force")[0] == 0
    rc, _, err = cli(capsys, "export", src, tmp_path / "o.bin")
    assert rc == 1 and "--to safetensors or --to npz" in err
    named = tmp_path / "named.npz"
    ckpt.save_var_collection(str(named), {"names": np.ones(2), "x/../y": np.ones(1)})
    rc, _, err = cli(capsys, "export", named, "--to", "npz", tmp_path / "n2.npz")
    assert rc == 1 and "'names'" in err and "safetensors" in err and not (tmp_path / "n2.npz").exists()
    c128 = tmp_path / "c.npz"
    ckpt.save_var_collection(str(c128), {"z": np.ones(2, np.complex128)})
    rc, _, err = cli(capsys, "export", c128, "--to", "safetensors", tmp_path / "c.safetensors")
    assert rc == 1 and "complex128" in err
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    rc, _, err = cli(capsys, "export", src, "--to", "safetensors", tmp_path / "m.safetensors")
    assert rc == 1 and "pip install safetensors" in no_traceback(err)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 32)
    rc, _, err = cli(capsys, "import", junk, "-o", tmp_path / "j.npz")
    assert rc == 1 and str(junk) in no_traceback(err) and not (tmp_path / "j.npz").exists()
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    rc, _, err = cli(capsys, "import", empty, "-o", tmp_path / "e.npz")
    assert rc == 1 and "no arrays" in err


def test_import_refuses_object_arrays(capsys, tmp_path):
    src = tmp_path / "obj.npz"
    np.savez(src, a=np.array([{"x": 1}], dtype=object))
    rc, _, err = cli(capsys, "import", src, "-o", tmp_path / "o.npz")
    assert rc == 1 and "object" in no_traceback(err) and not (tmp_path / "o.npz").exists()


# -- average --------------------------------------------------------------------
def _float_mean(arrays, weights):
    acc = sum(w * a.astype(np.float64) for w, a in zip(weights, arrays))
    return (acc / sum(weights)).astype(arrays[0].dtype)


def _record(path):
    with ckpt.Pack(str(path)) as pack:
        return pack.load("main"), pack.metadata["ckpt"]


def test_average_last_k(capsys, logdir, tmp_path):
    out = tmp_path / "avg.npz"
    rc, stdout, err = cli(capsys, "average", logdir, "--last", "3", "-o", out)
    assert rc == 0 and err == ""
    assert stdout.startswith(f"wrote {out}: mean of 3 checkpoints, 4 arrays")
    got, record = _record(out)
    src = [params_at(s) for s in STEPS[1:]]
    for name in ("dense/w", "dense/b"):
        assert_arrays_identical(got[name], _float_mean([p[name] for p in src], [1, 1, 1]))
    for name in ("embed", "count"):  # integers come from the newest checkpoint
        assert_arrays_identical(got[name], src[-1][name])
    assert [s["idx"] for s in record["averaged_from"]] == STEPS[1:] and record["method"] == "mean"
    assert [s["weight"] for s in record["averaged_from"]] == pytest.approx([1 / 3] * 3)
    rows = [line.split() for line in stdout.splitlines()[2:]]
    assert [int(r[0]) for r in rows] == STEPS[1:] and [r[2] for r in rows] == [
        str(ckpt_path(logdir, s)) for s in STEPS[1:]]
    assert cli(capsys, "verify", out)[0] == 0


def test_average_indices_weights_and_ema(capsys, logdir, tmp_path):
    out = tmp_path / "w.npz"
    assert cli(capsys, "average", logdir, "--indices", "1000,3000", "--weights", "1,3", "-o", out)[0] == 0
    got, record = _record(out)
    a, b = params_at(1000), params_at(3000)
    assert_arrays_identical(got["dense/w"], _float_mean([a["dense/w"], b["dense/w"]], [1, 3]))
    assert [s["weight"] for s in record["averaged_from"]] == [0.25, 0.75]

    out = tmp_path / "ema.npz"
    rc, stdout, _ = cli(capsys, "average", logdir, "--last", "3", "--ema", "0.5", "-o", out)
    assert rc == 0 and "EMA (decay 0.5) of 3 checkpoints" in stdout
    got, record = _record(out)
    xs = [params_at(s)["dense/w"].astype(np.float64) for s in STEPS[1:]]
    e = xs[0]
    for x in xs[1:]:
        e = 0.5 * e + 0.5 * x
    np.testing.assert_allclose(got["dense/w"], e.astype(np.float32), rtol=1e-6)
    assert record["method"] == "ema" and record["decay"] == 0.5


def test_average_files_and_bare_directory(capsys, logdir, tmp_path):
    files = [ckpt_path(logdir, s) for s in (2000, 4000)]
    out = tmp_path / "f.npz"
    assert cli(capsys, "average", *files, "-o", out)[0] == 0
    got, record = _record(out)
    assert_arrays_identical(got["dense/b"], _float_mean([params_at(s)["dense/b"] for s in (2000, 4000)], [1, 1]))
    assert [s["file"] for s in record["averaged_from"]] == [str(f) for f in files]
    out2 = tmp_path / "bare.npz"
    assert cli(capsys, "average", logdir / "ckpt", "--indices", "2000,4000", "-o", out2)[0] == 0
    assert_dicts_identical(_record(out2)[0], got)


def test_average_errors(capsys, logdir, tmp_path):
    out = tmp_path / "o.npz"
    for argv, words in (([logdir, "--last", "9"], "holds only 4 checkpoints"),
                        ([logdir, "--indices", "7,1000"], "no checkpoint [7]"),
                        ([ckpt_path(logdir, 1000), "--indices", "1"], "--indices picks steps of a LOGDIR"),
                        ([tmp_path / "none.npz"], "no such file")):
        rc, stdout, err = cli(capsys, "average", *argv, "-o", out)
        assert rc == 1 and stdout == "" and words in no_traceback(err), (argv, err)
        assert len(err.strip().splitlines()) == 1 and not out.exists()
    out.write_bytes(b"x")
    rc, _, err = cli(capsys, "average", logdir, "-o", out)
    assert rc == 1 and "--force" in err and out.read_bytes() == b"x"
    damage_array(ckpt_path(logdir, 4000))
    rc, _, err = cli(capsys, "average", logdir, "--last", "2", "-o", out, "--force")
    assert rc == 1 and str(ckpt_path(logdir, 4000)) in err and "corrupt" in err and out.read_bytes() == b"x"
    ckpt.save_var_collection(str(tmp_path / "other.npz"), {"zzz": np.ones(2)})
    rc, _, err = cli(capsys, "average", ckpt_path(logdir, 1000), tmp_path / "other.npz", "-o", out, "--force")
    assert rc == 1 and "cannot average" in no_traceback(err)


# -- prune ----------------------------------------------------------------------
def test_prune_dry_run_then_for_real(capsys, logdir):
    before = sorted(os.listdir(logdir / "ckpt"))
    rc, out, _ = cli(capsys, "prune", logdir, "--keep", "1", "--keep-best", "1", "--metric", "loss", "--dry-run")
    assert rc == 0 and sorted(os.listdir(logdir / "ckpt")) == before
    rows = {int(line.split()[0]): line for line in out.splitlines()[1:5]}
    assert " delete " in rows[1000] and " delete " in rows[2000]
    assert rows[3000].split()[-2:] == ["keep", "keep_best"]
    assert rows[4000].split()[-3:] == ["keep", "keep_last,", "newest"]
    size = sum(os.path.getsize(ckpt_path(logdir, s)) for s in (1000, 2000))
    assert out.splitlines()[-1] == (f"would delete 2 checkpoints ({_cli_format.human_size(size)}), kept 2 "
                                    "(dry run: nothing was deleted)")
    rc, out, _ = cli(capsys, "prune", logdir, "--keep", "1", "--keep-best", "1", "--metric", "loss", "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["deleted"] == [1000, 2000] and doc["kept"] == [3000, 4000] and doc["freed_bytes"] == size
    assert ckpt.Checkpoint(str(logdir), makedir=False).indices() == [3000, 4000]


@pytest.mark.parametrize("argv,kept", [(["--keep-every", "2000", "--keep", "1"], [2000, 4000]),
                                       (["--keep", "2"], [3000, 4000]),
                                       (["--keep-best", "2", "--metric", "acc", "--mode", "max"], [3000, 4000]),
                                       (["--keep-best", "2", "--metric", "loss"], [3000, 4000]),
                                       (["--keep", "10"], STEPS)])
def test_prune_policies_match_the_library(capsys, logdir, argv, kept):
    rc, out, _ = cli(capsys, "prune", logdir, *argv, "--json", "-n")
    assert rc == 0 and json.loads(out)["kept"] == kept
    assert cli(capsys, "prune", logdir, *argv)[0] == 0
    assert ckpt.Checkpoint(str(logdir), makedir=False).indices() == kept


def test_prune_max_bytes(capsys, logdir):
    sizes = [os.path.getsize(ckpt_path(logdir, s)) for s in STEPS]
    budget = sizes[-1] + sizes[-2] + 1
    rc, out, _ = cli(capsys, "prune", logdir, "--max-bytes", str(budget), "--json")
    assert rc == 0 and json.loads(out)["deleted"] == [1000, 2000]
    assert ckpt.Checkpoint(str(logdir), makedir=False).indices() == [3000, 4000]
    rc, out, _ = cli(capsys, "prune", logdir, "--max-bytes", "0")
    assert rc == 0 and ckpt.Checkpoint(str(logdir), makedir=False).indices() == [4000]  # the newest always stays


def test_prune_empty_and_missing(capsys, tmp_path):
    rc, out, _ = cli(capsys, "prune", tmp_path, "--keep", "1")
    assert rc == 0 and "nothing to prune" in out
    rc, out, err = cli(capsys, "prune", tmp_path / "nope", "--keep", "1")
    assert rc == 1 and out == "" and "no such file" in no_traceback(err)


# -- conventions: help, usage errors, progress, subprocesses ----------------------
SUBCOMMANDS = ["ls", "info", "verify", "diff", "average", "export", "import", "prune", "find"]


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_subcommand_is_documented(capsys):
    parser = _cli.build_parser()
    subs = _subparsers(parser)
    assert sorted(subs) == sorted(SUBCOMMANDS)
    with pytest.raises(SystemExit) as e:
        _cli.main(["--help"])
    assert e.value.code == 0
    top = capsys.readouterr().out
    assert "examples:" in top and "Exit status" in top
    for name in SUBCOMMANDS:
        assert name in top
        with pytest.raises(SystemExit) as e:
            _cli.main([name, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        sub = subs[name]
        assert sub.description and sub.description.split()[0] in text
        assert "example:" in text and f"ckpt {name} " in text.split("example:")[1]
        for action in sub._actions:
            assert action.help and action.help is not argparse.SUPPRESS, (name, action.dest)
            for opt in action.option_strings:
                assert opt in text, (name, opt)
        if name in ("ls", "info", "verify", "diff"):
            assert "--json" in text


def test_usage_errors_exit_2(capsys, logdir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written, but if it were, not into the checkout
    for argv in ([], ["ls"], ["nosuch"], ["ls", logdir, "--mode", "median"], ["info", "--max-arrays", "-1", "x"],
                 ["prune", logdir, "--keep", "0"], ["average", "-o", "x.npz"], ["average", logdir],
                 ["average", logdir, "--last", "2", "--indices", "1,2", "-o", "x.npz"],
                 ["average", logdir, "--weights", "1,2", "--ema", "0.5", "-o", "x.npz"],
                 ["average", logdir, "--ema", "1.5", "-o", "x.npz"],
                 ["average", logdir, "--weights", "1,-1", "-o", "x.npz"],
                 ["prune", logdir], ["prune", logdir, "--keep-best", "2"], ["prune", logdir, "--max-bytes", "lots"]):
        with pytest.raises(SystemExit) as e:
            _cli.main([str(a) for a in argv])
        assert e.value.code == 2, argv
        assert "usage:" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        _cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"ckpt {ckpt.__version__}"


def test_progress_bars_only_on_a_terminal(capsys, logdir, monkeypatch):
    assert cli(capsys, "verify", logdir)[2] == ""  # captured stderr is not a terminal: silent
    monkeypatch.setattr(_cli_format, "_stderr_is_tty", lambda: True)
    rc, out, err = cli(capsys, "verify", logdir)
    assert rc == 0 and "verifying" in err and out.endswith("all intact\n")


@pytest.mark.parametrize("size,expected", [("1000", 1000), ("2K", 2048), ("2KiB", 2048), ("2KB", 2000),
                                           ("1.5G", 3 << 29), ("1.5GB", 1_500_000_000), ("3mib", 3 << 20),
                                           ("0", 0)])
def test_parse_size(size, expected):
    assert _cli_format.parse_size(size) == expected


@pytest.mark.parametrize("size", ["", "-1", "1X", "K", "1.2.3", "1e999"])
def test_parse_size_rejects(size):
    with pytest.raises(ValueError):
        _cli_format.parse_size(size)


def _script_env():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("SOURCE_DATE_EPOCH", None)
    return env


def test_installed_script_and_python_m(logdir, tmp_path):
    script = Path(sys.executable).with_name("ckpt")
    if not script.exists():
        pytest.skip("the ckpt console script is not installed next to this interpreter")
    done = subprocess.run([str(script), "ls", str(logdir), "--json"], capture_output=True, text=True,
                          env=_script_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert [c["step"] for c in json.loads(done.stdout)["checkpoints"]] == STEPS
    done = subprocess.run([sys.executable, "-m", "ckpt", "verify", str(logdir)], capture_output=True, text=True,
                          env=_script_env(), timeout=120)
    assert done.returncode == 0 and done.stdout.endswith("4 files checked, all intact\n") and done.stderr == ""
    damage_array(ckpt_path(logdir, 1000))
    done = subprocess.run([str(script), "diff", str(ckpt_path(logdir, 1000)), str(ckpt_path(logdir, 2000))],
                          capture_output=True, text=True, env=_script_env(), timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr and "corrupt" in done.stderr
    done = subprocess.run([sys.executable, "-m", "ckpt", "ls"], capture_output=True, text=True, env=_script_env(),
                          timeout=120)
    assert done.returncode == 2 and "usage:" in done.stderr


def test_broken_pipe_is_quiet(tmp_path):
    script = Path(sys.executable).with_name("ckpt")
    if not script.exists():
        pytest.skip("the ckpt console script is not installed next to this interpreter")
    many = tmp_path / "many.npz"  # `info --json --all` of 3000 arrays: far more than a pipe buffer holds
    ckpt.save_var_collection(str(many), {f"layer{i}/w": np.zeros(2, np.float32) for i in range(3000)})
    with subprocess.Popen([str(script), "info", str(many), "--json"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=_script_env()) as proc:
        assert proc.stdout.read(10) == b'{\n  "file"'
        proc.stdout.close()
        err = proc.stderr.read().decode()
        proc.wait(timeout=120)
    assert "Traceback" not in err and "Exception ignored" not in err and err == ""
    assert proc.returncode == 1
