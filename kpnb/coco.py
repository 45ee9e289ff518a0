"""COCO keypoints JSON <-> the tidy `Annotations` tables.

`read_coco` reads any COCO keypoints file (CVAT's "COCO Keypoints 1.0" export, datumaro's,
MS-COCO's) without assuming 0- or 1-based skeletons, contiguous category ids, zeroed
coordinates for v=0, or keypoint names being present. `to_coco` writes what CVAT's own
exporter writes. COCO's ``[x, y, w, h]`` boxes exist only inside this module.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from kpnb._io import atomic_path
from kpnb.tables import (
    Annotations,
    Skeleton,
    points_to_skeleton,
    tidy_boxes,
    tidy_images,
    tidy_keypoints,
)

__all__ = ["CocoFormatError", "read_coco", "to_coco", "write_coco"]

log = logging.getLogger(__name__)


class CocoFormatError(ValueError):
    """A COCO file is malformed: the message names the file, the entry and the fix."""


def _skeleton_base(edges: list, k: int, where: str) -> int:
    """0 or 1: CVAT/datumaro write 0-based pairs, MS-COCO 1-based; detect, don't assume."""
    flat = [int(v) for e in edges for v in e]
    if not flat:
        return 0
    if min(flat) == 0:
        return 0
    if max(flat) == k:
        return 1
    if max(flat) > k:
        raise CocoFormatError(f"{where}: skeleton index {max(flat)} exceeds {k} keypoints")
    log.info("%s: skeleton indices fit both bases; taking COCO's 1-based", where)
    return 1


def _subset_of(path: Path) -> str | None:
    m = re.match(r"(?:person_keypoints|instances)_(.+)\.json$", path.name)
    return m.group(1) if m else None


def _coco_files(source: Path) -> list[tuple[Path, bytes]]:
    if source.is_dir():
        files = sorted(source.glob("annotations/*.json")) or sorted(source.glob("*.json"))
        if not files:
            raise FileNotFoundError(f"{source}: no COCO .json in it or in its annotations/")
        return [(f, f.read_bytes()) for f in files]
    if source.suffix.lower() == ".zip":
        import zipfile
        import zlib

        from kpnb._io import ZipLimitError, read_member, zip_limits

        try:
            limits = zip_limits()
            with zipfile.ZipFile(source) as zf:
                infos = sorted((i for i in zf.infolist() if i.filename.lower().endswith(".json")),
                               key=lambda i: i.filename)  # fmt: skip
                if not infos:
                    raise FileNotFoundError(f"{source}: no .json member; is this a COCO export?")
                return [(Path(i.filename), read_member(source, zf, i, limits)) for i in infos]
        except ZipLimitError as exc:
            raise CocoFormatError(str(exc)) from None
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise CocoFormatError(f"{source}: not a readable zip ({exc}); export it "
                                  "again") from None  # fmt: skip
    return [(source, source.read_bytes())]


