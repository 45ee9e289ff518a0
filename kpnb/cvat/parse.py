"""The CVAT reader: one pass of expat callbacks collecting rows (`kpnb.cvat.build` makes the
tables from them), fed 64 KB at a time, so memory grows with the columns, never the file.
A DOCTYPE with declarations is refused: that alone shuts out entity bombs, external entities
and ATTLIST defaults that would invent attributes. Attribute strings are read as CVAT's own
importer reads them (Python's ``int``/``float``: "1_000" and " 5" are numbers).
"""

from __future__ import annotations

import math
import pyexpat

import numpy as np

from kpnb.errors import KpnbError

INT32 = (-(2**31), 2**31 - 1)  # CVAT's database keeps ids, frames, z_order, group_id as int32
FRAMES = (0, INT32[1])
TRUE = frozenset(("1", "true", "True"))


class CvatFormatError(KpnbError):
    """A CVAT file is malformed or not CVAT: the message names the file, line and fix."""


def at_line(source: str, line: int, message: str) -> CvatFormatError:
    """A `CvatFormatError` for `message` at `line` of `source`."""
    return CvatFormatError(f"{source}: line {line}: {message}")


class BadValue(Exception):
    """Why a value is refused; the reader re-raises it naming file, line and attribute."""


def whole(text: str, bounds: tuple[int, int] = INT32) -> int:
    """A whole number within `bounds` (``"3"``, ``"3.0"``), as CVAT's importer reads one."""
    try:
        value = int(text)
    except ValueError:
        try:
            f = float(text)
        except ValueError:
            raise BadValue("is not a number") from None
        if not math.isfinite(f) or not f.is_integer():
            raise BadValue("is not a whole number") from None
        value = int(f)
    if not bounds[0] <= value <= bounds[1]:
        raise BadValue(f"is outside {bounds[0]}..{bounds[1]}, the range CVAT stores")
    return value


def integers(texts, lines, what, source: str, default: int = 0) -> np.ndarray:
    """Integer attribute strings (None or "" -> `default`) as int64 within CVAT's int32,
    each distinct text converted once; `what(i)` names row i's element and attribute."""
    conv = {None: default, "": default}
    for text in set(texts) - conv.keys():
        try:
            conv[text] = whole(text)
        except BadValue as exc:
            i = texts.index(text)
            raise at_line(source, lines[i], f"{what(i)}={text!r} {exc}") from None
    return np.array([conv[t] for t in texts], np.int64)


def flags(texts) -> np.ndarray:
    """``"1"``/``"true"`` -> True, anything else (or missing) -> False, as CVAT reads flags."""
    return np.array([t in TRUE for t in texts], bool)


def _bulk(texts: list[str], one_each: bool):
    """`coordinates`' numbers as ``[N, 2]`` and pairs per string, or None if one is bad."""
    counts = np.array([t.count(";") + 1 if t else 0 for t in texts], np.int64)
    joined = ";".join(filter(None, texts))
    pieces = joined.split(";") if joined else []
    if {p.count(",") for p in pieces} - {1} or (one_each and (counts != 1).any()):
        return None, counts
    try:  # Python's float reads each number, as CVAT's importer does ("1_000", " 5")
        flat = np.array(joined.replace(";", ",").split(",") if joined else [], np.float64)
    except ValueError:
        return None, counts
    return (flat.reshape(-1, 2) if np.isfinite(flat).all() else None), counts


def coordinates(texts, lines, what: str, source: str, one_each: bool = False):
    """``points`` strings -> ``([N, 2] float64, pairs per string)``, parsed in one numpy call
    over the joined strings (a Python loop per number costs 1 s on a million points); only
    when that fails are the strings read one by one, to name the first bad one's line."""
    texts = [t or "" for t in texts]
    xy, counts = _bulk(texts, one_each)
    if xy is None:
        bad = next(i for i, t in enumerate(texts) if _bulk([t], one_each)[0] is None)
        why = "is not 'x,y' pairs of finite numbers"
        if one_each and _bulk([texts[bad]], False)[0] is not None:
            why = "must be one 'x,y' (a skeleton element is one point)"
        raise at_line(source, lines[bad], f"{what} points={texts[bad]!r} {why}")
    return xy, counts


