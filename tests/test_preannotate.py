"""What pre-annotations save (notebook 06): the split, the review of each point, the order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kpnb.cvat import read_cvat
from kpnb.dataset import make_loaders, split_indices
from kpnb.errors import KpnbError
from kpnb.preannotate import UNLABELLED, draw_review, hold_out, image_paths, review, worst_first


@pytest.fixture(scope="module")
def ann(synthetic_export):
    return read_cvat(synthetic_export)


def _preds_from_truth(ann, indices, label="face"):
    """A `predict`-shaped table that is the truth itself (labelled points; others at 0)."""
    k = ann.skeletons[label].num_keypoints
    rows, inst = [], 0
    for pos, index in enumerate(indices):
        for obj in ann.instance_array(index, label):
            if not (obj[:, 2] > 0).any():
                continue
            for j in range(k):
                x, y = obj[j, :2] if obj[j, 2] > 0 else (0.0, 0.0)
                rows.append(dict(image_index=pos, image_name=f"{index}.jpg", instance_id=inst,
                                 label=label, keypoint=ann.skeletons[label].keypoints[j],
                                 point_index=j, x=float(x), y=float(y), visibility=2,
                                 score=0.9, keypoint_score=5.0 + j))  # fmt: skip
            inst += 1
    return pd.DataFrame(rows)


def test_hold_out_trains_and_validates_on_the_labelled_part_only(ann, synthetic_export):
    small, labelled, unlabelled = hold_out(ann, 10)
    assert labelled == list(range(10)) and unlabelled == list(range(10, 40))
    assert (small.images.loc[small.images["image_index"] >= 10, "subset"] == UNLABELLED).all()
    train, val = split_indices(small)
    assert sorted(train + val) == labelled and train and val
    train_loader, val_loader = make_loaders(small, synthetic_export, "face", size=64,
                                            num_workers=0)  # fmt: skip
    assert len(train_loader.dataset) + len(val_loader.dataset) == 10
    assert ann.images["subset"].ne(UNLABELLED).all()  # the input is left as it was
    with pytest.raises(KpnbError, match="n_labelled"):
        hold_out(ann, 40)


def test_hold_out_gives_an_export_without_subsets_a_split(ann):
    plain = hold_out(ann, 10)[0]
    plain.images["subset"] = pd.Series([None] * len(plain.images), dtype=object)
    small, labelled, _ = hold_out(plain, 10)
    train, val = split_indices(small)
    assert sorted(train + val) == labelled and len(val) == 2


def test_review_sorts_every_labelled_point_into_accept_move_add(ann):
    indices = list(range(20, 26))
    preds = _preds_from_truth(ann, indices)
    labelled = sum(int((ann.instance_array(i, "face")[..., 2] > 0).sum()) for i in indices)
    perfect = review(preds, ann, "face", indices)
    assert len(perfect.points) == labelled
    assert perfect.summary().loc["accept", "points"] == labelled and perfect.accepted == 1.0
    assert perfect.extra == 0 and perfect.found == perfect.objects

    moved = preds.copy()
    first = moved["instance_id"] == 0
    seen = moved[first].index[0]  # instance 0's first point, labelled or not
    moved.loc[seen, "x"] += 4.0  # within 5 px: still accepted
    moved.loc[moved[first].index[1], "x"] += 12.0  # a point to move
    dropped = moved[moved["instance_id"] != 1]  # object 1 not found: all its points to add
    n_dropped = int((perfect.points["instance_id"] == perfect.points["instance_id"].unique()[1])
                    .sum())  # fmt: skip
    extra = preds[preds["instance_id"] == 2].assign(instance_id=999, x=lambda d: d["x"] + 400)
    got = review(pd.concat([dropped, extra]), ann, "face", indices, tolerance=5.0)
    summary = got.summary()
    second_labelled = bool(ann.instance_array(20, "face")[0][1, 2] > 0)
    assert summary.loc["move", "points"] == int(second_labelled)
    assert summary.loc["add", "points"] == n_dropped
    assert summary.loc["accept", "points"] == labelled - n_dropped - int(second_labelled)
    assert got.extra == 1 and got.found == got.objects - 1
    assert np.isclose(summary["share"].sum(), 1.0)
    added = got.points[got.points["action"] == "add"]
    assert added["prediction"].eq(-1).all() and added["x"].isna().all()


def test_worst_first_and_its_picture(ann, synthetic_export):
    indices = [20, 21]
    preds = _preds_from_truth(ann, indices)
    preds.loc[preds["instance_id"] == 1, "keypoint_score"] = -3.0
    order = worst_first(preds)
    assert order["instance_id"].iloc[0] == 1 and order["keypoint_score"].is_monotonic_increasing
    assert len(order) == preds["instance_id"].nunique()
    paths = image_paths(ann, synthetic_export, indices)
    assert [p.name for p in paths] == list(ann.images.loc[indices, "name"])
    from PIL import Image

    image = Image.open(paths[0]).convert("RGB")
    rows = preds[preds["image_index"] == 0]
    low = draw_review(image, rows, ann.skeletons["face"], point_threshold=100.0)
    high = draw_review(image, rows, ann.skeletons["face"], point_threshold=-100.0)
    assert low.size == image.size and np.any(np.asarray(low) != np.asarray(high))


def test_image_paths_names_a_missing_image(ann, tmp_path):
    with pytest.raises(KpnbError, match="no image file"):
        image_paths(ann, tmp_path, [0])
