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
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kpnb.errors import KpnbError

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


# -- argument types: refuse bad values at parse time, with the flag named -----------------
def _number(kind: type, text: str, ok: Callable[[float], bool], need: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {need}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {need}, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (sizes, batch sizes, epochs)."""
    return _number(int, text, lambda v: v >= 1, "a whole number >= 1")


def nonnegative_int(text: str) -> int:
    """argparse type: a whole number >= 0 (counts, seeds, indices, workers)."""
    return _number(int, text, lambda v: v >= 0, "a whole number >= 0")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (learning rates, OKS sigmas)."""
    return _number(float, text, lambda v: 0 < v < float("inf"), "a number > 0")


def fraction(text: str) -> float:
    """argparse type: a number from 0 to 1 (score thresholds)."""
    return _number(float, text, lambda v: 0 <= v <= 1, "a number from 0 to 1")


def _overwrite_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="write into an existing OUT: replace the files kpnb writes there, keep "
                   "all others (default: refuse an existing file or non-empty folder)")  # fmt: skip


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
    p.add_argument("--images", type=nonnegative_int, default=200,
                   help="number of images (default: 200)")  # fmt: skip
    p.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--layout",
        choices=("skeleton", "points"),
        default="skeleton",
        help="skeleton: project export with Train/Validation subsets and a 5-point face "
        "skeleton; points: the seed tutorial's toy layout, one <points> per label "
        "(default: skeleton)",
    )
    p.add_argument("--zip", action="store_true", help="write a CVAT-style export .zip")
    _overwrite_arg(p)


@add_synth_arguments.runner
def run_synth(args: argparse.Namespace) -> int:
    from kpnb.synthetic import generate

    out = generate(args.out, args.images, args.seed, args.layout, as_zip=args.zip,
                   overwrite=args.overwrite)  # fmt: skip
    print(f"wrote {args.images} images ({args.layout} layout, seed {args.seed}) to {out}")
    return 0


# -- data ---------------------------------------------------------------------------------
@_command(
    "data",
    "fetch or make a dataset and print where it is",
    "kpnb data synthetic\n  kpnb data cj-mills/cvat-keypoint-toy-dataset\n"
    "  kpnb data https://example.org/my_export.zip --sha256 <hex>",
)
def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="'synthetic', a registered name, a URL of an export zip, or a path")
    p.add_argument("--root", type=Path, help="cache folder (default: $KPNB_CACHE or ~/.cache/kpnb)")
    p.add_argument("--images", type=nonnegative_int, default=200,
                   help="synthetic: image count (default: 200)")  # fmt: skip
    p.add_argument("--seed", type=nonnegative_int, default=0, help="synthetic: seed (default: 0)")
    p.add_argument("--sha256", help="expected checksum of a URL's file")


@add_data_arguments.runner
def run_data(args: argparse.Namespace) -> int:
    from kpnb.data import get_dataset

    path = get_dataset(args.spec, args.root, n_images=args.images, seed=args.seed,
                       sha256=args.sha256)  # fmt: skip
    print(path)
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
    """The text `kpnb info` prints: one block per table the tutorial looks at.

    Skeletons sharing one layout (a COCO category per species) are described once.
    """
    lines = [f"source: {ann.meta.get('source', '?')}"]
    n_inst = ann.keypoints["instance_id"].nunique()
    lines.append(f"images: {len(ann.images)}   instances: {n_inst}   points: {len(ann.keypoints)}")
    subsets = ann.images["subset"].value_counts()
    if len(subsets):
        lines.append("subsets: " + ", ".join(f"{k} {v}" for k, v in subsets.items()))
    for names in ann.same_layouts():
        sk = ann.skeletons[names[0]]
        edges = ", ".join(f"{sk.keypoints[a]}-{sk.keypoints[b]}" for a, b in sk.edges)
        who = f"skeleton {names[0]!r}" if len(names) == 1 else (
            f"{len(names)} skeletons with one layout ({', '.join(map(repr, names))})")
        lines.append(f"{who}: {len(sk.keypoints)} keypoints; edges: {edges or 'none'}")
        lines.append(f"  flip pairs: {sk.flip_summary()}")
    for label in ann.multi_point_labels():
        sk = ann.skeleton_for(label)
        lines.append(f"points label {label!r}: each shape is one object of up to "
                     f"{sk.num_keypoints} points, named 1..{sk.num_keypoints}")  # fmt: skip
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
    _points_args(p)
    p.add_argument(
        "--skeletons-only",
        action="store_true",
        help="COCO only: leave plain <points> labels out (default: written as CVAT does, "
        "one annotation per shape with empty keypoint names)",
    )


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


