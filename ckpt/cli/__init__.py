"""The ``ckpt`` command: list, inspect, verify, compare, convert, average and prune checkpoints.

A thin layer over the library: each command module (``ls``, ``info``, ``verify``, ``diff``,
``export``, ``import_``, ``average``, ``prune``, ``find``) parses its arguments, makes one public
library call (``ckpt.list_checkpoints``, ``ckpt.describe``, ``ckpt.verify``, ...) and prints a table
(or JSON with ``--json``) through :mod:`ckpt.cli._format`. Expected failures (a damaged or missing
file, a bad argument) print one line on stderr and exit 1; usage errors exit 2. ``main(argv)``
returns the exit status, so tests call it in-process; ``run()`` is the console-script entry point.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from typing import Callable, Optional, Sequence

from .. import __version__
from ..errors import CkptError, FormatError
from ..integrity import explain, holds_object_arrays
from . import average, diff, export, find, import_, info, ls, prune, verify
from ._args import Formatter, UsageError
from ._format import say

__all__ = ["main", "run", "build_parser"]

#: The command modules, in the order ``ckpt --help`` lists them.
COMMANDS = (ls, info, verify, diff, average, export, import_, prune, find)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ckpt", formatter_class=Formatter,
        description="Inspect, verify, compare, convert, average and prune ckpt checkpoint files and directories.\n"
                    "LOGDIR is a training log directory (checkpoints in LOGDIR/ckpt/) or a directory of\n"
                    "checkpoint files; FILE is one checkpoint (.npz) file.",
        epilog=textwrap.dedent("""\
            examples:
              ckpt ls runs/exp1 --metric loss          list checkpoints, mark the newest and the best
              ckpt info runs/exp1/ckpt/0000001000.npz  what one file holds
              ckpt verify runs/exp1                    check every hash (exit 1 if anything is damaged)
              ckpt diff a.npz b.npz                    compare two checkpoints array by array
              ckpt find runs --cls MLP --order-by loss find checkpoints by model class and metrics

            Exit status: 0 success, 1 an error or damaged file, 2 bad usage.
            Run 'ckpt COMMAND --help' for each command's options."""))
    parser.add_argument("--version", action="version", version=f"ckpt {__version__}",
                        help="print the ckpt version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True

    def add(name: str, func: Callable[[argparse.Namespace], int], summary: str, description: str,
            example: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=summary, description=description, formatter_class=Formatter,
                           epilog="example:\n" + textwrap.indent(textwrap.dedent(example).strip(), "  "))
        p.set_defaults(func=func)
        return p

    for command in COMMANDS:
        command.register(add)
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise LookupError("the parser has no subcommands")


def _restore_interrupt() -> None:
    """Start-up is over: Ctrl-C raises KeyboardInterrupt again (reported by main as "interrupted")."""
    import signal

    from .. import _quiet_interrupt

    if signal.getsignal(signal.SIGINT) is _quiet_interrupt:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _error_line(e: BaseException, args: argparse.Namespace) -> str:
    """One line for an expected failure; a FormatError without a file, from a file numpy pickled
    object arrays into, says that instead of "damaged"."""
    if isinstance(e, FormatError) and not getattr(e, "file", None):
        files = [getattr(args, n, None) for n in ("file", "path", "src", "a", "b")]
        pickled = next((f for f in files if isinstance(f, str) and holds_object_arrays(f)), None)
        if pickled:
            return explain(e, pickled)
    return explain(e)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``ckpt`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    _restore_interrupt()
    parser = build_parser()
    args = parser.parse_args(argv)
    check = getattr(args, "check", None)
    problem = check(args) if check is not None else None
    if problem:
        _subparsers(parser)[args.command].error(problem)  # exits 2, like every usage error
    try:
        return int(args.func(args))
    except BrokenPipeError:
        raise
    except (UsageError, CkptError, OSError, ValueError) as e:
        say(f"ckpt {args.command}: error: {_error_line(e, args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        say(f"ckpt {args.command}: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """Console-script entry point."""
    try:
        status = main()
        sys.stdout.flush()
    except KeyboardInterrupt:  # between start-up and main's own handler
        print("ckpt: interrupted", file=sys.stderr)
        status = 130
    except BrokenPipeError:  # `ckpt ls ... | head`: the reader went away; not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        status = 1
    sys.exit(status)
