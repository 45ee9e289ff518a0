"""The tidy annotation tables every kpnb stage shares, and the `Skeleton` they refer to.

`kpnb.cvat`, `kpnb.coco` and `kpnb.synthetic` produce an `Annotations`; `kpnb.dataset`
and `kpnb.viz` read one. Nothing here knows about files or tensors.

Frames: coordinates are pixels, x to the right and y down, in the original image.
Visibility is always explicit, COCO-style: 0 absent (not labelled or outside the
frame), 1 labelled but occluded, 2 visible. A missing point is NaN, never (0, 0).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

IMAGE_COLUMNS = ["image_index", "image_id", "name", "width", "height", "subset", "task_id"]
KEYPOINT_COLUMNS = [
    "image_index", "instance_id", "label", "keypoint", "point_index", "x", "y",
    "visibility", "occluded", "outside", "source", "group_id", "z_order", "track_id", "keyframe",
]  # fmt: skip
BOX_COLUMNS = [
    "image_index", "box_id", "label", "xtl", "ytl", "xbr", "ybr",
    "occluded", "source", "group_id", "z_order", "track_id",
]  # fmt: skip
ATTRIBUTE_COLUMNS = ["instance_id", "point_index", "name", "value"]
LABEL_COLUMNS = ["name", "type", "color", "parent"]

# "left" / "right" as a whole word: separated by start/end, "_", "-", "." or space.
_SIDE = re.compile(r"(?<![^\s_.\-])(left|right)(?![^\s_.\-])", re.IGNORECASE)


def flip_indices(names: Sequence[str]) -> list[int]:
    """The permutation that swaps left/right keypoints after a horizontal mirror.

    ``flipped[..., i, :] = original[..., perm[i], :]``. A name pairs with the name that
    differs only by ``left`` <-> ``right`` as a separate word (any case, joined by ``_``,
    ``-``, ``.`` or space): ``left_eye``/``right_eye``, ``Left Ear``/``Right Ear``.
    Names without a partner map to themselves, so a set with no pairs gives the identity.

    Example:
        >>> flip_indices(["nose", "left_eye", "right_eye"])
        [0, 2, 1]
    """
    lookup = {name: i for i, name in enumerate(names)}
    perm = list(range(len(names)))
    for i, name in enumerate(names):

        def swap(m: re.Match) -> str:
            word = m.group(1)
            other = "right" if word.lower() == "left" else "left"
            if word.isupper():
                return other.upper()
            if word[0].isupper():
                return other.capitalize()
            return other

        partner = _SIDE.sub(swap, name)
        if partner != name and partner in lookup:
            perm[i] = lookup[partner]
    return perm


@dataclass(frozen=True)
class Skeleton:
    """A keypoint layout: names in definition order and 0-based edges between them.

    Args:
        keypoints: keypoint names; their order is the order of every ``[K]`` axis in kpnb.
        edges: pairs of 0-based indices into ``keypoints``.
    """

    keypoints: tuple[str, ...]
    edges: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "keypoints", tuple(str(k) for k in self.keypoints))
        object.__setattr__(self, "edges", tuple((int(a), int(b)) for a, b in self.edges))
        if len(set(self.keypoints)) != len(self.keypoints):
            dupes = sorted({k for k in self.keypoints if self.keypoints.count(k) > 1})
            raise ValueError(f"skeleton keypoint names must be unique, got duplicates {dupes}")
        k = len(self.keypoints)
        bad = [e for e in self.edges if not (0 <= e[0] < k and 0 <= e[1] < k)]
        if bad:
            raise ValueError(f"skeleton edges {bad} point outside 0..{k - 1} ({k} keypoints)")

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoints)

    def to_dict(self) -> dict:
        """Plain lists and strings (what checkpoints and JSON files hold)."""
        return {"keypoints": list(self.keypoints), "edges": [list(e) for e in self.edges]}

    @classmethod
    def from_dict(cls, data: dict) -> Skeleton:
        """The inverse of `to_dict`; raises ValueError on anything else."""
        if not isinstance(data, dict) or not isinstance(data.get("keypoints"), (list, tuple)):
            raise ValueError(f"not a skeleton dict (keypoints, edges): {str(data)[:80]}")
        return cls(tuple(data["keypoints"]), tuple(map(tuple, data.get("edges") or ())))

    @property
    def flip_indices(self) -> list[int]:
        """Left/right permutation derived from the names (see `flip_indices`)."""
        return flip_indices(self.keypoints)

    @property
    def flip_pairs(self) -> list[tuple[int, int]]:
        """The (left, right) index pairs that swap on a horizontal flip."""
        perm = self.flip_indices
        return [(i, j) for i, j in enumerate(perm) if i < j]


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})


# Compact dtypes: a 400,000-image export has millions of point rows, so repeated strings
# are categoricals and numbers are as narrow as they can safely be.
_KEYPOINT_DTYPES = {
    "image_index": "int32", "instance_id": "int64", "label": "category", "keypoint": "category",
    "point_index": "int16", "x": "float32", "y": "float32", "visibility": "int8",
    "occluded": "bool", "outside": "bool", "source": "category", "group_id": "int32",
    "z_order": "int32", "track_id": "int32", "keyframe": "bool",
}  # fmt: skip
_IMAGE_DTYPES = {
    "image_index": "int32", "image_id": "int64", "name": "object", "width": "Int32",
    "height": "Int32", "subset": "category", "task_id": "Int64",
}  # fmt: skip
_BOX_DTYPES = {
    "image_index": "int32", "box_id": "int64", "label": "category", "xtl": "float32",
    "ytl": "float32", "xbr": "float32", "ybr": "float32", "occluded": "bool",
    "source": "category", "group_id": "int32", "z_order": "int32", "track_id": "int32",
}  # fmt: skip
_DEFAULTS = {"source": "manual", "group_id": 0, "z_order": 0, "track_id": -1, "keyframe": False,
             "occluded": False, "outside": False, "subset": None, "task_id": None}  # fmt: skip


def _tidy(df: pd.DataFrame, columns: list[str], dtypes: dict[str, str]) -> pd.DataFrame:
    # Column by column, no copy of the whole frame: readers call this on millions of rows.
    out = {}
    for c in columns:
        col = df[c] if c in df.columns else pd.Series([_DEFAULTS.get(c)] * len(df), dtype=object)
        dt = dtypes.get(c)
        if dt == "category" and isinstance(col.dtype, pd.CategoricalDtype):
            out[c] = col.array  # already compact: no round trip through Python strings
            continue
        values = col.to_numpy() if isinstance(col, pd.Series) else col
        if dt == "category":
            values = np.asarray(values, dtype=object)
            out[c] = pd.Categorical(np.where(pd.isna(values), None, values))
        elif dt == "object":
            out[c] = np.asarray(values, dtype=object)
        elif dt[0].isupper():  # pandas' nullable integers
            out[c] = col.astype(dt).to_numpy()
        else:
            values = np.asarray(values)
            out[c] = values if values.dtype == np.dtype(dt) else values.astype(dt)
    return pd.DataFrame(out, index=pd.RangeIndex(len(df)))


def tidy_keypoints(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with the keypoint table's columns, order and compact dtypes (defaults filled).

    A missing ``visibility`` column is derived from ``occluded``/``outside``.
    """
    if "visibility" not in df.columns:
        df = df.assign(
            visibility=visibility_from_flags(
                df.get("occluded", False), df.get("outside", False)
            ).reshape(-1)
            if len(df)
            else np.zeros(0, np.int8)
        )
    return _tidy(df, KEYPOINT_COLUMNS, _KEYPOINT_DTYPES)


