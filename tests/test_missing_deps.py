"""A missing optional package is not damage: MissingDependencyError (an ImportError), never a FormatError,
and restore-latest neither skips such checkpoints as damaged nor says every checkpoint is damaged.

Each case runs in a real child process whose import of the package is blocked
(``sys.modules[name] = None`` makes ``import name`` raise ImportError).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest

import ckpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = textwrap.dedent("""
    import json, sys, warnings
    for name in sys.argv[2].split(","):
        sys.modules[name] = None  # import name -> ImportError, as if it were not installed
    import ckpt
    from ckpt.errors import FormatError, MissingDependencyError
    out = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for api in sys.argv[3].split(","):
            try:
                if api == "restore":  # the latest, with the fallback past damaged ones (as restore())
                    ckpt.Checkpoint(sys.argv[1], verbose=False).load()
                elif api == "restore-idx":
                    ckpt.Checkpoint(sys.argv[1], verbose=False).load(1)
                elif api == "load":
                    ckpt.load(sys.argv[1] + "/ckpt/0000000002.npz")
                elif api == "pack-arrays":
                    ckpt.Pack(sys.argv[1] + "/ckpt/0000000002.npz").arrays().read("w")
                out[api] = "no error"
            except Exception as e:
                out[api] = {"type": type(e).__name__, "import": isinstance(e, ImportError),
                            "format": isinstance(e, FormatError), "package": getattr(e, "package", None),
                            "file": getattr(e, "file", None), "message": str(e)}
    out["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    print(json.dumps(out))
""")


def _child(logdir: str, blocked: str, apis: str) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, logdir, blocked, apis], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def _two_checkpoints(tmp_path, compression=None, dtype=ml_dtypes.bfloat16) -> str:
    ck = ckpt.Checkpoint(str(tmp_path), verbose=False, compression=compression)
    for idx in (1, 2):
        w = ((np.arange(4096, dtype=np.float32) % 7) * idx).astype(dtype)
        ck.save({"w": w, "b": np.zeros(3, np.float32)}, idx)
    return str(tmp_path)


def _assert_missing(result: dict, package: str, file_end: str) -> None:
    assert result["type"] == "MissingDependencyError", result
    assert result["import"] and not result["format"], result
    assert result["package"] == package
    assert result["file"].endswith(file_end), result
    assert package in result["message"] and "not installed" in result["message"]


def test_bfloat16_checkpoints_without_ml_dtypes_are_not_damaged(tmp_path):
    result = _child(_two_checkpoints(tmp_path), "ml_dtypes", "restore,restore-idx,load,pack-arrays")
    assert result["warnings"] == []  # no "skipping damaged checkpoint" at all
    _assert_missing(result["restore"], "ml_dtypes", "0000000002.npz")  # the newest: not an older one, not "every"
    assert "every checkpoint is damaged" not in result["restore"]["message"]
    _assert_missing(result["restore-idx"], "ml_dtypes", "0000000001.npz")
    _assert_missing(result["load"], "ml_dtypes", "0000000002.npz")
    _assert_missing(result["pack-arrays"], "ml_dtypes", "0000000002.npz")


@pytest.mark.parametrize("codec,package", [("zstd", "zstandard"), ("lz4", "lz4")])
def test_compressed_checkpoints_without_their_codec_are_not_damaged(tmp_path, codec, package):
    result = _child(_two_checkpoints(tmp_path, compression=codec, dtype=np.float32), package, "restore,load")
    assert result["warnings"] == []
    _assert_missing(result["restore"], package, "0000000002.npz")
    _assert_missing(result["load"], package, "0000000002.npz")


def test_the_same_files_read_with_the_packages_installed(tmp_path):
    logdir = _two_checkpoints(tmp_path, compression="zstd")
    result = _child(logdir, "ckpt_no_such_module", "restore,load")
    assert result["restore"] == "no error" and result["load"] == "no error" and result["warnings"] == []


def test_missing_dependency_error_is_an_import_error_naming_the_extra():
    e = ckpt.MissingDependencyError("x", package="zstandard", extra="zstd", file="f.npz")
    assert isinstance(e, ImportError) and isinstance(e, ckpt.CkptError) and not isinstance(e, ckpt.FormatError)
    assert (e.package, e.extra, e.file) == ("zstandard", "zstd", "f.npz")
