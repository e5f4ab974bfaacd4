"""Kill a training run with SIGKILL, resume it from its last checkpoint, get the same result.

This demo trains a small objax MLP with Adam three times, each in its own process:

  1. reference: T steps without interruption;
  2. crashed:   the same run, killed with SIGKILL part-way (no cleanup, no
                ``finally``, no atexit: just like a preempted machine or kill -9);
  3. resumed:   a new process on the crashed run's log directory, which restores
                the latest checkpoint and trains on to step T.

All three run the same training code, which restores before it trains:

    ck = ckpt.Checkpoint(logdir, keep_ckpts=3)
    extras = {"opt": opt.vars(), "rng": None, "loader": None, "step": None, "config": None}
    step, path = ck.restore(model.vars(), extras=extras)   # (0, '') if none yet
    ...
    ck.save(model.vars(), idx=step, extras={"opt": opt.vars(), "rng": key, "loader": loader,
                                            "step": step, "config": CONFIG}, metrics={"loss": loss})

The resumed run ends with the same loss and bit-identical weights as the
reference run, because one atomic save holds everything the next step depends
on: the weights, Adam's moments and step counter (``opt.vars()``), the
``jax.random`` key that draws each step's input noise, the data loader's
position (epoch and offset into that epoch's shuffled order), the step, and the
run's config (JSON; a resume with a different config is refused).

Run it with:  python examples/train_resume.py            (about 15 s on a laptop CPU)
Options:      --steps, --every, --crash-at, --logdir, --clean; see --help.

The runs' checkpoints are kept (the demo prints where), so the README's command-line tour can be
tried on them: ``ckpt ls DIR/reference --verify --metric loss``, ``ckpt verify DIR/crashed``, ...
Pass ``--clean`` to delete them at the end instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # set before jax is imported: no accelerator probing

import numpy as np

import ckpt

SEED = 0
N_SAMPLES, N_FEATURES, BATCH = 1024, 8, 64
LEARNING_RATE = 1e-2
INPUT_NOISE = 0.05  # std of the Gaussian noise added to each step's inputs (drawn with jax.random)
KEEP_CKPTS = 3
#: The run's config, checkpointed as JSON: a resume checks that it is continuing the same run.
CONFIG = {"seed": SEED, "n_samples": N_SAMPLES, "n_features": N_FEATURES, "batch": BATCH, "hidden": 32,
          "learning_rate": LEARNING_RATE, "input_noise": INPUT_NOISE, "optimizer": "adam"}


# -- the training script: what a user's train.py looks like ---------------------------------------
def make_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed synthetic regression problem: y = sin(x @ w) + noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N_SAMPLES, N_FEATURES)).astype(np.float32)
    w = (rng.normal(size=(N_FEATURES, 1)) / np.sqrt(N_FEATURES)).astype(np.float32)
    y = np.sin(x @ w) + 0.05 * rng.normal(size=(N_SAMPLES, 1)).astype(np.float32)
    return x, y.astype(np.float32)


def next_batch(loader: dict[str, int], seed: int) -> np.ndarray:
    """A shuffling data loader: each epoch visits the samples in its own random order.

    Its whole state is ``{"epoch", "offset"}`` (plain JSON), which goes into the
    checkpoint, so a resumed run continues from the very next batch.
    """
    order = np.random.default_rng([seed, loader["epoch"]]).permutation(N_SAMPLES)
    batch = order[loader["offset"]:loader["offset"] + BATCH]
    loader["offset"] += BATCH
    if loader["offset"] + BATCH > N_SAMPLES:  # drop the last partial batch; next epoch
        loader["epoch"], loader["offset"] = loader["epoch"] + 1, 0
    return batch


def crash() -> None:
    """Die at once, the hard way: nothing gets a chance to clean up or flush files."""
    if hasattr(signal, "SIGKILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(9)  # Windows has no SIGKILL


def train(logdir: str, steps: int, every: int, crash_at: int | None) -> None:
    import warnings

    # objax 1.8 reads a deprecated JAX name on every Variable.assign; silence it (and only
    # warnings raised from objax's own code) so that `python -W error` still checks everything else.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"objax\b")
    import jax
    import objax

    x, y = make_data(SEED)
    objax.random.DEFAULT_GENERATOR.seed(SEED)
    hidden = CONFIG["hidden"]
    model = objax.nn.Sequential([objax.nn.Linear(N_FEATURES, hidden), objax.functional.relu,
                                 objax.nn.Linear(hidden, 1)])
    opt = objax.optimizer.Adam(model.vars())

    def loss_fn(xb, yb):
        return ((model(xb) - yb) ** 2).mean()

    grad_values = objax.GradValues(loss_fn, model.vars())

    def train_op(xb, yb, key):
        key, sub = jax.random.split(key)  # the key is state too: it is checkpointed and restored
        noisy = xb + INPUT_NOISE * jax.random.normal(sub, xb.shape)
        grads, values = grad_values(noisy, yb)
        opt(LEARNING_RATE, grads)
        return values[0], key

    train_op = objax.Jit(train_op, grad_values.vars() + opt.vars())

    # Resume if there is a checkpoint; a fresh run gets (0, '') and keeps its initial state.
    ck = ckpt.Checkpoint(logdir, keep_ckpts=KEEP_CKPTS)
    extras = {"opt": opt.vars(), "rng": None, "loader": None, "step": None, "config": None}
    start, path = ck.restore(model.vars(), extras=extras)  # arrays in place, the others (None) filled in
    if path:
        if extras["config"] != CONFIG:
            raise SystemExit(f"{path} was written with config {extras['config']}, not {CONFIG}; refusing to resume")
        if extras["step"] != start:
            raise SystemExit(f"{path} records step {extras['step']} under index {start}")
        key, loader = jax.numpy.asarray(extras["rng"]), extras["loader"]
        adam_step = int(opt.vars()["(Adam).step"].value)
        print(f"restored step {start} from {os.path.relpath(path, logdir)} (Adam step counter: {adam_step}, "
              f"loader at epoch {loader['epoch']} offset {loader['offset']}, rng key {np.asarray(key).tolist()})")
    else:
        key, loader = jax.random.PRNGKey(SEED), {"epoch": 0, "offset": 0}
        print("no checkpoint yet: starting from step 0")

    for step in range(start, steps):
        idx = next_batch(loader, SEED)
        loss_value, key = train_op(x[idx], y[idx], key)
        loss = float(loss_value)
        done = step + 1  # steps completed; a checkpoint with idx=done resumes at step `done`
        if done % every == 0 or done == steps:
            state = {"opt": opt.vars(), "rng": key, "loader": dict(loader), "step": done, "config": CONFIG}
            ck.save(model.vars(), idx=done, extras=state, metrics={"loss": loss})
            print(f"step {done:4d}  loss {loss:.6f}  saved checkpoint {done}")
        if done == crash_at:
            print(f"step {done:4d}  SIGKILL!")
            crash()
    print(f"finished {steps} steps, final loss {loss!r}")


# -- the demo driver: runs train() in subprocesses and compares the results ------------------------
def run_worker(title: str, logdir: str, args: argparse.Namespace, crash_at: int | None = None) -> int:
    """Run train() in a fresh Python process, show its output indented, return its exit code."""
    print(f"\n{title}")
    cmd = [sys.executable, *(f"-W{w}" for w in sys.warnoptions), os.path.abspath(__file__), "--worker",
           "--logdir", logdir, "--steps", str(args.steps), "--every", str(args.every)]
    if crash_at is not None:
        cmd += ["--crash-at", str(crash_at)]
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # print lines as they come, up to the SIGKILL
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout or ():
            print("    | " + line, end="", flush=True)
    print(f"    exit code {proc.returncode} after {time.perf_counter() - t0:.1f} s")
    return proc.returncode


def final_state(logdir: str) -> tuple[int | None, dict[str, np.ndarray], dict[str, np.ndarray], float,
                                       dict[str, object]]:
    """Read the last checkpoint of a run with plain ckpt calls (no objax needed)."""
    ck = ckpt.Checkpoint(logdir, makedir=False)
    extras = ck.load_extras(names=["opt", "rng", "loader", "step", "config"])
    loss = ck.metadata()["ckpt"]["metrics"]["loss"]  # save(metrics=...) lands in the manifest
    return ck.latest(), ck.load(), extras["opt"], loss, extras


def compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[str]:
    """Names whose arrays differ (in any bit), or are missing on one side."""
    return sorted(n for n in a.keys() | b.keys()
                  if n not in a or n not in b or not np.array_equal(a[n], b[n]))


def demo(args: argparse.Namespace, root: str) -> list[str]:
    """Run the three phases; return a list of problems (empty on success)."""
    reference_dir = os.path.join(root, "reference")
    crashed_dir = os.path.join(root, "crashed")
    killed = -signal.SIGKILL if hasattr(signal, "SIGKILL") else 9

    rc = run_worker(f"[1/3] reference run: {args.steps} steps, uninterrupted   ({reference_dir})",
                    reference_dir, args)
    if rc != 0:
        return [f"the reference run failed with exit code {rc}"]

    rc = run_worker(f"[2/3] the same run, killed with SIGKILL after step {args.crash_at}   ({crashed_dir})",
                    crashed_dir, args, crash_at=args.crash_at)
    if rc != killed:
        return [f"the crashed run should have died by SIGKILL (exit code {killed}), got {rc}"]
    on_disk = ckpt.Checkpoint(crashed_dir, makedir=False).indices()
    print(f"    checkpoints left on disk: {on_disk}; the last {args.crash_at - max(on_disk, default=0)} "
          f"steps were lost")

    rc = run_worker(f"[3/3] resumed run: a new process on {crashed_dir}", crashed_dir, args)
    if rc != 0:
        return [f"the resumed run failed with exit code {rc}"]

    ref_step, ref_weights, ref_opt, ref_loss, ref_extras = final_state(reference_dir)
    res_step, res_weights, res_opt, res_loss, res_extras = final_state(crashed_dir)
    n_values = sum(w.size for w in ref_weights.values())
    weights_diff, opt_diff = compare(ref_weights, res_weights), compare(ref_opt, res_opt)
    rng_same = np.array_equal(ref_extras["rng"], res_extras["rng"]) and ref_extras["rng"].dtype == np.uint32
    loader_same = ref_extras["loader"] == res_extras["loader"]
    config_same = ref_extras["config"] == res_extras["config"] == CONFIG

    print("\nSummary")
    print(f"  reference run : final loss {ref_loss!r} at step {ref_step}")
    print(f"  crashed run   : SIGKILL after step {args.crash_at}, checkpoints on disk {on_disk}")
    restored = f"restored step {on_disk[-1]}" if on_disk else "no checkpoint to restore, restarted"
    print(f"  resumed run   : {restored}, final loss {res_loss!r} at step {res_step}")
    print(f"  final weights : {'bit-identical' if not weights_diff else 'DIFFERENT'} "
          f"({len(ref_weights)} arrays, {n_values} values)")
    print(f"  Adam state    : {'bit-identical' if not opt_diff else 'DIFFERENT'} "
          f"({len(ref_opt)} arrays, moments and step counter)")
    print(f"  rng key       : {'bit-identical' if rng_same else 'DIFFERENT'} ({ref_extras['rng'].tolist()})")
    print(f"  data loader   : {'same position' if loader_same else 'DIFFERENT'} ({ref_extras['loader']})")
    print(f"  step, config  : {ref_extras['step']}, {'same' if config_same else 'DIFFERENT'} "
          f"({len(CONFIG)} settings)")

    problems = []
    if ref_step != args.steps or res_step != args.steps:
        problems.append(f"expected both runs to end at step {args.steps}, got {ref_step} and {res_step}")
    if res_loss != ref_loss:
        problems.append(f"final losses differ: reference {ref_loss!r}, resumed {res_loss!r}")
    if weights_diff:
        problems.append(f"final weights differ: {', '.join(weights_diff)}")
    if opt_diff:
        problems.append(f"optimizer state differs: {', '.join(opt_diff)}")
    if not rng_same:
        problems.append(f"rng keys differ: reference {ref_extras['rng']}, resumed {res_extras['rng']}")
    if not loader_same:
        problems.append(f"data loader positions differ: reference {ref_extras['loader']}, "
                        f"resumed {res_extras['loader']}")
    if not config_same or not ref_extras["step"] == res_extras["step"] == args.steps:
        problems.append(f"step or config differ: {ref_extras['step']}/{res_extras['step']}, "
                        f"{ref_extras['config']} / {res_extras['config']}")
    return problems


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="training steps T (default: %(default)s)")
    p.add_argument("--every", type=int, default=50,
                   help="save a checkpoint every this many steps (default: %(default)s)")
    p.add_argument("--crash-at", type=int, default=None,
                   help="kill the second run after this step (default: 7/12 of --steps, between two saves)")
    p.add_argument("--logdir", default=None,
                   help="empty or new directory for the runs (default: a fresh temporary directory)")
    p.add_argument("--clean", action="store_true",
                   help="delete the run directories at the end (default: keep them and print where)")
    p.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)  # the default now; accepted as before
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # internal: run train() only
    args = p.parse_args()
    if args.steps < 2 or args.every < 1:
        p.error("--steps must be >= 2 and --every >= 1")
    if not args.worker:
        if args.crash_at is None:
            args.crash_at = args.steps * 7 // 12
        if not 0 < args.crash_at < args.steps:
            p.error(f"--crash-at must be between 1 and {args.steps - 1}")
    if args.worker and args.logdir is None:
        p.error("--worker needs --logdir")
    return args


def main() -> int:
    args = parse_args()
    if args.worker:
        train(args.logdir, args.steps, args.every, args.crash_at)
        return 0

    if args.logdir is None:
        root = tempfile.mkdtemp(prefix="ckpt-train-resume-")
    else:
        root = os.path.abspath(args.logdir)
        if os.path.isdir(root) and os.listdir(root):
            print(f"error: --logdir {root} is not empty; the demo needs fresh directories", file=sys.stderr)
            return 2
        os.makedirs(root, exist_ok=True)

    print(f"ckpt {ckpt.__version__} demo: interrupt training with SIGKILL, resume, compare with an "
          f"uninterrupted run.\nMLP {N_FEATURES}-{CONFIG['hidden']}-1, Adam, batch {BATCH} from a shuffling "
          f"loader, input noise from a jax.random key, {args.steps} steps, checkpoint every {args.every} "
          f"(keep {KEEP_CKPTS}), seed {SEED}.")
    t0 = time.perf_counter()
    problems = demo(args, root)
    elapsed = time.perf_counter() - t0

    if problems:
        print("\nFAILED: the resumed run does not match the uninterrupted one:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        print(f"  (run directories kept for inspection in {root})", file=sys.stderr)
        return 1
    print(f"\nOK: resuming after SIGKILL reproduced the uninterrupted run bit for bit ({elapsed:.1f} s).")
    if args.clean:
        shutil.rmtree(root, ignore_errors=True)
        print(f"Deleted the run directories in {root} (--clean).")
    else:
        print(f"Checkpoints kept in {root} (pass --clean to delete them). Try:\n"
              f"  ckpt ls {os.path.join(root, 'reference')} --verify --metric loss\n"
              f"  ckpt diff {os.path.join(root, 'reference', 'ckpt', f'{args.steps:010d}.npz')} "
              f"{os.path.join(root, 'crashed', 'ckpt', f'{args.steps:010d}.npz')}\n"
              f"  ckpt verify {os.path.join(root, 'crashed')} && echo intact\n"
              f"  ckpt prune {os.path.join(root, 'reference')} --keep 1 --dry-run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
