"""One definition of "the metrics of a checkpoint" (issue 15): Checkpoint.best(), retention's keep_best,
ckpt.list_checkpoints, ckpt.find, ``ckpt ls`` and ``ckpt prune`` all agree, for the README's first
example (metrics in an ``extras={"metrics": {...}}`` slot) as for ``save(metrics=...)``.

The CLI is run as a real subprocess (``python -m ckpt``), so these tests also run against older code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import ckpt

LOSSES = {0: 0.5, 1000: 0.2, 2000: 0.3}  # best by min loss: 1000; the newest: 2000


def ckpt_cli(*argv):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "ckpt", *map(str, argv)], capture_output=True, text=True, env=env,
                       timeout=300)
    return r.returncode, r.stdout, r.stderr


def _loss_value(kind, loss):
    if kind == "float":
        return loss  # a JSON metrics slot
    if kind == "numpy":
        return np.float32(loss)  # a dict of numpy scalars: an arrays slot
    jnp = pytest.importorskip("jax.numpy")
    return jnp.asarray(loss, dtype=jnp.float32)  # what a JAX training step returns: an arrays slot


def _agree(logdir, expected_best):
    """Library best(), keep_best, list_checkpoints, ckpt ls and ckpt prune name the same checkpoint."""
    ck = ckpt.Checkpoint(str(logdir), keep_ckpts=None, keep_best=1, metric="loss", verbose=False)
    best = ck.best()
    assert best is not None and best[0] == expected_best
    assert best[1]["loss"] == pytest.approx(LOSSES[expected_best])
    plan = ck.plan_prune()
    assert plan.kept_by["keep_best"] == {expected_best}
    rc, out, err = ckpt_cli("ls", logdir, "--metric", "loss", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["best"] == expected_best
    assert [c["metrics"]["loss"] for c in doc["checkpoints"]] == pytest.approx([LOSSES[i] for i in sorted(LOSSES)])
    rc, out, err = ckpt_cli("prune", logdir, "--keep-best", "1", "--metric", "loss", "--dry-run", "--json")
    assert rc == 0, err
    rows = {r["step"]: r for r in json.loads(out)["checkpoints"]}
    assert [s for s, r in rows.items() if "keep_best" in r["kept_by"]] == [expected_best]
    assert json.loads(out)["deleted"] == [0]  # neither the best nor the newest


@pytest.mark.parametrize("kind", ["float", "numpy", "jax"])
def test_readme_extras_metrics_agree_everywhere(tmp_path, kind):
    logdir = tmp_path / "runs" / "exp1"
    ck = ckpt.Checkpoint(str(logdir), keep_ckpts=3, verbose=False)
    for step, loss in LOSSES.items():
        ck.save({"w": np.full(3, step, np.float32)}, idx=step,
                extras={"opt": {"m": np.zeros(3)}, "metrics": {"loss": _loss_value(kind, loss)}})
    _agree(logdir, 1000)


def test_readme_first_example_verbatim_with_objax(tmp_path, monkeypatch, objax):
    """The README's first code block, as written, with a real objax model and optimizer."""
    import jax.numpy as jn

    monkeypatch.chdir(tmp_path)
    net = objax.nn.Sequential([objax.nn.Linear(3, 4), objax.functional.relu, objax.nn.Linear(4, 1)])
    opt = objax.optimizer.Momentum(net.vars())
    steps = 2001
    code = '''
ck = ckpt.Checkpoint("runs/exp1", keep_ckpts=3)
idx, path = ck.restore(net.vars())            # (0, '') on a fresh run: nothing restored
start = idx + 1 if path else 0                # step idx is done: go on with the next one
for step in range(start, steps):
    train_step(...)
    if step % 1000 == 0:
        ck.save(net.vars(), idx=step, extras={"opt": opt.vars(), "metrics": {"loss": loss}})
'''
    with open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert code.strip() in readme  # the test runs what the README shows
    calls = iter(range(10**6))

    def step_loss(*_):
        i = next(calls)
        return LOSSES.get(i, 9.0)

    scope = {"ckpt": ckpt, "net": net, "opt": opt, "steps": steps}
    scope["train_step"] = lambda *_: scope.__setitem__("loss", jn.asarray(step_loss(), dtype=jn.float32))
    exec(compile(code, "README.md", "exec"), scope)
    _agree(tmp_path / "runs" / "exp1", 1000)


