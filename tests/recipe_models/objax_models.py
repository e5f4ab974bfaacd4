"""objax models for recipe round trips."""

from __future__ import annotations

import objax

import ckpt


@ckpt.recorded
class MLP(objax.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int, depth: int = 1):
        layers: list = [objax.nn.Linear(n_in, hidden), objax.functional.relu]
        for _ in range(depth - 1):
            layers += [objax.nn.Linear(hidden, hidden), objax.functional.relu]
        layers.append(objax.nn.Linear(hidden, n_out))
        self.net = objax.nn.Sequential(layers)

    def __call__(self, x):
        return self.net(x)
