"""The one box-from-points rule, and the three paths that use it agreeing on it."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from kpnb.boxes import boxes_from_points
from kpnb.coco import read_coco, to_coco, write_coco
from kpnb.dataset import KeypointDataset, instance_boxes
from kpnb.transforms import FinalizeKeypoints, KeypointHorizontalFlip, eval_transforms

W, H = 200, 100  # the image; a tenth of its shorter side is 10 px


def _box(points, vis=None, w=W, h=H, **kw):
    xy = np.array([points], np.float64)
    v = np.full(xy.shape[:2], 2) if vis is None else np.array([vis])
    return boxes_from_points(xy, v, w, h, **kw)[0].tolist()


@pytest.mark.parametrize(
    ("points", "vis", "expected"),
    [
        # two points 100 x 40 apart: 10% margin (10 x 4 px) on each side
        ([[50, 30], [150, 70]], None, [40, 26, 160, 74]),
        # one point: 2 px padding would make 4 x 4; the minimum is a tenth of 100 px
        ([[50, 50]], None, [45, 45, 55, 55]),
        # in the corner: still 10 x 10, slid inside the image instead of cut to 5 x 5
        ([[0, 0]], None, [0, 0, 10, 10]),
        # on the far border (x = W, y = H is the edge of a continuous frame)
        ([[200, 100]], None, [190, 90, 200, 100]),
        # a labelled point outside the image: the object reaches the border
        ([[120, 40], [230, 60]], None, [109, 38, 200, 62]),
        # unlabelled points do not count, whatever their coordinates
        ([[50, 50], [190, 90]], [2, 0], [45, 45, 55, 55]),
        # nothing labelled: an empty box the callers drop (or replace with their own)
        ([[50, 50], [60, 60]], [0, 0], [0, 0, 0, 0]),
    ],
)
def test_rule(points, vis, expected):
    assert _box(points, vis) == pytest.approx(expected)


def test_unknown_size_skips_clip_and_minimum_and_tight_form_is_the_bare_extent():
    assert _box([[50, 50]], w=np.nan, h=np.nan) == [48, 48, 52, 52]
    assert _box([[50, 30], [150, 70]], margin=0, min_pad=0, min_fraction=0) == [50, 30, 150, 70]
    assert _box([[-5, 30], [150, 70]], margin=0, min_pad=0, min_fraction=0) == [0, 30, 150, 70]


def test_ragged_input_gives_the_same_boxes_as_the_padded_one():
    rng = np.random.default_rng(0)
    xy = rng.uniform(-20, 220, (30, 4, 2))
    vis = rng.integers(0, 3, (30, 4))
    size = (rng.integers(50, 300, 30), rng.integers(50, 300, 30))
    padded = boxes_from_points(xy, vis, *size)
    ragged = boxes_from_points(xy.reshape(-1, 2), vis.reshape(-1), *size, starts=np.arange(30) * 4)
    np.testing.assert_array_equal(padded, ragged)
    assert boxes_from_points(np.zeros((0, 4, 2)), np.zeros((0, 4)), W, H).shape == (0, 4)


# one image, four instances without a box of their own: two points, one point in the
# corner, one point on the far border, and one with nothing labelled
INSTANCES = [
    [50, 30, 2, 150, 70, 2],
    [0, 0, 2, 0, 0, 0],
    [200, 100, 1, 0, 0, 0],
    [70, 40, 0, 80, 50, 0],
]


def _export(tmp_path, instances=INSTANCES):
    doc = {
        "images": [{"id": 5, "file_name": "a.png", "width": W, "height": H}],
        "categories": [
            {"id": 1, "name": "p", "keypoints": ["left_eye", "right_eye"], "skeleton": [[1, 2]]}
        ],
        "annotations": [
            {"id": 10 + i, "image_id": 5, "category_id": 1, "keypoints": kps}
            for i, kps in enumerate(instances)
        ],
    }
    (tmp_path / "kp.json").write_text(json.dumps(doc))
    Image.new("RGB", (W, H)).save(tmp_path / "a.png")
    return read_coco(tmp_path / "kp.json")


def _tensor(t, key):
    return t[key].as_subclass(torch.Tensor)


def test_dataset_transforms_and_coco_agree_on_each_instance(tmp_path):
    ann = _export(tmp_path)
    xy = np.array(INSTANCES, np.float64).reshape(4, 2, 3)
    rule = boxes_from_points(xy[..., :2], xy[..., 2], W, H)
    ds = KeypointDataset(ann, tmp_path, "p")
    # 1. the Dataset's target: the rule's boxes, the unlabelled instance left out
    _, target = ds[0]
    np.testing.assert_allclose(target["boxes"].numpy(), rule[:3], atol=1e-4)
    assert instance_boxes(ann, "p")[["xtl", "ytl", "xbr", "ybr"]].to_numpy() == pytest.approx(rule)
    # 2. FinalizeKeypoints after a flip: the mirrored rule box, every labelled point kept
    # (the corner point flips onto the far border, the border point onto x = 0)
    image, sample = KeypointHorizontalFlip([1, 0], p=1.0).flip(*ds.sample(0))
    _, flipped = FinalizeKeypoints()(image, sample)
    mirrored = np.stack([W - rule[:3, 2], rule[:3, 1], W - rule[:3, 0], rule[:3, 3]], 1)
    np.testing.assert_allclose(_tensor(flipped, "boxes").numpy(), mirrored, atol=1e-4)
    assert (flipped["visibility"] > 0).sum(1).tolist() == [2, 1, 1]
    xy_flipped = _tensor(flipped, "keypoints").numpy()
    again = boxes_from_points(xy_flipped, flipped["visibility"].numpy(), W, H)
    np.testing.assert_allclose(again, mirrored, atol=1e-4)  # the rule commutes with the flip
    # ... and after the eval resize + centred pad: the same boxes, scaled and shifted
    _, resized = eval_transforms(100)(*ds.sample(0))
    np.testing.assert_allclose(
        _tensor(resized, "boxes").numpy(), rule[:3] / 2 + [0, 25, 0, 25], atol=1e-3
    )
    assert (resized["visibility"] > 0).sum(1).tolist() == [2, 1, 1]
    # 3. to_coco's bbox: the same box as xywh; the unlabelled instance's stays empty
    coco = to_coco(ann)["annotations"]
    xywh = np.concatenate([rule[:, :2], rule[:, 2:] - rule[:, :2]], 1)
    assert [a["bbox"] for a in coco] == np.round(xywh, 2).tolist()
    assert [a["num_keypoints"] for a in coco] == [2, 1, 1, 0]
    assert coco[3]["bbox"] == [0, 0, 0, 0] and coco[3]["area"] == 0


def test_a_one_point_instance_survives_the_coco_round_trip(tmp_path):
    """CVAT's bare extent (0 x 0 for one point) read back as the instance's own box used
    to give a degenerate box that FinalizeKeypoints dropped."""
    ann = _export(tmp_path, [[50, 50, 2, 0, 0, 0]])
    back = read_coco(write_coco(ann, tmp_path / "back.json"))
    assert instance_boxes(back, "p")["source"].tolist() == ["grouped"]
    _, target = KeypointDataset(back, tmp_path, "p", eval_transforms(100))[0]
    np.testing.assert_allclose(target["boxes"].numpy(), [[22.5, 47.5, 27.5, 52.5]], atol=1e-4)
