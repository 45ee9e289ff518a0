"""Augmentation invariants over many seeded samples, and the left/right flip."""

import random
import signal

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torchvision import tv_tensors
from torchvision.transforms import v2

from kpnb.cvat import read_cvat
from kpnb.dataset import KeypointDataset
from kpnb.synthetic import FACE, PUPIL, render_scene
from kpnb.transforms import (
    FinalizeKeypoints,
    IoUCropIfBoxes,
    KeypointHorizontalFlip,
    eval_transforms,
    make_sample,
    square,
    train_transforms,
)


@pytest.fixture(scope="module")
def raw_dataset(synthetic_export):
    return KeypointDataset(read_cvat(synthetic_export), synthetic_export, "face")


def _check(image, target):
    h, w = image.shape[-2:]
    xy = target["keypoints"].as_subclass(torch.Tensor)
    vis = target["visibility"]
    boxes = target["boxes"].as_subclass(torch.Tensor)
    assert len(boxes) == len(xy) == len(vis) == len(target["labels"])
    shown = vis > 0
    x, y = xy[..., 0], xy[..., 1]
    assert ((x[shown] >= 0) & (x[shown] <= w) & (y[shown] >= 0) & (y[shown] <= h)).all()
    for b, pts, v in zip(boxes, xy, vis, strict=True):
        p = pts[v > 0]
        assert len(p), "an instance without visible points survived"
        assert (p[:, 0] >= b[0]).all() and (p[:, 0] <= b[2]).all()
        assert (p[:, 1] >= b[1]).all() and (p[:, 1] <= b[3]).all()
        assert b[2] - b[0] >= 1 and b[3] - b[1] >= 1


@pytest.mark.parametrize("policy", ["iou_crop", "flip_only", "none"])
def test_pipelines_keep_visible_points_on_canvas_and_in_boxes(raw_dataset, policy):
    torch.manual_seed(0)
    random.seed(0)
    pipeline = train_transforms(192, FACE.flip_indices, policy=policy)
    n_instances = 0
    for _ in range(4):
        for i in range(len(raw_dataset)):
            image, target = pipeline(*raw_dataset.sample(i))
            assert tuple(image.shape[-2:]) == (192, 192) and image.dtype == torch.uint8
            _check(image, target)
            n_instances += len(target["boxes"])
    assert n_instances > 100


def test_eval_pipeline(raw_dataset):
    for i in range(len(raw_dataset)):
        image, target = eval_transforms(160)(*raw_dataset.sample(i))
        _check(image, target)


def test_finalize_marks_off_canvas_points_absent_and_drops_empty_instances():
    image = torch.zeros(3, 10, 20, dtype=torch.uint8)
    kps = [[[1, 1], [25, 5], [-1, 3]], [[30, 1], [21, 2], [5, -4]]]
    sample = make_sample(image, [[0, 0, 5, 5], [0, 0, 20, 10]], [1, 1], kps, [[2, 2, 1], [2, 2, 2]])
    _, target = FinalizeKeypoints()(*sample)
    assert target["visibility"].tolist() == [[2, 0, 0]]  # second instance: nothing visible
    assert target["keypoints"].as_subclass(torch.Tensor)[0, 1].tolist() == [25, 5]  # kept
    assert target["labels"].tolist() == [1]


def test_flip_swaps_named_pairs_against_the_generator_truth(raw_dataset):
    flip = KeypointHorizontalFlip(FACE.flip_indices, p=1.0)
    checked = 0
    for i in range(len(raw_dataset)):
        image, target = raw_dataset.sample(i)
        w = image.shape[-1]
        f_image, f_target = flip.flip(image, target)
        before = target["keypoints"].as_subclass(torch.Tensor)
        after = f_target["keypoints"].as_subclass(torch.Tensor)
        for j, name in enumerate(FACE.keypoints):
            partner = FACE.keypoints.index(
                name.replace("left", "@").replace("right", "left").replace("@", "right")
            )
            assert torch.allclose(after[:, j, 0], w - before[:, partner, 0])
            assert torch.allclose(after[:, j, 1], before[:, partner, 1])
            assert (f_target["visibility"][:, j] == target["visibility"][:, partner]).all()
        # the mirrored picture has a pupil where the flipped left/right eyes now are
        pixels = f_image.permute(1, 2, 0).numpy().astype(int)
        scene = render_scene(0, raw_dataset.items[i].image_id)
        for inst in range(len(after)):
            for j in (1, 2):  # eyes
                if f_target["visibility"][inst, j] == 2 and not scene.occluded.any():
                    x, y = after[inst, j].floor().int().tolist()
                    if 0 <= x < w:
                        assert np.abs(pixels[y, x] - PUPIL).max() < 60  # JPEG tolerance
                        checked += 1
    assert checked > 20


def test_flip_without_pairs_only_mirrors():
    image = torch.zeros(3, 4, 10, dtype=torch.uint8)
    sample = make_sample(image, [[1, 1, 3, 3]], [1], [[[2, 2], [3, 1]]], [[2, 2]])
    _, t = KeypointHorizontalFlip([0, 1], p=1.0).flip(*sample)
    assert t["keypoints"].as_subclass(torch.Tensor).tolist() == [[[8, 2], [7, 1]]]
    assert t["boxes"].as_subclass(torch.Tensor).tolist() == [[7, 1, 9, 3]]


