"""CVAT for images / video 1.1 XML <-> the tidy `Annotations` tables.

`read_cvat` streams an ``annotations.xml`` (or a folder or export ``.zip`` holding one)
into tables; `write_cvat` writes CVAT for images 1.1 that CVAT itself imports.
../shared/notes/cvat-format.md (in the project repository) lists the layouts handled.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import pandas as pd

from kpnb._io import atomic_path
from kpnb.tables import Annotations, Skeleton, tidy_boxes, tidy_images, tidy_keypoints

__all__ = ["CvatAnnotations", "CvatFormatError", "read_cvat", "write_cvat", "skeleton_svg"]

#: What `read_cvat` returns: the tidy tables shared by every kpnb stage.
CvatAnnotations = Annotations

# Written in <dumped> when the caller gives no time, so identical tables give identical bytes.
FIXED_DUMPED = "2024-01-01 00:00:00.000000+00:00"


class CvatFormatError(ValueError):
    """A CVAT file is malformed or not CVAT: the message names the file, line and fix."""


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def skeleton_svg(skeleton: Skeleton, positions: np.ndarray | None = None) -> str:
    """The ``<svg>`` text CVAT stores for a skeleton label (lines first, then circles).

    Node ids are 1-based positions, so edges read back as the same 0-based pairs.
    `positions` (``[K, 2]`` in a 0-100 box) places the circles; default is a ring.
    """
    k = skeleton.num_keypoints
    if positions is None:
        angles = np.linspace(-np.pi / 2, 1.5 * np.pi, k, endpoint=False)
        positions = np.stack([50 + 35 * np.cos(angles), 50 + 35 * np.sin(angles)], axis=1)
    parts = []
    for a, b in skeleton.edges:
        (x1, y1), (x2, y2) = positions[a], positions[b]
        parts.append(
            f'<line x1="{x1:.4f}" y1="{y1:.4f}" x2="{x2:.4f}" y2="{y2:.4f}" stroke="black" '
            f'data-type="edge" data-node-from="{a + 1}" stroke-width="0.5" '
            f'data-node-to="{b + 1}"></line>'
        )
    for i, name in enumerate(skeleton.keypoints):
        x, y = positions[i]
        parts.append(
            f'<circle r="1.5" stroke="black" fill="#b3b3b3" cx="{x:.4f}" cy="{y:.4f}" '
            f'stroke-width="0.1" data-type="element node" data-element-id="{i + 1}" '
            f'data-node-id="{i + 1}" data-label-name={quoteattr(name)}></circle>'
        )
    return "".join(parts)


def _fmt(v: float) -> str:
    return f"{float(v):.2f}"


def _text(tag: str, value, indent: str) -> str:
    return f"{indent}<{tag}>{escape(str(value))}</{tag}>"


def _label_lines(ann: Annotations, indent: str) -> list[str]:
    labels = ann.labels
    lines = [f"{indent}<labels>"]
    i2 = indent + "  "
    for row in labels.itertuples(index=False):
        name = str(row.name)
        lines.append(f"{i2}<label>")
        lines.append(_text("name", name, i2 + "  "))
        color = getattr(row, "color", None)
        if isinstance(color, str) and color:
            lines.append(_text("color", color, i2 + "  "))
        ltype = getattr(row, "type", None)
        lines.append(_text("type", ltype if isinstance(ltype, str) and ltype else "any", i2 + "  "))
        lines.append(f"{i2}  <attributes>")
        lines.append(f"{i2}  </attributes>")
        if name in ann.skeletons:
            svg = getattr(row, "svg", None)
            if not isinstance(svg, str) or not svg:
                svg = skeleton_svg(ann.skeletons[name])
            lines.append(_text("svg", svg, i2 + "  "))
        parent = getattr(row, "parent", None)
        if isinstance(parent, str) and parent:
            lines.append(_text("parent", parent, i2 + "  "))
        lines.append(f"{i2}</label>")
    lines.append(f"{indent}</labels>")
    return lines


def _meta_lines(ann: Annotations, dumped: str) -> list[str]:
    images = ann.images
    name = str(ann.meta.get("name", "kpnb"))
    subsets = (
        [s for s in pd.unique(images["subset"].dropna().astype(str)) if s] if len(images) else []
    )
    lines = ["  <meta>"]
    if subsets:
        lines += ["    <project>", _text("id", 1, "      "), _text("name", name, "      ")]
        lines.append("      <tasks>")
        tasks = images.dropna(subset=["task_id"]).drop_duplicates("task_id")
        for t in tasks.itertuples(index=False):
            n = int((images["task_id"] == t.task_id).sum())
            lines += [
                "        <task>",
                _text("id", int(t.task_id), "          "),
                _text("name", f"{name}-{t.subset}", "          "),
                _text("size", n, "          "),
                _text("mode", "annotation", "          "),
                _text("subset", t.subset, "          "),
                "        </task>",
            ]
        lines.append("      </tasks>")
        lines.append(_text("subsets", "\n".join(subsets), "      "))
        lines += _label_lines(ann, "      ")
        lines.append("    </project>")
    else:
        lines += [
            "    <task>",
            _text("id", 1, "      "),
            _text("name", name, "      "),
            _text("size", len(images), "      "),
            _text("mode", "annotation", "      "),
            _text("start_frame", 0, "      "),
            _text("stop_frame", max(len(images) - 1, 0), "      "),
        ]
        lines += _label_lines(ann, "      ")
        lines.append("    </task>")
    lines.append(_text("dumped", dumped, "    "))
    lines.append("  </meta>")
    return lines


def _attr_lines(attrs: dict, key, indent: str) -> list[str]:
    return [
        f"{indent}<attribute name={quoteattr(str(n))}>{escape(str(v))}</attribute>"
        for n, v in attrs.get(key, ())
    ]


def _group_attr(row) -> str:
    g = row.group_id
    return f" group_id={quoteattr(str(int(g)))}" if pd.notna(g) and int(g) != 0 else ""


def _source(v) -> str:
    return str(v) if isinstance(v, str) and v else "manual"


def _z(v) -> int:
    return int(v) if pd.notna(v) else 0


def _shape_lines(ann: Annotations, kp: pd.DataFrame, boxes: pd.DataFrame, attrs: dict) -> list[str]:
    """The shapes of one image, sorted by z_order as CVAT writes them."""
    shapes: list[tuple[int, list[str]]] = []
    for inst_id, rows in kp.groupby("instance_id", sort=False):
        first = rows.iloc[0]
        label = str(first["label"])
        head = f"label={quoteattr(label)} source={quoteattr(_source(first['source']))}"
        z = _z(first["z_order"])
        grp = _group_attr(first)
        if label in ann.skeletons:
            out = [f'    <skeleton {head} z_order="{z}"{grp}>']
            for r in rows.itertuples(index=False):
                if not (math.isfinite(r.x) and math.isfinite(r.y)):
                    continue  # an element missing from the file stays missing
                out.append(
                    f"      <points label={quoteattr(str(r.keypoint))} "
                    f'source={quoteattr(_source(r.source))} outside="{int(bool(r.outside))}" '
                    f'occluded="{int(bool(r.occluded))}" points="{_fmt(r.x)},{_fmt(r.y)}">'
                )
                out += _attr_lines(attrs, (inst_id, int(r.point_index)), "        ")
                out.append("      </points>")
            out += _attr_lines(attrs, (inst_id, -1), "      ")
            out.append("    </skeleton>")
        else:
            pts = ";".join(
                f"{_fmt(x)},{_fmt(y)}" for x, y in zip(rows["x"], rows["y"], strict=True)
            )
            occl = int(bool(rows["occluded"].any()))
            out = [f'    <points {head} occluded="{occl}" points="{pts}" z_order="{z}"{grp}>']
            out += _attr_lines(attrs, (inst_id, -1), "      ")
            out.append("    </points>")
        shapes.append((z, out))
    for b in boxes.itertuples(index=False):
        z = _z(b.z_order)
        out = [
            f"    <box label={quoteattr(str(b.label))} source={quoteattr(_source(b.source))} "
            f'occluded="{int(bool(b.occluded))}" xtl="{_fmt(b.xtl)}" ytl="{_fmt(b.ytl)}" '
            f'xbr="{_fmt(b.xbr)}" ybr="{_fmt(b.ybr)}" z_order="{z}"{_group_attr(b)}>',
            "    </box>",
        ]
        shapes.append((z, out))
    shapes.sort(key=lambda s: s[0])  # stable: equal z keeps table order
    return [line for _, lines in shapes for line in lines]


def _attribute_index(ann: Annotations) -> dict:
    index: dict = {}
    for r in ann.attributes.itertuples(index=False):
        index.setdefault((r.instance_id, int(r.point_index)), []).append((r.name, r.value))
    return index


def iter_cvat_lines(ann: Annotations, *, dumped: str = FIXED_DUMPED) -> Iterable[str]:
    """The lines of a CVAT for images 1.1 document for `ann` (see `write_cvat`)."""
    yield '<?xml version="1.0" encoding="utf-8"?>'
    yield "<annotations>"
    yield "  <version>1.1</version>"
    yield from _meta_lines(ann, dumped)
    kp_by_image = dict(tuple(ann.keypoints.groupby("image_index", sort=False)))
    box_by_image = (
        dict(tuple(ann.boxes.groupby("image_index", sort=False))) if len(ann.boxes) else {}
    )
    attrs = _attribute_index(ann)
    empty_kp, empty_box = ann.keypoints.iloc[:0], ann.boxes.iloc[:0]
    project = ann.images["subset"].notna().any() if len(ann.images) else False
    for img in ann.images.itertuples(index=False):
        extra = ""
        if project and isinstance(img.subset, str):
            extra = f' subset={quoteattr(img.subset)} task_id="{int(img.task_id)}"'
        yield (
            f'  <image id="{int(img.image_id)}" name={quoteattr(str(img.name))}{extra} '
            f'width="{int(img.width)}" height="{int(img.height)}">'
        )
        kp = kp_by_image.get(img.image_index, empty_kp)
        boxes = box_by_image.get(img.image_index, empty_box)
        yield from _shape_lines(ann, kp, boxes, attrs)
        yield "  </image>"
    yield "</annotations>"


def write_cvat(
    annotations: Annotations, path: str | os.PathLike, *, dumped: str = FIXED_DUMPED
) -> Path:
    """Write `annotations` as CVAT for images 1.1 XML at `path`, atomically.

    Images with a ``subset`` are written as a project export (``subset``/``task_id`` on
    each ``<image>``); otherwise as a task export. Skeleton instances become
    ``<skeleton>`` with one ``<points>`` element per labelled keypoint (missing ones are
    left out, ``outside``/``occluded`` kept); other labels become ``<points>`` shapes.
    Coordinates are written with two decimals, as CVAT does.

    Returns:
        The path written.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for line in iter_cvat_lines(annotations, dumped=dumped):
                f.write(line)
                f.write("\n")
    return path


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------
#
# pyexpat with defusedxml's guards, not defusedxml.ElementTree.iterparse: iterparse builds an
# Element per node and cannot say which line a bad value sits on; expat callbacks give the
# line for free and let points be collected as raw strings and converted in one numpy pass.

