import numpy as np
import pandas as pd
import pytest

from kpnb.skeleton import Skeleton, flip_indices, normalise_name, unpaired_sides
from kpnb.tables import (
    Annotations,
    merge_skeletons,
    points_as_instances,
    points_to_skeleton,
    tidy_boxes,
    tidy_images,
    tidy_keypoints,
)


@pytest.mark.parametrize(
    "names, expected",
    [
        (["nose", "left_eye", "right_eye"], [0, 2, 1]),
        (["Left Ear", "Right Ear", "tail"], [1, 0, 2]),  # space, capitalised
        (["LEFT-hand", "RIGHT-hand"], [1, 0]),  # hyphen, upper case
        (["paw.left", "paw.right"], [1, 0]),  # dot, suffix
        (["lefty", "righty"], [0, 1]),  # not a separate word: no pair
        (["left_eye", "nose"], [0, 1]),  # no partner: stays
        (["a", "b", "c"], [0, 1, 2]),  # no pairs at all: identity
        ([], []),
        (["Left_Ear", "RIGHT_EAR"], [1, 0]),  # mixed case
        (["left-wrist", "right.wrist"], [1, 0]),  # mixed separators
        (["L_Shoulder", "R_Shoulder", "L_F_Paw", "R_F_Paw"], [1, 0, 3, 2]),  # L_/R_ prefixes
        (["l ankle", "r ankle", "nose"], [1, 0, 2]),  # "l "/"r " prefixes
        (["eye_L", "eye_R"], [1, 0]),  # a side letter at the end
        (["lip", "rim"], [0, 1]),  # a leading l/r letter is not a side word
        (["left", "right"], [0, 1]),  # nothing left to pair on
    ],
)
def test_flip_indices(names, expected):
    assert flip_indices(names) == expected


def test_flip_indices_is_an_involution():
    names = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "chin"]
    perm = flip_indices(names)
    assert [perm[p] for p in perm] == list(range(len(names)))


def test_skeleton_validates():
    with pytest.raises(ValueError, match="unique"):
        Skeleton(("a", "a"))
    with pytest.raises(ValueError, match="outside 0..1"):
        Skeleton(("a", "b"), ((0, 2),))
    s = Skeleton(["nose", "left_eye", "right_eye"], [[0, 1], [0, 2]])
    assert s.edges == ((0, 1), (0, 2)) and s.flip_pairs == [(1, 2)]


def _two_instances() -> Annotations:
    rows = []
    for inst, (dx, vis) in enumerate([(0, [2, 1, 0]), (50, [2, 2, 2])]):
        for j, name in enumerate(["a", "b", "c"]):
            rows.append(
                dict(
                    image_index=0,
                    instance_id=inst,
                    label="s",
                    keypoint=name,
                    point_index=j,
                    x=dx + j,
                    y=j,
                    visibility=vis[j],
                )
            )
    images = tidy_images(
        pd.DataFrame([dict(image_index=0, image_id=0, name="x.jpg", width=100, height=80)])
    )
    return Annotations(
        images, tidy_keypoints(pd.DataFrame(rows)), skeletons={"s": Skeleton(("a", "b", "c"))}
    )


def test_instance_array_and_counts():
    ann = _two_instances()
    arr = ann.instance_array(0, "s")
    assert arr.shape == (2, 3, 3) and arr.dtype == np.float32
    assert arr[1, 2].tolist() == [52, 2, 2]
    assert ann.instance_array(0, "nope").shape == (0, 0, 3)
    counts = ann.keypoint_counts()
    assert counts.loc[("s", "c"), "absent"] == 1 and counts["total"].sum() == 6
    assert ann.visibility_counts().tolist() == [1, 1, 4]
    assert ann.label_counts().to_dict() == {"s": 2}


def test_tidy_dtypes_are_compact():
    kp = _two_instances().keypoints
    assert kp["label"].dtype == "category" and kp["x"].dtype == np.float32
    assert kp["visibility"].dtype == np.int8 and kp["track_id"].eq(-1).all()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_save_and_load_tables_round_trip(tmp_path, synthetic_export, fmt):
    from kpnb.cvat import read_cvat
    from kpnb.tables import load_tables, save_tables

    ann = read_cvat(synthetic_export)
    back = load_tables(save_tables(ann, tmp_path / "t", fmt))
    pd.testing.assert_frame_equal(ann.keypoints, back.keypoints, check_categorical=False)
    pd.testing.assert_frame_equal(ann.images, back.images, check_categorical=False)
    assert back.skeletons == ann.skeletons


def test_points_to_skeleton(points_export):
    from kpnb.cvat import read_cvat
    from kpnb.tables import points_to_skeleton

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


def test_explicit_pairs_and_unpaired_sides():
    names = ["nose", "left_eye", "right_eye", "left_hoof", "Paw A", "Paw B"]
    assert unpaired_sides(names) == ["left_hoof"]
    assert normalise_name("L_Eye") == "left_eye" and normalise_name("Left-Eye") == "left_eye"
    sk = Skeleton(tuple(names)).with_flip_pairs([("Paw A", "Paw B"), (1, 2)])
    assert sk.flip_pairs == [(1, 2), (4, 5)] and sk.flip_indices == [0, 2, 1, 3, 5, 4]
    assert "no partner for ['left_hoof']" in sk.flip_summary()
    assert "flip is off" in Skeleton(("a", "b")).flip_summary()
    for bad, match in [
        ([("nose", "tail")], "'tail' is not a keypoint"),
        ([(0, 9)], "index 9"),
        ([(1, 2), (2, 3)], "one other keypoint"),
    ]:
        with pytest.raises(ValueError, match=match):
            Skeleton(tuple(names), pairs=bad)


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


def test_skeleton_dict_round_trip_keeps_explicit_pairs():
    from kpnb.skeleton import Skeleton

    sk = Skeleton(("a", "L_x", "R_x", "p", "q"), ((0, 1),), pairs=(("p", "q"), ("L_x", "R_x")))
    back = Skeleton.from_dict(sk.to_dict())
    assert back == sk and back.flip_indices == [0, 2, 1, 4, 3]
    assert Skeleton.from_dict(Skeleton(("a", "b")).to_dict()).pairs is None
