"""The ``kpnb`` command line: one command, one subcommand per stage.

Each subcommand is a pair: ``add_<name>_arguments(parser)`` declares its flags and
``run_<name>(args) -> int`` does the work by calling the library. ``kpnb --help`` lists
them; ``kpnb NAME --help`` shows flags, defaults and an example. Input problems
(``ValueError`` and friends) print one line and exit 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["main", "get_args_parser"]

log = logging.getLogger("kpnb")


@dataclass(frozen=True)
class _Command:
    name: str
    help: str
    example: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


_COMMANDS: dict[str, _Command] = {}


def _command(name: str, help: str, example: str):
    """Register ``add_arguments`` (decorated) with its ``run`` (set via ``.runner``)."""

    def wrap(add_arguments):
        def runner(run):
            _COMMANDS[name] = _Command(name, help, example, add_arguments, run)
            return run

        add_arguments.runner = runner
        return add_arguments

    return wrap


# -- synth --------------------------------------------------------------------------------
@_command(
    "synth",
    "draw the synthetic CVAT export the tutorials use",
    "kpnb synth --out data/synthetic --images 200 --seed 0\n"
    "  kpnb synth --out data/toy --layout points --zip",
)
def add_synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder (or .zip with --zip)")
    p.add_argument("--images", type=int, default=200, help="number of images (default: 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--layout",
        choices=("skeleton", "points"),
        default="skeleton",
        help="skeleton: project export with Train/Validation subsets and a 5-point face "
        "skeleton; points: the seed tutorial's toy layout, one <points> per label "
        "(default: skeleton)",
    )
    p.add_argument("--zip", action="store_true", help="write a CVAT-style export .zip")


@add_synth_arguments.runner
def run_synth(args: argparse.Namespace) -> int:
    from kpnb.synthetic import generate

    if args.images < 0:
        raise ValueError(f"--images must be >= 0, got {args.images}")
    out = generate(args.out, args.images, args.seed, args.layout, as_zip=args.zip)
    print(f"wrote {args.images} images ({args.layout} layout, seed {args.seed}) to {out}")
    return 0


# -- info ---------------------------------------------------------------------------------
@_command(
    "info",
    "summarise an export: counts, labels, skeletons, visibility",
    "kpnb info data/synthetic\n  kpnb info my_task_export.zip",
)
def add_info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=Path, help="CVAT export (xml, folder, zip) or COCO json")


@add_info_arguments.runner
def run_info(args: argparse.Namespace) -> int:
    from kpnb.data import read_annotations

    ann = read_annotations(args.source)
    print(summary_text(ann))
    return 0


def summary_text(ann) -> str:
    """The text `kpnb info` prints: one block per table the tutorial looks at."""
    lines = [f"source: {ann.meta.get('source', '?')}"]
    n_inst = ann.keypoints["instance_id"].nunique()
    lines.append(f"images: {len(ann.images)}   instances: {n_inst}   points: {len(ann.keypoints)}")
    subsets = ann.images["subset"].value_counts()
    if len(subsets):
        lines.append("subsets: " + ", ".join(f"{k} {v}" for k, v in subsets.items()))
    for name, sk in ann.skeletons.items():
        edges = ", ".join(f"{sk.keypoints[a]}-{sk.keypoints[b]}" for a, b in sk.edges)
        lines.append(f"skeleton {name!r}: {len(sk.keypoints)} keypoints; edges: {edges or 'none'}")
        if sk.flip_pairs:
            pairs = ", ".join(f"{sk.keypoints[a]}<->{sk.keypoints[b]}" for a, b in sk.flip_pairs)
            lines.append(f"  flip pairs: {pairs}")
    lines.append("")
    lines.append("instances per label:")
    lines.append(ann.label_counts().to_string())
    lines.append("")
    lines.append("points per keypoint and visibility:")
    lines.append(ann.keypoint_counts().to_string())
    skipped = ann.meta.get("skipped")
    if skipped:
        lines.append("")
        lines.append("other shapes (not keypoints): " +
                     ", ".join(f"{k} {v}" for k, v in skipped.items()))  # fmt: skip
    return "\n".join(lines)


# -- convert ------------------------------------------------------------------------------
@_command(
    "convert",
    "convert an export to COCO keypoints, CVAT XML, or CSV/parquet tables",
    "kpnb convert data/synthetic --to coco out/person_keypoints_default.json\n"
    "  kpnb convert toy.zip --to coco out/kp.json --points-as-skeleton face\n"
    "  kpnb convert data/synthetic --to parquet out/tables",
)
def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=Path, help="CVAT export (xml, folder, zip) or COCO json")
    p.add_argument("out", type=Path, help="output file (coco, cvat) or folder (csv, parquet)")
    p.add_argument("--to", required=True, choices=("coco", "cvat", "csv", "parquet"))
    p.add_argument(
        "--points-as-skeleton",
        metavar="NAME",
        help="COCO only: treat each image's plain <points> as one instance of skeleton NAME",
    )


@add_convert_arguments.runner
def run_convert(args: argparse.Namespace) -> int:
    from kpnb.data import read_annotations

    ann = read_annotations(args.source)
    if args.to == "coco":
        from kpnb.coco import write_coco

        write_coco(ann, args.out, points_as_skeleton=args.points_as_skeleton)
    elif args.to == "cvat":
        from kpnb.cvat import write_cvat

        write_cvat(ann, args.out)
    else:
        from kpnb.tables import save_tables

        save_tables(ann, args.out, args.to)
    print(f"wrote {args.to} to {args.out}")
    return 0


# -- show ---------------------------------------------------------------------------------
@_command(
    "show",
    "draw one annotated image of an export to a PNG",
    "kpnb show data/synthetic --image 3 --out sample.png",
)
def add_show_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=Path, help="CVAT export folder (or COCO export folder)")
    p.add_argument("--image", type=int, default=0, help="image_index to draw (default: 0)")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--images-root", type=Path, help="folder holding images/ (default: source)")
    p.add_argument("--boxes", action="store_true", help="draw each instance's box too")


@add_show_arguments.runner
def run_show(args: argparse.Namespace) -> int:
    from kpnb.data import read_annotations
    from kpnb.viz import show_sample

    ann = read_annotations(args.source)
    root = args.images_root or (args.source if args.source.is_dir() else args.source.parent)
    img = show_sample(ann, args.image, root)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    img.save(args.out)
    print(f"wrote {args.out} ({img.width}x{img.height})")
    return 0


# -- the parser ---------------------------------------------------------------------------
def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The ``kpnb`` parser with every registered subcommand."""
    from kpnb import __version__

    parser = argparse.ArgumentParser(
        prog="kpnb",
        description="From a CVAT keypoint export to a fine-tuned torchvision Keypoint R-CNN.",
        add_help=add_help,
    )
    parser.add_argument("--version", action="version", version=f"kpnb {__version__}")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kpnb`` and ``python -m kpnb``; returns the exit code."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, IndexError, OSError) as exc:
        # Input problems: the message already says what and where; a traceback adds noise.
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"kpnb {args.command}: error: {msg}", file=sys.stderr)
        if args.verbose:
            raise
        return 2
