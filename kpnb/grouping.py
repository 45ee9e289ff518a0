"""Which keypoint rows form one object: labels turned into skeleton instances.

Besides skeletons, exports hold keypoints as one ``<points>`` shape per keypoint label
(`points_to_skeleton`), one ``<points>`` shape per object (`points_as_instances`), or
several skeleton labels with one layout (`merge_skeletons`). Each returns `Annotations`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from kpnb.errors import KpnbError
from kpnb.skeleton import Skeleton
from kpnb.tables import Annotations, tidy_boxes, tidy_keypoints

__all__ = ["GROUPING_RULES", "merge_skeletons", "points_as_instances", "points_to_skeleton"]

log = logging.getLogger(__name__)


def points_as_instances(ann: Annotations, labels: Sequence[str] | None = None) -> Annotations:
    """Make each multi-coordinate ``<points>`` shape one instance of a skeleton named after
    its label, with points ``1..n``. Training needs a fixed point count: shapes of one label
    with different numbers of points are a `KpnbError` naming the image."""
    labels = ann.multi_point_labels() if labels is None else list(labels)
    if not labels:
        return ann
    kp = ann.keypoints
    skeletons = dict(ann.skeletons)
    keypoint = kp["keypoint"].astype(object).to_numpy().copy()
    for label in labels:
        mask = (kp["label"] == label).to_numpy()
        sizes = kp.loc[mask].groupby("instance_id")["point_index"].size()
        sk = ann.skeleton_for(label)
        short = sizes[sizes != sk.num_keypoints]
        if len(short):
            row = kp.loc[mask & (kp["instance_id"] == short.index[0]).to_numpy()].iloc[0]
            raise KpnbError(
                f"label {label!r}: {ann.describe_image(int(row['image_index']))} has a <points> "
                f"shape with {int(short.iloc[0])} points where others have {sk.num_keypoints}; "
                "give every shape of a label the same points (or use a skeleton label in CVAT)"
            )
        keypoint[mask] = np.asarray(sk.keypoints, dtype=object)[kp.loc[mask, "point_index"]]
        skeletons[label] = sk
    return replace(
        ann,
        keypoints=tidy_keypoints(kp.assign(keypoint=keypoint)),
        skeletons=skeletons,
        meta={**ann.meta, "points_as_instances": list(labels)},
    )


def merge_skeletons(
    ann: Annotations, labels: Sequence[str], name: str | None = None
) -> Annotations:
    """Treat the instances of several skeleton `labels` sharing one layout (a COCO category
    per species) as one skeleton `name` (default: the first label); ``meta["merged_labels"]``
    keeps them. A `KpnbError` when a label is no skeleton or the layouts differ."""
    labels = list(dict.fromkeys(labels))
    if missing := [lab for lab in labels if lab not in ann.skeletons]:
        raise KpnbError(f"{missing} are not skeleton labels; skeletons: {list(ann.skeletons)}")
    first = ann.skeletons[labels[0]]
    if other := [lab for lab in labels if ann.skeletons[lab].keypoints != first.keypoints]:
        raise KpnbError(
            f"labels {other} have other keypoints than {labels[0]!r} "
            f"({len(ann.skeletons[other[0]].keypoints)} vs {first.num_keypoints}); only labels "
            "sharing one layout can be trained as one skeleton"
        )
    name = name or labels[0]
    kp = ann.keypoints
    label = kp["label"].astype(object).where(~kp["label"].astype(str).isin(labels), name)
    skeletons = {k: v for k, v in ann.skeletons.items() if k not in labels}
    skeletons[name] = first
    return replace(
        ann,
        keypoints=tidy_keypoints(kp.assign(label=label)),
        skeletons=skeletons,
        meta={**ann.meta, "merged_labels": labels},
    )


GROUPING_RULES = ("auto", "group_id", "box", "image")


def _containing_box(plain: pd.DataFrame, boxes: pd.DataFrame) -> np.ndarray:
    """For each point row, the position in `boxes` of the smallest box of its image that
    contains it, or -1."""
    out = np.full(len(plain), -1, dtype=np.int64)
    pts = plain[["image_index", "x", "y"]].assign(row=np.arange(len(plain)))
    bx = boxes[["image_index", "xtl", "ytl", "xbr", "ybr"]].reset_index(drop=True)
    bx = bx.assign(box=np.arange(len(bx)), area=(bx["xbr"] - bx["xtl"]) * (bx["ybr"] - bx["ytl"]))
    pairs = pts.merge(bx, on="image_index")
    inside = pairs["x"].between(pairs["xtl"], pairs["xbr"])
    inside &= pairs["y"].between(pairs["ytl"], pairs["ybr"])
    best = pairs[inside].sort_values(["row", "area"]).drop_duplicates("row")
    out[best["row"].to_numpy()] = best["box"].to_numpy()
    return out


def points_to_skeleton(
    ann: Annotations,
    name: str = "object",
    labels: Sequence[str] | None = None,
    *,
    group_by: str = "auto",
) -> Annotations:
    """Combine plain one-point ``<points>`` shapes (one label per keypoint) into instances
    of a skeleton `name` whose keypoints are the point labels.

    Which points form one object (`group_by`):

    * ``"group_id"``: points sharing a CVAT ``group_id`` (a box in it is the instance box);
    * ``"box"``: points inside the same ``<box>`` (the smallest; it is the instance box);
    * ``"image"``: all of an image's points (Christian Mills' toy set: one object per image);
    * ``"auto"`` (default): ``group_id`` if any of the points has one, else ``box`` if the
      images have boxes, else ``image``.

    ``meta["points_grouping"]`` records the rule used. A label missing from an instance is
    an absent point (v=0). Multi-point labels and existing skeletons are left alone.

    Raises:
        ValueError: an instance would get two points of one label (names the image and
            the rule), or there are no one-point labels.
    """
    if group_by not in GROUPING_RULES:
        raise KpnbError(f"unknown grouping {group_by!r}; choose one of {GROUPING_RULES}")
    multi = ann.multi_point_labels()  # instances already
    default = [lab for lab in ann.plain_labels() if lab not in multi]
    labels = default if labels is None else list(labels)
    if not labels:
        raise KpnbError(
            f"no plain one-point <points> labels to combine (skeletons: {list(ann.skeletons)}"
            + (f", multi-point labels {multi}, which are instances already" if multi else "")
            + "); points_to_skeleton is for exports with one <points> shape per keypoint label"
        )
    if several := [lab for lab in labels if lab in multi]:
        raise KpnbError(
            f"labels {several} have <points> shapes with several points: each such shape is "
            "one object already; leave them out of points_to_skeleton"
        )
    kp = ann.keypoints
    plain = kp[kp["label"].astype(str).isin(labels)]
    if group_by == "auto":
        boxed = ann.boxes["image_index"].isin(plain["image_index"]).any()
        group_by = "group_id" if (plain["group_id"] != 0).any() else "box" if boxed else "image"
    key, inst_group, new_boxes = _object_keys(plain, ann, group_by)
    log.info(
        "points_to_skeleton %r: %d labels grouped into instances by %s", name, len(labels), group_by
    )
    plain = plain.assign(_key=key, _group=inst_group)
    _check_one_point_per_label(ann, plain, group_by)
    base = int(kp["instance_id"].max()) + 1 if len(kp) else 0
    merged = _instance_rows(plain, labels, name, base)
    rest = kp[~kp.index.isin(plain.index)]
    new_kp = tidy_keypoints(
        pd.concat(
            [rest.astype({"label": object, "keypoint": object, "source": object}), merged],
            ignore_index=True,
        )
    )
    return replace(
        ann,
        keypoints=new_kp,
        skeletons={**ann.skeletons, name: Skeleton(tuple(labels))},
        boxes=new_boxes,
        meta={**ann.meta, "points_as_skeleton": name, "points_grouping": group_by},
    )


def _object_keys(
    plain: pd.DataFrame, ann: Annotations, group_by: str
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Per point row of `plain`: the key of its object within its image, the
    ``group_id`` its instance gets, and the box table (boxes used as instance boxes get
    a ``group_id``). Points the rule cannot place form one object per image (warned)."""
    if group_by == "image":
        return np.zeros(len(plain), np.int64), np.zeros(len(plain), np.int64), ann.boxes
    if group_by == "group_id":
        key = plain["group_id"].to_numpy(np.int64)
        if (key == 0).any():
            log.warning(
                "%d points have no group_id; each image's ungrouped points form one instance",
                int((key == 0).sum()),
            )
        return key, key, ann.boxes
    boxes, kp = ann.boxes, ann.keypoints  # the smallest containing box is the object
    box = _containing_box(plain, boxes)
    if (box < 0).any():
        log.warning(
            "%d points lie in no <box>; each image's unboxed points form one instance",
            int((box < 0).sum()),
        )
    # Give the containing boxes a group_id, so every stage finds them as instance boxes.
    gid = boxes["group_id"].to_numpy(np.int64).copy()
    used = np.unique(box[box >= 0])
    fresh = used[gid[used] == 0]
    top = int(max(gid.max(initial=0), kp["group_id"].max() if len(kp) else 0))
    gid[fresh] = top + 1 + np.arange(len(fresh))
    inst_group = np.zeros(len(box), np.int64)
    inst_group[box >= 0] = gid[box[box >= 0]]  # (with no boxes at all, gid is empty)
    return box + 1, inst_group, tidy_boxes(boxes.assign(group_id=gid))


