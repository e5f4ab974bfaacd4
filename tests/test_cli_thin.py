"""The ``ckpt`` command stays thin (issue 15): each command is argument parsing + one public library call +
printing. Checked two ways: statically (no command module touches locations through ``os``/``open`` or
reaches into private ckpt modules), and by output (each command's ``--json`` is the library result)."""

from __future__ import annotations

import ast
import json
import os
import pathlib

import numpy as np
import pytest

import ckpt
from ckpt import _io, cli

CLI_DIR = pathlib.Path(cli.__file__).parent
#: Helpers of the CLI itself, allowed to every command module.
OWN_HELPERS = {"ckpt.cli._format", "ckpt.cli._args"}
#: ``os`` attributes that act on a location; a command must leave those to the library.
LOCATION_OS = {"path", "stat", "lstat", "listdir", "scandir", "walk", "remove", "unlink", "replace", "rename",
               "makedirs", "mkdir", "rmdir", "fspath", "getcwd"}
#: Modules that open or list files; a command must leave those to the library.
FILE_MODULES = {"zipfile", "shutil", "glob", "pathlib", "tempfile", "io", "mmap"}


def _modules():
    return sorted(CLI_DIR.glob("*.py"))


def _absolute(node: ast.ImportFrom, path: pathlib.Path) -> str:
    package = ["ckpt", "cli"][: 2 - (node.level - 1)] if node.level else []
    return ".".join(package + ([node.module] if node.module else []))


def _problems(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FILE_MODULES or alias.name.startswith("os."):
                    found.append(f"line {node.lineno}: import {alias.name}")
                if alias.name.startswith("ckpt.") and any(p.startswith("_") for p in alias.name.split(".")):
                    found.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, path)
            if module.split(".")[0] in FILE_MODULES or module.startswith("os"):
                found.append(f"line {node.lineno}: from {module} import ...")
            if module.startswith("ckpt") and module not in OWN_HELPERS:
                if any(p.startswith("_") for p in module.split(".")):
                    found.append(f"line {node.lineno}: from {module} import (a private module)")
                for alias in node.names:
                    dunder = alias.name.startswith("__") and alias.name.endswith("__")
                    if alias.name.startswith("_") and not dunder and (module, alias.name) != ("ckpt", "_quiet_interrupt"):
                        found.append(f"line {node.lineno}: from {module} import {alias.name}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
            if node.attr in LOCATION_OS:
                found.append(f"line {node.lineno}: os.{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
            found.append(f"line {node.lineno}: open()")
    return found


def test_the_checker_catches_what_it_forbids(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nimport zipfile\nfrom .. import _packfile\nfrom .._zip import x\n"
                   "from ..listing import _record\nos.path.getsize('x')\nopen('x')\nos.listdir('.')\n")
    assert len(_problems(bad)) == 7


def test_no_cli_module_touches_locations_or_private_modules():
    problems = {p.name: _problems(p) for p in _modules()}
    assert {k: v for k, v in problems.items() if v} == {}
    names = {p.stem for p in _modules()}
    assert {"ls", "info", "verify", "diff", "export", "import_", "average", "prune", "find"} <= names
    assert not (CLI_DIR.parent / "_cli_format.py").exists() and not (CLI_DIR.parent / "_cli_recipes.py").exists()


def test_every_command_module_registers_one_command():
    for module in cli.COMMANDS:
        assert callable(module.register) and callable(module.run), module.__name__
        assert module.run.__doc__ is None or len(module.run.__doc__) < 200


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    ck = ckpt.Checkpoint(str(d), keep_ckpts=None, verbose=False)
    for step, loss in [(1, 0.5), (2, 0.1), (3, 0.3)]:
        ck.save({"w": np.full(4, step, np.float32)}, idx=step, extras={"metrics": {"loss": np.float32(loss)}})
    return d


def _json(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, json.loads(out), err


def _plain(doc):
    """A library result as the CLI's JSON holds it (NaN/inf as strings, tuples as lists)."""
    return json.loads(json.dumps(ckpt.cli._format.strict_json(doc), default=str))


def test_each_command_prints_the_library_result(capsys, run_dir, tmp_path):
    a, b = run_dir / "ckpt" / "0000000001.npz", run_dir / "ckpt" / "0000000002.npz"
    cases = [
        (("ls", run_dir, "--metric", "loss", "--json"), ckpt.list_checkpoints(run_dir, metric="loss").to_dict()),
        (("verify", run_dir, "--json"), ckpt.verify(run_dir).to_dict()),
        (("diff", a, b, "--json"), ckpt.diff(a, b).to_dict()),
        (("prune", run_dir, "--keep", "1", "--dry-run", "--json"), ckpt.prune_run(run_dir, keep=1, dry_run=True).to_dict()),
    ]
    for argv, expected in cases:
        rc, doc, err = _json(capsys, *argv)
        assert rc == 0, (argv, err)
        assert doc == _plain(expected), argv
    rc, doc, _ = _json(capsys, "info", a, "--json")
    expected = _plain(ckpt.describe(a))
    for slot in expected["slots"].values():  # installed versions are read twice: the same
        slot.pop("created_at")
    for slot in doc["slots"].values():
        slot.pop("created_at")
    assert rc == 0 and doc == expected and doc["metrics"] == {"loss": pytest.approx(0.5)}


@pytest.mark.parametrize("argv", [("export", "{src}", "{out}"), ("import", "{src}", "-o", "{out}")])
def test_cli_conversions_write_through_the_atomic_write(capsys, run_dir, tmp_path, monkeypatch, argv):
    """Issue 15: the CLI's own replace-by-rename did not fsync the directory; conversions now use the
    library's atomic write, so the output's directory is fsynced and a failed rename leaves no temp."""
    calls = []

    class Recording(_io.FileOps):
        def fsync_dir(self, directory):
            calls.append(directory)
            super().fsync_dir(directory)

    monkeypatch.setattr(_io, "ops", Recording())
    out = tmp_path / "out" / "o.npz"
    out.parent.mkdir()
    src = run_dir / "ckpt" / "0000000001.npz"
    assert cli.main([x.format(src=src, out=out) for x in argv]) == 0, capsys.readouterr().err
    assert str(out.parent) in calls

    class FullDisk(_io.FileOps):
        def replace(self, src, dst):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(_io, "ops", FullDisk())
    before = out.read_bytes()
    assert cli.main([x.format(src=src, out=out) for x in argv] + ["--force"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left on device" in err.lower() and "Traceback" not in err
    assert out.read_bytes() == before and [n for n in os.listdir(out.parent) if n.endswith(".tmp")] == []


def test_old_entry_point_still_runs_the_command():
    """Console scripts installed before the split import ``ckpt._cli:run``; it is the same command."""
    from ckpt import _cli

    assert _cli.run is cli.run and _cli.main is cli.main
    import tomllib

    with open(CLI_DIR.parent.parent / "pyproject.toml", "rb") as f:
        assert tomllib.load(f)["project"]["scripts"]["ckpt"] == "ckpt.cli:run"
