"""``kpnb synth``, ``data``, ``info``, ``convert`` and ``show``: exports to tables and pictures.

None of them needs torch, so they start fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kpnb.cli._base import _command, _keyframes_arg, _overwrite_arg, _points_args, nonnegative_int
from kpnb.errors import KpnbError


# -- synth --------------------------------------------------------------------------------
def add_synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder (or .zip with --zip)")
    p.add_argument(
        "--images", type=nonnegative_int, default=200, help="number of images (default: 200)"
    )
    p.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--layout",
        choices=("skeleton", "points"),
        default="skeleton",
        help="skeleton: project export with Train/Validation subsets and a 5-point face "
        "skeleton; points: Christian Mills' toy layout, one <points> per label "
        "(default: skeleton)",
    )
    p.add_argument("--zip", action="store_true", help="write a CVAT-style export .zip")
    _overwrite_arg(p)


@_command(
    "synth",
    "draw the synthetic CVAT export the tutorials use",
    "kpnb synth --out data/synthetic --images 200 --seed 0\n"
    "  kpnb synth --out data/toy --layout points --zip",
    add_synth_arguments,
)
def run_synth(args: argparse.Namespace) -> int:
    from kpnb.synthetic import generate

    out = generate(
        args.out, args.images, args.seed, args.layout, as_zip=args.zip, overwrite=args.overwrite
    )
    print(f"wrote {args.images} images ({args.layout} layout, seed {args.seed}) to {out}")
    return 0


# -- data ---------------------------------------------------------------------------------
def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="'synthetic', a registered name, a URL of an export zip, or a path")
    p.add_argument("--root", type=Path, help="cache folder (default: $KPNB_CACHE or ~/.cache/kpnb)")
    p.add_argument(
        "--images", type=nonnegative_int, default=200, help="synthetic: image count (default: 200)"
    )
    p.add_argument("--seed", type=nonnegative_int, default=0, help="synthetic: seed (default: 0)")
    p.add_argument("--sha256", help="expected checksum of a URL's file")


@_command(
    "data",
    "fetch or make a dataset and print where it is",
    "kpnb data synthetic\n  kpnb data cj-mills/cvat-keypoint-toy-dataset\n"
    "  kpnb data https://example.org/my_export.zip --sha256 <hex>",
    add_data_arguments,
)
def run_data(args: argparse.Namespace) -> int:
    from kpnb.data import get_dataset

    path = get_dataset(
        args.spec, args.root, n_images=args.images, seed=args.seed, sha256=args.sha256
    )
    print(path)
    return 0


# -- info ---------------------------------------------------------------------------------
def add_info_arguments(p: argparse.ArgumentParser) -> None:
    _keyframes_arg(p)
    p.add_argument("source", type=Path, help="CVAT export (xml, folder, zip) or COCO json")


@_command(
    "info",
    "summarise an export: counts, labels, skeletons, visibility",
    "kpnb info data/synthetic\n  kpnb info my_task_export.zip",
    add_info_arguments,
)
def run_info(args: argparse.Namespace) -> int:
    from kpnb.data import read_annotations

    ann = read_annotations(args.source, keyframes_only=args.keyframes_only)
    print(ann.summary())
    return 0


# -- convert ------------------------------------------------------------------------------
def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    _keyframes_arg(p)
    p.add_argument("source", type=Path, help="CVAT export (xml, folder, zip) or COCO json")
    p.add_argument("out", type=Path, help="output file (coco, cvat) or folder (csv, parquet)")
    p.add_argument("--to", required=True, choices=("coco", "cvat", "csv", "parquet"))
    _points_args(p)
    p.add_argument(
        "--skeletons-only",
        action="store_true",
        help="COCO only: leave plain <points> labels out (default: written as CVAT does, "
        "one annotation per shape with empty keypoint names)",
    )
    p.add_argument(
        "--images-root",
        type=Path,
        help="CVAT only: the images' folder, to read the sizes a COCO file leaves 0",
    )


@_command(
    "convert",
    "convert an export to COCO keypoints, CVAT XML, or CSV/parquet tables",
    "kpnb convert data/synthetic --to coco out/person_keypoints_default.json\n"
    "  kpnb convert toy.zip --to coco out/kp.json --points-as-skeleton face\n"
    "  kpnb convert data/synthetic --to parquet out/tables",
    add_convert_arguments,
)
def run_convert(args: argparse.Namespace) -> int:
    from kpnb.coco import write_coco
    from kpnb.cvat import write_cvat
    from kpnb.data import read_annotations
    from kpnb.grouping import points_to_skeleton
    from kpnb.io import check_output
    from kpnb.tables import save_tables

    folder = args.to in ("csv", "parquet")
    check_output(args.out, directory=folder, overwrite=args.overwrite)  # before reading
    ann = read_annotations(args.source, keyframes_only=args.keyframes_only)
    if args.points_as_skeleton:
        ann = points_to_skeleton(ann, args.points_as_skeleton, group_by=args.group_by)
    if args.to == "coco":
        write_coco(ann, args.out, skeletons_only=args.skeletons_only)
    elif args.to == "cvat":
        write_cvat(ann, args.out, images_root=args.images_root)
    else:
        save_tables(ann, args.out, args.to, overwrite=args.overwrite)
    print(f"wrote {args.to} to {args.out}")
    return 0


# -- show ---------------------------------------------------------------------------------
def add_show_arguments(p: argparse.ArgumentParser) -> None:
    _keyframes_arg(p)
    p.add_argument("source", type=Path, help="export folder, zip or annotation file")
    p.add_argument(
        "--image",
        help="image to draw: its file name, SUBSET/NAME in project "
        "exports, or its CVAT/COCO image id (default: the first image)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="picture to write: .png (or .jpg, .webp, .tif); an existing file is refused "
        "unless --overwrite",
    )
    p.add_argument("--images-root", type=Path, help="folder holding images/ (default: source)")
    p.add_argument(
        "--skip-missing",
        action="store_true",
        help="draw on a blank canvas of the declared size when the file is missing",
    )
    p.add_argument(
        "--rescale-images",
        action="store_true",
        help="resize an image whose size differs from the annotations' to that size "
        "(default: refuse it)",
    )
    p.add_argument("--boxes", action="store_true", help="draw each instance's box too")
    p.add_argument("--label", help="draw only this label (default: every label)")
    _overwrite_arg(p)


def _image_format(path: Path) -> str:
    """The PIL format that writes `path`'s extension (``.png``: PNG), or a KpnbError."""
    from PIL import Image

    Image.init()
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise KpnbError(
            f"--out {path}: {path.suffix or 'no extension'!r} is not an image format kpnb "
            "can write; name a .png (or .jpg, .webp, .tif) file"
        )
    return fmt


