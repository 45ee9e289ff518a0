"""`Annotations` -> CVAT for images 1.1 XML that CVAT itself imports, skeleton ``<svg>``s too."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from xml.sax.saxutils import escape as _escape
from xml.sax.saxutils import quoteattr as _quoteattr

import numpy as np
import pandas as pd

from kpnb.errors import KpnbError
from kpnb.io import atomic_path
from kpnb.tables import Annotations, Skeleton

# Written in <dumped> when the caller gives no time, so identical tables give identical bytes.
FIXED_DUMPED = "2024-01-01 00:00:00.000000+00:00"


# What XML 1.0 cannot hold, escaped or not (control characters but tab, newline and
# carriage return, surrogates, U+FFFE/U+FFFF): no XML reader, CVAT's included, would open it.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_safe(text: str) -> str:
    bad = _NOT_XML.search(text)
    if bad:
        raise KpnbError(
            f"{text!r} holds {bad.group()!r}, a character XML cannot hold, so it cannot be "
            "written to CVAT XML: rename it (a label, keypoint, image or attribute name)"
        )
    return text


def escape(value: str) -> str:
    return _escape(_xml_safe(value))


def quoteattr(value: str) -> str:
    return _quoteattr(_xml_safe(value))


def _fmt(v: float) -> str:
    return f"{float(v):.2f}"


def _text(tag: str, value, indent: str) -> str:
    return f"{indent}<{tag}>{escape(str(value))}</{tag}>"


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
            f'data-node-id="{i + 1}" data-label-name={_quoteattr(name)}></circle>'
        )
    return "".join(parts)


def _declared_labels(ann: Annotations) -> pd.DataFrame:
    """`ann.labels`, plus every label the tables use but do not declare (an export without
    ``<meta>``): skeletons with their keypoints as sublabels, points and boxes as such."""
    rows = ann.labels.to_dict("records")
    known = {str(row["name"]) for row in rows}
    points = list(ann.keypoints["label"].astype(str).unique())
    boxes = list(ann.boxes["label"].astype(str).unique())
    for name in dict.fromkeys(points + list(ann.skeletons) + boxes):
        if name in known:
            continue
        if name in ann.skeletons:
            rows.append({"name": name, "type": "skeleton"})
            rows += [
                {"name": k, "type": "points", "parent": name} for k in ann.skeletons[name].keypoints
            ]
        else:
            rows.append({"name": name, "type": "points" if name in points else "rectangle"})
    return pd.DataFrame(rows, columns=["name", "type", "color", "parent", "svg"])


def _given(value) -> str | None:
    """A label field when the table gives one (a non-empty string), else None."""
    return value if isinstance(value, str) and value else None


def _label_lines(ann: Annotations, indent: str) -> list[str]:
    lines = [f"{indent}<labels>"]
    i2, i3 = indent + "  ", indent + "    "
    for row in _declared_labels(ann).itertuples(index=False):
        name = str(row.name)
        lines += [f"{i2}<label>", _text("name", name, i3)]
        if _given(row.color):
            lines.append(_text("color", row.color, i3))
        lines.append(_text("type", _given(row.type) or "any", i3))
        lines += [f"{i3}<attributes>", f"{i3}</attributes>"]
        if name in ann.skeletons:
            for keypoint in ann.skeletons[name].keypoints:
                _xml_safe(keypoint)  # named alone, before the svg that holds it
            lines.append(_text("svg", _given(row.svg) or skeleton_svg(ann.skeletons[name]), i3))
        if _given(row.parent):
            lines.append(_text("parent", row.parent, i3))
        lines.append(f"{i2}</label>")
    lines.append(f"{indent}</labels>")
    return lines


def _fields(indent: str, **fields) -> list[str]:
    return [_text(tag, value, indent) for tag, value in fields.items()]


def _meta_lines(ann: Annotations, dumped: str) -> list[str]:
    images = ann.images
    name = _given(ann.meta.get("name")) or "kpnb"  # never "None"
    subsets = [s for s in pd.unique(images["subset"].dropna().astype(str)) if s]
    lines = ["  <meta>"]
    if subsets:
        lines += ["    <project>", *_fields("      ", id=1, name=name), "      <tasks>"]
        tasks = images.dropna(subset=["task_id"]).drop_duplicates("task_id")
        for t in tasks.itertuples(index=False):
            n = int((images["task_id"] == t.task_id).sum())
            task = {"id": int(t.task_id), "name": f"{name}-{t.subset}", "size": n}
            task |= {"mode": "annotation", "subset": t.subset}
            lines += ["        <task>", *_fields(" " * 10, **task), "        </task>"]
        lines += ["      </tasks>", *_fields("      ", subsets="\n".join(subsets))]
        lines += [*_label_lines(ann, "      "), "    </project>"]
    else:
        last = max(len(images) - 1, 0)
        task = {"id": 1, "name": name, "size": len(images), "mode": "annotation"}
        lines += ["    <task>", *_fields("      ", **task, start_frame=0, stop_frame=last)]
        lines += [*_label_lines(ann, "      "), "    </task>"]
    return [*lines, _text("dumped", dumped, "    "), "  </meta>"]


def _attr_lines(attrs: dict, key, indent: str) -> list[str]:
    return [
        f"{indent}<attribute name={quoteattr(str(n))}>{escape(str(v))}</attribute>"
        for n, v in attrs.get(key, ())
    ]


def _group_attr(g) -> str:
    return f' group_id="{g}"' if g else ""


def _source(v) -> str:
    return str(v) if isinstance(v, str) and v else "manual"


def _keypoint_blocks(kp: pd.DataFrame) -> tuple[dict, dict[int, list[tuple[int, int]]]]:
    """`kp`'s columns as Python lists, and per image its instances' row ranges (in order of
    appearance): one sort, not a groupby per image (~2 ms an image, 40 s on 20k images)."""
    n = len(kp)
    image = kp["image_index"].to_numpy()
    group = kp.groupby([image, kp["instance_id"].to_numpy()], sort=False).ngroup().to_numpy()
    order = np.lexsort((np.arange(n), group, image))
    names = "label keypoint source x y occluded outside point_index z_order group_id instance_id"
    cols = {c: kp[c].to_numpy(dtype=object)[order].tolist() for c in names.split()}
    starts = np.flatnonzero(np.diff(group[order], prepend=-1)).tolist()
    blocks: dict[int, list[tuple[int, int]]] = {}
    for s, e in zip(starts, [*starts[1:], n], strict=False):  # no rows: no blocks
        blocks.setdefault(int(image[order[s]]), []).append((s, e))
    return cols, blocks


def _shape_lines(
    ann: Annotations, cols: dict, blocks: list[tuple[int, int]], boxes: list, attrs: dict
) -> list[str]:
    """The shapes of one image, sorted by z_order as CVAT writes them."""
    shapes: list[tuple[int, list[str]]] = []
    xs, ys, occluded, outside = cols["x"], cols["y"], cols["occluded"], cols["outside"]
    for s, e in blocks:
        inst_id = cols["instance_id"][s]
        label = str(cols["label"][s])
        head = f"label={quoteattr(label)} source={quoteattr(_source(cols['source'][s]))}"
        z = cols["z_order"][s]
        grp = _group_attr(cols["group_id"][s])
        if label in ann.skeletons:
            out = [f'    <skeleton {head} z_order="{z}"{grp}>']
            for r in range(s, e):
                x, y = xs[r], ys[r]
                if not (math.isfinite(x) and math.isfinite(y)):
                    continue  # an element missing from the file stays missing
                out.append(
                    f"      <points label={quoteattr(str(cols['keypoint'][r]))} "
                    f"source={quoteattr(_source(cols['source'][r]))} "
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
        box = (
            f"    <box label={quoteattr(str(b.label))} source={quoteattr(_source(b.source))} "
            f'occluded="{int(bool(b.occluded))}" xtl="{_fmt(b.xtl)}" ytl="{_fmt(b.ytl)}" '
            f'xbr="{_fmt(b.xbr)}" ybr="{_fmt(b.ybr)}" z_order="{b.z_order}"'
            f"{_group_attr(b.group_id)}>"
        )
        shapes.append((b.z_order, [box, "    </box>"]))
    shapes.sort(key=lambda s: s[0])  # stable: equal z keeps table order
    return [line for _, lines in shapes for line in lines]


def _size_from_file(name: str, images_root, subset) -> tuple[int, int]:
    """An image's size from its file, as CVAT XML needs it (a COCO file's width 0: unknown)."""
    from kpnb.images import find_image, image_size

    path = None if images_root is None else find_image(images_root, name, subset)
    if path is None:
        where = "" if images_root is None else f" and is not in {images_root}"
        raise KpnbError(
            f"image {name!r} has no width/height{where}, which CVAT XML needs: give "
            "{images_root} (the folder holding the images) so kpnb reads the sizes from the "
            "files, or write the sizes into the source file",
            param="images_root",
        )
    return image_size(path)


def iter_cvat_lines(
    ann: Annotations, *, dumped: str = FIXED_DUMPED, images_root=None
) -> Iterable[str]:
    """The lines of a CVAT for images 1.1 document for `ann` (see `write_cvat`)."""
    yield '<?xml version="1.0" encoding="utf-8"?>'
    yield "<annotations>"
    yield "  <version>1.1</version>"
    yield from _meta_lines(ann, dumped)
    cols, blocks = _keypoint_blocks(ann.keypoints)
    box_by_image: dict[int, list] = {}
    for b in ann.boxes.itertuples(index=False):  # one pass: itertuples costs ~1 ms a call
        box_by_image.setdefault(b.image_index, []).append(b)
    attrs: dict = {}  # (instance, point index or -1) -> [(name, value)]
    for r in ann.attributes.itertuples(index=False):
        attrs.setdefault((r.instance_id, int(r.point_index)), []).append((r.name, r.value))
    project = ann.images["subset"].notna().any()
    for img in ann.images.itertuples(index=False):
        extra = ""
        if project and isinstance(img.subset, str):
            task = "" if pd.isna(img.task_id) else f' task_id="{int(img.task_id)}"'
            extra = f" subset={quoteattr(img.subset)}{task}"  # a COCO file's subset has none
        width, height = img.width, img.height
        if pd.isna(width) or pd.isna(height):
            width, height = _size_from_file(str(img.name), images_root, img.subset)
        yield (
            f'  <image id="{int(img.image_id)}" name={quoteattr(str(img.name))}{extra} '
            f'width="{int(width)}" height="{int(height)}">'
        )
        boxes = box_by_image.get(img.image_index, [])
        yield from _shape_lines(ann, cols, blocks.get(img.image_index, []), boxes, attrs)
        yield "  </image>"
    yield "</annotations>"


def write_cvat(
    annotations: Annotations,
    path: str | os.PathLike,
    *,
    dumped: str = FIXED_DUMPED,
    images_root: str | os.PathLike | None = None,
) -> Path:
    """Write `annotations` as CVAT for images 1.1 XML at `path`, atomically; returns `path`.

    Images with a ``subset`` make a project export, else a task export. Skeletons become
    ``<skeleton>`` with a ``<points>`` per keypoint the file had, other labels ``<points>``
    shapes, with two decimals as in CVAT. An image without a size (a COCO file's width 0)
    takes its file's from `images_root`, else a `KpnbError`, as for a name holding a
    character XML cannot hold (a control character).
    """
    path = Path(path)
    lines = iter_cvat_lines(annotations, dumped=dumped, images_root=images_root)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(line + "\n" for line in lines)
    return path
