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
    records = _video_frames(ps) if ps.frame_index else list(ps.images)
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


def _video_frames(ps: Reader) -> list[tuple[dict, int | None]]:
    """``(attributes, line)`` of every frame of a video's task(s): the annotated ones, then
    each frame the meta describes but no shape is on (added to ``ps.frame_index``), each
    sized by its task."""
    records = list(ps.images)
    sizes: dict = {}
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
                attrs = {"id": str(f), "name": f"frame_{f:06d}", "subset": t.get("subset")}
                records.append(({**attrs, "task_id": task_id}, None))
        sizes[task_id] = (
            t.get("width") or ps.meta_size.get("width"),
            t.get("height") or ps.meta_size.get("height"),
        )
    return [
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
    labels = inst["labels"]  # sorted, as factorize sorts; inst["label_code"] indexes them
    k_of_label = np.array(
        [skeletons[lab].num_keypoints if lab in skeletons else 0 for lab in labels], dtype=np.int64
    )
    start, row_inst, point_index = _blocks(inst, plain, k_of_label)
    pts = _plain_points(inst, plain, start, row_inst)
    # source: the element's own where it has one, else its instance's
    sources, source_codes = inst["sources"], inst["source_code"][row_inst]
    if len(elem["instance"]):
        rows = _element_rows(elem, start, inst["label_code"], labels, skeletons, source_name)
        _scatter_elements(elem, rows, pts)
        sources, source_codes = _element_sources(elem["source"], rows, sources, source_codes)
    filled, outside, occluded = pts["filled"], pts["outside"], pts["occluded"]
    visibility = np.where(filled, np.where(outside, 0, np.where(occluded, 1, 2)), 0)
    row_label = inst["label_code"][row_inst]
    keypoint_codes, kp_names = _keypoint_codes(inst, skeletons, k_of_label, row_inst, point_index)
    return pd.DataFrame(
        {
            "image_index": inst["image_index"][row_inst].astype(np.int32),
            "instance_id": row_inst,
            "label": _categorical(row_label, labels),
            "keypoint": _categorical(keypoint_codes, kp_names),
            "point_index": point_index.astype(np.int16),
            "x": pts["x"].astype(np.float32),
            "y": pts["y"].astype(np.float32),
            "visibility": visibility.astype(np.int8),
            "occluded": occluded,
            "outside": outside,
            "source": _categorical(source_codes, sources),
            "group_id": inst["group_id"][row_inst].astype(np.int32),
            "z_order": inst["z_order"][row_inst].astype(np.int32),
            "track_id": inst["track_id"][row_inst].astype(np.int32),
            "keyframe": pts["keyframe"],
        }
    )


def _blocks(inst: dict, plain: dict, k_of_label: np.ndarray):
    """``(start, row_inst, point_index)``: each instance's first row (K rows for a skeleton
    instance, one per coordinate for a points shape), and each row's instance and point."""
    n_inst = len(inst["label"])
    count = np.where(
        inst["kind"] == SKELETON,
        k_of_label[inst["label_code"]] if n_inst else 0,
        np.bincount(plain["instance"], minlength=n_inst),
    )
    start = np.cumsum(count) - count
    row_inst = np.repeat(np.arange(n_inst), count)
    point_index = np.arange(int(count.sum())) - start[row_inst]
    return start, row_inst, point_index


def _plain_points(inst: dict, plain: dict, start: np.ndarray, row_inst: np.ndarray) -> dict:
    """The point columns (``x``, ``y``, ``occluded``, ``outside``, ``filled``, ``keyframe``)
    with the points shapes' coordinates scattered in; skeleton rows still empty."""
    total = len(row_inst)
    pts = {
        "x": np.full(total, np.nan),
        "y": np.full(total, np.nan),
        "occluded": np.zeros(total, bool),
        "outside": np.zeros(total, bool),
        "filled": np.zeros(total, bool),
        "keyframe": inst["keyframe"][row_inst],
    }
    plain_inst = plain["instance"]
    rows = start[plain_inst] + plain["point_index"]
    pts["x"][rows], pts["y"][rows], pts["filled"][rows] = plain["x"], plain["y"], True
    pts["occluded"][rows] = inst["occluded"][plain_inst]
    pts["outside"][rows] = inst["outside"][plain_inst]
    return pts


def _scatter_elements(elem: dict, rows: np.ndarray, pts: dict) -> None:
    """Write the skeleton elements into their `rows` of the point columns `pts`."""
    pts["x"][rows], pts["y"][rows], pts["filled"][rows] = elem["x"], elem["y"], True
    pts["occluded"][rows], pts["outside"][rows] = elem["occluded"], elem["outside"]
    pts["keyframe"][rows] |= elem["keyframe"]


def _element_sources(own: np.ndarray, rows: np.ndarray, sources, source_codes: np.ndarray):
    """``(sources, codes)`` with the elements' own ``source`` (where set) at their `rows`,
    over the sorted union of the instances' and the elements' sources."""
    has_own = pd.notna(own)
    if not has_own.any():
        return sources, source_codes
    own_codes, own_sources = pd.factorize(own[has_own])
    merged = pd.Index(sources).append(pd.Index(own_sources)).unique().sort_values()
    source_codes = merged.get_indexer(np.asarray(sources, object))[source_codes]
    source_codes[rows[has_own]] = merged.get_indexer(own_sources)[own_codes]
    return merged, source_codes


def _keypoint_codes(
    inst: dict,
    skeletons: dict[str, Skeleton],
    k_of_label: np.ndarray,
    row_inst: np.ndarray,
    point_index: np.ndarray,
) -> tuple[np.ndarray, list[str]]:
    """``(codes, names)`` of the keypoint column: a skeleton row's keypoint at its position,
    a points shape's own label; `names` sorted."""
    labels, label_codes = inst["labels"], inst["label_code"]
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
    skel_row = (inst["kind"] == SKELETON)[row_inst]
    return name_table[label_codes[row_inst], np.where(skel_row, point_index, 0)], kp_names


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
