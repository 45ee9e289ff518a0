"""COCO keypoints in and out: real fixtures, CVAT's export rules, pycocotools, round trips."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from shared_paths import FIXTURES

from kpnb.boxes import boxes_from_points
from kpnb.coco import CocoFormatError, read_coco, to_coco, write_coco
from kpnb.cvat import read_cvat
from kpnb.synthetic import FACE
from kpnb.tables import Annotations

CVAT_AI = FIXTURES / "cvat-ai-datumaro/tests/assets/coco_dataset/coco_person_keypoints"
OPENVINO = FIXTURES / "openvinotoolkit-datumaro/tests/assets/coco_dataset/coco_person_keypoints"


def test_reads_datumaro_fixture_with_0_based_skeleton_and_missing_names():
    ann = read_coco(CVAT_AI / "annotations/person_keypoints_train.json")
    assert ann.skeletons["a"].edges == ((0, 1), (1, 2))  # [[0,1],[1,2]] is 0-based
    assert ann.skeletons["b"].keypoints == ("1", "2", "3")  # names from the annotation length
    kp = ann.keypoints
    assert kp["visibility"].tolist() == [0, 1, 2]
    assert math.isnan(kp["x"].iloc[0])  # v=0 at (0, 0) is absent, not a position
    assert ann.images["image_id"].tolist() == [5] and ann.images["subset"].tolist() == ["train"]
    box = ann.boxes.iloc[0]
    assert (box["xtl"], box["ytl"], box["xbr"], box["ybr"]) == (2, 2, 5, 3)  # xywh -> xyxy
    assert box["group_id"] == kp["group_id"].iloc[0] != 0


def test_reads_a_folder_with_subsets_and_non_sequential_ids():
    ann = read_coco(CVAT_AI)
    assert sorted(ann.images["subset"].astype(str)) == ["train", "val"]
    val = ann.images[ann.images["subset"] == "val"].iloc[0]
    assert val["image_id"] == 40
    assert ann.attributes["name"].tolist() == ["x", "y"]
    assert ann.keypoints["instance_id"].nunique() == 3


def test_category_with_empty_keypoint_names():
    ann = read_coco(OPENVINO / "annotations/person_keypoints_train.json")
    assert list(ann.skeletons) == ["b"]  # "a" has no names and no annotations: no skeleton


def test_one_based_skeleton_is_detected(tmp_path):
    doc = {
        "images": [{"id": 1, "file_name": "x.jpg", "width": 10, "height": 10}],
        "categories": [
            {"id": 7, "name": "p", "keypoints": ["a", "b", "c"], "skeleton": [[1, 2], [2, 3]]}
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 7,
                "bbox": [0, 0, 5, 5],
                "keypoints": [1, 1, 2, 2, 2, 2, 3, 3, 1],
                "num_keypoints": 3,
            }
        ],
    }
    path = tmp_path / "kp.json"
    path.write_text(json.dumps(doc))
    assert read_coco(path).skeletons["p"].edges == ((0, 1), (1, 2))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d["annotations"][0].update(image_id=99), "unknown image 99"),
        (lambda d: d["annotations"][0].update(category_id=3), "unknown category 3"),
        (lambda d: d["annotations"][0].update(keypoints=[1, 2, 2, 1]), "not a multiple of 3"),
        (
            lambda d: d["annotations"][0]["keypoints"].__setitem__(2, 7),
            "visibility 7 at keypoint 0",
        ),
        (lambda d: d["annotations"][0]["keypoints"].__setitem__(2, -1), "visibility -1"),
        (
            lambda d: d["images"].append(dict(d["images"][0], file_name="b.jpg")),
            "image id .* is used twice .*give every image its own id",
        ),
        (
            lambda d: d["annotations"][0].update(keypoints=d["annotations"][0]["keypoints"] * 2),
            "names 3 keypoints but an annotation holds 6",
        ),
        (lambda d: d.pop("images"), "not a COCO file"),
    ],
)
def test_bad_coco_is_named(tmp_path, mutate, match):
    doc = json.loads((CVAT_AI / "annotations/person_keypoints_val.json").read_text())
    mutate(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(CocoFormatError, match=match):
        read_coco(path)
    path.write_text("{ not json")
    with pytest.raises(CocoFormatError, match="line 1: not valid JSON"):
        read_coco(path)


def test_to_coco_follows_cvat_export_rules(synthetic_export, tmp_path):
    ann = read_cvat(synthetic_export)
    doc = to_coco(ann)
    cat = doc["categories"][0]
    assert cat["keypoints"] == list(FACE.keypoints)
    assert sorted(map(tuple, cat["skeleton"])) == sorted((a + 1, b + 1) for a, b in FACE.edges)
    assert [im["id"] for im in doc["images"]] == list(range(1, 41))  # sequential, all kept
    sizes = {im["id"]: (im["width"], im["height"]) for im in doc["images"]}
    for a in doc["annotations"]:
        kps = np.array(a["keypoints"]).reshape(-1, 3)
        vis = kps[:, 2] > 0
        assert a["num_keypoints"] == int(vis.sum())
        # not CVAT's bare extent of the points: the box kpnb trains with (kpnb.boxes)
        x, y, w, h = a["bbox"]
        rule = boxes_from_points(kps[None, :, :2], kps[None, :, 2], *sizes[a["image_id"]])[0]
        assert [x, y, x + w, y + h] == pytest.approx(rule.tolist(), abs=0.03)
        assert a["area"] == pytest.approx(w * h, abs=0.01) and a["iscrowd"] == 0
    # outside points keep their coordinates, as CVAT's exporter does
    flat = np.concatenate([np.array(a["keypoints"]).reshape(-1, 3) for a in doc["annotations"]])
    assert ((flat[:, 2] == 0) & (flat[:, 0] != 0)).any()
    path = write_coco(ann, tmp_path / "kp.json")
    coco = COCO(str(path))
    assert len(coco.getAnnIds()) == ann.keypoints["instance_id"].nunique()


def test_coco_round_trip(synthetic_export, tmp_path):
    ann = read_cvat(synthetic_export)
    back = read_coco(write_coco(ann, tmp_path / "kp.json"))
    assert back.skeletons == ann.skeletons
    a, b = ann.keypoints, back.keypoints
    assert a["visibility"].tolist() == b["visibility"].tolist()
    np.testing.assert_allclose(a[["x", "y"]], b[["x", "y"]], atol=0.006)


def test_plain_points_are_written_as_cvat_does(points_export, caplog):
    ann = read_cvat(points_export)
    plain = to_coco(ann)  # datumaro: one annotation per <points> shape, empty names
    labels = list(dict.fromkeys(ann.keypoints["label"].astype(str)))
    assert [c["name"] for c in plain["categories"]] == labels
    assert all(c["keypoints"] == [] and c["skeleton"] == [] for c in plain["categories"])
    assert len(plain["annotations"]) == len(ann.keypoints)
    assert {len(a["keypoints"]) for a in plain["annotations"]} == {3}
    with caplog.at_level("WARNING", logger="kpnb.coco"):
        assert to_coco(ann, skeletons_only=True)["annotations"] == []
    assert "left out plain <points> labels" in caplog.text and labels[0] in caplog.text
    doc = to_coco(ann, points_as_skeleton="face")
    assert doc["categories"][0]["keypoints"] == list(FACE.keypoints)
    assert len(doc["annotations"]) == len(ann.images)  # one object per image
    k = np.array([a["keypoints"] for a in doc["annotations"]]).reshape(len(ann.images), -1, 3)
    assert (k[:, :, 2] == 0).sum() == 5 * len(ann.images) - len(ann.keypoints)


def test_cvat_grouped_box_is_the_coco_bbox():
    ann = read_cvat(Path(__file__).parent / "data/pitfalls_images.xml")
    skeletons_only = Annotations(
        ann.images,
        ann.keypoints[ann.keypoints["label"] != "landmark"].reset_index(drop=True),
        ann.skeletons,
        ann.labels,
        ann.boxes,
        ann.attributes,
    )
    hand = [a for a in to_coco(skeletons_only)["annotations"] if a["category_id"] == 1][0]
    assert hand["bbox"] == [1.0, 2.0, 39.0, 28.0]  # from the <box> with group_id 3
