"""Pictures of annotations, augmentations, distributions, predictions and training.

Every function returns a PIL image or a matplotlib ``Figure`` and keeps no global state
(no ``plt.show()``, no pyplot figure manager), so notebooks display the result and tests
can check it. Boxes, points and edges are drawn with PIL (torchvision's ``draw_keypoints`` has
no outlines and ignores the edge colour; PIL also keeps ``kpnb show`` free of torch), so
every marker gets a dark outline and every edge a dark halo and they stand out on any
picture. Colours come from distinctipy; text uses matplotlib's bundled DejaVu Sans (works
offline). Picture grids save as palette PNGs, a fraction of the size of full-colour ones.
"""

from __future__ import annotations

import functools
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image, ImageDraw, ImageFont

from kpnb.errors import KpnbError
from kpnb.tables import Annotations, Skeleton

if TYPE_CHECKING:
    from kpnb.evaluate import ImageResult

__all__ = [
    "keypoint_colors",
    "color_swatch",
    "draw_instances",
    "draw_target",
    "show_sample",
    "image_grid",
    "sample_grid",
    "before_after",
    "plot_label_counts",
    "plot_keypoint_visibility",
    "plot_instances_per_image",
    "plot_image_sizes",
    "plot_keypoint_heatmap",
    "draw_predictions",
    "compare_predictions",
    "plot_history",
]

RGB = tuple[int, int, int]
_PALETTE_SIZE = 48
OUTLINE: RGB = (16, 16, 16)  # the dark edge around markers, edges and labels
OCCLUDED_MARKERS = ("square", "x")
FONT_PATH = Path(__import__("matplotlib").get_data_path()) / "fonts/ttf/DejaVuSans.ttf"


@functools.lru_cache(maxsize=1)
def _palette() -> tuple[RGB, ...]:
    import distinctipy

    colours = distinctipy.get_colors(
        _PALETTE_SIZE, exclude_colors=[(0, 0, 0), (1, 1, 1)], rng=0
    )  # seeded: the same palette in every run and notebook
    return tuple(tuple(int(round(c * 255)) for c in rgb) for rgb in colours)


def keypoint_colors(names: Sequence[str]) -> dict[str, RGB]:
    """A distinct colour per name, stable across runs: the same name keeps its colour.

    A name's colour is picked by a checksum of the name from a fixed distinctipy palette;
    when that colour is taken by, or too close to (RGB distance < 100), an earlier name of
    the same set, the name moves on to the next palette colour that is clear of them all.
    """
    palette, taken, out = _palette(), [], {}
    for name in dict.fromkeys(str(n) for n in names):
        start = zlib.crc32(name.encode("utf-8")) % len(palette)
        order = [(start + k) % len(palette) for k in range(len(palette))]
        free = [i for i in order if i not in taken] or order
        clear = [i for i in free if all(_distance(palette[i], palette[t]) >= 100 for t in taken)]
        i = (clear or free)[0]
        taken.append(i)
        out[name] = palette[i]
    return out


def _distance(a: RGB, b: RGB) -> float:
    return float(np.sqrt(sum((int(x) - int(y)) ** 2 for x, y in zip(a, b, strict=True))))


def _figure(width: float = 6.4, height: float = 4.8) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def color_swatch(names: Sequence[str], title: str = "Keypoint colours") -> Figure:
    """A legend of `keypoint_colors(names)`: each name with its marker as `draw_instances`
    draws it, visible (a filled disc) and occluded (a hollow square)."""
    colours = keypoint_colors(names)
    fig = _figure(4.8, 0.42 * len(colours) + 1.0)
    ax = fig.add_subplot()
    for i, (name, rgb) in enumerate(colours.items()):
        c = np.array(rgb) / 255
        ax.scatter([0], [i], s=170, color=c, edgecolors=np.array(OUTLINE) / 255, linewidths=2)
        ax.scatter(
            [1],
            [i],
            s=150,
            marker="s",
            facecolors="none",
            edgecolors=np.array(OUTLINE) / 255,
            linewidths=4.5,
        )
        ax.scatter([1], [i], s=150, marker="s", facecolors="none", edgecolors=c, linewidths=2.5)
        ax.text(1.6, i, name, va="center", fontsize=11)
    for x, head in ((0, "visible"), (1, "occluded")):
        ax.text(x, -0.9, head, ha="center", va="bottom", fontsize=9, color="0.3")
    ax.set_xlim(-0.6, 5.0)
    ax.set_ylim(len(colours) - 0.5, -1.2)
    ax.set_axis_off()
    ax.set_title(title)
    return fig


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_PATH), size)


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
        rows = keypoints.sort_values(["instance_id", "point_index"])
        k = skeleton.num_keypoints if skeleton else int(rows.groupby("instance_id").size().max())
        n = rows["instance_id"].nunique()
        arr = rows[["x", "y", "visibility"]].to_numpy(np.float32).reshape(n, k, 3)
        names = list(skeleton.keypoints) if skeleton else list(rows["keypoint"].astype(str)[:k])
        return arr, names
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