@_command(
    "show",
    "draw one annotated image of an export to a PNG",
    "kpnb show data/synthetic --image 3 --out sample.png\n"
    "  kpnb show export.zip --image frame_000012 --out frame.png --boxes",
    add_show_arguments,
)
def run_show(args: argparse.Namespace) -> int:
    from kpnb.data import get_dataset, read_annotations
    from kpnb.io import atomic_path, check_output
    from kpnb.viz import show_sample

    check_output(args.out, overwrite=args.overwrite)  # before reading: a folder, a file
    fmt = _image_format(args.out)  # and an extension PIL cannot write
    source = get_dataset(args.source)  # a zip is extracted once (checked) into the cache
    ann = read_annotations(source, keyframes_only=args.keyframes_only)
    root = args.images_root or (source if source.is_dir() else source.parent)
    img = show_sample(
        ann,
        ann.image_index_of(args.image),
        root,
        label=args.label,
        boxes=args.boxes,
        skip_missing=args.skip_missing,
        rescale_images=args.rescale_images,
    )
    # atomic: an existing file is kept unless --overwrite, a failed save leaves no partial file
    with atomic_path(args.out, overwrite=args.overwrite) as tmp:
        try:
            img.save(tmp, format=fmt)
        except (OSError, ValueError, KeyError) as exc:  # a format that cannot hold the picture
            raise KpnbError(
                f"{args.out}: cannot write the picture as {fmt} ({exc}); name a .png file"
            ) from exc
    print(f"wrote {args.out} ({img.width}x{img.height})")
    return 0
