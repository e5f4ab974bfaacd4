"""Aliases: durable, unique names for checkpoints, resolved by find/build/ls and respected by retention."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import ckpt
from ckpt import _io
from ckpt.cli import main
from ckpt.errors import CheckpointNotFoundError

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS)
from recipe_models import plain  # noqa: E402


def _save(ck, *steps, **kw):
    for s in steps:
        ck.save({"w": np.full(3, float(s))}, idx=s, **kw)


def test_alias_set_move_remove_and_unique(tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path), keep_ckpts=None)
    _save(ck, 1, 2, 3)
    ck.alias("best", 1)
    ck.alias("stable", 1)
    assert ck.aliases() == {"best": 1, "stable": 1}
    ck.alias("best", 3)  # moves: one checkpoint per alias
    assert ck.aliases() == {"best": 3, "stable": 1}
    ck.alias("stable", None)
    ck.alias("never-set", None)  # removing an absent alias is a no-op
    assert ck.aliases() == {"best": 3}
    with open(os.path.join(ck.directory, "aliases.json")) as f:
        doc = json.load(f)
    assert doc["format"] == "ckpt.aliases" and doc["version"] == 1
    rec = doc["aliases"]["best"]
    assert rec["idx"] == 3 and len(rec["digest"]["value"]) == 64 and rec["set_at"].endswith("Z")
    assert rec["digest"]["algorithm"] in ("blake3", "sha256")
    assert ck.indices() == [1, 2, 3]  # the table is not a checkpoint


def test_alias_of_a_missing_checkpoint_or_a_bad_name_is_refused(tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path))
    _save(ck, 5)
    with pytest.raises(CheckpointNotFoundError, match="no such checkpoint.*have: \\[5\\]"):
        ck.alias("best", 6)
    for bad in ("", "../x", "a/b", ".hidden", "x" * 101, 5, None):
        with pytest.raises(ValueError):
            ck.alias(bad, 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ck.alias("best", -1)
    assert ck.aliases() == {}


def test_alias_table_is_written_atomically(tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path))
    _save(ck, 1, 2)
    ck.alias("best", 1)

    class FailingReplace(_io.FileOps):
        def replace(self, src, dst):
            raise OSError(28, "No space left on device")

    real = _io.ops
    _io.ops = FailingReplace()
    try:
        with pytest.raises(OSError):
            ck.alias("best", 2)
    finally:
        _io.ops = real
    assert ck.aliases() == {"best": 1}
    assert [n for n in os.listdir(ck.directory) if n.endswith(".tmp")] == []


KILLER = """
    import sys, ckpt
    ck = ckpt.Checkpoint(sys.argv[1], keep_ckpts=None)
    i = 0
    print("ready", flush=True)
    while True:
        ck.alias(f"a{i % 7}", 1 + i % 3)
        i += 1
