"""The tidy `Annotations` tables -> COCO keypoints JSON, as CVAT's own exporter writes it."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from kpnb.boxes import boxes_from_points
from kpnb.grouping import points_to_skeleton
from kpnb.io import atomic_path
from kpnb.skeleton import Skeleton
from kpnb.tables import Annotations

log = logging.getLogger(__name__)

_INFO = dict(contributor="", date_created="", description="kpnb", url="", version="", year="")
_IMAGE = dict(license=0, flickr_url="", coco_url="", date_captured=0)  # after id, size, name


def category_ids(ann: Annotations, names: list[str]) -> dict[str, int]:
    """The COCO category id of each label in `names`, as `to_coco` writes it: a COCO file's
    own (``meta["coco_categories"]``), else CVAT's rule, 1 + the label's position in the full
    label list (sublabels too); a label with neither takes the next free id."""
    kept = ann.meta.get("coco_categories") or {}
    ids = dict(kept) if kept else {str(n): i + 1 for i, n in enumerate(ann.labels["name"])}
    free = max(ids.values(), default=0) + 1
    for name in names:
        if name not in ids:
            ids[name], free = free, free + 1
    return {n: ids[n] for n in names}


def image_ids(ann: Annotations) -> list[int]:
    """The COCO id `to_coco` gives each image, in table order: a COCO file's own ids when
    they are unique, else 1..N."""
    ids = ann.images["image_id"]
    if ann.meta.get("format") == "coco" and ids.is_unique:
        return ids.tolist()
    return list(range(1, len(ids) + 1))


def to_coco(
    ann: Annotations, *, points_as_skeleton: str | None = None, skeletons_only: bool = False
) -> dict:
    """COCO keypoints as CVAT's "COCO Keypoints 1.0" export (datumaro) writes them.

    A category per skeleton label (1-based ``skeleton``) and per plain ``<points>`` label
    (empty lists); an annotation per instance or shape: ``[x, y, v]`` per point,
    ``num_keypoints`` (v > 0), ``area`` = w * h, ``iscrowd`` 0, and the ``bbox`` of a grouped
    box, else the one kpnb trains with (`kpnb.boxes.boxes_from_points`; CVAT writes the bare
    extent). What came from a COCO file keeps its ids, ``area``, ``iscrowd`` and
    ``segmentation``; else images are 1..N, categories by `category_ids`, video frames
    ``.PNG``. `points_as_skeleton` first makes one-point labels instances of a skeleton of
    that name (`kpnb.grouping.points_to_skeleton`); `skeletons_only` leaves plain labels out
    (logged with their counts).
    """
    if points_as_skeleton is not None:
        ann = points_to_skeleton(ann, points_as_skeleton)
    kp, plain = ann.keypoints, ann.plain_labels()
    if skeletons_only and plain:
        dropped = kp["label"].astype(str).isin(plain)
        log.warning(
            "to_coco: skeletons only: left out plain <points> labels %s (%d shapes)",
            plain,
            kp.loc[dropped, "instance_id"].nunique(),
        )
        kp, plain = kp[~dropped], []
    cat_ids = category_ids(ann, list(ann.skeletons) + plain)
    images, image_ids = _images(ann)
    return {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": dict(_INFO),
        "categories": _categories(ann, cat_ids),
        "images": images,
        "annotations": _annotations(ann, kp, cat_ids, image_ids),
    }


def _categories(ann: Annotations, cat_ids: dict[str, int]) -> list[dict]:
    """One COCO category per label (keypoints and 1-based edges, empty for plain points)."""
    out = []
    for name, cid in cat_ids.items():
        sk = ann.skeletons.get(name, Skeleton(()))
        edges = [[a + 1, b + 1] for a, b in sk.edges]
        out.append(
            dict(id=cid, name=name, supercategory="", keypoints=list(sk.keypoints), skeleton=edges)
        )
    return out


def _images(ann: Annotations) -> tuple[list[dict], dict[int, int]]:
    """The COCO ``images`` (ids by `image_ids`) and ``image_index -> image id``."""
    imgs, ids = ann.images, image_ids(ann)
    names = imgs["name"].astype(str).tolist()
    if ann.meta.get("format") == "video":  # frame_000012 in XML is frame_000012.PNG
        names = [n if Path(n).suffix else n + ".PNG" for n in names]
    width, height = (imgs[k].fillna(0).astype(int).tolist() for k in ("width", "height"))
    images = [
        {"id": i, "width": w, "height": h, "file_name": n, **_IMAGE}
        for i, w, h, n in zip(ids, width, height, names, strict=True)
    ]
    return images, dict(zip(imgs["image_index"].tolist(), ids, strict=True))


def _annotations(ann: Annotations, kp: pd.DataFrame, cat_ids: dict, image_ids: dict) -> list:
    """One COCO annotation per instance; what `read_coco` kept (``coco_annotations``) goes back."""
    if not len(kp):
        return []
    kp = kp.sort_values(["instance_id", "point_index"], kind="stable")
    inst = kp["instance_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, inst[1:] != inst[:-1]])
    first = kp.iloc[starts]
    size = ann.images.set_index("image_index").reindex(first["image_index"])
    xy, v = kp[["x", "y"]].to_numpy(np.float64), kp["visibility"].to_numpy(np.int64)
    boxes = boxes_from_points(
        xy, v, size["width"].to_numpy(np.float64, na_value=np.nan),
        size["height"].to_numpy(np.float64, na_value=np.nan), starts=starts,
    )  # fmt: skip
    grouped = ann.grouped_boxes()
    for n, key in enumerate(first[["image_index", "group_id"]].itertuples(index=False, name=None)):
        boxes[n] = grouped.get(key, boxes[n])
    bbox = np.round(np.c_[boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 2)
    area = np.round(bbox[:, 2] * bbox[:, 3], 4).tolist()
    x, y = np.round(np.nan_to_num(xy), 2).T.tolist()
    v, occluded = v.tolist(), kp["occluded"].tolist()
    kept = ann.meta.get("coco_annotations")
    kept = {} if kept is None else {r[0]: r[1:] for r in kept.itertuples(index=False)}
    out = []
    for n, (s, e, row) in enumerate(
        zip(starts, [*starts[1:], len(kp)], first.itertuples(index=False), strict=True)
    ):
        entry = {
            "id": n + 1,
            "image_id": image_ids[row.image_index],
            "category_id": cat_ids[row.label],
            "segmentation": [],
            "area": area[n],
            "bbox": bbox[n].tolist(),
            "iscrowd": 0,
            "attributes": {"occluded": any(occluded[s:e]), "keyframe": False},
            "keypoints": [c for t in zip(x[s:e], y[s:e], v[s:e], strict=True) for c in t],
            "num_keypoints": sum(vis > 0 for vis in v[s:e]),
        }
        if row.instance_id in kept:
            aid, file_area, iscrowd, segmentation = kept[row.instance_id]
            entry["id"], entry["iscrowd"] = aid, iscrowd
            if file_area is not None and file_area == file_area:  # NaN: the file had none
                entry["area"] = file_area
            if segmentation is not None:
                entry["segmentation"] = segmentation
        out.append(entry)
    return out


def write_coco(ann: Annotations, path: str | os.PathLike, **kwargs) -> Path:
    """Write `to_coco(ann, **kwargs)` as JSON at `path`, atomically."""
    path, doc = Path(path), to_coco(ann, **kwargs)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path
