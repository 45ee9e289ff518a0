"""COCO keypoints JSON -> the tidy `Annotations` tables, from any COCO keypoints file (CVAT's
"COCO Keypoints 1.0" export, datumaro's, MS-COCO's), assuming no skeleton base, contiguous
category ids, zeroed coordinates for v=0, or keypoint names."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from kpnb.errors import KpnbError
from kpnb.io import Source
from kpnb.skeleton import Skeleton
from kpnb.tables import KEYPOINT_COLUMNS, Annotations, tidy_boxes, tidy_images, tidy_keypoints

log = logging.getLogger(__name__)


class CocoFormatError(KpnbError):
    """A COCO file is malformed: the message names the file, the entry and the fix."""


def _skeleton_edges(edges, k: int, where: str) -> tuple[tuple[int, int], ...]:
    """0-based edges from a COCO ``skeleton``: MS-COCO writes 1-based pairs, CVAT/datumaro
    0-based (a 0 says so). Pairs past the `k` keypoints (CrowdPose ships COCO's 17-point
    skeleton for 14 keypoints) are dropped with a warning; non-pairs are refused."""
    fine = type(edges) is list and all(type(e) is list and len(e) == 2 for e in edges)
    pairs = [(_whole(a), _whole(b)) for a, b in edges] if fine else [(None, None)]
    if any(None in pair for pair in pairs):
        raise CocoFormatError(
            f"{where}: skeleton {_show(edges)} is not a list of [a, b] keypoint numbers; write the "
            "skeleton as pairs of keypoint numbers, e.g. [[1, 2], [2, 3]]"
        )
    base = 0 if min((min(p) for p in pairs), default=1) == 0 else 1
    if base == 0:
        log.info("%s: 0-based skeleton indices (as CVAT/datumaro write them)", where)
    shifted = [(a - base, b - base) for a, b in pairs]
    good = tuple(e for e in shifted if 0 <= e[0] < k and 0 <= e[1] < k and e[0] != e[1])
    if len(good) < len(shifted):
        bad = [p for p, e in zip(pairs, shifted, strict=True) if e not in good]
        msg = "%s: dropped %d skeleton edges %s that point past its %d keypoints (%d-based)"
        log.warning(msg, where, len(bad), bad, k, base)
    return good


def _subset_of(name: str) -> str | None:
    """``train`` for ``person_keypoints_train.json`` (CVAT's and MS-COCO's names), else None."""
    m = re.match(r"(?:person_keypoints|instances)_(.+)\.json$", Path(name).name)
    return m.group(1) if m else None


_INT64 = (-(2**63), 2**63 - 1)  # image and annotation ids are int64 columns
_MAX_SIDE = 2**31 - 1  # width and height are Int32 columns
_MAX_COORD = float(np.finfo(np.float32).max)  # coordinates are float32 columns


def _whole(value, lo: int = _INT64[0], hi: int = _INT64[1]) -> int | None:
    """A JSON value as an int if it is a whole number in ``[lo, hi]`` (``3`` or ``3.0``,
    not ``true`` nor ``"3"``, as in `kpnb.cvat.parse.whole`), else None."""
    if type(value) is float and value.is_integer():
        value = int(value)
    return value if type(value) is int and lo <= value <= hi else None


def _show(value) -> str:
    """A JSON value as it stood in the file, cut short for a one-line message."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def _field(record: dict, key: str) -> str:
    return _show(record[key]) if key in record else "missing"


def _not(record: dict, key: str, wanted: str) -> str:
    """``"<key> is missing"`` or ``"<key> <value> is not <wanted>"``, for a message."""
    return f"{key} {_show(record[key])} is not {wanted}" if key in record else f"{key} is missing"