def test_save_metrics_win_over_an_extras_metrics_slot(tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path), keep_ckpts=None, verbose=False)
    ck.save({"w": np.zeros(2)}, idx=1, extras={"metrics": {"loss": 0.0}}, metrics={"loss": 5.0})
    ck.save({"w": np.zeros(2)}, idx=2, extras={"metrics": {"loss": 1.0}})
    assert ck.best("loss") == (2, {"loss": 1.0})
    with ckpt.Pack(ck.path(1)) as p:
        assert ckpt.metrics.recorded_metrics(p.metadata) == {"loss": 5.0}


def test_metrics_of_rule(tmp_path):
    """Numbers and strings of a metrics slot count; booleans, arrays, nested values and other slots do not."""
    from ckpt.varfile import open_reader, save_var_collection
    from ckpt.metrics import metrics_of

    path = tmp_path / "a.npz"
    with ckpt.Pack(str(path)) as p:
        p.dump("main", {"w": np.zeros(2)})
        p.dump("metrics", {"loss": 0.25, "acc": np.float64(0.5), "tag": "ema", "flag": True,
                           "hist": [1, 2], "nested": {"x": 1}, "vec": np.arange(3)})
    with open_reader(str(path)) as reader:
        assert metrics_of(reader) == {"loss": 0.25, "acc": 0.5, "tag": "ema"}
    plain = tmp_path / "plain.npz"
    save_var_collection(str(plain), {"w": np.zeros(2)})
    with open_reader(str(plain)) as reader:
        assert metrics_of(reader) == {}
    arrays = tmp_path / "arr.npz"  # an arrays slot: its scalars are metrics, its vectors are not
    with ckpt.Pack(str(arrays)) as p:
        p.dump("main", {"w": np.zeros(2)})
        p.dump("metrics", {"loss": np.float32(0.5), "curve": np.arange(4.0), "step": np.int64(7)})
    with open_reader(str(arrays)) as reader:
        assert metrics_of(reader) == {"loss": 0.5, "step": 7}
    big = tmp_path / "big.npz"  # a slot named metrics that is data: never read
    with ckpt.Pack(str(big)) as p:
        p.dump("main", {"w": np.zeros(2)})
        p.dump("metrics", {"loss": np.float32(0.5), "curve": np.zeros(ckpt.metrics.MAX_SLOT_BYTES // 8 + 1)})
    with open_reader(str(big)) as reader:
        assert metrics_of(reader) == {}
    for value in ([0.1, 0.2], "loss=0.1", np.float32(0.5)):  # not a mapping
        other = tmp_path / "other.npz"
        with ckpt.Pack(str(other)) as p:
            p.dump("main", {"w": np.zeros(2)})
            p.dump("metrics", value)
        with open_reader(str(other)) as reader:
            assert metrics_of(reader) == {}
        other.unlink()


def test_find_uses_the_same_metrics(tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path / "run"), keep_ckpts=None, verbose=False)
    for step, loss in LOSSES.items():
        ck.save({"w": np.zeros(2)}, idx=step, extras={"metrics": {"loss": np.float32(loss)}})
    found = ckpt.find(str(tmp_path), order_by="loss", limit=1)
    assert [e.idx for e in found] == [1000]
    assert found[0].metrics["loss"] == pytest.approx(0.2)


def test_a_damaged_metrics_slot_makes_the_checkpoint_damaged_not_metricless(tmp_path):
    from helpers import data_offsets, flip_byte

    ck = ckpt.Checkpoint(str(tmp_path), keep_ckpts=None, verbose=False)
    for step, loss in LOSSES.items():
        ck.save({"w": np.zeros(2)}, idx=step, extras={"metrics": {"loss": loss}})
    flip_byte(ck.path(1000), data_offsets(ck.path(1000))["metrics/data.json"] + 3)
    fresh = ckpt.Checkpoint(str(tmp_path), keep_ckpts=None, keep_best=1, metric="loss", verbose=False)
    plan = fresh.plan_prune()
    assert 1000 in plan.damaged and fresh.best()[0] == 2000
    listing = ckpt.list_checkpoints(str(tmp_path), metric="loss")
    assert [r.state for r in listing.records] == ["unverified", "damaged", "unverified"]
    assert listing.best == 2000 and str(ck.path(1000)) in listing.records[1].problem


def test_a_pickled_metrics_slot_is_never_unpickled(tmp_path):
    """A hostile file whose metrics slot is a pickle: no listing, ranking or search runs it."""
    from helpers import TouchOnUnpickle

    sentinel = tmp_path / "pwned"
    ck = ckpt.Checkpoint(str(tmp_path / "run"), keep_ckpts=None, verbose=False)
    ck.save({"w": np.zeros(2)}, idx=1, extras={"metrics": {"ok": 0.1}})
    with ckpt.Pack(ck.path(1)) as p:
        p.remove("metrics")
        p.dump("metrics", TouchOnUnpickle(sentinel), serializer="pickle")
    ck.save({"w": np.zeros(2)}, idx=2, extras={"metrics": {"loss": 0.3}})
    assert ckpt.Checkpoint(str(tmp_path / "run"), verbose=False).best("loss")[0] == 2
    listing = ckpt.list_checkpoints(tmp_path / "run", metric="loss")
    assert [r.metrics for r in listing.records] == [{}, {"loss": 0.3}] and listing.best == 2
    assert [e.idx for e in ckpt.find(str(tmp_path), order_by="loss")] == [2, 1]
    rc, out, err = ckpt_cli("ls", tmp_path / "run", "--metric", "loss", "--verify")
    assert rc == 0, err
    assert not sentinel.exists()


def test_metric_names_from_a_file_cannot_drive_the_terminal(tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path), keep_ckpts=None, verbose=False)
    ck.save({"w": np.zeros(2)}, idx=1, extras={"metrics": {"\x1b[2Jloss": 0.5, "tag": "\x1b]0;owned\x07"}})
    rc, out, err = ckpt_cli("ls", tmp_path)
    assert rc == 0 and "\x1b" not in out and "\\x1b[2Jloss" in out


def test_bfloat16_metrics_without_ml_dtypes_are_not_damage(tmp_path):
    """A metrics slot this process cannot decode (bfloat16 scalars, no ml_dtypes) gives no metrics; the
    checkpoint is not damaged, so retention still counts it (and may delete it) like any other."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    ck = ckpt.Checkpoint(str(tmp_path), keep_ckpts=None, verbose=False)
    for step in (1, 2, 3):
        ck.save({"w": np.zeros(2)}, idx=step, extras={"metrics": {"loss": np.array(0.5, ml_dtypes.bfloat16)}})
    assert ck.best("loss")[0] == 3  # with ml_dtypes the scalars are metrics
    code = (f"import sys; sys.modules['ml_dtypes'] = None\nimport ckpt\n"
            f"ck = ckpt.Checkpoint({str(tmp_path)!r}, keep_ckpts=1, verbose=False)\n"
            f"plan = ck.plan_prune()\nprint(sorted(plan.damaged), plan.delete)\n"
            f"print(ckpt.list_checkpoints({str(tmp_path)!r}).records[0].state)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["[] [1, 2]", "unverified"]