_SHAPES_SKIPPED = {"polygon", "polyline", "ellipse", "mask", "cuboid", "tag"}
_META_TEXT = {
    "name", "type", "color", "parent", "svg", "width", "height", "id", "subset", "start_frame",
    "stop_frame", "frame_filter", "size", "mode", "version", "dumped", "subsets",
}  # fmt: skip


def _forbid_entities(*args):
    from defusedxml import EntitiesForbidden

    name = args[0] if args else "?"
    raise EntitiesForbidden(name, None, None, None, None, None)


def _forbid_external(context, base, sysid, pubid):
    from defusedxml import ExternalReferenceForbidden

    raise ExternalReferenceForbidden(context, base, sysid, pubid)


class _Source:
    """An annotations.xml as a binary stream, from a file, a folder or an export zip."""

    def __init__(self, source: str | os.PathLike):
        self.path = Path(source)
        self.member: str | None = None
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such file or folder")
        if self.path.is_dir():
            self.path = _find_xml_in_folder(self.path)
        elif self.path.suffix.lower() == ".zip":
            self.member = _find_xml_in_zip(self.path)

    @property
    def name(self) -> str:
        return f"{self.path}!{self.member}" if self.member else str(self.path)

    def open(self):
        if self.member is None:
            return open(self.path, "rb")
        import zipfile

        zf = zipfile.ZipFile(self.path)
        return _ZipMember(zf, zf.open(self.member))


