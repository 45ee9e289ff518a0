"""Keypoint-aware augmentation on torchvision transforms v2, on ``(image, target)`` samples
(`make_sample`). kpnb adds what v2 lacks: a flip that swaps left and right, and a last step
making points that left the canvas absent. Not for KeyPoints: ``cjm_torchvision_tfms``'
``RandomPixelCopy`` and ``CustomTrivialAugmentWide``, or v2's AutoAugment family.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

# cjm_torchvision_tfms for what v2 lacks: an IoU crop centred on a box (v2.RandomIoUCrop
# crops anywhere) and padding to a square (fill colour, random placement).
from cjm_torchvision_tfms.core import CustomRandomIoUCrop, PadSquare
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from kpnb.boxes import boxes_from_points
from kpnb.errors import KpnbError
from kpnb.skeleton import flip_indices

# cjm_pytorch_utils, imported by cjm_torchvision_tfms, calls logging.disable(logging.WARNING)
# on import, which silences every INFO and WARNING record in the process, kpnb's included.
if logging.root.manager.disable == logging.WARNING:
    logging.disable(logging.NOTSET)

__all__ = [
    "flip_indices",
    "KeypointHorizontalFlip",
    "IoUCropIfBoxes",
    "FinalizeKeypoints",
    "CentredPadSquare",
    "square",
    "train_transforms",
    "eval_transforms",
    "make_sample",
    "POLICIES",
    "FLIPS",
]


def make_sample(image: torch.Tensor, boxes, labels, keypoints, visibility):
    """Wrap plain tensors as a v2 sample: ``(Image, target)`` with ``boxes`` (BoundingBoxes
    xyxy ``[N, 4]``), ``labels`` ``[N]``, ``keypoints`` (KeyPoints ``[N, K, 2]`` in pixels)
    and ``visibility`` ``[N, K]`` (0/1/2); the image stays uint8 until the end."""
    size = tuple(image.shape[-2:])
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    keypoints = torch.as_tensor(keypoints, dtype=torch.float32)
    return tv_tensors.Image(image), {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=size),
        "labels": torch.as_tensor(labels, dtype=torch.int64),
        "keypoints": tv_tensors.KeyPoints(keypoints, canvas_size=size),
        "visibility": torch.as_tensor(visibility, dtype=torch.uint8),
    }


class KeypointHorizontalFlip(v2.Transform):
    """Mirror the sample left-right with probability `p`, then swap left/right keypoints.

    v2's own flip mirrors KeyPoints as ``W - 1 - x`` and swaps nothing; CVAT and COCO
    coordinates are continuous, so points are mirrored as ``W - x`` like boxes, and permuted
    by `flip_perm` (`flip_indices`) so ``left_eye`` stays the animal's left eye.
    """

    def __init__(self, flip_perm: Sequence[int], p: float = 0.5):
        super().__init__()
        self.flip_perm = torch.as_tensor(list(flip_perm), dtype=torch.long)
        self.p = p

    def forward(self, image, target):
        return self.flip(image, target) if torch.rand(()) < self.p else (image, target)

    def flip(self, image, target):
        """Always flip (the deterministic core, used by tests and before/after pictures)."""
        target = dict(target)
        image = F.horizontal_flip(image)
        target["boxes"] = F.horizontal_flip(target["boxes"])
        kps = target["keypoints"]
        mirrored = kps.as_subclass(torch.Tensor).clone()
        mirrored[..., 0] = kps.canvas_size[1] - mirrored[..., 0]
        if len(self.flip_perm) and mirrored.shape[-2] == len(self.flip_perm):
            mirrored = mirrored[..., self.flip_perm, :]
            target["visibility"] = target["visibility"][..., self.flip_perm]
        target["keypoints"] = tv_tensors.wrap(mirrored, like=kps)
        return image, target


class IoUCropIfBoxes(v2.Transform):
    """cjm's `CustomRandomIoUCrop` where it can run, else the image unchanged: it needs a box
    to centre on, loops forever past about 6.7:1 (no aspect ratio fits, cjm 0.0.26) and
    divides by zero under 4 px high."""

    def __init__(self):
        super().__init__()
        self.crop = CustomRandomIoUCrop()

    def croppable(self, height: int, width: int) -> bool:
        """Whether some crop of this image has an allowed aspect ratio (and a side >= 1)."""
        c = self.crop
        if min(height, width) * c.min_scale < 1:
            return False
        # the loop's sampled ratio spans (narrowest, widest); a 10% margin on the overlap
        # keeps the chance of a draw landing in it far from zero
        widest = width * c.max_scale / (height * c.min_scale)
        narrowest = width * c.min_scale / (height * c.max_scale)
        return widest > c.min_aspect_ratio * 1.1 and narrowest < c.max_aspect_ratio / 1.1

    def forward(self, image, target):
        if len(target["boxes"]) and self.croppable(*F.get_size(image)):
            return self.crop(image, target)
        return image, target


class FinalizeKeypoints(v2.Transform):
    """The last step of every pipeline, making the target valid for Keypoint R-CNN (v2 no
    longer clamps keypoints; ``SanitizeBoundingBoxes`` knows no visibility): a point off the
    canvas ``[0, W] x [0, H]`` (edges in) gets visibility 0; each box grows to enclose its
    visible points (tightly: no margin again) and is clipped; an instance whose labelled
    points all left, or whose box is under 1 px wide or high, is dropped (a box-only target
    stays while its box does)."""

    def forward(self, image, target):
        kps = target["keypoints"]
        h, w = kps.canvas_size
        xy = kps.as_subclass(torch.Tensor)
        vis = target["visibility"].clone()
        box_only = ~(vis > 0).any(dim=-1)
        inside = (xy[..., 0] >= 0) & (xy[..., 0] <= w) & (xy[..., 1] >= 0) & (xy[..., 1] <= h)
        vis[~inside] = 0
        boxes = target["boxes"].as_subclass(torch.Tensor).clone()
        visible = vis > 0
        points = xy.detach().cpu().numpy(), visible.cpu().numpy()
        tight = boxes_from_points(*points, w, h, margin=0, min_pad=0, min_fraction=0)
        tight = torch.from_numpy(tight).to(boxes)
        has = visible.any(dim=1)
        boxes[has, :2] = torch.minimum(boxes[has, :2], tight[has, :2])
        boxes[has, 2:] = torch.maximum(boxes[has, 2:], tight[has, 2:])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        wide, tall = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        keep = (has | box_only) & (wide >= 1) & (tall >= 1)
        target = dict(target)
        target["boxes"] = tv_tensors.wrap(boxes[keep], like=target["boxes"])
        target["labels"] = target["labels"][keep]
        target["keypoints"] = tv_tensors.wrap(xy[keep], like=kps)
        target["visibility"] = vis[keep]
        return image, target


class CentredPadSquare(PadSquare):
    """cjm's `PadSquare`, centred, the odd pixel last: ``shift=False`` is a pixel short for
    an odd difference, so ``shift=True`` with its random ``pad_split`` fixed at 0.5."""

    def __init__(self):
        super().__init__(shift=True)

    def forward(self, *inputs):
        self.pad_split = 0.5
        return v2.Transform.forward(self, *inputs)


def square(size: int, *, random_placement: bool) -> list[v2.Transform]:
    """Resize the long side to exactly `size` (torchvision >= 0.20: ``size=None``), then
    pad the short side to a `size` x `size` square, randomly placed or centred."""
    pad = PadSquare(shift=True) if random_placement else CentredPadSquare()
    return [v2.Resize(size=None, max_size=size), pad]


POLICIES = ("iou_crop", "flip_only", "none")
#: The training flip: ``"swap"`` mirrors and swaps left/right (`KeypointHorizontalFlip`);
#: ``"plain"`` is v2's ``RandomHorizontalFlip``, which swaps nothing (notebook 04 shows
#: what that costs); ``"off"`` never flips.
FLIPS = ("swap", "plain", "off")


def train_transforms(
    size: int,
    flip_perm: Sequence[int] | None = None,
    *,
    policy: str = "iou_crop",
    flip: str = "swap",
) -> v2.Compose:
    """The training pipeline: IoU crop, `square` to `size` (randomly placed), colour
    jitter (0.25), the flip (one of `FLIPS`), then `FinalizeKeypoints`. `policy` ``"flip_only"``
    has no crop nor jitter, ``"none"`` nothing random. `flip_perm` (`flip_indices`) ``None``
    disables the ``"swap"`` flip: a mirror without a swap would teach wrong labels."""
    if policy not in POLICIES:
        raise KpnbError(f"unknown augmentation policy {policy!r}; choose one of {POLICIES}")
    if flip not in FLIPS:
        raise KpnbError(f"unknown flip {flip!r}; choose one of {FLIPS}")
    steps: list = [IoUCropIfBoxes()] if policy == "iou_crop" else []
    steps += square(size, random_placement=policy != "none")
    if policy == "iou_crop":
        # No hue jitter: its RGB<->HSV round trip costs more than the rest of the pipeline.
        steps.append(v2.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25))
    if flip == "plain" and policy != "none":
        steps.append(v2.RandomHorizontalFlip())
    elif flip == "swap" and flip_perm is not None and policy != "none":
        steps.append(KeypointHorizontalFlip(flip_perm))
    steps.append(FinalizeKeypoints())
    return v2.Compose(steps)


def eval_transforms(size: int) -> v2.Compose:
    """Evaluation: `square` to `size` (centred) and `FinalizeKeypoints`."""
    return v2.Compose([*square(size, random_placement=False), FinalizeKeypoints()])
