"""Property tests: random dicts of arrays round-trip bit-exactly; bfloat16 keeps its dtype."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ckpt
from helpers import assert_arrays_identical

DTYPES = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
          np.float16, np.float32, np.float64, np.complex64, np.complex128]

# Names as a model would have them; NUL is left out because numpy's unicode arrays drop trailing NULs.
NAME = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=24)


@st.composite
def an_array(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    # Any bit pattern: NaN payloads, -0.0, infinities and subnormals included.
    raw = draw(st.binary(min_size=dtype.itemsize * int(np.prod(shape)),
                         max_size=dtype.itemsize * int(np.prod(shape))))
    arr = np.frombuffer(raw, dtype=np.uint8).view(dtype).reshape(shape) if dtype != np.bool_ else \
        (np.frombuffer(raw, dtype=np.uint8) % 2).astype(np.bool_).reshape(shape)
    layout = draw(st.sampled_from(["C", "F", "strided"]))
    if layout == "F":
        arr = np.asfortranarray(arr)
    elif layout == "strided" and arr.ndim:
        arr = np.repeat(arr, 2, axis=0)[::2]  # a non-contiguous view with the same values
    return arr.copy(order="K") if layout != "strided" else arr


ARRAY_DICTS = st.dictionaries(NAME, an_array(), min_size=1, max_size=6)
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(arrays=ARRAY_DICTS)
def test_dict_of_arrays_roundtrips_exactly(arrays):
    buf = io.BytesIO()
    ckpt.save_var_collection(buf, arrays)
    data = buf.getvalue()

    loaded = ckpt.load(io.BytesIO(data))
    assert list(loaded) == list(arrays)
    for k, v in arrays.items():
        assert_arrays_identical(loaded[k], v)
        assert loaded[k].flags.writeable

    target = {k: np.zeros(v.shape, v.dtype) for k, v in arrays.items()}
    ckpt.load_var_collection(io.BytesIO(data), target)
    for k, v in arrays.items():
        assert_arrays_identical(target[k], v)

    with np.load(io.BytesIO(data)) as z:
        assert [str(n) for n in z["names"]] == list(arrays)
        for i, v in enumerate(arrays.values()):
            assert_arrays_identical(z[str(i)], v)


@SETTINGS
@given(arrays=ARRAY_DICTS)
def test_dict_of_arrays_roundtrips_through_a_path(tmp_path, arrays):
    path = tmp_path / "h.npz"
    ckpt.save_var_collection(path, arrays)
    loaded = ckpt.load(path)
    for k, v in arrays.items():
        assert_arrays_identical(loaded[k], v)


def test_fortran_layout_survives(tmp_path):
    f = np.asfortranarray(np.arange(24, dtype=np.int32).reshape(2, 3, 4))
    ckpt.save_var_collection(tmp_path / "f.npz", {"f": f})
    out = ckpt.load(tmp_path / "f.npz")["f"]
    assert_arrays_identical(out, f)
    assert out.flags.f_contiguous
