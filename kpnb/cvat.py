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
from kpnb.tables import Annotations, Skeleton

__all__ = ["CvatFormatError", "write_cvat", "skeleton_svg"]

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
