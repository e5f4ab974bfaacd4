"""Issue 13, "never lose a run": exit, retention, fallback, aliasing, snapshots and damage.

Real files, real subprocesses, real mounts (tmpfs, read-only) where the machine allows them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import ckpt
from ckpt.errors import CorruptCheckpointWarning, SaveError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_py(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture
def mount(tmp_path):
    """mount(options) -> a fresh tmpfs mounted with those options (skips where mounting is not allowed)."""
    mounted = []

    def make(options: str, name: str = "mnt") -> str:
        where = tmp_path / name
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")
        mounted.append(str(where))
        return str(where)

    yield make
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", where], capture_output=True)


# -- 1. the last async save survives interpreter exit --------------------------
ASYNC_LAST_SAVE = """
import sys, numpy as np, ckpt
ck = ckpt.Checkpoint(sys.argv[1], async_save=True)
w = np.arange(8 << 20, dtype=np.float32)  # 32 MiB
ck.save({"w": w}, idx=7)
# no wait(), no close(): the script just ends
"""


def test_last_async_save_completes_at_normal_exit(tmp_path):
    r = run_py(ASYNC_LAST_SAVE, str(tmp_path))
    assert r.returncode == 0, r.stderr
    ck = ckpt.Checkpoint(str(tmp_path))
    assert ck.indices() == [7]
    target = {"w": np.zeros(8 << 20, np.float32)}
    assert ck.restore(target)[0] == 7
    np.testing.assert_array_equal(target["w"], np.arange(8 << 20, dtype=np.float32))


def test_last_async_save_that_fails_at_exit_says_so_and_exits_nonzero(mount):
    small = mount("size=4m")  # 32 MiB cannot fit: ENOSPC in the background write
    r = run_py(ASYNC_LAST_SAVE, small)
    assert r.returncode != 0
    assert "background save of checkpoint 7" in r.stderr and "failed" in r.stderr
    assert not os.path.exists(os.path.join(small, "ckpt", "0000000007.npz"))
