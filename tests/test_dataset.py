"""KeypointDataset targets, negatives, missing files, splits, loaders, and the model."""

import math
import shutil

import numpy as np
import pytest
import torch
from torchvision.models.detection import keypointrcnn_resnet50_fpn

from kpnb.cvat import read_cvat
from kpnb.dataset import KeypointDataset, collate_fn, make_loaders, split_indices
from kpnb.synthetic import synthesize
from kpnb.tables import points_to_skeleton
from kpnb.transforms import train_transforms


@pytest.fixture(scope="module")
def ann(synthetic_export):
    return read_cvat(synthetic_export)


def test_items_are_keypoint_rcnn_targets(ann, synthetic_export):
    ds = KeypointDataset(ann, synthetic_export, "face")
    assert len(ds) == 40
    n_neg = 0
    for i in range(len(ds)):
        image, t = ds[i]
        assert image.dtype == torch.float32 and image.shape[0] == 3
        assert 0 <= image.min() and image.max() <= 1
        n = len(t["boxes"])
        assert t["boxes"].shape == (n, 4) and t["boxes"].dtype == torch.float32
        assert t["keypoints"].shape == (n, 5, 3) and t["keypoints"].dtype == torch.float32
        assert t["labels"].dtype == torch.int64 and (t["labels"] == 1).all()
        assert t["area"].shape == (n,) and t["iscrowd"].shape == (n,)
        h, w = image.shape[-2:]
        for b, k in zip(t["boxes"], t["keypoints"], strict=True):
            v = k[:, 2] > 0
            assert (k[v, 0] >= b[0]).all() and (k[v, 0] <= b[2]).all()
            assert (k[v, 1] >= b[1]).all() and (k[v, 1] <= b[3]).all()
            assert 0 <= b[0] < b[2] <= w and 0 <= b[1] < b[3] <= h
        n_neg += n == 0
    assert n_neg >= 1  # the synthetic set has empty images: valid negatives


def test_targets_match_the_tables(ann, synthetic_export):
    ds = KeypointDataset(ann, synthetic_export, "face")
    _, t = ds[0]
    expected = ann.instance_array(0, "face")
    assert np.allclose(t["keypoints"][..., 2].numpy(), expected[..., 2])
    shown = expected[..., 2] > 0
    assert np.allclose(t["keypoints"][..., :2].numpy()[shown], expected[..., :2][shown])


def test_model_accepts_targets_including_an_all_negative_batch(ann, synthetic_export):
    torch.manual_seed(0)
    ds = KeypointDataset(ann, synthetic_export, "face", train_transforms(128, [0, 2, 1, 4, 3]))
    model = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_keypoints=5,
                                      min_size=128, max_size=128, rpn_post_nms_top_n_train=64,
                                      box_batch_size_per_image=32)  # fmt: skip
    model.train()
    positives = [ds[i] for i in range(4) if len(ds[i][1]["boxes"])][:2]
    negatives = [ds[i] for i in range(len(ds)) if len(ds.items[i].boxes) == 0][:2]
    assert len(negatives) == 2 or len(negatives) == 1
    for batch in (positives, negatives):
        images, targets = collate_fn(batch)
        losses = model(list(images), list(targets))
        assert all(math.isfinite(v.item()) for v in losses.values()), losses
    assert losses["loss_keypoint"].item() == 0  # nothing to locate on negatives


def test_missing_files_fail_at_construction_with_one_list(ann, synthetic_export, tmp_path):
    root = tmp_path / "export"
    shutil.copytree(synthetic_export, root)
    for name in ("img_00001.jpg", "img_00002.jpg"):
        (root / "images/Train" / name).unlink()
    with pytest.raises(ValueError, match=r"2 of 40 image files are missing") as exc:
        KeypointDataset(ann, root, "face")
    assert "img_00001.jpg" in str(exc.value) and "img_00002.jpg" in str(exc.value)
    ds = KeypointDataset(ann, root, "face", skip_missing=True)
    assert len(ds) == 38 and ds.skipped == 2


def test_size_mismatch_names_the_file(ann, synthetic_export, tmp_path):
    root = tmp_path / "export"
    shutil.copytree(synthetic_export, root)
    from PIL import Image

    Image.new("RGB", (7, 7)).save(root / "images/Train/img_00000.jpg")
    ds = KeypointDataset(ann, root, "face")
    with pytest.raises(ValueError, match="img_00000.jpg: image is 7x7"):
        ds[0]


def test_points_layout_needs_points_to_skeleton(points_export):
    ann = read_cvat(points_export)
    with pytest.raises(ValueError, match="points_to_skeleton"):
        KeypointDataset(ann, points_export, "nose")
    ds = KeypointDataset(points_to_skeleton(ann, "face"), points_export, "face")
    assert len(ds) == len(ann.images) and ds[0][1]["keypoints"].shape == (1, 5, 3)


def test_split_by_subset_else_seeded(ann, points_export):
    train, val = split_indices(ann)
    assert len(val) == 8 and not set(train) & set(val)
    assert all(ann.images.loc[i, "subset"] == "Validation" for i in val)
    pts = read_cvat(points_export)  # no subsets
    a, b = split_indices(pts, 0.25, seed=1)
    assert (a, b) == split_indices(pts, 0.25, seed=1) and len(b) == 3
    assert sorted(a + b) == list(range(12))


def test_make_loaders(ann, synthetic_export):
    train, val = make_loaders(ann, synthetic_export, "face", size=96, batch_size=4,
                              num_workers=0)  # fmt: skip
    images, targets = next(iter(train))
    assert len(images) == 4 and images[0].shape == (3, 96, 96)
    assert len(val.dataset) == 8


def test_synthesize_tables_drive_the_dataset_too(tmp_path):
    from kpnb.synthetic import generate

    root = generate(tmp_path / "s", 6, seed=2)
    truth, _ = synthesize(6, seed=2)
    assert len(KeypointDataset(truth, root, "face")) == 6