def read_coco(source: str | os.PathLike | Source) -> Annotations:
    """Read COCO keypoints JSON (a file, an export folder or zip with several subsets).

    A file's subset comes from its name (``person_keypoints_<subset>.json``); image ids are
    the file's own. Each annotation with keypoints is one skeleton instance of its category
    (``num_keypoints: 0`` too: a box-only object), its ``bbox`` a box grouped with it. Its
    ``id``, ``area``, ``iscrowd`` and ``segmentation`` are kept in ``meta["coco_annotations"]``
    (by ``instance_id``) and category ids in ``meta["coco_categories"]``, for `to_coco` and
    `kpnb predict`; ``attributes`` become instance attributes, but CVAT's shape flags
    (``occluded``, ``keyframe``...). A v=0 point at exactly (0, 0) is absent (NaN).
    Logged, not refused: skeleton pairs past the keypoint count (dropped), a 0-based
    skeleton, a category naming more keypoints than its annotations hold (first names kept).

    Raises:
        CocoFormatError: not COCO keypoints JSON kpnb can trust (bad JSON, ids not whole or
            repeated, an unknown image or category, a bad ``bbox``, ``iscrowd``, visibility
            or coordinate); the message names the file, record, field and value, with the
            fix. A width/height of 0 is "unknown", not an error.
    """
    src = source if isinstance(source, Source) else Source(source, "coco", error=CocoFormatError)
    src.error = CocoFormatError
    rows = _CocoRows()
    for name in src.files:
        where = src.where(name)
        doc = _document(src.read_bytes(name), where)
        image_of = rows.add_images(doc["images"], _subset_of(name), where)
        cats = _categories_by_id(doc.get("categories", []), where)
        sizes = _keypoint_counts(doc, cats, where)
        rows.add_categories(cats, sizes, where)
        for index, ann in enumerate(doc["annotations"]):
            rows.add_annotation(ann, index, image_of, cats, sizes, where)
    return rows.annotations(src.path)


def _document(raw: bytes, where: str) -> dict:
    """The parsed COCO document, refusing bad JSON and files without images/annotations."""
    what = None
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        what = f"line {exc.lineno}: not valid JSON ({exc.msg})"
    except UnicodeDecodeError as exc:  # json takes UTF-8, -16 and -32
        what = f"byte {exc.start}: not UTF-8 text ({exc.reason})"
    except ValueError:  # an int past Python's cap on digits
        what = f"a number longer than {sys.get_int_max_str_digits()} digits"
    except RecursionError:
        what = "JSON nested too deeply"
    if what:
        raise CocoFormatError(f"{where}: {what}; export it again")
    if not isinstance(doc, dict) or "annotations" not in doc or "images" not in doc:
        raise CocoFormatError(f"{where}: no 'images'/'annotations': not a COCO file")
    for key in ("images", "annotations", "categories"):
        entries = doc.get(key, [])
        if type(entries) is not list:
            raise CocoFormatError(
                f"{where}: '{key}' is {_show(entries)}, not a list; write '{key}' as [{{...}}, ...]"
            )
        bad = next((i for i, e in enumerate(entries) if type(e) is not dict), None)
        if bad is not None:
            raise CocoFormatError(
                f"{where}: {key}[{bad}] is {_show(entries[bad])}, not an object; write each entry "
                "as {...} with its fields"
            )
    return doc


def _categories_by_id(entries: list, where: str) -> dict:
    """The file's categories by id; refuses repeated or non-whole ids, empty names, bad lists."""
    cats: dict = {}
    for n, cat in enumerate(entries):
        cid, name = _whole(cat.get("id")), cat.get("name")
        if cid is None:
            raise CocoFormatError(
                f"{where}: categories[{n}] ({_field(cat, 'name')}): "
                f"{_not(cat, 'id', 'a whole number')}; give each category a whole-number id, e.g. 1"
            )
        if cid in cats:
            raise CocoFormatError(
                f"{where}: category id {cid} is used twice ({_field(cats[cid], 'name')} and "
                f"{_field(cat, 'name')}); give every category its own id"
            )
        if type(name) is not str or not name:
            raise CocoFormatError(
                f"{where}: category {cid}: {_not(cat, 'name', 'a non-empty string')}; write the "
                'label\'s name, e.g. "person"'
            )
        if cat.get("keypoints") is not None and type(cat["keypoints"]) is not list:
            raise CocoFormatError(
                f"{where}: category {cid} ({name!r}): keypoints {_show(cat['keypoints'])} is not a "
                'list; write the keypoint names as a list, e.g. ["nose", "left_eye"]'
            )
        cats[cid] = dict(cat, id=cid)
    return cats


# CVAT's COCO export writes a shape's own flags among its attributes; CVAT reads them back
# as flags (its CVAT_INTERNAL_ATTRIBUTES), not as attributes of the label.
_CVAT_FLAGS = frozenset(("occluded", "outside", "keyframe", "track_id", "rotation"))

