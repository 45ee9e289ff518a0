"""The tidy annotation tables every kpnb stage shares; `save_tables`/`load_tables` are
their own file format.

Coordinates are pixels, x to the right and y down, in the original image. Visibility is
explicit, COCO-style: 0 absent (not labelled or outside the frame), 1 labelled but
occluded, 2 visible. A missing point is NaN, never (0, 0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kpnb.errors import KpnbError
from kpnb.io import atomic_path
from kpnb.skeleton import Skeleton


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})


# Compact dtypes: a 400,000-image export has millions of point rows, so repeated strings
# are categoricals and numbers are as narrow as they can safely be.
_KEYPOINT_DTYPES = {
    "image_index": "int32",
    "instance_id": "int64",
    "label": "category",
    "keypoint": "category",
    "point_index": "int16",
    "x": "float32",
    "y": "float32",
    "visibility": "int8",
    "occluded": "bool",
    "outside": "bool",
    "source": "category",
    "group_id": "int32",
    "z_order": "int32",
    "track_id": "int32",
    "keyframe": "bool",
}
_IMAGE_DTYPES = {
    "image_index": "int32",
    "image_id": "int64",
    "name": "object",
    "width": "Int32",
    "height": "Int32",
    "subset": "category",
    "task_id": "Int64",
}
_BOX_DTYPES = {
    "image_index": "int32",
    "box_id": "int64",
    "label": "category",
    "xtl": "float32",
    "ytl": "float32",
    "xbr": "float32",
    "ybr": "float32",
    "occluded": "bool",
    "source": "category",
    "group_id": "int32",
    "z_order": "int32",
    "track_id": "int32",
}
_DEFAULTS = {
    "source": "manual",
    "group_id": 0,
    "z_order": 0,
    "track_id": -1,
    "keyframe": False,
    "occluded": False,
    "outside": False,
}
KEYPOINT_COLUMNS = list(_KEYPOINT_DTYPES)


def _tidy(df: pd.DataFrame, dtypes: dict[str, str]) -> pd.DataFrame:
    # Column by column, no copy of the whole frame: readers call this on millions of rows.
    out = {}
    for c, dt in dtypes.items():
        col = df[c] if c in df.columns else pd.Series([_DEFAULTS.get(c)] * len(df), dtype=object)
        if dt == "category" and isinstance(col.dtype, pd.CategoricalDtype):
            out[c] = col.array  # already compact: no round trip through Python strings
        elif dt == "category":
            values = col.to_numpy(dtype=object)
            out[c] = pd.Categorical(np.where(pd.isna(values), None, values))
        elif dt[0].isupper():  # pandas' nullable integers
            out[c] = col.astype(dt).to_numpy()
        else:
            out[c] = col.to_numpy(dtype=dt)
    return pd.DataFrame(out, index=pd.RangeIndex(len(df)))


def tidy_keypoints(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with the keypoint table's columns, order and compact dtypes (defaults filled; a
    missing ``visibility`` is derived from ``occluded``/``outside``)."""
    if "visibility" not in df.columns:
        flags = [df.get(c, pd.Series(False, index=df.index)) for c in ("occluded", "outside")]
        df = df.assign(visibility=visibility_from_flags(*flags))
    return _tidy(df, _KEYPOINT_DTYPES)


