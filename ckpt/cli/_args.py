"""Argument types and parser helpers shared by the ``ckpt`` commands."""

from __future__ import annotations

import argparse
import math
from typing import Callable

from ._format import parse_size

__all__ = ["Add", "Formatter", "int_list", "positive_int", "non_negative_int", "size_arg", "decay", "float_list",
           "add_json", "UsageError"]

#: ``add(name, run, summary, description, example) -> parser``: how a command module registers itself.
Add = Callable[..., argparse.ArgumentParser]


class UsageError(Exception):
    """A bad combination of arguments found after parsing: printed as one line, exit status 1."""


class Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


def int_list(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated steps like 1000,2000,3000, not {text!r}") from None
    if not out or any(i < 0 for i in out):
        raise argparse.ArgumentTypeError(f"expected non-negative steps like 1000,2000,3000, not {text!r}")
    return out


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, not {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def decay(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], not {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"EMA decay must be between 0 and 1, not {value}")
    return value


def float_list(text: str) -> list[float]:
    try:
        out = [float(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 1,2,3, not {text!r}") from None
    if not out or not all(math.isfinite(w) and w >= 0 for w in out) or not sum(out) > 0:
        raise argparse.ArgumentTypeError(f"expected non-negative weights with a positive sum, not {text!r}")
    return out


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print standard JSON on stdout instead of a table (NaN and infinities as the strings "
                        "\"NaN\", \"Infinity\", \"-Infinity\")")