@add_convert_arguments.runner
def run_convert(args: argparse.Namespace) -> int:
    from kpnb._io import check_output
    from kpnb.data import read_annotations

    folder = args.to in ("csv", "parquet")
    check_output(args.out, directory=folder, overwrite=args.overwrite)  # before reading
    ann = read_annotations(args.source)
    if args.points_as_skeleton:
        from kpnb.tables import points_to_skeleton

        ann = points_to_skeleton(ann, args.points_as_skeleton, group_by=args.group_by)
    if args.to == "coco":
        from kpnb.coco import write_coco

        write_coco(ann, args.out, skeletons_only=args.skeletons_only)
    elif args.to == "cvat":
        from kpnb.cvat import write_cvat

        write_cvat(ann, args.out)
    else:
        from kpnb.tables import save_tables

        save_tables(ann, args.out, args.to, overwrite=args.overwrite)
    print(f"wrote {args.to} to {args.out}")
    return 0


# -- show ---------------------------------------------------------------------------------
@_command(
    "show",
    "draw one annotated image of an export to a PNG",
    "kpnb show data/synthetic --image 3 --out sample.png\n"
    "  kpnb show export.zip --image frame_000012 --out frame.png --boxes",
)
def add_show_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=Path, help="export folder, zip or annotation file")
    p.add_argument("--image", help="image to draw: its file name, SUBSET/NAME in project "
                   "exports, or its CVAT/COCO image id (default: the first image)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--images-root", type=Path, help="folder holding images/ (default: source)")
    p.add_argument("--skip-missing", action="store_true",
                   help="draw on a blank canvas of the declared size when the file is missing")
    p.add_argument("--boxes", action="store_true", help="draw each instance's box too")
    p.add_argument("--label", help="draw only this label (default: every label)")


def _pick_image(ann, spec: str | None) -> int:
    """The image_index of the image named (file name, or image id) by `spec`."""
    images = ann.images
    if spec is None:
        if images.empty:
            raise KpnbError("the export has no images")
        return int(images["image_index"].iloc[0])
    subset, _, rest = spec.partition("/")
    if rest and subset in set(images["subset"].dropna().astype(str)):
        images, spec = images[images["subset"] == subset], rest  # SUBSET/NAME, project exports
    by_name = images[images["name"].astype(str) == spec]
    if by_name.empty and spec.lstrip("-").isdigit():
        by_name = images[images["image_id"] == int(spec)]
    if by_name.empty:
        stems = images["name"].astype(str).map(lambda n: Path(n).stem)
        by_name = images[stems == spec]
    if len(by_name) > 1:
        where = ", ".join(f"{r.name!r} (subset {r.subset})" for r in by_name.itertuples())
        raise KpnbError(f"--image {spec}: several images match ({where}); write "
                         "SUBSET/NAME")  # fmt: skip
    if by_name.empty:
        first = ", ".join(repr(str(n)) for n in images["name"].head(5))
        raise KpnbError(f"--image {spec}: no image with that file name or id; "
                         f"the first are {first}")  # fmt: skip
    return int(by_name["image_index"].iloc[0])


@add_show_arguments.runner
def run_show(args: argparse.Namespace) -> int:
    from kpnb.data import get_dataset, read_annotations
    from kpnb.viz import show_sample

    source = get_dataset(args.source)  # a zip is extracted once (checked) into the cache
    ann = read_annotations(source)
    root = args.images_root or (source if source.is_dir() else source.parent)
    img = show_sample(ann, _pick_image(ann, args.image), root, label=args.label,
                      boxes=args.boxes, skip_missing=args.skip_missing)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    img.save(args.out)
    print(f"wrote {args.out} ({img.width}x{img.height})")
    return 0