def test_unknown_policy_lists_valid_ones():
    with pytest.raises(ValueError, match="iou_crop"):
        train_transforms(128, policy="autoaugment")


def test_v2_photometric_transforms_leave_points_alone(raw_dataset):
    image, target = raw_dataset.sample(0)
    _, out = v2.ColorJitter(0.5, 0.5, 0.5)(image, target)
    assert torch.equal(out["keypoints"], target["keypoints"])


def test_finalize_keeps_box_only_targets_while_their_box_lasts():
    image = torch.zeros(3, 10, 20, dtype=torch.uint8)
    kps = [[[1, 1], [2, 2]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]]
    boxes = [[0, 0, 5, 5], [4, 2, 12, 8], [19.5, 0, 19.8, 10]]  # the last: thinner than 1 px
    sample = make_sample(image, boxes, [1, 1, 1], kps, [[2, 2], [0, 0], [0, 0]])
    _, target = FinalizeKeypoints()(*sample)
    assert target["boxes"].as_subclass(torch.Tensor).tolist() == [[0, 0, 5, 5], [4, 2, 12, 8]]
    assert target["visibility"].tolist() == [[2, 2], [0, 0]]


FILL = (123, 117, 104)  # cjm PadSquare's padding colour


@settings(max_examples=120, deadline=None)
@given(
    size=st.integers(64, 512),
    w=st.integers(1, 4000),
    h=st.integers(1, 4000),
    random_placement=st.booleans(),
)
def test_square_is_exact_and_moves_boxes_and_points_with_the_picture(size, w, h, random_placement):
    """``Resize(size=None, max_size=size)`` + PadSquare: exactly `size` x `size`, with the
    picture where its box and corner points say (no stretching Resize needed)."""
    exact_short = size * min(w, h) / max(w, h)
    assume(exact_short >= 1)  # a 1 x 4000 strip at 64 px has no short side left
    image = torch.full((3, h, w), 255, dtype=torch.uint8)
    sample = make_sample(image, [[0, 0, w, h]], [1], [[[0, 0], [w, h]]], [[2, 2]])
    steps = v2.Compose(square(size, random_placement=random_placement))
    out, target = steps(*sample)
    assert tuple(out.shape[-2:]) == (size, size)
    content = (out[0] != FILL[0]).nonzero()
    (y0, x0), (y1, x1) = content.min(0).values.tolist(), (content.max(0).values + 1).tolist()
    assert max(x1 - x0, y1 - y0) == size and 0 <= exact_short - min(x1 - x0, y1 - y0) < 1
    box = target["boxes"].as_subclass(torch.Tensor)[0].tolist()
    assert box == pytest.approx([x0, y0, x1, y1], abs=1e-3)
    corners = target["keypoints"].as_subclass(torch.Tensor)[0].reshape(-1).tolist()
    assert corners == pytest.approx([x0, y0, x1, y1], abs=1e-3)
    if not random_placement:  # centred: the odd pixel of padding goes last
        assert (x0, y0) == ((size - (x1 - x0)) // 2, (size - (y1 - y0)) // 2)


def test_eval_square_is_centred_and_deterministic():
    image = tv_tensors.Image(torch.full((3, 171, 256), 255, dtype=torch.uint8))
    steps = v2.Compose(square(256, random_placement=False))
    first, second = steps(image), steps(image)
    assert torch.equal(first, second) and first.shape[-2:] == (256, 256)
    rows = (first[0] != FILL[0]).any(1).nonzero().flatten()
    assert (rows.min().item(), 255 - rows.max().item()) == (42, 43)


@pytest.mark.parametrize("height, width", [(20, 600), (600, 20), (3, 40), (1, 1)])
def test_iou_crop_passes_images_no_crop_fits_instead_of_hanging(height, width):
    """cjm's crop loops forever on a panorama beyond ~6.7:1 and divides by zero under 4 px;
    such images pass unchanged (the test would hang or raise on the bare cjm crop)."""
    crop = IoUCropIfBoxes()
    image = tv_tensors.Image(torch.zeros(3, height, width, dtype=torch.uint8))
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            [[0, 0, width, height]], format="XYXY", canvas_size=(height, width)
        ),
        "labels": torch.tensor([1]),
    }
    assert not crop.croppable(height, width)

    def hung(*_):
        raise TimeoutError("the IoU crop did not return in 10 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)  # a hang becomes a failure, not a stuck CI run
    try:
        out, _ = crop(image, target)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert out.shape == image.shape


def test_iou_crop_still_crops_ordinary_images():
    crop = IoUCropIfBoxes()
    assert crop.croppable(480, 640) and crop.croppable(100, 600) and crop.croppable(600, 100)
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.zeros(3, 480, 640, dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes([[100, 100, 300, 300]], format="XYXY", canvas_size=(480, 640))
    shapes = {
        tuple(crop(image, {"boxes": boxes, "labels": torch.tensor([1])})[0].shape)
        for _ in range(20)
    }
    assert any(s != (3, 480, 640) for s in shapes)