def read_coco(source: str | os.PathLike) -> Annotations:
    """Read COCO keypoints JSON (a file, an export folder or zip with several subsets).

    Each file's subset comes from its name (``person_keypoints_<subset>.json``). Each
    annotation with keypoints becomes one skeleton instance of its category; its ``bbox``
    becomes a box grouped with it (``group_id``), as CVAT groups a box with a skeleton.
    Points with v=0 at exactly (0, 0) are absent: NaN, not a real position.

    Raises:
        CocoFormatError: malformed JSON or inconsistent entries, named by file and id.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or folder")
    images, rows, boxes, attrs, skeletons, labels = [], [], [], [], {}, []
    next_instance = 0
    for path, raw in _coco_files(source):
        where = str(source if path == source else f"{source}!{path}")
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CocoFormatError(
                f"{where}: line {exc.lineno}: not valid JSON ({exc.msg}); export it again"
            ) from None
        if not isinstance(doc, dict) or "annotations" not in doc or "images" not in doc:
            raise CocoFormatError(f"{where}: no 'images'/'annotations': not a COCO file")
        subset = _subset_of(path)
        image_of = {}
        for img in doc["images"]:
            idx = len(images)
            image_of[img["id"]] = idx
            images.append({"image_index": idx, "image_id": img["id"], "name": img["file_name"],
                           "width": img.get("width"), "height": img.get("height"),
                           "subset": subset})  # fmt: skip
        cats = {c["id"]: c for c in doc.get("categories", [])}
        sizes = _keypoint_counts(doc, cats, where)
        for cat in cats.values():
            name, k = str(cat["name"]), sizes.get(cat["id"], 0)
            if name not in {lab["name"] for lab in labels}:
                labels.append({"name": name, "type": "skeleton" if k else "any"})
            if k and name not in skeletons:
                names = [str(n) for n in cat.get("keypoints") or []] or [
                    str(i + 1) for i in range(k)
                ]
                edges = cat.get("skeleton") or []
                base = _skeleton_base(edges, k, f"{where}: category {name!r}")
                skeletons[name] = Skeleton(
                    tuple(names), tuple((a - base, b - base) for a, b in edges)
                )
        for ann in doc["annotations"]:
            aid = ann.get("id")
            if ann.get("image_id") not in image_of:
                raise CocoFormatError(f"{where}: annotation {aid} refers to unknown image "
                                      f"{ann.get('image_id')}")  # fmt: skip
            cat = cats.get(ann.get("category_id"))
            if cat is None:
                raise CocoFormatError(f"{where}: annotation {aid} has unknown category "
                                      f"{ann.get('category_id')}")  # fmt: skip
            image, label = image_of[ann["image_id"]], str(cat["name"])
            group = 0
            if ann.get("bbox"):
                x, y, w, h = (float(v) for v in ann["bbox"])
                group = len(boxes) + 1
                boxes.append({"image_index": image, "box_id": aid, "label": label, "xtl": x,
                              "ytl": y, "xbr": x + w, "ybr": y + h, "group_id": group,
                              "occluded": bool((ann.get("attributes") or {}).get("occluded")),
                              "source": "file"})  # fmt: skip
            kps = ann.get("keypoints") or []
            if not kps:
                continue
            if len(kps) != 3 * sizes[cat["id"]]:
                raise CocoFormatError(f"{where}: annotation {aid}: {len(kps)} keypoint values, "
                                      f"expected 3 x {sizes[cat['id']]}")  # fmt: skip
            for j in range(len(kps) // 3):
                x, y, v = float(kps[3 * j]), float(kps[3 * j + 1]), int(kps[3 * j + 2])
                if v == 0 and x == 0 and y == 0:
                    x = y = math.nan
                rows.append((image, next_instance, label, skeletons[label].keypoints[j], j, x, y,
                             v, v == 1, v == 0, group))  # fmt: skip
            for key, value in (ann.get("attributes") or {}).items():
                attrs.append((next_instance, -1, str(key), str(value)))
            next_instance += 1
    kp = pd.DataFrame(rows, columns=["image_index", "instance_id", "label", "keypoint",
                                     "point_index", "x", "y", "visibility", "occluded",
                                     "outside", "group_id"])  # fmt: skip
    kp["source"] = "file"
    img_df = pd.DataFrame(images, columns=["image_index", "image_id", "name", "width", "height",
                                           "subset"])  # fmt: skip
    img_df[["width", "height"]] = img_df[["width", "height"]].astype("Int32")
    box_df = tidy_boxes(pd.DataFrame(boxes, columns=["image_index", "box_id", "label", "xtl",
                                                     "ytl", "xbr", "ybr", "group_id",
                                                     "occluded", "source"]))  # fmt: skip
    return Annotations(
        tidy_images(img_df), tidy_keypoints(kp), skeletons,
        pd.DataFrame(labels, columns=["name", "type"]), box_df,
        pd.DataFrame(attrs, columns=["instance_id", "point_index", "name", "value"]),
        {"source": str(source), "format": "coco"},
    )  # fmt: skip


def _keypoint_counts(doc: dict, cats: dict, where: str) -> dict:
    """K per category: from its names, else from its annotations (names may be missing)."""
    sizes = {cid: len(c.get("keypoints") or []) for cid, c in cats.items()}
    for ann in doc["annotations"]:
        cid, kps = ann.get("category_id"), ann.get("keypoints") or []
        if cid in sizes and kps and not (cats[cid].get("keypoints") or []):
            if len(kps) % 3:
                raise CocoFormatError(f"{where}: annotation {ann.get('id')}: keypoints length "
                                      f"{len(kps)} is not a multiple of 3")  # fmt: skip
            sizes[cid] = max(sizes[cid], len(kps) // 3)
    return sizes


def _category_ids(ann: Annotations) -> dict[str, int]:
    """CVAT's rule: id = 1 + position in the full label list (sublabels take ids too)."""
    names = [str(n) for n in ann.labels["name"]] if "name" in ann.labels else []
    ids = {n: i + 1 for i, n in enumerate(names) if n in ann.skeletons}
    for name in ann.skeletons:  # skeletons with no label entry (e.g. points_to_skeleton's)
        ids.setdefault(name, len(names) + len(ids) + 1)
    return ids