# -- train --------------------------------------------------------------------------------
def _dataset_args(p: argparse.ArgumentParser, *, from_checkpoint: bool = False) -> None:
    """DATA and how to read it; `from_checkpoint`: defaults are the training run's."""
    run = "default: the checkpoint's" if from_checkpoint else None
    p.add_argument("data", help="CVAT or COCO export (folder, zip, file), or 'synthetic'")
    p.add_argument("--label", help=f"skeleton label to learn ({run or 'default: the first'})")
    p.add_argument(
        "--all-categories",
        action="store_true",
        help="learn every skeleton label sharing --label's layout as one (a COCO category "
        "per species); the labels used are printed",
    )
    _points_args(p)
    p.add_argument("--images-root", type=Path,
                   help="folder holding the images (default: beside the annotations)")
    p.add_argument("--skip-missing", action="store_true",
                   help="leave out images whose files are missing instead of failing")
    p.add_argument("--flip-pairs", nargs="+", metavar="LEFT:RIGHT",
                   help="left/right keypoint pairs for the training flip, e.g. "
                   "'L_Eye:R_Eye' (default: paired from the names)")  # fmt: skip
    p.add_argument("--size", type=positive_int, default=None if run else 256,
                   help=f"square image size ({run or 'default: 256'})")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=2,
                   help="images per step (default: 2)")  # fmt: skip
    p.add_argument("--workers", type=nonnegative_int,
                   help="data loader workers (default: cores - 1)")  # fmt: skip
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")


def _flip_pairs(args) -> list[tuple[str, str]] | None:
    if not args.flip_pairs:
        return None
    pairs = []
    for item in args.flip_pairs:
        left, sep, right = item.partition(":")
        if not sep or not left or not right:
            raise KpnbError(f"--flip-pairs {item!r}: write each pair as LEFT:RIGHT")
        pairs.append((left, right))
    return pairs


def _load_for_training(args):
    """(annotations, image root, skeleton label) for DATA, as train and evaluate see it.

    Says which labels are used; with --flip-pairs the label's skeleton carries them.
    """
    from dataclasses import replace

    from kpnb.data import get_dataset, read_annotations
    from kpnb.tables import merge_skeletons, points_as_instances, points_to_skeleton

    root = get_dataset(args.data)
    ann = read_annotations(root)
    if args.points_as_skeleton:
        ann = points_to_skeleton(ann, args.points_as_skeleton, group_by=args.group_by)
        print(f"points grouped into {args.points_as_skeleton!r} instances by "
              f"{ann.meta['points_grouping']}")  # fmt: skip
    multi = ann.multi_point_labels()
    if multi and (args.label is None or args.label in multi):
        ann = points_as_instances(ann, [args.label] if args.label else multi)
    if not ann.skeletons:
        raise KpnbError(f"{args.data}: no skeleton label; for one <points> shape per keypoint, "
                         "pass --points-as-skeleton NAME")  # fmt: skip
    label = args.label or next(iter(ann.skeletons))
    if label not in ann.skeletons:
        raise KpnbError(f"--label {label!r} is not a skeleton; skeletons: {list(ann.skeletons)}")
    layout = next(names for names in ann.same_layouts() if label in names)
    others = [n for n in ann.skeletons if n != label]
    if args.all_categories and len(layout) > 1:
        ann = merge_skeletons(ann, layout, label)
        print(f"training labels {layout} as one skeleton {label!r}")
    else:
        print(f"training label {label!r}" + (f"; not used: {others}" if others else "")
              + (" (--all-categories trains the labels sharing its layout: "
                 f"{[n for n in layout if n != label]})" if len(layout) > 1 else ""))  # fmt: skip
    pairs = _flip_pairs(args)
    if pairs is not None:
        paired = ann.skeletons[label].with_flip_pairs(pairs)
        ann = replace(ann, skeletons={**ann.skeletons, label: paired})
    image_root = args.images_root or (root if root.is_dir() else root.parent)
    return ann, image_root, label


def _positive(name: str, value) -> None:
    if value is not None and not value > 0:
        raise KpnbError(f"--{name} must be > 0, got {value}")


