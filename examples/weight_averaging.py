"""Average the last checkpoints of a run and evaluate the averaged weights.

Noisy SGD wanders around a minimum; the average of its last few checkpoints
sits closer to the middle than any single one (the idea behind stochastic
weight averaging and checkpoint averaging). This demo:

  1. trains a small objax MLP with plain SGD on a synthetic regression problem,
     checkpointing every ``--every`` steps, keeping the last ``--keep`` (and the
     best by evaluation loss, which it records with ``save(metrics=...)``);
  2. averages the last ``--average`` checkpoints, streaming one file at a time::

         ckpt.average(logdir, last=5, out="averaged.npz")  # the file records what it averaged

  3. loads the average into the model with ``ckpt.load_var_collection`` and
     prints the evaluation loss of the final and of the averaged weights (and of
     an exponential moving average, ``ckpt.ema``).

Run it with:  python examples/weight_averaging.py       (a few seconds on a laptop CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # set before jax is imported: no accelerator probing

import numpy as np

import ckpt

SEED = 0
N_TRAIN, N_EVAL, N_FEATURES, BATCH = 2048, 1024, 16, 16
LEARNING_RATE = 0.05


def make_data(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed regression problem: y = tanh(x @ w1) @ w2 + noise (the same w for train and eval)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(N_FEATURES, 8)) / np.sqrt(N_FEATURES)
    w2 = rng.normal(size=(8, 1))
    x = np.random.default_rng([seed, n]).normal(size=(n, N_FEATURES))
    y = np.tanh(x @ w1) @ w2 + 0.3 * np.random.default_rng([seed, n, 1]).normal(size=(n, 1))
    return x.astype(np.float32), y.astype(np.float32)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400, help="training steps (default: %(default)s)")
    p.add_argument("--every", type=int, default=20, help="checkpoint every this many steps (default: %(default)s)")
    p.add_argument("--keep", type=int, default=6, help="checkpoints to keep (default: %(default)s)")
    p.add_argument("--average", type=int, default=5, help="average the last this many (default: %(default)s)")
    p.add_argument("--logdir", default=None, help="log directory (default: a temporary one, removed at the end)")
    args = p.parse_args()
    if args.average > args.keep or args.steps // args.every < args.average:
        p.error("--average must be <= --keep and <= the number of checkpoints written (--steps / --every)")

    import warnings

    # objax 1.8 reads a deprecated JAX name on every Variable.assign; silence it (and only
    # warnings raised from objax's own code) so that `python -W error` still checks everything else.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"objax\b")
    import objax

    t0 = time.perf_counter()
    logdir = args.logdir or tempfile.mkdtemp(prefix="ckpt-averaging-")
    x, y = make_data(SEED, N_TRAIN)
    x_eval, y_eval = make_data(SEED, N_EVAL)

    objax.random.DEFAULT_GENERATOR.seed(SEED)
    model = objax.nn.Sequential([objax.nn.Linear(N_FEATURES, 64), objax.functional.tanh, objax.nn.Linear(64, 1)])
    opt = objax.optimizer.SGD(model.vars())

    def loss_fn(xb, yb):
        return ((model(xb) - yb) ** 2).mean()

    grad_values = objax.GradValues(loss_fn, model.vars())

    def train_op(xb, yb):
        grads, values = grad_values(xb, yb)
        opt(LEARNING_RATE, grads)
        return values[0]

    train_op = objax.Jit(train_op, grad_values.vars() + opt.vars())
    eval_loss = objax.Jit(loss_fn, model.vars())

    ck = ckpt.Checkpoint(logdir, keep_ckpts=args.keep, keep_best=1, metric="eval_loss", verbose=False)
    rng = np.random.default_rng(SEED)
    print(f"training {args.steps} steps of SGD (lr {LEARNING_RATE}, batch {BATCH}), a checkpoint every "
          f"{args.every}, keeping the last {args.keep} and the best by eval loss, in {logdir}")
    for step in range(1, args.steps + 1):
        idx = rng.choice(N_TRAIN, size=BATCH, replace=False)
        train_op(x[idx], y[idx])
        if step % args.every == 0:
            loss = float(eval_loss(x_eval, y_eval))
            ck.save(model.vars(), idx=step, metrics={"eval_loss": loss})
    final = float(eval_loss(x_eval, y_eval))
    print(f"checkpoints on disk: {ck.indices()}; best by eval loss: {ck.best()}")

    out = os.path.join(logdir, "averaged.npz")
    ckpt.average(logdir, last=args.average, out=out)
    ckpt.load_var_collection(out, model.vars())  # the averaged weights, into the same model
    averaged = float(eval_loss(x_eval, y_eval))
    with ckpt.Pack(out) as pack:
        record = pack.metadata["ckpt"]
    steps = [s["idx"] for s in record["averaged_from"]]

    ema_out = os.path.join(logdir, "ema.npz")
    ckpt.ema(logdir, 0.7, last=args.average, out=ema_out)
    ckpt.load_var_collection(ema_out, model.vars())
    ema = float(eval_loss(x_eval, y_eval))

    print(f"\naveraged steps {steps} into {os.path.relpath(out, logdir)}; its manifest records:")
    print("  " + json.dumps({**record, "averaged_from": record["averaged_from"][:1] + ["..."]})[:300])
    print()
    rows = [(f"final weights (step {args.steps})", final), (f"mean of the last {args.average} checkpoints", averaged),
            ("EMA (decay 0.7) of the same", ema)]
    for label, value in rows:
        print(f"eval loss of the {label:<32} {value:.6f}  ({100 * (value - final) / final:+.1f}% vs final)")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    if args.logdir is None:
        shutil.rmtree(logdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
