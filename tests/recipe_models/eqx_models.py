"""equinox models for recipe round trips."""

from __future__ import annotations

import equinox as eqx
import jax

import ckpt


@ckpt.recorded
class MLP(eqx.Module):
    layers: list
    width: int = eqx.field(static=True)

    def __init__(self, n_in: int, width: int, n_out: int, *, seed: int = 0):
        k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
        self.width = width
        self.layers = [eqx.nn.Linear(n_in, width, key=k1), eqx.nn.Linear(width, n_out, key=k2)]

    def __call__(self, x):
        return self.layers[1](jax.nn.relu(self.layers[0](x)))
