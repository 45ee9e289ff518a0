"""``kpnb predict``: a checkpoint's keypoints in images, as CVAT pre-annotations or COCO results."""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

from kpnb.cli._base import _command, _overwrite_arg, fraction, nonnegative_int, positive_int
from kpnb.errors import KpnbError

log = logging.getLogger("kpnb")


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path)
    p.add_argument(
        "images",
        type=Path,
        nargs="+",
        help="image files, or folders: every image file in a folder and its subfolders, "
        "in name order",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help=".xml or .zip: CVAT for images 1.1 for CVAT's 'Upload annotations' of the task "
        "holding these images (matched by file name); .json: COCO results",
    )
    p.add_argument(
        "--viz",
        type=Path,
        metavar="DIR",
        help="also draw each image's predictions into this folder, as NNNN_STEM.png: NNNN "
        "is the image's position among the images predicted (from 0000), so two images "
        "with the same name never overwrite each other; a non-empty DIR is refused "
        "unless --overwrite",
    )
    p.add_argument("--score-threshold", type=fraction, default=0.5, help="default: 0.5")
    p.add_argument("--label", default=None, help="label name to write (default: checkpoint's)")
    p.add_argument("--images-root", type=Path, help="IMAGES are relative to this folder")
    p.add_argument(
        "--skip-missing",
        action="store_true",
        help="leave out image files that do not exist instead of failing",
    )
    p.add_argument(
        "--annotations",
        type=Path,
        metavar="EXPORT",
        help=".json out: take image ids from this export's images (matched by "
        "file name) and the category id from its label, so the results score against "
        "it in pycocotools",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=2, help="images per batch (default: 2)"
    )
    p.add_argument(
        "--workers", type=nonnegative_int, help="image loading workers (default: cores - 1)"
    )
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    _overwrite_arg(p)


def _export_ids(
    source: Path, paths: list[Path], images_root: Path | None, label: str
) -> tuple[list[int], int]:
    """The export's COCO image id of each path, matched by its name inside the export (or
    its file name when that is unique), and the category id of `label` in it: a COCO
    file's own ids, or those `kpnb convert --to coco` gives a CVAT export."""
    from kpnb.coco import category_ids, image_ids
    from kpnb.data import get_dataset, read_annotations

    root = get_dataset(source)
    ann = read_annotations(root)
    labels = [str(n) for n in ann.labels["name"]]
    if label not in labels:
        raise KpnbError(
            f"--annotations {source}: no label {label!r} in it (its labels: "
            f"{', '.join(labels[:10])}); set {{label}} to the one the model predicts",
            param="label",
        )
    names = [str(n).replace("\\", "/") for n in ann.images["name"]]
    by_name = dict(zip(names, image_ids(ann), strict=True))
    base = [n.rsplit("/", 1)[-1] for n in names]
    count = Counter(base)
    by_base = {b: i for b, i in zip(base, image_ids(ann), strict=True) if count[b] == 1}
    folder = images_root or (root if root.is_dir() else root.parent)
    tops = [top.resolve() for top in (folder / "images", folder)]
    ids = []
    for path in paths:
        full = path.resolve()
        rel = next((full.relative_to(t).as_posix() for t in tops if full.is_relative_to(t)), None)
        found = by_name.get(rel, by_base.get(path.name))
        if found is None:
            raise KpnbError(
                f"--annotations {source}: no image named {rel or path.name!r} in it; predict "
                "images of that export, or leave --annotations out"
            )
        ids.append(int(found))
    return ids, category_ids(ann, [label])[label]


def _images_in_folders(paths: list[Path]) -> list[Path]:
    """`paths` with each folder replaced by the image files under it (any extension PIL
    opens, in sorted order); a folder holding none is an error naming it."""
    from PIL import Image

    readable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    out: list[Path] = []
    for path in paths:
        if not path.is_dir():
            out.append(path)
            continue
        found = sorted(p for p in path.rglob("*") if p.suffix.lower() in readable and p.is_file())
        if not found:
            raise KpnbError(
                f"{path}: a folder with no image files in it or its subfolders; pass image "
                "files or a folder that holds them"
            )
        out.extend(found)
    return out


