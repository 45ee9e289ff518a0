import numpy as np
import pandas as pd
import pytest

from kpnb.skeleton import Skeleton, flip_indices, normalise_name, unpaired_sides
from kpnb.tables import Annotations, tidy_images, tidy_keypoints


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


def test_skeleton_dict_round_trip_keeps_explicit_pairs():
    from kpnb.skeleton import Skeleton

    sk = Skeleton(("a", "L_x", "R_x", "p", "q"), ((0, 1),), pairs=(("p", "q"), ("L_x", "R_x")))
    back = Skeleton.from_dict(sk.to_dict())
    assert back == sk and back.flip_indices == [0, 2, 1, 4, 3]
    assert Skeleton.from_dict(Skeleton(("a", "b")).to_dict()).pairs is None
