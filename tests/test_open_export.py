"""open_export: the notebooks' one call that adapts to the skeleton and the plain-points layout."""

import logging

import numpy as np
import pytest

from kpnb.cvat import read_cvat
from kpnb.data import open_export
from kpnb.errors import KpnbError
from kpnb.images import find_image
from kpnb.synthetic import FACE, STYLE_VERSION, generate


def test_skeleton_export_is_used_as_it_is(synthetic_export, caplog):
    with caplog.at_level(logging.INFO, logger="kpnb.data"):
        root, ann, label = open_export(synthetic_export)
    assert root == synthetic_export and label == "face"
    assert ann.skeletons[label] == FACE
    assert "points_as_skeleton" not in ann.meta
    assert not [r for r in caplog.records if "no skeleton" in r.getMessage()]
    assert len(ann.keypoints) == len(read_cvat(synthetic_export).keypoints)


def test_points_export_becomes_one_skeleton_instance_per_image(points_export, caplog):
    with caplog.at_level(logging.INFO, logger="kpnb.data"):
        root, ann, label = open_export(points_export)
    assert root == points_export and label == "object"
    assert ann.skeletons[label].keypoints == FACE.keypoints  # the point labels, in file order
    assert ann.meta["points_as_skeleton"] == "object"
    (message,) = [r.getMessage() for r in caplog.records if "no skeleton" in r.getMessage()]
    assert "'object'" in message and "nose" in message
    kp = ann.keypoints
    assert (kp.groupby("image_index")["instance_id"].nunique() == 1).all()
    assert (kp.groupby("instance_id").size() == FACE.num_keypoints).all()
    # every point the file holds keeps its coordinates; a cut-off keypoint is absent (v=0, NaN)
    raw = read_cvat(points_export).keypoints
    merged = kp.merge(raw, on=["image_index", "keypoint"], how="left", suffixes=("", "_raw"))
    labelled = merged["visibility"] > 0
    assert np.allclose(merged.loc[labelled, ["x", "y"]], merged.loc[labelled, ["x_raw", "y_raw"]])
    assert merged.loc[~labelled, "x_raw"].isna().all() and kp.loc[~labelled, "x"].isna().all()
    assert len(raw) == int(labelled.sum())


def test_skeleton_name_is_a_parameter(points_export):
    _, ann, label = open_export(points_export, skeleton_name="animal")
    assert label == "animal" and list(ann.skeletons) == ["animal"]


def test_dataset_kwargs_reach_get_dataset(tmp_path):
    root, ann, label = open_export("synthetic", root=tmp_path, n_images=5, seed=3)
    assert root == tmp_path / f"synthetic-v{STYLE_VERSION}-seed3-n5" and len(ann.images) == 5
    assert label == "face"


@pytest.mark.parametrize("form", ["zip", "annotations.xml"])
def test_root_holds_the_images_whatever_path_is_given(tmp_path, form):
    if form == "zip":
        spec = generate(tmp_path / "toy", 4, 0, layout="points", as_zip=True)
    else:
        spec = generate(tmp_path / "toy", 4, 0, layout="points") / "annotations.xml"
    root, ann, _ = open_export(spec, root=tmp_path / "cache")
    assert root.is_dir()
    assert all(find_image(root, r.name, r.subset) for r in ann.images.itertuples())


def _write(tmp_path, body: str):
    path = tmp_path / "export" / "annotations.xml"
    path.parent.mkdir()
    path.write_text(
        f'<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n'
        f"<version>1.1</version>\n{body}</annotations>\n"
    )
    return path.parent


def test_an_export_without_keypoints_is_refused_with_its_path(tmp_path):
    folder = _write(tmp_path, '<image id="0" name="a.jpg" width="8" height="8">\n</image>\n')
    with pytest.raises(ValueError, match=r"export.*no keypoints in this export"):
        open_export(folder)


def test_two_objects_in_one_image_are_refused_with_its_path(tmp_path):
    point = '<points label="nose" occluded="0" source="manual" points="{}" z_order="0"></points>\n'
    folder = _write(
        tmp_path,
        '<image id="0" name="a.jpg" width="8" height="8">\n'
        + point.format("1,1")
        + point.format("5,5")
        + "</image>\n",
    )
    with pytest.raises(ValueError, match=r"export.*two 'nose' points"):
        open_export(folder)


def test_command_line_options_are_the_same_call(points_export, tmp_path):
    """What ``kpnb train`` passes: explicit grouping, no silent skeleton, flips, image root."""
    root, ann, label = open_export(
        points_export,
        skeleton_name=None,
        points_as_skeleton="face",
        group_by="image",
        flip_pairs=[("left_ear", "right_ear")],
        images_root=tmp_path,
    )
    assert root == tmp_path and label == "face"
    assert ann.meta["points_grouping"] == "image"
    assert ann.skeletons["face"].flip_pairs == [(3, 4)]  # left_ear, right_ear only


def test_without_skeleton_name_plain_points_are_refused_naming_the_flag(points_export):
    from kpnb.cli import cli_message

    with pytest.raises(KpnbError, match="no skeleton label") as exc:
        open_export(points_export, skeleton_name=None)
    assert exc.value.param == "points_as_skeleton"
    assert str(exc.value).endswith("pass points_as_skeleton=NAME")
    assert cli_message(exc.value).endswith("pass --points-as-skeleton NAME")


def test_an_unknown_label_is_refused_naming_the_skeletons(synthetic_export):
    from kpnb.cli import cli_message

    with pytest.raises(KpnbError, match=r"'hand'.*\['face'\]") as exc:
        open_export(synthetic_export, label="hand")
    assert exc.value.param == "label" and str(exc.value).startswith("label='hand' ")
    assert cli_message(exc.value).startswith("--label 'hand' is not a skeleton")
