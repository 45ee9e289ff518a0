"""The ``kpnb`` command line: one command, one subcommand per stage.

Each subcommand is a pair: ``add_<name>_arguments(parser)`` declares its flags and
``run_<name>(args) -> int`` does the work by calling the library. ``kpnb --help`` lists
them; ``kpnb NAME --help`` shows flags, defaults and an example. Input problems
(`kpnb.errors.KpnbError`, a missing or forbidden path) print one line and exit 2; anything
else keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

# Importing the command modules registers their subcommands, in this order.
from kpnb.cli import export_commands, model_commands  # noqa: F401,E402
from kpnb.cli._base import _COMMANDS
from kpnb.errors import KpnbError

__all__ = ["main", "get_args_parser"]

log = logging.getLogger("kpnb")


# -- the parser ---------------------------------------------------------------------------
def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The ``kpnb`` parser with every registered subcommand."""
    from kpnb.config import version

    parser = argparse.ArgumentParser(
        prog="kpnb",
        description="From a CVAT keypoint export to a fine-tuned torchvision Keypoint R-CNN.",
        add_help=add_help,
    )
    parser.add_argument("--version", action="version", version=f"kpnb {version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in _COMMANDS.values():
        p = sub.add_parser(
            cmd.name,
            help=cmd.help,
            description=cmd.help[0].upper() + cmd.help[1:] + ".",
            epilog=f"example:\n  {cmd.example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


#: Library messages name Python parameters; from the command line they name the flags.
_FLAGS = (
    ("skip_missing=True", "--skip-missing"),
    ("fix image_root", "fix --images-root"),
    ("as image_root", "with --images-root"),
    ("kpnb.grouping.points_to_skeleton(annotations, name)", "--points-as-skeleton NAME"),
    ("kpnb.grouping.points_to_skeleton", "--points-as-skeleton NAME"),
    ("points_as_skeleton=NAME", "--points-as-skeleton NAME"),
    ("label=", "--label "),
    ("pass flip_pairs", "pass --flip-pairs"),
    ("flip_pairs=", "--flip-pairs"),
    ("skeletons_only=True", "--skeletons-only"),
)


def _cli_message(msg: str) -> str:
    """`msg` with Python parameter names replaced by the CLI flags that set them."""
    for python, flag in _FLAGS:
        msg = msg.replace(python, flag)
    return msg


_INPUT_ERRORS = (
    KpnbError,
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kpnb`` and ``python -m kpnb``; returns the exit code."""
    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad flag (argparse printed why)
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        return int(args._run(args) or 0)
    except _INPUT_ERRORS as exc:
        # kpnb's own input errors (and a path that is not there or not allowed): the message
        # says what and where, a traceback adds noise. Anything else is a bug or a resource
        # problem (CUDA out of memory) and keeps its traceback.
        print(f"kpnb {args.command}: error: {_cli_message(str(exc))}", file=sys.stderr)
        if args.verbose:
            raise
        return 2
