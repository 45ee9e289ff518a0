"""Pictures of annotations, augmentations, distributions, predictions and training.

Every function returns a PIL image or a matplotlib ``Figure`` and keeps no global state
(no ``plt.show()``, no pyplot figure manager), so notebooks display the result and tests
can check it. Drawing uses torchvision's ``draw_keypoints``/``draw_bounding_boxes``;
colours come from distinctipy; text uses matplotlib's bundled DejaVu Sans (works offline).
"""

from __future__ import annotations

import functools
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import draw_bounding_boxes, draw_keypoints

from kpnb.tables import Annotations, Skeleton

__all__ = [
    "keypoint_colors", "color_swatch", "draw_instances", "draw_target", "show_sample", "image_grid",
    "sample_grid", "before_after", "plot_label_counts", "plot_keypoint_visibility",
    "plot_instances_per_image", "plot_image_sizes", "plot_keypoint_heatmap",
    "draw_predictions", "compare_predictions", "plot_history",
]  # fmt: skip

RGB = tuple[int, int, int]
_PALETTE_SIZE = 48
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
    when two names of one set would share a colour the later moves to the next free one.
    """
    palette, taken, out = _palette(), set(), {}
    for name in dict.fromkeys(str(n) for n in names):
        i = zlib.crc32(name.encode("utf-8")) % len(palette)
        while i in taken and len(taken) < len(palette):
            i = (i + 1) % len(palette)
        taken.add(i)
        out[name] = palette[i]
    return out


def _figure(width: float = 6.4, height: float = 4.8) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def color_swatch(names: Sequence[str], title: str = "Keypoint colours") -> Figure:
    """A swatch of `keypoint_colors(names)`."""
    colours = keypoint_colors(names)
    fig = _figure(6.4, 0.45 * len(colours) + 0.8)
    ax = fig.add_subplot()
    for i, (name, rgb) in enumerate(colours.items()):
        ax.barh(i, 1, color=np.array(rgb) / 255)
        ax.text(1.05, i, name, va="center")
    ax.set_xlim(0, 2.2)
    ax.set_ylim(len(colours) - 0.5, -0.5)
    ax.set_axis_off()
    ax.set_title(title)
    return fig


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_PATH), size)


def _as_tensor(image) -> torch.Tensor:
    """A uint8 ``[3, H, W]`` tensor from a PIL image or a tensor (uint8 or float 0-1)."""
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
    t = torch.as_tensor(image).detach().cpu()
    if t.is_floating_point():
        t = (t.clamp(0, 1) * 255).round().to(torch.uint8)
    return t[:3] if t.shape[0] >= 3 else t.expand(3, -1, -1)


def _to_pil(t: torch.Tensor) -> Image.Image:
    return Image.fromarray(t.permute(1, 2, 0).numpy())


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


def _dim(rgb: RGB) -> RGB:
    return tuple(int(c * 0.45 + 128 * 0.2) for c in rgb)


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
) -> Image.Image:
    """Draw keypoint instances on an image.

    Args:
        image: PIL image or ``[3, H, W]`` tensor (uint8, or float in 0-1).
        keypoints: ``[N, K, 3]`` (x, y, v) array, ``[N, K, 2]`` (all visible), or a slice
            of the keypoints table (one image, one label).
        skeleton: names and edges; edges are drawn between labelled points only.
        boxes: optional ``[N, 4]`` xyxy boxes to draw.
        show_names: write each visible keypoint's name beside it.

    Visible points (v=2) are filled in their keypoint colour, occluded ones (v=1) dimmed
    with a white ring, absent ones (v=0) and every edge touching them are not drawn.

    Returns:
        A new PIL image; the input is untouched.
    """
    canvas = _as_tensor(image)
    arr, names = _instances(keypoints, skeleton)
    h, w = canvas.shape[-2:]
    r = radius or max(2, round(min(h, w) / 90))
    colors = dict(colors or keypoint_colors(names))
    if boxes is not None and len(boxes):
        box_tensor = torch.as_tensor(np.asarray(boxes), dtype=torch.float32)
        canvas = draw_bounding_boxes(canvas, box_tensor, colors="yellow", width=max(1, r // 2))
    if len(arr):
        xy = torch.from_numpy(np.nan_to_num(arr[..., :2]))
        vis = torch.from_numpy(arr[..., 2])
        labelled = vis > 0
        if skeleton is not None and skeleton.edges:
            canvas = draw_keypoints(canvas, xy, connectivity=list(skeleton.edges),
                                    colors=edge_color, radius=0, width=max(1, r // 2),
                                    visibility=labelled)  # fmt: skip
        for j, name in enumerate(names):
            colour = colors.get(name, (255, 0, 0))
            occluded = vis[:, j : j + 1] == 1
            if occluded.any():
                canvas = draw_keypoints(canvas, xy[:, j : j + 1], colors=(255, 255, 255),
                                        radius=r + 1, visibility=occluded)  # fmt: skip
                canvas = draw_keypoints(canvas, xy[:, j : j + 1], colors=_dim(colour), radius=r,
                                        visibility=occluded)  # fmt: skip
            canvas = draw_keypoints(canvas, xy[:, j : j + 1], colors=colour, radius=r,
                                    visibility=vis[:, j : j + 1] == 2)  # fmt: skip
    out = _to_pil(canvas)
    if show_names and len(arr):
        _write_names(out, arr, names, colors, r)
    return out


def draw_target(image, target: Mapping, skeleton: Skeleton | None = None, **kwargs) -> Image.Image:
    """Draw a v2 sample's target (``boxes``, ``keypoints`` ``[N, K, 2]``, ``visibility``) or a
    model target (``keypoints`` ``[N, K, 3]``) on its image, boxes included."""
    kps = torch.as_tensor(target["keypoints"]).detach().cpu().float()
    if kps.shape[-1] == 2:
        vis = torch.as_tensor(target["visibility"]).float()[..., None]
        kps = torch.cat([kps, vis], dim=-1)
    boxes = torch.as_tensor(target["boxes"]).detach().cpu().float()
    return draw_instances(image, kps.numpy(), skeleton, boxes=boxes.numpy(), **kwargs)


def _write_names(img: Image.Image, arr: np.ndarray, names, colors, r: int) -> None:
    draw = ImageDraw.Draw(img)
    font = _font(max(9, min(img.size) // 40))
    for inst in arr:
        for (x, y, v), name in zip(inst, names, strict=True):
            if v > 0:
                draw.text((x + r + 2, y - r - 2), name, fill=colors.get(name, (255, 0, 0)),
                          font=font, stroke_width=1, stroke_fill=(0, 0, 0))  # fmt: skip


def _export_root(ann: Annotations) -> Path:
    source = ann.meta.get("source")
    if not source:
        raise ValueError("these annotations do not say where their export is; pass image_root")
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
        raise IndexError(f"no image_index {image_index}; there are {len(ann.images)} images")
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


def image_grid(images: Sequence, titles: Sequence[str] | None = None, ncols: int = 3,
               cell: float = 3.2, title: str | None = None) -> Figure:  # fmt: skip
    """Images (PIL or tensors) in a grid of `ncols` columns, with optional titles."""
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig = _figure(cell * ncols, cell * nrows + (0.4 if title else 0))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            img = images[i]
            ax.imshow(img if isinstance(img, Image.Image) else _to_pil(_as_tensor(img)))
            if titles is not None:
                ax.set_title(str(titles[i]), fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def sample_grid(ann: Annotations, indices: Sequence[int] | None = None, image_root=None,
                ncols: int = 3, **kwargs) -> Figure:  # fmt: skip
    """A grid (default 3x3, the first nine images) of `show_sample` pictures."""
    if indices is None:
        indices = ann.images["image_index"].tolist()[: ncols * 3]
    images = [show_sample(ann, int(i), image_root, **kwargs) for i in indices]
    names = ann.images.set_index("image_index").loc[list(indices), "name"].astype(str)
    return image_grid(images, names.tolist(), ncols, title="Annotated samples")


def before_after(pairs: Sequence[tuple], names: Sequence[str] = ("before", "after"),
                 title: str | None = None) -> Figure:  # fmt: skip
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
    ax.bar(counts.index.astype(str), counts.values,
           color=[np.array(colours[n]) / 255 for n in counts.index])  # fmt: skip
    ax.tick_params(axis="x", rotation=45)
    return fig


def plot_keypoint_visibility(ann: Annotations) -> Figure:
    """Points per keypoint name, stacked by visibility (visible, occluded, absent)."""
    table = ann.keypoint_counts()
    labels = [f"{lab}/{kp}" if table.index.get_level_values(0).nunique() > 1 else kp
              for lab, kp in table.index]  # fmt: skip
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
    ax.scatter(sizes["width"].astype(float), sizes["height"].astype(float),
               s=20 + 200 * sizes["n"] / sizes["n"].max(), alpha=0.7)  # fmt: skip
    for r in sizes.itertuples(index=False):
        ax.annotate(str(r.n), (float(r.width), float(r.height)), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax.set_aspect("equal", adjustable="datalim")
    return fig


def plot_keypoint_heatmap(ann: Annotations, label: str, normalize: str = "box",
                          bins: int = 24) -> Figure:  # fmt: skip
    """Where each keypoint of `label` falls: one 2-D histogram per keypoint.

    `normalize` ``"box"`` centres each instance's keypoint extent and scales its longer
    side to 1 (so the shape keeps its aspect), ``"image"`` divides by the image size.
    Only labelled points (v > 0) count.
    """
    if normalize not in ("box", "image"):
        raise ValueError(f"normalize must be 'box' or 'image', got {normalize!r}")
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
    for ax, name in zip(axes.flat, names, strict=False):
        m = (kp["keypoint"] == name).to_numpy()
        ax.hist2d(u[m], v[m], bins=bins, range=[[0, 1], [0, 1]], cmap="magma",
                  norm=PowerNorm(0.5))  # fmt: skip
        ax.set_ylim(1, 0)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(f"x / {normalize} width", fontsize=8)
        ax.set_ylabel(f"y / {normalize} height", fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_axis_off()
    fig.suptitle(f"Where the keypoints of {label!r} fall (normalised by {normalize})")
    return fig


# -- predictions and training --------------------------------------------------------------
def draw_predictions(image, ground_truth, predictions, skeleton: Skeleton,
                     score_threshold: float = 0.0) -> Image.Image:  # fmt: skip
    """Ground truth and predictions overlaid, with a red line from each labelled ground
    truth point to the matching point of the nearest predicted instance.

    Args:
        ground_truth: ``[N, K, 3]`` (x, y, v).
        predictions: ``[M, K, 3]``; the third channel is a keypoint score, and points
            scoring below `score_threshold` are left out.
    """
    gt = np.asarray(ground_truth, np.float32).reshape(-1, skeleton.num_keypoints, 3)
    pred = np.asarray(predictions, np.float32).reshape(-1, skeleton.num_keypoints, 3)
    shown = pred.copy()
    shown[..., 2] = np.where(pred[..., 2] >= score_threshold, 2, 0)
    base = draw_instances(image, gt, skeleton, show_names=False, edge_color=(0, 200, 0),
                          colors=dict.fromkeys(skeleton.keypoints, (0, 200, 0)))  # fmt: skip
    out = draw_instances(base, shown, skeleton, show_names=False)
    draw = ImageDraw.Draw(out)
    for g in gt:
        if not len(pred):
            break
        labelled = g[:, 2] > 0
        if not labelled.any():
            continue
        d = np.nanmean(np.linalg.norm(pred[:, labelled, :2] - g[None, labelled, :2], axis=-1), 1)
        p = pred[int(np.argmin(d))]
        for j in np.flatnonzero(labelled):
            draw.line([tuple(g[j, :2]), tuple(p[j, :2])], fill=(255, 0, 0), width=1)
    return out


def compare_predictions(image, ground_truth, predictions, skeleton: Skeleton,
                        title: str | None = None) -> Figure:  # fmt: skip
    """Ground truth and predictions side by side, and overlaid with error lines."""
    gt_img = draw_instances(image, ground_truth, skeleton, show_names=False)
    pred = np.asarray(predictions, np.float32).reshape(-1, skeleton.num_keypoints, 3).copy()
    pred[..., 2] = 2
    pred_img = draw_instances(image, pred, skeleton, show_names=False)
    both = draw_predictions(image, ground_truth, predictions, skeleton)
    return image_grid([gt_img, pred_img, both], ["ground truth", "prediction", "errors"],
                      ncols=3, title=title)  # fmt: skip


def plot_history(history: Sequence[Mapping] | pd.DataFrame) -> Figure:
    """Training curves: losses (left) and validation metrics (right) per epoch."""
    df = pd.DataFrame(history)
    fig = _figure(10, 4)
    ax_loss, ax_metric = fig.subplots(1, 2)
    loss_cols = [c for c in df.columns if "loss" in c]
    metric_cols = [c for c in df.columns if c.startswith(("AP", "PCK", "pck", "ap"))]
    for c in loss_cols:
        ax_loss.plot(df["epoch"], df[c], marker="o", label=c)
    for c in metric_cols:
        ax_metric.plot(df["epoch"], df[c], marker="o", label=c)
    ax_loss.set_title("Training losses")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_metric.set_title("Validation metrics")
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel("score (0-1)")
    for ax in (ax_loss, ax_metric):
        if ax.lines:
            ax.legend(fontsize=8)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a figure (PNG by suffix), creating folders as needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
