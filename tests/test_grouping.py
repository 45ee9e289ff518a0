"""kpnb.grouping: one-point labels into skeleton instances, multi-point shapes, merged layouts."""

import pandas as pd
import pytest

from kpnb.cvat import read_cvat
from kpnb.grouping import merge_skeletons, points_as_instances, points_to_skeleton
from kpnb.skeleton import Skeleton
from kpnb.tables import Annotations, tidy_boxes, tidy_images, tidy_keypoints


def test_points_to_skeleton(points_export):
    ann = read_cvat(points_export)
    sk = points_to_skeleton(ann, "face")
    assert sk.skeletons["face"].keypoints == (
        "nose",
        "left_eye",
        "right_eye",
        "left_ear",
        "right_ear",
    )
    per = sk.keypoints.groupby("instance_id").size()
    assert (per == 5).all() and len(per) == len(ann.images)
    assert (sk.keypoints["visibility"] > 0).sum() == len(ann.keypoints)
    with pytest.raises(ValueError, match="no plain one-point <points>"):
        points_to_skeleton(sk.__class__(sk.images, sk.keypoints, sk.skeletons), "x")


def _points(rows, boxes=(), sizes=((100, 80),)) -> Annotations:
    """An export of plain <points>: rows are (image, instance, label, point, x, y, group)."""
    n = len(sizes)
    images = pd.DataFrame(
        {
            "image_index": range(n),
            "image_id": [7 + i for i in range(n)],
            "name": [f"im{i}.jpg" for i in range(n)],
            "width": [w for w, _ in sizes],
            "height": [h for _, h in sizes],
        }
    )
    kp = pd.DataFrame(
        rows, columns=["image_index", "instance_id", "label", "point_index", "x", "y", "group_id"]
    )
    kp["keypoint"] = kp["label"]
    box_df = pd.DataFrame(
        list(boxes),
        columns=["image_index", "box_id", "label", "xtl", "ytl", "xbr", "ybr", "group_id"],
    )
    return Annotations(tidy_images(images), tidy_keypoints(kp), {}, boxes=tidy_boxes(box_df))


def test_points_grouped_by_group_id_box_or_image():
    two_objects = [
        (0, 0, "head", 0, 10, 10, 1),
        (0, 1, "tail", 0, 20, 10, 1),
        (0, 2, "head", 0, 60, 50, 2),
        (0, 3, "tail", 0, 70, 50, 2),
    ]
    out = points_to_skeleton(_points(two_objects), "fish")
    assert out.meta["points_grouping"] == "group_id"
    per = out.keypoints.groupby("instance_id")["group_id"].agg(["first", "size"])
    assert per["first"].tolist() == [1, 2] and (per["size"] == 2).all()
    boxes = [(0, 0, "fish", 0, 0, 40, 30, 0), (0, 1, "fish", 50, 40, 90, 70, 0)]
    ungrouped = [r[:-1] + (0,) for r in two_objects]
    out = points_to_skeleton(_points(ungrouped, boxes), "fish")
    assert out.meta["points_grouping"] == "box"
    grouped = out.grouped_boxes()  # each instance found its containing box as its own
    firsts = out.keypoints.drop_duplicates("instance_id")
    assert [grouped[(0, int(g))] for g in firsts["group_id"]] == [(0, 0, 40, 30), (50, 40, 90, 70)]
    with pytest.raises(
        ValueError,
        match=r"image id 7 'im0.jpg' has two 'head' points in one "
        r"object per image \(grouping by image\)",
    ):
        points_to_skeleton(_points(ungrouped), "fish")
    one = points_to_skeleton(_points(ungrouped[:2]), "fish")
    assert one.meta["points_grouping"] == "image" and one.keypoints["instance_id"].nunique() == 1


def test_box_rule_places_unboxed_points_one_object_per_image(caplog):
    # Asking for boxes where an image has none: its points form one object, with a
    # warning, the same as points outside every box (this crashed with an IndexError).
    rows = [(0, 0, "head", 0, 10, 10, 0), (0, 1, "tail", 0, 20, 10, 0)]
    with caplog.at_level("WARNING", logger="kpnb.grouping"):
        out = points_to_skeleton(_points(rows), "fish", group_by="box")
    assert "2 points lie in no <box>" in caplog.text
    assert out.meta["points_grouping"] == "box" and out.keypoints["instance_id"].nunique() == 1
    assert (out.keypoints["group_id"] == 0).all() and out.boxes.empty
    with pytest.raises(ValueError, match=r"two 'head' points in no <box> \(grouping by box\)"):
        points_to_skeleton(_points([*rows, (0, 2, "head", 0, 30, 10, 0)]), "fish", group_by="box")


def test_multi_point_shapes_are_instances():
    rows = [(0, 0, "wheel", i, 10 * i, 5, 0) for i in range(4)]
    rows += [(0, 1, "wheel", i, 50 + i, 5, 0) for i in range(4)]
    ann = _points(rows)
    assert ann.multi_point_labels() == ["wheel"]
    assert ann.skeleton_for("wheel").keypoints == ("1", "2", "3", "4")
    assert ann.keypoint_counts().index.get_level_values("keypoint").tolist() == ["1", "2", "3", "4"]
    inst = points_as_instances(ann)
    assert inst.skeletons["wheel"].num_keypoints == 4
    assert inst.keypoints["keypoint"].astype(str).tolist()[:4] == ["1", "2", "3", "4"]
    assert inst.instance_array(0, "wheel").shape == (2, 4, 3)
    with pytest.raises(ValueError, match="image id 7 'im0.jpg' has a <points> shape with 3"):
        points_as_instances(_points(rows[:-1]))
    with pytest.raises(ValueError, match="several points"):
        points_to_skeleton(ann, "x", ["wheel"])


def test_merge_skeletons_of_one_layout():
    rows = [
        (0, i, lab, j, j, j, 0) for i, lab in enumerate(["cat", "dog", "cow"]) for j in range(2)
    ]
    ann = _points(rows)
    sk = Skeleton(("left_eye", "right_eye"), ((0, 1),))
    ann.skeletons.update(cat=sk, dog=sk, cow=Skeleton(("nose", "tail")))
    assert ann.same_layouts() == [["cat", "dog"], ["cow"]]
    merged = merge_skeletons(ann, ["cat", "dog"], "animal")
    assert set(merged.skeletons) == {"animal", "cow"}
    assert merged.meta["merged_labels"] == ["cat", "dog"]
    assert merged.label_counts().to_dict() == {"animal": 2, "cow": 1}
    with pytest.raises(ValueError, match=r"labels \['cow'\] have other keypoints"):
        merge_skeletons(ann, ["cat", "cow"])
