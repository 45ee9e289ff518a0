"""`Annotations` -> CVAT for images 1.1 XML that CVAT itself imports."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import pandas as pd

from kpnb.cvat.svg import skeleton_svg
from kpnb.io import atomic_path
from kpnb.tables import Annotations

# Written in <dumped> when the caller gives no time, so identical tables give identical bytes.
FIXED_DUMPED = "2024-01-01 00:00:00.000000+00:00"


def _fmt(v: float) -> str:
    return f"{float(v):.2f}"


def _text(tag: str, value, indent: str) -> str:
    return f"{indent}<{tag}>{escape(str(value))}</{tag}>"


def _declared_labels(ann: Annotations) -> pd.DataFrame:
    """`ann.labels`, plus every label the tables use but do not declare (an export without
    ``<meta>``): skeletons with their keypoints as sublabels, points and boxes as such."""
    labels = ann.labels
    known = set(labels["name"].astype(str)) if len(labels) else set()
    extra: list[dict] = []
    used = list(dict.fromkeys(ann.keypoints["label"].astype(str)))
    for name in used + [n for n in ann.skeletons if n not in used]:
        if name in known:
            continue
        known.add(name)
        if name in ann.skeletons:
            extra.append({"name": name, "type": "skeleton"})
            extra += [
                {"name": k, "type": "points", "parent": name} for k in ann.skeletons[name].keypoints
            ]
        else:
            extra.append({"name": name, "type": "points"})
    for name in dict.fromkeys(ann.boxes["label"].astype(str)) if len(ann.boxes) else ():
        if name not in known:
            known.add(name)
            extra.append({"name": name, "type": "rectangle"})
    if not extra:
        return labels
    return (
        pd.concat([labels, pd.DataFrame(extra)], ignore_index=True)
        if len(labels)
        else pd.DataFrame(extra)
    )


def _label_lines(ann: Annotations, indent: str) -> list[str]:
    labels = _declared_labels(ann)
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
    name = ann.meta.get("name")
    name = str(name) if isinstance(name, str) and name else "kpnb"  # never "None"
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
    cols = {
        c: kp[c].to_numpy(dtype=object)[order].tolist() for c in ("label", "keypoint", "source")
    }
    for c in ("x", "y", "occluded", "outside", "point_index", "z_order", "group_id", "instance_id"):
        cols[c] = kp[c].to_numpy()[order].tolist()
    group, image = group[order], image[order]
    starts = np.flatnonzero(np.diff(group, prepend=-1))
    ends = np.append(starts[1:], n) if n else starts
    blocks: dict[int, list[tuple[int, int]]] = {}
    for s, e, i in zip(starts.tolist(), ends.tolist(), image[starts].tolist(), strict=True):
        blocks.setdefault(i, []).append((s, e))
    return cols, blocks


def _shape_lines(
    ann: Annotations, cols: dict, blocks: list[tuple[int, int]], boxes: list, attrs: dict
) -> list[str]:
    """The shapes of one image, sorted by z_order as CVAT writes them."""
    shapes: list[tuple[int, list[str]]] = []
    label_of, source_of, z_of, group_of = (
        cols["label"],
        cols["source"],
        cols["z_order"],
        cols["group_id"],
    )
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
            task = "" if pd.isna(img.task_id) else f' task_id="{int(img.task_id)}"'
            extra = f" subset={quoteattr(img.subset)}{task}"
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
