"""The reader's records -> typed, checked column arrays, a chunk at a time.

A record is the tuple of one element's attribute values, its line and owner, as
`kpnb.cvat.parse.Reader` appended it. A chunk is transposed with ``zip`` (no Python frame
per value), numbers converted once per distinct string, coordinates in one numpy call.
"""

from __future__ import annotations

import sys
from itertools import compress
from operator import itemgetter, methodcaller

import numpy as np

from kpnb.cvat import values
from kpnb.cvat.errors import at_line

_GET = {k: methodcaller("get", k) for k in (
    "label", "source", "group_id", "z_order", "occluded", "outside", "keyframe", "points",
    "xtl", "ytl", "xbr", "ybr", "id", "name", "width", "height", "subset", "task_id",
)}  # fmt: skip
_TAGS = ("points", "skeleton")  # by instance kind
INST_DTYPES = {"image_index": np.int64, "label": object, "kind": np.int8, "source": object,
               "group_id": np.int64, "z_order": np.int64, "track_id": np.int64,
               "keyframe": bool, "occluded": bool, "outside": bool, "line": np.int64}  # fmt: skip
ELEM_DTYPES = {"instance": np.int64, "name": object, "x": np.float64, "y": np.float64,
               "source": object, "occluded": bool, "outside": bool, "keyframe": bool,
               "line": np.int64}  # fmt: skip
PLAIN_DTYPES = {"instance": np.int64, "point_index": np.int64, "x": np.float64,
                "y": np.float64}  # fmt: skip


def get(key: str, attrs: list[dict]) -> list:
    """The value of attribute `key` in each attribute dict (None where absent)."""
    return list(map(_GET[key], attrs))


def strings(vals: list, default: str | None) -> np.ndarray:
    """Attribute strings as an object array, interned; None or "" -> `default`."""
    conv = {v: sys.intern(v) if v else default for v in set(vals)}
    return np.array(list(map(conv.__getitem__, vals)), dtype=object)


class Chunks:
    """Column chunks of instances, skeleton elements and plain points, appended in order."""

    def __init__(self, source: str):
        self.source = source
        self.inst: list[dict] = []
        self.elem: list[dict] = []
        self.plain: list[dict] = []

    def add(self, insts: list[tuple], elems: list[tuple], base: int) -> None:
        """Convert one chunk of instance and element records (`base`: first instance id)."""
        if insts:
            self._instances(insts, base)
        if elems:
            self._elements(elems)

    def _instances(self, recs: list[tuple], base: int) -> None:
        src = self.source
        label, source, group, z, occluded, outside, points, lines, image, kind = zip(
            *recs, strict=True)  # fmt: skip
        n = len(recs)
        kind = np.array(kind, np.int8)

        def what(attr):
            return lambda i: f"<{_TAGS[kind[i]]}> {attr}"

        self.inst.append({
            "image_index": np.array(image, np.int64), "label": strings(label, ""), "kind": kind,
            "source": strings(source, "manual"),
            "group_id": values.integers(group, lines, what("group_id"), src),
            "z_order": values.integers(z, lines, what("z_order"), src),
            "track_id": np.full(n, -1, np.int64), "keyframe": np.zeros(n, bool),
            "occluded": values.flags(occluded), "outside": values.flags(outside),
            "line": np.array(lines, np.int64),
        })  # fmt: skip
        plain = (kind == 0).tolist()
        pts = [p or "" for p in compress(points, plain)]
        xy, counts = values.coordinates(pts, list(compress(lines, plain)), "<points>", src)
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        owners = np.flatnonzero(kind == 0) + base
        self.plain.append({"instance": np.repeat(owners, counts), "x": xy[:, 0], "y": xy[:, 1],
                           "point_index": np.arange(len(xy)) - starts})  # fmt: skip

    def _elements(self, recs: list[tuple]) -> None:
        src = self.source
        names, points, occluded, outside, source, keyframe, lines, inst = zip(*recs, strict=True)
        if None in names:
            i = names.index(None)
            raise at_line(src, lines[i], "skeleton element <points> has no label attribute; "
                          "CVAT names each element after its sublabel: export again")  # fmt: skip
        pts = [p or "" for p in points]
        xy, _ = values.coordinates(pts, lines, "skeleton element", src, one_each=True)
        self.elem.append({
            "instance": np.array(inst, np.int64), "name": strings(names, ""),
            "x": xy[:, 0], "y": xy[:, 1], "source": strings(source, None),
            "occluded": values.flags(occluded), "outside": values.flags(outside),
            "keyframe": values.flags(keyframe), "line": np.array(lines, np.int64),
        })  # fmt: skip

    def finish(self, tracked: list[tuple]) -> tuple[dict, dict, dict]:
        """All chunks as one column dict each; `tracked`: (instance, track id, keyframe)."""
        inst = _concat(self.inst, INST_DTYPES)
        if tracked:
            at, track_id, keyframe = (np.array(c) for c in zip(*tracked, strict=True))
            inst["track_id"][at], inst["keyframe"][at] = track_id, keyframe
        out = inst, _concat(self.elem, ELEM_DTYPES), _concat(self.plain, PLAIN_DTYPES)
        self.inst, self.elem, self.plain = [], [], []
        return out


