"""The tidy tables as a torch ``Dataset`` of Keypoint R-CNN samples.

Each image's arrays are made once, at construction, so ``__getitem__`` does no pandas work:
it loads the image (`kpnb.images.load_image`), runs the transforms, then makes it float.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from kpnb.boxes import BOX_MARGIN, MIN_BOX, boxes_from_points
from kpnb.errors import KpnbError
from kpnb.images import find_image, load_image
from kpnb.skeleton import Skeleton, unpaired_sides
from kpnb.tables import Annotations
from kpnb.transforms import eval_transforms, make_sample, train_transforms

__all__ = [
    "KeypointDataset",
    "collate_fn",
    "split_indices",
    "make_loaders",
    "check_export",
    "instance_boxes",
]

log = logging.getLogger(__name__)


@dataclass
class _Item:
    path: Path
    image_id: int
    size: tuple[int, int]  # (H, W) from the annotations
    boxes: np.ndarray  # [N, 4] float32 xyxy
    keypoints: np.ndarray  # [N, K, 2] float32
    visibility: np.ndarray  # [N, K] uint8
    area: np.ndarray | None = None  # [N] the file's own areas (COCO), NaN where none


def _side(value) -> float:
    """An image side from the tables; unknown (NA) is ``inf``: no clipping, no minimum."""
    return float(value) if pd.notna(value) else np.inf


def _instances(
    ann: Annotations, label: str, images: pd.DataFrame, margin: float, min_box: float
) -> dict:
    """Per image of `images` holding instances of `label`: their ``ids``, ``xy``, ``vis``,
    float32 xyxy ``boxes`` and ``own``, True where the box is grouped with the instance
    rather than made from its points (`kpnb.boxes.boxes_from_points`)."""
    k = ann.skeletons[label].num_keypoints
    kp = ann.keypoints[ann.keypoints["label"] == label]
    kp = kp[kp["image_index"].isin(images["image_index"])]
    kp = kp.sort_values(["image_index", "instance_id", "point_index"])
    grouped, sizes = ann.grouped_boxes(), images.set_index("image_index")
    out = {}
    for image, rows in kp.groupby("image_index", sort=False):
        n = rows["instance_id"].nunique()
        if len(rows) != n * k:
            raise KpnbError(
                f"label {label!r}: {ann.describe_image(int(image))} has "
                f"{len(rows)} points for {n} instances, not {k} each"
            )
        xy = rows[["x", "y"]].to_numpy(np.float32).reshape(n, k, 2)
        vis = rows["visibility"].to_numpy(np.uint8).reshape(n, k)
        w, h = _side(sizes.at[image, "width"]), _side(sizes.at[image, "height"])
        boxes = boxes_from_points(xy, vis, w, h, margin=margin, min_fraction=min_box)
        boxes, own = boxes.astype(np.float32), np.zeros(n, bool)
        for i, g in enumerate(rows["group_id"].to_numpy()[::k]):
            box = grouped.get((image, int(g))) if g else None
            if box is not None:
                boxes[i], own[i] = box, True
        out[image] = rows["instance_id"].to_numpy()[::k], xy, vis, boxes, own
    return out


def _usable(ann: Annotations) -> tuple[list[str], list[str]]:
    """Labels kpnb trains on (skeletons, multi-point), and one-point labels to combine first."""
    multi = ann.multi_point_labels()
    return list(ann.skeletons) + multi, [lab for lab in ann.plain_labels() if lab not in multi]


def _training_view(ann: Annotations, label: str, flip_pairs=None) -> Annotations:
    """`ann` with `label` usable as a skeleton (with explicit left/right `flip_pairs` if
    given): a multi-coordinate ``<points>`` label becomes one instance per shape (points
    ``1..n``); any other non-skeleton is refused."""
    from kpnb.grouping import points_as_instances

    if label not in ann.skeletons and label in ann.multi_point_labels():
        ann = points_as_instances(ann, [label])
    if label in ann.skeletons:
        if flip_pairs is None:
            return ann
        skeleton = ann.skeletons[label].with_flip_pairs(flip_pairs)
        return replace(ann, skeletons={**ann.skeletons, label: skeleton})
    usable, one_point = _usable(ann)
    hint = ""
    if one_point:
        hint = (
            f"; one-point <points> labels {one_point} need combining first: "
            "kpnb.grouping.points_to_skeleton(annotations, name), or {points_as_skeleton}"
        )
    raise KpnbError(
        f"{label!r} is not a skeleton label (skeletons and multi-point labels: {usable}){hint}",
        params={"points_as_skeleton": "NAME"} if one_point else None,
        param="label",
    )


class KeypointDataset(Dataset):
    """Keypoint R-CNN samples for one skeleton label of an export.

    `annotations` come from `kpnb.cvat.read_cvat`, `kpnb.coco.read_coco` or
    `kpnb.synthetic.synthesize` (one-point-per-label layouts first need
    `kpnb.grouping.points_to_skeleton`); `image_root` is the export folder (holding
    ``images/``); `skeleton_label` a skeleton (or multi-coordinate ``<points>``) label;
    `transforms` a v2 pipeline on ``(image, target)`` (`kpnb.transforms`; ``None`` keeps the
    original size); `indices` the ``image_index`` values to include (default all).
    `skip_missing` leaves out images whose file is missing instead of failing;
    `rescale_images` resizes an image whose size differs from the annotations' (default:
    refused). `box_margin` and `min_box` make the box of an instance with no grouped box
    (`kpnb.boxes.boxes_from_points`; `kpnb.coco.to_coco` writes the defaults' box).

    ``dataset[i]`` is ``(image, target)``: ``image`` float32 ``[3, H, W]`` in 0-1;
    ``target`` has ``boxes`` float32 ``[N, 4]`` xyxy, ``labels`` int64 ``[N]`` (1),
    ``keypoints`` float32 ``[N, K, 3]`` (x, y, v), ``image_id``, ``area`` (the file's own,
    scaled with the image, else the box's), ``iscrowd``. A box without labelled points is a
    box-only target; an image with no instance a negative with empty tensors. A KpnbError
    names a label that is not a skeleton, or every missing or unreadable image file.
    """

    def __init__(
        self,
        annotations: Annotations,
        image_root: str | os.PathLike,
        skeleton_label: str,
        transforms: Callable | None = None,
        *,
        indices: Sequence[int] | None = None,
        skip_missing: bool = False,
        box_margin: float = BOX_MARGIN,
        min_box: float = MIN_BOX,
        rescale_images: bool = False,
    ):
        self.rescale_images = rescale_images
        annotations = _training_view(annotations, skeleton_label)
        self.skeleton: Skeleton = annotations.skeletons[skeleton_label]
        self.label = skeleton_label
        self.transforms = transforms
        self.root = Path(image_root)
        images = annotations.images
        if indices is not None:
            images = images[images["image_index"].isin(list(indices))]
        self.items, missing = self._build(annotations, images, box_margin, min_box)
        if missing:
            if not skip_missing:
                listed = "\n  ".join(missing[:20])
                more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
                raise KpnbError(
                    f"{len(missing)} of {len(images)} image files are missing or unreadable "
                    f"under {self.root}:\n  {listed}{more}\nfix {{image_root}}, or pass "
                    "{skip_missing} to leave them out",
                    params={"image_root": None, "skip_missing": True},
                )
            log.warning(
                "left out %d images whose files are missing under %s", len(missing), self.root
            )
        self.skipped = len(missing)

    def _build(self, ann: Annotations, images: pd.DataFrame, margin: float, min_box: float):
        """An `_Item` per image of `images` whose file is there, and the missing names."""
        k = self.skeleton.num_keypoints
        instances = _instances(ann, self.label, images, margin, min_box)
        none = (np.zeros(0, int), np.zeros((0, k, 2), np.float32), np.zeros((0, k), np.uint8))
        none += (np.zeros((0, 4), np.float32), np.zeros(0, bool))
        areas, coco = {}, ann.meta.get("coco_annotations")
        if coco is not None:  # instance_id -> area, as a COCO file gave it
            area = pd.to_numeric(coco["area"], errors="coerce").tolist()
            areas = dict(zip(coco["instance_id"].tolist(), area, strict=True))
        items, missing = [], []
        for img in images.itertuples(index=False):
            path = find_image(self.root, str(img.name), img.subset)
            if path is None or not os.access(path, os.R_OK) or not path.stat().st_size:
                missing.append(f"{str(img.name)} (image id {int(img.image_id)})")
                continue
            ids, xy, vis, boxes, own = instances.get(img.image_index, none)
            # An instance teaches something with a labelled point, or with its own box
            # (a box-only target, like COCO's persons with num_keypoints 0).
            keep = (vis > 0).any(axis=1) | own
            area = np.array([areas.get(int(i), np.nan) for i in ids[keep]], np.float32)
            size = (int(img.height), int(img.width)) if pd.notna(img.height) else (0, 0)
            xy = np.nan_to_num(xy[keep])  # absent points: any finite value, v=0 says ignore
            arrays = (boxes[keep], xy, vis[keep], area if areas else None)
            items.append(_Item(path, int(img.image_id), size, *arrays))
        return items, missing

    def __len__(self) -> int:
        return len(self.items)

    def load_image(self, index: int) -> torch.Tensor:
        """The uint8 ``[3, H, W]`` image of item `index`."""
        item = self.items[index]
        array = load_image(item.path, expect=item.size[::-1], rescale=self.rescale_images)
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def sample(self, index: int):
        """The untransformed v2 sample ``(Image, target)`` (for pictures and tests)."""
        item = self.items[index]
        labels = np.ones(len(item.boxes))
        return make_sample(
            self.load_image(index), item.boxes, labels, item.keypoints, item.visibility
        )

    def __getitem__(self, index: int):
        image, target = self.sample(index)
        item = self.items[index]
        before = target["boxes"].as_subclass(torch.Tensor).clone()
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        area = None
        if item.area is not None and len(target["boxes"]) == len(before):
            # The file's area, scaled as the transforms scaled the box (resize and pad).
            after = target["boxes"].as_subclass(torch.Tensor)
            ratio = _box_area(after) / _box_area(before).clamp(min=1e-6)
            file_area = torch.from_numpy(item.area)
            area = torch.where(torch.isnan(file_area), _box_area(after), file_area * ratio)
        return to_model_input(image, target, item.image_id, area)


def _box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def to_model_input(image, target, image_id: int, area: torch.Tensor | None = None):
    """A v2 sample as Keypoint R-CNN wants it: float image, ``[N, K, 3]`` float32 keypoints
    (``area``: the instances' areas, default the boxes')."""
    image = image.as_subclass(torch.Tensor).to(torch.float32).div_(255)
    boxes = target["boxes"].as_subclass(torch.Tensor).to(torch.float32)
    xy = target["keypoints"].as_subclass(torch.Tensor).to(torch.float32)
    vis = target["visibility"].to(torch.float32)
    keypoints = torch.cat([xy, vis[..., None]], dim=-1)
    return image, {
        "boxes": boxes.reshape(-1, 4),
        "labels": target["labels"].to(torch.int64),
        "keypoints": keypoints.reshape(len(boxes), xy.shape[-2], 3),
        "image_id": torch.tensor(image_id, dtype=torch.int64),
        "area": _box_area(boxes) if area is None else area.to(torch.float32),
        "iscrowd": torch.zeros(len(boxes), dtype=torch.int64),
    }


def collate_fn(batch):
    """Detection batches are lists: ``(images, targets)`` tuples of per-image entries."""
    return tuple(zip(*batch, strict=True))


_TRAIN_NAMES = {"train", "training", "default"}
_VAL_NAMES = {"val", "valid", "validation", "test", "dev"}


def split_indices(
    ann: Annotations, val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Train and validation ``image_index`` lists: by CVAT subset when the export has them
    (test counts as validation), else a seeded random split of `val_fraction` that keeps at
    least one image on each side (a KpnbError for fewer than 2 images)."""
    images = ann.images
    if len(images) < 2:
        raise KpnbError(
            f"{len(images)} image(s): training needs at least 2 (one to train on, "
            "one to validate on); annotate more images"
        )
    subsets = images["subset"].astype(object).str.lower()
    if subsets.notna().any():
        is_val = subsets.isin(_VAL_NAMES)
        is_train = subsets.isin(_TRAIN_NAMES)
        if is_val.any() and is_train.any():
            return (
                images.loc[is_train, "image_index"].tolist(),
                images.loc[is_val, "image_index"].tolist(),
            )
        log.info(
            "subsets %s are not a train/validation pair; splitting at random",
            sorted(subsets.dropna().unique()),
        )
    idx = images["image_index"].to_numpy()
    order = np.random.default_rng(seed).permutation(len(idx))
    n_val = min(len(idx) - 1, max(1, int(round(len(idx) * val_fraction))))
    return sorted(idx[order[n_val:]].tolist()), sorted(idx[order[:n_val]].tolist())


def default_workers() -> int:
    """Loader workers: one core stays with the model (on 2 cores that leaves 1)."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def make_loaders(
    ann: Annotations,
    image_root: str | os.PathLike,
    skeleton_label: str,
    *,
    size: int = 256,
    batch_size: int = 2,
    num_workers: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    policy: str = "iou_crop",
    skip_missing: bool = False,
    flip_pairs: Sequence[tuple] | None = None,
    flip: str = "swap",
    rescale_images: bool = False,
) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders with the preset transforms (train shuffled, seeded).

    The training flip swaps the skeleton's left/right pairs (`flip_pairs`, names or indices,
    else derived from the names; with none the flip is off, logged). ``flip="plain"`` is
    torchvision's ``v2.RandomHorizontalFlip`` (swaps nothing), ``"off"`` never flips."""
    ann = _training_view(ann, skeleton_label, flip_pairs)
    skeleton = ann.skeletons[skeleton_label]
    perm = skeleton.flip_indices if skeleton.flip_pairs else None
    if perm is None:
        log.info("%r: %s", skeleton_label, skeleton.flip_summary())
    lonely = unpaired_sides(skeleton.keypoints, skeleton.pairs)
    if lonely:
        log.warning(
            "%r: keypoints %s say left or right but have no partner; the flip "
            "leaves them in place (pass flip_pairs to pair them)",
            skeleton_label,
            lonely,
        )
    train_idx, val_idx = split_indices(ann, val_fraction, seed)

    dataset = partial(
        KeypointDataset,
        ann,
        image_root,
        skeleton_label,
        skip_missing=skip_missing,
        rescale_images=rescale_images,
    )
    train_ds = dataset(train_transforms(size, perm, policy=policy, flip=flip), indices=train_idx)
    val_ds = dataset(eval_transforms(size), indices=val_idx)
    workers = default_workers() if num_workers is None else num_workers
    gen = torch.Generator().manual_seed(seed)
    # pinned memory lets the copies to a GPU run asynchronously (non_blocking in fit)
    common = {
        "batch_size": batch_size,
        "collate_fn": collate_fn,
        "num_workers": workers,
        "persistent_workers": workers > 0,
        "pin_memory": torch.cuda.is_available(),
    }
    return (
        DataLoader(train_ds, shuffle=True, generator=gen, **common),
        DataLoader(val_ds, shuffle=False, **common),
    )


#: A box thinner than this many pixels, or than this share of the image's shorter side,
#: is too small for Keypoint R-CNN to learn from.
DEGENERATE_PX = 4.0
DEGENERATE_FRACTION = 0.02


def instance_boxes(
    ann: Annotations, label: str, *, box_margin: float = BOX_MARGIN, min_box: float = MIN_BOX
) -> pd.DataFrame:
    """The box every instance of `label` trains with, as the Dataset computes it: one row
    per instance with ``image_index``, ``instance_id``, ``xtl ytl xbr ybr``, ``source``
    (``"grouped"``: its own box; ``"points"``: made from its points) and ``degenerate``."""
    ann = _training_view(ann, label)
    sizes = ann.images.set_index("image_index")
    instances, out = _instances(ann, label, ann.images, box_margin, min_box), []
    for image, (ids, _, _, boxes, own) in instances.items():
        side = min(_side(sizes.at[image, "width"]), _side(sizes.at[image, "height"]))
        limit = max(DEGENERATE_PX, DEGENERATE_FRACTION * side if np.isfinite(side) else 0.0)
        thin = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) < limit
        for i, box, o, t in zip(ids.tolist(), boxes.tolist(), own, thin, strict=True):
            out.append((int(image), i, *box, "grouped" if o else "points", bool(t)))
    return pd.DataFrame(
        out,
        columns=["image_index", "instance_id", "xtl", "ytl", "xbr", "ybr", "source", "degenerate"],
    )


def _row(check: str, ok: bool, detail: str) -> dict:
    return {"check": check, "ok": bool(ok), "detail": detail}


def _check_skeleton(ann: Annotations, label: str, flip_pairs) -> list[dict]:
    """Instances, labelled points, boxes and flip pairs of the skeleton `label`."""
    view = _training_view(ann, label, flip_pairs)
    sk = view.skeletons[label]
    kp = view.keypoints[view.keypoints["label"] == label]
    n_inst = kp["instance_id"].nunique()
    edges = f"{len(sk.edges)} edges" if sk.edges else "no edges (pictures show points only)"
    visible = (kp["visibility"] > 0).mean() if len(kp) else 0.0
    boxes = instance_boxes(view, label)
    bad = boxes[boxes["degenerate"]]
    grouped = int((boxes["source"] == "grouped").sum())
    detail = (
        f"{grouped} of {len(boxes)} instances have their own box, "
        f"{len(boxes) - grouped} get one from their points"
    )
    if len(bad):
        first = bad.iloc[0]
        detail += (
            f"; {len(bad)} degenerate (thinner than {DEGENERATE_PX:g} px or "
            f"{DEGENERATE_FRACTION:.0%} of the image), e.g. "
            f"{view.describe_image(int(first['image_index']))}: "
            f"{first['xbr'] - first['xtl']:.1f} x {first['ybr'] - first['ytl']:.1f} px"
        )
    return [
        _row(
            "instances", n_inst > 0, f"{n_inst} instances of {sk.num_keypoints} keypoints, {edges}"
        ),
        _row("labelled points", visible > 0.5, f"{visible:.0%} of points are labelled (v > 0)"),
        _row("instance boxes", bad.empty, detail),
        _row("flip pairs", not unpaired_sides(sk.keypoints, sk.pairs), sk.flip_summary()),
    ]


def check_export(
    ann: Annotations,
    image_root: str | os.PathLike,
    skeleton_label: str | None = None,
    flip_pairs: Sequence[tuple] | None = None,
) -> pd.DataFrame:
    """Is this export ready to train on? One row per check (``ok`` and what was found):
    image files, a skeleton label and its instances, visible points, the boxes the model
    trains with (degenerate ones flagged), flip pairs, the split. Unused shapes are logged."""
    images = ann.images
    missing = [
        str(r.name)
        for r in images.itertuples(index=False)
        if find_image(Path(image_root), str(r.name), r.subset) is None
    ]
    found = f"{len(images) - len(missing)} of {len(images)} found"
    found += f"; missing e.g. {missing[:3]}" if missing else ""
    rows = [_row("image files", not missing, found)]
    usable, one_point = _usable(ann)
    label = skeleton_label or next(iter(usable), None)
    detail = (
        f"{label!r} of {usable}"
        if usable
        else f"none: for one <points> shape per keypoint ({one_point}) use "
        "kpnb.grouping.points_to_skeleton"
    )
    rows.append(_row("skeleton label", label in usable, detail))
    if label in usable:
        rows += _check_skeleton(ann, label, flip_pairs)
    try:
        train, val = split_indices(ann)
    except ValueError:
        train, val = list(images["image_index"]), []
    how = "by subset" if images["subset"].notna().any() else "seeded random"
    split = f"{len(train)} / {len(val)} images ({how})"
    rows.append(_row("train/validation split", len(val) > 0 and len(train) > 0, split))
    skipped = ann.meta.get("skipped") or {}
    if skipped:  # not a problem (kpnb trains on keypoints), but worth knowing
        log.info("shapes kpnb does not use: %s", ", ".join(f"{k}: {v}" for k, v in skipped.items()))
    return pd.DataFrame(rows).set_index("check")
