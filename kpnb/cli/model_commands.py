"""``kpnb train`` and ``evaluate``: the commands that train and score a model."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from kpnb.cli._base import (
    _command,
    _keyframes_arg,
    _points_args,
    nonnegative_int,
    positive_float,
    positive_int,
)
from kpnb.errors import KpnbError


# -- train --------------------------------------------------------------------------------
def _dataset_args(p: argparse.ArgumentParser, *, from_checkpoint: bool = False) -> None:
    """DATA, how to read it, and the flags train and evaluate share (device, OKS sigmas);
    `from_checkpoint`: defaults are the training run's."""
    run = "default: the checkpoint's" if from_checkpoint else None
    p.add_argument("data", help="CVAT or COCO export (folder, zip, file), or 'synthetic'")
    _keyframes_arg(p)
    p.add_argument("--label", help=f"skeleton label to learn ({run or 'default: the first'})")
    p.add_argument(
        "--all-categories",
        action="store_true",
        help="learn every skeleton label sharing --label's layout as one (a COCO category "
        "per species); the labels used are printed",
    )
    _points_args(p)
    p.add_argument(
        "--images-root",
        type=Path,
        help="folder holding the images (default: beside the annotations)",
    )
    p.add_argument(
        "--skip-missing",
        action="store_true",
        help="leave out images whose files are missing instead of failing",
    )
    p.add_argument(
        "--rescale-images",
        action="store_true",
        help="resize an image whose size differs from the one its export declares (default: "
        "refuse it, since its points would land elsewhere)",
    )
    p.add_argument(
        "--flip-pairs",
        type=_flip_pair,
        nargs="+",
        metavar="LEFT:RIGHT",
        help="left/right keypoint pairs for the training flip, e.g. "
        "'L_Eye:R_Eye' (default: paired from the names)",
    )
    p.add_argument(
        "--size",
        type=positive_int,
        help=f"square image size ({run or 'default: the preset’s, 192 for fast, else 256'})",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None if run is None else 2,
        help="images per step (default: " + ("the preset's)" if run is None else "2)"),
    )
    p.add_argument(
        "--workers", type=nonnegative_int, help="data loader workers (default: cores - 1)"
    )
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--sigmas", type=positive_float, nargs="+", help="OKS sigma per keypoint")


def _flip_pair(text: str) -> tuple[str, str]:
    """argparse type of --flip-pairs: ``LEFT:RIGHT``."""
    left, sep, right = text.partition(":")
    if not (sep and left and right):
        raise argparse.ArgumentTypeError(f"{text!r}: write each pair as LEFT:RIGHT")
    return left, right


def _load_for_training(args):
    """(annotations, image root, skeleton label) for DATA, as train and evaluate see it:
    `kpnb.data.open_export` with the flags; prints which labels are used."""
    from kpnb.data import open_export

    root, ann, label = open_export(
        args.data,
        label=args.label,
        skeleton_name=None,  # no silent skeleton: plain points need --points-as-skeleton
        points_as_skeleton=args.points_as_skeleton,
        group_by=args.group_by,
        all_categories=args.all_categories,
        flip_pairs=args.flip_pairs,
        keyframes_only=args.keyframes_only,
        images_root=args.images_root,
    )
    if args.points_as_skeleton:
        print(
            f"points grouped into {args.points_as_skeleton!r} instances by "
            f"{ann.meta['points_grouping']}"
        )
    print(_labels_used(ann, label))
    return ann, root, label


def _labels_used(ann, label: str) -> str:
    """The line saying which skeleton labels train, and which share `label`'s layout."""
    merged = ann.meta.get("merged_labels")
    if merged:
        return f"training labels {merged} as one skeleton {label!r}"
    others = [n for n in ann.skeletons if n != label]
    line = f"training label {label!r}" + (f"; not used: {others}" if others else "")
    layout = next(names for names in ann.same_layouts() if label in names)
    if len(layout) > 1:
        alike = [n for n in layout if n != label]
        line += f" (--all-categories trains the labels sharing its layout: {alike})"
    return line


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    _dataset_args(p)
    p.add_argument(
        "--epochs", type=positive_int, help="default: as many as --minutes allows, else 10"
    )
    p.add_argument(
        "--minutes",
        type=positive_float,
        help="time budget: the schedule fits it and training stops when it is used "
        "up (default: none)",
    )
    p.add_argument("--out", type=Path, required=True, help="run folder for checkpoints/history")
    p.add_argument(
        "--weights",
        default="coco",
        help="coco (download torchvision's COCO weights), none, or a .pth path "
        "(default: coco, falling back to random with a warning when offline)",
    )
    p.add_argument(
        "--preset",
        choices=("auto", "cpu", "fast", "torchvision", "tiny"),
        help="the network and its recipe (default: auto; with --resume, the run's): auto "
        "(torchvision on CUDA; on a CPU, cpu with pretrained weights, else fast), cpu "
        "(ResNet-50 at --size, fewer proposals), fast (ResNet-18, small keypoint head, "
        "batch 8, 192 px: learns from random weights on a CPU), torchvision (640-800 px) "
        "or tiny (smoke runs, not accuracy)",
    )
    p.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="peak one-cycle learning rate (default: 1e-4 to fine-tune pretrained "
        "weights, the preset's own from random ones: 1e-3 for fast)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/last.pth with the run's own settings: flags left out are "
        "the run's, flags that differ are refused (an OUT that is not empty is refused "
        "unless --resume or --overwrite)",
    )
    p.add_argument(
        "--seed", type=nonnegative_int, help="seed of the run and of the split (default: 0)"
    )