_IMAGE_FIELDS = ["image_index", "image_id", "name", "width", "height", "subset"]
_BOX_FIELDS = "image_index box_id label xtl ytl xbr ybr group_id occluded source".split()
_EXTRA_FIELDS = "instance_id id area iscrowd segmentation".split()  # meta["coco_annotations"]


class _CocoRows:
    """What `read_coco` collects over the files of one export, as plain rows in file order:
    images (numbered across files), ``chunks`` (image, instance, label, group, ``[K, 3]``),
    boxes (``group_id`` 1, 2...), attributes, and each instance's file id, area, iscrowd
    and segmentation (``extra``); labels, skeletons and the file's category ids by label."""

    def __init__(self):
        self.images, self.chunks, self.boxes, self.attrs = [], [], [], []
        self.extra, self.labels = [], []
        self.skeletons, self.category_ids = {}, {}

    def add_images(self, entries: list, subset: str | None, where: str) -> dict:
        """Append one file's images; returns its image id -> ``image_index``."""
        image_of = {}
        for n, img in enumerate(entries):
            iid, name = _whole(img.get("id")), img.get("file_name")
            if iid is None:  # checked before the duplicate test: 1 and 1.5 are not one id
                raise CocoFormatError(
                    f"{where}: images[{n}] ({_field(img, 'file_name')}): "
                    f"{_not(img, 'id', 'a whole number')}; give each image its own whole-number "
                    "id, e.g. 1, 2, 3, and use it as the annotations' image_id"
                )
            if iid in image_of:
                first = self.images[image_of[iid]][2]
                raise CocoFormatError(
                    f"{where}: image id {iid} is used twice ({first!r} and "
                    f"{_field(img, 'file_name')}); give every image its own id; kpnb does not "
                    "merge their annotations"
                )
            if type(name) is not str or not name:
                raise CocoFormatError(
                    f"{where}: image {iid}: {_not(img, 'file_name', 'a non-empty string')}; write "
                    "the image's file name (its path under the images folder)"
                )
            size = [_whole(img.get(key), 0, _MAX_SIDE) for key in ("width", "height")]
            for key, side in zip(("width", "height"), size, strict=True):
                if side is None and img.get(key) is not None:
                    raise CocoFormatError(
                        f"{where}: image {iid} ({name!r}): {key} {_show(img[key])} is not a whole "
                        f"number of pixels >= 1; write the image's real {key} in pixels, or 0 or "
                        "nothing if unknown"
                    )
            image_of[iid] = len(self.images)
            # 0 is unknown: datumaro (CVAT) writes it
            self.images.append((len(self.images), iid, name, *(s or None for s in size), subset))
        return image_of

    def add_categories(self, cats: dict, sizes: dict, where: str) -> None:
        """A label per category name with its id (first file wins) and a skeleton per
        category with keypoints: K names (numbered ``1..`` where the file names fewer)."""
        for cat in cats.values():
            name, k = cat["name"], sizes[cat["id"]]
            if name not in self.category_ids:
                self.category_ids[name] = cat["id"]
                self.labels.append({"name": name, "type": "skeleton" if k else "any"})
            if k and name not in self.skeletons:
                names = [str(n) for n in cat.get("keypoints") or []][:k]
                names += [str(i + 1) for i in range(len(names), k)]
                edges = _skeleton_edges(cat.get("skeleton") or [], k, f"{where}: category {name!r}")
                self.skeletons[name] = Skeleton(tuple(names), edges)

    def add_annotation(
        self, ann: dict, index: int, image_of: dict, cats: dict, sizes: dict, where: str
    ):
        """One annotation (``annotations[index]``): its ``bbox`` a box grouped with it, its
        keypoints one instance; ids, ``bbox``, ``iscrowd`` and ``attributes`` checked."""
        _check_annotation(ann, index, where)
        aid = ann["id"]
        if ann["image_id"] not in image_of:
            raise CocoFormatError(
                f"{where}: annotation {aid} refers to unknown image {ann['image_id']}; list that "
                "image in 'images'"
            )
        cat = cats.get(ann["category_id"])
        if cat is None:
            raise CocoFormatError(
                f"{where}: annotation {aid} has unknown category {ann['category_id']}; list it in "
                "'categories'"
            )
        image, label = image_of[ann["image_id"]], cat["name"]
        group = 0 if ann.get("bbox") in (None, []) else self._add_box(ann, image, label, where)
        if not ann.get("keypoints"):
            return
        triples = _triples(ann["keypoints"], sizes[cat["id"]], aid, where)
        instance = len(self.chunks)
        self.chunks.append((image, instance, label, group, triples))
        for key, value in (ann.get("attributes") or {}).items():
            if key not in _CVAT_FLAGS:
                self.attrs.append((instance, -1, str(key), str(value)))
        self.extra.append(
            (instance, aid, ann.get("area"), int(ann.get("iscrowd") or 0), ann.get("segmentation"))
        )

    def _add_box(self, ann: dict, image: int, label: str, where: str) -> int:
        """Append the ``[x, y, w, h]`` bbox (4 finite numbers, w, h >= 0) as xyxy; its group."""
        box = ann["bbox"]
        fine = type(box) is list and len(box) == 4 and all(type(v) in (int, float) for v in box)
        try:
            x, y, w, h = (float(v) for v in box) if fine else [math.nan] * 4
        except OverflowError:  # an int with 400 digits
            x = y = w = h = math.nan
        if not (w >= 0 and h >= 0 and all(abs(v) <= _MAX_COORD for v in (x, y, x + w, y + h))):
            raise CocoFormatError(
                f"{where}: annotation {ann['id']}: bbox {_show(box)} is not [x, y, w, h]: 4 finite "
                "numbers with w, h >= 0; write the box as [x, y, width, height] in pixels, or "
                "leave bbox out"
            )
        group = len(self.boxes) + 1
        occluded = bool((ann.get("attributes") or {}).get("occluded"))
        self.boxes.append((image, ann["id"], label, x, y, x + w, y + h, group, occluded, "file"))
        return group

    def annotations(self, source: Path) -> Annotations:
        """The collected rows as tidy tables."""
        return Annotations(
            tidy_images(pd.DataFrame(self.images, columns=_IMAGE_FIELDS)),
            tidy_keypoints(_keypoint_rows(self.chunks, self.skeletons)),
            self.skeletons,
            pd.DataFrame(self.labels, columns=["name", "type"]),
            tidy_boxes(pd.DataFrame(self.boxes, columns=_BOX_FIELDS)),
            pd.DataFrame(self.attrs, columns=["instance_id", "point_index", "name", "value"]),
            {
                "source": str(source),
                "path": str(source),
                "format": "coco",
                "coco_annotations": pd.DataFrame(self.extra, columns=_EXTRA_FIELDS),
                "coco_categories": self.category_ids,
            },
        )


