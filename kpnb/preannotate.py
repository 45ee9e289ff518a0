"""What a model's pre-annotations save the person who corrects them in CVAT (notebook 06).

On images whose truth is known, `review` counts what the person would do with each labelled
point's pre-annotation:

* ``accept``: the predicted point lies within `tolerance` pixels of the truth;
* ``move``: the object was found but the point is further off;
* ``add``: no prediction matched the object (`kpnb.evaluate.match_instances`, box IoU
  >= 0.5 between boxes made from the points by one rule), so all its points are placed
  by hand.

Predictions that matched no object are counted too (``extra``): each one is a skeleton
to delete.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from kpnb.errors import KpnbError
from kpnb.skeleton import Skeleton
from kpnb.tables import Annotations

__all__ = [
    "TOLERANCE_PX",
    "Review",
    "hold_out",
    "image_paths",
    "review",
    "worst_first",
    "draw_review",
]

#: A predicted point this close to the truth (pixels of the original image) is kept as is.
TOLERANCE_PX = 5.0
#: The ``subset`` `hold_out` gives the images set aside: neither training nor validation.
UNLABELLED = "unlabelled"
_VALIDATION_EVERY = 5


def hold_out(ann: Annotations, n_labelled: int) -> tuple[Annotations, list[int], list[int]]:
    """``(ann, labelled, unlabelled)``: `ann` with its first `n_labelled` images labelled (their
    Train/Validation subsets kept, or every fifth Validation where they have none) and the
    others ``"unlabelled"`` (`kpnb.dataset.make_loaders` skips them), and both ``image_index``
    lists."""
    from kpnb.dataset import _TRAIN_NAMES, _VAL_NAMES

    n = len(ann.images)
    if not 2 <= n_labelled < n:
        raise KpnbError(
            f"n_labelled={n_labelled}: keep at least 2 images to train on and 1 to "
            f"pre-annotate, out of {n}; set it (N_LABELLED in notebook 06) between 2 and {n - 1}"
        )
    images = ann.images.copy()
    order = images["image_index"].to_numpy()
    labelled = sorted(order[:n_labelled].tolist())
    unlabelled = sorted(order[n_labelled:].tolist())
    subset = images["subset"].astype(object)
    lower = subset.astype(str).str.lower()
    mine = images["image_index"].isin(labelled)
    if not ((mine & lower.isin(_VAL_NAMES)).any() and (mine & lower.isin(_TRAIN_NAMES)).any()):
        # give the labelled part a split of its own
        every = np.arange(len(images)) % _VALIDATION_EVERY == _VALIDATION_EVERY - 1
        subset = pd.Series(np.where(every, "Validation", "Train"), images.index, dtype=object)
    images["subset"] = subset.where(mine, UNLABELLED).astype("category")
    return replace(ann, images=images), labelled, unlabelled


def image_paths(ann: Annotations, root, indices: Sequence[int]) -> list:
    """The image file of each ``image_index`` in `indices` (as `kpnb.images.find_image`
    finds it under `root`, by the export's own subsets); a missing one is an error."""
    from kpnb.images import find_image

    images = ann.images.set_index("image_index")
    paths = []
    for i in indices:
        row = images.loc[int(i)]
        path = find_image(root, str(row["name"]), row["subset"])
        if path is None:
            raise KpnbError(
                f"{ann.describe_image(int(i))}: no image file under {root}; pass the folder "
                "holding the images (IMAGES_ROOT, images_root=)"
            )
        paths.append(path)
    return paths


@dataclass
class Review:
    """`review`'s answer. `points` has one row per labelled ground-truth point:
    ``image_index``, ``instance_id`` (the truth's), ``keypoint``, ``truth_x``, ``truth_y``,
    ``prediction`` (the matched object's ``instance_id`` in the predictions, -1 for none),
    ``x``, ``y`` (its point, NaN for ``add``), ``error_px``, ``keypoint_score``, ``action``."""

    points: pd.DataFrame
    objects: int  # ground-truth objects (with at least one labelled point)
    found: int  # those a prediction matched
    extra: int  # predicted objects that matched none: skeletons to delete
    tolerance: float  # the accept radius in pixels

    def summary(self) -> pd.DataFrame:
        """Counts and shares of labelled points to accept, move and add."""
        counts = self.points["action"].value_counts().reindex(["accept", "move", "add"])
        counts = counts.fillna(0).astype(int)
        total = int(counts.sum())
        return pd.DataFrame(
            {"points": counts, "share": counts / total if total else np.nan},
            index=pd.Index(["accept", "move", "add"], name="action"),
        )

    @property
    def accepted(self) -> float:
        """The share of labelled points the person keeps as the model placed them."""
        return float(self.summary().loc["accept", "share"])


def _predicted(preds: pd.DataFrame, position: int, k: int):
    rows = preds[preds["image_index"] == position].sort_values(["instance_id", "point_index"])
    n = rows["instance_id"].nunique()
    xy = rows[["x", "y"]].to_numpy(dtype=np.float64).reshape(n, k, 2)
    kp_scores = rows["keypoint_score"].to_numpy(dtype=np.float64).reshape(n, k)
    scores = rows["score"].to_numpy(dtype=np.float64)[::k]
    return xy, kp_scores, scores, rows["instance_id"].to_numpy()[::k]


def review(
    preds: pd.DataFrame,
    ann: Annotations,
    label: str,
    image_indices: Sequence[int],
    tolerance: float = TOLERANCE_PX,
) -> Review:
    """What a person would do with `preds` (`kpnb.evaluate.predict`'s table, in original
    pixels) to reach `ann`'s truth (see the module docstring).

    Args:
        image_indices: the ``image_index`` in `ann` of each image `predict` was given, in
            its order (the table's ``image_index`` is the position in that list).
        tolerance: a point within this many pixels of the truth is accepted.
    """
    from kpnb.boxes import boxes_from_points
    from kpnb.evaluate import ImageResult, match_instances

    skeleton = ann.skeletons[label]
    k = skeleton.num_keypoints
    sizes = ann.images.set_index("image_index")[["width", "height"]]
    ids = ann.keypoints[ann.keypoints["label"] == label]
    rows, objects, found, extra = [], 0, 0, 0
    for position, index in enumerate(image_indices):
        truth = ann.instance_array(int(index), label).astype(np.float64)  # [N, K, 3]
        keep = (truth[..., 2] > 0).any(axis=1)
        truth = truth[keep]
        inst = ids[ids["image_index"] == index].sort_values(["instance_id", "point_index"])
        inst_ids = inst["instance_id"].to_numpy()[::k][keep]
        xy, kp_scores, scores, pred_ids = _predicted(preds, position, k)
        w, h = (float(v) for v in sizes.loc[index, ["width", "height"]])
        gt_boxes = boxes_from_points(truth[..., :2], truth[..., 2], w, h)
        boxes = boxes_from_points(xy, np.full(xy.shape[:2], 2), w, h)
        result = ImageResult(gt_boxes, truth, boxes, scores, np.dstack([xy, kp_scores]))
        match = match_instances(result)
        objects += len(truth)
        found += sum(m >= 0 for m in match)
        extra += len(xy) - sum(m >= 0 for m in match)
        for g, p in enumerate(match):
            for j in np.flatnonzero(truth[g, :, 2] > 0):
                tx, ty = truth[g, j, :2]
                x, y, score = (np.nan, np.nan, np.nan) if p < 0 else (*xy[p, j], kp_scores[p, j])
                error = float(np.hypot(x - tx, y - ty))
                action = "add" if p < 0 else "accept" if error <= tolerance else "move"
                pred = -1 if p < 0 else int(pred_ids[p])
                rows.append(
                    (int(index), int(inst_ids[g]), skeleton.keypoints[j], tx, ty, pred, x, y,
                     error, score, action)
                )  # fmt: skip
    columns = ["image_index", "instance_id", "keypoint", "truth_x", "truth_y", "prediction",
               "x", "y", "error_px", "keypoint_score", "action"]  # fmt: skip
    return Review(pd.DataFrame(rows, columns=columns), objects, found, extra, float(tolerance))


def worst_first(preds: pd.DataFrame) -> pd.DataFrame:
    """Predicted objects, the least certain first: one row per instance with its image
    (``image_index``, ``image_name``), ``score`` (the detection's) and ``keypoint_score``
    (the mean of its points'), sorted by the lowest mean keypoint score. The order to
    review pre-annotations in: the model says itself where it is unsure."""
    per = preds.groupby("instance_id", sort=False).agg(
        image_index=("image_index", "first"),
        image_name=("image_name", "first"),
        score=("score", "first"),
        keypoint_score=("keypoint_score", "mean"),
    )
    return per.sort_values(["keypoint_score", "score"], kind="stable").reset_index()[
        ["image_index", "image_name", "instance_id", "score", "keypoint_score"]
    ]


def draw_review(image, preds: pd.DataFrame, skeleton: Skeleton, point_threshold: float):
    """One image's predicted objects (`preds`: their rows) as CVAT would show them after
    pre-annotation: points scoring at least `point_threshold` as discs, the others
    (``outside`` in the CVAT function's output) as hollow squares to check."""
    from kpnb.viz import draw_instances

    rows = preds.sort_values(["instance_id", "point_index"])
    k = skeleton.num_keypoints
    n = rows["instance_id"].nunique()
    xyv = np.zeros((n, k, 3), dtype=np.float32)
    xyv[..., :2] = rows[["x", "y"]].to_numpy(dtype=np.float32).reshape(n, k, 2)
    low = rows["keypoint_score"].to_numpy().reshape(n, k) < point_threshold
    xyv[..., 2] = np.where(low, 1, 2)
    return draw_instances(image, xyv, skeleton, show_names=False)
