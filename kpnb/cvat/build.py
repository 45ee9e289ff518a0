"""The reader's rows -> the tidy `Annotations` tables (labels, skeletons from their ``<svg>``,
images, points)."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pandas as pd

from kpnb.cvat.parse import FRAMES, INT32, SKELETON, BadValue, CvatFormatError, Reader, whole
from kpnb.tables import Annotations, Skeleton, tidy_boxes, tidy_images, tidy_keypoints

log = logging.getLogger(__name__)

# A video's frames kpnb lists, empty ones too (an hour at 60 fps is 216,000), checked before
# any row is made: a made-up stop_frame cannot take all memory.
MAX_FRAMES = 2_000_000
MAX_POINTS = 2**15 - 1  # point_index is int16
_BOX = "image_index label xtl ytl xbr ybr occluded source group_id z_order track_id".split()


def build_tables(r: Reader, keyframes_only: bool = False) -> Annotations:
    """Every table of one parsed document (`keyframes_only`: see `kpnb.cvat.read_cvat`)."""
    inst, elem = r.instances.columns(), r.elements.columns()
    skeletons = _skeletons(r, inst, elem)
    keypoints = _keypoints(r.name, inst, elem, skeletons)
    attributes = _attributes(r.attributes, inst, skeletons)
    images = _images(r)
    keyframe = inst["keyframe"].copy()
    keyframe[elem["instance"][elem["keyframe"]]] = True  # legacy layout: elements carry them
    if keyframes_only:
        keep = (inst["track_id"] < 0) | keyframe
        new_id = np.cumsum(keep) - 1
        keypoints, attributes = (
            df[keep[df["instance_id"].to_numpy()]]
            .reset_index(drop=True)
            .assign(instance_id=lambda d: new_id[d["instance_id"].to_numpy()])
            for df in (keypoints, attributes)
        )
    meta = {
        "source": r.name,
        "format": "video" if r.frames else "images",
        "meta_kind": r.meta_kind,
        "version": r.version,
        "dumped": r.dumped,
        "name": r.top.get("name"),
        "skipped": dict(r.skipped),
        "past_last_keyframe": _past_last_keyframe(inst, keyframe, images),
        "keyframes_only": keyframes_only,
    }
    return Annotations(
        images=images,
        keypoints=tidy_keypoints(keypoints),
        skeletons=skeletons,
        labels=pd.DataFrame(r.labels, columns=["name", "type", "color", "parent", "svg"]),
        boxes=tidy_boxes(pd.DataFrame(r.boxes, columns=_BOX).assign(box_id=range(len(r.boxes)))),
        attributes=attributes,
        meta=meta,
    )


def _skeletons(r: Reader, inst: dict, elem: dict) -> dict[str, Skeleton]:
    """Skeletons from the label definitions (svg, else sublabels); a skeleton label used in
    the file but declared nowhere gets its keypoints in order of appearance."""
    sublabels: dict[str, list[str]] = {}
    for lab in r.labels:
        if lab["parent"]:
            sublabels.setdefault(lab["parent"], []).append(lab["name"])
    skeletons: dict[str, Skeleton] = {}
    for lab in r.labels:  # None for a label with neither svg circles nor sublabels
        sk = parse_skeleton_svg(lab["name"], lab["svg"], sublabels.get(lab["name"], []), r.name)
        if sk is not None:
            skeletons[lab["name"]] = sk
    found: dict[str, dict] = {}
    if set(inst["label"][inst["kind"] == SKELETON]) - skeletons.keys():
        labels = inst["label"][elem["instance"]]
        for label, name in zip(labels, elem["name"], strict=True):
            if label not in skeletons:
                found.setdefault(label, {})[name] = None
    return skeletons | {label: Skeleton(tuple(names)) for label, names in found.items()}


def _keypoints(source: str, inst: dict, elem: dict, skeletons: dict) -> pd.DataFrame:
    """One row per point, by (instance, point index): K rows for a skeleton instance (a
    missing element stays NaN, visibility 0), one per coordinate for a points shape."""
    label_code, labels = pd.factorize(inst["label"], sort=True)
    skel = inst["kind"] == SKELETON
    k_of_label = np.array(
        [len(skeletons[lab].keypoints) if lab in skeletons else 0 for lab in labels], np.int64
    )
    plain_count = np.bincount(inst["pt_instance"], minlength=len(skel))
    count = np.where(skel, k_of_label[label_code], plain_count).astype(np.int64)
    if len(count) and count.max() > MAX_POINTS:
        i = int(count.argmax())
        raise CvatFormatError(
            f"{source}: line {inst['line'][i]}: an instance with {count[i]:,} points; kpnb "
            f"numbers an instance's points up to {MAX_POINTS:,}: split the shape"
        )
    start = np.cumsum(count) - count
    plain_rows = start[inst["pt_instance"]] + inst["pt_index"]
    elem_rows = start[elem["instance"]] + _element_positions(source, inst, elem, skeletons)
    twice = pd.Series(elem_rows).duplicated().to_numpy()
    if twice.any():  # name the first repeat
        i = int(twice.argmax())
        raise CvatFormatError(
            f"{source}: line {elem['line'][i]}: skeleton element {elem['name'][i]!r} appears "
            "twice in one skeleton instance; remove the duplicate in CVAT and export again"
        )
    row_inst = np.repeat(np.arange(len(count)), count)
    point_index = np.arange(len(row_inst)) - start[row_inst]
    n = len(row_inst)
    x, y, filled = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, bool)
    occluded, outside = np.zeros(n, bool), np.zeros(n, bool)
    for rows, pts, prefix in ((plain_rows, inst, "pt_"), (elem_rows, elem, "")):
        x[rows], y[rows], filled[rows] = pts[prefix + "x"], pts[prefix + "y"], True
        occluded[rows], outside[rows] = pts[prefix + "occluded"], pts[prefix + "outside"]
    keyframe = inst["keyframe"][row_inst]
    keyframe[elem_rows] |= elem["keyframe"]
    src = inst["source"][row_inst]
    own = pd.notna(elem["source"])  # an element's own source
    src[elem_rows[own]] = elem["source"][own]
    keypoint = inst["label"][row_inst]
    skel_rows = skel[row_inst]
    offset = np.cumsum(k_of_label) - k_of_label  # each label's first name in `names`
    names = np.array(
        [k for lab in labels if lab in skeletons for k in skeletons[lab].keypoints], object
    )
    at = offset[label_code[row_inst[skel_rows]]] + point_index[skel_rows]
    keypoint[skel_rows] = names[at] if len(at) else []
    return pd.DataFrame(
        {
            "image_index": inst["image_index"][row_inst].astype(np.int32),
            "instance_id": row_inst,
            "label": _categorical(inst["label"][row_inst]),
            "keypoint": _categorical(keypoint),
            "point_index": point_index.astype(np.int16),
            "x": x.astype(np.float32),
            "y": y.astype(np.float32),
            "visibility": np.where(filled & ~outside, np.where(occluded, 1, 2), 0).astype(np.int8),
            "occluded": occluded,
            "outside": outside,
            "source": _categorical(src),
            "group_id": inst["group_id"][row_inst].astype(np.int32),
            "z_order": inst["z_order"][row_inst].astype(np.int32),
            "track_id": inst["track_id"][row_inst].astype(np.int32),
            "keyframe": keyframe,
        }
    )


def _categorical(values: np.ndarray) -> pd.Categorical:
    """Strings as a sorted categorical made from codes: pandas would first turn a million
    strings into arrow strings (0.4 s of `bench_parse.py`'s 1.7)."""
    codes, uniques = pd.factorize(values, sort=True)
    return pd.Categorical.from_codes(codes, categories=pd.Index(uniques))


def _element_positions(source: str, inst: dict, elem: dict, skeletons) -> np.ndarray:
    """Each skeleton element's position in its skeleton, by name (CVAT writes any order)."""
    defs = pd.DataFrame(
        [(lab, k, i) for lab, sk in skeletons.items() for i, k in enumerate(sk.keypoints)],
        columns=["label", "name", "pos"],
    )
    found = pd.DataFrame({"label": inst["label"][elem["instance"]], "name": elem["name"]}).merge(
        defs, how="left", on=["label", "name"]
    )
    missing = found["pos"].isna().to_numpy()
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        label, name = found["label"][i], found["name"][i]
        raise CvatFormatError(
            f"{source}: line {elem['line'][i]}: skeleton {label!r} has no keypoint {name!r} "
            f"(its <svg> defines {list(skeletons[label].keypoints)}); fix the label definition "
            "in CVAT and export again"
        )
    return found["pos"].to_numpy(np.int64)


def _attributes(rows: list[tuple], inst: dict, skeletons: dict) -> pd.DataFrame:
    out = []
    for i, element, name, value in rows:
        sk = skeletons.get(inst["label"][i])
        point = sk.keypoints.index(element) if sk and element in sk.keypoints else -1
        out.append((i, point, name, value))
    df = pd.DataFrame(out, columns=["instance_id", "point_index", "name", "value"])
    return df.astype({"instance_id": "int64", "point_index": "int16"})


def _images(r: Reader) -> pd.DataFrame:
    """The `<image>`s, or a video's frames (with shapes first) sized by ``<original_size>``."""
    rows = list(r.images)
    if r.frames:
        tasks = r.tasks if r.meta_kind == "project" and r.tasks else {None: r.top}
        frames = {task_id: _task_frames(t, r.name) for task_id, t in tasks.items()}
        total = sum(map(len, frames.values()))
        if total > MAX_FRAMES:
            raise CvatFormatError(
                f"{r.name}: <meta> describes {total:,} frames, more than kpnb lists "
                f"({MAX_FRAMES:,}); check start_frame, stop_frame and size"
            )
        sizes = {}
        for task_id, t in tasks.items():
            new = [f for f in frames[task_id] if (task_id, f) not in r.frames]
            rows += [(f, f"frame_{f:06d}", None, None, t.get("subset"), task_id) for f in new]
            sizes[task_id] = [
                _meta_whole(t.get(k) or r.top.get(k), (1, INT32[1]), f"<original_size> {k}", r.name)
                for k in ("width", "height")
            ]
        for i, (f, name, width, _, subset, task_id) in enumerate(rows):
            if width is None and task_id in sizes:
                rows[i] = (f, name, *sizes[task_id], subset, task_id)
    df = pd.DataFrame(rows, columns=["image_id", "name", "width", "height", "subset", "task_id"])
    df.insert(0, "image_index", np.arange(len(df)))
    df["image_id"] = df["image_id"].fillna(df["image_index"])  # an <image> without id
    return tidy_images(df)


def _meta_whole(text: str | None, bounds, what: str, source: str) -> int | None:
    """A whole number from ``<meta>`` (None when empty), refused with its element's name."""
    if not text:
        return None
    try:
        return whole(text, bounds)
    except BadValue as exc:
        raise CvatFormatError(f"{source}: {what}={text!r} {exc}") from None


def _task_frames(t: dict, source: str) -> range:
    """A video task's frame numbers: start..stop by the frame filter's step."""
    start, stop, size = (
        _meta_whole(t.get(k), FRAMES, f"<meta> {k}", source)
        for k in ("start_frame", "stop_frame", "size")
    )
    if start is None and stop is None and size is not None:
        return range(size)
    if start is None or stop is None:
        return range(0)
    ff = t.get("frame_filter") or ""
    try:
        step = whole(ff[5:], FRAMES) if ff.startswith("step=") else 1
    except BadValue as exc:
        raise CvatFormatError(f"{source}: <meta> frame_filter={ff!r} {exc}") from None
    return range(start, stop + 1, max(step, 1))


def _past_last_keyframe(inst: dict, keyframe: np.ndarray, images: pd.DataFrame) -> dict:
    """Per track, its shapes past its last keyframe: CVAT repeats the last pose of a track
    never closed to the end of the task."""
    tracked = inst["track_id"] >= 0
    frame = images["image_id"].to_numpy()[inst["image_index"]]
    df = pd.DataFrame({"track": inst["track_id"], "frame": frame, "key": keyframe})[tracked]
    last = df[df["key"]].groupby("track")["frame"].max()
    past = df["frame"] > df["track"].map(last).fillna(-1).to_numpy()
    return {int(k): int(v) for k, v in df[past].groupby("track").size().items()}


def parse_skeleton_svg(name: str, svg: str | None, sublabels: list[str], source: str):
    """Keypoint order from the svg circles, edges from node ids; parent order as fallback."""
    from defusedxml.ElementTree import fromstring

    try:
        root = fromstring("<root>" + (svg or "") + "</root>")
    except Exception as exc:  # unescaped names in data-label-name make the svg unparsable
        log.warning(
            "%s: skeleton %r: unreadable <svg> (%s); using <parent> order", source, name, exc
        )
        root = fromstring("<root/>")
    circles = [c for c in root.iter("circle") if c.get("data-label-name") is not None]
    names = [c.get("data-label-name") for c in circles] or sublabels
    if not names:
        return None
    node_pos = {c.get("data-node-id"): i for i, c in enumerate(circles)}
    edges, dropped = [], []
    for ln in root.iter("line") if circles else ():
        a, b = ln.get("data-node-from"), ln.get("data-node-to")
        if a in node_pos and b in node_pos:
            edges.append((node_pos[a], node_pos[b]))
        else:
            dropped.append((a, b))
    if dropped:
        log.warning("%s: skeleton %r: edges %s refer to no node; left out", source, name, dropped)
    twice = sorted(k for k, n in Counter(names).items() if n > 1)
    if twice:
        raise CvatFormatError(
            f"{source}: skeleton label {name!r} names keypoints {twice} more than once; "
            "rename them in CVAT's skeleton editor and export again"
        )
    return Skeleton(tuple(names), tuple(dict.fromkeys(edges)))
