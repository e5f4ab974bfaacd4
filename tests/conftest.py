"""Shared fixtures for the ckpt test suite.

Nothing here imports jax or objax at module level: the suite must also run
with numpy alone and with the newest JAX, where objax is not installed. Tests
that need a framework ask for the ``jax``/``jnp``/``objax`` fixtures (which
skip when it is missing) or call ``pytest.importorskip`` at module level.
"""

from __future__ import annotations

import numpy as np
import pytest

# objax 1.8's shape check reads ``jax.sharding.PmapSharding``, which JAX 0.9
# deprecates; every objax ``Variable.assign`` (objax's own loader, ckpt's
# restore into a VarCollection, any test that sets a variable) warns from
# inside objax. The filter is narrowed to that message *and* to the warning
# being attributed to objax's module, so a deprecation raised from ckpt's own
# code still fails the suite.
OBJAX_JAX_DEPRECATION = (
    "ignore:jax.sharding.PmapSharding is deprecated:DeprecationWarning:objax.util.check"
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.filterwarnings(OBJAX_JAX_DEPRECATION))
        if "objax" in item.fixturenames or "make_model" in item.fixturenames:
            item.add_marker(pytest.mark.objax)
        if "jax" in item.fixturenames or "jnp" in item.fixturenames:
            item.add_marker(pytest.mark.jax)


@pytest.fixture(autouse=True)
def _no_source_date_epoch(monkeypatch):
    """Tests that want reproducible timestamps set SOURCE_DATE_EPOCH themselves."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def jax():
    return pytest.importorskip("jax")


@pytest.fixture
def jnp(jax):
    return jax.numpy


@pytest.fixture
def objax():
    return pytest.importorskip("objax")


@pytest.fixture
def arrays(rng):
    """A small dict of numpy arrays of several dtypes and shapes (restored in place by ckpt)."""
    return {
        "dense/w": rng.standard_normal((4, 3)).astype(np.float32),
        "dense/b": np.zeros(3, np.float32),
        "embed": rng.integers(-100, 100, (5, 2)).astype(np.int64),
        "mask": rng.random(6) > 0.5,
        "scale": np.array(2.5, np.float64),
    }


def _random_value(var_value, rng):
    arr = np.asarray(var_value)
    if arr.dtype.kind == "f":
        return rng.standard_normal(arr.shape).astype(arr.dtype)
    if arr.dtype.kind in "iu":
        return rng.integers(1, 100, arr.shape).astype(arr.dtype)
    raise AssertionError(f"unexpected variable dtype {arr.dtype}")


@pytest.fixture
def randomize(objax):
    """Give every distinct variable of a VarCollection fresh random values (TrainRefs via their target)."""
    import jax.numpy as jnp

    def randomize(vc, seed):
        rng = np.random.default_rng(seed)
        seen = set()
        for _, v in vc.items():
            if isinstance(v, objax.TrainRef):
                v = v.ref
            if id(v) in seen:
                continue
            seen.add(id(v))
            v.assign(jnp.asarray(_random_value(v.value, rng)))
        return vc

    return randomize


@pytest.fixture
def make_model(objax):
    """Factory of small objax models; the same ``kind`` gives the same variable names.

    kinds: ``linear``, ``conv_bn`` (Conv2D + BatchNorm2D with running stats +
    Linear), ``shared_seq`` (one Linear placed twice in a Sequential) and
    ``two_parents`` (one Linear referenced by two attributes of a module).
    """

    class TwoParents(objax.Module):
        def __init__(self):
            shared = objax.nn.Linear(3, 3)
            self.left = shared
            self.right = shared
            self.head = objax.nn.Linear(3, 2)

    def make(kind="conv_bn"):
        if kind == "linear":
            return objax.nn.Linear(4, 3)
        if kind == "conv_bn":
            return objax.nn.Sequential([
                objax.nn.Conv2D(3, 4, 3),
                objax.nn.BatchNorm2D(4),
                objax.functional.relu,
                objax.nn.Linear(4, 2),
            ])
        if kind == "shared_seq":
            lin = objax.nn.Linear(3, 3)
            return objax.nn.Sequential([lin, objax.functional.relu, lin])
        if kind == "two_parents":
            return TwoParents()
        raise ValueError(kind)

    return make


# The S3 server fixtures (issue 16); moto is imported only when a test asks for them.
from s3_server import s3_endpoint, s3_root  # noqa: E402,F401
