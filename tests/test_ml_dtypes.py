"""ml_dtypes (bfloat16, float8) arrays: stored so numpy opens them, restored with their real dtype."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ckpt
from helpers import assert_arrays_identical

ml_dtypes = pytest.importorskip("ml_dtypes")

EXTENSION_DTYPES = {
    "bfloat16": ml_dtypes.bfloat16,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
}


@settings(max_examples=50, deadline=None)
@given(values=hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
                         elements=st.floats(-1e4, 1e4, width=32)),
       dtype_name=st.sampled_from(sorted(EXTENSION_DTYPES)))
def test_ml_dtypes_roundtrip_with_their_dtype(values, dtype_name):
    dtype = np.dtype(EXTENSION_DTYPES[dtype_name])
    arr = values.astype(dtype)
    buf = io.BytesIO()
    ckpt.save_var_collection(buf, {"x": arr, "plain": values})
    data = buf.getvalue()

    loaded = ckpt.load(io.BytesIO(data))
    assert loaded["x"].dtype == dtype
    assert_arrays_identical(loaded["x"], arr)
    assert_arrays_identical(loaded["plain"], values)

    # numpy sees opaque 2-/1-byte voids, which view back into the real dtype.
    with np.load(io.BytesIO(data)) as z:
        raw = z["0"]
    assert raw.dtype == np.dtype(f"V{dtype.itemsize}")
    assert_arrays_identical(raw.view(dtype), arr)

    target = {"x": np.zeros(arr.shape, dtype), "plain": np.zeros_like(values)}
    ckpt.load_var_collection(io.BytesIO(data), target)
    assert_arrays_identical(target["x"], arr)


def test_bfloat16_dtype_is_recorded_and_required(tmp_path):
    arr = np.array([1.5, -2.0, 3.25], dtype=ml_dtypes.bfloat16)
    path = tmp_path / "bf.npz"
    ckpt.save_var_collection(path, {"w": arr})
    with ckpt.Pack(path) as pack:
        info = pack.slots_info["main"]
        assert info.info["arrays"][0]["dtype"] == "bfloat16"
        assert "ml_dtypes" in info.dependencies and info.dependencies["ml_dtypes"]["requires"]
    with pytest.raises(ckpt.errors.MismatchError):
        ckpt.load_var_collection(path, {"w": np.zeros(3, np.float16)})  # same itemsize, other dtype


def test_jax_bfloat16_array(tmp_path, jnp):
    x = jnp.arange(8, dtype=jnp.bfloat16) / 3
    ckpt.save_var_collection(tmp_path / "j.npz", {"x": x})
    out = ckpt.load(tmp_path / "j.npz")["x"]
    assert out.dtype == np.dtype(ml_dtypes.bfloat16)
    assert_arrays_identical(out, np.asarray(x))
    target = {"x": jnp.zeros(8, jnp.bfloat16)}
    ckpt.load_var_collection(tmp_path / "j.npz", target)
    assert target["x"].dtype == jnp.bfloat16
    assert_arrays_identical(np.asarray(target["x"]), np.asarray(x))