@_command(
    "train",
    "fine-tune Keypoint R-CNN on an export and keep the best checkpoint",
    "kpnb train synthetic --epochs 1 --size 256 --out runs/demo --weights none\n"
    "  kpnb train my_export.zip --epochs 30 --out runs/v1 --weights coco --minutes 60\n"
    "  torchrun --nproc_per_node 2 -m kpnb train synthetic --epochs 5 --out runs/ddp",
)
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    _dataset_args(p)
    p.add_argument("--epochs", type=positive_int, default=10, help="default: 10")
    p.add_argument("--minutes", type=positive_float,
                   help="time budget: the schedule fits it and training stops when it is used "
                   "up (default: none)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="run folder for checkpoints/history")
    p.add_argument(
        "--weights",
        default="coco",
        help="coco (download torchvision's COCO weights), none, or a .pth path "
        "(default: coco, falling back to random with a warning when offline)",
    )
    p.add_argument("--preset", choices=("auto", "cpu", "torchvision"), default="auto",
                   help="model sizes: auto (torchvision's on CUDA, cpu elsewhere), cpu (images "
                   "kept at --size, fewer proposals) or torchvision (640-800 px)")  # fmt: skip
    p.add_argument(
        "--lr", type=positive_float, default=1e-4,
        help="peak one-cycle learning rate (default: 1e-4)",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pth")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed of the run and of the split (default: 0)")  # fmt: skip
    p.add_argument("--sigmas", type=positive_float, nargs="+", help="OKS sigma per keypoint")


@add_train_arguments.runner
def run_train(args: argparse.Namespace) -> int:
    from kpnb.dataset import make_loaders
    from kpnb.model import build_model
    from kpnb.train import TrainConfig, fit

    for name in ("size", "epochs", "minutes", "batch_size", "lr"):
        _positive(name.replace("_", "-"), getattr(args, name))
    ann, root, label = _load_for_training(args)
    skeleton = ann.skeletons[label]
    # Everything that can fail on the input fails here, before the model is built.
    if args.sigmas is not None and len(args.sigmas) != skeleton.num_keypoints:
        raise KpnbError(f"--sigmas: {len(args.sigmas)} values for {skeleton.num_keypoints} "
                         f"keypoints {list(skeleton.keypoints)}")  # fmt: skip
    if args.epochs < 1:
        raise KpnbError(f"--epochs must be >= 1, got {args.epochs}")
    train_loader, val_loader = make_loaders(ann, root, label, size=args.size,
                                            batch_size=args.batch_size, num_workers=args.workers,
                                            seed=args.seed,
                                            skip_missing=args.skip_missing)  # fmt: skip
    if not any(len(item.boxes) for item in train_loader.dataset.items):
        raise KpnbError(f"{args.data}: no instance of {label!r} in the training images; "
                         "nothing to learn")  # fmt: skip
    print(f"flip: {skeleton.flip_summary()}")
    weights = None if str(args.weights).lower() == "none" else args.weights
    model = build_model(skeleton.num_keypoints, weights=weights, size=args.size,
                        preset=args.preset, allow_random=args.weights == "coco")  # fmt: skip
    config = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        size=args.size,
        max_minutes=args.minutes,
        sigmas=args.sigmas,
        extra={"label": label, "data": str(args.data),
               "points_as_skeleton": args.points_as_skeleton},  # fmt: skip
    )
    resume = args.out / "last.pth" if args.resume else None
    if resume is not None and not resume.is_file():
        raise FileNotFoundError(f"{resume}: nothing to resume; train without --resume first")
    history = fit(model, train_loader, val_loader, skeleton, config, out_dir=args.out,
                  device=args.device, resume=resume)  # fmt: skip
    if history and int(os.environ.get("RANK", 0)) == 0:
        last = history[-1]
        shown = {k: round(v, 4) for k, v in last.items()
                 if k in ("loss", "AP", "PCK@0.1") and v is not None}  # fmt: skip
        print(f"trained {len(history)} epochs on {len(train_loader.dataset)} images: {shown}")
        print(f"checkpoints and history in {args.out}")
    return 0


def _checkpoint_run(args, ckpt) -> None:
    """Fill the dataset flags the user left out from the checkpoint's training run."""
    config = ckpt.get("config") or {}
    extra = config.get("extra") or {}
    args.label = args.label or extra.get("label")
    args.points_as_skeleton = args.points_as_skeleton or extra.get("points_as_skeleton")
    args.size = args.size or config.get("size") or 256
    args.seed = config.get("seed", 0)


