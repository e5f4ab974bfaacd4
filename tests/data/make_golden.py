"""Write the golden files of tests/data/golden/ with the ckpt of the day (run once per format change).

    JAX_PLATFORMS=cpu python tests/data/make_golden.py

The files are committed; tests/test_golden.py reads them with today's code and compares every
value bit-exactly against :func:`expected` (values built from formulas, not random streams, so
they are the same in every numpy). A change that makes an old file unreadable, or read
differently, fails that test. Never regenerate the files to make it pass: that breaks the promise
of docs/FORMAT.md section 7 for everyone holding such files.
"""

from __future__ import annotations

import collections
import os
import shutil
import sys
import tempfile
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "golden")


def _dtypes() -> dict[str, Any]:
    import ml_dtypes

    return {
        "bool": np.bool_, "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
        "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
        "float16": np.float16, "float32": np.float32, "float64": np.float64,
        "complex64": np.complex64, "complex128": np.complex128,
        "bfloat16": ml_dtypes.bfloat16, "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    }


def arrays() -> dict[str, np.ndarray]:
    """One small array per dtype, plus the awkward shapes (scalar, empty, Fortran order, strings)."""
    out: dict[str, np.ndarray] = {}
    base = (np.arange(12, dtype=np.float64) - 5.5) / 4
    for name, dt in _dtypes().items():
        if name == "bool":
            out[name] = (np.arange(12) % 3 == 0).reshape(3, 4)
        elif name.startswith("complex"):
            out[name] = (base + 1j * base[::-1]).astype(dt).reshape(3, 4)
        elif name.startswith(("int", "uint")):
            info = np.iinfo(dt)
            step = (int(info.max) - int(info.min)) // 11  # exact Python ints: no float rounding
            values = [int(info.min) + step * i for i in range(11)] + [int(info.max)]
            out[name] = np.array(values, dtype=dt).reshape(3, 4)
        else:
            out[name] = base.astype(dt).reshape(3, 4)
    out["scalar"] = np.array(2.5, dtype=np.float32)
    out["empty"] = np.zeros((0, 3), dtype=np.float32)
    out["fortran"] = np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3))
    out["text"] = np.array(["a", "héllo", ""])
    return out


def compressible() -> dict[str, np.ndarray]:
    """Arrays over 4 KiB whose planes shrink, so zstd/lz4 members (.ckz) are really written."""
    w = (np.arange(2048, dtype=np.float32) % 17) / 16
    return {"w": w.reshape(32, 64), "b": np.zeros(1500, dtype=np.float64), "small": np.arange(3, dtype=np.int16)}


def extras() -> dict[str, Any]:
    return {
        "cfg": {"lr": 0.001, "name": "run-1", "nan": float("nan"), "layers": [1, 2, 3], "none": None},
        "tagged": {"shape": (32, 32), 7: "int key", "blob": b"\x00\x01", "z": complex(1, -2), "s": {3, 1, 2}},
        "blob": bytes(range(256)),
        "tree": {"opt": {"m": np.ones(3, dtype=np.float32), "step": 7}, "hist": [np.arange(2), None]},
    }


def pickled() -> Any:
    """A pickle slot (with an array stored as its own member) whose globals need trust."""
    return collections.OrderedDict([("a", np.arange(4, dtype=np.int64)), ("b", [1, 2])])


SOURCE_DATE_EPOCH = "1800000000"
METADATA = {"user": {"note": "golden", "n": 3}}
METRICS = {"val_loss": 0.25, "acc": 0.875}


def expected() -> dict[str, dict[str, Any]]:
    """File name -> slot -> value, as a reader gives it back (``pickle`` slots with trusted=True)."""
    main = arrays()
    kinds = {"main": main, **extras(), "obj": pickled()}
    return {
        "v2-blake3-kinds.npz": kinds,
        "v1-sha256-kinds.npz": kinds,
        "v2-zstd-checkpoint.npz": {"main": compressible(), "cfg": extras()["cfg"]},
        "v2-lz4.npz": {"main": compressible()},
        "plain-savez.npz": {"main": {"x": main["float32"], "y": main["int64"]}},
        "plain-savez-compressed.npz": {"main": {"x": main["float32"], "y": main["uint8"]}},
    }


def _pack(path: str) -> None:
    import ckpt

    with ckpt.Pack(path) as pack:
        pack.dump("main", arrays())
        for name, value in extras().items():
            pack.dump(name, value)
        pack.dump("obj", pickled(), serializer="pickle")
        pack.set_metadata(METADATA)


def write(out: str) -> None:
    """Write every golden file into ``out`` (tests call this to compare today's writer with the files)."""
    import ckpt
    from ckpt import _digest

    os.makedirs(out, exist_ok=True)
    before = _digest.default()
    try:
        ckpt.set_digest("blake3")
        _pack(os.path.join(out, "v2-blake3-kinds.npz"))
        ckpt.set_digest("sha256")
        _pack(os.path.join(out, "v1-sha256-kinds.npz"))
        ckpt.set_digest("blake3")
        with tempfile.TemporaryDirectory() as tmp:
            ck = ckpt.Checkpoint(tmp, verbose=False)
            path = ck.save(compressible(), 42, extras={"cfg": extras()["cfg"]}, metrics=METRICS,
                           compression="zstd")
            shutil.copyfile(path, os.path.join(out, "v2-zstd-checkpoint.npz"))
        with ckpt.Pack(os.path.join(out, "v2-lz4.npz")) as pack:
            pack.dump("main", compressible(), compression="lz4")
    finally:
        ckpt.set_digest(before)
    main_arrays = arrays()
    np.savez(os.path.join(out, "plain-savez.npz"), x=main_arrays["float32"], y=main_arrays["int64"])
    np.savez_compressed(os.path.join(out, "plain-savez-compressed.npz"), x=main_arrays["float32"],
                        y=main_arrays["uint8"])


def main() -> None:
    os.environ.setdefault("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH)
    if os.path.isdir(OUT) and os.listdir(OUT):
        sys.exit(f"{OUT} exists: golden files are written once per format version and never regenerated "
                 "(see this script's docstring); add new files under new names instead")
    write(OUT)
    for name in sorted(os.listdir(OUT)):
        sys.stdout.write(f"{name}: {os.path.getsize(os.path.join(OUT, name))} bytes\n")


if __name__ == "__main__":
    main()
