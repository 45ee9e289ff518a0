"""The command registry and the argument types every kpnb subcommand shares."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial


@dataclass(frozen=True)
class _Command:
    name: str
    help: str
    example: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


_COMMANDS: dict[str, _Command] = {}


# -- argument types: refuse bad values at parse time, with the flag named -----------------
def _number(kind: type, ok: Callable[[float], bool], need: str, text: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {need}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {need}, got {text}")
    return value


positive_int = partial(_number, int, lambda v: v >= 1, "a whole number >= 1")  # sizes, epochs
nonnegative_int = partial(_number, int, lambda v: v >= 0, "a whole number >= 0")  # seeds, counts
positive_float = partial(_number, float, lambda v: 0 < v < float("inf"), "a number > 0")
fraction = partial(_number, float, lambda v: 0 <= v <= 1, "a number from 0 to 1")  # thresholds


def _overwrite_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an existing OUT: replace the files kpnb writes there, keep "
        "all others (default: refuse an existing file or non-empty folder)",
    )


def _command(name: str, help: str, example: str, add_arguments):
    """Register the decorated ``run`` as subcommand `name`, its flags from `add_arguments`."""

    def register(run):
        _COMMANDS[name] = _Command(name, help, example, add_arguments, run)
        return run

    return register


def _points_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--points-as-skeleton",
        metavar="NAME",
        help="one <points> shape per keypoint label: combine them into instances of "
        "skeleton NAME (grouped by --group-by)",
    )
    p.add_argument(
        "--group-by",
        choices=("auto", "group_id", "box", "image"),
        default="auto",
        help="with --points-as-skeleton: which points form one object (default auto: "
        "group_id if set, else the containing <box>, else the whole image)",
    )
    _overwrite_arg(p)


def _keyframes_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--keyframes-only",
        action="store_true",
        help="CVAT video: keep only keyframes (drop the poses CVAT repeats after a track's "
        "last keyframe and the interpolated ones)",
    )