def _check_annotation(ann: dict, index: int, where: str) -> None:
    """Refuse non-whole ids, an ``iscrowd`` not 0/1, ``attributes`` not an object."""
    for key in ("id", "image_id", "category_id"):
        value = _whole(ann.get(key))
        if value is None:
            who = f"annotation {ann['id']}" if key != "id" else f"annotations[{index}]"
            own = " (each annotation its own)" if key == "id" else ""
            raise CocoFormatError(
                f"{where}: {who}: {_not(ann, key, 'a whole number')}; write the {key} as a whole "
                f"number, e.g. 1{own}"
            )
        ann[key] = value
    crowd = ann.get("iscrowd")
    if crowd is not None and (type(crowd) not in (int, bool) or crowd not in (0, 1)):
        raise CocoFormatError(
            f"{where}: annotation {ann['id']}: iscrowd {_show(crowd)} is not 0 or 1; write iscrowd "
            "0 (one object) or 1 (a crowd)"
        )
    if ann.get("attributes") is not None and type(ann["attributes"]) is not dict:
        raise CocoFormatError(
            f"{where}: annotation {ann['id']}: attributes {_show(ann['attributes'])} is not an "
            'object; write attributes as {"name": value, ...} or leave them out'
        )


def _triples(kps: list, k: int, aid, where: str) -> np.ndarray:
    """An annotation's keypoints as ``[k, 3]`` (x, y, v), a short list padded with absent points
    (`k` is the longest); refusing non-numbers, coordinates that are not finite float32
    numbers (whatever v says) and visibilities other than 0/1/2."""
    try:
        triples = np.asarray(kps, dtype=np.float64).reshape(-1, 3)
    except (TypeError, ValueError, OverflowError):
        raise CocoFormatError(
            f"{where}: annotation {aid}: keypoints {_show(kps)} are not [x, y, v] numbers; write 3 "
            "finite numbers per keypoint"
        ) from None
    if len(triples) < k:  # fewer than others: the missing ones are absent
        triples = np.vstack([triples, np.zeros((k - len(triples), 3))])
    with np.errstate(invalid="ignore"):  # NaN compares False: refused as not finite
        placed = (np.abs(triples[:, :2]) <= _MAX_COORD).all(axis=1)
    v = triples[:, 2]
    known = (v == 0) | (v == 1) | (v == 2)
    if placed.all() and known.all():
        return triples
    point = int(np.flatnonzero(~(placed & known))[0])
    x, y, v = triples[point]
    if not placed[point]:
        raise CocoFormatError(
            f"{where}: annotation {aid}: keypoint {point} is at x={x:g}, y={y:g} (v={v:g}), not a "
            "finite number (NaN, Infinity, or too large, such as 1e400); write real pixel "
            "coordinates; an absent keypoint is written 0, 0, 0 in COCO (refused whatever its v)"
        )
    raise CocoFormatError(
        f"{where}: annotation {aid}: visibility {v:g} at keypoint {point}; COCO visibility is 0 "
        "(absent), 1 (occluded) or 2 (visible)"
    )


