"""Keypoints, boxes and names drawn on one picture, and the colours they use.

PIL rather than torchvision's ``draw_keypoints`` (no outlines, ignores the edge colour, needs
torch): every marker gets a dark outline and every edge a dark halo, so they show on any
picture. Colours come from distinctipy; text uses matplotlib's bundled DejaVu Sans.
"""

from __future__ import annotations

import functools
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from kpnb.errors import KpnbError
from kpnb.skeleton import Skeleton
from kpnb.tables import Annotations

RGB = tuple[int, int, int]
OUTLINE: RGB = (16, 16, 16)  # the dark edge around markers, edges and labels
OCCLUDED_MARKERS = ("square", "x")
FONT_PATH = Path(__import__("matplotlib").get_data_path()) / "fonts/ttf/DejaVuSans.ttf"


@functools.lru_cache(maxsize=1)
def _palette() -> tuple[RGB, ...]:
    import distinctipy

    # 48 colours, seeded: the same palette in every run and notebook
    colours = distinctipy.get_colors(48, exclude_colors=[(0, 0, 0), (1, 1, 1)], rng=0)
    return tuple(tuple(int(round(c * 255)) for c in rgb) for rgb in colours)


def keypoint_colors(names: Sequence[str]) -> dict[str, RGB]:
    """A distinct colour per name, stable across runs: the same name keeps its colour.

    A checksum of the name picks it from a fixed distinctipy palette; a colour taken by, or
    closer than RGB distance 100 to, an earlier name's moves it on to the next clear one."""
    palette, taken, out = _palette(), [], {}
    for name in dict.fromkeys(str(n) for n in names):
        start = zlib.crc32(name.encode("utf-8")) % len(palette)
        order = [(start + k) % len(palette) for k in range(len(palette))]
        free = [i for i in order if i not in taken] or order
        clear = [i for i in free if all(math.dist(palette[i], palette[t]) >= 100 for t in taken)]
        i = (clear or free)[0]
        taken.append(i)
        out[name] = palette[i]
    return out


