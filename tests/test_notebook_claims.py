"""What the prose of notebooks 00-03 says their outputs show, checked.

Two halves: the package calls the notebooks make, on the data they use (the synthetic
export, seed 0, 200 images), checked for the facts the prose states; and the committed
notebooks' own outputs (which nbval keeps equal to a fresh run) checked for the same facts
where a sentence points at a printed value.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from kpnb import viz
from kpnb.data import open_export
from kpnb.dataset import KeypointDataset
from kpnb.transforms import FinalizeKeypoints, KeypointHorizontalFlip

FOLDER = Path(__file__).parents[1] / "notebooks"


def _params(stem: str) -> dict:
    nb = json.loads((FOLDER / f"{stem}.ipynb").read_text(encoding="utf-8"))
    (cell,) = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    found = {}
    exec("".join(cell["source"]), {}, found)  # plain assignments: DATASET = "synthetic", ...
    return found


def _printed(stem: str) -> str:
    nb = json.loads((FOLDER / f"{stem}.ipynb").read_text(encoding="utf-8"))
    return "".join(
        "".join(o.get("text", ""))
        for c in nb["cells"]
        if c["cell_type"] == "code"
        for o in c["outputs"]
        if o.get("name") == "stdout"
    )


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    params = _params("03_augment_and_dataset")
    assert params["DATASET"] == "synthetic" and params["IMAGES_ROOT"] is None
    cache = tmp_path_factory.mktemp("cache")
    root, ann, label = open_export("synthetic", n_images=params["N_IMAGES"], root=cache)
    return root, ann, label


def test_every_notebook_uses_the_same_data_in_both_modes():
    for stem in ("00_setup", "01_cvat_to_pandas", "02_visualize", "03_augment_and_dataset"):
        params = _params(stem)
        assert params["N_IMAGES"] == 200, stem  # a number, not kpnb.pick(full, smoke)
        assert params["IMAGES_ROOT"] is None, stem


def test_the_showcase_object_is_alone_uncut_and_spread_out(series):
    _, ann, label = series
    first = viz.showcase_image(ann, label)
    arr = ann.instance_array(first, label)
    assert arr.shape[0] == 1  # one object: nothing crowds it
    assert (arr[0, :, 2] == 2).all()  # every point visible: nothing cut off or hidden
    xy = arr[0, :, :2]
    gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1)[np.triu_indices(len(xy), 1)]
    assert gaps.min() > 25  # names (about 12 px tall) do not overlap
    assert f"image id {int(ann.images.loc[first, 'image_id'])} " in _printed("00_setup")


def test_01_shows_occluded_and_absent_points_and_outside_keeps_coordinates(series):
    _, ann, _ = series
    counts = ann.keypoint_counts()
    assert counts["occluded"].sum() > 0 and counts["absent"].sum() > 0
    assert (counts["absent"] < 0.1 * counts["total"]).all()  # the slivers the plot enlarges
    outside = ann.keypoints[ann.keypoints["outside"]]
    assert len(outside) and (outside["visibility"] == 0).all()
    assert (outside[["x", "y"]].abs().sum(axis=1) > 0).all()  # real coordinates, not (0, 0)


def test_02_shows_an_occluded_and_an_absent_point(series):
    _, ann, label = series
    kp = ann.keypoints[ann.keypoints["label"] == label]
    assert (kp["visibility"] == 1).any() and (kp["visibility"] == 0).any()
    printed = _printed("02_visualize")
    occluded = re.search(r"a point occluded \(v=1\): (\[.*\])", printed)
    absent = re.search(r"a point absent \(v=0\): (\[.*\])", printed)
    assert occluded and ", 1)" in occluded.group(1)
    assert absent and ", 0)" in absent.group(1)


@pytest.fixture(scope="module")
def sample(series):
    root, ann, label = series
    first = viz.showcase_image(ann, label)
    image, target = KeypointDataset(ann, root, label, indices=[first]).sample(0)
    return image, target, ann.skeletons[label]


def test_03_plain_flip_puts_left_on_the_wrong_side_and_kpnb_does_not(sample):
    image, target, skeleton = sample
    names = list(skeleton.keypoints)
    left, right = names.index("left_eye"), names.index("right_eye")
    x = target["keypoints"][0, :, 0]
    _, plain = v2.RandomHorizontalFlip(p=1.0)(image, target)
    _, ours = KeypointHorizontalFlip(skeleton.flip_indices, p=1.0)(image, target)
    assert x[left] > x[right]  # an upright face: its left eye on the image's right
    assert plain["keypoints"][0, left, 0] < plain["keypoints"][0, right, 0]  # wrong side
    assert ours["keypoints"][0, left, 0] > ours["keypoints"][0, right, 0]  # as in the original
    offset = ours["keypoints"][0, left, 0] - plain["keypoints"][0, right, 0]
    assert offset.item() == pytest.approx(1.0)  # "differ by exactly one pixel"


def _crop_right_of(image, target, left):
    h, w = image.shape[-2:]

    def cut(x):
        return v2.functional.crop(x, 0, left, h, w - left)

    cropped = {k: cut(v) if k in ("boxes", "keypoints") else v for k, v in target.items()}
    return cut(image), cropped


def test_03_a_crop_keeps_a_cut_object_and_drops_an_object_with_nothing_left(sample):
    image, target, _ = sample
    xs = target["keypoints"][0, target["visibility"][0] > 0, 0]
    _, partly = FinalizeKeypoints()(*_crop_right_of(image, target, int(xs.min()) + 1))
    assert len(partly["boxes"]) == 1
    assert (partly["visibility"][0] == 0).any() and (partly["visibility"][0] == 2).any()
    _, gone = FinalizeKeypoints()(*_crop_right_of(image, target, int(xs.max()) + 1))
    assert len(gone["boxes"]) == 0 and len(gone["labels"]) == 0
    crop_image, cropped = _crop_right_of(image, target, int(xs.min()) + 1)
    _, sanitized = v2.SanitizeKeyPoints()(crop_image, cropped)
    assert len(sanitized["keypoints"]) == 0 and len(sanitized["boxes"]) == 1
    printed = _printed("03_augment_and_dataset")
    assert re.search(r"cut at x = \d+: visibility \[\[[0-2, ]*0[0-2, ]*\]\], 1 boxes", printed)
    assert re.search(r"cut at x = \d+: visibility \[\], 0 boxes", printed)
    # the cropped x is printed as it is, a negative fraction not rounded to 0
    first_x = cropped["keypoints"][0, :, 0]
    assert str([round(v, 1) for v in first_x.tolist()]) in printed
    assert torch.any(first_x < 0)