def _disc(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill) -> None:
    draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)


def _occluded_marker(
    draw: ImageDraw.ImageDraw, x: float, y: float, r: int, colour: RGB, outline: RGB, style: str
) -> None:
    """A hollow square (or an x) in the keypoint colour with a dark edge: an occluded point
    must not look like a filled disc, nor like a drawn eye."""
    t, o = max(2, round(r * 0.45)), max(1, round(r / 3))
    if style == "square":
        s, e = r + o, r + 2 * o
        draw.rectangle([x - e, y - e, x + e, y + e], outline=outline, width=t + 2 * o)
        draw.rectangle([x - s, y - s, x + s, y + s], outline=colour, width=t)
        return
    for fill, wd in ((outline, t + 2 * o), (colour, t)):
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
    outline_color: RGB = OUTLINE,
    occluded_marker: str = "square",
    font_size: int | None = None,
) -> Image.Image:
    """Draw keypoint instances on an image.

    Args:
        image: PIL image or ``[3, H, W]`` tensor (uint8, or float in 0-1).
        keypoints: ``[N, K, 3]`` (x, y, v) array, ``[N, K, 2]`` (all visible), or a slice
            of the keypoints table (one image, one label).
        skeleton: names and edges; edges are drawn between labelled points only.
        boxes: optional ``[N, 4]`` xyxy boxes to draw.
        show_names: write each labelled keypoint's name beside it, on a dark label.
        radius: marker radius in pixels; default `marker_radius` (grows with the image).
        edge_color: colour of skeleton edges (drawn over a dark halo).
        colors: keypoint name -> RGB; default `keypoint_colors` of the names.
        outline_color: the dark outline of markers and halo of edges.
        occluded_marker: ``"square"`` (hollow) or ``"x"``.
        font_size: name text size in pixels; default grows with the image.

    Visible points (v=2) are discs in their keypoint colour with a dark outline; occluded
    ones (v=1) hollow squares (or crosses) in the same colour, so the picture under them
    stays visible; absent ones (v=0) and every edge touching them are not drawn.

    Returns:
        A new PIL image; the input is untouched.
    """
    if occluded_marker not in OCCLUDED_MARKERS:
        raise KpnbError(
            f"occluded_marker must be one of {OCCLUDED_MARKERS}, got {occluded_marker!r}"
        )
    out = _as_pil(image).copy()
    arr, names = _instances(keypoints, skeleton)
    w, h = out.size
    r = radius or marker_radius(w, h)
    colors = dict(colors or keypoint_colors(names))
    if boxes is not None and len(boxes):
        box_draw = ImageDraw.Draw(out)
        for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4).tolist():
            box_draw.rectangle((x0, y0, x1, y1), outline=(255, 255, 0), width=max(1, r // 2))
    if not len(arr):
        return out
    draw = ImageDraw.Draw(out)
    xy, vis = np.nan_to_num(arr[..., :2]), arr[..., 2]
    width, halo = max(2, round(r * 0.6)), max(1, round(r / 3))
    for inst, v in zip(xy, vis, strict=True):  # edges: a dark halo, then the edge colour
        edges = [e for e in (skeleton.edges if skeleton else ()) if v[e[0]] > 0 and v[e[1]] > 0]
        for fill, wd in ((outline_color, width + 2 * halo), (edge_color, width)):
            for a, b in edges:
                draw.line([tuple(inst[a]), tuple(inst[b])], fill=fill, width=wd)
    for inst, v in zip(xy, vis, strict=True):
        for (x, y), vj, name in zip(inst, v, names, strict=True):
            colour = colors.get(name, (255, 0, 0))
            if vj == 2:
                _disc(draw, x, y, r + halo, outline_color)
                _disc(draw, x, y, r, colour)
            elif vj == 1:
                _occluded_marker(draw, x, y, r, colour, outline_color, occluded_marker)
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
    """A float32 numpy copy of a tensor (any device, tv_tensor subclass) or an array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, np.float32)


def _write_names(
    img: Image.Image, arr: np.ndarray, names, colors, r: int, font_size: int | None = None
) -> Image.Image:
    """Each labelled point's name on a translucent dark label (text a lighter tint of the
    point's colour), placed beside the point on the first side where it overlaps no marker
    or earlier label and stays on the image."""
    size = font_size or max(11, round(min(img.size) / 24))
    font = _font(size)
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    pts = [(x, y) for inst in arr for x, y, v in inst if v > 0]
    taken = [(x - r - 1, y - r - 1, x + r + 1, y + r + 1) for x, y in pts]
    pad, gap = max(1, size // 6), r + 2
    for inst in arr:
        for (x, y, v), name in zip(inst, names, strict=True):
            if v <= 0:
                continue
            left, top, right, bottom = draw.textbbox((0, 0), name, font=font)
            tw, th = right - left + 2 * pad, bottom - top + 2 * pad
            spots = [
                (x + gap, y - gap - th),
                (x + gap, y + gap),
                (x - gap - tw, y - gap - th),
                (x - gap - tw, y + gap),
                (x - tw / 2, y - gap - th),
                (x - tw / 2, y + gap),
            ]
            inside = [
                s
                for s in spots
                if 0 <= s[0] and s[0] + tw <= img.width and 0 <= s[1] and s[1] + th <= img.height
            ] or spots
            free = [
                s
                for s in inside
                if not any(_overlaps((*s, s[0] + tw, s[1] + th), b) for b in taken)
            ]
            sx, sy = (free or inside)[0]
            box = (sx, sy, sx + tw, sy + th)
            taken.append(box)
            draw.rectangle(box, fill=(*OUTLINE, 170))
            ink = tuple(round(c + (255 - c) * 0.3) for c in colors.get(name, (255, 0, 0)))
            draw.text((sx + pad - left, sy + pad - top), name, font=font, fill=(*ink, 255))
    return Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB")


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _export_root(ann: Annotations) -> Path:
    source = ann.meta.get("source")
    if not source:
        raise KpnbError("these annotations do not say where their export is; pass image_root")
    path = Path(str(source).split("!")[0])
    return path if path.is_dir() else path.parent


def _label_arrays(ann: Annotations, rows: pd.DataFrame, k: int):
    """``[N, k, 3]`` points (shorter shapes padded with absent points) and ``[N, 4]``
    boxes (the grouped box, else the labelled points' extent) of one image's label."""
    rows = rows.sort_values(["instance_id", "point_index"])
    inst = rows["instance_id"].to_numpy()
    ids, slot = np.unique(inst, return_inverse=True)
    arr = np.zeros((len(ids), k, 3), np.float32)
    arr[..., :2] = np.nan
    arr[slot, rows["point_index"].to_numpy(int)] = rows[["x", "y", "visibility"]].to_numpy(
        np.float32
    )
    grouped = ann.grouped_boxes()
    first = rows.drop_duplicates("instance_id")
    boxes = np.zeros((len(ids), 4), np.float32)
    for i, r in enumerate(first.itertuples(index=False)):
        box = grouped.get((int(r.image_index), int(r.group_id))) if r.group_id else None
        on = arr[i, :, 2] > 0
        if box is not None:
            boxes[i] = box
        elif on.any():
            boxes[i] = [*arr[i, on, :2].min(0), *arr[i, on, :2].max(0)]
    return arr, boxes


def show_sample(
    ann: Annotations,
    image_index: int,
    image_root: str | os.PathLike | None = None,
    label: str | None = None,
    *,
    boxes: bool = False,
    skip_missing: bool = False,
    **kwargs,
) -> Image.Image:
    """Draw one image of an export with its instances (every label by default).

    A multi-coordinate ``<points>`` shape is one instance (points ``1..n``). `boxes` draws
    each instance's box (its grouped box, else its points' extent). With `skip_missing`
    a missing file is drawn as a grey canvas of the size the annotations declare.

    Raises:
        IndexError: no such image. FileNotFoundError: the file is missing (names the
            image id and file name).
    """
    from kpnb.images import find_image, load_image

    row = ann.images.loc[ann.images["image_index"] == image_index]
    if row.empty:
        raise KpnbError(f"no image_index {image_index}; there are {len(ann.images)} images")
    row = row.iloc[0]
    root = Path(image_root) if image_root is not None else _export_root(ann)
    path = find_image(root, str(row["name"]), row["subset"])
    if path is not None:
        img = Image.fromarray(load_image(path))
    elif skip_missing and pd.notna(row["width"]) and pd.notna(row["height"]):
        img = Image.new("RGB", (int(row["width"]), int(row["height"])), (96, 96, 96))
    else:
        raise FileNotFoundError(
            f"{ann.describe_image(image_index)}: no such file under {root} (looked in "
            f"images/ and beside it); pass the folder holding the images as image_root"
        )
    kp = ann.keypoints[ann.keypoints["image_index"] == image_index]
    labels = [label] if label else list(dict.fromkeys(kp["label"].astype(str)))
    for lab in labels:
        rows = kp[kp["label"] == lab]
        if len(rows):
            skeleton = ann.skeleton_for(lab)
            arr, box = _label_arrays(ann, rows, skeleton.num_keypoints)
            img = draw_instances(img, arr, skeleton, boxes=box if boxes else None, **kwargs)
    return img


class _PaletteCanvas(FigureCanvasAgg):
    """Agg canvas whose PNGs use a 256-colour palette.

    A grid of photographs in full-colour PNG is over a megabyte in a notebook; the palette
    version is a few times smaller and looks the same at notebook width. The palette keeps
    every keypoint colour, the outline and white exactly (an adaptive palette alone would
    merge two keypoint colours and the legend would lie); the rest adapts to the picture.
    Other formats (``.jpg``, ``.pdf``) are written as usual.
    """

    def print_png(self, filename_or_obj, *, metadata=None, pil_kwargs=None, **_ignored):
        FigureCanvasAgg.draw(self)
        rgb = Image.fromarray(np.asarray(self.buffer_rgba())[..., :3])
        reserved = list(dict.fromkeys([*_palette(), OUTLINE, (255, 255, 255), (255, 255, 0)]))
        adaptive = rgb.quantize(256 - len(reserved), method=Image.Quantize.FASTOCTREE)
        colours = adaptive.getpalette()[: 3 * (256 - len(reserved))]
        palette = Image.new("P", (1, 1))
        palette.putpalette(colours + [c for rgb_ in reserved for c in rgb_])
        small = rgb.quantize(palette=palette, dither=Image.Dither.NONE)
        # PIL maps through a coarse colour cache; put reserved colours back exactly
        keys = _rgb_keys(np.asarray(rgb))
        wanted = _rgb_keys(np.array(reserved, np.uint8))
        order = np.argsort(wanted)
        slot = np.clip(np.searchsorted(wanted[order], keys), 0, len(wanted) - 1)
        exact = wanted[order][slot] == keys
        index = np.asarray(small).copy()
        index[exact] = (256 - len(reserved) + order[slot])[exact]
        small = Image.fromarray(index, mode="P")
        small.putpalette(palette.getpalette())
        info = None
        if metadata:
            from PIL import PngImagePlugin

            info = PngImagePlugin.PngInfo()
            for key, value in metadata.items():
                info.add_text(key, str(value))
        small.save(
            filename_or_obj,
            format="png",
            optimize=True,
            pnginfo=info,
            dpi=(self.figure.dpi, self.figure.dpi),
        )


def _rgb_keys(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def image_grid(
    images: Sequence,
    titles: Sequence[str] | None = None,
    ncols: int = 3,
    cell: float = 3.2,
    title: str | None = None,
) -> Figure:
    """Images (PIL or tensors) in a grid of `ncols` columns, with optional titles.

    The figure saves and displays as a palette PNG (see `_PaletteCanvas`), so a grid of
    photographs stays small in a notebook."""
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig = _figure(cell * ncols, cell * nrows + (0.4 if title else 0))
    _PaletteCanvas(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            img = images[i]
            ax.imshow(_as_pil(img))
            if titles is not None:
                ax.set_title(str(titles[i]), fontsize=10)
    if title:
        fig.suptitle(title)
    return fig


def keypoint_legend(
    fig: Figure,
    colors: Mapping[str, RGB],
    occluded: bool = True,
    ncols: int | None = None,
    extra: Sequence[Line2D] = (),
) -> None:
    """Add a legend under `fig`: one disc per keypoint colour, the occluded style, and any
    `extra` handles (other marker or line styles the figure uses)."""
    dark = np.array(OUTLINE) / 255
    handles = [
        Line2D(
            [],
            [],
            ls="",
            marker="o",
            markersize=10,
            markerfacecolor=np.array(c) / 255,
            markeredgecolor=dark,
            markeredgewidth=1.5,
            label=name,
        )
        for name, c in colors.items()
    ]
    if occluded:
        handles.append(
            Line2D(
                [],
                [],
                ls="",
                marker="s",
                markersize=10,
                markerfacecolor="none",
                markeredgecolor="0.35",
                markeredgewidth=2,
                label="occluded (any colour)",
            )
        )
    handles += list(extra)
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=ncols or min(len(handles), 6),
        frameon=False,
        fontsize=10,
        title="keypoints",
        title_fontsize=10,
    )


def sample_grid(
    ann: Annotations,
    indices: Sequence[int] | None = None,
    image_root=None,
    ncols: int = 3,
    **kwargs,
) -> Figure:
    """A grid (default 3x3, the first nine images) of `show_sample` pictures, with a
    colour legend; names are sized to stay readable at the grid's scale.

    `kwargs` go to `show_sample` / `draw_instances` (e.g. ``show_names=False``).
    """
    if indices is None:
        indices = ann.images["image_index"].tolist()[: ncols * 3]
    indices = [int(i) for i in indices]
    kp = ann.keypoints[ann.keypoints["image_index"].isin(indices)]
    labels = (
        [kwargs["label"]] if kwargs.get("label") else list(dict.fromkeys(kp["label"].astype(str)))
    )
    names = [n for lab in labels for n in ann.skeleton_for(lab).keypoints]
    colors = dict(kwargs.pop("colors", None) or keypoint_colors(names))
    meta = ann.images.set_index("image_index").loc[indices]
    images = []
    for i, (w, h) in zip(indices, meta[["width", "height"]].to_numpy(int), strict=True):
        # a cell is about 300 px wide: scale text so it shows at about 10 px
        size = kwargs.get("font_size") or max(11, round(10 * max(w, h) / 300))
        extra = {k: v for k, v in kwargs.items() if k != "font_size"}
        images.append(show_sample(ann, i, image_root, colors=colors, font_size=size, **extra))
    fig = image_grid(images, meta["name"].astype(str).tolist(), ncols, title="Annotated samples")
    if colors:
        keypoint_legend(fig, colors)
    return fig


def before_after(
    pairs: Sequence[tuple], names: Sequence[str] = ("before", "after"), title: str | None = None
) -> Figure:
    """Rows of (before, after) pictures, e.g. a sample and its augmented version."""
    images = [img for pair in pairs for img in pair]
    titles = [names[i % 2] for i in range(len(images))]
    return image_grid(images, titles, ncols=2, title=title)


# -- distributions -------------------------------------------------------------------------
def _bar_figure(title: str, xlabel: str, ylabel: str, width: float = 6.4):
    fig = _figure(width, 4.0)
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig, ax


def plot_label_counts(ann: Annotations) -> Figure:
    """Instances per label."""
    counts = ann.label_counts()
    fig, ax = _bar_figure("Instances per label", "label", "instances")
    colours = keypoint_colors(counts.index)
    ax.bar(
        counts.index.astype(str),
        counts.values,
        color=[np.array(colours[n]) / 255 for n in counts.index],
    )
    ax.tick_params(axis="x", rotation=45)
    return fig


def plot_keypoint_visibility(ann: Annotations) -> Figure:
    """Points per keypoint name, stacked by visibility (visible, occluded, absent)."""
    table = ann.keypoint_counts()
    labels = [
        f"{lab}/{kp}" if table.index.get_level_values(0).nunique() > 1 else kp
        for lab, kp in table.index
    ]
    fig, ax = _bar_figure("Keypoints by visibility", "keypoint", "points", 7.2)
    bottom = np.zeros(len(table))
    for col, colour in (("visible", "#2e7d32"), ("occluded", "#f9a825"), ("absent", "#9e9e9e")):
        ax.bar(labels, table[col].to_numpy(), bottom=bottom, label=col, color=colour)
        bottom += table[col].to_numpy()
    ax.legend()
    ax.tick_params(axis="x", rotation=45)
    return fig


def plot_instances_per_image(ann: Annotations) -> Figure:
    """How many images hold 0, 1, 2... instances."""
    counts = ann.instances_per_image().value_counts().sort_index()
    fig, ax = _bar_figure("Instances per image", "instances in the image", "images")
    ax.bar(counts.index.astype(int), counts.values, color="#1565c0")
    ax.set_xticks(counts.index.astype(int))
    return fig


def plot_image_sizes(ann: Annotations) -> Figure:
    """Image widths against heights, sized by how many images share them."""
    sizes = ann.images.groupby(["width", "height"]).size().reset_index(name="n")
    fig, ax = _bar_figure("Image sizes", "width (px)", "height (px)")
    ax.scatter(
        sizes["width"].astype(float),
        sizes["height"].astype(float),
        s=20 + 200 * sizes["n"] / sizes["n"].max(),
        alpha=0.7,
    )
    for r in sizes.itertuples(index=False):
        ax.annotate(
            str(r.n),
            (float(r.width), float(r.height)),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set_aspect("equal", adjustable="datalim")
    return fig


def plot_keypoint_heatmap(
    ann: Annotations, label: str, normalize: str = "box", bins: int = 24
) -> Figure:
    """Where each keypoint of `label` falls: one 2-D histogram per keypoint.

    `normalize` ``"box"`` centres each instance's keypoint extent and scales its longer
    side to 1 (so the shape keeps its aspect), ``"image"`` divides by the image size.
    Only labelled points (v > 0) count.
    """
    if normalize not in ("box", "image"):
        raise KpnbError(f"normalize must be 'box' or 'image', got {normalize!r}")
    kp = ann.keypoints[(ann.keypoints["label"] == label) & (ann.keypoints["visibility"] > 0)]
    kp = kp.assign(x=kp["x"].astype(float), y=kp["y"].astype(float))
    if normalize == "box":
        g = kp.groupby("instance_id")
        x0, x1 = g["x"].transform("min"), g["x"].transform("max")
        y0, y1 = g["y"].transform("min"), g["y"].transform("max")
        side = np.maximum(x1 - x0, y1 - y0).where(lambda s: s > 0, 1)
        u = (kp["x"] - (x0 + x1) / 2) / side + 0.5
        v = (kp["y"] - (y0 + y1) / 2) / side + 0.5
    else:
        sizes = ann.images.set_index("image_index").loc[kp["image_index"]]
        u = kp["x"].to_numpy() / sizes["width"].to_numpy(float)
        v = kp["y"].to_numpy() / sizes["height"].to_numpy(float)
    names = list(ann.skeleton_for(label).keypoints)
    ncols = min(5, len(names))
    nrows = -(-len(names) // ncols)
    fig = _figure(2.6 * ncols, 2.6 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    u, v = np.asarray(u, float), np.asarray(v, float)
    masks = [(kp["keypoint"] == name).to_numpy() for name in names]
    # one colour scale for every panel, so the shared colour bar reads on all of them
    peak = max(
        [
            np.histogram2d(u[m], v[m], bins=bins, range=[[0, 1], [0, 1]])[0].max()
            for m in masks
            if m.any()
        ]
        or [1.0]
    )
    norm = PowerNorm(0.5, vmin=0, vmax=max(peak, 1.0))
    image = None
    for ax, name, m in zip(axes.flat, names, masks, strict=False):
        *_, image = ax.hist2d(
            u[m], v[m], bins=bins, range=[[0, 1], [0, 1]], cmap="magma", norm=norm
        )
        ax.set_ylim(1, 0)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(f"x / {normalize} width", fontsize=8)
        ax.set_ylabel(f"y / {normalize} height", fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_axis_off()
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.85, label="points per bin")
    fig.suptitle(f"Where the keypoints of {label!r} fall (normalised by {normalize})")
    return fig


# -- predictions and training --------------------------------------------------------------
ERROR_LINE: RGB = (255, 255, 255)  # error lines: white dashes on a dark halo, no keypoint's colour


def _dashed(draw: ImageDraw.ImageDraw, a, b, fill: RGB, width: int, dash: float) -> None:
    """A dashed line from `a` to `b` (PIL draws solid lines only)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    length = float(np.hypot(*(b - a)))
    if not np.isfinite(length) or length == 0:
        return
    step = (b - a) / length
    for s in np.arange(0.0, length, 2 * dash):
        draw.line(
            [tuple(a + step * s), tuple(a + step * min(s + dash, length))], fill=fill, width=width
        )


def _matched(result: ImageResult, k: int, iou_threshold: float):
    """Ground truth ``[N, K, 3]``, each instance's matched prediction ``[N, K, 3]`` (NaN
    where none matched) and how many predictions matched nothing (`match_instances`)."""
    from kpnb.evaluate import match_instances

    gt = np.asarray(result.gt_keypoints, np.float32).reshape(-1, k, 3)
    pred = np.asarray(result.keypoints, np.float32).reshape(-1, k, 3)
    match = match_instances(result, iou_threshold)
    paired = np.full_like(gt, np.nan)
    for g, p in enumerate(match):
        if p >= 0:
            paired[g] = pred[p]
    return gt, paired, len(pred) - sum(p >= 0 for p in match)


def draw_predictions(
    image, result: ImageResult, skeleton: Skeleton, *, iou_threshold: float = 0.5
) -> Image.Image:
    """The errors picture: each ground-truth instance next to the prediction the metrics
    matched it with (`kpnb.evaluate.match_instances`, box IoU >= `iou_threshold`).

    Labelled ground-truth points are discs (occluded ones hollow squares) and the matched
    prediction's points crosses, both in the keypoint's colour; a white dashed line on a
    dark halo joins each labelled point to its prediction. Predictions that match no
    ground truth (duplicates, false detections) are not drawn, and no skeleton edges are,
    so error lines cannot be mistaken for them.

    Args:
        image: PIL image or ``[3, H, W]`` tensor, in the frame of `result`.
        result: one image's ground truth and predictions (`collect_predictions`).
    """
    k = skeleton.num_keypoints
    gt, paired, _ = _matched(result, k, iou_threshold)
    points = Skeleton(skeleton.keypoints)  # the names without edges
    canvas = _as_pil(image)
    r = max(2, round(0.7 * marker_radius(*canvas.size)))  # smaller: the lines must show
    draw = ImageDraw.Draw(canvas)
    width, halo = max(1, round(r / 3)), max(1, round(r / 4))
    for g, p in zip(gt, paired, strict=True):
        for j in np.flatnonzero((g[:, 2] > 0) & np.isfinite(p[:, 0])):
            for fill, wd in ((OUTLINE, width + 2 * halo), (ERROR_LINE, width)):
                _dashed(draw, g[j, :2], p[j, :2], fill, wd, dash=max(3, 1.5 * r))
    out = draw_instances(canvas, gt, points, show_names=False, radius=r)
    shown = paired.copy()
    shown[..., 2] = np.where(np.isfinite(shown[..., 0]), 1, 0)  # drawn as crosses
    return draw_instances(
        out, np.nan_to_num(shown), points, show_names=False, radius=r, occluded_marker="x"
    )


def compare_predictions(
    image,
    result: ImageResult,
    skeleton: Skeleton,
    *,
    title: str | None = None,
    iou_threshold: float = 0.5,
) -> Figure:
    """Ground truth, the matched predictions, and the errors (`draw_predictions`), side by
    side with a legend of keypoint colours and marker styles.

    Only predictions the metrics matched to a ground-truth instance are drawn: the
    top-scoring detections of a young model are often duplicates of one object. The
    titles count what is left out (unmatched predictions, objects nothing matched). A
    small image (the CPU schedule's 96-192 px) is enlarged by a whole factor first, so
    the markers stay small beside the objects at the grid's scale.
    """
    image, result = _enlarged(image, result)
    k = skeleton.num_keypoints
    gt, paired, unmatched = _matched(result, k, iou_threshold)
    found = np.isfinite(paired[:, 0, 0])
    pred = paired[found].copy()
    pred[..., 2] = 2
    colors = keypoint_colors(skeleton.keypoints)
    pictures = [
        draw_instances(image, gt, skeleton, show_names=False, colors=colors),
        draw_instances(image, pred, skeleton, show_names=False, colors=colors),
        draw_predictions(image, result, skeleton, iou_threshold=iou_threshold),
    ]
    n_found = int(found.sum())
    missed = len(gt) - n_found
    titles = [
        f"ground truth: {_count(len(gt), 'object')}",
        f"{_count(n_found, 'matched prediction')}"
        + (f" ({unmatched} unmatched not shown)" if unmatched else ""),
        "errors" + (f" ({_count(missed, 'object')} not found)" if missed else ""),
    ]
    fig = image_grid(pictures, titles, ncols=3, title=title)
    dark = np.array(OUTLINE) / 255
    styles = [
        Line2D(
            [],
            [],
            ls="",
            marker="x",
            markersize=9,
            markeredgewidth=2.5,
            color="0.35",
            label="prediction (errors panel)",
        ),
        Line2D(
            [],
            [],
            ls=(0, (2, 1.5)),
            lw=2,
            color="white",
            path_effects=[_halo(dark)],
            label="error: point to prediction",
        ),
    ]
    keypoint_legend(fig, colors, ncols=4, extra=styles)
    return fig


def _enlarged(image, result: ImageResult, target: int = 320):
    """`image` and `result` scaled by the whole factor that brings the longer side near
    `target` px (unchanged when it is already that large)."""
    from dataclasses import replace

    img = _as_pil(image)
    f = max(1, target // max(img.size))
    if f == 1:
        return img, result
    big = img.resize((img.width * f, img.height * f), Image.Resampling.BILINEAR)

    def points(kps):
        kps = np.array(kps, np.float32)
        kps[..., :2] *= f
        return kps

    return big, replace(
        result,
        gt_boxes=np.asarray(result.gt_boxes) * f,
        gt_keypoints=points(result.gt_keypoints),
        boxes=np.asarray(result.boxes) * f,
        keypoints=points(result.keypoints),
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _halo(colour):
    from matplotlib import patheffects

    return patheffects.withStroke(linewidth=4, foreground=colour)


_LOSS_PARTS = {
    "loss": "total",
    "loss_keypoint": "keypoint",
    "loss_classifier": "classifier",
    "loss_box_reg": "box",
    "loss_objectness": "objectness",
    "loss_rpn_box_reg": "RPN box",
}


def plot_history(history: Sequence[Mapping] | pd.DataFrame) -> Figure:
    """Training curves per epoch (1-based, integer ticks) on three panels: the training
    losses (the total in bold), OKS AP (AP, AP50, AP75) and PCK (at 0.05, 0.1, 0.2).

    Missing values (None: nothing to measure) leave gaps. An epoch a time budget cut
    short (``complete`` False) is said so in the title.
    """
    df = pd.DataFrame(list(history) if not isinstance(history, pd.DataFrame) else history)
    epoch = pd.to_numeric(df["epoch"]) + 1
    fig = _figure(11, 3.6)
    axes = fig.subplots(1, 3)
    panels = [
        ("Training loss", "loss", [c for c in df.columns if c.startswith("loss")]),
        ("Validation OKS AP", "AP (0-1)", [c for c in ("AP", "AP50", "AP75") if c in df]),
        (
            "Validation PCK",
            "share of points (0-1)",
            [c for c in df.columns if c.startswith("PCK@")],
        ),
    ]
    for ax, (name, ylabel, cols) in zip(axes, panels, strict=True):
        for c in cols:
            values = pd.to_numeric(df[c], errors="coerce")
            bold = c in ("loss", "AP")
            ax.plot(epoch, values, marker="o", lw=2.5 if bold else 1.3, label=_LOSS_PARTS.get(c, c))
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if len(epoch):  # whole epochs only, at most about ten ticks
            first, last = int(epoch.min()), int(epoch.max())
            ax.set_xticks(range(first, last + 1, max(1, -(-(last - first + 1) // 10))))
            ax.set_xlim(first - 0.5, last + 0.5)
        if name != "Training loss":
            ax.set_ylim(-0.03, 1.03)
        if ax.lines:
            ax.legend(fontsize=8)
    if "complete" in df and not df["complete"].fillna(True).astype(bool).all():
        fig.suptitle("Training curves (the last epoch was cut short by the time budget)")
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a figure (PNG by suffix), creating folders as needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
