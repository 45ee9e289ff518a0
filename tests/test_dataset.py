"""KeypointDataset targets, negatives, missing files, splits, loaders, and the model."""

import math
import shutil

import numpy as np
import pytest
import torch
from torchvision.models.detection import keypointrcnn_resnet50_fpn

from kpnb.cvat import read_cvat
from kpnb.dataset import KeypointDataset, collate_fn, make_loaders, split_indices
from kpnb.grouping import points_to_skeleton
from kpnb.synthetic import synthesize
from kpnb.transforms import eval_transforms, train_transforms


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
    model = keypointrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_keypoints=5,
        min_size=128,
        max_size=128,
        rpn_post_nms_top_n_train=64,
        box_batch_size_per_image=32,
    )
    model.train()
    positives = [ds[i] for i in range(4) if len(ds[i][1]["boxes"])][:2]
    negatives = [ds[i] for i in range(len(ds)) if len(ds.items[i].boxes) == 0][:2]
    assert len(positives) == 2 and len(negatives) == 2  # the seed-0 export has both kinds
    losses = {}
    for kind, batch in (("positive", positives), ("negative", negatives)):
        images, targets = collate_fn(batch)
        losses[kind] = model(list(images), list(targets))
        assert all(math.isfinite(v.item()) for v in losses[kind].values()), losses[kind]
    assert losses["positive"]["loss_keypoint"].item() > 0  # points to locate: a real loss
    assert losses["negative"]["loss_keypoint"].item() == 0  # nothing to locate on negatives


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
    with pytest.raises(ValueError, match=r"img_00000.jpg: .*7x7.*416x312"):
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
    train, val = make_loaders(ann, synthetic_export, "face", size=96, batch_size=4, num_workers=0)
    images, targets = next(iter(train))
    assert len(images) == 4 and images[0].shape == (3, 96, 96)
    assert len(val.dataset) == 8


def test_synthesize_tables_drive_the_dataset_too(tmp_path):
    from kpnb.synthetic import generate

    root = generate(tmp_path / "s", 6, seed=2)
    truth, _ = synthesize(6, seed=2)
    assert len(KeypointDataset(truth, root, "face")) == 6


def _one_image(tmp_path, rows, boxes=(), size=(200, 100), area=None):
    """A COCO file with one image and the given annotations, plus its image on disk."""
    import json

    from PIL import Image

    from kpnb.coco import read_coco

    doc = {
        "images": [{"id": 5, "file_name": "a.png", "width": size[0], "height": size[1]}],
        "categories": [
            {"id": 1, "name": "p", "keypoints": ["left_eye", "right_eye"], "skeleton": [[1, 2]]}
        ],
        "annotations": [
            dict(
                {"id": 10 + i, "image_id": 5, "category_id": 1, "keypoints": kps},
                **({"bbox": boxes[i]} if boxes else {}),
                **({"area": area[i]} if area else {}),
            )
            for i, kps in enumerate(rows)
        ],
    }
    (tmp_path / "kp.json").write_text(json.dumps(doc))
    Image.new("RGB", size).save(tmp_path / "a.png")
    return read_coco(tmp_path / "kp.json")


def test_seed_shaped_boxes_are_object_sized_and_check_export_flags_degenerate(tmp_path):
    from kpnb.dataset import check_export, instance_boxes

    # one visible point, no box: 2 px padding would give a 4x4 box; the minimum is 10%
    ann = _one_image(tmp_path, [[50, 50, 2, 0, 0, 0]])
    ds = KeypointDataset(ann, tmp_path, "p")
    x0, y0, x1, y1 = ds.items[0].boxes[0]
    assert (x1 - x0, y1 - y0) == pytest.approx((10, 10)) and (x0 + x1) / 2 == 50
    assert not instance_boxes(ann, "p")["degenerate"].any()
    # a file's own box of 1 x 1 px is degenerate, and check_export says so with the image
    tiny = _one_image(tmp_path, [[50, 50, 2, 51, 51, 2]], boxes=[[50, 50, 1, 1]])
    report = check_export(tiny, tmp_path, "p")
    assert not report.loc["instance boxes", "ok"]
    assert "1 degenerate" in report.loc["instance boxes", "detail"]
    assert "image id 5 'a.png'" in report.loc["instance boxes", "detail"]
    assert report.loc["flip pairs", "detail"] == "left_eye<->right_eye"