@_command(
    "train",
    "fine-tune Keypoint R-CNN on an export and keep the best checkpoint",
    "kpnb train synthetic --epochs 1 --size 256 --out runs/demo --weights none\n"
    "  kpnb train my_export.zip --epochs 30 --out runs/v1 --weights coco --minutes 60\n"
    "  torchrun --nproc_per_node 2 -m kpnb train synthetic --epochs 5 --out runs/ddp",
    add_train_arguments,
)
def run_train(args: argparse.Namespace) -> int:
    from kpnb.checkpoint import Checkpoint
    from kpnb.dataset import make_loaders
    from kpnb.model import PRESETS, build_model, model_from_build, training_recipe
    from kpnb.train import TrainConfig, check_run_folder, fit

    resume = args.out / "last.pth" if args.resume else None
    if resume is not None and not resume.is_file():
        raise FileNotFoundError(f"{resume}: nothing to resume; train without --resume first")
    check_run_folder(args.out, overwrite=args.overwrite, resume=resume)  # before the data
    run = None if resume is None else Checkpoint.load(resume, resume=True)
    if run is not None:
        _take_the_runs_flags(args, run)
    ann, root, label = _load_for_training(args)
    skeleton = ann.skeletons[label]
    if args.sigmas is not None and len(args.sigmas) != skeleton.num_keypoints:  # before the model
        raise KpnbError(
            f"--sigmas: {len(args.sigmas)} values for {skeleton.num_keypoints} "
            f"keypoints {list(skeleton.keypoints)}"
        )
    if run is not None:  # the network the run trained, whatever --weights says
        model = model_from_build(run.build)
    else:
        weights = None if str(args.weights).lower() == "none" else args.weights
        model = build_model(
            skeleton.num_keypoints,
            weights=weights,
            size=args.size,
            preset=args.preset or "auto",
            allow_random=args.weights == "coco",
        )
    # the preset's image size and batch unless given (kpnb.model.PRESETS)
    args.size = model.kpnb_build["size"] if run is None else args.size
    args.batch_size = args.batch_size or training_recipe(model)["batch_size"]
    train_loader, val_loader = make_loaders(
        ann,
        root,
        label,
        size=args.size,
        batch_size=args.batch_size,
        num_workers=args.workers,
        seed=args.seed or 0,
        skip_missing=args.skip_missing,
        rescale_images=args.rescale_images,
    )
    if not any(len(item.boxes) for item in train_loader.dataset.items):
        raise KpnbError(
            f"{args.data}: no instance of {label!r} in the training images; nothing to learn"
        )
    build = model.kpnb_build
    print(
        f"flip: {skeleton.flip_summary()}\nmodel: preset {build['preset']} "
        f"({PRESETS[build['preset']].about}), {args.size} px, batch {args.batch_size}"
    )
    history = fit(
        model,
        train_loader,
        val_loader,
        skeleton,
        TrainConfig(
            epochs=args.epochs or (None if args.minutes else 10),
            lr=args.lr,
            seed=args.seed or 0,
            size=args.size,
            max_minutes=args.minutes,
            sigmas=args.sigmas,
        ),
        out_dir=args.out,
        device=args.device,
        resume=resume,
        overwrite=args.overwrite,
        data=str(args.data),
        points_as_skeleton=args.points_as_skeleton,
    )
    if history and int(os.environ.get("RANK", 0)) == 0:  # under torchrun, rank 0 reports
        kept = ("loss", "AP", "PCK@0.1")
        shown = {k: round(v, 4) for k, v in history[-1].items() if k in kept and v is not None}
        print(f"trained {len(history)} epochs on {len(train_loader.dataset)} images: {shown}")
        print(f"checkpoints and history in {args.out}")
    return 0