def tidy_images(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with the image table's columns, order and dtypes."""
    return _tidy(df, _IMAGE_DTYPES)


def tidy_boxes(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with the box table's columns, order and dtypes."""
    return _tidy(df, _BOX_DTYPES)


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
        keypoints: one row per point (a skeleton instance: one per keypoint, in definition
            order): ``image_index``, ``instance_id``, ``label``, ``keypoint``,
            ``point_index``, ``x``, ``y``, ``visibility`` (0/1/2), ``occluded``, ``outside``,
            ``source``, ``group_id``, ``z_order``, ``track_id``, ``keyframe``.
        skeletons: skeleton label -> `Skeleton`.
        labels: the label definitions (``name``, ``type``, ``color``, ``parent``).
        boxes: rectangles (``xtl ytl xbr ybr``): a box grouped with a skeleton is its box.
        attributes: ``instance_id``, ``point_index`` (-1: the instance), ``name``, ``value``.
        meta: where the tables came from (``source``, ``format``...), shapes skipped.
    """

    images: pd.DataFrame
    keypoints: pd.DataFrame
    skeletons: dict[str, Skeleton] = field(default_factory=dict)
    labels: pd.DataFrame = field(
        default_factory=lambda: _empty(["name", "type", "color", "parent"])
    )
    boxes: pd.DataFrame = field(default_factory=lambda: tidy_boxes(pd.DataFrame()))
    attributes: pd.DataFrame = field(
        default_factory=lambda: _empty(["instance_id", "point_index", "name", "value"])
    )
    meta: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        n_inst = self.keypoints["instance_id"].nunique()
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
        """Points per (label, keypoint) split by visibility, and their total (the points of
        a multi-coordinate ``<points>`` label are named ``1..n`` by position)."""
        kp = self.keypoints
        names = kp["keypoint"].astype(str)
        multi = kp["label"].astype(str).isin(self.multi_point_labels())
        if multi.any():
            names = names.where(~multi, (kp["point_index"].astype(int) + 1).astype(str))
        table = (
            kp.groupby(
                [kp["label"].astype(str), names.rename("keypoint"), "visibility"], sort=False
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
        if label in self.skeletons:
            k = self.skeletons[label].num_keypoints
        else:
            k = int(rows.groupby("instance_id").size().iloc[0]) if len(rows) else 0
        if rows.empty:
            return np.zeros((0, k, 3), dtype=np.float32)
        rows = rows.sort_values(["instance_id", "point_index"])
        n = rows["instance_id"].nunique()
        if len(rows) != n * k:
            raise KpnbError(
                f"label {label!r} in {self.describe_image(image_index)}: {len(rows)} points "
                f"for {n} instances is not {k} per instance"
            )
        return rows[["x", "y", "visibility"]].to_numpy(dtype=np.float32).reshape(n, k, 3)

    def grouped_boxes(self) -> dict[tuple[int, int], tuple[float, float, float, float]]:
        """``(image_index, group_id) -> (xtl, ytl, xbr, ybr)`` of boxes grouped with a shape:
        in CVAT, the object box of the skeleton that shares its ``group_id``."""
        boxes = self.boxes[self.boxes["group_id"] != 0]
        return {
            (int(b.image_index), int(b.group_id)): (b.xtl, b.ytl, b.xbr, b.ybr)
            for b in boxes.itertuples(index=False)
        }

    def describe_image(self, image_index: int) -> str:
        """``image id 7 'dir/a.jpg'`` (plus subset): how errors name an image, in the
        export's own terms rather than kpnb's ``image_index``."""
        r = self.images.loc[self.images["image_index"] == image_index].iloc[0]
        subset = f" (subset {r['subset']})" if isinstance(r["subset"], str) else ""
        return f"image id {int(r['image_id'])} {str(r['name'])!r}{subset}"

    def plain_labels(self) -> list[str]:
        """Labels of plain ``<points>`` shapes (not skeletons), in first-seen order."""
        labels = [str(lab) for lab in pd.unique(self.keypoints["label"])]  # first-seen order
        return [lab for lab in labels if lab not in self.skeletons]

    def multi_point_labels(self) -> list[str]:
        """Plain labels with shapes of several coordinates: each shape is one object
        (CVAT's points tool, one click per point)."""
        kp = self.keypoints
        multi = set(kp.loc[kp["point_index"] > 0, "label"].astype(str)) - set(self.skeletons)
        return [lab for lab in self.plain_labels() if lab in multi]

    def skeleton_for(self, label: str) -> Skeleton:
        """The skeleton of `label`. A plain points label whose shapes hold several points
        gets points named ``1..n`` (n: the most points a shape holds); a one-point label
        gets a one-point skeleton named after it."""
        if label in self.skeletons:
            return self.skeletons[label]
        kp = self.keypoints
        rows = kp[kp["label"] == label]
        if len(rows):
            n = int(rows["point_index"].max()) + 1
            return Skeleton(tuple(str(i + 1) for i in range(n)) if n > 1 else (label,))
        known = sorted(set(self.skeletons) | set(kp["label"].astype(str)))
        raise KpnbError(f"no label {label!r} in these annotations; labels are {known}")

    def same_layouts(self) -> list[list[str]]:
        """Skeleton labels grouped by identical layout (keypoint names and edges), in
        first-seen order: COCO files with a category per species repeat one layout."""
        groups: dict[tuple, list[str]] = {}
        for name, sk in self.skeletons.items():
            groups.setdefault((sk.keypoints, frozenset(sk.edges)), []).append(name)
        return list(groups.values())

    def summary(self) -> str:
        """The text ``kpnb info`` prints: one block per table the tutorial looks at (skeletons
        sharing one layout, a COCO category per species, are described once)."""
        n_inst = self.keypoints["instance_id"].nunique()
        lines = [
            f"source: {self.meta.get('source', '?')}",
            f"images: {len(self.images)}   instances: {n_inst}   points: {len(self.keypoints)}",
        ]
        subsets = self.images["subset"].value_counts()
        if len(subsets):
            lines.append("subsets: " + ", ".join(f"{k} {v}" for k, v in subsets.items()))
        for names in self.same_layouts():
            sk = self.skeletons[names[0]]
            edges = ", ".join(f"{sk.keypoints[a]}-{sk.keypoints[b]}" for a, b in sk.edges)
            who = f"skeleton {names[0]!r}"
            if len(names) > 1:
                who = f"{len(names)} skeletons with one layout ({', '.join(map(repr, names))})"
            lines.append(f"{who}: {len(sk.keypoints)} keypoints; edges: {edges or 'none'}")
            lines.append(f"  flip pairs: {sk.flip_summary()}")
        for label in self.multi_point_labels():
            sk = self.skeleton_for(label)
            lines.append(
                f"points label {label!r}: each shape is one object of up to "
                f"{sk.num_keypoints} points, named 1..{sk.num_keypoints}"
            )
        lines += ["", "instances per label:", self.label_counts().to_string()]
        lines += ["", "points per keypoint and visibility:", self.keypoint_counts().to_string()]
        if frozen := {t: n for t, n in (self.meta.get("past_last_keyframe") or {}).items() if n}:
            only = bool(self.meta.get("keyframes_only"))
            what = "dropped (keyframes only)" if only else "kept (--keyframes-only drops them)"
            lines += [
                "",
                f"video tracks: {sum(frozen.values())} shapes on {len(frozen)} tracks lie past "
                f"their track's last keyframe, where CVAT repeats the last pose; {what}",
            ]
        if skipped := self.meta.get("skipped"):
            other = ", ".join(f"{k} {v}" for k, v in skipped.items())
            lines += ["", f"other shapes (not keypoints): {other}"]
        return "\n".join(lines)

    def image_index_of(self, spec: str | None) -> int:
        """The image_index of the image `spec` names: its file name, ``SUBSET/NAME`` in
        project exports, its stem, or its CVAT/COCO image id (None: the first image)."""
        images = self.images
        if spec is None:
            if images.empty:
                raise KpnbError("the export has no images")
            return int(images["image_index"].iloc[0])
        subset, _, rest = spec.partition("/")
        if rest and subset in set(images["subset"].dropna().astype(str)):
            images, spec = images[images["subset"] == subset], rest  # SUBSET/NAME, project exports
        by_name = images[images["name"].astype(str) == spec]
        if by_name.empty and spec.lstrip("-").isdigit():
            by_name = images[images["image_id"] == int(spec)]
        if by_name.empty:
            stems = images["name"].astype(str).map(lambda n: Path(n).stem)
            by_name = images[stems == spec]
        if len(by_name) > 1:
            where = ", ".join(f"{r.name!r} (subset {r.subset})" for r in by_name.itertuples())
            raise KpnbError(f"image {spec!r}: several images match ({where}); write SUBSET/NAME")
        if by_name.empty:
            first = ", ".join(repr(str(n)) for n in images["name"].head(5))
            raise KpnbError(
                f"image {spec!r}: no image with that file name or id; the first are {first}"
            )
        return int(by_name["image_index"].iloc[0])


def save_tables(ann: Annotations, folder, fmt: str = "csv", *, overwrite: bool = False):
    """Write the tables as CSV or parquet files plus ``skeletons.json``, atomically. A
    non-empty `folder` is refused (`kpnb.io.OutputExistsError`) unless `overwrite`; then only
    the files written here are replaced and any others stay."""
    if fmt not in ("csv", "parquet"):
        raise KpnbError(f"unknown table format {fmt!r}; choose 'csv' or 'parquet'")
    folder = Path(folder)
    with atomic_path(folder, directory=True, overwrite=overwrite) as tmp:
        for name in ("images", "keypoints", "boxes", "attributes", "labels"):
            df = getattr(ann, name)
            if fmt == "csv":
                df.to_csv(tmp / f"{name}.csv", index=False)
            else:
                df.to_parquet(tmp / f"{name}.parquet", index=False)
        skeletons = {k: s.to_dict() for k, s in ann.skeletons.items()}
        (tmp / "skeletons.json").write_text(json.dumps(skeletons, indent=2, ensure_ascii=False))
    return folder


def load_tables(folder) -> Annotations:
    """Read what `save_tables` wrote (CSV or parquet, detected from the files)."""
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
    return Annotations(
        tidy_images(read("images").astype({"name": str})),
        tidy_keypoints(read("keypoints").astype({"label": str, "keypoint": str})),
        {k: Skeleton.from_dict(v) for k, v in stored.items()},
        read("labels"),
        tidy_boxes(read("boxes")),
        read("attributes"),
    )