def test_box_only_instances_are_targets_with_the_files_area(tmp_path):
    ann = _one_image(
        tmp_path,
        [[20, 20, 2, 30, 20, 2], [0, 0, 0, 0, 0, 0]],
        boxes=[[10, 10, 30, 20], [100, 40, 50, 40]],
        area=[123.0, 800.0],
    )
    ds = KeypointDataset(ann, tmp_path, "p", eval_transforms(100))
    _, target = ds[0]
    assert len(target["boxes"]) == 2 and (target["keypoints"][1, :, 2] == 0).all()
    # resized by 100/200: areas scale by 1/4, the file's values, not the boxes' w x h
    assert target["area"].tolist() == pytest.approx([123.0 / 4, 800.0 / 4])
    no_box = _one_image(tmp_path, [[20, 20, 2, 30, 20, 2], [0, 0, 0, 0, 0, 0]])
    assert len(KeypointDataset(no_box, tmp_path, "p").items[0].boxes) == 1  # nothing to learn


def test_flip_pairs_reach_the_training_flip(ann, synthetic_export, caplog):
    from kpnb.transforms import KeypointHorizontalFlip

    def flip_of(loader):
        steps = loader.dataset.transforms.transforms
        return next((t for t in steps if isinstance(t, KeypointHorizontalFlip)), None)

    train, _ = make_loaders(ann, synthetic_export, "face", size=64, num_workers=0)
    assert flip_of(train).flip_perm.tolist() == [0, 2, 1, 4, 3]
    train, _ = make_loaders(
        ann,
        synthetic_export,
        "face",
        size=64,
        num_workers=0,
        flip_pairs=[("left_eye", "right_eye")],
    )
    assert flip_of(train).flip_perm.tolist() == [0, 2, 1, 3, 4]
    with caplog.at_level("WARNING", logger="kpnb.dataset"):
        make_loaders(
            ann,
            synthetic_export,
            "face",
            size=64,
            num_workers=0,
            flip_pairs=[("left_eye", "right_eye")],
        )
    assert "['left_ear', 'right_ear'] say left or right but have no partner" in caplog.text
    unnamed = ann.__class__(
        ann.images,
        ann.keypoints,
        {"face": ann.skeletons["face"].__class__(("a", "b", "c", "d", "e"))},
    )
    with caplog.at_level("INFO", logger="kpnb.dataset"):
        train, _ = make_loaders(unnamed, synthetic_export, "face", size=64, num_workers=0)
    assert flip_of(train) is None and "the training flip is off" in caplog.text


def test_check_export_rows_can_all_fail_and_say_what_they_found(ann, synthetic_export):
    from dataclasses import replace

    from kpnb.dataset import check_export
    from kpnb.skeleton import Skeleton

    report = check_export(ann, synthetic_export, "face")
    assert report["ok"].all() and "5 edges" in report.loc["instances", "detail"]
    assert "other shapes" not in report.index and "edges" not in report.index  # never failed
    bare = replace(ann, skeletons={"face": Skeleton(ann.skeletons["face"].keypoints)})
    assert "no edges" in check_export(bare, synthetic_export, "face").loc["instances", "detail"]


def test_plain_flip_mirrors_without_swapping_and_off_never_flips(ann, synthetic_export):
    """Notebook 04's exercise 2 compares the swapping flip with torchvision's plain one."""
    from torchvision.transforms import v2

    from kpnb.transforms import KeypointHorizontalFlip

    def flips(flip):
        train, _ = make_loaders(ann, synthetic_export, "face", size=64, num_workers=0, flip=flip)
        steps = train.dataset.transforms.transforms
        return [
            type(t)
            for t in steps
            if isinstance(t, (KeypointHorizontalFlip, v2.RandomHorizontalFlip))
        ]

    assert flips("swap") == [KeypointHorizontalFlip]
    assert flips("plain") == [v2.RandomHorizontalFlip]
    assert flips("off") == []
    with pytest.raises(ValueError, match="plain"):
        flips("mirror")
    # the plain flip moves the left eye to the image's other side and keeps calling it left
    plain = v2.RandomHorizontalFlip(p=1.0)
    image, target = KeypointDataset(ann, synthetic_export, "face").sample(0)
    _, out = plain(image, target)
    before = target["keypoints"].as_subclass(torch.Tensor)[0, 1, 0]
    after = out["keypoints"].as_subclass(torch.Tensor)[0, 1, 0]
    width = image.shape[-1]
    assert abs(float(after) - (width - 1 - float(before))) < 1e-4  # v2 mirrors, index kept
