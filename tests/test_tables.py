import numpy as np
import pandas as pd
import pytest

from kpnb.tables import Annotations, Skeleton, flip_indices, tidy_images, tidy_keypoints


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
    assert sk.skeletons["face"].keypoints == ("nose", "left_eye", "right_eye", "left_ear",
                                              "right_ear")  # fmt: skip
    per = sk.keypoints.groupby("instance_id").size()
    assert (per == 5).all() and len(per) == len(ann.images)
    assert (sk.keypoints["visibility"] > 0).sum() == len(ann.keypoints)
    with pytest.raises(ValueError, match="no plain one-point <points>"):
        points_to_skeleton(sk.__class__(sk.images, sk.keypoints, sk.skeletons), "x")