class _ZipMember:
    def __init__(self, zf, fh):
        self.zf, self.fh = zf, fh

    def read(self, n=-1):
        return self.fh.read(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()
        self.zf.close()


def _find_xml_in_folder(folder: Path) -> Path:
    direct = folder / "annotations.xml"
    if direct.is_file():
        return direct
    found = sorted(folder.rglob("annotations.xml")) or sorted(folder.glob("*.xml"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(
            f"{folder}: no annotations.xml in this folder; point at a CVAT export "
            "(a folder or .zip holding annotations.xml) or at the XML file itself"
        )
    raise CvatFormatError(
        f"{folder}: several XML files ({', '.join(p.name for p in found[:5])}); "
        "pass the annotations file itself"
    )


def _find_xml_in_zip(path: Path) -> str:
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.lower().endswith(".xml")]
    except zipfile.BadZipFile as exc:
        raise CvatFormatError(f"{path}: not a readable zip ({exc}); download it again") from exc
    preferred = sorted((n for n in names if n.rsplit("/", 1)[-1] == "annotations.xml"), key=len)
    if preferred:
        return preferred[0]
    if len(names) == 1:
        return names[0]
    raise CvatFormatError(
        f"{path}: no annotations.xml in this zip (XML members: {names[:5]}); "
        "export the dataset from CVAT in 'CVAT for images 1.1' or 'CVAT for video 1.1'"
    )


_TRUE = frozenset(("1", "true", "True"))
_CHUNK = 1 << 16
_INST_FIELDS = ["image_index", "label", "kind", "source", "group_id", "z_order", "track_id",
                "keyframe", "occluded", "outside", "line"]  # fmt: skip
_INST_DTYPES = {"image_index": np.int64, "label": object, "kind": object, "source": object,
                "group_id": np.int64, "z_order": np.int64, "track_id": np.int64,
                "keyframe": bool, "occluded": bool, "outside": bool, "line": np.int64}  # fmt: skip


def _concat_chunks(chunks: list[dict], fields, dtypes) -> pd.DataFrame:
    if not chunks:
        return pd.DataFrame({f: np.zeros(0, dtypes[f]) for f in fields})
    return pd.DataFrame({f: np.concatenate([c[f] for c in chunks]) for f in fields})


class _Parser:
    """Expat callbacks that collect CVAT content into flat lists (one pass, no tree).

    The body handlers are the hot path (one call per element of a 400,000-image export),
    so they branch on plain flags instead of a tag stack, take no character data unless an
    ``<attribute>`` is open, and keep strings interned. ``<meta>`` gets its own handlers.
    """

    def __init__(self, name: str):
        import pyexpat

        self.name = name
        p = pyexpat.ParserCreate()
        p.buffer_text = True
        p.buffer_size = 1 << 16
        p.SetParamEntityParsing(pyexpat.XML_PARAM_ENTITY_PARSING_NEVER)
        # defusedxml's guards: refuse entity declarations (bombs) and external references.
        p.EntityDeclHandler = _forbid_entities
        p.UnparsedEntityDeclHandler = _forbid_entities
        p.ExternalEntityRefHandler = _forbid_external
        p.StartElementHandler = self.start
        p.EndElementHandler = self.end
        self.p = p
        self.text: list[str] = []
        self.root_seen = False
        self.strings: dict[str, str] = {}  # interned labels, names and sources
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
        # images
        self.images: list[dict] = []
        self.frame_index: dict[tuple, int] = {}
        self.image = -1
        # Rows are tuples (one append each) turned into numpy chunks every _CHUNK rows, so
        # memory holds at most one chunk of Python objects.
        self.inst_rows: list[tuple] = []  # one per skeleton or points shape (_INST_FIELDS)
        self.inst_chunks: list[dict] = []
        self.n_inst = 0
        self.elem_rows: list[tuple] = []  # one per skeleton element (_ELEM_FIELDS)
        self.elem_chunks: list[dict] = []
        self.plain_rows: list[tuple] = []  # plain <points>: (instance, "x,y;x,y", line)
        self.plain_chunks: list[dict] = []
        self.boxes: list[dict] = []
        self.attrs: list[tuple] = []  # (instance, element name or None, name, value)
        self.skipped: dict[str, int] = {}
        # where we are in the body
        self.skel = -1  # open <skeleton> instance
        self.shape = -1  # open plain <points> instance
        self.elem_inst = -1  # instance of the open skeleton element
        self.elem_name: str | None = None  # name of the open skeleton element
        self.attr_name: str | None = None
        self.track: dict | None = None
        self.nested: dict | None = None  # legacy layout: element track inside a skeleton track
        self.legacy_frames: dict[int, int] = {}

    # -- helpers -------------------------------------------------------------------------
    def error(self, msg: str) -> CvatFormatError:
        return CvatFormatError(f"{self.name}: line {self.p.CurrentLineNumber}: {msg}")

    def _int(self, attrs: dict, key: str, default: int = 0, tag: str = "") -> int:
        v = attrs.get(key)
        if v is None or v == "":
            return default
        try:
            return int(v)
        except ValueError:
            try:
                return int(float(v))
            except ValueError:
                raise self.error(f"<{tag}> {key}={v!r} is not a number") from None

    def _frame_image(self, frame: int) -> int:
        t = self.track or {}
        task_id = t.get("task_id")
        key = (task_id, frame)
        idx = self.frame_index.get(key)
        if idx is None:
            idx = len(self.images)
            self.frame_index[key] = idx
            self.images.append({
                "image_index": idx, "image_id": frame, "name": f"frame_{frame:06d}",
                "width": None, "height": None, "subset": t.get("subset"), "task_id": task_id,
            })  # fmt: skip
        return idx

    def _new_instance(self, attrs, label, kind, image, track_id=-1, keyframe=False) -> int:
        strings = self.strings
        source = attrs.get("source")
        group = attrs.get("group_id")
        if self.track is not None:
            source = source or self.track["source"]
            group = group or self.track["group_id"]
        source = source or "manual"
        z = attrs.get("z_order")
        self.inst_rows.append((
            image, strings.setdefault(label, label), kind, strings.setdefault(source, source),
            self._int({"group_id": group}, "group_id", 0, kind) if group else 0,
            0 if z is None or z == "0" else self._int(attrs, "z_order", 0, kind),
            track_id, keyframe, attrs.get("occluded") in _TRUE, attrs.get("outside") in _TRUE,
            self.p.CurrentLineNumber,
        ))  # fmt: skip
        self.n_inst += 1
        if len(self.inst_rows) >= _CHUNK:
            self._flush_instances()
        return self.n_inst - 1

    def _element(self, instance: int, name: str | None, attrs: dict) -> None:
        if name is None:
            raise self.error("skeleton element <points> has no label attribute")
        strings = self.strings
        name = strings.setdefault(name, name)
        src = attrs.get("source")
        self.elem_rows.append((
            instance, name, attrs.get("points", ""), attrs.get("occluded"), attrs.get("outside"),
            None if src is None else strings.setdefault(src, src), attrs.get("keyframe"),
            self.p.CurrentLineNumber,
        ))  # fmt: skip
        self.elem_inst = instance
        self.elem_name = name
        if len(self.elem_rows) >= _CHUNK:
            self._flush_elements()

    def _flush_instances(self) -> None:
        if self.inst_rows:
            cols = list(zip(*self.inst_rows, strict=True))
            self.inst_chunks.append({f: np.array(c, dtype=_INST_DTYPES[f])
                                     for f, c in zip(_INST_FIELDS, cols, strict=True)})  # fmt: skip
            self.inst_rows = []

    def _flush_elements(self) -> None:
        if not self.elem_rows:
            return
        inst, names, points, occl, outs, src, keyframe, line = zip(*self.elem_rows, strict=True)
        xy = _parse_xy(list(points), line, "skeleton element", self.name)
        self.elem_chunks.append({
            "instance": np.array(inst, np.int64), "name": np.array(names, object),
            "x": xy[:, 0], "y": xy[:, 1], "source": np.array(src, object),
            "occluded": np.fromiter((v in _TRUE for v in occl), bool, len(occl)),
            "outside": np.fromiter((v in _TRUE for v in outs), bool, len(outs)),
            "keyframe": np.fromiter((v in _TRUE for v in keyframe), bool, len(keyframe)),
            "line": np.array(line, np.int64),
        })  # fmt: skip
        self.elem_rows = []

    def _flush_plain(self) -> None:
        """Plain <points> rows -> arrays: one entry per coordinate of each shape."""
        if not self.plain_rows:
            return
        instances, strings, lines = zip(*self.plain_rows, strict=True)
        counts = np.array([s.count(";") + 1 if s else 0 for s in strings])
        if (counts == 1).all():  # the common case: one point per shape
            flat, flat_lines = list(strings), lines
        else:
            flat, flat_lines = [], []
            for s, line, c in zip(strings, lines, counts, strict=True):
                if c:
                    flat.extend(s.split(";"))
                    flat_lines.extend([line] * c)
        xy = _parse_xy(flat, flat_lines, "<points>", self.name)
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        self.plain_chunks.append({
            "instance": np.repeat(np.asarray(instances, np.int64), counts),
            "point_index": np.arange(len(xy)) - starts, "x": xy[:, 0], "y": xy[:, 1],
        })  # fmt: skip
        self.plain_rows = []

    def finish(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The instance and element tables (after the last chunk)."""
        self._flush_instances()
        self._flush_elements()
        self._flush_plain()
        inst = _concat_chunks(self.inst_chunks, _INST_FIELDS, _INST_DTYPES)
        elem_dtypes = {"instance": np.int64, "name": object, "x": np.float64, "y": np.float64,
                       "source": object, "occluded": bool, "outside": bool, "keyframe": bool,
                       "line": np.int64}  # fmt: skip
        elem = _concat_chunks(self.elem_chunks, list(elem_dtypes), elem_dtypes)
        self.inst_chunks, self.elem_chunks = [], []
        return inst, elem

    def _collect_text(self, on: bool) -> None:
        self.text = []
        self.p.CharacterDataHandler = self.text.append if on else None

    # -- body callbacks (the hot path) ---------------------------------------------------
    def start(self, tag: str, attrs: dict) -> None:
        if tag == "points":
            if self.skel >= 0:
                self._element(self.skel, attrs.get("label"), attrs)
            else:
                self._start_points(attrs)
        elif tag == "skeleton":
            self._start_skeleton(attrs)
        elif tag == "image":
            idx = len(self.images)
            self.images.append({
                "image_index": idx, "image_id": self._int(attrs, "id", idx, "image"),
                "name": attrs.get("name", ""), "width": attrs.get("width"),
                "height": attrs.get("height"), "subset": attrs.get("subset"),
                "task_id": attrs.get("task_id"), "line": self.p.CurrentLineNumber,
            })  # fmt: skip
            self.image = idx
        elif tag == "attribute":
            self.attr_name = attrs.get("name", "")
            self._collect_text(True)
        elif tag == "box":
            self._start_box(attrs)
        elif tag == "track":
            self._start_track(attrs)
        elif tag == "meta":
            self.stack = ["annotations"]
            self.p.StartElementHandler, self.p.EndElementHandler = self.meta_start, self.meta_end
            self.meta_start(tag, attrs)
        elif tag == "version":
            self._collect_text(True)
        elif not self.root_seen:
            if tag != "annotations":
                raise self.error(
                    f"root element is <{tag}>, expected <annotations>: this is not a CVAT for "
                    "images/video 1.1 file; export from CVAT in one of those formats"
                )
            self.root_seen = True
        elif tag in _SHAPES_SKIPPED:
            self.skipped[tag] = self.skipped.get(tag, 0) + 1

    def end(self, tag: str) -> None:
        if tag == "points":
            if self.elem_name is not None:
                self.elem_name = None
            else:
                self.shape = -1
        elif tag == "skeleton":
            self.skel = -1
        elif tag == "attribute":
            self._end_attribute()
        elif tag == "image":
            self.image = -1
        elif tag == "track":
            if self.nested is not None:
                self.nested = None
            else:
                self.track = None
        elif tag == "version":
            self.version = "".join(self.text).strip()
            self._collect_text(False)

    def _frame(self, attrs: dict, tag: str) -> int:
        frame = self._int(attrs, "frame", -1, tag)
        if frame < 0:
            raise self.error(f"<{tag}> inside <track> has no frame attribute")
        return frame

    def _start_points(self, attrs: dict) -> None:
        track = self.track
        if self.nested is not None:  # legacy layout: element track inside a skeleton track
            frame = self._frame(attrs, "points")
            inst = self.legacy_frames.get(frame)
            if inst is None:
                image = self._frame_image(frame)
                inst = self._new_instance(attrs, track["label"], "skeleton", image, track["id"])
                self.legacy_frames[frame] = inst
            self._element(inst, self.nested["label"], attrs)
            return
        if track is not None:
            frame = self._frame(attrs, "points")
            keyframe = attrs.get("keyframe") in _TRUE
            image = self._frame_image(frame)
            inst = self._new_instance(attrs, track["label"], "points", image, track["id"], keyframe)
        else:
            inst = self._new_instance(attrs, attrs.get("label", ""), "points", self.image)
        self.plain_rows.append((inst, attrs.get("points", ""), self.p.CurrentLineNumber))
        self.shape = inst
        if len(self.plain_rows) >= _CHUNK:
            self._flush_plain()

    def _start_skeleton(self, attrs: dict) -> None:
        track = self.track
        if self.nested is not None:
            raise self.error("<skeleton> inside a skeleton element track")
        if track is not None:
            frame = self._frame(attrs, "skeleton")
            keyframe = attrs.get("keyframe") in _TRUE
            image = self._frame_image(frame)
            inst = self._new_instance(
                attrs, track["label"], "skeleton", image, track["id"], keyframe
            )
            self.legacy_frames[frame] = inst
        else:
            inst = self._new_instance(attrs, attrs.get("label", ""), "skeleton", self.image)
        self.skel = inst

    def _start_box(self, attrs: dict) -> None:
        track = self.track
        if track is not None:
            image = self._frame_image(self._frame(attrs, "box"))
            if attrs.get("outside") in _TRUE:
                return  # the track has left the frame: no box there
        else:
            image = self.image
        group = attrs.get("group_id") or (track or {}).get("group_id")
        self.boxes.append({
            "image_index": image, "box_id": len(self.boxes),
            "label": track["label"] if track is not None else attrs.get("label", ""),
            "xtl": attrs.get("xtl"), "ytl": attrs.get("ytl"), "xbr": attrs.get("xbr"),
            "ybr": attrs.get("ybr"), "occluded": attrs.get("occluded") in _TRUE,
            "source": attrs.get("source") or "manual",
            "group_id": self._int({"g": group}, "g", 0, "box") if group else 0,
            "z_order": self._int(attrs, "z_order", 0, "box"),
            "track_id": track["id"] if track is not None else -1,
            "line": self.p.CurrentLineNumber,
        })  # fmt: skip

    def _end_attribute(self) -> None:
        value = "".join(self.text)
        self._collect_text(False)
        if self.elem_name is not None:
            self.attrs.append((self.elem_inst, self.elem_name, self.attr_name, value))
        elif self.shape >= 0:
            self.attrs.append((self.shape, None, self.attr_name, value))
        elif self.skel >= 0:
            self.attrs.append((self.skel, None, self.attr_name, value))
        # attributes of boxes and skipped shapes are not modelled

    def _start_track(self, attrs: dict) -> None:
        info = {
            "id": self._int(attrs, "id", -1, "track"), "label": attrs.get("label", ""),
            "source": attrs.get("source"), "group_id": attrs.get("group_id"),
            "subset": attrs.get("subset"),
            "task_id": self._int(attrs, "task_id", 0, "track") if attrs.get("task_id") else None,
        }  # fmt: skip
        if self.track is None:
            self.track = info
            self.legacy_frames = {}
        elif self.nested is None:
            self.nested = info
        else:
            raise self.error("<track> nested more than two levels deep")

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
        self._collect_text(tag in _META_TEXT)

    def meta_end(self, tag: str) -> None:
        self.stack.pop()
        text = "".join(self.text)
        self._collect_text(False)
        if tag == "meta":
            self.p.StartElementHandler, self.p.EndElementHandler = self.start, self.end
            return
        stack = self.stack
        parent = stack[-1]
        if self.label is not None:
            if tag == "label" and parent == "labels":
                self.labels.append(self.label)
                self.label = None
            elif tag == "attributes":
                self.in_label_attributes = False
            elif not self.in_label_attributes and parent == "label" and tag in self.label:
                self.label[tag] = text if tag == "svg" else text.strip()
            return
        if parent == "original_size" and tag in ("width", "height"):
            target = self.task if self.task is not None else self.meta_size
            target[tag] = text.strip()
        elif self.task is not None:
            if tag == "task" and parent == "tasks":
                if self.task.get("id"):
                    self.tasks[int(self.task["id"])] = self.task
                self.task = None
            elif parent == "task" and tag in _META_TEXT:
                self.task[tag] = text.strip()
        elif tag == "dumped":
            self.dumped = text.strip()
        elif parent in ("task", "job", "project") and len(stack) == 3 and tag in _META_TEXT:
            self.meta_fields[tag] = text if tag == "subsets" else text.strip()

    def parse(self, stream) -> None:
        import pyexpat

        try:
            self.p.ParseFile(stream)
        except pyexpat.ExpatError as exc:
            raise CvatFormatError(
                f"{self.name}: line {exc.lineno}, column {exc.offset}: malformed XML "
                f"({pyexpat.ErrorString(exc.code)}); the file may be truncated: export it again"
            ) from None
        except Exception as exc:
            from defusedxml import DefusedXmlException

            if isinstance(exc, DefusedXmlException):
                raise CvatFormatError(
                    f"{self.name}: line {self.p.CurrentLineNumber}: refused: the XML declares "
                    f"entities or external references ({exc}); CVAT never writes these, so the "
                    "file is not a CVAT export or has been tampered with"
                ) from None
            raise
        if not self.root_seen:
            raise CvatFormatError(f"{self.name}: empty document; export it again from CVAT")


def _parse_xy(strings: list[str], lines: list[int], what: str, source: str) -> np.ndarray:
    """``["x,y", ...]`` -> ``[N, 2]`` float64 in one pass; a bad value names its line."""
    if not strings:
        return np.zeros((0, 2))
    joined = ",".join(strings)
    try:
        flat = np.array(joined.split(","), dtype=np.float64)
    except ValueError:
        flat = None
    if flat is None or flat.size != 2 * len(strings):
        for s, line in zip(strings, lines, strict=True):
            parts = s.split(",")
            try:
                if len(parts) != 2:
                    raise ValueError
                float(parts[0]), float(parts[1])
            except ValueError:
                raise CvatFormatError(
                    f"{source}: line {line}: {what} points={s!r} is not 'x,y'; fix the value "
                    "or re-export the task"
                ) from None
    return flat.reshape(-1, 2)


def _parse_skeleton_svg(name: str, svg: str | None, sublabels: list[str], source: str):
    """Keypoint order from the svg circles, edges from node ids; parent order as fallback."""
    import logging

    log = logging.getLogger(__name__)
    if svg:
        from defusedxml.ElementTree import fromstring

        try:
            root = fromstring("<root>" + svg + "</root>")
        except Exception as exc:  # unescaped names in data-label-name make the svg unparsable
            log.warning("%s: skeleton %r: unreadable <svg> (%s); using <parent> order",
                        source, name, exc)  # fmt: skip
            root = None
        if root is not None:
            circles = [c for c in root.iter("circle") if c.get("data-label-name") is not None]
            names = [c.get("data-label-name") for c in circles]
            if names:
                node_pos = {c.get("data-node-id"): i for i, c in enumerate(circles)}
                edges, dropped = [], []
                for ln in root.iter("line"):
                    a, b = ln.get("data-node-from"), ln.get("data-node-to")
                    if a in node_pos and b in node_pos:
                        edges.append((node_pos[a], node_pos[b]))
                    else:
                        dropped.append((a, b))
                if dropped:
                    log.warning("%s: skeleton %r: edges %s refer to no node; left out",
                                source, name, dropped)  # fmt: skip
                return Skeleton(tuple(names), tuple(dict.fromkeys(edges)))
    return Skeleton(tuple(sublabels), ()) if sublabels else None


def _num(values: list, dtype: str, what: str, lines: list[int], source: str) -> np.ndarray:
    try:
        return np.array([float(v) if v not in (None, "") else np.nan for v in values], dtype)
    except ValueError:
        for v, line in zip(values, lines, strict=True):
            try:
                float(v)
            except (TypeError, ValueError):
                raise CvatFormatError(
                    f"{source}: line {line}: {what}={v!r} is not a number"
                ) from None
        raise


def _build_tables(ps: _Parser, source_name: str) -> Annotations:
    # labels and skeletons
    labels = pd.DataFrame(ps.labels, columns=["name", "type", "color", "parent", "svg"])
    sublabels: dict[str, list[str]] = {}
    for lab in ps.labels:
        if lab.get("parent"):
            sublabels.setdefault(lab["parent"], []).append(lab["name"])
    skeletons: dict[str, Skeleton] = {}
    for lab in ps.labels:
        if lab.get("type") == "skeleton" or lab.get("svg") or lab["name"] in sublabels:
            sk = _parse_skeleton_svg(lab["name"], lab.get("svg"), sublabels.get(lab["name"], []),
                                     source_name)  # fmt: skip
            if sk is not None:
                skeletons[lab["name"]] = sk
    inst, elem = ps.finish()
    # Skeleton labels used in the file but declared nowhere: keypoints in order of appearance.
    if len(elem):
        used = inst.loc[elem["instance"].unique(), "label"].unique()
        for label in used:
            if label not in skeletons:
                ids = inst.index[inst["label"] == label]
                names = elem.loc[elem["instance"].isin(ids), "name"]
                skeletons[label] = Skeleton(tuple(dict.fromkeys(names)))
    images = _images_table(ps, source_name)
    frames = []
    if len(elem):
        frames.append(_skeleton_rows(inst, elem, skeletons, source_name))
    skel_ids = inst.index[inst["kind"] == "skeleton"]
    # skeleton instances with no element at all still get their K absent rows
    if len(skel_ids):
        seen = set(elem["instance"]) if len(elem) else set()
        bare = [i for i in skel_ids if i not in seen]
        if bare:
            frames.append(_skeleton_rows(inst, elem.iloc[:0],
                                         skeletons, source_name, only=bare))  # fmt: skip
    if ps.plain_chunks:
        frames.append(_plain_rows(inst, ps.plain_chunks))
        ps.plain_chunks = []
    if frames:
        kp = pd.concat(frames, ignore_index=True)
        kp = kp.sort_values(["instance_id", "point_index"], kind="stable", ignore_index=True)
    else:
        kp = pd.DataFrame(columns=["image_index", "instance_id", "label", "keypoint",
                                   "point_index", "x", "y", "visibility"])  # fmt: skip
        kp = kp.astype({"x": float, "y": float, "visibility": int, "image_index": int,
                        "instance_id": int, "point_index": int})  # fmt: skip
    keypoints = tidy_keypoints(kp)
    boxes = pd.DataFrame(ps.boxes)
    if len(boxes):
        lines = boxes["line"].tolist()
        for c in ("xtl", "ytl", "xbr", "ybr"):
            boxes[c] = _num(boxes[c].tolist(), "float64", f"<box> {c}", lines, source_name)
        boxes = boxes.drop(columns="line")
    attributes = _attribute_table(ps, inst, skeletons)
    meta = {
        "source": source_name, "format": "video" if ps.frame_index else "images",
        "meta_kind": ps.meta_kind, "version": ps.version, "dumped": ps.dumped,
        "name": ps.meta_fields.get("name"), "skipped": dict(ps.skipped),
    }  # fmt: skip
    return Annotations(images=images, keypoints=keypoints, skeletons=skeletons,
                       labels=labels, boxes=tidy_boxes(boxes) if len(boxes) else tidy_boxes(
                           pd.DataFrame(columns=["image_index"])),
                       attributes=attributes, meta=meta)  # fmt: skip


def _images_table(ps: _Parser, source_name: str) -> pd.DataFrame:
    images = list(ps.images)
    if ps.frame_index:
        # Video: every frame of the task(s), sized by <original_size>, in frame order.
        # project exports describe each task's frames; task and job exports the one at top
        tasks = ps.tasks if ps.meta_kind == "project" and ps.tasks else {
            None: {**ps.meta_fields, **ps.meta_size}}  # fmt: skip
        for task_id, t in tasks.items():
            start, stop = t.get("start_frame"), t.get("stop_frame")
            if start is None and stop is None and t.get("size"):
                start, stop = 0, int(t["size"]) - 1  # old exports: frames 0..size-1
            step = 1
            ff = t.get("frame_filter") or ""
            if ff.startswith("step="):
                step = int(ff[5:] or 1)
            if start is not None and stop is not None:
                for f in range(int(start), int(stop) + 1, step):
                    if (task_id, f) not in ps.frame_index:
                        ps.frame_index[(task_id, f)] = len(images)
                        images.append({"image_index": len(images), "image_id": f,
                                       "name": f"frame_{f:06d}", "width": None, "height": None,
                                       "subset": t.get("subset"), "task_id": task_id})  # fmt: skip
            for img in images:
                if img["task_id"] == task_id:
                    img["width"] = t.get("width") or ps.meta_size.get("width")
                    img["height"] = t.get("height") or ps.meta_size.get("height")
    df = pd.DataFrame(images, columns=["image_index", "image_id", "name", "width", "height",
                                       "subset", "task_id", "line"])  # fmt: skip
    lines = df["line"].fillna(0).astype(int).tolist()
    for c in ("width", "height", "task_id"):
        df[c] = _num(df[c].tolist(), "float64", f"<image> {c}", lines, source_name)
    df = df.drop(columns="line")
    df = df.astype({"width": "Int32", "height": "Int32", "task_id": "Int64"})
    return tidy_images(df)


def _skeleton_rows(inst, elem, skeletons, source_name, only=None) -> pd.DataFrame:
    """One row per (skeleton instance, keypoint) in definition order; missing -> v=0."""
    out = []
    labels = inst.loc[inst["kind"] == "skeleton", "label"]
    if only is not None:
        labels = labels.loc[only]
    for label, ids in labels.groupby(labels, sort=False).groups.items():
        sk = skeletons.get(label)
        if sk is None:
            sk = Skeleton(())
        k = sk.num_keypoints
        ids = np.asarray(ids)
        e = elem[elem["instance"].isin(ids)] if len(elem) else elem
        pos = {n: i for i, n in enumerate(sk.keypoints)}
        idx = e["name"].map(pos)
        if idx.isna().any():
            bad = e[idx.isna()].iloc[0]
            raise CvatFormatError(
                f"{source_name}: line {bad['line']}: skeleton {label!r} has no keypoint "
                f"{bad['name']!r} (its <svg> defines {list(sk.keypoints)}); fix the label "
                "definition in CVAT and export again"
            )
        key = e["instance"].to_numpy() * max(k, 1) + idx.to_numpy(dtype=np.int64)
        if len(np.unique(key)) != len(key):
            dup = e[pd.Series(key, index=e.index).duplicated()].iloc[0]
            raise CvatFormatError(
                f"{source_name}: line {dup['line']}: skeleton element {dup['name']!r} appears "
                "twice in one skeleton instance"
            )
        n = len(ids)
        grid_inst = np.repeat(ids, k)
        grid_pt = np.tile(np.arange(k), n)
        rows = pd.DataFrame({"instance_id": grid_inst, "point_index": grid_pt})
        rows["label"] = label
        rows["keypoint"] = np.array(sk.keypoints, dtype=object)[grid_pt] if k else []
        x = np.full(n * k, np.nan)
        y = np.full(n * k, np.nan)
        occl = np.zeros(n * k, bool)
        outs = np.zeros(n * k, bool)
        vis = np.zeros(n * k, np.int8)
        src = np.full(n * k, None, dtype=object)
        kf = np.zeros(n * k, bool)
        if len(e):
            pos_in_grid = np.searchsorted(ids, e["instance"].to_numpy()) * k + idx.to_numpy(int)
            x[pos_in_grid], y[pos_in_grid] = e["x"].to_numpy(), e["y"].to_numpy()
            occl[pos_in_grid] = e["occluded"].to_numpy(bool)
            outs[pos_in_grid] = e["outside"].to_numpy(bool)
            vis[pos_in_grid] = np.where(outs[pos_in_grid], 0,
                                        np.where(occl[pos_in_grid], 1, 2))  # fmt: skip
            src[pos_in_grid] = e["source"].to_numpy(object)
            kf[pos_in_grid] = e["keyframe"].to_numpy(bool)
        rows["x"], rows["y"], rows["visibility"] = x, y, vis
        rows["occluded"], rows["outside"] = occl, outs
        inst_src = inst["source"].to_numpy(object)[grid_inst]
        rows["source"] = np.where(pd.isna(src), inst_src, src)
        for c in ("image_index", "group_id", "z_order", "track_id"):
            rows[c] = inst[c].to_numpy()[grid_inst]
        rows["keyframe"] = kf | inst["keyframe"].to_numpy(bool)[grid_inst]
        out.append(rows)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _plain_rows(inst, chunks: list[dict]) -> pd.DataFrame:
    """A plain <points> shape: one row per coordinate, keypoint = its label."""
    ids = np.concatenate([c["instance"] for c in chunks])
    point_index = np.concatenate([c["point_index"] for c in chunks])
    x = np.concatenate([c["x"] for c in chunks])
    y = np.concatenate([c["y"] for c in chunks])
    xy = np.stack([x, y], axis=1)

    def take(column: str) -> np.ndarray:  # per column: no copy of the whole instance table
        return inst[column].to_numpy()[ids]

    occl, outs = take("occluded").astype(bool), take("outside").astype(bool)
    labels = take("label")
    return pd.DataFrame({
        "image_index": take("image_index"), "instance_id": ids, "label": labels,
        "keypoint": labels, "point_index": point_index, "x": xy[:, 0], "y": xy[:, 1],
        "visibility": np.where(outs, 0, np.where(occl, 1, 2)).astype(np.int8),
        "occluded": occl, "outside": outs, "source": take("source"),
        "group_id": take("group_id"), "z_order": take("z_order"), "track_id": take("track_id"),
        "keyframe": take("keyframe").astype(bool),
    })  # fmt: skip


def _attribute_table(ps: _Parser, inst: pd.DataFrame, skeletons) -> pd.DataFrame:
    rows = []
    for inst_id, elem_name, name, value in ps.attrs:
        point = -1
        if elem_name is not None:
            sk = skeletons.get(inst.at[inst_id, "label"])
            point = sk.keypoints.index(elem_name) if sk and elem_name in sk.keypoints else -1
        rows.append((inst_id, point, name, value))
    df = pd.DataFrame(rows, columns=["instance_id", "point_index", "name", "value"])
    return df.astype({"instance_id": "int64", "point_index": "int16"})


def read_cvat(source: str | os.PathLike) -> Annotations:
    """Read a CVAT for images/video 1.1 export into tidy tables.

    Args:
        source: an ``annotations.xml``, a folder holding one, or a CVAT export ``.zip``.

    Returns:
        `Annotations` (also available as ``CvatAnnotations``): ``images``, ``keypoints``
        (one row per point; skeleton instances have one row per skeleton keypoint in
        definition order, a missing element is ``(nan, nan)`` with visibility 0),
        ``skeletons``, ``labels``, ``boxes``, ``attributes`` and ``meta``.

    Raises:
        CvatFormatError: malformed or non-CVAT XML, refused entities, or a bad value; the
            message names the file and line.
        FileNotFoundError: `source` does not exist or holds no annotations file.

    Example:
        >>> ann = read_cvat("outputs/data/synthetic")  # doctest: +SKIP
        >>> ann.keypoints.head()  # doctest: +SKIP
    """
    src = _Source(source)
    parser = _Parser(src.name)
    with src.open() as stream:
        parser.parse(stream)
    return _build_tables(parser, src.name)
