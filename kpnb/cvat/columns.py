"""The reader's records -> typed, checked column arrays, a chunk at a time.

A record is one element's ordered attribute list (expat's ``[name, value, ...]``), its line
and owner, as `kpnb.cvat.parse.Reader` appended it. Records whose attributes other than
``points`` are alike share one attribute set, converted and checked once (`Combos`); a chunk's
records only look their set up, and coordinates are parsed in one numpy call.
"""

from __future__ import annotations

import sys
from itertools import compress
from operator import itemgetter, methodcaller

import numpy as np

from kpnb.cvat import values
from kpnb.cvat.errors import at_line

_GET = {
    k: methodcaller("get", k)
    for k in (
        "label",
        "source",
        "group_id",
        "z_order",
        "occluded",
        "outside",
        "keyframe",
        "points",
        "xtl",
        "ytl",
        "xbr",
        "ybr",
        "id",
        "name",
        "width",
        "height",
        "subset",
        "task_id",
    )
}
_TAGS = ("points", "skeleton")  # by instance kind
PLAIN_DTYPES = {"instance": np.int64, "point_index": np.int64, "x": np.float64, "y": np.float64}


def get(key: str, attrs: list[dict]) -> list:
    """The value of attribute `key` in each attribute dict (None where absent)."""
    return list(map(_GET[key], attrs))


def strings(vals: list, default: str | None) -> np.ndarray:
    """Attribute strings as an object array, interned; None or "" -> `default`."""
    conv = {v: sys.intern(v) if v else default for v in set(vals)}
    return np.array(list(map(conv.__getitem__, vals)), dtype=object)


def split_geometry(attrs: tuple[list, ...], by_name: bool = False) -> tuple[list, list, int]:
    """Each ordered attribute list -> (its attribute set: the list without the ``points``
    value, as a tuple; the ``points`` value or None) and the position of the ``points`` name
    that `Combos.add` must confirm (-1: none to confirm). Lists as long as the first are split
    by its layout in one C-level pass (CVAT writes a fixed order); others one by one, by name.
    """
    first = attrs[0]
    names = first[::2]
    if not by_name and "points" in names and set(map(len, attrs)) == {len(first)}:
        p = 2 * names.index("points")
        keep = [i for i in range(len(first)) if i != p + 1]
        if len(keep) >= 2:
            return list(map(itemgetter(*keep), attrs)), list(map(itemgetter(p + 1), attrs)), p
    sets, points = [], []
    for a in attrs:
        names = a[::2]
        if "points" in names:
            i = 2 * names.index("points")
            sets.append(tuple(a[: i + 1] + a[i + 2 :]))
            points.append(a[i + 1])
        else:
            sets.append(tuple(a))
            points.append(None)
    return sets, points, -1


def _set_dict(c: tuple) -> dict:
    """An attribute set as a dict; a ``points`` name stands alone (its value was taken out)."""
    out, i = {}, 0
    while i < len(c):
        if c[i] == "points":
            i += 1
        else:
            out[c[i]] = c[i + 1]
            i += 2
    return out


class _OtherLayout(Exception):
    """A list laid out unlike the first of its chunk: split that chunk by name."""


class Combos:
    """Distinct attribute sets (all but the geometry) -> ids; each converted and checked once.

    A chunk's records map to the ids of their attribute sets with one dict look-up each; the
    typed value of every field is kept per set, so the final columns are array look-ups.
    """

    def __init__(self, convert):
        self.ids: dict[int, dict[tuple, int]] = {}  # by points position: a set seen with
        # its points name at p only matches lists split at p
        self.rows: list[tuple] = []  # converted fields, one tuple per set
        self.convert = convert  # (dict of the set, first record index, chunk) -> tuple

    def add(self, sets: list[tuple], chunk, p: int) -> np.ndarray:
        """Ids of each record's set; sets not seen before are checked to hold the ``points``
        name at `p` (split by position) and converted here."""
        ids = self.ids.setdefault(p, {})
        found = list(map(ids.get, sets))
        if None in found:
            for i, c in enumerate(sets):
                if c not in ids:
                    if p >= 0 and c[p] != "points":
                        raise _OtherLayout
                    ids[c] = len(self.rows)
                    self.rows.append(self.convert(_set_dict(c), i, chunk))
            found = list(map(ids.__getitem__, sets))
        return np.array(found, np.int64)

    def split_add(self, attrs: tuple[list, ...], chunk) -> tuple[np.ndarray, list]:
        """`split_geometry` then `add`: the set ids and the ``points`` values."""
        sets, points, p = split_geometry(attrs)
        try:
            return self.add(sets, chunk, p), points
        except _OtherLayout:
            sets, points, p = split_geometry(attrs, by_name=True)
            return self.add(sets, chunk, p), points

    def field(self, i: int, dtype) -> np.ndarray:
        return np.array([r[i] for r in self.rows], dtype=dtype)


