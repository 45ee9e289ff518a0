"""Augmentation invariants over many seeded samples, and the left/right flip."""

import random

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from kpnb.cvat import read_cvat
from kpnb.dataset import KeypointDataset
from kpnb.synthetic import FACE, PUPIL, render_scene
from kpnb.transforms import (
    FinalizeKeypoints,
    KeypointHorizontalFlip,
    eval_transforms,
    make_sample,
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
    assert ((x[shown] >= 0) & (x[shown] < w) & (y[shown] >= 0) & (y[shown] < h)).all()
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
