"""The one CVAT reader: pyexpat with defusedxml's guards, streamed, callbacks kept lean.

`Reader.parse` feeds expat 64 KB at a time, so memory is bounded by the largest element
(an ``<image>`` with its shapes, a ``<track>``), never by the file. The body callbacks
are the hot path (one call per element of a 400,000-image export): with expat's ordered
attributes (a list per element, no dict) they only append that list with its line and
owner; every ``</image>`` or ``</track>`` past a chunk's
worth of records turns them into typed columns in bulk (`kpnb.cvat.columns`), where every
value is checked and a bad one is refused with its line. ``<meta>`` has its own handlers.
"""

from __future__ import annotations

import gc
import pyexpat

from kpnb.cvat import values
from kpnb.cvat.columns import Chunks
from kpnb.cvat.errors import CvatFormatError, at_line

_SKIPPED = frozenset(("polygon", "polyline", "ellipse", "mask", "cuboid", "tag"))
_META_TEXT = frozenset(
    (
        "name",
        "type",
        "color",
        "parent",
        "svg",
        "width",
        "height",
        "id",
        "subset",
        "start_frame",
        "stop_frame",
        "frame_filter",
        "size",
        "mode",
        "version",
        "dumped",
        "subsets",
    )
)
_READ = 1 << 16  # bytes per expat feed: expat is fastest fed tens of KB at a time
_CHUNK = 1 << 10  # records per conversion to columns: few enough to stay in the CPU's cache
POINTS, SKELETON = 0, 1  # instance kinds


def _forbid_entities(*args):
    raise _Refused("the XML declares entities")


def _forbid_external(context, base, sysid, pubid):
    raise _Refused(f"the XML references an external entity ({sysid})")


class _Refused(Exception):
    """A construct CVAT never writes and a hostile file might: entities, DTD defaults."""