class Chunks:
    """Column chunks of instances, skeleton elements and plain points, appended in order."""

    def __init__(self, source: str):
        self.source = source
        self.inst: list[dict] = []
        self.elem: list[dict] = []
        self.plain: list[dict] = []
        self.inst_sets = Combos(self._inst_set)
        self.elem_sets = Combos(self._elem_set)

    def add(self, insts: list[tuple], elems: list[tuple], base: int) -> None:
        """Convert one chunk of instance and element records (`base`: first instance id)."""
        if insts:
            self._instances(insts, base)
        if elems:
            self._elements(elems)

    def _one_int(self, d: dict, key: str, what: str, line: int) -> int:
        return int(values.integers([d.get(key)], [line], what, self.source)[0])

    def _inst_set(self, d: dict, i: int, chunk) -> tuple:
        """(label, source, group_id, z_order, occluded, outside) of one attribute set."""
        lines, kind = chunk
        tag = _TAGS[kind[i]]
        return (
            d.get("label") or "",
            d.get("source") or "manual",
            self._one_int(d, "group_id", f"<{tag}> group_id", lines[i]),
            self._one_int(d, "z_order", f"<{tag}> z_order", lines[i]),
            d.get("occluded") in values.TRUE,
            d.get("outside") in values.TRUE,
        )

    def _elem_set(self, d: dict, i: int, lines) -> tuple:
        """(name, source, occluded, outside, keyframe) of one element attribute set."""
        if d.get("label") is None:
            raise at_line(
                self.source,
                lines[i],
                "skeleton element <points> has no label "
                "attribute; CVAT names each element after its sublabel: export again",
            )
        return (
            d["label"],
            d.get("source") or None,
            d.get("occluded") in values.TRUE,
            d.get("outside") in values.TRUE,
            d.get("keyframe") in values.TRUE,
        )

    def _instances(self, recs: list[tuple], base: int) -> None:
        attrs, lines, image, kind = zip(*recs, strict=True)
        kind = np.array(kind, np.int8)
        sets, points = self.inst_sets.split_add(attrs, (lines, kind))
        self.inst.append(
            {
                "image_index": np.array(image, np.int64),
                "set": sets,
                "kind": kind,
                "line": np.array(lines, np.int64),
            }
        )
        plain = (kind == 0).tolist()
        pts = [p or "" for p in compress(points, plain)]
        xy, counts = values.coordinates(pts, list(compress(lines, plain)), "<points>", self.source)
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        owners = np.flatnonzero(kind == 0) + base
        self.plain.append(
            {
                "instance": np.repeat(owners, counts),
                "x": xy[:, 0],
                "y": xy[:, 1],
                "point_index": np.arange(len(xy)) - starts,
            }
        )

    def _elements(self, recs: list[tuple]) -> None:
        attrs, lines, inst = zip(*recs, strict=True)
        sets, points = self.elem_sets.split_add(attrs, lines)
        pts = [p or "" for p in points]
        xy, _ = values.coordinates(pts, lines, "skeleton element", self.source, one_each=True)
        self.elem.append(
            {
                "instance": np.array(inst, np.int64),
                "set": sets,
                "x": xy[:, 0],
                "y": xy[:, 1],
                "line": np.array(lines, np.int64),
            }
        )

    def finish(self, tracked: list[tuple]) -> tuple[dict, dict, dict]:
        """All chunks as one column dict each; `tracked`: (instance, track id, keyframe).

        Labels, element names and sources come as object arrays and, for the keypoint
        table, as codes into sorted categories (``label_code``/``labels`` and so on)."""
        inst = _concat(self.inst, _INST_CHUNK)
        sets, n = inst.pop("set"), len(inst["kind"])
        s = self.inst_sets
        _strings(inst, "label", s.field(0, object), sets)
        _strings(inst, "source", s.field(1, object), sets)
        inst["group_id"], inst["z_order"] = s.field(2, np.int64)[sets], s.field(3, np.int64)[sets]
        inst["occluded"], inst["outside"] = s.field(4, bool)[sets], s.field(5, bool)[sets]
        inst["track_id"], inst["keyframe"] = np.full(n, -1, np.int64), np.zeros(n, bool)
        if tracked:
            at, track_id, keyframe = (np.array(c) for c in zip(*tracked, strict=True))
            inst["track_id"][at], inst["keyframe"][at] = track_id, keyframe
        elem = _concat(self.elem, _ELEM_CHUNK)
        sets, e = elem.pop("set"), self.elem_sets
        _strings(elem, "name", e.field(0, object), sets)
        elem["source"] = e.field(1, object)[sets]
        elem["occluded"], elem["outside"] = e.field(2, bool)[sets], e.field(3, bool)[sets]
        elem["keyframe"] = e.field(4, bool)[sets]
        out = inst, elem, _concat(self.plain, PLAIN_DTYPES)
        self.inst, self.elem, self.plain = [], [], []
        return out


