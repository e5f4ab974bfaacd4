"""The ``ckpt`` command moved to :mod:`ckpt.cli`; console scripts installed before the move import
``ckpt._cli:run``, so this name stays as an alias."""

from .cli import build_parser, main, run

__all__ = ["main", "run", "build_parser"]