_READ = 1 << 16  # bytes per expat feed
POINTS, SKELETON = 0, 1  # instance kinds
SHAPES = frozenset("points box skeleton polygon polyline ellipse mask cuboid tag".split())
_META_TEXT = frozenset(
    "name type color parent svg width height id subset start_frame stop_frame frame_filter "
    "size mode version dumped subsets".split()
)
_DAMAGED = "the file is damaged: export it again"
# Rows per conversion: few, so their attribute dicts die young (bench_parse.py: 4,096 took 3.0 s)
_CHUNK = 512
_TAG = ("points", "skeleton")  # by kind


class Rows:
    """Raw rows, one tuple per element (the cheapest thing a callback can do), turned into
    checked numpy columns by `convert` about `_CHUNK` rows at a time: memory holds columns."""

    def __init__(self, convert):
        self.convert = convert  # (rows, index of the first) -> dict of columns
        self.rows: list[tuple] = []
        self.chunks: list[dict] = []
        self.done = 0  # rows converted

    def next_index(self) -> int:
        return self.done + len(self.rows)

    def flush(self, at_least: int = 0) -> None:
        if len(self.rows) > at_least:
            self.chunks.append(self.convert(self.rows, self.done))
            self.done += len(self.rows)
            self.rows = []

    def columns(self) -> dict[str, np.ndarray]:
        self.flush()
        chunks, self.chunks = self.chunks or [self.convert([], 0)], []
        return {k: np.concatenate([c.pop(k) for c in chunks]) for k in list(chunks[0])}