def _strings(cols: dict, key: str, per_set: np.ndarray, sets: np.ndarray) -> None:
    """``cols[key]``: the strings of each record's set; ``cols[key + "_code"]`` and
    ``cols[key + "s"]``: codes into the sorted distinct strings the records use."""
    cats, code_of_set = (
        np.unique(per_set, return_inverse=True)
        if len(per_set)
        else (np.zeros(0, object), np.zeros(0, np.int64))
    )
    codes = code_of_set.reshape(-1)[sets] if len(sets) else np.zeros(0, np.int64)
    used = np.bincount(codes, minlength=len(cats)) > 0
    if not used.all():
        codes = (np.cumsum(used) - 1)[codes]
        cats = cats[used]
    cols[key] = cats[codes] if len(cats) else np.zeros(len(sets), object)
    cols[key + "_code"], cols[key + "s"] = codes, list(cats)


_INST_CHUNK = {"image_index": np.int64, "set": np.int64, "kind": np.int8, "line": np.int64}
_ELEM_CHUNK = {
    "instance": np.int64,
    "set": np.int64,
    "x": np.float64,
    "y": np.float64,
    "line": np.int64,
}


def _concat(chunks: list[dict], dtypes: dict) -> dict[str, np.ndarray]:
    if not chunks:
        return {f: np.zeros(0, dt) for f, dt in dtypes.items()}
    return {f: np.concatenate([c[f] for c in chunks]) for f in dtypes}


def image_columns(recs: list[tuple], source: str) -> dict[str, np.ndarray]:
    """``<image>`` (and video frame) records -> checked columns; a missing id is the index."""
    attrs, lines = list(map(itemgetter(0), recs)), list(map(itemgetter(1), recs))
    ids = values.integers(
        get("id", attrs), lines, "<image> id", source, default=-1, bounds=(0, values.INT32[1])
    )
    missing = ids < 0
    ids[missing] = np.flatnonzero(missing)
    task = values.integers(
        get("task_id", attrs),
        lines,
        "<image> task_id",
        source,
        default=-1,
        bounds=(0, values.INT32[1]),
    )
    return {
        "image_index": np.arange(len(recs)),
        "image_id": ids,
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
        f"{a},{b}" for a, b in zip(xbr, ybr, strict=True)
    ]
    xy, _ = values.coordinates(
        corners, lines + lines, "<box> xtl,ytl / xbr,ybr", source, one_each=True
    )
    return {
        "image_index": np.fromiter(map(itemgetter(2), recs), np.int64, n),
        "box_id": np.arange(n),
        "label": strings(get("label", attrs), ""),
        "xtl": xy[:n, 0],
        "ytl": xy[:n, 1],
        "xbr": xy[n:, 0],
        "ybr": xy[n:, 1],
        "occluded": values.flags(get("occluded", attrs)),
        "source": strings(get("source", attrs), "manual"),
        "group_id": values.integers(get("group_id", attrs), lines, "<box> group_id", source),
        "z_order": values.integers(get("z_order", attrs), lines, "<box> z_order", source),
        "track_id": np.fromiter(map(itemgetter(3), recs), np.int64, n),
    }
