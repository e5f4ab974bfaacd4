"""``python -m ckpt``: the same command as the ``ckpt`` console script."""

from .cli import run

if __name__ == "__main__":
    run()
