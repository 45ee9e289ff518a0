"""The reader's columns -> the tidy `Annotations` tables (labels, skeletons, images, points)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kpnb.cvat import columns, values
from kpnb.cvat.errors import at_line
from kpnb.cvat.parse import SKELETON, Reader
from kpnb.cvat.svg import parse_skeleton_svg
from kpnb.tables import Annotations, Skeleton, tidy_boxes, tidy_images, tidy_keypoints


def build_tables(ps: Reader, keyframes_only: bool = False) -> Annotations:
    """Every table of one parsed document; `keyframes_only` drops track shapes that are not
    keyframes (CVAT's interpolated and propagated frames)."""
    name = ps.name
    labels = pd.DataFrame(ps.labels, columns=["name", "type", "color", "parent", "svg"])
    inst, elem, plain = ps.chunks.finish(ps.tracked)
    skeletons = _skeletons(ps.labels, inst, elem, name)
    keypoints = _keypoint_table(inst, elem, plain, skeletons, name)
    attributes = _attribute_table(ps.attrs, inst, skeletons)
    images = _images_table(ps)
    frozen = _past_last_keyframe(inst, elem, images)
    if keyframes_only:
        keypoints, attributes = _keyframes_only(keypoints, attributes, inst, elem)
    boxes = (
        pd.DataFrame(columns.box_columns(ps.boxes, name))
        if ps.boxes
        else pd.DataFrame(columns=["image_index"])
    )
    meta = {
        "source": name,
        "format": "video" if ps.frame_index else "images",
        "meta_kind": ps.meta_kind,
        "version": ps.version,
        "dumped": ps.dumped,
        "name": ps.meta_fields.get("name"),
        "skipped": dict(ps.skipped),
        "past_last_keyframe": frozen,
        "keyframes_only": keyframes_only,
    }
    return Annotations(
        images=images,
        keypoints=tidy_keypoints(keypoints),
        skeletons=skeletons,
        labels=labels,
        boxes=tidy_boxes(boxes),
        attributes=attributes,
        meta=meta,
    )


def _skeletons(labels: list[dict], inst: dict, elem: dict, source: str) -> dict[str, Skeleton]:
    """Skeletons from the label definitions (svg, else sublabels); a skeleton label used in
    the file but declared nowhere gets its keypoints in order of appearance."""
    sublabels: dict[str, list[str]] = {}
    for lab in labels:
        if lab.get("parent"):
            sublabels.setdefault(lab["parent"], []).append(lab["name"])
    skeletons: dict[str, Skeleton] = {}
    for lab in labels:
        if lab.get("type") == "skeleton" or lab.get("svg") or lab["name"] in sublabels:
            sk = parse_skeleton_svg(
                lab["name"], lab.get("svg"), sublabels.get(lab["name"], []), source
            )
            if sk is not None:
                skeletons[lab["name"]] = sk
    if len(elem["instance"]):
        elem_labels = inst["label_code"][elem["instance"]]
        codes, first = np.unique(elem_labels, return_index=True)
        for code in codes[np.argsort(first)]:  # in order of appearance
            label = inst["labels"][code]
            if label not in skeletons:
                names = elem["name"][elem_labels == code]
                skeletons[label] = Skeleton(tuple(dict.fromkeys(names)))
    return skeletons


def _images_table(ps: Reader) -> pd.DataFrame:
    """`<image>`s, or for video every frame of the task(s), sized by ``<original_size>``."""
    records = list(ps.images)
    sizes: dict = {}
    if ps.frame_index:
        # project exports describe each task's frames; task and job exports the one at top
        tasks = (
            ps.tasks
            if ps.meta_kind == "project" and ps.tasks
            else {None: {**ps.meta_fields, **ps.meta_size}}
        )
        for task_id, t in tasks.items():
            for f in _task_frames(t, ps.name):
                if (task_id, f) not in ps.frame_index:
                    ps.frame_index[(task_id, f)] = len(records)
                    records.append(
                        (
                            {
                                "id": str(f),
                                "name": f"frame_{f:06d}",
                                "subset": t.get("subset"),
                                "task_id": task_id,
                            },
                            None,
                        )
                    )
            sizes[task_id] = (
                t.get("width") or ps.meta_size.get("width"),
                t.get("height") or ps.meta_size.get("height"),
            )
        records = [
            (
                {
                    **a,
                    "width": sizes.get(a.get("task_id"), (None, None))[0],
                    "height": sizes.get(a.get("task_id"), (None, None))[1],
                },
                line,
            )
            for a, line in records
        ]
    cols = (
        columns.image_columns(records, ps.name)
        if records
        else {
            c: []
            for c in ("image_index", "image_id", "name", "width", "height", "subset", "task_id")
        }
    )
    df = pd.DataFrame(cols)
    df = df.astype({"width": "Int32", "height": "Int32", "task_id": "Int64"})
    return tidy_images(df)


def _task_frames(t: dict, source: str) -> range:
    """The frame numbers a (video) task's meta describes: start..stop by the filter's step."""
    start, stop = t.get("start_frame"), t.get("stop_frame")
    if start is None and stop is None and t.get("size"):
        start, stop = "0", str(int(values.integers([t["size"]], [None], "<size>", source)[0]) - 1)
    if start is None or stop is None:
        return range(0)
    ff = t.get("frame_filter") or ""
    step = ff[5:] if ff.startswith("step=") else "1"
    start, stop, step = values.integers(
        [start, stop, step],
        [None] * 3,
        "<meta> start_frame/stop_frame/frame_filter step",
        source,
        bounds=(0, values.INT32[1]),
    )
    return range(int(start), int(stop) + 1, max(int(step), 1))


def _instance_keyframes(inst: dict, elem: dict) -> np.ndarray:
    kf = inst["keyframe"].copy()
    kf[elem["instance"][elem["keyframe"]]] = True  # legacy layout: the elements carry them
    return kf


def _past_last_keyframe(inst: dict, elem: dict, images: pd.DataFrame) -> dict[int, int]:
    """Per track, how many of its shapes lie past its last keyframe: CVAT propagates a track
    that was never closed to the end of the task, repeating its last pose."""
    tracked = inst["track_id"] >= 0
    if not tracked.any():
        return {}
    frame = images["image_id"].to_numpy()[inst["image_index"]]
    df = pd.DataFrame(
        {"track": inst["track_id"], "frame": frame, "key": _instance_keyframes(inst, elem)}
    )[tracked]
    last = df[df["key"]].groupby("track")["frame"].max()
    past = df["frame"] > df["track"].map(last).fillna(-1).to_numpy()
    counts = df[past].groupby("track").size()
    return {int(k): int(v) for k, v in counts.items()}


def _keyframes_only(kp: pd.DataFrame, attributes: pd.DataFrame, inst: dict, elem: dict):
    """Drop the rows of track shapes that are not keyframes; renumber instances 0..n-1."""
    drop = (inst["track_id"] >= 0) & ~_instance_keyframes(inst, elem)
    keep_inst = ~drop
    new_id = np.cumsum(keep_inst) - 1
    kp = kp[keep_inst[kp["instance_id"].to_numpy()]].reset_index(drop=True)
    kp["instance_id"] = new_id[kp["instance_id"].to_numpy()]
    attributes = attributes[keep_inst[attributes["instance_id"].to_numpy()]].reset_index(drop=True)
    attributes["instance_id"] = new_id[attributes["instance_id"].to_numpy()]
    return kp, attributes


def _categorical(codes: np.ndarray, categories) -> pd.Categorical:
    """A categorical of the (sorted) categories that `codes` use, as ``pd.Categorical`` makes."""
    used = np.bincount(codes, minlength=len(categories)) > 0
    if not used.all():  # renumber the codes over the categories in use
        codes = (np.cumsum(used) - 1)[codes]
        categories = [c for c, u in zip(categories, used, strict=True) if u]
    return pd.Categorical.from_codes(codes, categories=pd.Index(categories))


def _element_rows(
    elem: dict,
    start: np.ndarray,
    label_codes: np.ndarray,
    labels,
    skeletons: dict[str, Skeleton],
    source_name: str,
) -> np.ndarray:
    """The keypoint-table row of each skeleton element: its instance's block start plus its
    keypoint's position, found by name (CVAT writes elements in any order)."""
    ei = elem["instance"]
    name_codes, names = elem["name_code"], elem["names"]
    lookup = np.full((len(labels), len(names)), -1, np.int64)
    for li, label in enumerate(labels):
        if label in skeletons:
            pos = {n: i for i, n in enumerate(skeletons[label].keypoints)}
            lookup[li] = [pos.get(n, -1) for n in names]
    elem_label = label_codes[ei]
    kp_pos = lookup[elem_label, name_codes]
    if (kp_pos < 0).any():
        i = int(np.flatnonzero(kp_pos < 0)[0])
        label = labels[elem_label[i]]
        raise at_line(
            source_name,
            int(elem["line"][i]),
            f"skeleton {label!r} has no "
            f"keypoint {names[name_codes[i]]!r} (its <svg> defines "
            f"{list(skeletons[label].keypoints) if label in skeletons else []}); fix the "
            "label definition in CVAT and export again",
        )
    rows = start[ei] + kp_pos
    if len(rows) > 1:
        order = np.argsort(rows, kind="stable")
        repeat = order[1:][rows[order][1:] == rows[order][:-1]]
        if len(repeat):
            i = int(repeat.min())
            raise at_line(
                source_name,
                int(elem["line"][i]),
                f"skeleton element "
                f"{names[name_codes[i]]!r} appears twice in one skeleton instance; "
                "remove the duplicate in CVAT and export again",
            )
    return rows


def _keypoint_table(
    inst: dict, elem: dict, plain: dict, skeletons: dict[str, Skeleton], source_name: str
) -> pd.DataFrame:
    """One row per point, ordered by (instance, point index), built column by column.

    Each instance owns a block of rows: K for a skeleton instance (definition order, a
    missing element stays NaN with visibility 0), one per coordinate for a points shape.
    Points are scattered into their blocks, so no sort, concat or per-row Python is needed.
    """
    n_inst = len(inst["label"])
    label_codes, labels = inst["label_code"], inst["labels"]  # sorted, as factorize sorts
    is_skel = inst["kind"] == SKELETON
    k_of_label = np.array(
        [skeletons[lab].num_keypoints if lab in skeletons else 0 for lab in labels], dtype=np.int64
    )
    plain_inst = plain["instance"]
    count = np.where(
        is_skel, k_of_label[label_codes] if n_inst else 0, np.bincount(plain_inst, minlength=n_inst)
    )
    total = int(count.sum())
    start = np.cumsum(count) - count
    row_inst = np.repeat(np.arange(n_inst), count)
    point_index = np.arange(total) - start[row_inst]
    x = np.full(total, np.nan)
    y = np.full(total, np.nan)
    occluded = np.zeros(total, bool)
    outside = np.zeros(total, bool)
    filled = np.zeros(total, bool)
    keyframe = inst["keyframe"][row_inst]
    # source: the element's own where it has one, else its instance's
    src_codes, sources = inst["source_code"], inst["sources"]
    source_codes = src_codes[row_inst]

    rows = start[plain_inst] + plain["point_index"]
    x[rows], y[rows], filled[rows] = plain["x"], plain["y"], True
    occluded[rows] = inst["occluded"][plain_inst]
    outside[rows] = inst["outside"][plain_inst]

    ei = elem["instance"]
    if len(ei):
        rows = _element_rows(elem, start, label_codes, labels, skeletons, source_name)
        x[rows], y[rows], filled[rows] = elem["x"], elem["y"], True
        occluded[rows], outside[rows] = elem["occluded"], elem["outside"]
        keyframe[rows] |= elem["keyframe"]
        own = elem["source"]
        has_own = pd.notna(own)
        if has_own.any():
            own_codes, own_sources = pd.factorize(own[has_own])
            merged = pd.Index(sources).append(pd.Index(own_sources)).unique().sort_values()
            source_codes = merged.get_indexer(np.asarray(sources, object))[source_codes]
            source_codes[rows[has_own]] = merged.get_indexer(own_sources)[own_codes]
            sources = merged
    visibility = np.where(filled, np.where(outside, 0, np.where(occluded, 1, 2)), 0)

    # keypoint names: a skeleton's keypoint at its position, a points shape's own label
    kp_names = sorted(
        {n for lab in labels if lab in skeletons for n in skeletons[lab].keypoints} | set(labels)
    )
    kp_index = {n: i for i, n in enumerate(kp_names)}
    width = max([1, *k_of_label.tolist()])
    name_table = np.full((len(labels), width), -1, np.int64)
    for li, label in enumerate(labels):
        name_table[li, :] = kp_index[label]
        if label in skeletons:
            name_table[li, : k_of_label[li]] = [kp_index[n] for n in skeletons[label].keypoints]
    row_label = label_codes[row_inst]
    skel_row = is_skel[row_inst]
    keypoint_codes = name_table[row_label, np.where(skel_row, point_index, 0)]

    return pd.DataFrame(
        {
            "image_index": inst["image_index"][row_inst].astype(np.int32),
            "instance_id": row_inst,
            "label": _categorical(row_label, labels),
            "keypoint": _categorical(keypoint_codes, kp_names),
            "point_index": point_index.astype(np.int16),
            "x": x.astype(np.float32),
            "y": y.astype(np.float32),
            "visibility": visibility.astype(np.int8),
            "occluded": occluded,
            "outside": outside,
            "source": _categorical(source_codes, sources),
            "group_id": inst["group_id"][row_inst].astype(np.int32),
            "z_order": inst["z_order"][row_inst].astype(np.int32),
            "track_id": inst["track_id"][row_inst].astype(np.int32),
            "keyframe": keyframe,
        }
    )


def _attribute_table(attrs: list[tuple], inst: dict, skeletons) -> pd.DataFrame:
    rows = []
    for inst_id, elem_name, name, value in attrs:
        point = -1
        if elem_name is not None:
            sk = skeletons.get(inst["label"][inst_id])
            point = sk.keypoints.index(elem_name) if sk and elem_name in sk.keypoints else -1
        rows.append((inst_id, point, name, value))
    df = pd.DataFrame(rows, columns=["instance_id", "point_index", "name", "value"])
    return df.astype({"instance_id": "int64", "point_index": "int16"})