def _concat(chunks: list[dict], dtypes: dict) -> dict[str, np.ndarray]:
    if not chunks:
        return {f: np.zeros(0, dt) for f, dt in dtypes.items()}
    return {f: np.concatenate([c[f] for c in chunks]) for f in dtypes}


def image_columns(recs: list[tuple], source: str) -> dict[str, np.ndarray]:
    """``<image>`` (and video frame) records -> checked columns; a missing id is the index."""
    attrs, lines = list(map(itemgetter(0), recs)), list(map(itemgetter(1), recs))
    ids = values.integers(get("id", attrs), lines, "<image> id", source, default=-1,
                          bounds=(0, values.INT32[1]))  # fmt: skip
    missing = ids < 0
    ids[missing] = np.flatnonzero(missing)
    task = values.integers(get("task_id", attrs), lines, "<image> task_id", source, default=-1,
                           bounds=(0, values.INT32[1]))  # fmt: skip
    return {
        "image_index": np.arange(len(recs)), "image_id": ids,
        "name": np.array([v or "" for v in get("name", attrs)], dtype=object),
        "width": values.sides(get("width", attrs), lines, "<image> width", source),
        "height": values.sides(get("height", attrs), lines, "<image> height", source),
        "subset": strings(get("subset", attrs), None),
        "task_id": np.where(task < 0, np.nan, task.astype(np.float64)),
    }


def box_columns(recs: list[tuple], source: str) -> dict[str, np.ndarray]:
    """``<box>`` records ``(attrs, line, image, track id)`` -> checked columns."""
    attrs, lines = list(map(itemgetter(0), recs)), list(map(itemgetter(1), recs))
    n = len(recs)
    xtl, ytl, xbr, ybr = (get(k, attrs) for k in ("xtl", "ytl", "xbr", "ybr"))
    corners = [f"{a},{b}" for a, b in zip(xtl, ytl, strict=True)] + [
        f"{a},{b}" for a, b in zip(xbr, ybr, strict=True)]  # fmt: skip
    xy, _ = values.coordinates(corners, lines + lines, "<box> xtl,ytl / xbr,ybr", source,
                               one_each=True)  # fmt: skip
    return {
        "image_index": np.fromiter(map(itemgetter(2), recs), np.int64, n),
        "box_id": np.arange(n), "label": strings(get("label", attrs), ""),
        "xtl": xy[:n, 0], "ytl": xy[:n, 1], "xbr": xy[n:, 0], "ybr": xy[n:, 1],
        "occluded": values.flags(get("occluded", attrs)),
        "source": strings(get("source", attrs), "manual"),
        "group_id": values.integers(get("group_id", attrs), lines, "<box> group_id", source),
        "z_order": values.integers(get("z_order", attrs), lines, "<box> z_order", source),
        "track_id": np.fromiter(map(itemgetter(3), recs), np.int64, n),
    }
