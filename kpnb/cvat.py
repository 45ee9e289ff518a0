"""CVAT for images / video 1.1 XML <-> the tidy `Annotations` tables.

`read_cvat` streams an ``annotations.xml`` (or a folder or export ``.zip`` holding one)
into tables; `write_cvat` writes CVAT for images 1.1 that CVAT itself imports.
../shared/notes/cvat-format.md (in the project repository) lists the layouts handled.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterable
from operator import itemgetter
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


class _NeedsFullParse(Exception):
    """The fast reader met something it does not handle; `read_cvat` parses again in full."""


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


def _group_attr(g) -> str:
    return f" group_id={quoteattr(str(int(g)))}" if pd.notna(g) and int(g) != 0 else ""


def _source(v) -> str:
    return str(v) if isinstance(v, str) and v else "manual"


def _z(v) -> int:
    return int(v) if pd.notna(v) else 0


def _keypoint_blocks(kp: pd.DataFrame) -> tuple[dict, dict[int, list[tuple[int, int]]]]:
    """`kp`'s columns as Python lists, and per image its instances' row ranges.

    Instances come in order of first appearance in the image, rows in table order: what a
    groupby per image and instance would give, without one (that cost ~2 ms an image).
    """
    n = len(kp)
    image = kp["image_index"].to_numpy()
    group = kp.groupby([image, kp["instance_id"].to_numpy()], sort=False).ngroup().to_numpy()
    order = np.lexsort((np.arange(n), group, image))
    cols = {c: kp[c].to_numpy(dtype=object)[order].tolist()
            for c in ("label", "keypoint", "source")}  # fmt: skip
    for c in ("x", "y", "occluded", "outside", "point_index", "z_order", "group_id",
              "instance_id"):  # fmt: skip
        cols[c] = kp[c].to_numpy()[order].tolist()
    group, image = group[order], image[order]
    starts = np.flatnonzero(np.diff(group, prepend=-1))
    ends = np.append(starts[1:], n) if n else starts
    blocks: dict[int, list[tuple[int, int]]] = {}
    for s, e, i in zip(starts.tolist(), ends.tolist(), image[starts].tolist(), strict=True):
        blocks.setdefault(i, []).append((s, e))
    return cols, blocks


def _shape_lines(ann: Annotations, cols: dict, blocks: list[tuple[int, int]],
                 boxes: list, attrs: dict) -> list[str]:  # fmt: skip
    """The shapes of one image, sorted by z_order as CVAT writes them."""
    shapes: list[tuple[int, list[str]]] = []
    label_of, source_of, z_of, group_of = cols["label"], cols["source"], cols["z_order"], \
        cols["group_id"]  # fmt: skip
    xs, ys, occluded, outside = cols["x"], cols["y"], cols["occluded"], cols["outside"]
    for s, e in blocks:
        inst_id = cols["instance_id"][s]
        label = str(label_of[s])
        head = f"label={quoteattr(label)} source={quoteattr(_source(source_of[s]))}"
        z = _z(z_of[s])
        grp = _group_attr(group_of[s])
        if label in ann.skeletons:
            out = [f'    <skeleton {head} z_order="{z}"{grp}>']
            for r in range(s, e):
                x, y = xs[r], ys[r]
                if not (math.isfinite(x) and math.isfinite(y)):
                    continue  # an element missing from the file stays missing
                out.append(
                    f"      <points label={quoteattr(str(cols['keypoint'][r]))} "
                    f"source={quoteattr(_source(source_of[r]))} "
                    f'outside="{int(bool(outside[r]))}" occluded="{int(bool(occluded[r]))}" '
                    f'points="{_fmt(x)},{_fmt(y)}">'
                )
                out += _attr_lines(attrs, (inst_id, int(cols["point_index"][r])), "        ")
                out.append("      </points>")
            out += _attr_lines(attrs, (inst_id, -1), "      ")
            out.append("    </skeleton>")
        else:
            pts = ";".join(f"{_fmt(xs[r])},{_fmt(ys[r])}" for r in range(s, e))
            occl = int(any(occluded[s:e]))
            out = [f'    <points {head} occluded="{occl}" points="{pts}" z_order="{z}"{grp}>']
            out += _attr_lines(attrs, (inst_id, -1), "      ")
            out.append("    </points>")
        shapes.append((z, out))
    for b in boxes:
        z = _z(b.z_order)
        out = [
            f"    <box label={quoteattr(str(b.label))} source={quoteattr(_source(b.source))} "
            f'occluded="{int(bool(b.occluded))}" xtl="{_fmt(b.xtl)}" ytl="{_fmt(b.ytl)}" '
            f'xbr="{_fmt(b.xbr)}" ybr="{_fmt(b.ybr)}" z_order="{z}"{_group_attr(b.group_id)}>',
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
    cols, blocks = _keypoint_blocks(ann.keypoints)
    box_by_image: dict[int, list] = {}
    for b in ann.boxes.itertuples(index=False):  # one pass: itertuples costs ~1 ms a call
        box_by_image.setdefault(b.image_index, []).append(b)
    attrs = _attribute_index(ann)
    project = ann.images["subset"].notna().any() if len(ann.images) else False
    for img in ann.images.itertuples(index=False):
        extra = ""
        if project and isinstance(img.subset, str):
            extra = f' subset={quoteattr(img.subset)} task_id="{int(img.task_id)}"'
        if pd.isna(img.width) or pd.isna(img.height):
            raise ValueError(
                f"image {img.name!r} has no width/height; CVAT needs both: fill "
                "images.width and images.height (e.g. from the image files) before writing"
            )
        yield (
            f'  <image id="{int(img.image_id)}" name={quoteattr(str(img.name))}{extra} '
            f'width="{int(img.width)}" height="{int(img.height)}">'
        )
        boxes = box_by_image.get(img.image_index, [])
        yield from _shape_lines(ann, cols, blocks.get(img.image_index, []), boxes, attrs)
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
# Every byte goes through pyexpat with defusedxml's guards (not defusedxml.ElementTree's
# iterparse, which builds an Element per node and cannot say which line a bad value sits
# on). Two readers share that: expat callbacks (_Parser), which handle every layout and name
# the line of any bad value, and for the common "CVAT for images" body a fast reader
# (_FastBody, below) that lets expat only check well-formedness. read_cvat tries the fast
# one and parses again with the callbacks whenever it declines; both fill the same columns,
# which _build_tables turns into the tables.

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
            self.member, self.member_size = _find_xml_in_zip(self.path)

    @property
    def name(self) -> str:
        return f"{self.path}!{self.member}" if self.member else str(self.path)

    @property
    def size(self) -> int:
        """Bytes of XML (uncompressed, for a zip member)."""
        return self.path.stat().st_size if self.member is None else self.member_size

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


def _find_xml_in_zip(path: Path) -> tuple[str, int]:
    """The annotations member of an export zip, and its uncompressed size."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            sizes = {i.filename: i.file_size for i in zf.infolist()
                     if i.filename.lower().endswith(".xml")}  # fmt: skip
    except zipfile.BadZipFile as exc:
        raise CvatFormatError(f"{path}: not a readable zip ({exc}); download it again") from exc
    names = list(sizes)
    preferred = sorted((n for n in names if n.rsplit("/", 1)[-1] == "annotations.xml"), key=len)
    if preferred:
        return preferred[0], sizes[preferred[0]]
    if len(names) == 1:
        return names[0], sizes[names[0]]
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
_ELEM_DTYPES = {"instance": np.int64, "name": object, "x": np.float64, "y": np.float64,
                "source": object, "occluded": bool, "outside": bool, "keyframe": bool,
                "line": np.int64}  # fmt: skip