def _keypoint_rows(chunks: list, skeletons: dict) -> pd.DataFrame:
    """The keypoint table from per-annotation ``[K, 3]`` arrays, in one vectorised step."""
    if not chunks:
        return pd.DataFrame({c: [] for c in KEYPOINT_COLUMNS})  # the tidy table's own list
    counts = np.array([len(c[4]) for c in chunks])
    xyv = np.concatenate([c[4] for c in chunks])
    point = np.concatenate([np.arange(n) for n in counts])
    labels = np.repeat(np.array([c[2] for c in chunks], dtype=object), counts)
    names = np.concatenate([np.asarray(skeletons[c[2]].keypoints, dtype=object) for c in chunks])
    v = xyv[:, 2].astype(np.int8)
    x, y = xyv[:, 0].copy(), xyv[:, 1].copy()
    unplaced = (v == 0) & (x == 0) & (y == 0)
    x[unplaced] = y[unplaced] = np.nan
    return pd.DataFrame(
        {
            "image_index": np.repeat([c[0] for c in chunks], counts),
            "instance_id": np.repeat([c[1] for c in chunks], counts),
            "label": labels,
            "keypoint": names,
            "point_index": point,
            "x": x,
            "y": y,
            "visibility": v,
            "occluded": v == 1,
            "outside": v == 0,
            "group_id": np.repeat([c[3] for c in chunks], counts),
            "source": "file",
        }
    )


def _keypoint_counts(doc: dict, cats: dict, where: str) -> dict:
    """K per category: the most triples an annotation holds (extra names dropped, warned)."""
    named = {cid: len(c.get("keypoints") or []) for cid, c in cats.items()}
    seen: dict = {}
    for n, ann in enumerate(doc["annotations"]):
        cid, kps = _whole(ann.get("category_id")), ann.get("keypoints") or []
        if type(kps) is not list:
            raise CocoFormatError(
                f"{where}: annotations[{n}] (id {_field(ann, 'id')}): keypoints {_show(kps)} is "
                "not a list; write the keypoints as [x1, y1, v1, x2, y2, v2, ...]"
            )
        if cid in named and kps:  # a bad id: refused by add_annotation
            if len(kps) % 3:
                raise CocoFormatError(
                    f"{where}: annotation {ann.get('id')}: keypoints length {len(kps)} is not a "
                    "multiple of 3; write one [x, y, v] per keypoint"
                )
            seen[cid] = max(seen.get(cid, 0), len(kps) // 3)
    sizes = {}
    for cid, n in named.items():
        k = seen.get(cid, n)
        if n and k < n:
            msg = "%s: category %r names %d keypoints but its annotations hold %d triples"
            log.warning(msg + "; keeping the first %d names", where, cats[cid]["name"], n, k, k)
        elif n and k > n:
            raise CocoFormatError(
                f"{where}: category {cats[cid]['name']!r} names {n} keypoints but an annotation "
                f"holds {k} triples; list every keypoint's name"
            )
        sizes[cid] = k
    return sizes