def _take_the_runs_flags(args, run) -> None:
    """--resume: each flag left out takes the run's value; a flag given with another value
    than the run's is refused, naming the flag and both values (a new seed would change
    the split mid-run, a new size or lr the images and the schedule)."""
    config = run.config
    runs = {"preset": run.build["preset"]}
    runs |= {name: getattr(config, name) for name in ("size", "lr", "seed", "batch_size", "epochs")}
    runs |= {"minutes": config.max_minutes, "sigmas": config.sigmas}
    if run.label is not None:  # a run made in Python may not know its label
        runs["label"] = run.label
    if run.data is not None:
        runs["points_as_skeleton"] = run.data.points_as_skeleton
    for name, was in runs.items():
        given = getattr(args, name)
        if given is None:
            setattr(args, name, was)
        elif given != was:
            flag = "--" + name.replace("_", "-")
            raise KpnbError(
                f"--resume: {flag} {given} differs from the run's {flag} {was} "
                f"({args.out / 'last.pth'}); leave {flag} out to continue the run as it was, "
                "or train a new run into another --out"
            )


# -- evaluate -----------------------------------------------------------------------------
def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path)
    _dataset_args(p, from_checkpoint=True)
    p.add_argument(
        "--out",
        type=Path,
        help="JSON to write (default: metrics.json in CHECKPOINT's folder); an existing "
        "file is refused unless --overwrite",
    )
    p.add_argument("--all", action="store_true", help="every image, not only validation ones")


@_command(
    "evaluate",
    "OKS AP, PCK and pixel error of a checkpoint on the validation images of its run",
    "kpnb evaluate runs/demo/best.pth synthetic --out runs/demo/metrics.json",
    add_evaluate_arguments,
)
def run_evaluate(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from kpnb.dataset import KeypointDataset, collate_fn, default_workers
    from kpnb.evaluate import evaluate
    from kpnb.io import check_output
    from kpnb.model import load_checkpoint_model
    from kpnb.transforms import eval_transforms

    out = args.out or args.checkpoint.with_name("metrics.json")
    check_output(out, overwrite=args.overwrite)  # before the model and the data
    model, ckpt = load_checkpoint_model(args.checkpoint, args.device)
    # the dataset flags left out are the training run's
    args.label = args.label or ckpt.label
    run_points = ckpt.data.points_as_skeleton if ckpt.data else None
    args.points_as_skeleton = args.points_as_skeleton or run_points
    args.size = args.size or ckpt.config.size
    ann, root, label = _load_for_training(args)
    skeleton = ckpt.skeleton
    if ann.skeletons[label].keypoints != skeleton.keypoints:
        raise KpnbError(
            f"the checkpoint's keypoints {list(skeleton.keypoints)} differ from "
            f"{label!r}'s {list(ann.skeletons[label].keypoints)}"
        )
    indices = None if args.all else _validation_images(args, ann, ckpt)
    ds = KeypointDataset(
        ann,
        root,
        label,
        eval_transforms(args.size),
        indices=indices,
        skip_missing=args.skip_missing,
        rescale_images=args.rescale_images,
    )
    workers = default_workers() if args.workers is None else args.workers
    loader = DataLoader(ds, batch_size=args.batch_size, collate_fn=collate_fn, num_workers=workers)
    result = evaluate(model, loader, skeleton, args.sigmas)
    result.to_json(out)
    print(f"{len(ds)} {'images' if args.all else 'validation images'} at {args.size} px")
    for name, v in result.metrics.items():  # aligned; a missing value (None) shows as n/a
        print(f"{name:>18s}  {'n/a' if v is None else f'{v:.4f}' if isinstance(v, float) else v}")
    print(f"\n{result.per_keypoint.round(3).to_string()}\n\nwrote {out}")
    return 0


def _validation_images(args, ann, ckpt) -> list[int]:
    """The ``image_index`` of the images the run validated on (its recorded ids; a run
    made in Python without them: its seed's split), refused when DATA lacks some."""
    from kpnb.dataset import split_indices

    if ckpt.data is None or not ckpt.data.val:
        return split_indices(ann, seed=ckpt.config.seed)[1]
    found = ann.images[ann.images["image_id"].isin(ckpt.data.val)]
    if len(found) != len(set(ckpt.data.val)):
        raise KpnbError(
            f"{args.data}: holds {len(found)} of the {len(ckpt.data.val)} images the run "
            f"validated on (by image id); evaluate on the run's export, or pass --all",
            param="data",
        )
    return found["image_index"].tolist()