_PLAIN_DTYPES = {"instance": np.int64, "point_index": np.int64, "x": np.float64,
                 "y": np.float64}  # fmt: skip


def _concat_chunks(chunks: list[dict], dtypes: dict) -> dict[str, np.ndarray]:
    """Column arrays from per-chunk dicts (plain arrays: no DataFrame of Python strings)."""
    if not chunks:
        return {f: np.zeros(0, dt) for f, dt in dtypes.items()}
    return {f: np.concatenate([c[f] for c in chunks]) for f in dtypes}


class _Parser:
    """Expat callbacks that collect CVAT content into flat lists (one pass, no tree).

    The body handlers are the hot path (one call per element of a 400,000-image export),
    so they branch on plain flags instead of a tag stack, take no character data unless an
    ``<attribute>`` is open, and keep strings interned. ``<meta>`` gets its own handlers.
    """

    def __init__(self, name: str, fast: bool = False):
        import pyexpat

        self.name = name
        self.fast = fast  # hand a CVAT-for-images body to _FastBody
        self.body: _FastBody | None = None
        self.body_start: int | None = None  # byte offset of the first body element
        self.checked_elsewhere = False  # a _BackgroundCheck runs expat over the body
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
        p.XmlDeclHandler = self._declaration
        self.encoding: str | None = None
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
        self.image_chunks: list[dict] = []  # the fast reader's images, column by column
        self.n_images = 0
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
    def error(self, msg: str) -> Exception:
        if self.body_start is not None:  # the fast reader knows no lines: parse again in full
            return _NeedsFullParse(msg)
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

    def finish(self) -> tuple[dict, dict, dict]:
        """The instance, skeleton-element and plain-point columns (after the last chunk)."""
        self._flush_instances()
        self._flush_elements()
        self._flush_plain()
        out = (_concat_chunks(self.inst_chunks, _INST_DTYPES),
               _concat_chunks(self.elem_chunks, _ELEM_DTYPES),
               _concat_chunks(self.plain_chunks, _PLAIN_DTYPES))  # fmt: skip
        self.inst_chunks, self.elem_chunks, self.plain_chunks = [], [], []
        return out

    def _collect_text(self, on: bool) -> None:
        self.text = []
        self.p.CharacterDataHandler = self.text.append if on else None

    # -- body callbacks (the hot path) ---------------------------------------------------
    def start(self, tag: str, attrs: dict) -> None:
        if self.fast and self.root_seen and tag != "meta" and tag != "version":
            self._hand_over_body(tag)
        elif tag == "points":
            if self.skel >= 0:
                self._element(self.skel, attrs.get("label"), attrs)
            else:
                self._start_points(attrs)
        elif tag == "skeleton":
            self._start_skeleton(attrs)
        elif tag == "image":
            self.image = self._add_image(attrs, self.p.CurrentLineNumber)
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

    def _declaration(self, version, encoding, standalone) -> None:
        self.encoding = encoding

    def _hand_over_body(self, tag: str) -> None:
        """The body starts: from here expat only checks well-formedness (no handlers)."""
        if tag != "image":
            raise _NeedsFullParse(f"the body starts with <{tag}>, not <image>")
        if (self.encoding or "utf-8").lower().replace("_", "-") not in _UTF8_NAMES:
            raise _NeedsFullParse(f"the document is {self.encoding}; the fast reader reads UTF-8")
        self.body_start = self.p.CurrentByteIndex
        p = self.p
        p.StartElementHandler = p.EndElementHandler = p.CharacterDataHandler = None

    def _add_image(self, attrs: dict, line: int) -> int:
        idx = len(self.images)
        self.images.append({
            "image_index": idx, "image_id": self._int(attrs, "id", idx, "image"),
            "name": attrs.get("name", ""), "width": attrs.get("width"),
            "height": attrs.get("height"), "subset": attrs.get("subset"),
            "task_id": attrs.get("task_id"), "line": line,
        })  # fmt: skip
        return idx

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

    def _start_box(self, attrs: dict, line: int | None = None) -> None:
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
            "line": self.p.CurrentLineNumber if line is None else line,
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

    def _feed(self, stream) -> None:
        """Read `stream` once: every byte goes to expat, body bytes also to `_FastBody`."""
        p, offset, previous = self.p, 0, b""

        def expat_done_here() -> bool:  # the header is parsed; the check runs elsewhere
            return self.checked_elsewhere and self.body_start is not None

        while True:
            data = stream.read(_READ_SIZE)
            if offset == 0 and data[:2] in (b"\xff\xfe", b"\xfe\xff"):
                self.fast = False  # UTF-16: the fast reader reads UTF-8 only
            final = not data
            view = memoryview(data)
            for i in range(0, len(data), _EXPAT_SLICE):
                if expat_done_here():
                    break
                p.Parse(view[i : i + _EXPAT_SLICE], False)
            if final and not expat_done_here():
                p.Parse(b"", True)
            if self.body_start is not None:
                body = data
                if self.body is None:  # the body starts in this read (or the one before)
                    self.body = _FastBody(self)
                    rel = self.body_start - offset
                    body = data[rel:] if rel >= 0 else previous[rel:] + data
                self.body.feed(body, final)
            if final:
                return
            offset, previous = offset + len(data), data

    def parse(self, stream) -> None:
        import pyexpat

        try:
            self._feed(stream)
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


