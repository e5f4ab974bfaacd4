"""The synthetic model every tool saves and restores: a transformer-like mix of arrays.

For a target size T (bytes) the model has

- three large float32 matrices: token embedding [V, d], output head [d, V] and
  positional embedding [2048, d] (about half of T);
- 32 layers, each with two float32 attention matrices (qkv [d, 3d], out [d, d]),
  two bfloat16 MLP matrices (in [d, 4d], out [4d, d]) and eight small float32
  vectors (biases and LayerNorm scale/offset): 256 small vectors, plus the final
  LayerNorm's two.

The values are finite floats in [-0.5, 0.5), deterministic for a seed, and
generated fast (a random 4 MiB block XOR-ed with a per-chunk mask in the low
mantissa bits), so that every process of the benchmark can rebuild the model to
check a restore bit for bit. The data do not repeat byte for byte anywhere, so no
tool can deduplicate or compress them away cheaply.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

LAYERS = 32
POSITIONS = 2048
_BLOCK = 1 << 20  # elements in the random base block

Spec = list[tuple[str, tuple[int, ...], str]]


def parse_size(text: str) -> int:
    """'64M' -> 64 MiB, '1G' -> 1 GiB, '512K', or a plain number of bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"bad size {text!r}: use e.g. 64M, 1G, 4G")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)


def size_label(nbytes: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale}{unit}"
    return f"{nbytes}B" if nbytes < (1 << 20) else f"{nbytes / (1 << 20):.0f}M"


def spec(total: int) -> Spec:
    """(name, shape, dtype) of every array, in order, summing to about ``total`` bytes."""
    d = max(16, int(math.sqrt(total / (2 * 1024))) // 8 * 8)
    out: Spec = []
    layer_bytes = 0
    for i in range(LAYERS):
        p = f"layers.{i:02d}"
        entries = [
            (f"{p}.ln1.scale", (d,), "float32"), (f"{p}.ln1.offset", (d,), "float32"),
            (f"{p}.attn.qkv.w", (d, 3 * d), "float32"), (f"{p}.attn.qkv.b", (3 * d,), "float32"),
            (f"{p}.attn.out.w", (d, d), "float32"), (f"{p}.attn.out.b", (d,), "float32"),
            (f"{p}.ln2.scale", (d,), "float32"), (f"{p}.ln2.offset", (d,), "float32"),
            (f"{p}.mlp.in.w", (d, 4 * d), "bfloat16"), (f"{p}.mlp.in.b", (4 * d,), "float32"),
            (f"{p}.mlp.out.w", (4 * d, d), "bfloat16"), (f"{p}.mlp.out.b", (d,), "float32"),
        ]
        out.extend(entries)
    out += [("final_ln.scale", (d,), "float32"), ("final_ln.offset", (d,), "float32")]
    layer_bytes = sum(nbytes(s, t) for _, s, t in out)
    pos = ("pos_embedding", (POSITIONS, d), "float32")
    rest = total - layer_bytes - nbytes(pos[1], pos[2])
    vocab = max(8, rest // (2 * d * 4))
    return [("tok_embedding", (vocab, d), "float32"), pos, *out, ("head.w", (d, vocab), "float32")]


def tiny_spec(count: int) -> Spec:
    """``count`` tiny arrays (16 to 64 float32 or bfloat16 values, e.g. biases and norms of a wide, deep
    net): what files of many small arrays cost per array."""
    out: Spec = []
    for i in range(count):
        n = 16 << (i % 3)
        out.append((f"block{i // 10:04d}.p{i % 10}", (n,), "bfloat16" if i % 5 == 4 else "float32"))
    return out


def dtype_of(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def nbytes(shape: tuple[int, ...], dtype: str) -> int:
    return math.prod(shape) * dtype_of(dtype).itemsize


def total_bytes(s: Spec) -> int:
    return sum(nbytes(shape, dt) for _, shape, dt in s)


def largest_bytes(s: Spec) -> int:
    return max(nbytes(shape, dt) for _, shape, dt in s)


def describe(s: Spec) -> str:
    n16 = sum(1 for _, _, t in s if t == "bfloat16")
    small = sum(1 for _, shape, _ in s if len(shape) == 1)
    return (f"{len(s)} arrays: {len(s) - small - n16} float32 matrices, {n16} bfloat16 matrices, "
            f"{small} small float32 vectors; largest {largest_bytes(s) / 2**20:.1f} MiB")


def iter_build(s: Spec, seed: int = 0) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) of the model one at a time, deterministic for ``seed`` (bfloat16 from ml_dtypes)."""
    rng = np.random.default_rng(seed)
    base = rng.random(_BLOCK, dtype=np.float32) - np.float32(0.5)
    base32 = base.view(np.uint32)
    base16 = base.astype(dtype_of("bfloat16")).view(np.uint16)
    for i, (name, shape, dt) in enumerate(s):
        n = math.prod(shape)
        chunks = max(1, -(-n // _BLOCK))
        masks = np.random.default_rng([seed, i]).integers(1, 1 << 16, chunks, dtype=np.uint32)
        raw: np.ndarray
        src: np.ndarray
        if dt == "bfloat16":
            raw, src = np.empty(n, np.uint16), base16
            masks = (masks & 0x7F).astype(np.uint16)  # 7 mantissa bits: values stay finite
        else:
            raw, src = np.empty(n, np.uint32), base32
        start = int(masks[0]) % 4096  # offset into the block, so small arrays differ in more than the mask
        for j in range(chunks):
            lo, hi = j * _BLOCK, min(n, (j + 1) * _BLOCK)
            m = hi - lo
            s0 = start if m + start <= _BLOCK else 0
            np.bitwise_xor(src[s0:s0 + m], masks[j], out=raw[lo:hi])
        yield name, raw.view(dtype_of(dt)).reshape(shape)


def build(s: Spec, seed: int = 0) -> dict[str, np.ndarray]:
    """The model as a dict of numpy arrays."""
    return dict(iter_build(s, seed))


def compare(restored: Mapping[str, Any], s: Spec, seed: int = 0) -> tuple[bool, str]:
    """Every array of the model present in ``restored`` with the same shape, dtype and bytes.

    The original is rebuilt one array at a time, so the check needs little memory.
    """
    names = {n for n, _, _ in s}
    missing = [n for n in names if n not in restored]
    extra = [n for n in restored if n not in names]
    if missing or extra:
        return False, f"names differ: missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}"
    for name, want in iter_build(s, seed):
        got = np.asarray(restored[name])
        if got.shape != want.shape:
            return False, f"{name}: shape {got.shape} != {want.shape}"
        if got.dtype != want.dtype:
            return False, f"{name}: dtype {got.dtype} != {want.dtype}"
        a = np.ascontiguousarray(got).reshape(-1).view(np.uint8)
        b = want.reshape(-1).view(np.uint8)
        if a.nbytes % 8 == 0:
            a, b = a.view(np.uint64), b.view(np.uint64)
        if not np.array_equal(a, b):
            return False, f"{name}: values differ"
    return True, ""