@_command(
    "predict",
    "detect keypoints in images and write CVAT XML (pre-annotations to upload) or COCO results",
    "kpnb predict runs/demo/best.pth photos/*.jpg --out preds.xml --viz preds/",
    add_predict_arguments,
)
def run_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from kpnb.evaluate import predict, write_predictions
    from kpnb.images import image_size, load_image
    from kpnb.io import atomic_path, check_output
    from kpnb.model import load_checkpoint_model

    if args.out.suffix.lower() not in (".xml", ".zip", ".json"):
        raise KpnbError(f"--out {args.out}: use .xml or .zip (CVAT) or .json (COCO results)")
    check_output(args.out, overwrite=args.overwrite)  # both before the model is loaded
    if args.viz is not None:
        check_output(args.viz, directory=True, overwrite=args.overwrite)
    if args.images_root is not None:
        args.images = [args.images_root / p for p in args.images]  # an absolute p stays p
    args.images = _images_in_folders(args.images)
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing and not args.skip_missing:
        raise FileNotFoundError(
            f"no such image files: {', '.join(missing[:10])}; pass --skip-missing to leave them out"
        )
    if missing:
        log.warning("left out %d missing image files, e.g. %s", len(missing), missing[0])
        args.images = [p for p in args.images if p.is_file()]
    if args.viz is not None:  # --overwrite replaces the whole folder: never one of the inputs'
        viz = args.viz.resolve()
        inside = next((p for p in args.images if viz in p.resolve().parents), None)
        if inside is not None:
            raise KpnbError(f"--viz {args.viz} holds the input image {inside}; draw elsewhere")
    model, ckpt = load_checkpoint_model(args.checkpoint, args.device)
    skeleton = ckpt.skeleton
    label = args.label or ckpt.label or "object"
    image_ids, category_id = None, 1
    if args.annotations is not None:
        image_ids, category_id = _export_ids(args.annotations, args.images, args.images_root, label)
    with tqdm(total=len(args.images), desc="predict", unit="img", file=sys.stderr) as bar:
        preds = predict(
            model,
            [str(p) for p in args.images],
            skeleton,
            label,
            score_threshold=args.score_threshold,
            batch_size=args.batch_size,
            num_workers=args.workers,
            on_batch=bar.update,
        )
    # The upload names each image by its file name: CVAT matches a name (without extension)
    # to the task image of that path, else to one whose path ends with it.
    repeated = sorted(n for n, c in Counter(p.name for p in args.images).items() if c > 1)
    if repeated:
        log.warning(
            "%d image names repeat (e.g. %r): CVAT matches uploaded annotations to a "
            "task's images by name, so it cannot tell these apart; predict them apart",
            len(repeated),
            repeated[0],
        )
    sizes = [image_size(p) for p in args.images]
    write_predictions(preds, args.images, sizes, skeleton, label, args.out, image_ids, category_id)
    if args.viz:
        from kpnb.viz import draw_instances

        # NNNN_STEM.png, NNNN the position (4 digits or more): unique when two stems are alike;
        # drawn into a temporary folder, moved into DIR when all are done
        width = max(4, len(str(len(args.images) - 1)))
        with atomic_path(args.viz, directory=True, overwrite=args.overwrite) as tmp:
            for i, path in enumerate(args.images):
                rows = preds[preds["image_index"] == i]
                arr = rows[["x", "y"]].to_numpy().reshape(-1, skeleton.num_keypoints, 2)
                picture = draw_instances(load_image(path), arr, skeleton)
                picture.save(tmp / f"{i:0{width}d}_{path.stem}.png", format="PNG")
    print(f"{preds['instance_id'].nunique()} instances in {len(args.images)} images -> {args.out}")
    return 0
