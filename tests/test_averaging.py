"""Weight averaging over checkpoints: ckpt.average (uniform, weighted), ckpt.ema, and the averaged file's record."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

import ckpt
from ckpt.errors import CheckpointNotFoundError, ChecksumError, MismatchError
from helpers import assert_arrays_identical, flip_byte, npy_data_offset, read_manifest

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)


def model(rng, step):
    """A checkpoint's arrays: floats of several widths, plus a step counter and a mask (not averaged)."""
    return {
        "dense/w": rng.standard_normal((4, 3)).astype(np.float32),
        "dense/b": rng.standard_normal(3).astype(np.float64),
        "half": rng.standard_normal(5).astype(np.float16),
        "bf": rng.standard_normal(6).astype(BF16),
        "scalar": np.array(rng.standard_normal(), np.float32),
        "step": np.array(step, np.int64),
        "mask": rng.random(4) > 0.5,
    }


@pytest.fixture
def run(tmp_path, rng):
    """A log directory with checkpoints 10, 20, ..., 60 and the arrays of each."""
    ck = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=None, verbose=False)
    states = {}
    for idx in range(10, 70, 10):
        states[idx] = model(rng, idx)
        ck.save(states[idx], idx)
    return ck, states


FLOATS = ("dense/w", "dense/b", "half", "bf", "scalar")


def expected_mean(states, idxs, weights=None):
    """sum(w_i * x_i) / sum(w_i), left to right in float64, cast back; ints and bools from the newest."""
    weights = [1.0] * len(idxs) if weights is None else weights
    out = {}
    for name in states[idxs[0]]:
        dtype = states[idxs[0]][name].dtype
        if name not in FLOATS:
            out[name] = states[idxs[-1]][name]
            continue
        acc = None
        for i, w in zip(idxs, weights):
            term = states[i][name].astype(np.float64) * w
            acc = term if acc is None else acc + term
        total = 0.0
        for w in weights:
            total += w
        out[name] = (acc / total).astype(dtype)
    return out


def assert_same(result, expected):
    assert list(result) == list(expected)
    for name in expected:
        assert_arrays_identical(result[name], expected[name])


def test_uniform_average_of_the_last_k(run):
    ck, states = run
    result = ckpt.average(ck.logdir, last=4)
    assert_same(result, expected_mean(states, [30, 40, 50, 60]))
    for name in ("dense/w", "dense/b", "scalar"):  # numpy's own mean, in float64 then cast
        stack = np.stack([states[i][name] for i in (30, 40, 50, 60)]).astype(np.float64)
        assert_arrays_identical(result[name], stack.mean(axis=0).astype(states[60][name].dtype))
    assert_arrays_identical(result["step"], np.array(60, np.int64))
    assert_arrays_identical(result["mask"], states[60]["mask"])
    assert_same(ckpt.average(ck.logdir), expected_mean(states, sorted(states)))


def test_weighted_average(run):
    ck, states = run
    weights = [0.5, 3.0, 1.25]
    result = ckpt.average(ck.logdir, last=3, weights=weights)
    assert_same(result, expected_mean(states, [40, 50, 60], weights))
    for name in ("dense/w", "dense/b"):
        stack = np.stack([states[i][name] for i in (40, 50, 60)]).astype(np.float64)
        assert_arrays_identical(result[name], np.average(stack, axis=0, weights=weights).astype(stack.dtype)
                                .astype(states[60][name].dtype))
    # indices in any order; each weight goes with its index; the sum runs in index order
    shuffled = ckpt.average(ck.logdir, indices=[60, 20, 40], weights=[1.0, 2.0, 0.0])
    assert_same(shuffled, expected_mean(states, [20, 40, 60], [2.0, 0.0, 1.0]))


def test_a_list_of_paths_is_taken_in_the_order_given(run):
    ck, states = run
    paths = [ck.path(i) for i in (20, 50, 30)]
    assert_same(ckpt.average(paths), expected_mean(states, [20, 50, 30]))
    assert_same(ckpt.average(paths, last=2), expected_mean(states, [50, 30]))
    with pytest.raises(ValueError, match="indices"):
        ckpt.average(paths, indices=[20])