"""


def test_alias_table_survives_sigkill(tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path), keep_ckpts=None)
    _save(ck, 1, 2, 3)
    for n in range(5):
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLER), str(tmp_path)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.05 + 0.03 * n)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        table = ck.aliases()  # always a whole table: parses and validates
        assert all(v in (1, 2, 3) for v in table.values())
        ck.alias("mine", 2)  # the lock a killed writer held is free again
        assert [n for n in os.listdir(ck.directory) if n.startswith(".aliases.json.")] == []  # stale temps gone
    assert ck.aliases()["mine"] == 2


# -- retention ------------------------------------------------------------------------------
def test_retention_never_deletes_an_aliased_checkpoint(tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path), keep_ckpts=2)
    _save(ck, 1)
    ck.alias("best", 1)
    _save(ck, 2, 3, 4, 5)
    assert ck.indices() == [1, 4, 5]
    ck.alias("best", 4)
    _save(ck, 6)
    assert ck.indices() == [4, 5, 6]  # 1 went once nothing named it
    ck.alias("best", None)
    _save(ck, 7)
    assert ck.indices() == [6, 7]


def test_prune_and_cli_prune_keep_aliased_checkpoints(tmp_path, capsys):
    ck = ckpt.Checkpoint(str(tmp_path), keep_ckpts=None)
    _save(ck, 10, 20, 30, 40)
    ck.alias("first", 10)
    pruner = ckpt.Checkpoint(str(tmp_path), keep_ckpts=1)
    assert pruner.prune(dry_run=True) == [20, 30]
    assert pruner.prune() == [20, 30]
    assert ck.indices() == [10, 40]
    assert main(["prune", str(tmp_path), "--keep", "1"]) == 0
    assert ck.indices() == [10, 40]
    capsys.readouterr()
    assert main(["prune", str(tmp_path), "--keep", "1", "--dry-run", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["checkpoints"]
    assert [(r["step"], r["kept"], r["kept_by"]) for r in rows] == [(10, True, ["alias:first"]),
                                                                   (40, True, ["keep_last", "newest"])]


def test_an_unreadable_alias_table_stops_deletion(tmp_path, caplog):
    ck = ckpt.Checkpoint(str(tmp_path), keep_ckpts=1)
    _save(ck, 1)
    with open(os.path.join(ck.directory, "aliases.json"), "w") as f:
        f.write('{"format": "ckpt.aliases", "version": 1, "aliases": {"best": {"idx": "one"}}}')
    with caplog.at_level(logging.WARNING, logger="ckpt"):
        _save(ck, 2, 3)
    assert ck.indices() == [1, 2, 3]
    assert any("no checkpoint is deleted" in r.getMessage() for r in caplog.records)
    with pytest.raises(ckpt.FormatError, match="aliases.json"):
        ck.aliases()


# -- resolution -------------------------------------------------------------------------------
def test_build_and_find_resolve_aliases(tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path))
    models = {s: plain.Linear(2, 2, seed=s) for s in (1, 2, 3)}
    for s, m in models.items():
        ck.save(m.state(), idx=s, recipe=m)
    ck.alias("best", 2)
    built = ckpt.build(str(tmp_path), alias="best", trusted=["recipe_models.*"])
    np.testing.assert_array_equal(built.w, models[2].w)
    assert [e.idx for e in ckpt.find(str(tmp_path), alias="best")] == [2]
    with pytest.raises(CheckpointNotFoundError, match="no alias 'worst'.*best"):
        ckpt.build(str(tmp_path), alias="worst", trusted=True)
    with pytest.raises(ValueError, match="not both"):
        ckpt.build(str(tmp_path), idx=1, alias="best", trusted=True)
    with pytest.raises(ValueError, match="checkpoint file"):
        ckpt.build(ck.path(1), alias="best", trusted=True)


def test_alias_after_an_async_save(tmp_path):
    with ckpt.Checkpoint(str(tmp_path), async_save=True) as ck:
        ck.save({"w": np.zeros(1000)}, idx=9)
        ck.alias("latest-good", 9)  # waits for the in-flight save of 9
        assert ck.aliases() == {"latest-good": 9}


def test_ls_shows_aliases(tmp_path, capsys):
    ck = ckpt.Checkpoint(str(tmp_path))
    _save(ck, 1, 2)
    ck.alias("best", 1)
    ck.alias("v1.0", 1)
    assert main(["ls", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "alias:best, alias:v1.0" in lines[1] and "alias" not in lines[2]
    assert main(["ls", str(tmp_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [c["aliases"] for c in doc["checkpoints"]] == [["best", "v1.0"], []]


def test_info_shows_the_recipe(tmp_path, capsys):
    ck = ckpt.Checkpoint(str(tmp_path))
    s = plain.Stack([plain.Linear(2, 2)], activation="relu", shape=(3, 4))
    path = ck.save({"w": np.zeros(1)}, idx=1, recipe=s)
    assert main(["info", path]) == 0
    out = capsys.readouterr().out
    assert "recipe:   recipe_models.plain.Stack(layers=[Linear(n_in=2, n_out=2, seed=0, dtype=float32, " in out
    assert "shape=(3, 4)" in out and f"hash:   {ckpt.recipe_of(s).hash}" in out
    assert main(["info", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recipe"] == ckpt.recipe_of(s).to_dict()
    bare = ck.save({"w": np.zeros(1)}, idx=2)
    assert main(["info", bare]) == 0
    assert "recipe:   (none" in capsys.readouterr().out


def test_an_invalid_stored_recipe_is_reported_not_fatal(tmp_path, capsys, caplog):
    path = str(tmp_path / "bad.npz")
    ckpt.varfile.write_file(path, {"main": {"w": np.zeros(2)}},
                            metadata={"ckpt": {"recipe": {"class": "m.X", "kwargs": {"a": {"$ckpt": "eval", "v": "0"}}}}})
    assert main(["info", path]) == 0
    assert "recipe:   invalid (" in capsys.readouterr().out
    assert main(["info", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recipe"] is None
    with caplog.at_level(logging.WARNING, logger="ckpt"):
        (entry,) = ckpt.find(str(tmp_path))
    assert entry.recipe is None and any("unknown or malformed tag" in r.getMessage() for r in caplog.records)
    with pytest.raises(ckpt.FormatError, match="unknown or malformed tag"):
        ckpt.build(path, trusted=True)


def test_alias_in_a_missing_directory_is_refused(tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path / "absent"), makedir=False)
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint directory"):
        ck.alias("best", 1)
    assert not os.path.exists(tmp_path / "absent")
