"""Retention policies: keep latest k, every N-th, best k by a metric, within a byte budget; composed by union.

The pure selection (ckpt.retention.select) is tested on entries; the Checkpoint
manager is tested on files, and a Hypothesis state machine saves, restarts and
prunes at random, checking after every step against brute-force definitions
computed from what is on disk (read with the standard library's zipfile).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import ckpt
from ckpt.retention import Entry, RetentionPolicy, kept_by, normalize_metrics, rank, select
from helpers import read_manifest

NAN = float("nan")
INF = float("inf")


def state(i, n=2):
    return {"w": np.full(n, float(i), np.float32)}


# -- the pure selection ------------------------------------------------------------------------
def entries(*specs):
    """Entries from (idx, size, metric value or None) triples; the metric is "loss"."""
    return [Entry(i, size, {} if v is None else {"loss": v}) for i, size, v in specs]


def test_keep_last_every_and_union():
    es = entries(*[(i, 10, None) for i in range(1, 11)])
    policy = RetentionPolicy(keep_last=2, keep_every=4)
    assert kept_by(es, policy) == {"keep_last": {9, 10}, "keep_every": {4, 8}}
    assert select(es, policy, newest=10) == {4, 8, 9, 10}


def test_keep_best_ignores_nan_inf_missing_and_non_numbers():
    es = entries((1, 1, 0.5), (2, 1, NAN), (3, 1, None), (4, 1, -INF), (5, 1, 0.7), (6, 1, True), (7, 1, "low"),
                 (8, 1, 0.9))
    assert [e.idx for e in rank(es, "loss", "min")] == [1, 5, 8]
    assert [e.idx for e in rank(es, "loss", "max")] == [8, 5, 1]
    policy = RetentionPolicy(keep_last=None, keep_best=2, metric="loss")
    assert select(es, policy, newest=8) == {1, 5, 8}  # 8 as the newest


def test_ties_go_to_the_newer_checkpoint():
    es = entries((1, 1, 1.0), (2, 1, 1.0), (3, 1, 2.0))
    assert [e.idx for e in rank(es, "loss", "min")] == [2, 1, 3]
    policy = RetentionPolicy(keep_last=None, keep_best=1, metric="loss")
    assert select(es, policy, newest=3) == {2, 3}


def test_max_bytes_keeps_the_newest_prefix_that_fits():
    es = entries((1, 100, None), (2, 10, None), (3, 50, None), (4, 30, None))
    policy = RetentionPolicy(keep_last=None, max_bytes=85)
    assert kept_by(es, policy) == {"max_bytes": {3, 4}}  # 30 + 50 fit, + 10 does not
    assert kept_by(es, RetentionPolicy(keep_last=None, max_bytes=90)) == {"max_bytes": {2, 3, 4}}
    # stops at the first that does not fit, even if an older, smaller one would
    es = entries((1, 1, None), (2, 100, None), (3, 5, None))
    assert kept_by(es, RetentionPolicy(keep_last=None, max_bytes=50)) == {"max_bytes": {3}}
    # the newest stays even when it alone is over the budget
    assert select(entries((1, 10, None), (2, 500, None)), RetentionPolicy(keep_last=None, max_bytes=0), 2) == {2}


def test_newest_and_just_written_are_always_kept():
    es = entries((1, 1, None), (5, 1, None), (9, 1, None))
    policy = RetentionPolicy(keep_last=1)
    assert select(es, policy, newest=9, just_written=1) == {1, 9}
    assert select(es, RetentionPolicy(keep_last=None, keep_every=100), newest=9) == {9}


def test_no_active_policy_keeps_everything():
    es = entries((1, 1, None), (2, 1, None))
    policy = RetentionPolicy(keep_last=None)
    assert not policy.active
    assert select(es, policy, newest=2) == {1, 2}


@pytest.mark.parametrize("kwargs", [
    dict(keep_last=0), dict(keep_last=True), dict(keep_last=1.5), dict(keep_every=0), dict(keep_best=0, metric="m"),
    dict(keep_best=1), dict(mode="lowest"), dict(max_bytes=-1), dict(metric=""),
], ids=repr)
def test_invalid_policies_are_refused(kwargs):
    with pytest.raises(ValueError):
        RetentionPolicy(**kwargs)


def test_metrics_are_normalised_to_json(jnp):
    out = normalize_metrics({"a": np.float32(0.5), "b": jnp.asarray(2.0), "c": np.int64(3), "d": NAN, "e": "x",
                             "f": None, "g": np.array(True)})
    assert out["a"] == 0.5 and type(out["a"]) is float
    assert out["b"] == 2.0 and type(out["b"]) is float
    assert out["c"] == 3 and type(out["c"]) is int
    assert math.isnan(out["d"]) and out["e"] == "x" and out["f"] is None and out["g"] is True
    with pytest.raises(TypeError, match="'bad'"):
        normalize_metrics({"bad": object()})
    with pytest.raises(TypeError):
        normalize_metrics({1: 2.0})


# -- the manager -------------------------------------------------------------------------------
def test_keep_ckpts_stays_objax_compatible(tmp_path):
    ck = ckpt.Checkpoint(str(tmp_path / "a"), 2)  # positional keep_ckpts, as objax
    for i in range(1, 5):
        ck.save(state(i), i)
    assert ck.indices() == [3, 4]
    assert ckpt.Checkpoint(str(tmp_path / "b")).keep_ckpts == 5
    for bad in (0, -1, True, 2.0, "3"):
        with pytest.raises(ValueError, match="keep_ckpts"):
            ckpt.Checkpoint(str(tmp_path / "c"), keep_ckpts=bad)


def test_keep_ckpts_none_alone_keeps_everything(tmp_path):
    ck = ckpt.Checkpoint(tmp_path, keep_ckpts=None, verbose=False)
    for i in range(1, 8):
        ck.save(state(i), i)
    assert ck.indices() == list(range(1, 8))
    assert ck.prune() == []


def test_metrics_live_in_the_manifest(tmp_path):
    ck = ckpt.Checkpoint(tmp_path, keep_ckpts=3, metric="val_loss", verbose=False)
    path = ck.save(state(7), 7, metrics={"val_loss": np.float32(0.25), "acc": 0.5}, metadata={"run": "a"})
    doc = read_manifest(path)
    assert doc["metadata"] == {"run": "a", "ckpt": {"idx": 7, "metrics": {"val_loss": 0.25, "acc": 0.5}}}
    assert ck.metadata(7) == doc["metadata"]
    assert ck.metadata() == doc["metadata"]
    plain = ck.save(state(8), 8)
    assert read_manifest(plain)["metadata"] == {"ckpt": {"idx": 8}}
    assert ck.best() == (7, {"val_loss": 0.25, "acc": 0.5})


def test_bad_metrics_or_reserved_metadata_write_nothing(tmp_path):
    ck = ckpt.Checkpoint(tmp_path, verbose=False)
    with pytest.raises(TypeError, match="metric 'x'"):
        ck.save(state(1), 1, metrics={"x": object()})
    with pytest.raises(ValueError, match='"ckpt"'):
        ck.save(state(1), 1, metadata={"ckpt": 1})
    assert ck.indices() == []


def test_keep_best_survives_a_restart(tmp_path):
    kwargs = dict(keep_ckpts=1, keep_best=2, metric="val_loss", mode="min", verbose=False)
    losses = {1: 0.9, 2: 0.2, 3: NAN, 4: 0.5, 5: 0.1, 6: 0.7}
    ck = ckpt.Checkpoint(tmp_path, **kwargs)
    for i in (1, 2, 3):
        ck.save(state(i), i, metrics={"val_loss": losses[i]})
    ck = ckpt.Checkpoint(tmp_path, **kwargs)  # a new process: nothing in memory
    for i in (4, 5, 6):
        ck.save(state(i), i, metrics={"val_loss": losses[i]})
    assert ck.indices() == [2, 5, 6]
    assert ck.best() == (5, {"val_loss": 0.1})
    assert ck.best(mode="max") == (6, {"val_loss": 0.7})


def test_best_with_no_metric_anywhere(tmp_path):
    ck = ckpt.Checkpoint(tmp_path, metric="val_loss", verbose=False)
    assert ck.best() is None
    ck.save(state(1), 1, metrics={"val_loss": NAN})
    ck.save(state(2), 2)
    assert ck.best() is None
    with pytest.raises(ValueError, match="metric"):
        ckpt.Checkpoint(tmp_path, verbose=False).best()


def test_keep_every_and_max_bytes(tmp_path):
    ck = ckpt.Checkpoint(tmp_path, keep_ckpts=None, keep_every=5, verbose=False)
    for i in range(1, 13):
        ck.save(state(i), i)
    assert ck.indices() == [5, 10, 12]
    size = os.path.getsize(ck.path(12))
    ck2 = ckpt.Checkpoint(tmp_path / "b", keep_ckpts=None, max_bytes=3 * size + size // 2, verbose=False)
    for i in range(1, 8):
        ck2.save(state(i), i)
    assert ck2.indices() == [5, 6, 7]


def test_prune_applies_new_policies_and_dry_run_deletes_nothing(tmp_path):
    ck = ckpt.Checkpoint(tmp_path, keep_ckpts=None, verbose=False)
    for i in range(1, 7):
        ck.save(state(i), i, metrics={"loss": 1.0 / i})
    tighter = ckpt.Checkpoint(tmp_path, keep_ckpts=2, keep_best=1, metric="loss", mode="max", verbose=False)
    assert tighter.prune(dry_run=True) == [2, 3, 4]
    assert ck.indices() == list(range(1, 7))
    assert tighter.prune() == [2, 3, 4]
    assert ck.indices() == [1, 5, 6]
    assert tighter.prune() == []
    assert ckpt.Checkpoint(tmp_path / "none", makedir=False).prune() == []


def test_lower_index_is_kept_once_then_pruned(tmp_path, caplog):
    ck = ckpt.Checkpoint(tmp_path, keep_ckpts=1, verbose=False)
    ck.save(state(10), 10)
    with caplog.at_level(logging.WARNING, logger="ckpt"):
        ck.save(state(5), 5)
    assert "kept anyway" in caplog.text
    assert ck.indices() == [5, 10]
    assert ck.prune() == [5]
    assert ck.indices() == [10]


def test_an_unreadable_file_is_skipped_and_a_plain_npz_has_no_metrics(tmp_path, caplog):
    ck = ckpt.Checkpoint(tmp_path, keep_ckpts=1, keep_best=1, metric="m", verbose=False)
    ck.save(state(1), 1, metrics={"m": 0.5})
    with open(ck.path(2), "wb") as f:  # not a pack at all: damaged, never counted or deleted
        f.write(b"garbage")
    np.savez(ck.path(3), w=np.zeros(2))  # a plain npz: a checkpoint without metrics
    with caplog.at_level(logging.WARNING, logger="ckpt"):
        ck.save(state(4), 4, metrics={"m": 0.9})
    assert "skipped damaged checkpoint" in caplog.text and "0000000002.npz" in caplog.text
    assert ck.indices() == [1, 2, 4]
    assert ck.best() == (1, {"m": 0.5})


def test_async_saves_rotate_by_metrics(tmp_path):
    with ckpt.Checkpoint(tmp_path, keep_ckpts=1, keep_best=1, metric="acc", mode="max", async_save=True,
                         verbose=False) as ck:
        for i, acc in enumerate([0.1, 0.8, 0.3, 0.5], start=1):
            ck.save(state(i), i, metrics={"acc": acc})
        ck.wait()
        assert ck.indices() == [2, 4]
        assert ck.best() == (2, {"acc": 0.8})


# -- the state machine ----------------------------------------------------------------------------
def disk_state(ck):
    """idx -> (size, metrics or None), read with zipfile (not ckpt's reader)."""
    out = {}
    for name in os.listdir(ck.directory):
        if name.startswith(".") or not name.endswith(".npz"):
            continue
        path = os.path.join(ck.directory, name)
        record = read_manifest(path)["metadata"].get("ckpt", {})
        out[int(name.split(".")[0])] = (os.path.getsize(path), record.get("metrics"))
    return out


def rankable(metrics):
    v = (metrics or {}).get("val_loss")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def brute_force_keeps(disk, policy):
    """Each policy's kept set, straight from its definition."""
    idxs = sorted(disk)
    out = {}
    if policy["keep_ckpts"] is not None:
        out["keep_last"] = {i for i in idxs if sum(1 for j in idxs if j > i) < policy["keep_ckpts"]}
    if policy["keep_every"] is not None:
        out["keep_every"] = {i for i in idxs if i % policy["keep_every"] == 0}
    if policy["keep_best"] is not None:
        sign = 1 if policy["mode"] == "min" else -1
        kept = set()
        for i in idxs:
            v = rankable(disk[i][1])
            if v is None:
                continue
            # better: strictly better value, or the same value and newer
            better = sum(1 for j in idxs if (w := rankable(disk[j][1])) is not None
                         and (sign * w < sign * v or (w == v and j > i)))
            if better < policy["keep_best"]:
                kept.add(i)
        out["keep_best"] = kept
    if policy["max_bytes"] is not None:
        out["max_bytes"] = {i for i in idxs if sum(disk[j][0] for j in idxs if j >= i) <= policy["max_bytes"]}
    return out


def metric_unknown(disk, policy):
    """keep_best ranks by a metric that no checkpoint records: nothing may be deleted."""
    return policy["keep_best"] is not None and not any(m and "val_loss" in m for _, m in disk.values())


def expected_survivors(disk, policy, just_written=None):
    if not any(policy[k] is not None for k in ("keep_ckpts", "keep_every", "keep_best", "max_bytes")):
        return set(disk)
    if metric_unknown(disk, policy):
        return set(disk)
    keep = set().union(*brute_force_keeps(disk, policy).values())
    keep.add(max(disk))
    if just_written is not None:
        keep.add(just_written)
    return keep


def same_metrics(a, b):
    if a is None or b is None:
        return a is b
    if a.keys() != b.keys():
        return False
    return all((isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)) or x == y
               for x, y in ((a[k], b[k]) for k in a))