def test_ema_recurrence(run):
    ck, states = run
    decay = 0.75
    result = ckpt.ema(ck.logdir, decay, last=4)
    for name in FLOATS:
        e = states[30][name].astype(np.float64)
        for i in (40, 50, 60):
            e = decay * e + (1 - decay) * states[i][name].astype(np.float64)
        assert_arrays_identical(result[name], e.astype(states[60][name].dtype))
    assert_arrays_identical(result["step"], np.array(60, np.int64))
    newest, oldest = ckpt.ema(ck.logdir, 0.0, last=3), ckpt.ema(ck.logdir, 1.0, last=3)
    for name in FLOATS:
        assert_arrays_identical(newest[name], states[60][name])
        assert_arrays_identical(oldest[name], states[40][name])
    for bad in (-0.1, 1.5, float("nan"), True, "0.9"):
        with pytest.raises(ValueError, match="decay"):
            ckpt.ema(ck.logdir, bad)


def test_bfloat16_is_averaged_in_float64(tmp_path):
    ck = ckpt.Checkpoint(tmp_path, keep_ckpts=None, verbose=False)
    for i, v in enumerate([256.0, 1.0, 1.0, 1.0], start=1):
        ck.save({"x": np.full(3, v, BF16)}, i)
    result = ckpt.average(ck.logdir)["x"]
    assert result.dtype == BF16
    # 259 / 4 = 64.75 rounds to 64.5 in bfloat16; adding in bfloat16 would lose every +1 and give 64
    assert_arrays_identical(result, np.full(3, 64.75, np.float64).astype(BF16))
    assert float(result[0]) != 64.0


def test_mismatched_checkpoints_name_the_variable_and_both_files(tmp_path):
    a, b, c, d = (str(tmp_path / f"{n}.npz") for n in "abcd")
    ckpt.save_var_collection(a, {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)})
    ckpt.save_var_collection(b, {"w": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float32)})
    ckpt.save_var_collection(c, {"w": np.zeros((2, 3), np.float64), "b": np.zeros(3, np.float32)})
    ckpt.save_var_collection(d, {"w": np.zeros((2, 3), np.float32), "bias": np.zeros(3, np.float32)})
    with pytest.raises(MismatchError) as e:
        ckpt.average([a, b])
    assert "'w'" in str(e.value) or "w:" in str(e.value)
    assert a in str(e.value) and b in str(e.value) and "[2, 3]" in str(e.value) and "[3, 2]" in str(e.value)
    assert e.value.mismatched[0][0] == "w"
    with pytest.raises(MismatchError, match="float64") as e:
        ckpt.ema([a, c], 0.5)
    assert a in str(e.value) and c in str(e.value)
    with pytest.raises(MismatchError) as e:
        ckpt.average([a, d])
    assert a in str(e.value) and d in str(e.value) and "'b'" in str(e.value) and "'bias'" in str(e.value)
    assert e.value.missing == ["b"] and e.value.unused == ["bias"]


def test_a_corrupt_checkpoint_is_named(run):
    ck, _ = run
    bad = ck.path(40)
    flip_byte(bad, npy_data_offset(bad, "0.npy"))
    with pytest.raises(ChecksumError) as e:
        ckpt.average(ck.logdir, last=4)
    assert bad in str(e.value) and e.value.file == bad
    with pytest.raises(ChecksumError, match="0000000040"):
        ckpt.ema(ck.logdir, 0.9, indices=[40, 60])
    assert ckpt.average(ck.logdir, indices=[50, 60])  # the others still average


def test_selection_errors(run, tmp_path):
    ck, _ = run
    with pytest.raises(ValueError, match="only 6"):
        ckpt.average(ck.logdir, last=7)
    with pytest.raises(ValueError, match="last"):
        ckpt.average(ck.logdir, last=0)
    with pytest.raises(ValueError, match="not both"):
        ckpt.average(ck.logdir, last=2, indices=[10])
    with pytest.raises(CheckpointNotFoundError, match="15"):
        ckpt.average(ck.logdir, indices=[10, 15])
    with pytest.raises(ValueError, match="twice"):
        ckpt.average(ck.logdir, indices=[10, 10])
    with pytest.raises(CheckpointNotFoundError):
        ckpt.average(tmp_path / "empty")
    for weights in ([1.0, -1.0], [1.0, float("nan")], [0.0, 0.0], [1.0], [1.0, float("inf")]):
        with pytest.raises(ValueError, match="weights"):
            ckpt.average(ck.logdir, last=2, weights=weights)


