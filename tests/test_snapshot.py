"""Background saves copy writable numpy arrays into buffers reused from one save to the next.

What save() returned with is what gets written, whatever the caller changes afterwards and
whichever buffers the copies reuse; memory stays one snapshot's worth and close() frees it.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from helpers import assert_arrays_identical

import ckpt
from ckpt._snapshot import SnapshotBuffers


def model(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    big = rng.standard_normal(3 << 20, dtype=np.float32)  # 12 MiB
    return {
        "big": big,
        "w": rng.standard_normal((64, 32), dtype=np.float32),
        "fortran": np.asfortranarray(rng.standard_normal((7, 5))),
        "strided": rng.standard_normal((10, 10))[::2, 1::3],
        "bf16": rng.standard_normal(33).astype(ml_dtypes.bfloat16),
        "empty": np.zeros((0, 4), np.int16),
        "scalar": np.array(seed, dtype=np.int64),
        "mask": rng.random(17) > 0.5,
    }


def test_copies_reuse_the_previous_snapshots_buffers():
    pool = SnapshotBuffers()
    s1 = pool.snapshot()
    first = s1.copy(np.arange(1000, dtype=np.float64))
    s1.done()
    s2 = pool.snapshot()
    second = s2.copy(np.ones(1000, np.float64))
    s2.done()
    assert np.shares_memory(first, second)  # the same memory, already faulted in
    assert_arrays_identical(second, np.ones(1000, np.float64))
    # A different byte size gets a fresh buffer; what the last snapshot did not reuse is dropped.
    s3 = pool.snapshot()
    third = s3.copy(np.ones(10, np.int8))
    s3.done()
    assert not np.shares_memory(third, second) and pool.nbytes == 10
    pool.release()
    assert pool.nbytes == 0


def warmed(nbytes: int) -> SnapshotBuffers:
    """A pool holding one free buffer of ``nbytes`` (a finished snapshot's)."""
    pool = SnapshotBuffers()
    warm = pool.snapshot()
    warm.copy(np.zeros(nbytes, np.uint8))
    warm.done()
    return pool


def test_a_snapshot_still_being_written_is_never_reused():
    pool = warmed(64)
    in_flight = pool.snapshot()
    a = in_flight.copy(np.full(64, 1, np.uint8))  # takes the free buffer; its save is not done
    b = pool.snapshot().copy(np.full(64, 2, np.uint8))  # another snapshot meanwhile: a fresh buffer
    assert not np.shares_memory(a, b)
    assert (a == 1).all() and (b == 2).all()
    in_flight.done()
    in_flight.done()  # twice is harmless
    assert pool.nbytes == 64


def test_a_buffer_is_never_handed_out_twice_in_one_snapshot():
    snap = warmed(64).snapshot()
    x = snap.copy(np.full(64, 1, np.uint8))
    y = snap.copy(np.full(64, 2, np.uint8))
    assert not np.shares_memory(x, y)
    assert (x == 1).all() and (y == 2).all()


@pytest.mark.parametrize("name", list(model(0)))
def test_copy_keeps_values_shape_and_dtype(name):
    src = model(3)[name]
    out = SnapshotBuffers().snapshot().copy(src)
    assert out.dtype == src.dtype and out.shape == src.shape
    assert_arrays_identical(np.ascontiguousarray(out), np.ascontiguousarray(src))
    assert out.flags.writeable and not np.shares_memory(out, src)
    fortran = src.ndim > 1 and src.flags.f_contiguous and not src.flags.c_contiguous
    assert out.flags.f_contiguous if fortran else out.flags.c_contiguous  # the layout a sync save would write


def test_read_only_views_of_memory_the_caller_writes_are_copied_too(tmp_path):
    """A read-only array may view memory that changes after save() returns (np.broadcast_to, a view
    with the flag cleared): a background save writes what it held when save() returned."""
    base = np.arange(1000, dtype=np.float32)
    view = base.view()
    view.flags.writeable = False
    ck = ckpt.Checkpoint(tmp_path, async_save=True)
    ck.save({"v": view, "b": np.broadcast_to(base[:3], (4, 3))}, 1)
    base[:] = -1
    ck.close()
    loaded = ckpt.load(ck.path(1))
    assert_arrays_identical(loaded["v"], np.arange(1000, dtype=np.float32))
    assert_arrays_identical(loaded["b"], np.broadcast_to(np.arange(3, dtype=np.float32), (4, 3)).copy())


def test_async_saves_write_what_save_returned_with(tmp_path):
    """Each save's arrays are changed right after save() returns; saves 2 and 3 reuse save 1's buffers."""
    ck = ckpt.Checkpoint(tmp_path, keep_ckpts=None, async_save=True)
    state = model(0)
    expected = {}
    for idx in (1, 2, 3):
        for k, v in state.items():
            v[...] = model(idx)[k]
        expected[idx] = {k: v.copy() for k, v in state.items()}
        ck.save(state, idx)
        for v in state.values():  # the training step goes on while the save writes
            if v.size:
                v[...] = v.reshape(-1)[0] if v.dtype != np.bool_ else ~v
    ck.wait()
    held = ck._snapshot_buffers.nbytes
    ck.close()
    assert held >= sum(v.nbytes for v in state.values()) and ck._snapshot_buffers.nbytes == 0
    for idx, values in expected.items():
        loaded = ckpt.load(ck.path(idx))
        assert set(loaded) == set(values)
        for k, v in values.items():
            assert_arrays_identical(np.ascontiguousarray(loaded[k]), np.ascontiguousarray(v))


def test_memory_held_between_saves_is_one_snapshot(tmp_path):
    ck = ckpt.Checkpoint(tmp_path, async_save=True)
    small = {"a": np.zeros(1000, np.float32)}
    big = {"a": np.zeros(1 << 20, np.float32), "b": np.ones(10, np.float32)}
    ck.save(big, 1)
    ck.wait()
    assert ck._snapshot_buffers.nbytes == (1 << 22) + 40
    ck.save(small, 2)
    ck.wait()
    assert ck._snapshot_buffers.nbytes == 4000  # the big buffers were dropped, not kept "just in case"
    ck.close()


def test_sync_saves_hold_no_buffers(tmp_path):
    ck = ckpt.Checkpoint(tmp_path)
    ck.save({"a": np.zeros(1000)}, 1)
    assert ck._snapshot_buffers.nbytes == 0
    ck.close()


@pytest.mark.parametrize("make", [
    lambda r: r.standard_normal((1 << 18) + 3).astype(np.float32),  # just over the split size, odd length
    lambda r: np.asfortranarray(r.standard_normal((1031, 1029))),  # Fortran order, 8 MiB
    lambda r: r.standard_normal(5 << 20).astype(ml_dtypes.bfloat16),  # 10 MiB of bfloat16
    lambda r: r.standard_normal((2048, 2048))[:, ::2],  # strided: no slicing, one copy
    lambda r: r.integers(0, 255, (1 << 20) - 1, dtype=np.uint8),  # just under the split size
], ids=["odd", "fortran", "bf16", "strided", "under"])
def test_large_arrays_copied_in_slices_are_exact(make, monkeypatch):
    """Arrays copied on several threads are bit-identical, in the layout a sync save writes, also
    when the slices do not divide the array evenly."""
    import ckpt._snapshot as snap

    monkeypatch.setattr(snap, "_threads", lambda: 3)  # three slices even on a 2-core machine
    src = make(np.random.default_rng(5))
    out = SnapshotBuffers().snapshot().copy(src)
    assert out.dtype == src.dtype and out.shape == src.shape and not np.shares_memory(out, src)
    assert_arrays_identical(np.ascontiguousarray(out), np.ascontiguousarray(src))
    fortran = src.ndim > 1 and src.flags.f_contiguous and not src.flags.c_contiguous
    assert out.flags.f_contiguous if fortran else out.flags.c_contiguous


def test_bfloat16_and_0d_arrays_are_copied_as_their_bytes():
    """The byte copy keeps every bit of a user dtype (NaN payloads and negative zeros of bfloat16 too)
    and of 0-d arrays."""
    bits = np.arange(1 << 16, dtype=np.uint16)  # every bfloat16 bit pattern, NaNs included
    src = bits.view(ml_dtypes.bfloat16)
    out = SnapshotBuffers().snapshot().copy(src)
    np.testing.assert_array_equal(out.view(np.uint16), bits)
    scalar = np.array(-0.0, dtype=np.float32)
    copied = SnapshotBuffers().snapshot().copy(scalar)
    assert copied.shape == () and np.signbit(copied) and copied.tobytes() == scalar.tobytes()