def _as_pil(image) -> Image.Image:
    """An RGB PIL image from a PIL image, a ``[H, W, 3]`` uint8 array, or a ``[3, H, W]``
    tensor (uint8, or float in 0-1). torch is imported only when a tensor comes in."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] in (3, 4):
        return Image.fromarray(image[..., :3].astype(np.uint8))
    import torch

    t = torch.as_tensor(image).detach().cpu()
    if t.is_floating_point():
        t = (t.clamp(0, 1) * 255).round().to(torch.uint8)
    t = t[:3] if t.shape[0] >= 3 else t.expand(3, -1, -1)
    return Image.fromarray(t.permute(1, 2, 0).contiguous().numpy())


def _instances(keypoints, skeleton: Skeleton | None) -> tuple[np.ndarray, list[str]]:
    """``[N, K, 3]`` from an array or a slice of the keypoints table, plus keypoint names."""
    if isinstance(keypoints, pd.DataFrame):
        if skeleton:
            return _table_points(keypoints, skeleton.num_keypoints), list(skeleton.keypoints)
        names = keypoints.drop_duplicates("point_index").sort_values("point_index")["keypoint"]
        return _table_points(keypoints, len(names)), list(names.astype(str))
    arr = np.asarray(keypoints, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape[-1] == 2:
        arr = np.concatenate([arr, np.full(arr.shape[:-1] + (1,), 2, np.float32)], axis=-1)
    names = list(skeleton.keypoints) if skeleton else [str(i) for i in range(arr.shape[1])]
    return arr, names


def marker_radius(width: int, height: int) -> int:
    """The default keypoint marker radius for an image: 1/50 of its shorter side, >= 3 px."""
    return max(3, round(min(width, height) / 50))


def _halo_width(r: int) -> int:
    """The dark rim around a marker of radius `r` and on each side of an edge."""
    return max(1, round(r / 3))


def _disc(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill) -> None:
    draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)


def _occluded_marker(
    draw: ImageDraw.ImageDraw, x: float, y: float, r: int, colour: RGB, style: str
) -> None:
    """A hollow square (or an x) in the keypoint colour with a dark edge: an occluded point
    must not look like a filled disc, nor like a drawn eye."""
    t, o = max(2, round(r * 0.45)), _halo_width(r)
    if style == "square":
        s, e = r + o, r + 2 * o
        draw.rectangle([x - e, y - e, x + e, y + e], outline=OUTLINE, width=t + 2 * o)
        draw.rectangle([x - s, y - s, x + s, y + s], outline=colour, width=t)
        return
    for fill, wd in ((OUTLINE, t + 2 * o), (colour, t)):
        for dx in (-r, r):
            draw.line([(x - dx, y - r), (x + dx, y + r)], fill=fill, width=wd)


def draw_instances(
    image,
    keypoints,
    skeleton: Skeleton | None = None,
    *,
    boxes=None,
    show_names: bool = True,
    radius: int | None = None,
    edge_color: RGB = (255, 255, 255),
    colors: Mapping[str, RGB] | None = None,
    occluded_marker: str = "square",
    font_size: int | None = None,
) -> Image.Image:
    """A copy of `image` (PIL, or a ``[3, H, W]`` tensor) with keypoint instances drawn on it.

    Visible points (v=2) are outlined discs in their keypoint colour (`colors`, default
    `keypoint_colors`), occluded ones (v=1) hollow squares (or ``"x"``: crosses), absent
    ones (v=0) and their edges not drawn. `radius` and `font_size` grow with the image.

    Args:
        keypoints: ``[N, K, 3]`` (x, y, v) array, ``[N, K, 2]`` (all visible), or a slice
            of the keypoints table (one image, one label).
        boxes: optional ``[N, 4]`` xyxy boxes to draw.
    """
    if occluded_marker not in OCCLUDED_MARKERS:
        raise KpnbError(
            f"occluded_marker must be one of {OCCLUDED_MARKERS}, got {occluded_marker!r}"
        )
    out = _as_pil(image).copy()
    arr, names = _instances(keypoints, skeleton)
    r = radius or marker_radius(*out.size)
    colors = dict(colors or keypoint_colors(names))
    draw = ImageDraw.Draw(out)
    for x0, y0, x1, y1 in np.asarray(() if boxes is None else boxes, float).reshape(-1, 4):
        draw.rectangle((x0, y0, x1, y1), outline=(255, 255, 0), width=max(1, r // 2))
    xy, vis = np.nan_to_num(arr[..., :2]), arr[..., 2]
    width, halo = max(2, round(r * 0.6)), _halo_width(r)
    for inst, v in zip(xy, vis, strict=True):  # edges between labelled points, on a halo
        shown = [e for e in (skeleton.edges if skeleton else ()) if v[e[0]] > 0 and v[e[1]] > 0]
        for fill, wd in ((OUTLINE, width + 2 * halo), (edge_color, width)):
            for a, b in shown:
                draw.line([tuple(inst[a]), tuple(inst[b])], fill=fill, width=wd)
    for inst, v in zip(xy, vis, strict=True):  # then every point over every edge
        for (x, y), vj, name in zip(inst, v, names, strict=True):
            colour = colors.get(name, (255, 0, 0))
            if vj == 2:
                _disc(draw, x, y, r + halo, OUTLINE)
                _disc(draw, x, y, r, colour)
            elif vj == 1:
                _occluded_marker(draw, x, y, r, colour, occluded_marker)
    if show_names:
        out = _write_names(out, arr, names, colors, r, font_size)
    return out


def draw_target(image, target: Mapping, skeleton: Skeleton | None = None, **kwargs) -> Image.Image:
    """Draw a v2 sample's target (``boxes``, ``keypoints`` ``[N, K, 2]``, ``visibility``) or a
    model target (``keypoints`` ``[N, K, 3]``) on its image, boxes included."""
    kps = _numpy(target["keypoints"])
    if kps.shape[-1] == 2:
        kps = np.concatenate([kps, _numpy(target["visibility"])[..., None]], axis=-1)
    return draw_instances(image, kps, skeleton, boxes=_numpy(target["boxes"]), **kwargs)


def _numpy(x) -> np.ndarray:
    """A float32 array from a tensor (any device, tv_tensor subclass) or an array."""
    return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, np.float32)


def _write_names(
    img: Image.Image, arr: np.ndarray, names, colors, r: int, font_size: int | None = None
) -> Image.Image:
    """Each labelled point's name on a translucent dark label (text a lighter tint of the
    point's colour), placed beside the point on the first side where it overlaps no marker
    or earlier label and stays on the image."""
    size = font_size or max(11, round(min(img.size) / 24))
    font = ImageFont.truetype(str(FONT_PATH), size)
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    taken = _Boxes(cell=4 * size)  # a grid, so each name checks its neighbours, not all
    for x, y, v in arr.reshape(-1, 3):
        if v > 0:
            taken.add((x - r - 1, y - r - 1, x + r + 1, y + r + 1))
    pad, gap = max(1, size // 6), r + 2
    for inst in arr:
        for (x, y, v), name in zip(inst, names, strict=True):
            if v <= 0:
                continue
            left, top, right, bottom = draw.textbbox((0, 0), name, font=font)
            tw, th = right - left + 2 * pad, bottom - top + 2 * pad
            spots = [  # right, left, centred; above before below
                (sx, sy)
                for sx in (x + gap, x - gap - tw, x - tw / 2)
                for sy in (y - gap - th, y + gap)
            ]
            inside = [
                s
                for s in spots
                if 0 <= s[0] and s[0] + tw <= img.width and 0 <= s[1] and s[1] + th <= img.height
            ] or spots
            free = [s for s in inside if not taken.hits((*s, s[0] + tw, s[1] + th))]
            sx, sy = (free or inside)[0]
            box = (sx, sy, sx + tw, sy + th)
            taken.add(box)
            draw.rectangle(box, fill=(*OUTLINE, 170))
            ink = tuple(round(c + (255 - c) * 0.3) for c in colors.get(name, (255, 0, 0)))
            draw.text((sx + pad - left, sy + pad - top), name, font=font, fill=(*ink, 255))
    return Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB")


class _Boxes:
    """Boxes kept in grid cells of `cell` pixels: a new box is checked against the boxes in
    the cells it covers, so placing P names costs O(P), not O(P^2) (10k faces: 31 s before)."""

    def __init__(self, cell: int):
        self.cell, self.grid = cell, {}

    def _cells(self, box):
        c = self.cell
        for i in range(int(box[0] // c), int(box[2] // c) + 1):
            for j in range(int(box[1] // c), int(box[3] // c) + 1):
                yield i, j

    def add(self, box) -> None:
        for key in self._cells(box):
            self.grid.setdefault(key, []).append(box)

    def hits(self, box) -> bool:
        return any(_overlaps(box, b) for key in self._cells(box) for b in self.grid.get(key, ()))


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _table_points(rows: pd.DataFrame, k: int) -> np.ndarray:
    """``[N, k, 3]`` points of table rows, one per instance; a shorter shape is padded
    with absent points ``(nan, nan, 0)``."""
    rows = rows.sort_values(["instance_id", "point_index"])
    ids, slot = np.unique(rows["instance_id"].to_numpy(), return_inverse=True)
    arr = np.zeros((len(ids), k, 3), np.float32)
    arr[..., :2] = np.nan
    arr[slot, rows["point_index"].to_numpy(int)] = rows[["x", "y", "visibility"]].to_numpy(float)
    return arr


def _boxes(ann: Annotations, rows: pd.DataFrame, arr: np.ndarray) -> np.ndarray:
    """``[N, 4]`` box of each instance of `arr` (from `rows`): its grouped box, else the
    extent of its labelled points."""
    grouped = ann.grouped_boxes()
    boxes = np.zeros((len(arr), 4), np.float32)
    firsts = rows.sort_values("instance_id").drop_duplicates("instance_id")
    for i, r in enumerate(firsts.itertuples(index=False)):
        box = grouped.get((int(r.image_index), int(r.group_id)))
        on = arr[i, :, 2] > 0
        if box is not None:
            boxes[i] = box
        elif on.any():
            boxes[i] = [*arr[i, on, :2].min(0), *arr[i, on, :2].max(0)]
    return boxes


def show_sample(
    ann: Annotations,
    image_index: int,
    image_root: str | os.PathLike | None = None,
    label: str | None = None,
    *,
    boxes: bool = False,
    skip_missing: bool = False,
    rescale_images: bool = False,
    **kwargs,
) -> Image.Image:
    """Draw one image of an export with its instances (every label by default).

    A multi-coordinate ``<points>`` shape is one instance (points ``1..n``). `boxes` draws
    each instance's grouped box, else its points' extent. A missing file is a `KpnbError`,
    or with `skip_missing` a grey canvas of the declared size; an image of another size
    than declared is refused, or resized to it with `rescale_images`.
    """
    from kpnb.images import find_image, load_image

    row = ann.images.loc[ann.images["image_index"] == image_index]
    if row.empty:
        raise KpnbError(f"no image_index {image_index}; there are {len(ann.images)} images")
    row = row.iloc[0]
    if image_root is not None:
        root = Path(image_root)
    elif ann.meta.get("path"):  # read_cvat/read_coco record where the export is
        root = Path(str(ann.meta["path"]))
        root = root if root.is_dir() else root.parent
    else:
        raise KpnbError(
            "these annotations do not say where their export is; pass {image_root}",
            param="image_root",
        )
    path = find_image(root, str(row["name"]), row["subset"])
    if path is not None:
        size = (row["width"], row["height"])
        img = Image.fromarray(load_image(path, expect=size, rescale=rescale_images))
    elif skip_missing and pd.notna(row["width"]) and pd.notna(row["height"]):
        img = Image.new("RGB", (int(row["width"]), int(row["height"])), (96, 96, 96))
    else:
        raise KpnbError(
            f"{ann.describe_image(image_index)}: no such file under {root} (looked in "
            "images/ and beside it); pass the folder holding the images as {image_root}",
            param="image_root",
        )
    kp = ann.keypoints[ann.keypoints["image_index"] == image_index]
    kp = kp[kp["label"] == label] if label else kp
    for lab, rows in kp.groupby(kp["label"].astype(str), sort=False):
        skeleton = ann.skeleton_for(lab)
        arr = _table_points(rows, skeleton.num_keypoints)
        box = _boxes(ann, rows, arr) if boxes else None
        img = draw_instances(img, arr, skeleton, boxes=box, **kwargs)
    return img


def showcase_image(ann: Annotations, label: str) -> int:
    """The `image_index` every notebook shows first: its object of `label` is the clearest.

    Ranked, in order: alone in its image; the most visible, then labelled, points; the
    widest gap between its two closest points (names and markers apart); the largest
    extent; file order. A `KpnbError` when `label` has no labelled point.
    """
    kp = ann.keypoints[(ann.keypoints["label"] == label) & (ann.keypoints["visibility"] > 0)]
    if kp.empty:
        raise KpnbError(f"no labelled point of {label!r}: nothing to show")
    objects = kp.groupby("image_index")["instance_id"].nunique()
    keys = {}
    for (image, instance), rows in kp.groupby(["image_index", "instance_id"], sort=True):
        xy = rows[["x", "y"]].to_numpy(float)
        gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1)[np.triu_indices(len(xy), 1)]
        keys[image, instance] = (
            objects[image] == 1,
            int((rows["visibility"] == 2).sum()),
            len(rows),
            float(gaps.min()) if len(gaps) else 0.0,
            float(np.ptp(xy, axis=0).max()),
        )
    return int(max(keys, key=keys.get)[0])  # the first of the best, in file order
