"""Plain numpy models (no framework) for recipe round trips."""

from __future__ import annotations

import numpy as np

import ckpt


@ckpt.recorded
class Linear:
    """y = x @ w + b, with weights drawn from ``seed`` (an untrained twin differs unless seeds agree)."""

    def __init__(self, n_in: int, n_out: int, *, seed: int = 0, dtype=np.float32, scale: float = 0.1):
        rng = np.random.default_rng(seed)
        self.w = (rng.standard_normal((n_in, n_out)) * scale).astype(dtype)
        self.b = np.zeros(n_out, dtype)
        self.config = {"n_in": n_in}  # not an array: not restored, not saved

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x @ self.w + self.b

    def state(self) -> dict[str, np.ndarray]:
        return {"w": self.w, "b": self.b}


@ckpt.recorded
class Stack:
    """Layers given as recorded objects (nested recipes) and an activation by name."""

    def __init__(self, layers: list, activation: str = "tanh", shape: tuple = (2, 3)):
        self.layers = layers
        self.activation = activation

    def __call__(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = getattr(np, self.activation)(layer(x))
        return x


@ckpt.recorded
class Wide(Linear):
    """A subclass with its own recorded __init__ that calls super().__init__ with other arguments."""

    def __init__(self, n: int, factor: int = 2):
        super().__init__(n, n * factor, seed=7)