def test_out_records_what_was_averaged(run, tmp_path):
    ck, states = run
    out = tmp_path / "avg.npz"
    result = ckpt.average(ck.logdir, last=3, weights=[1.0, 1.0, 2.0], out=out)
    record = read_manifest(out)["metadata"]["ckpt"]
    assert record["method"] == "mean" and record["decay"] is None and record["slot"] == "main"
    sources = record["averaged_from"]
    assert [s["idx"] for s in sources] == [40, 50, 60]
    assert [s["file"] for s in sources] == [ck.path(i) for i in (40, 50, 60)]
    assert [s["weight"] for s in sources] == [0.25, 0.25, 0.5]
    for s in sources:
        assert s["blake3"] == read_manifest(s["file"])["slots"]["main"]["blake3"]
    with np.load(out) as npz:  # plain numpy reads it (objax layout: names.npy, 0.npy, ...)
        names = list(npz["names.npy"])
        assert names == list(result)
        assert_arrays_identical(npz[f"{names.index('dense/w')}.npy"], result["dense/w"])
    target = {k: np.zeros_like(v) for k, v in states[60].items()}
    ckpt.load_var_collection(out, target)
    assert_same(target, result)

    ema_out = tmp_path / "ema.npz"
    ckpt.ema([ck.path(i) for i in (10, 20, 30)], 0.5, out=ema_out)
    record = read_manifest(ema_out)["metadata"]["ckpt"]
    assert record["method"] == "ema" and record["decay"] == 0.5
    assert [s["weight"] for s in record["averaged_from"]] == [0.25, 0.25, 0.5]
    assert [s["idx"] for s in record["averaged_from"]] == [10, 20, 30]  # from each file's manifest


def test_another_slot(tmp_path):
    ck = ckpt.Checkpoint(tmp_path, keep_ckpts=None, verbose=False)
    for i in (1, 2):
        ck.save({"w": np.zeros(2)}, i, extras={"ema_params": {"w": np.full(2, float(i))}})
    assert_arrays_identical(ckpt.average(ck.logdir, slot="ema_params")["w"], np.full(2, 1.5))
    with pytest.raises(ckpt.SlotNotFoundError):
        ckpt.average(ck.logdir, slot="nope")


def test_objax_checkpoints_average_and_load_back(tmp_path, objax, make_model, randomize):
    net = make_model("conv_bn")
    ck = ckpt.Checkpoint(tmp_path / "run", keep_ckpts=None, verbose=False)
    snapshots = []
    for i in range(1, 4):
        randomize(net.vars(), seed=i)
        snapshots.append({k: np.array(v.value) for k, v in net.vars().items()})
        ck.save(net.vars(), i)
    out = str(tmp_path / "avg.npz")
    result = ckpt.average(ck.logdir, out=out)
    fresh = make_model("conv_bn")
    objax.io.load_var_collection(out, fresh.vars())
    for name, var in fresh.vars().items():
        expected = sum(s[name].astype(np.float64) for s in snapshots) / 3 if snapshots[0][name].dtype.kind == "f" \
            else snapshots[-1][name]
        assert_arrays_identical(np.asarray(var.value), np.asarray(expected).astype(snapshots[0][name].dtype))
        assert_arrays_identical(result[name], np.asarray(var.value))
    again = make_model("conv_bn")
    ckpt.load_var_collection(out, again.vars())
    for name, var in again.vars().items():
        assert_arrays_identical(np.asarray(var.value), result[name])


def test_memory_stays_near_one_model_plus_one_accumulator(tmp_path):
    """8 checkpoints of a 64 MB float32 model: peak well under 3x the model, not 8x."""
    n_vars, per_var = 16, (1 << 20)  # 16 arrays of 4 MiB: 64 MiB
    model_bytes = n_vars * per_var * 4
    ck = ckpt.Checkpoint(tmp_path, keep_ckpts=None, verbose=False)
    arrays = {f"layer{i}": np.full(per_var, float(i), np.float32) for i in range(n_vars)}
    for step in range(1, 9):
        for a in arrays.values():
            a += 1.0
        ck.save(arrays, step)
    del arrays, a
    gc.collect()
    tracemalloc.start()
    try:
        result = ckpt.average(ck.logdir)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_arrays_identical(result["layer3"], np.full(per_var, 3 + 4.5, np.float32))
    assert peak < 2.6 * model_bytes, f"peak {peak / 2**20:.0f} MiB for a {model_bytes / 2**20:.0f} MiB model"
