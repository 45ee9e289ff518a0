"""Grids of images and annotated samples, and keypoint colour legends.

Grids save and display as 256-colour palette PNGs (`_PaletteCanvas`), a fraction of the
size of full-colour ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image, PngImagePlugin

from kpnb.tables import Annotations
from kpnb.viz.draw import OUTLINE, RGB, _as_pil, _palette, keypoint_colors, show_sample


def color_swatch(names: Sequence[str], title: str = "Keypoint colours") -> Figure:
    """A legend of `keypoint_colors(names)`: each name with its marker as `draw_instances`
    draws it, visible (a filled disc) and occluded (a hollow square)."""
    colours = keypoint_colors(names)
    fig = Figure(figsize=(4.8, 0.42 * len(colours) + 1.0), layout="constrained")
    ax = fig.add_subplot()
    for i, (name, rgb) in enumerate(colours.items()):
        c, dark = np.array(rgb) / 255, np.array(OUTLINE) / 255
        ax.scatter([0], [i], s=170, color=c, edgecolors=dark, linewidths=2)
        for edge, lw in ((dark, 4.5), (c, 2.5)):  # a hollow square with a dark rim
            ax.scatter(
                [1], [i], s=150, marker="s", facecolors="none", edgecolors=edge, linewidths=lw
            )
        ax.text(1.6, i, name, va="center", fontsize=11)
    for x, head in ((0, "visible"), (1, "occluded")):
        ax.text(x, -0.9, head, ha="center", va="bottom", fontsize=9, color="0.3")
    ax.set(xlim=(-0.6, 5.0), ylim=(len(colours) - 0.5, -1.2), title=title)
    ax.set_axis_off()
    return fig


class _PaletteCanvas(FigureCanvasAgg):
    """Agg canvas whose PNGs use a 256-colour palette: a few times smaller than full colour,
    alike at notebook width. Every keypoint colour, the outline and white stay exact (an
    adaptive palette alone would merge two, and the legend would lie). Other formats as usual.
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
        info = PngImagePlugin.PngInfo()
        for key, value in (metadata or {}).items():
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
    true_scale: bool = False,
) -> Figure:
    """Images (PIL or tensors) in a grid of `ncols` columns, with optional titles.

    Each image fills its cell, whatever its size; with `true_scale` every cell spans the
    largest image's pixels instead, so a smaller image looks smaller (to show a resize)."""
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig = Figure(figsize=(cell * ncols, cell * nrows + (0.4 if title else 0)), layout="constrained")
    _PaletteCanvas(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    pictures = [_as_pil(img) for img in images]
    width = max((p.width for p in pictures), default=1)
    height = max((p.height for p in pictures), default=1)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            ax.imshow(pictures[i])
            if true_scale:  # the top-left corner fixed, the same pixels per inch everywhere
                ax.set(xlim=(-0.5, width - 0.5), ylim=(height - 0.5, -0.5))
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
        _marker(name, "o", markerfacecolor=np.array(c) / 255, markeredgecolor=dark)
        for name, c in colors.items()
    ]
    if occluded:
        grey = {"markerfacecolor": "none", "markeredgecolor": "0.35", "markeredgewidth": 2}
        handles.append(_marker("occluded (any colour)", "s", **grey))
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


def _marker(label: str, marker: str, **style) -> Line2D:
    """A legend handle: one marker, no line (10 pt, edge 1.5 pt unless `style` says)."""
    style = {"markersize": 10, "markeredgewidth": 1.5, **style}
    return Line2D([], [], ls="", marker=marker, label=label, **style)


def sample_grid(
    ann: Annotations,
    indices: Sequence[int] | None = None,
    image_root=None,
    ncols: int = 3,
    **kwargs,
) -> Figure:
    """A grid (default the first nine images, 3x3) of `show_sample` pictures (`kwargs` go
    to it, e.g. ``show_names=False``) with a colour legend, names readable at its scale."""
    if indices is None:
        indices = ann.images["image_index"].tolist()[: ncols * 3]
    indices = [int(i) for i in indices]
    kp = ann.keypoints[ann.keypoints["image_index"].isin(indices)]
    labels = [kwargs["label"]] if kwargs.get("label") else kp["label"].astype(str).unique()
    names = [n for lab in labels for n in ann.skeleton_for(lab).keypoints]
    colors = dict(kwargs.pop("colors", None) or keypoint_colors(names))
    meta = ann.images.set_index("image_index").loc[indices]
    font_size, images = kwargs.pop("font_size", None), []
    for i, (w, h) in zip(indices, meta[["width", "height"]].to_numpy(int), strict=True):
        # a cell is about 300 px wide: scale text so it shows at about 10 px
        size = font_size or max(11, round(10 * max(w, h) / 300))
        images.append(show_sample(ann, i, image_root, colors=colors, font_size=size, **kwargs))
    fig = image_grid(images, meta["name"].astype(str).tolist(), ncols, title="Annotated samples")
    if colors:
        keypoint_legend(fig, colors)
    return fig