METRIC_VALUES = st.one_of(
    st.sampled_from([0.0, 1.0, 2.5, NAN, INF, -INF, True, "n/a"]),
    st.floats(-5, 5, allow_nan=False, width=16),
    st.integers(-3, 3),
)
METRICS = st.one_of(
    st.none(),
    st.just({}),
    st.fixed_dictionaries({"val_loss": METRIC_VALUES}),
    st.fixed_dictionaries({"val_loss": METRIC_VALUES, "acc": st.floats(0, 1)}),
    st.fixed_dictionaries({"acc": st.floats(0, 1)}),
)
POLICIES = st.fixed_dictionaries({
    "keep_ckpts": st.sampled_from([None, 1, 2, 3]),
    "keep_every": st.sampled_from([None, 2, 3, 5]),
    "keep_best": st.sampled_from([None, 1, 2]),
    "mode": st.sampled_from(["min", "max"]),
    "max_bytes": st.sampled_from([None, 0, 1600, 3500, 4500, 6000]),
})


class RetentionMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="ckpt-retention-")
        self.ck = None
        self.saved = {}  # idx -> metrics as saved (None: no metrics)
        self.max_saved = None

    def open(self):
        return ckpt.Checkpoint(self.root, verbose=False, metric="val_loss", **self.policy)

    @initialize(policy=POLICIES)
    def start(self, policy):
        self.policy = policy
        self.ck = self.open()

    @rule(delta=st.one_of(st.integers(1, 4), st.integers(1, 4), st.integers(-6, 0)), metrics=METRICS,
          n=st.sampled_from([2, 2, 100, 300]))
    def save(self, delta, metrics, n):
        before = disk_state(self.ck)
        idx = max(0, max(before, default=0) + delta)
        path = self.ck.save(state(idx, n), idx, metrics=metrics)  # files of about 1.5, 1.9 and 2.7 kB
        after = disk_state(self.ck)
        assert os.path.exists(path) and idx in after, "the file just written was deleted"
        self.saved[idx] = metrics
        self.max_saved = idx if self.max_saved is None else max(self.max_saved, idx)
        candidates = dict(before)
        candidates[idx] = after[idx]
        # nothing a policy keeps is deleted, and everything no policy keeps is
        assert set(after) == expected_survivors(candidates, self.policy, just_written=idx)
        for name, kept in brute_force_keeps(candidates, self.policy).items():
            assert kept <= set(after), f"{name} keeps {sorted(kept)}, but the directory holds {sorted(after)}"

    @rule()
    def restart(self):
        self.ck.close()
        self.ck = self.open()

    @rule(dry_run=st.booleans())
    def prune(self, dry_run):
        before = disk_state(self.ck)
        if before and metric_unknown(before, self.policy):
            with pytest.raises(ckpt.errors.UnknownMetricError, match="val_loss"):
                self.ck.prune(dry_run=dry_run)
            assert disk_state(self.ck) == before
            return
        removed = self.ck.prune(dry_run=dry_run)
        after = disk_state(self.ck)
        assert removed == sorted(removed)
        if not before:
            assert removed == []
            return
        assert set(removed) == set(before) - expected_survivors(before, self.policy)
        assert set(after) == (set(before) if dry_run else set(before) - set(removed))

    @invariant()
    def newest_is_never_deleted(self):
        if self.max_saved is not None:
            assert max(disk_state(self.ck)) == self.max_saved

    @invariant()
    def files_hold_their_metrics(self):
        if self.ck is None:
            return
        for idx, (_, metrics) in disk_state(self.ck).items():
            saved = self.saved[idx]
            assert same_metrics(metrics, saved), (idx, metrics, saved)

    @invariant()
    def best_agrees_with_brute_force(self):
        if self.ck is None:
            return
        disk = disk_state(self.ck)
        values = {i: v for i, (_, m) in disk.items() if (v := rankable(m)) is not None}
        got = self.ck.best()
        if not values:
            assert got is None
            return
        target = (min if self.policy["mode"] == "min" else max)(values.values())
        expected = max(i for i, v in values.items() if v == target)
        assert got is not None and got[0] == expected, (got, values)
        assert not math.isnan(got[1]["val_loss"])
        assert same_metrics(got[1], disk[expected][1])

    def teardown(self):
        if self.ck is not None:
            self.ck.close()
        shutil.rmtree(self.root, ignore_errors=True)


RetentionMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=20, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestRetentionMachine = RetentionMachine.TestCase