def to_coco(ann: Annotations, *, points_as_skeleton: str | None = None) -> dict:
    """COCO keypoints as CVAT's "COCO Keypoints 1.0" export writes them.

    One category per skeleton label (``keypoints`` names, 1-based ``skeleton``), one
    annotation per skeleton instance: ``[x, y, v] * K``, ``num_keypoints`` (v > 0),
    ``bbox`` from a box grouped with the instance or else the extent of its non-absent
    points, ``area`` = w * h, ``iscrowd`` 0; images numbered 1..N, unannotated ones kept.

    Args:
        points_as_skeleton: plain ``<points>`` labels never reach COCO in CVAT; pass a
            name to turn each image's points into one instance of a skeleton of that name
            first (see `kpnb.tables.points_to_skeleton`).

    Raises:
        ValueError: plain points exist and `points_as_skeleton` was not given.
    """
    if points_as_skeleton is not None:
        ann = points_to_skeleton(ann, points_as_skeleton)
    kp = ann.keypoints
    plain = sorted(set(kp["label"].astype(str)) - set(ann.skeletons))
    if plain:
        raise ValueError(
            f"labels {plain} are plain <points>, which COCO keypoints cannot hold; pass "
            "points_as_skeleton='<name>' to treat each image's points as one instance"
        )
    cat_ids = _category_ids(ann)
    categories = [{"id": cid, "name": name, "supercategory": "",
                   "keypoints": list(ann.skeletons[name].keypoints),
                   "skeleton": [[a + 1, b + 1] for a, b in ann.skeletons[name].edges]}
                  for name, cid in cat_ids.items()]  # fmt: skip
    image_ids = {int(i): n + 1 for n, i in enumerate(ann.images["image_index"])}
    images = [{"id": image_ids[int(r.image_index)], "width": int(r.width), "height": int(r.height),
               "file_name": str(r.name), "license": 0, "flickr_url": "", "coco_url": "",
               "date_captured": 0} for r in ann.images.itertuples(index=False)]  # fmt: skip
    grouped = ann.grouped_boxes()
    annotations = []
    for _, rows in kp.groupby("instance_id", sort=False):
        first = rows.iloc[0]
        xy = rows[["x", "y"]].to_numpy(np.float64)
        v = rows["visibility"].to_numpy(int)
        key = (int(first["image_index"]), int(first["group_id"]))
        if first["group_id"] and key in grouped:
            x0, y0, x1, y1 = grouped[key]
        elif (v > 0).any():
            x0, y0 = xy[v > 0].min(axis=0)
            x1, y1 = xy[v > 0].max(axis=0)
        else:
            x0 = y0 = x1 = y1 = 0.0
        flat = []
        for (x, y), vis in zip(np.nan_to_num(xy), v, strict=True):
            flat += [round(float(x), 2), round(float(y), 2), int(vis)]
        bbox = [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2),
                round(float(y1 - y0), 2)]  # fmt: skip
        annotations.append({
            "id": len(annotations) + 1, "image_id": image_ids[int(first["image_index"])],
            "category_id": cat_ids[str(first["label"])], "segmentation": [],
            "area": round(bbox[2] * bbox[3], 4), "bbox": bbox, "iscrowd": 0,
            "attributes": {"occluded": bool(rows["occluded"].any()), "keyframe": False},
            "keypoints": flat, "num_keypoints": int((v > 0).sum()),
        })  # fmt: skip
    return {"licenses": [{"name": "", "id": 0, "url": ""}],
            "info": {"contributor": "", "date_created": "", "description": "kpnb", "url": "",
                     "version": "", "year": ""},
            "categories": categories, "images": images, "annotations": annotations}  # fmt: skip


def write_coco(ann: Annotations, path: str | os.PathLike, **kwargs) -> Path:
    """Write `to_coco(ann, **kwargs)` as JSON at `path`, atomically."""
    path = Path(path)
    doc = to_coco(ann, **kwargs)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path
