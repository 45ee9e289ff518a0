"""The ``kpnb`` command line: one subcommand per stage, each an ``add_<name>_arguments``
(its flags) and a ``run_<name>`` (calls the library). Input problems (`KpnbError`, a
missing or forbidden path) print one line and exit 2; anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

# Importing the command modules registers their subcommands, in this order.
from kpnb.cli import export_commands, model_commands, predict_command  # noqa: F401,E402
from kpnb.cli._base import _COMMANDS
from kpnb.errors import KpnbError

__all__ = ["main", "get_args_parser"]


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


#: The flag that sets each library parameter a `KpnbError` can name (its ``params``): its
#: name with dashes but for two; seed to sigmas and max_minutes are a resumed run's settings.
FLAGS = {"image_root": "--images-root", "max_minutes": "--minutes"} | {
    name: "--" + name.replace("_", "-")
    for name in (
        "label images_root skip_missing points_as_skeleton flip_pairs skeletons_only overwrite "
        "rescale_images weights seed size lr epochs batch_size sigmas"
    ).split()
}


def _flag_spelling(name: str, value: object) -> str:
    flag = FLAGS.get(name, name)
    return flag if value is None or value is True else f"{flag} {value}"


def cli_message(exc: BaseException) -> str:
    """`exc`'s message as the command line says it: parameters become the flags that set
    them (placed where the message names them, else added at the end)."""
    if not isinstance(exc, KpnbError):
        return str(exc)
    msg = exc.render(_flag_spelling)
    rest = [FLAGS[p] for p in exc.params if p in FLAGS and p not in exc.placed()]
    return msg + (f" (on the command line: {', '.join(rest)})" if rest else "")


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
        return exc.code
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        return int(args._run(args) or 0)
    except _INPUT_ERRORS as exc:
        # kpnb's own input errors (and a path that is not there or not allowed): the message
        # says what and where, a traceback adds noise. Anything else is a bug or a resource
        # problem (CUDA out of memory) and keeps its traceback.
        print(f"kpnb {args.command}: error: {cli_message(exc)}", file=sys.stderr)
        if args.verbose:
            raise
        return 2