# ---------------------------------------------------------------------------------------
# The fast reader for CVAT for images bodies
# ---------------------------------------------------------------------------------------
#
# A Python callback per element costs about as much again as expat's whole scan (a call and
# an attribute dict each), which caps callback parsing near 3x a bare scan. So for the layout
# nearly every export has (<image>s holding shapes) expat only checks the body is well formed,
# with no handlers, while one regular expression pulls the tags out of the same bytes in C, a
# chunk of whole images at a time. Attribute strings repeat (label, source, flags), so each
# distinct one is parsed once; coordinates are parsed by numpy in one call per chunk.
# Anything unexpected (tracks, comments, CDATA, single-quoted coordinates, an unknown tag, a
# shape outside an <image>, a bad value, a document not in UTF-8) raises _NeedsFullParse,
# and read_cvat parses again with the callbacks above, which handle every layout and name
# the line of a bad value. No hand-written XML parsing replaces expat: the regular
# expressions only read what expat has already accepted (or, from 8 MB, what expat checks
# in a second process at the same time; see _BackgroundCheck).

_UTF8_NAMES = ("utf-8", "utf8", "us-ascii", "ascii")
_READ_SIZE = 1 << 22  # bytes per read; the regex and numpy work on a chunk of this size
_EXPAT_SLICE = 1 << 15  # expat is ~40% faster fed 32 KB at a time than megabytes at once
# One token per tag: a <points> (attributes before and after points="...", the coordinates,
# and its "</points>" when nothing sits inside), or any other tag's name and attributes.
# "<!" and "<?" (comment, CDATA, doctype, processing instruction) are for the full parser.
# Two spellings of the same tokens: skeleton elements end with points="...", which the
# first finds fastest (from the ">" back), plain shapes go on with z_order, which the
# second finds fastest (attribute by attribute, never backtracking).
_OTHER_TAG = rb"|(/?[A-Za-z_][\w:.-]*|[!?])([^>]*)>)"
_TOKEN_ELEMENTS = re.compile(
    rb'<(?:points\b([^>]*)\spoints="([^"]*)"([^>]*)>(?:\s*</points\s*>)?' + _OTHER_TAG
)
_TOKEN_SHAPES = re.compile(
    rb"""<(?:points((?:\s+(?!points=)[\w:.-]+=(?:"[^"]*"|'[^']*'))*+)\s+points="([^"]*)"([^>]*)>"""
    rb"(?:\s*</points\s*>)?" + _OTHER_TAG
)
# The same tokens for <points> written exactly as CVAT writes them (label, source, [outside],
# occluded, points, [z_order], [group_id]; then "</points>"): literal text matches about
# 30% faster. A file is read with it until a chunk holds a <points> it does not cover.
_TOKEN_CVAT = re.compile(
    rb'<(?:points( label="[^"]*" source="[^"]*"(?: outside="[01]")? occluded="[01]")'
    rb' points="([^"]*)"((?: z_order="-?\d+")?(?: group_id="\d+")?)>\s*</points>' + _OTHER_TAG
)
_ATTRIBUTE_ELEMENT = re.compile(rb"<attribute\b([^>]*)>([^<]*)</attribute\s*>")
_ATTRIBUTES = re.compile(rb"""(?:\s+[A-Za-z_][\w:.-]*\s*=\s*(?:"[^"]*"|'[^']*'))*\s*/?""")
_ATTRIBUTE_PAIR = re.compile(rb"""([A-Za-z_][\w:.-]*)\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_NOT_IN_NUMBERS = re.compile(rb"[^0-9.eE+\- ,;|]")
(_POINTS, _POINTS_END, _ATTRIBUTE, _IMAGE, _IMAGE_END, _SKELETON, _SKELETON_END, _BOX, _SKIPPED,
 _OTHER) = range(10)  # fmt: skip


class _Kinds(dict):
    def __missing__(self, key: bytes) -> int:
        return -1  # a tag the fast reader does not handle


_KIND = _Kinds({b"": _POINTS, b"attribute": _ATTRIBUTE, b"image": _IMAGE, b"/image": _IMAGE_END,
         b"skeleton": _SKELETON, b"/skeleton": _SKELETON_END, b"box": _BOX,
         b"/points": _POINTS_END, b"/attribute": _OTHER, b"/box": _OTHER, b"/annotations": _OTHER,
         **{t.encode(): _SKIPPED for t in _SHAPES_SKIPPED},
         **{b"/" + t.encode(): _OTHER for t in _SHAPES_SKIPPED}})  # fmt: skip


def _xml_value(raw: bytes, attribute: bool = True) -> str:
    """Text as expat reports it: line ends normalised, entities and references resolved.

    By the time this runs expat has accepted the document, so only XML's own entities
    and character references can occur, which is what html.unescape resolves.
    """
    value = raw.decode("utf-8")
    if "\r" in value:
        value = value.replace("\r\n", "\n").replace("\r", "\n")
    if attribute and ("\n" in value or "\t" in value):
        value = value.replace("\n", " ").replace("\t", " ")
    if "&" in value:
        import html

        value = html.unescape(value)
    return value


def _attributes(raw: bytes) -> dict[str, str]:
    """One tag's attribute string -> dict; anything but name="value" pairs is unusual."""
    if not _ATTRIBUTES.fullmatch(raw):
        raise _NeedsFullParse("attributes the fast reader does not parse")
    return {k.decode("ascii"): _xml_value(v or w) for k, v, w in _ATTRIBUTE_PAIR.findall(raw)}


_IMAGE_TAG = (
    rb' id="(-?\d+)" name="([^"]*)"(?: subset="([^"]*)" task_id="(\d+)")?'
    rb' width="(\d+)" height="(\d+)"\s*/?'
)  # the order CVAT and kpnb write
_IMAGE_TAGS = re.compile(rb"(?:%s\x00)*%s" % (_IMAGE_TAG, _IMAGE_TAG))
_IMAGE_TAG_RE = re.compile(_IMAGE_TAG)


def _image_columns(raws: list[bytes], first_index: int) -> dict[str, list]:
    """The <image> tags of a chunk -> columns: one regex pass for the usual attribute order,
    one dict per image otherwise."""
    joined = b"\x00".join(raws)
    if raws and _IMAGE_TAGS.fullmatch(joined):
        found = _IMAGE_TAG_RE.findall(joined)
        ids, names, subsets, tasks, widths, heights = zip(*found, strict=True)
        decode = _xml_value if re.search(rb"[&\r\n\t]", joined) else bytes.decode
        cols = {"image_id": np.array(ids).astype(np.int64), "name": list(map(decode, names)),
                "width": np.array(widths).astype(np.float64),
                "height": np.array(heights).astype(np.float64),
                "subset": [decode(v) if t else None for v, t in zip(subsets, tasks, strict=True)],
                "task_id": [int(t) if t else None for t in tasks]}  # fmt: skip
    else:
        records = [_attributes(r) for r in raws]
        cols = {c: [r.get(c) for r in records]
                for c in ("id", "name", "width", "height", "subset", "task_id")}  # fmt: skip
        try:
            cols["image_id"] = np.array(cols.pop("id"), dtype=np.int64)
        except (TypeError, ValueError):
            raise _NeedsFullParse("an image id the fast reader does not parse") from None
        cols["name"] = ["" if v is None else v for v in cols["name"]]
    return {"image_index": np.arange(first_index, first_index + len(raws)), **cols,
            "line": np.full(len(raws), -1)}  # fmt: skip


def _fields(toks: list[tuple], rows: np.ndarray | list, *fields: int) -> list[list[bytes]]:
    """Regex groups of some tokens, one list per group (map and itemgetter: no Python frame
    per token)."""
    picked = list(map(toks.__getitem__, np.asarray(rows).tolist()))
    return [list(map(itemgetter(f), picked)) for f in fields]


def _last(mask: np.ndarray) -> np.ndarray:
    """For each position, the index of the last True at or before it (-1 if none)."""
    return np.maximum.accumulate(np.where(mask, np.arange(len(mask)), -1))


def _coordinates(coords: list[bytes], one_each: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """``points`` strings -> flat ``[x0, y0, x1, y1, ...]`` and points per string.

    The counts are None when every string holds exactly one ``x,y``. The layout is checked
    on the joined bytes with numpy (every ``;``/``|``-separated piece has one comma), so a
    value like "1,2,3" next to "4" cannot shift the coordinates that follow it.
    """
    joined = b"|".join(coords)
    two_decimals = not _NOT_TWO_DECIMALS.search(joined)  # only digits, "-", "." and separators
    if not joined or (not two_decimals and _NOT_IN_NUMBERS.search(joined)):
        raise _NeedsFullParse("a points value the fast reader does not parse")
    buf = np.frombuffer(joined, np.uint8)
    bar, semi, comma = buf == ord("|"), buf == ord(";"), buf == ord(",")
    ends = np.flatnonzero(bar | semi)
    commas = np.cumsum(comma)
    per_piece = np.diff(commas[ends], prepend=0, append=commas[-1])
    if (per_piece != 1).any():
        raise _NeedsFullParse("a points value that is not 'x,y' pairs")
    counts = None
    if len(ends) != np.count_nonzero(bar):  # some shape holds several points
        if one_each:
            raise _NeedsFullParse("a skeleton element with several points")
        shape_of_piece = np.concatenate([[0], np.cumsum(bar[ends])])
        counts = np.bincount(shape_of_piece, minlength=len(coords)).astype(np.int64)
    numbers = 2 * (len(ends) + 1)
    flat = None
    if two_decimals:
        flat = _two_decimals(joined, buf, np.flatnonzero(bar | semi | comma), numbers)
    if flat is None:
        flat = _numbers(joined.translate(_TO_COMMAS), np.float64)
    if flat is None or len(flat) != numbers:
        raise _NeedsFullParse("coordinates did not parse")
    return flat, counts


def _numbers(text: bytes, dtype) -> np.ndarray | None:
    """Comma-separated numbers -> array; None where numpy stops early."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # numpy's "could not be read"
        try:
            return np.fromstring(text, dtype=dtype, sep=",")
        except (ValueError, DeprecationWarning):
            return None


def _two_decimals(joined: bytes, buf: np.ndarray, separators: np.ndarray,
                  numbers: int) -> np.ndarray | None:  # fmt: skip
    """Coordinates all written as CVAT writes them ("%.2f") -> floats, else None.

    Their digits are then an integer of hundredths, which numpy reads about five times
    faster than floats; dividing by 100 rounds exactly as float("123.45") does.
    """
    dots = np.flatnonzero(buf == ord("."))
    ends = np.append(separators, len(buf))
    if len(dots) != numbers or len(ends) != numbers or (dots != ends - 3).any():
        return None
    hundredths = _numbers(joined.replace(b".", b"").translate(_TO_COMMAS), np.int64)
    if hundredths is None or len(hundredths) != numbers:
        return None
    values = hundredths / 100
    negative = buf[np.append(0, separators + 1)] == ord("-")
    values[negative] = -np.abs(values[negative])  # "-0.00" is -0.0, as float() reads it
    return values


_NOT_TWO_DECIMALS = re.compile(rb"[^0-9.,|;-]")
_TO_COMMAS = bytes.maketrans(b"|;", b",,")


# label, source, group_id, z_order, occluded, outside, keyframe (see _FastBody._shape)
_SHAPE_DTYPES = (object, object, np.int64, np.int64, bool, bool, bool)


class _FastBody:
    """Collects the shapes of a CVAT for images body into `_Parser`'s chunk lists."""

    def __init__(self, ps: _Parser):
        self.ps = ps
        self.pending = b""
        self.shape_cache: dict[bytes, tuple] = {}
        self.as_cvat_writes = True  # try _TOKEN_CVAT first

    def feed(self, data: bytes, final: bool) -> None:
        """Take the next bytes; process every whole image seen so far."""
        buf = self.pending + data if self.pending else data
        cut = len(buf) if final else buf.rfind(b"<image")
        if cut <= 0:
            self.pending = buf
            return
        self.pending = buf[cut:]
        try:
            self._chunk(buf[:cut])
        except UnicodeDecodeError:
            raise _NeedsFullParse("text that is not UTF-8") from None

    def _shape(self, raw: bytes) -> tuple:
        """(label, source, group_id, z_order, occluded, outside, keyframe) of a shape tag."""
        got = self.shape_cache.get(raw)
        if got is None:
            a = _attributes(raw)
            try:
                got = (a.get("label"), a.get("source"), int(a.get("group_id") or 0),
                       int(a.get("z_order") or 0), a.get("occluded") in _TRUE,
                       a.get("outside") in _TRUE, a.get("keyframe") in _TRUE)  # fmt: skip
            except ValueError:
                raise _NeedsFullParse("a number the fast reader does not parse") from None
            if len(self.shape_cache) > 4096:  # group ids make some strings unique
                self.shape_cache.clear()
            self.shape_cache[raw] = got
        return got

    def _shape_columns(self, first: list[bytes], second: list[bytes] | None = None, *,
                       label: str | None = None, source: str | None = None) -> list:  # fmt: skip
        """`_shape` fields as typed columns for tags whose attribute strings are first + second.

        Each distinct string is parsed once; a points tag's coordinates sit between its two
        parts, so the parts are factorised separately and never concatenated. `label` and
        `source` replace missing values; with no `label` default, a missing one is unusual.
        """
        codes, uniques = pd.factorize(np.array(first, dtype=object))
        if second is not None:
            if second.count(second[0]) == len(second):  # what follows points= rarely varies
                uniques = [u + second[0] for u in uniques]
            else:
                codes2, uniques2 = pd.factorize(np.array(second, dtype=object))
                codes, pairs = pd.factorize(codes * len(uniques2) + codes2)
                uniques = [uniques[p // len(uniques2)] + uniques2[p % len(uniques2)]
                           for p in pairs]  # fmt: skip
        cols = [list(c) for c in zip(*map(self._shape, uniques), strict=True)]
        if label is None and None in cols[0]:
            raise _NeedsFullParse("a skeleton element without a label")
        cols[0] = [label if v is None else v for v in cols[0]]
        cols[1] = [source if v is None else v for v in cols[1]]
        return [np.array(c, dtype=dt)[codes] for c, dt in zip(cols, _SHAPE_DTYPES, strict=True)]

    def _tokens(self, buf: bytes) -> tuple[list[tuple], np.ndarray]:
        """The chunk's tokens and their kinds, with the fastest spelling that covers it."""
        if self.as_cvat_writes:
            toks = _TOKEN_CVAT.findall(buf)
            kind = np.fromiter(map(_KIND.__getitem__, map(itemgetter(3), toks)), np.int8)
            if not (kind < 0).any():
                return toks, kind
            self.as_cvat_writes = False  # another writer: the general spellings from here
        tokens = _TOKEN_ELEMENTS if b"<skeleton" in buf[: 1 << 16] else _TOKEN_SHAPES
        toks = tokens.findall(buf)
        return toks, np.fromiter(map(_KIND.__getitem__, map(itemgetter(3), toks)), np.int8)

    def _chunk(self, buf: bytes) -> None:
        ps = self.ps
        toks, kind = self._tokens(buf)
        n = len(toks)
        if not n:
            return
        if (kind < 0).any():
            raise _NeedsFullParse("a tag the fast reader does not handle")
        generic = np.flatnonzero(kind != _POINTS)
        closed = np.zeros(n, bool)  # self-closing tags close themselves
        closed[generic] = [t[4][-1:] == b"/" for t in map(toks.__getitem__, generic.tolist())]
        image_open = kind == _IMAGE
        in_image = _last(image_open) > _last((kind == _IMAGE_END) | (image_open & closed))
        shape = (kind == _POINTS) | (kind == _SKELETON) | (kind == _BOX) | (kind == _SKIPPED)
        if not in_image[shape].all():
            raise _NeedsFullParse("a shape outside an <image>")
        image_of = np.cumsum(image_open) - 1 + ps.n_images
        skel_open = kind == _SKELETON
        last_skel = _last(skel_open)
        in_skel = last_skel > _last((kind == _SKELETON_END) | (skel_open & closed))
        points = kind == _POINTS
        element, plain = points & in_skel, points & ~in_skel
        is_inst = skel_open | plain
        inst_of = np.cumsum(is_inst) - 1 + ps.n_inst

        image_tok = np.flatnonzero(image_open).tolist()
        (image_attrs,) = _fields(toks, image_tok, 4)
        ps.image_chunks.append(_image_columns(image_attrs, ps.n_images))
        ps.n_images += len(image_tok)
        for i in np.flatnonzero(kind == _BOX).tolist():
            ps.image = int(image_of[i])
            ps._start_box(_attributes(toks[i][4]), line=-1)
        for i in np.flatnonzero(kind == _SKIPPED).tolist():
            tag = toks[i][3].decode()
            ps.skipped[tag] = ps.skipped.get(tag, 0) + 1

        # instances: skeletons and plain points shapes, in file order
        skel_tok = np.flatnonzero(skel_open)
        plain_tok = np.flatnonzero(plain)
        pre, coords, post = _fields(toks, plain_tok, 0, 1, 2)
        m = len(skel_tok) + len(plain_tok)
        inst = {f: np.empty(m, dt) for f, dt in _INST_DTYPES.items()}
        for where, kind_name, cols in (
            (skel_tok, "skeleton", skel_tok.size and self._shape_columns(
                *_fields(toks, skel_tok, 4), label="", source="manual")),
            (plain_tok, "points", plain_tok.size and self._shape_columns(
                pre, post, label="", source="manual")),
        ):  # fmt: skip
            if not where.size:
                continue
            at = inst_of[where] - ps.n_inst
            label, source, group, z, occl, outs, _ = cols
            inst["image_index"][at] = image_of[where]
            inst["label"][at], inst["kind"][at], inst["source"][at] = label, kind_name, source
            inst["group_id"][at], inst["z_order"][at] = group, z
            inst["occluded"][at], inst["outside"][at] = occl, outs
        inst["track_id"][:], inst["keyframe"][:], inst["line"][:] = -1, False, -1
        ps.inst_chunks.append(inst)
        ps.n_inst += m

        if len(plain_tok):
            flat, counts = _coordinates(coords, False)
            if counts is None:
                counts = np.ones(len(plain_tok), np.int64)
            starts = np.repeat(np.cumsum(counts) - counts, counts)
            ps.plain_chunks.append({
                "instance": np.repeat(inst_of[plain_tok], counts), "x": flat[0::2],
                "y": flat[1::2], "point_index": np.arange(len(starts)) - starts,
            })  # fmt: skip

        elem_tok = np.flatnonzero(element)
        if len(elem_tok):
            pre, coords, post = _fields(toks, elem_tok, 0, 1, 2)
            flat, _ = _coordinates(coords, True)
            names, sources, _, _, occl, outs, keyframe = self._shape_columns(pre, post)
            ps.elem_chunks.append({
                "instance": inst_of[last_skel[elem_tok]], "name": names,
                "x": flat[0::2], "y": flat[1::2], "source": sources,
                "occluded": occl, "outside": outs, "keyframe": keyframe,
                "line": np.full(len(elem_tok), -1, np.int64),
            })  # fmt: skip

        if (kind == _ATTRIBUTE).any():
            self._attributes(buf, toks, kind, points, element, in_skel, inst_of, last_skel)

    def _attributes(self, buf, toks, kind, points, element, in_skel, inst_of, last_skel):
        """Shape attributes (rare, so a loop): an <attribute> belongs to the <points> whose
        ``</points>`` follows it, else to the skeleton it sits in, else to nothing kpnb keeps."""
        texts = _ATTRIBUTE_ELEMENT.findall(buf)
        where = np.flatnonzero(kind == _ATTRIBUTE).tolist()
        if len(texts) != len(where):
            raise _NeedsFullParse("an <attribute> the fast reader does not parse")
        last_points = _last(points)
        n = len(toks)
        for j, (raw, text) in zip(where, texts, strict=True):
            name = _attributes(raw).get("name", "")
            value = _xml_value(text, attribute=False)
            k = j + 1
            while k < n and toks[k][3] in (b"/attribute", b"attribute"):
                k += 1
            owner = None
            if k < n and toks[k][3] == b"/points" and last_points[j] >= 0:
                p = last_points[j]
                if element[p]:
                    elem_name = self._shape(toks[p][0] + toks[p][2])[0]
                    owner = (int(inst_of[last_skel[p]]), elem_name)
                else:
                    owner = (int(inst_of[p]), None)
            elif in_skel[j]:
                owner = (int(inst_of[last_skel[j]]), None)
            if owner is not None:
                self.ps.attrs.append((*owner, name, value))


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
                    f"{source}: line {_line_of(line)}: {what}={v!r} is not a number"
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
    inst, elem, plain = ps.finish()
    # Skeleton labels used in the file but declared nowhere: keypoints in order of appearance.
    if len(elem["instance"]):
        elem_labels = inst["label"][elem["instance"]]
        for label in pd.unique(elem_labels):
            if label not in skeletons:
                names = elem["name"][elem_labels == label]
                skeletons[label] = Skeleton(tuple(dict.fromkeys(names)))
    images = _images_table(ps, source_name)
    keypoints = tidy_keypoints(_keypoint_table(inst, elem, plain, skeletons, source_name))
    boxes = pd.DataFrame(ps.boxes)
    if len(boxes):
        lines = boxes["line"].tolist()  # -1 from the fast reader: see _line_of
        for c in ("xtl", "ytl", "xbr", "ybr"):
            boxes[c] = _num(boxes[c].tolist(), "float64", f"<box> {c}", lines, source_name)
        boxes = boxes.drop(columns="line")
    attributes = _attribute_table(ps, inst, skeletons)
    meta = {
        "source": source_name, "format": "video" if ps.frame_index else "images",
        "meta_kind": ps.meta_kind, "version": ps.version, "dumped": ps.dumped,
        "name": ps.meta_fields.get("name"), "skipped": dict(ps.skipped),
        "reader": "fast" if ps.body is not None else "full",
    }  # fmt: skip
    return Annotations(images=images, keypoints=keypoints, skeletons=skeletons,
                       labels=labels, boxes=tidy_boxes(boxes) if len(boxes) else tidy_boxes(
                           pd.DataFrame(columns=["image_index"])),
                       attributes=attributes, meta=meta)  # fmt: skip


def _images_table(ps: _Parser, source_name: str) -> pd.DataFrame:
    if ps.image_chunks:  # the fast reader's columns
        chunks = ps.image_chunks

        def column(c: str) -> np.ndarray:
            return np.concatenate([np.asarray(ch[c], dtype=object if isinstance(ch[c], list)
                                              else None) for ch in chunks])  # fmt: skip

        return _finish_images(pd.DataFrame({c: column(c) for c in chunks[0]}), source_name)
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
    return _finish_images(df, source_name)


def _finish_images(df: pd.DataFrame, source_name: str) -> pd.DataFrame:
    lines = df["line"].fillna(0).astype(int).tolist()
    for c in ("width", "height", "task_id"):
        if df[c].dtype.kind != "f":  # the fast reader has numbers already
            df[c] = _num(df[c].tolist(), "float64", f"<image> {c}", lines, source_name)
    df = df.drop(columns="line")
    df = df.astype({"width": "Int32", "height": "Int32", "task_id": "Int64"})
    return tidy_images(df)


def _line_of(line: int) -> int:
    """A row's source line for an error message; the fast reader keeps none (-1)."""
    if line < 0:
        raise _NeedsFullParse("a bad value needs its line")
    return int(line)


def _categorical(codes: np.ndarray, categories) -> pd.Categorical:
    """A categorical of the (sorted) categories that `codes` use, as ``pd.Categorical`` makes."""
    used = np.bincount(codes, minlength=len(categories)) > 0
    if not used.all():  # renumber the codes over the categories in use
        codes = (np.cumsum(used) - 1)[codes]
        categories = [c for c, u in zip(categories, used, strict=True) if u]
    return pd.Categorical.from_codes(codes, categories=pd.Index(categories))


def _keypoint_table(inst: dict, elem: dict, plain: dict, skeletons: dict[str, Skeleton],
                    source_name: str) -> pd.DataFrame:  # fmt: skip
    """One row per point, ordered by (instance, point index), built column by column.

    Each instance owns a block of rows: K for a skeleton instance (definition order, a
    missing element stays NaN with visibility 0), one per coordinate for a points shape.
    Points are scattered into their blocks, so no sort, concat or per-row Python is needed.
    """
    n_inst = len(inst["label"])
    label_codes, labels = pd.factorize(inst["label"], sort=True)
    is_skel = inst["kind"] == "skeleton"
    k_of_label = np.array([skeletons[lab].num_keypoints if lab in skeletons else 0
                           for lab in labels], dtype=np.int64)  # fmt: skip
    plain_inst = plain["instance"]
    count = np.where(is_skel, k_of_label[label_codes] if n_inst else 0,
                     np.bincount(plain_inst, minlength=n_inst))  # fmt: skip
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
    src_codes, sources = pd.factorize(inst["source"], sort=True)
    source_codes = src_codes[row_inst]

    rows = start[plain_inst] + plain["point_index"]
    x[rows], y[rows], filled[rows] = plain["x"], plain["y"], True
    occluded[rows] = inst["occluded"][plain_inst]
    outside[rows] = inst["outside"][plain_inst]

    ei = elem["instance"]
    if len(ei):
        name_codes, names = pd.factorize(elem["name"])
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
            raise CvatFormatError(
                f"{source_name}: line {_line_of(elem['line'][i])}: skeleton {label!r} has no "
                f"keypoint {names[name_codes[i]]!r} (its <svg> defines "
                f"{list(skeletons[label].keypoints) if label in skeletons else []}); fix the "
                "label definition in CVAT and export again"
            )
        rows = start[ei] + kp_pos
        if len(rows) > 1:
            order = np.argsort(rows, kind="stable")
            repeat = order[1:][rows[order][1:] == rows[order][:-1]]
            if len(repeat):
                i = int(repeat.min())
                raise CvatFormatError(
                    f"{source_name}: line {_line_of(elem['line'][i])}: skeleton element "
                    f"{names[name_codes[i]]!r} appears twice in one skeleton instance"
                )
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
    kp_names = sorted({n for lab in labels if lab in skeletons for n in skeletons[lab].keypoints}
                      | set(labels))  # fmt: skip
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

    return pd.DataFrame({
        "image_index": inst["image_index"][row_inst].astype(np.int32),
        "instance_id": row_inst, "label": _categorical(row_label, labels),
        "keypoint": _categorical(keypoint_codes, kp_names),
        "point_index": point_index.astype(np.int16),
        "x": x.astype(np.float32), "y": y.astype(np.float32),
        "visibility": visibility.astype(np.int8), "occluded": occluded, "outside": outside,
        "source": _categorical(source_codes, sources),
        "group_id": inst["group_id"][row_inst].astype(np.int32),
        "z_order": inst["z_order"][row_inst].astype(np.int32),
        "track_id": inst["track_id"][row_inst].astype(np.int32), "keyframe": keyframe,
    })  # fmt: skip


def _attribute_table(ps: _Parser, inst: dict, skeletons) -> pd.DataFrame:
    rows = []
    for inst_id, elem_name, name, value in ps.attrs:
        point = -1
        if elem_name is not None:
            sk = skeletons.get(inst["label"][inst_id])
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

    The file is streamed in 4 MB reads, never held whole. ``meta["reader"]`` says which
    reader produced the tables: ``"fast"`` (CVAT for images bodies) or ``"full"`` (expat
    callbacks: video tracks and anything unusual); both give identical tables. From
    8 MB, expat's well-formedness check runs in a second Python process alongside.

    Example:
        >>> ann = read_cvat("outputs/data/synthetic")  # doctest: +SKIP
        >>> ann.keypoints.head()  # doctest: +SKIP
    """
    src = _Source(source)
    check = _BackgroundCheck.start(src)
    try:
        return _read(src, fast=True, check=check)
    except _NeedsFullParse:
        if check is not None:
            check.cancel()
        return _read(src, fast=False)
    finally:
        if check is not None:
            check.cancel()


def _read(src: _Source, fast: bool, check: _BackgroundCheck | None = None) -> Annotations:
    parser = _Parser(src.name, fast=fast)
    parser.checked_elsewhere = check is not None
    with src.open() as stream:
        parser.parse(stream)
    if check is not None:
        problem = check.result()
        if problem is not None:
            line, column, what = problem
            raise CvatFormatError(
                f"{src.name}: line {line}, column {column}: malformed XML ({what}); the file "
                "may be truncated: export it again"
            )
    return _build_tables(parser, src.name)


# From this size on, expat's well-formedness check runs in a second process
# (kpnb/_wellformed.py) while this one extracts the shapes: on two cores it then costs no
# wall time. Smaller files are not worth the process start (about 20 ms).
_BACKGROUND_CHECK_MIN_BYTES = 8 << 20


class _BackgroundCheck:
    """expat's check of the whole file, running in another Python process."""

    def __init__(self, proc, src: _Source):
        self.proc, self.src = proc, src

    @classmethod
    def start(cls, src: _Source) -> _BackgroundCheck | None:
        """Start the check, or None for a small file or where no process can be started."""
        import subprocess
        import sys

        script = Path(__file__).with_name("_wellformed.py")
        if src.size < _BACKGROUND_CHECK_MIN_BYTES or not sys.executable or not script.is_file():
            return None
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(script), str(src.path), src.member or ""],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        except OSError:
            return None
        return cls(proc, src)

    def result(self) -> tuple[int, int, str] | None:
        """expat's (line, column, message) for the first problem; None if well formed."""
        out, _ = self.proc.communicate()
        text = out.decode("utf-8", "replace").strip()
        if self.proc.returncode == 0 and text == "ok":
            return None
        if self.proc.returncode == 0 and text.startswith("error "):
            _, line, column, what = text.split(" ", 3)
            return int(line), int(column), what
        # The helper could not run here (an unusual interpreter, killed): check in-process.
        from kpnb._wellformed import check

        with self.src.open() as stream:
            return check(stream)

    def cancel(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