def _check_one_point_per_label(ann: Annotations, plain: pd.DataFrame, group_by: str) -> None:
    """Refuse an object with two points of one label, naming the image and the rule."""
    dup = plain.duplicated(["image_index", "_key", "label"])
    if dup.any():
        row = plain[dup].iloc[0]
        how = {
            "image": "one object per image",
            "group_id": f"group_id {int(row['group_id'])}",
            "box": "one box" if row["_key"] else "no <box>",
        }[group_by]
        raise KpnbError(
            f"{ann.describe_image(int(row['image_index']))} has two {row['label']!r} points in "
            f"{how} (grouping by {group_by}): with several objects per image, give each "
            "object's points a CVAT group (or a <box> around them)"
        )


def _instance_rows(plain: pd.DataFrame, labels: list[str], name: str, base: int) -> pd.DataFrame:
    """One row per (object, label) of skeleton `name`, instance ids from `base` on; a
    label an object lacks is an absent point (v=0, not occluded, not outside)."""
    objects = plain.drop_duplicates(["image_index", "_key"]).sort_values(["image_index", "_key"])
    k, n = len(labels), len(objects)
    point = np.tile(np.arange(k), n)
    grid = pd.DataFrame(
        {
            "image_index": np.repeat(objects["image_index"].to_numpy(), k),
            "_key": np.repeat(objects["_key"].to_numpy(), k),
            "point_index": point,
            "keypoint": np.array(labels, dtype=object)[point],
            "instance_id": base + np.repeat(np.arange(n), k),
            "group_id": np.repeat(objects["_group"].to_numpy(), k),
        }
    )
    pos = {lab: i for i, lab in enumerate(labels)}
    src = plain.assign(point_index=plain["label"].astype(str).map(pos)).drop(
        columns=["instance_id", "keypoint", "label", "group_id", "_group"]
    )
    merged = grid.merge(src, on=["image_index", "_key", "point_index"], how="left")
    merged = merged.drop(columns=["_key"]).assign(label=name)
    for c in ("occluded", "outside", "keyframe"):
        merged[c] = merged[c].astype("boolean").fillna(False)
    merged["source"] = merged["source"].astype(object).where(merged["source"].notna(), "manual")
    return merged.fillna({"visibility": 0, "z_order": 0, "track_id": -1})