# -- evaluate -----------------------------------------------------------------------------
@_command(
    "evaluate",
    "OKS AP, PCK and pixel error of a checkpoint on the validation images of its run",
    "kpnb evaluate runs/demo/best.pth synthetic --out runs/demo/metrics.json",
)
def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path)
    _dataset_args(p, from_checkpoint=True)
    p.add_argument("--out", type=Path, help="JSON to write (default: CHECKPOINT's folder)")
    p.add_argument("--sigmas", type=positive_float, nargs="+", help="OKS sigma per keypoint")
    p.add_argument("--all", action="store_true", help="every image, not only validation ones")


@add_evaluate_arguments.runner
def run_evaluate(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from kpnb.dataset import KeypointDataset, collate_fn, default_workers, split_indices
    from kpnb.evaluate import evaluate
    from kpnb.model import load_checkpoint_model
    from kpnb.transforms import eval_transforms

    _positive("size", args.size)
    model, ckpt = load_checkpoint_model(args.checkpoint, args.device)
    _checkpoint_run(args, ckpt)
    ann, root, label = _load_for_training(args)
    skeleton = ckpt["skeleton_obj"]
    if ann.skeletons[label].keypoints != skeleton.keypoints:
        raise KpnbError(f"the checkpoint's keypoints {list(skeleton.keypoints)} differ from "
                         f"{label!r}'s {list(ann.skeletons[label].keypoints)}")  # fmt: skip
    # the run's own split (its seed), so these are exactly the images it validated on
    indices = None if args.all else split_indices(ann, seed=args.seed)[1]
    ds = KeypointDataset(ann, root, label, eval_transforms(args.size), indices=indices,
                         skip_missing=args.skip_missing)  # fmt: skip
    workers = default_workers() if args.workers is None else args.workers
    loader = DataLoader(ds, batch_size=args.batch_size, collate_fn=collate_fn, num_workers=workers)
    result = evaluate(model, loader, skeleton, args.sigmas)
    out = args.out or args.checkpoint.with_name("metrics.json")
    result.to_json(out)
    print(f"{len(ds)} {'images' if args.all else 'validation images'} at {args.size} px")
    print(pd_table(result.metrics))
    print()
    print(result.per_keypoint.round(3).to_string())
    print(f"\nwrote {out}")
    return 0


def pd_table(metrics: dict) -> str:
    """`metrics` as aligned lines; a missing value (None) shows as n/a."""
    def cell(v):
        return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    return "\n".join(f"{k:>18s}  {cell(v)}" for k, v in metrics.items())


# -- predict ------------------------------------------------------------------------------
@_command(
    "predict",
    "detect keypoints in images and write CVAT XML (pre-annotations) or COCO results",
    "kpnb predict runs/demo/best.pth photos/*.jpg --out preds.xml --viz preds/",
)
def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path)
    p.add_argument("images", type=Path, nargs="+", help="image files")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help=".xml: CVAT for images 1.1 to import into CVAT; .json: COCO results",
    )
    p.add_argument("--viz", type=Path, help="also draw each image's predictions into this folder")
    p.add_argument("--score-threshold", type=fraction, default=0.5, help="default: 0.5")
    p.add_argument("--label", default=None, help="label name to write (default: checkpoint's)")
    p.add_argument("--images-root", type=Path, help="IMAGES are relative to this folder")
    p.add_argument("--skip-missing", action="store_true",
                   help="leave out image files that do not exist instead of failing")
    p.add_argument("--annotations", type=Path, metavar="EXPORT",
                   help=".json out: take image ids from this export's images (matched by "
                   "file name), so the results load against it in pycocotools")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=4,
                   help="images per batch (default: 4)")  # fmt: skip
    p.add_argument("--workers", type=nonnegative_int,
                   help="image loading workers (default: cores - 1)")  # fmt: skip
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")


