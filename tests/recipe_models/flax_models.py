"""flax linen models for recipe round trips."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

import ckpt


@ckpt.recorded
class MLP(nn.Module):
    hidden: int
    n_out: int
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x))
        return nn.Dense(self.n_out, dtype=self.dtype)(x)