def tidy_images(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with the image table's columns, order and dtypes."""
    return _tidy(df, IMAGE_COLUMNS, _IMAGE_DTYPES)


def tidy_boxes(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with the box table's columns, order and dtypes."""
    return _tidy(df, BOX_COLUMNS, _BOX_DTYPES)


def visibility_from_flags(occluded, outside) -> np.ndarray:
    """COCO visibility as CVAT's exporter computes it: outside -> 0, occluded -> 1, else 2."""
    occluded = np.asarray(occluded, dtype=bool)
    outside = np.asarray(outside, dtype=bool)
    return np.where(outside, 0, np.where(occluded, 1, 2)).astype(np.int8)


@dataclass
class Annotations:
    """Keypoint annotations as tidy pandas tables (what `kpnb.cvat.read_cvat` returns).

    Attributes:
        images: one row per image or video frame: ``image_index`` (0..N-1, file order),
            ``image_id``, ``name``, ``width``, ``height``, ``subset``, ``task_id``.
        keypoints: one row per point: ``image_index``, ``instance_id``, ``label``,
            ``keypoint``, ``point_index``, ``x``, ``y``, ``visibility`` (0/1/2),
            ``occluded``, ``outside``, ``source``, ``group_id``, ``z_order``, ``track_id``,
            ``keyframe``. Skeleton instances have one row per skeleton keypoint, in
            definition order.
        skeletons: skeleton label -> `Skeleton`.
        labels: the label definitions (``name``, ``type``, ``color``, ``parent``).
        boxes: rectangles (``xtl ytl xbr ybr``), kept because a box grouped with a
            skeleton is its object box.
        attributes: long table of shape attributes: ``instance_id``, ``point_index``
            (-1 for the instance itself), ``name``, ``value`` (text as written).
        meta: where the tables came from (``source``, ``format``, ``meta_kind``...) and
            counts of shapes kpnb does not model (``skipped``).
    """

    images: pd.DataFrame
    keypoints: pd.DataFrame
    skeletons: dict[str, Skeleton] = field(default_factory=dict)
    labels: pd.DataFrame = field(default_factory=lambda: _empty(LABEL_COLUMNS))
    boxes: pd.DataFrame = field(default_factory=lambda: tidy_boxes(_empty(BOX_COLUMNS)))
    attributes: pd.DataFrame = field(default_factory=lambda: _empty(ATTRIBUTE_COLUMNS))
    meta: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        n_inst = self.keypoints["instance_id"].nunique() if len(self.keypoints) else 0
        return (
            f"Annotations({len(self.images)} images, {n_inst} instances, "
            f"{len(self.keypoints)} points, skeletons={list(self.skeletons)})"
        )

    # -- summaries the tutorial shows -------------------------------------------------
    def label_counts(self) -> pd.Series:
        """Instances per label (skeletons and points shapes), most frequent first."""
        inst = self.keypoints.drop_duplicates("instance_id")
        return inst["label"].astype(str).value_counts().rename("instances")

    def keypoint_counts(self) -> pd.DataFrame:
        """Points per (label, keypoint) split by visibility: columns 0, 1, 2 and total."""
        kp = self.keypoints
        table = (
            kp.groupby(
                [kp["label"].astype(str), kp["keypoint"].astype(str), "visibility"], sort=False
            )
            .size()
            .unstack("visibility", fill_value=0)
            .reindex(columns=[0, 1, 2], fill_value=0)
        )
        table.columns = ["absent", "occluded", "visible"]
        table["total"] = table.sum(axis=1)
        return table

    def visibility_counts(self) -> pd.Series:
        """Points per visibility value (0 absent, 1 occluded, 2 visible)."""
        counts = self.keypoints["visibility"].value_counts().reindex([0, 1, 2], fill_value=0)
        return counts.rename(index={0: "absent (0)", 1: "occluded (1)", 2: "visible (2)"})

    def instances_per_image(self) -> pd.Series:
        """Number of instances in each image (images with none included)."""
        per = self.keypoints.groupby("image_index")["instance_id"].nunique()
        return per.reindex(self.images["image_index"], fill_value=0).rename("instances")

    def instance_array(self, image_index: int, label: str) -> np.ndarray:
        """The ``[N, K, 3]`` float32 array (x, y, v) of one image's instances of `label`.

        K is the skeleton's keypoint count (for a points label, the number of points
        each of its shapes holds). Absent points are ``(nan, nan, 0)``.
        """
        kp = self.keypoints
        rows = kp[(kp["image_index"] == image_index) & (kp["label"] == label)]
        k = self._num_points(label, rows)
        if rows.empty:
            return np.zeros((0, k, 3), dtype=np.float32)
        rows = rows.sort_values(["instance_id", "point_index"])
        n = rows["instance_id"].nunique()
        if len(rows) != n * k:
            raise ValueError(
                f"label {label!r} in image {image_index}: {len(rows)} points for {n} instances "
                f"is not {k} per instance"
            )
        xyv = rows[["x", "y", "visibility"]].to_numpy(dtype=np.float32)
        return xyv.reshape(n, k, 3)

    def _num_points(self, label: str, rows: pd.DataFrame) -> int:
        if label in self.skeletons:
            return self.skeletons[label].num_keypoints
        if rows.empty:
            return 0
        return int(rows.groupby("instance_id").size().iloc[0])

    def grouped_boxes(self) -> dict[tuple[int, int], tuple[float, float, float, float]]:
        """``(image_index, group_id) -> (xtl, ytl, xbr, ybr)`` of boxes grouped with a shape:
        in CVAT, the object box of the skeleton that shares its ``group_id``."""
        boxes = self.boxes[self.boxes["group_id"] != 0]
        return {(int(b.image_index), int(b.group_id)): (b.xtl, b.ytl, b.xbr, b.ybr)
                for b in boxes.itertuples(index=False)}  # fmt: skip

    def skeleton_for(self, label: str) -> Skeleton:
        """The skeleton of `label`, or, for a plain points label, a one-point skeleton."""
        if label in self.skeletons:
            return self.skeletons[label]
        if label in set(self.keypoints["label"].astype(str)):
            return Skeleton((label,))
        known = sorted(set(self.skeletons) | set(self.keypoints["label"].astype(str)))
        raise KeyError(f"no label {label!r} in these annotations; labels are {known}")


def points_to_skeleton(
    ann: Annotations, name: str = "object", labels: Sequence[str] | None = None
) -> Annotations:
    """Treat each image's plain one-point ``<points>`` shapes as one skeleton instance.

    The seed tutorial's layout has one ``<points>`` shape per keypoint label and one object
    per image; COCO and Keypoint R-CNN need instances. This makes the choice explicit: the
    skeleton `name` has the point labels as keypoints (`labels`, default: every plain label
    in first-seen order), each image with any of them becomes one instance, and a label
    missing from an image is an absent point (v=0). Existing skeletons are kept.

    Raises:
        ValueError: an image holds two shapes of one label, or a shape holds several
            points, so "one object per image" does not hold.
    """
    kp = ann.keypoints
    plain = kp[~kp["label"].astype(str).isin(list(ann.skeletons))]
    if labels is None:
        labels = list(dict.fromkeys(plain["label"].astype(str)))
    labels = list(labels)
    if not labels:
        raise ValueError(
            f"no plain <points> labels to combine (skeletons: {list(ann.skeletons)}); "
            "points_to_skeleton is for exports with one <points> shape per keypoint label"
        )
    plain = plain[plain["label"].astype(str).isin(labels)]
    multi = plain[plain["point_index"] > 0]
    if len(multi):
        raise ValueError(
            f"label {multi['label'].iloc[0]!r} in image {int(multi['image_index'].iloc[0])} has a "
            "<points> shape with several points; points_to_skeleton needs one point per shape"
        )
    dup = plain.duplicated(["image_index", "label"])
    if dup.any():
        row = plain[dup].iloc[0]
        raise ValueError(
            f"image {int(row['image_index'])} has two {row['label']!r} points: more than one "
            "object per image, so its points cannot form one skeleton instance"
        )
    images = np.sort(plain["image_index"].unique())
    k = len(labels)
    base = int(kp["instance_id"].max()) + 1 if len(kp) else 0
    pos = {lab: i for i, lab in enumerate(labels)}
    grid = pd.DataFrame({
        "image_index": np.repeat(images, k), "point_index": np.tile(np.arange(k), len(images)),
    })  # fmt: skip
    grid["instance_id"] = base + np.repeat(np.arange(len(images)), k)
    grid["keypoint"] = np.array(labels, dtype=object)[grid["point_index"]] if k else []
    src = plain.assign(point_index=plain["label"].astype(str).map(pos)).drop(
        columns=["instance_id", "keypoint", "label"]
    )
    merged = grid.merge(src, on=["image_index", "point_index"], how="left")
    merged["label"] = name
    merged["visibility"] = merged["visibility"].fillna(0)
    for c in ("occluded", "outside", "keyframe"):
        merged[c] = merged[c].astype("boolean").fillna(False)
    merged["source"] = merged["source"].astype(object).where(merged["source"].notna(), "manual")
    for c, default in (("group_id", 0), ("z_order", 0), ("track_id", -1)):
        merged[c] = merged[c].fillna(default)
    rest = kp[~kp.index.isin(plain.index)]
    new_kp = tidy_keypoints(pd.concat([rest.astype({"label": object, "keypoint": object,
                                                    "source": object}), merged],
                                      ignore_index=True))  # fmt: skip
    skeletons = {**ann.skeletons, name: Skeleton(tuple(labels))}
    return Annotations(ann.images, new_kp, skeletons, ann.labels, ann.boxes, ann.attributes,
                       {**ann.meta, "points_as_skeleton": name})  # fmt: skip


def save_tables(ann: Annotations, folder, fmt: str = "csv"):
    """Write the tables as ``images``/``keypoints``/``boxes``/``attributes`` CSV or parquet
    files plus ``skeletons.json``, atomically (the folder appears complete or not at all)."""
    import json
    from pathlib import Path

    from kpnb._io import atomic_path

    if fmt not in ("csv", "parquet"):
        raise ValueError(f"unknown table format {fmt!r}; choose 'csv' or 'parquet'")
    folder = Path(folder)
    with atomic_path(folder, directory=True) as tmp:
        for name in ("images", "keypoints", "boxes", "attributes", "labels"):
            df = getattr(ann, name)
            if fmt == "csv":
                df.to_csv(tmp / f"{name}.csv", index=False)
            else:
                df.to_parquet(tmp / f"{name}.parquet", index=False)
        skeletons = {k: {"keypoints": list(s.keypoints), "edges": [list(e) for e in s.edges]}
                     for k, s in ann.skeletons.items()}  # fmt: skip
        (tmp / "skeletons.json").write_text(json.dumps(skeletons, indent=2, ensure_ascii=False))
    return folder


def load_tables(folder) -> Annotations:
    """Read what `save_tables` wrote (CSV or parquet, detected from the files)."""
    import json
    from pathlib import Path

    folder = Path(folder)
    fmt = "parquet" if (folder / "keypoints.parquet").is_file() else "csv"

    def read(name):
        path = folder / f"{name}.{fmt}"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; is {folder} a folder from save_tables?")
        if fmt == "parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, keep_default_na=False, na_values=[""])

    stored = json.loads((folder / "skeletons.json").read_text())
    skeletons = {k: Skeleton(tuple(v["keypoints"]), tuple(map(tuple, v["edges"])))
                 for k, v in stored.items()}  # fmt: skip
    kp = read("keypoints")
    kp["label"] = kp["label"].astype(str)
    kp["keypoint"] = kp["keypoint"].astype(str)
    images = read("images")
    images["name"] = images["name"].astype(str)
    return Annotations(tidy_images(images), tidy_keypoints(kp), skeletons, read("labels"),
                       tidy_boxes(read("boxes")), read("attributes"))  # fmt: skip