class Reader:
    """Expat callbacks collecting a CVAT document into column chunks (one pass, no tree)."""

    def __init__(self, name: str):
        self.name = name
        p = pyexpat.ParserCreate()
        p.buffer_text = True
        p.buffer_size = 1 << 16
        p.ordered_attributes = True  # [name, value, ...] lists: no dict per element
        p.SetParamEntityParsing(pyexpat.XML_PARAM_ENTITY_PARSING_NEVER)
        # defusedxml's guards: no entity declarations (bombs), no external references; and
        # no internal DTD subset at all, whose ATTLIST defaults would invent attributes.
        p.EntityDeclHandler = _forbid_entities
        p.UnparsedEntityDeclHandler = _forbid_entities
        p.ExternalEntityRefHandler = _forbid_external
        p.StartDoctypeDeclHandler = self._doctype
        self.p = p
        self.root_seen = False
        self.text: list[str] = []
        # meta
        self.stack: list[str] = []
        self.meta_kind: str | None = None
        self.labels: list[dict] = []
        self.label: dict | None = None
        self.in_label_attributes = False
        self.tasks: dict[int, dict] = {}
        self.task: dict | None = None
        self.meta_fields: dict[str, str] = {}
        self.meta_size: dict[str, str] = {}
        self.version: str | None = None
        self.dumped: str | None = None
        # body records: (attributes, line, owner); turned into columns chunk by chunk
        self.images: list[tuple] = []  # (attrs, line); video frames get made-up attrs
        self.frame_index: dict[tuple, int] = {}
        self.insts: list[tuple] = []  # (attribute list, line, image, kind)
        self.elems: list[tuple] = []  # (attribute list, line, instance)
        self.inst_base = 0  # instances already converted
        self.chunks = Chunks(name)
        self.tracked: list[tuple] = []  # (instance, track id, keyframe) of track shapes
        self.boxes: list[tuple] = []  # (attrs, line, image, track id)
        self.attrs: list[tuple] = []  # (instance, element name or None, name, value)
        self.skipped: dict[str, int] = {}
        # where we are in the body
        self.image = -1  # open <image>
        self.skel = -1  # open <skeleton> instance
        self.shape: str | None = None  # open plain shape (<points>, <box>, a skipped one)
        self.elem = False  # a skeleton element <points> is open
        self.attr_name: str | None = None
        self.track: dict | None = None
        self.nested: dict | None = None  # legacy layout: element track in a skeleton track
        self.legacy_frames: dict[int, int] = {}
        self.start, self.end = self._body_handlers()
        p.StartElementHandler, p.EndElementHandler = self.start, self.end

    # -- errors ---------------------------------------------------------------------------
    def error(self, msg: str) -> CvatFormatError:
        return at_line(self.name, self.p.CurrentLineNumber, msg)

    def _doctype(self, name, sysid, pubid, has_internal_subset) -> None:
        if has_internal_subset or sysid or pubid:
            raise _Refused("the XML has a DOCTYPE with declarations")

    # -- body callbacks (the hot path) ---------------------------------------------------
    def _body_handlers(self):
        """The body's start and end callbacks as closures over what they touch per element
        (the record lists' appends, the parser): one call per element of a 400,000-image
        export, so each attribute look-up saved is measurable (`benchmarks/bench_parse.py`).
        """
        reader, p = self, self.p
        add_inst, add_elem = self.insts.append, self.elems.append  # cleared, never replaced

        def start(tag: str, attrs: list) -> None:
            # `attrs` is expat's ordered list [name, value, ...]; the records keep it as it
            # is (`kpnb.cvat.columns` reads it by name, once per distinct attribute set)
            if tag == "points":
                if reader.shape is None and not reader.elem:
                    skel = reader.skel
                    if skel >= 0:
                        add_elem((attrs, p.CurrentLineNumber, skel))
                        reader.elem = True
                        return
                    image = reader.image
                    if image >= 0:
                        add_inst((attrs, p.CurrentLineNumber, image, POINTS))
                        reader.shape = "points"
                        return
                reader._points_elsewhere(_as_dict(attrs))
            elif tag == "attribute":
                reader._start_attribute(attrs)
            elif tag == "skeleton":
                reader._start_skeleton(attrs)
            elif tag == "image":
                reader._start_image(_as_dict(attrs))
            else:
                reader._start_other(tag, _as_dict(attrs))

        def end(tag: str) -> None:
            if tag == "points":
                if reader.elem:
                    reader.elem = False
                elif reader.nested is None:
                    reader.shape = None
            else:
                reader._end_other(tag)

        return start, end

    def _start_attribute(self, attrs: list) -> None:
        if self.attr_name is not None:
            raise self.error("<attribute> inside <attribute>")
        self.attr_name = _as_dict(attrs).get("name", "")
        self.text = []
        self.p.CharacterDataHandler = self.text.append

    def _end_other(self, tag: str) -> None:
        if tag == "attribute":
            self._end_attribute()
        elif tag == "skeleton":
            self.skel = -1
        elif tag == "image":
            self.image = -1
            if len(self.insts) + len(self.elems) >= _CHUNK:
                self.flush()
        elif tag == "track":
            self._end_track()
        elif tag == self.shape:
            self.shape = None
        elif tag == "version":
            self.version = "".join(self.text).strip()
            self.p.CharacterDataHandler = None

    # -- the rest of the body --------------------------------------------------------------
    def _nesting(self, tag: str) -> None:
        """Refuse a shape anywhere but in an <image> or <track> (CVAT writes it nowhere else)."""
        if self.shape is not None or self.elem:
            inside = self.shape or "points"
            raise self.error(
                f"<{tag}> inside <{inside}>: shapes do not nest in CVAT XML; "
                "the file is damaged: export it again"
            )
        if self.image < 0 and self.track is None:
            raise self.error(
                f"<{tag}> outside any <image> or <track>: CVAT writes every shape "
                "inside the image it is on; the file is damaged: export it again"
            )

    def _start_image(self, attrs: dict) -> None:
        if self.image >= 0 or self.track is not None or self.shape is not None:
            raise self.error(
                "<image> inside another element: images sit directly in "
                "<annotations>; the file is damaged: export it again"
            )
        self.image = len(self.images)
        self.images.append((attrs, self.p.CurrentLineNumber))

    def _start_other(self, tag: str, attrs: dict) -> None:
        if tag == "box":
            self._nesting(tag)
            if self.skel >= 0:
                raise self.error("<box> inside <skeleton>")
            self._start_box(attrs)
        elif tag in _SKIPPED:
            self._nesting(tag)
            self.shape = tag
            self.skipped[tag] = self.skipped.get(tag, 0) + 1
        elif tag == "track":
            self._start_track(attrs)
        elif tag == "meta":
            self.stack = ["annotations"]
            self.p.StartElementHandler, self.p.EndElementHandler = self.meta_start, self.meta_end
            self.meta_start(tag, attrs)
        elif tag == "version":
            self.text = []
            self.p.CharacterDataHandler = self.text.append
        elif not self.root_seen:
            if tag != "annotations":
                raise self.error(
                    f"root element is <{tag}>, expected <annotations>: this is not a CVAT for "
                    "images/video 1.1 file; export from CVAT in one of those formats"
                )
            self.root_seen = True
        # other tags (newer CVAT versions' additions) are ignored

    def _frame_image(self, attrs: dict, tag: str) -> int:
        """The image of a track shape's frame, made on first sight (video has no <image>)."""
        frame = attrs.get("frame")
        if frame is None:
            raise self.error(f"<{tag}> inside <track> has no frame attribute")
        line = self.p.CurrentLineNumber
        f = int(
            values.integers(
                [frame], [line], f"<{tag}> frame", self.name, bounds=(0, values.INT32[1])
            )[0]
        )
        task_id = self.track["task_id"]
        key = (task_id, f)
        idx = self.frame_index.get(key)
        if idx is None:
            idx = self.frame_index[key] = len(self.images)
            made = {
                "id": str(f),
                "name": f"frame_{f:06d}",
                "subset": self.track["subset"],
                "task_id": task_id,
            }
            self.images.append((made, line))
        return idx

    def _track_attrs(self, attrs: dict, label: str) -> dict:
        """A track shape's attributes with the track's label, source and group as defaults."""
        t = self.track
        out = dict(attrs)
        out["label"] = label
        if not out.get("source"):
            out["source"] = t["source"]
        if not out.get("group_id"):
            out["group_id"] = t["group_id"]
        return out

    def _new_instance(self, attrs: list, image: int, kind: int, keyframe: bool = False) -> int:
        """Record an instance; `attrs`: the ordered [name, value, ...] list."""
        self.insts.append((attrs, self.p.CurrentLineNumber, image, kind))
        inst = self.inst_base + len(self.insts) - 1
        if self.track is not None:
            self.tracked.append((inst, self.track["id"], keyframe))
        return inst

    def _points_elsewhere(self, attrs: dict) -> None:
        """A <points> in a track, or where no shape may be (an error)."""
        if self.nested is not None:  # legacy layout: element track inside a skeleton track
            if self.shape is not None or self.elem:
                self._nesting("points")
            frame = attrs.get("frame")
            inst = self.legacy_frames.get(frame)
            if inst is None:
                image = self._frame_image(attrs, "points")
                track = self._track_attrs(attrs, self.track["label"])
                inst = self._new_instance(_as_list(track), image, SKELETON)
                self.legacy_frames[frame] = inst
            elem = _as_list({**attrs, "label": self.nested["label"]})
            self.elems.append((elem, self.p.CurrentLineNumber, inst))
            self.elem = True
            return
        self._nesting("points")
        if self.skel >= 0:
            raise self.error("<points> inside <skeleton> inside a shape")
        if self.image >= 0:
            raise self.error("<points> inside <image> inside <track>")
        image = self._frame_image(attrs, "points")
        shape = self._track_attrs(attrs, self.track["label"])
        self._new_instance(_as_list(shape), image, POINTS, attrs.get("keyframe") in _TRUE)
        self.shape = "points"

    def _start_skeleton(self, attrs: list) -> None:
        self._nesting("skeleton")
        if self.skel >= 0:
            raise self.error("<skeleton> inside <skeleton>")
        if self.nested is not None:
            raise self.error("<skeleton> inside a skeleton element track")
        if self.track is not None:
            if self.image >= 0:
                raise self.error("<skeleton> inside <image> inside <track>")
            attrs = _as_dict(attrs)
            image = self._frame_image(attrs, "skeleton")
            shape = _as_list(self._track_attrs(attrs, self.track["label"]))
            self.skel = self._new_instance(shape, image, SKELETON, attrs.get("keyframe") in _TRUE)
            self.legacy_frames[attrs.get("frame")] = self.skel  # legacy: element tracks follow
        else:
            self.skel = self._new_instance(attrs, self.image, SKELETON)

    def _start_box(self, attrs: dict) -> None:
        track = self.track
        self.shape = "box"
        if track is not None:
            if attrs.get("outside") in _TRUE:
                return  # the track has left the frame: no box there
            image = self._frame_image(attrs, "box")
            attrs = self._track_attrs(attrs, track["label"])
        else:
            image = self.image
        self.boxes.append(
            (attrs, self.p.CurrentLineNumber, image, -1 if track is None else track["id"])
        )

    def _end_attribute(self) -> None:
        value = "".join(self.text)
        self.p.CharacterDataHandler = None
        name, self.attr_name = self.attr_name, None
        if self.elem:
            elem = self.elems[-1]
            self.attrs.append((elem[-1], _as_dict(elem[0]).get("label"), name, value))
        elif self.shape == "points":  # the plain <points> is the last instance recorded
            self.attrs.append((self.inst_base + len(self.insts) - 1, None, name, value))
        elif self.skel >= 0 and self.shape is None:
            self.attrs.append((self.skel, None, name, value))
        # attributes of boxes, tracks and skipped shapes are not modelled

    def _start_track(self, attrs: dict) -> None:
        if self.image >= 0 or self.shape is not None or self.skel >= 0:
            raise self.error(
                "<track> inside a shape or an <image>; tracks sit directly in "
                "<annotations>: the file is damaged, export it again"
            )
        line = self.p.CurrentLineNumber
        ints = values.integers(
            [attrs.get("id"), attrs.get("task_id")],
            [line, line],
            "<track> id/task_id",
            self.name,
            default=-1,
        )
        info = {
            "id": int(ints[0]),
            "label": attrs.get("label", ""),
            "source": attrs.get("source"),
            "group_id": attrs.get("group_id"),
            "subset": attrs.get("subset"),
            "task_id": None if ints[1] < 0 else str(int(ints[1])),
        }
        if self.track is None:
            self.track = info
            self.legacy_frames = {}
        elif self.nested is None:
            self.nested = info
        else:
            raise self.error("<track> nested more than two levels deep")

    def _end_track(self) -> None:
        if self.nested is not None:
            self.nested = None
            return
        self.track = None
        if len(self.insts) + len(self.elems) >= _CHUNK:
            self.flush()

    def flush(self) -> None:
        """Records so far -> typed column chunks (values checked here, with their lines)."""
        self.chunks.add(self.insts, self.elems, self.inst_base)
        self.inst_base += len(self.insts)
        self.insts.clear()
        self.elems.clear()

    # -- meta callbacks --------------------------------------------------------------------
    def meta_start(self, tag: str, attrs: dict) -> None:
        stack = self.stack
        if len(stack) == 2 and tag in ("task", "job", "project"):
            self.meta_kind = tag
        if tag == "label" and stack[-1] == "labels":
            self.label = {"name": None, "type": None, "color": None, "parent": None, "svg": None}
            self.in_label_attributes = False
        elif tag == "attributes" and self.label is not None:
            self.in_label_attributes = True
        elif tag == "task" and stack[-1] == "tasks":
            self.task = {}
        stack.append(tag)
        self.text = []
        self.p.CharacterDataHandler = self.text.append if tag in _META_TEXT else None

    def meta_end(self, tag: str) -> None:
        self.stack.pop()
        text = "".join(self.text)
        self.text = []
        self.p.CharacterDataHandler = None
        if tag == "meta":
            self.p.StartElementHandler, self.p.EndElementHandler = self.start, self.end
            return
        parent = self.stack[-1]
        if self.label is not None:
            if tag == "label" and parent == "labels":
                self.labels.append(self.label)
                self.label = None
            elif tag == "attributes":
                self.in_label_attributes = False
            elif not self.in_label_attributes and parent == "label" and tag in self.label:
                self.label[tag] = text if tag == "svg" else text.strip()
            return
        self._meta_value(tag, parent, text)

    def _meta_value(self, tag: str, parent: str, text: str) -> None:
        if parent == "original_size" and tag in ("width", "height"):
            target = self.task if self.task is not None else self.meta_size
            target[tag] = text.strip()
        elif self.task is not None:
            if tag == "task" and parent == "tasks":
                task_id = self.task.get("id")
                if task_id:
                    self.tasks[task_id] = self.task
                self.task = None
            elif parent == "task" and tag in _META_TEXT:
                self.task[tag] = text.strip()
        elif tag == "dumped":
            self.dumped = text.strip()
        elif parent in ("task", "job", "project") and len(self.stack) == 3 and tag in _META_TEXT:
            self.meta_fields[tag] = text if tag == "subsets" else text.strip()

    # -- feeding -----------------------------------------------------------------------------
    def parse(self, stream) -> None:
        """Feed `stream` (binary) to expat in 64 KB pieces; refuse what CVAT never writes."""
        p = self.p
        enabled = gc.isenabled()
        gc.disable()  # millions of small records, none cyclic: collections would only cost
        try:
            while True:
                data = stream.read(_READ)
                p.Parse(data, not data)
                if not data:
                    break
        except pyexpat.ExpatError as exc:
            raise CvatFormatError(
                f"{self.name}: line {exc.lineno}, column {exc.offset}: malformed XML "
                f"({pyexpat.ErrorString(exc.code)}); the file may be truncated: export it again"
            ) from None
        except _Refused as exc:
            raise self.error(
                f"refused: {exc}; CVAT never writes these, so the file is not a CVAT export "
                "or has been tampered with"
            ) from None
        finally:
            if enabled:
                gc.enable()
        if not self.root_seen:
            raise CvatFormatError(f"{self.name}: empty document; export it again from CVAT")
        self.flush()


_TRUE = values.TRUE


def _as_dict(attrs: list) -> dict:
    """expat's ordered [name, value, ...] list as a dict (for the elements off the hot path)."""
    return dict(zip(attrs[::2], attrs[1::2], strict=True))


def _as_list(attrs: dict) -> list:
    """A dict of attributes as the ordered [name, value, ...] list the records keep."""
    return [x for item in attrs.items() for x in item]