class Reader:
    """Expat callbacks collecting a CVAT document as rows: ``images``, ``instances`` (plain
    ``<points>`` shapes with their points, and ``<skeleton>``s), ``elements`` (a skeleton's
    points), ``boxes``, ``attributes``."""

    def __init__(self, name: str):
        self.name = name
        p = self.p = pyexpat.ParserCreate()
        p.buffer_text = True
        p.SetParamEntityParsing(pyexpat.XML_PARAM_ENTITY_PARSING_NEVER)
        p.StartDoctypeDeclHandler = self._doctype
        p.StartElementHandler, p.EndElementHandler = self.start, self.end
        self.stack: list = [None]  # the open elements, under a None for the root's parent
        self.text: list[str] = []
        # <meta>
        self.meta_at = -1  # the depth of the open <meta>, -1 outside it
        self.meta_kind = self.version = self.dumped = None
        self.labels: list[dict] = []
        self.label: dict | None = None
        self.tasks: dict[int, dict] = {}  # a project's tasks by id
        self.task: dict | None = None
        self.top: dict[str, str] = {}  # the <task>/<job>/<project> fields, <original_size>
        # rows
        self.images: list[tuple] = []
        self.frames: dict[tuple, int] = {}  # video: (task id, frame) -> image index
        self.instances = Rows(self._instance_columns)
        self.elements = Rows(self._element_columns)
        self.boxes: list[tuple] = []
        self.attributes: list[tuple] = []  # (instance, element name or None, name, value)
        self.skipped: dict[str, int] = {}
        # where we are
        self.image = -1  # the open <image>
        self.skeleton = -1  # the open <skeleton> instance
        self.track: dict | None = None
        self.nested: dict | None = None  # legacy layout: an element track in a skeleton track
        self.legacy: dict[str, int] = {}  # legacy layout: frame -> the track's skeleton there
        self.attr: tuple | None = None  # the open <attribute>: (owner, name)

    def error(self, msg: str) -> CvatFormatError:
        return at_line(self.name, self.p.CurrentLineNumber, msg)

    def _doctype(self, name, sysid, pubid, has_internal_subset) -> None:
        if has_internal_subset or sysid or pubid:  # CVAT never writes one, a hostile file might
            raise self.error(
                "refused: the XML has a DOCTYPE with declarations; CVAT never writes these, so "
                "the file is not a CVAT export or has been tampered with"
            )

    def _collect(self) -> None:
        self.text = []
        self.p.CharacterDataHandler = self.text.append

    def _collected(self) -> str:
        self.p.CharacterDataHandler = None
        return "".join(self.text)

    def _int(self, tag: str, attrs: dict, key: str, default=0, bounds=INT32, fix=""):
        text = attrs.get(key)
        if not text:
            return default
        try:
            return whole(text, bounds)
        except BadValue as exc:
            raise self.error(f"<{tag}> {key}={text!r} {exc}{fix}") from None

    # -- the callbacks -----------------------------------------------------------------------
    def start(self, tag: str, attrs: dict) -> None:
        parent = self.stack[-1]
        self.stack.append(tag)
        if self.meta_at >= 0:
            self._meta_start(tag, parent)
        # the commonest elements first: skeleton elements, and points shapes in an <image>
        elif tag == "points" and parent == "skeleton":
            line = self.p.CurrentLineNumber
            self.elements.rows.append((self.skeleton, attrs.get("label"), attrs, line))
        elif tag == "points" and parent == "image":
            line = self.p.CurrentLineNumber
            self.instances.rows.append((self.image, POINTS, attrs, -1, False, line))
        elif parent is None:
            if tag != "annotations":
                raise self.error(
                    f"root element is <{tag}>, expected <annotations>: this is not a CVAT for "
                    "images/video 1.1 file; export from CVAT in one of those formats"
                )
        elif tag == "points":
            self._points(attrs, parent)
        elif tag in SHAPES:
            self._shape(tag, attrs, parent)
        elif tag == "image":
            self._image(attrs, parent)
        elif tag == "track":
            self._track(attrs, parent)
        elif tag == "attribute":
            if self.attr is not None:
                raise self.error("<attribute> inside <attribute>; " + _DAMAGED)
            self.attr = (self._owner(parent), attrs.get("name"))
            self._collect()
        elif parent == "annotations" and tag == "meta":
            self.meta_at = len(self.stack) - 1
        elif parent == "annotations" and tag == "version":
            self._collect()
        # other elements (newer CVAT versions' additions) are ignored

    def end(self, tag: str) -> None:
        self.stack.pop()
        if tag == "points":  # the commonest end, with nothing to close
            return
        if self.meta_at >= 0:
            self._meta_end(tag)
        elif tag == "skeleton":
            self.skeleton = -1
        elif tag == "image":
            self.image = -1
            self._flush()
        elif tag == "track":
            if self.nested is not None:
                self.nested = None
            else:
                self.track, self.legacy = None, {}
                self._flush()
        elif tag == "attribute" and self.attr is not None:
            (owner, name), self.attr = self.attr, None
            value = self._collected()
            if owner is not None:
                self.attributes.append((*owner, name or "", value))
        elif tag == "version" and self.stack == [None, "annotations"]:
            self.version = self._collected().strip()

    def _owner(self, parent: str) -> tuple | None:
        """(instance, element name or None) owning an <attribute> in `parent` (None: kpnb
        does not model it); the open shape's row is the last one."""
        if parent == "skeleton":
            return (self.skeleton, None)
        if parent != "points":
            return None
        if self.stack[-3] == "skeleton" or self.nested is not None:  # a skeleton element
            return self.elements.rows[-1][:2]
        return (self.instances.next_index() - 1, None)

    def _flush(self) -> None:  # between shapes
        self.instances.flush(at_least=_CHUNK)
        self.elements.flush(at_least=_CHUNK)

    # -- the body ----------------------------------------------------------------------------
    def _misplaced(self, tag: str, parent: str | None) -> CvatFormatError:
        if parent in SHAPES:
            return self.error(f"<{tag}> inside <{parent}>: shapes do not nest; " + _DAMAGED)
        if parent == "track":
            return self.error(f"<{tag}> inside a skeleton element's <track>; " + _DAMAGED)
        return self.error(f"<{tag}> outside any <image> or <track>; " + _DAMAGED)

    def _image(self, attrs: dict, parent: str | None) -> None:
        if parent != "annotations":
            raise self.error(f"<image> inside <{parent}>: images sit in <annotations>; " + _DAMAGED)
        fix = "; CVAT writes the image's size in whole pixels: export the task again"
        sides = [
            self._int("image", attrs, k, None, (1, INT32[1]), fix) for k in ("width", "height")
        ]
        image_id = self._int("image", attrs, "id", None, FRAMES)
        task_id = self._int("image", attrs, "task_id", None, FRAMES)
        name, subset = attrs.get("name") or "", attrs.get("subset") or None
        self.image = len(self.images)
        self.images.append((image_id, name, *sides, subset, task_id))

    def _track(self, attrs: dict, parent: str | None) -> None:
        info = {
            "id": self._int("track", attrs, "id", -1),
            "task_id": self._int("track", attrs, "task_id", None, FRAMES),
            "label": attrs.get("label") or "",
            "source": attrs.get("source"),
            "group_id": attrs.get("group_id"),
            "subset": attrs.get("subset") or None,
        }
        if parent == "annotations":
            self.track, self.legacy = info, {}
        elif parent == "track" and self.nested is None:
            self.nested = info
        else:
            raise self.error(f"<track> inside <{parent}>: tracks sit in <annotations>; " + _DAMAGED)

    def _frame(self, tag: str, attrs: dict) -> int:
        """The image of a track shape's frame, made on first sight (video has no <image>)."""
        if attrs.get("frame") is None:
            raise self.error(f"<{tag}> inside <track> has no frame attribute")
        frame = self._int(tag, attrs, "frame", bounds=FRAMES)
        key = (self.track["task_id"], frame)
        if key not in self.frames:
            self.frames[key] = len(self.images)
            self.images.append(
                (frame, f"frame_{frame:06d}", None, None, self.track["subset"], key[0])
            )
        return self.frames[key]

    def _instance(self, attrs: dict, kind: int, image: int, keyframe=None) -> int:
        """Record a points shape or skeleton; a track lends its label, source and group."""
        t, track = self.track, -1
        if t is not None:
            attrs = {**attrs, "label": t["label"], "source": attrs.get("source") or t["source"]}
            attrs["group_id"] = attrs.get("group_id") or t["group_id"]
            keyframe = attrs.get("keyframe") in TRUE if keyframe is None else keyframe
            track = t["id"]
        row = (image, kind, attrs, track, bool(keyframe), self.p.CurrentLineNumber)
        self.instances.rows.append(row)
        return self.instances.next_index() - 1

    def _instance_columns(self, rows: list[tuple], first: int) -> dict[str, np.ndarray]:
        """Instance rows -> checked columns, and the plain shapes' points (``pt_*``)."""
        image, kind, attrs, track, keyframe, line = list(zip(*rows, strict=True)) or [()] * 6
        label, source, group, z, occluded, outside, text = (
            [a.get(k) for a in attrs]
            for k in ("label", "source", "group_id", "z_order", "occluded", "outside", "points")
        )
        kind = np.array(kind, np.int8)
        plain = np.flatnonzero(kind == POINTS)
        xy, counts = coordinates(
            [text[i] for i in plain], [line[i] for i in plain], "<points>", self.name
        )
        starts = np.cumsum(counts) - counts
        return {
            "image_index": np.array(image, np.int64),
            "kind": kind,
            "label": np.array([v or "" for v in label], object),
            "source": np.array([v or "manual" for v in source], object),
            "group_id": integers(group, line, lambda i: f"<{_TAG[kind[i]]}> group_id", self.name),
            "z_order": integers(z, line, lambda i: f"<{_TAG[kind[i]]}> z_order", self.name),
            "track_id": np.array(track, np.int64),
            "keyframe": np.array(keyframe, bool),
            "line": np.array(line, np.int64),
            "pt_instance": np.repeat(plain + first, counts),
            "pt_index": np.arange(len(xy)) - np.repeat(starts, counts),
            "pt_x": xy[:, 0],
            "pt_y": xy[:, 1],
            "pt_occluded": np.repeat(flags(occluded)[plain], counts),
            "pt_outside": np.repeat(flags(outside)[plain], counts),
        }

    def _element_columns(self, rows: list[tuple], first: int) -> dict[str, np.ndarray]:
        """Skeleton element rows -> checked columns."""
        inst, name, attrs, line = list(zip(*rows, strict=True)) or [()] * 4
        if None in name:
            raise at_line(
                self.name,
                line[name.index(None)],
                "skeleton element <points> has no label attribute; CVAT names each element "
                "after its sublabel: export again",
            )
        text, occluded, outside, key, source = (
            [a.get(k) for a in attrs]
            for k in ("points", "occluded", "outside", "keyframe", "source")
        )
        xy, _ = coordinates(text, line, "skeleton element", self.name, one_each=True)
        return {
            "instance": np.array(inst, np.int64),
            "name": np.array(name, object),
            "x": xy[:, 0],
            "y": xy[:, 1],
            "occluded": flags(occluded),
            "outside": flags(outside),
            "keyframe": flags(key),
            "source": np.array([v or None for v in source], object),
            "line": np.array(line, np.int64),
        }

    def _points(self, attrs: dict, parent: str | None) -> None:
        """A <points> in a track (a shape, or a legacy layout's skeleton element), or misplaced."""
        if parent == "track" and self.nested is not None:  # legacy: an element's track
            inst = self.legacy.get(attrs.get("frame"))
            if inst is None:
                inst = self._instance(attrs, SKELETON, self._frame("points", attrs), keyframe=False)
                self.legacy[attrs.get("frame")] = inst
            self.elements.rows.append((inst, self.nested["label"], attrs, self.p.CurrentLineNumber))
        elif parent == "track":
            self._instance(attrs, POINTS, self._frame("points", attrs))
        else:
            raise self._misplaced("points", parent)

    def _shape(self, tag: str, attrs: dict, parent: str | None) -> None:
        """A <skeleton>, a <box> or a shape kpnb skips, in an <image> or a <track>."""
        if parent not in ("image", "track") or self.nested is not None:
            raise self._misplaced(tag, parent)
        if tag == "skeleton":
            image = self.image if parent == "image" else self._frame(tag, attrs)
            self.skeleton = self._instance(attrs, SKELETON, image)
            if parent == "track":  # the legacy layout's element tracks follow
                self.legacy[attrs.get("frame")] = self.skeleton
        elif tag == "box":
            if parent == "track" and attrs.get("outside") in TRUE:
                return  # the track has left the frame: no box there
            self._box(attrs, self.image if parent == "image" else self._frame(tag, attrs))
        else:
            self.skipped[tag] = self.skipped.get(tag, 0) + 1

    def _box(self, attrs: dict, image: int) -> None:
        t = self.track or {"id": -1, "label": attrs.get("label"), "source": None, "group_id": None}
        corners = []
        for key in ("xtl", "ytl", "xbr", "ybr"):
            text = attrs.get(key)
            try:
                corners.append(float(text))
            except (TypeError, ValueError):
                corners.append(math.nan)
            if not math.isfinite(corners[-1]):
                why = "is missing" if text is None else "is not a finite number"
                raise self.error(f"<box> {key}={text!r} {why}")
        group = self._int("box", {"group_id": attrs.get("group_id") or t["group_id"]}, "group_id")
        z, source = self._int("box", attrs, "z_order"), attrs.get("source") or t["source"]
        row = (image, t["label"] or "", *corners, attrs.get("occluded") in TRUE, source or "manual")
        self.boxes.append((*row, group, z, t["id"]))

    # -- <meta> ------------------------------------------------------------------------------
    def _meta_start(self, tag: str, parent: str) -> None:
        if parent == "meta" and tag in ("task", "job", "project"):
            self.meta_kind = tag
        if tag == "label" and parent == "labels":
            self.label = dict.fromkeys(("name", "type", "color", "parent", "svg"))
        elif tag == "task" and parent == "tasks":
            self.task = {}
        if tag in _META_TEXT:
            self._collect()

    def _meta_end(self, tag: str) -> None:
        if len(self.stack) == self.meta_at:  # </meta>
            self.meta_at = -1
            return
        parent = self.stack[-1]
        if tag == "label" and parent == "labels" and self.label is not None:
            self.labels.append(self.label)
            self.label = None
        elif tag == "task" and parent == "tasks" and self.task is not None:
            if self.task.get("id"):
                self.tasks[self._int("id", self.task, "id", bounds=FRAMES)] = self.task
            self.task = None
        if tag not in _META_TEXT:
            return
        text = self._collected()
        if self.label is not None:
            if parent == "label" and tag in self.label:
                self.label[tag] = text if tag == "svg" else text.strip()
        elif parent == "original_size":
            (self.task if self.task is not None else self.top)[tag] = text.strip()
        elif self.task is not None:
            if parent == "task":
                self.task[tag] = text.strip()
        elif tag == "dumped" and parent == "meta":
            self.dumped = text.strip()
        elif parent in ("task", "job", "project") and len(self.stack) == self.meta_at + 2:
            self.top[tag] = text if tag == "subsets" else text.strip()

    # -- feeding -----------------------------------------------------------------------------
    def parse(self, stream) -> None:
        """Feed `stream` (binary) to expat in 64 KB pieces."""
        try:
            while data := stream.read(_READ):
                self.p.Parse(data, False)
            self.p.Parse(b"", True)
        except pyexpat.ExpatError as exc:
            raise CvatFormatError(
                f"{self.name}: line {exc.lineno}, column {exc.offset}: malformed XML "
                f"({pyexpat.ErrorString(exc.code)}); the file may be truncated: export it again"
            ) from None
        except (LookupError, ValueError) as exc:  # expat asks Python's codecs for the encoding
            if isinstance(exc, KpnbError) or "encoding" not in str(exc):
                raise
            raise CvatFormatError(
                f"{self.name}: the XML declares an encoding kpnb cannot read ({exc}); "
                "save it as UTF-8 (CVAT writes UTF-8)"
            ) from None