def _export_image_ids(source: Path, paths: list[Path], images_root: Path | None) -> list[int]:
    """The export's image id of each path, matched by its name inside the export (or its
    file name when that is unique)."""
    from kpnb.data import get_dataset, read_annotations

    root = get_dataset(source)
    ann = read_annotations(root)
    names = ann.images["name"].astype(str).str.replace("\\", "/", regex=False)
    by_name = dict(zip(names, ann.images["image_id"].astype(int), strict=True))
    base = names.map(lambda n: n.rsplit("/", 1)[-1])
    unique = base[~base.duplicated(keep=False)]
    by_base = dict(zip(unique, ann.images.loc[unique.index, "image_id"].astype(int), strict=True))
    folder = images_root or (root if root.is_dir() else root.parent)
    ids = []
    for path in paths:
        rel = None
        for top in (folder / "images", folder):
            try:
                rel = path.resolve().relative_to(top.resolve()).as_posix()
                break
            except ValueError:
                continue
        found = by_name.get(rel) if rel else None
        found = found if found is not None else by_base.get(path.name)
        if found is None:
            raise KpnbError(f"--annotations {source}: no image named {rel or path.name!r} in "
                             "it; predict images of that export, or leave --annotations "
                             "out")  # fmt: skip
        ids.append(int(found))
    return ids


@add_predict_arguments.runner
def run_predict(args: argparse.Namespace) -> int:
    from PIL import Image
    from tqdm import tqdm

    from kpnb.evaluate import predict
    from kpnb.images import image_size, load_image
    from kpnb.model import load_checkpoint_model

    if args.out.suffix.lower() not in (".xml", ".json"):
        raise KpnbError(f"--out {args.out}: use .xml (CVAT) or .json (COCO results)")
    if args.images_root is not None:
        args.images = [p if p.is_absolute() else args.images_root / p for p in args.images]
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing and not args.skip_missing:
        raise FileNotFoundError(f"no such image files: {', '.join(missing[:10])}; "
                                "pass --skip-missing to leave them out")  # fmt: skip
    if missing:
        log.warning("left out %d missing image files, e.g. %s", len(missing), missing[0])
        args.images = [p for p in args.images if p.is_file()]
    image_ids = None
    if args.annotations is not None:
        image_ids = _export_image_ids(args.annotations, args.images, args.images_root)
    model, ckpt = load_checkpoint_model(args.checkpoint, args.device)
    skeleton = ckpt["skeleton_obj"]
    label = args.label or (ckpt.get("config") or {}).get("extra", {}).get("label") or "object"
    with tqdm(total=len(args.images), desc="predict", unit="img", file=sys.stderr) as bar:
        preds = predict(model, [str(p) for p in args.images], skeleton, label,
                        score_threshold=args.score_threshold, batch_size=args.batch_size,
                        num_workers=args.workers, on_batch=bar.update)  # fmt: skip
    sizes = [image_size(p) for p in args.images]
    _write_predictions(preds, args.images, sizes, skeleton, label, args.out, image_ids)
    if args.viz:
        from kpnb.viz import draw_instances

        args.viz.mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(args.images):
            rows = preds[preds["image_index"] == i]
            arr = rows[["x", "y"]].to_numpy().reshape(-1, skeleton.num_keypoints, 2)
            picture = draw_instances(Image.fromarray(load_image(path)), arr, skeleton)
            picture.save(args.viz / f"{path.stem}.png")
    print(f"{preds['instance_id'].nunique()} instances in {len(args.images)} images -> {args.out}")
    return 0


def _write_predictions(preds, paths, sizes, skeleton, label, out: Path, image_ids=None) -> None:
    import json

    from kpnb._io import atomic_path
    from kpnb.evaluate import predictions_to_annotations, predictions_to_coco

    if out.suffix.lower() == ".json":
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(predictions_to_coco(preds, image_ids)))
        return
    from kpnb.cvat import write_cvat

    ann = predictions_to_annotations(preds, [p.name for p in paths], sizes, skeleton, label)
    write_cvat(ann, out)


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
    ("kpnb.tables.points_to_skeleton(annotations, name)", "--points-as-skeleton NAME"),
    ("kpnb.tables.points_to_skeleton", "--points-as-skeleton NAME"),
    ("pass flip_pairs", "pass --flip-pairs"),
    ("flip_pairs=", "--flip-pairs"),
    ("skeletons_only=True", "--skeletons-only"),
)


def _cli_message(msg: str) -> str:
    """`msg` with Python parameter names replaced by the CLI flags that set them."""
    for python, flag in _FLAGS:
        msg = msg.replace(python, flag)
    return msg


_INPUT_ERRORS = (KpnbError, FileNotFoundError, PermissionError, IsADirectoryError,
                 NotADirectoryError, FileExistsError)  # fmt: skip


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
